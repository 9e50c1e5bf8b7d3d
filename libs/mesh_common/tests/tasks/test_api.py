"""The staff HTTP API of tasks, over a real app (problem+json, auth) and database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from mesh_common.auth import AuthSettings, TokenVerifier, install_auth, mint_token
from mesh_common.errors import install_problem_handlers
from mesh_common.metrics import Metrics
from mesh_common.tasks import (
    Interval,
    TaskContext,
    TaskRegistry,
    TaskRunner,
    task_hooks,
    task_router,
)

from .conftest import Env

SECRET = "tasks-test-secret-0123456789abcdefghij"


def token(*roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(subject="u1", secret=SECRET, roles=roles)}


@pytest.fixture
async def client(env: Env, registry: TaskRegistry) -> AsyncIterator[httpx.AsyncClient]:
    @registry.task("sync", schedule=Interval(3600), kind="schulconnex")
    async def sync(ctx: TaskContext) -> None:
        """Sync participants."""
        for key in ("a", "b", "c"):
            if ctx.wanted(key):
                if key == "b" and ctx.only_keys is None:
                    await ctx.item(key, "upsert", "failed", error="boom")
                else:
                    await ctx.item(key, "upsert", "ok")

    @registry.task("slow")
    async def slow(ctx: TaskContext) -> None:
        while not ctx.cancelled:
            await asyncio.sleep(0.01)

    runner: TaskRunner = await env.runner(registry)
    app = FastAPI()
    install_problem_handlers(app)
    install_auth(app, TokenVerifier(AuthSettings(mode="hs256", hs256_secret=SECRET)))
    app.include_router(task_router())
    app.state.task_runner = runner
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
        yield c


async def test_requires_staff(client: httpx.AsyncClient) -> None:
    assert (await client.get("/tasks")).status_code == 401
    r = await client.get("/tasks", headers=token("participant"))
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/tasks", headers=token("staff"))).status_code == 200


async def test_run_inspect_retry_cancel(client: httpx.AsyncClient, env: Env) -> None:
    staff = token("staff")
    tasks = (await client.get("/tasks", headers=staff)).json()
    by_name = {t["name"]: t for t in tasks}
    assert by_name["sync"]["schedule"] == {"type": "interval", "value": "3600.0"}
    assert by_name["sync"]["kind"] == "schulconnex"
    assert by_name["sync"]["description"] == "Sync participants."
    assert by_name["slow"]["schedule"] is None

    r = await client.post("/tasks/sync/run", json={"dry_run": True}, headers=staff)
    assert r.status_code == 202
    execution_id = r.json()["execution_id"]
    await env.runners[0].wait(execution_id)
    ex = (await client.get(f"/tasks/executions/{execution_id}", headers=staff)).json()
    assert ex["status"] == "partially_succeeded"
    assert ex["dry_run"] is True
    assert ex["counts"] == {
        "processed": 3,
        "succeeded": 2,
        "failed": 1,
        "skipped": 0,
        "unchanged": 0,
    }
    failed = (
        await client.get(
            f"/tasks/executions/{execution_id}/items", params={"outcome": "failed"}, headers=staff
        )
    ).json()
    assert [(i["record_key"], i["error"]) for i in failed] == [("b", "boom")]
    listed = (await client.get("/tasks/executions", params={"task": "sync"}, headers=staff)).json()
    assert [e["id"] for e in listed] == [execution_id]

    r = await client.post(f"/tasks/executions/{execution_id}/retry", headers=staff)
    assert r.status_code == 202
    retry = await env.runners[0].wait(r.json()["execution_id"])
    assert retry["status"] == "succeeded" and retry["counts"]["processed"] == 1

    r = await client.post(f"/tasks/executions/{execution_id}/cancel", headers=staff)
    assert r.status_code == 409
    assert r.json()["code"] == "execution-not-running"

    slow_id = (await client.post("/tasks/slow/run", json={}, headers=staff)).json()["execution_id"]
    assert (await client.post("/tasks/slow/run", json={}, headers=staff)).status_code == 409
    r = await client.post(f"/tasks/executions/{slow_id}/cancel", headers=staff)
    assert r.status_code == 202
    assert (await env.runners[0].wait(slow_id))["status"] == "cancelled"


async def test_not_found_is_problem_json(client: httpx.AsyncClient) -> None:
    staff = token("staff")
    r = await client.post("/tasks/nope/run", json={}, headers=staff)
    assert r.status_code == 404 and r.json()["code"] == "task-not-found"
    r = await client.get("/tasks/executions/nope", headers=staff)
    assert r.status_code == 404 and r.json()["code"] == "execution-not-found"
    r = await client.get("/tasks/executions", params={"status": "weird"}, headers=staff)
    assert r.status_code == 422


async def test_pause_schedule(client: httpx.AsyncClient) -> None:
    staff = token("staff")
    r = await client.patch("/tasks/sync", json={"enabled": False}, headers=staff)
    assert r.status_code == 200 and r.json()["enabled"] is False
    tasks = {t["name"]: t for t in (await client.get("/tasks", headers=staff)).json()}
    assert tasks["sync"]["enabled"] is False
    assert (
        await client.patch("/tasks/nope", json={"enabled": True}, headers=staff)
    ).status_code == 404


async def test_hooks_start_the_runner_the_router_finds(env: Env, registry: TaskRegistry) -> None:
    @registry.task("hello")
    async def hello(ctx: TaskContext) -> None:
        await ctx.item("x", "say", "ok")

    finished: list[str] = []

    async def on_finish(execution: dict) -> None:
        finished.append(execution["status"])

    start, stop = task_hooks(registry, env.tables, tick_seconds=0.02, on_finish=on_finish)
    metrics = Metrics("tasks-test")
    runtime = SimpleNamespace(db=env.database(), extras={}, metrics=metrics)
    await start(runtime)
    app = FastAPI()
    install_problem_handlers(app)
    install_auth(app, TokenVerifier(AuthSettings(mode="hs256", hs256_secret=SECRET)))
    app.include_router(task_router())
    app.state.runtime = runtime
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc"
        ) as c:
            r = await c.post("/tasks/hello/run", json={}, headers=token("admin"))
            assert r.status_code == 202
            done = await runtime.extras["task_runner"].wait(r.json()["execution_id"])
            assert done["status"] == "succeeded"
            for _ in range(50):  # on_finish runs right after the status is written
                if finished:
                    break
                await asyncio.sleep(0.02)
    finally:
        await stop(runtime)
    # The service's own hook still runs, and the execution is counted on /metrics.
    assert finished == ["succeeded"]
    sample = metrics.registry.get_sample_value(
        "task_executions_total", {"task": "hello", "status": "succeeded"}
    )
    assert sample == 1
    assert "task_runner" not in runtime.extras
