"""course-export on the task framework: manual runs over REST and AMQP, executions with counts
and per-course items, change runs that send only what changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from course_export_service.app import create_app
from course_export_service.settings import Settings
from coursedb import schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_common.app import ServiceRuntime, process_broker
from mesh_common.auth import mint_token
from mesh_common.bus import BusSettings, create_bus
from mesh_contracts.course_export import RunExport
from pydantic import SecretStr
from sqlalchemy import update

SECRET = "t" * 40
STAFF = {"Authorization": "Bearer " + mint_token(subject="ops", secret=SECRET, roles=["staff"])}


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ServiceRuntime]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    engine = create_engine(url)
    await seed(engine, courses=30, seed=6)
    await engine.dispose()
    application = create_app(
        Settings(
            var_dir=tmp_path,
            coursedb_url=url,
            mesh_jwt_secret=SecretStr(SECRET),
            change_poll_seconds=3600,
        )
    )
    async with (
        LifespanManager(application) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://ce") as client,
    ):
        yield client, application.state.runtime


async def finished(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    for _ in range(300):
        body = (await client.get(f"/tasks/executions/{execution_id}", headers=STAFF)).json()
        if body["status"] != "running":
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("execution did not finish")


async def test_full_export_run_now_records_every_course(
    app: tuple[httpx.AsyncClient, ServiceRuntime], published_courses: Any
) -> None:
    client, runtime = app
    tasks = {t["name"]: t for t in (await client.get("/tasks", headers=STAFF)).json()}
    assert tasks["full-export"]["schedule"] == {"type": "cron", "value": "0 3 * * *"}
    assert tasks["export-changes"]["schedule"]["type"] == "interval"

    r = await client.post("/tasks/full-export/run", headers=STAFF, json={})
    assert r.status_code == 202
    execution = await finished(client, r.json()["execution_id"])
    assert execution["status"] == "succeeded"
    coursedb = runtime.extras["coursedb"]
    c = schema.courses
    published = await published_courses(coursedb)
    assert execution["counts"]["processed"] == len(published)
    items = (
        await client.get(
            f"/tasks/executions/{execution['id']}/items", headers=STAFF, params={"limit": 500}
        )
    ).json()
    assert {i["record_key"] for i in items} == {n for _, n in published}

    # A change run after editing one course sends exactly that one.
    async with coursedb.begin() as conn:
        await conn.execute(update(c).where(c.c.id == published[0].id).values(title="Neu"))
    r2 = await client.post("/tasks/export-changes/run", headers=STAFF, json={})
    changes = await finished(client, r2.json()["execution_id"])
    changed = (
        await client.get(
            f"/tasks/executions/{changes['id']}/items", headers=STAFF, params={"outcome": "ok"}
        )
    ).json()
    assert [i["record_key"] for i in changed] == [published[0].number]


async def test_run_export_command_starts_an_execution(
    app: tuple[httpx.AsyncClient, ServiceRuntime],
) -> None:
    client, _ = app
    cms = create_bus(BusSettings(service="cms"), broker=process_broker())
    await cms.start()
    try:
        await cms.send(RunExport(mode="full", requested_by="cms-admin"))
        for _ in range(200):
            runs = (
                await client.get("/tasks/executions", headers=STAFF, params={"task": "full-export"})
            ).json()
            if runs:
                break
            await asyncio.sleep(0.05)
        assert runs and runs[0]["params"]["requested_by"] == "cms-admin"
    finally:
        await cms.stop()


async def test_a_broken_course_fails_alone_and_its_retry_exports_just_that_course(
    app: tuple[httpx.AsyncClient, ServiceRuntime], published_courses: Any
) -> None:
    client, runtime = app
    coursedb = runtime.extras["coursedb"]
    c = schema.courses
    published = await published_courses(coursedb)
    broken = published[2]
    async with coursedb.begin() as conn:  # a blank title fails the mapping (required)
        await conn.execute(update(c).where(c.c.id == broken.id).values(title="   "))
    r = await client.post("/tasks/full-export/run", headers=STAFF, json={})
    first = await finished(client, r.json()["execution_id"])
    assert first["status"] == "partially_succeeded"
    assert first["counts"]["failed"] == 1
    assert first["counts"]["succeeded"] == len(published) - 1
    failed = (
        await client.get(
            f"/tasks/executions/{first['id']}/items", headers=STAFF, params={"outcome": "failed"}
        )
    ).json()
    assert [i["record_key"] for i in failed] == [broken.number]
    assert "title" in failed[0]["error"]

    async with coursedb.begin() as conn:
        await conn.execute(update(c).where(c.c.id == broken.id).values(title="Repariert"))
    r = await client.post(f"/tasks/executions/{first['id']}/retry", headers=STAFF, json={})
    assert r.status_code == 202, r.text
    retry = await finished(client, r.json()["execution_id"])
    assert retry["status"] == "succeeded" and retry["trigger"] == "retry"
    items = (await client.get(f"/tasks/executions/{retry['id']}/items", headers=STAFF)).json()
    assert [(i["record_key"], i["outcome"]) for i in items] == [(broken.number, "ok")]
