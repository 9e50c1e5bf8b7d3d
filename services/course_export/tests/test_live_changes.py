"""Changes reach the bus while the service runs, and change detection resumes after a restart.

- PostgreSQL + RabbitMQ: with the interval fallback set to an hour, a course change committed
  in the coursedb arrives at a subscriber within seconds (only the change log's NOTIFY can
  explain that); a touched but unchanged course is not re-sent; deletions and unpublishing are
  withdrawn with their reason; a change committed while the service was down is exported right
  after it starts again, without comparing every course a second time.
- SQLite (timestamp polling): the poll marker survives a restart, so the first run after it
  reads only what changed since, not the whole course table.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from course_export_service.app import create_app
from course_export_service.changefeed import LOG_TABLE
from course_export_service.settings import Settings
from coursedb import access, schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_common.app import ServiceRuntime
from mesh_common.auth import mint_token
from mesh_common.bus import Bus, BusSettings, HandlerRegistry, MessageContext, create_bus
from mesh_contracts.course_export import CourseChanged, CourseWithdrawn
from pydantic import SecretStr
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

SECRET = "l" * 40
STAFF = {"Authorization": "Bearer " + mint_token(subject="ops", secret=SECRET, roles=["staff"])}


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


@dataclass
class Spy:
    """A subscriber recording every change message with its arrival time."""

    changed: list[tuple[float, CourseChanged]] = field(default_factory=list)
    withdrawn: list[tuple[float, CourseWithdrawn]] = field(default_factory=list)

    def handlers(self) -> HandlerRegistry:
        registry = HandlerRegistry()

        @registry.event(CourseChanged, name="spy_changed")
        async def _changed(msg: CourseChanged, ctx: MessageContext) -> None:
            self.changed.append((time.monotonic(), msg))

        @registry.event(CourseWithdrawn, name="spy_withdrawn")
        async def _withdrawn(msg: CourseWithdrawn, ctx: MessageContext) -> None:
            self.withdrawn.append((time.monotonic(), msg))

        return registry

    def numbers(self) -> list[str]:
        return [m.course.number for _, m in self.changed]


@asynccontextmanager
async def service(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, ServiceRuntime]]:
    app = create_app(
        Settings(mesh_jwt_secret=SecretStr(SECRET), change_poll_seconds=3600, **settings)
    )
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://ce"
        ) as client,
    ):
        yield client, app.state.runtime


async def run_task(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    r = await client.post(f"/tasks/{name}/run", headers=STAFF, json={})
    assert r.status_code == 202, r.text
    execution_id = r.json()["execution_id"]

    async def finished() -> dict[str, Any] | None:
        body = (await client.get(f"/tasks/executions/{execution_id}", headers=STAFF)).json()
        return body if body["status"] != "running" else None

    return dict(await eventually(finished, timeout=60))


async def items(client: httpx.AsyncClient, execution_id: str) -> list[dict[str, Any]]:
    r = await client.get(
        f"/tasks/executions/{execution_id}/items", headers=STAFF, params={"limit": 500}
    )
    return list(r.json())


async def commit(engine: AsyncEngine, course_id: int, **values: Any) -> float:
    async with engine.begin() as conn:
        await conn.execute(
            update(schema.courses).where(schema.courses.c.id == course_id).values(**values)
        )
    return time.monotonic()


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_changes_reach_the_bus_within_seconds_on_postgres(
    pg_url: str, amqp_url: str, published_courses: Any
) -> None:
    engine = create_engine(pg_url)
    await seed(engine, courses=25, seed=21, reset=True)
    # The reseed drops the coursedb's tables, not the change log: rows earlier tests left in it
    # would start a first change run at startup that sends every course as "created".
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE IF EXISTS {LOG_TABLE}"))
    settings = {
        "coursedb_url": pg_url,
        "database_url": pg_url,
        "db_schema": f"ce_{uuid.uuid4().hex[:6]}",
        "amqp_url": amqp_url,
    }
    spy = Spy()
    website: Bus = create_bus(BusSettings(service=f"spy{uuid.uuid4().hex[:6]}", amqp_url=amqp_url))
    website.include(spy.handlers())
    await website.start()
    try:
        published = await published_courses(engine)
        a, b, c, gone, hidden, later = published[:6]
        async with service(**settings) as (client, runtime):
            assert runtime.extras["change_source"] == "changelog"
            snapshot = await run_task(client, "full-export")
            assert snapshot["status"] == "succeeded"

            # A committed change arrives within seconds (the interval is an hour away).
            committed = await commit(engine, a.id, title="Portugiesisch A1 - neu")
            await eventually(lambda: a.number in spy.numbers(), timeout=10)
            latency = spy.changed[-1][0] - committed
            assert latency < 5.0, latency
            sent = spy.changed[-1][1]
            assert sent.change == ("cancelled" if sent.course.status == "cancelled" else "updated")
            assert sent.course.title == "Portugiesisch A1 - neu"

            # Touched but unchanged: logged and compared, not sent. A later real change is the
            # barrier: once it arrived, a re-sent b would have arrived before it.
            await commit(engine, b.id, title=schema.courses.c.title)
            await asyncio.sleep(1.0)
            await commit(engine, c.id, subtitle="Mit neuem Untertitel")
            await eventually(lambda: c.number in spy.numbers(), timeout=10)
            await asyncio.sleep(0.5)
            assert b.number not in spy.numbers()
            runs = (
                await client.get(
                    "/tasks/executions", headers=STAFF, params={"task": "export-changes"}
                )
            ).json()
            assert all(r["params"].get("trigger") == "change-log" for r in runs)
            outcomes = {
                (i["record_key"], i["outcome"]) for r in runs for i in await items(client, r["id"])
            }
            assert (b.number, "unchanged") in outcomes

            # Deleted and unpublished courses are withdrawn, each with its reason.
            async with engine.begin() as conn:
                await conn.execute(
                    delete(schema.registrations).where(schema.registrations.c.course_id == gone.id)
                )
                await conn.execute(delete(schema.courses).where(schema.courses.c.id == gone.id))
            await commit(engine, hidden.id, publish=False, web_bookable=False)
            await eventually(lambda: len(spy.withdrawn) >= 2, timeout=10)
            reasons = {m.number: m.reason for _, m in spy.withdrawn}
            assert reasons == {gone.number: "deleted", hidden.number: "unpublished"}

        # Changed while the service is down: exported right after the restart (the log kept
        # it), and the first run after the restart is no new comparison of every course.
        await commit(engine, later.id, title="Während der Wartung geändert")
        async with service(**settings) as (client, runtime):
            await eventually(lambda: later.number in spy.numbers(), timeout=10)

            async def newest_finished() -> dict[str, Any] | None:
                runs = (
                    await client.get(
                        "/tasks/executions", headers=STAFF, params={"task": "export-changes"}
                    )
                ).json()
                return runs[0] if runs[0]["status"] != "running" else None

            newest = await eventually(newest_finished)
            assert newest["status"] == "succeeded"
            assert newest["counts"]["processed"] == 1, newest["counts"]
    finally:
        await website.stop()
        await engine.dispose()


async def test_poll_marker_survives_a_restart(tmp_path: Path, published_courses: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    engine = create_engine(url)
    await seed(engine, courses=40, seed=22, reset=True)
    published = await published_courses(engine)
    settings = {"var_dir": tmp_path, "coursedb_url": url}
    try:
        async with service(**settings) as (client, runtime):
            assert runtime.extras["change_source"] == "timestamp"
            first = await run_task(client, "export-changes")
            # No marker yet: every course is read (and, never sent before, exported).
            assert first["counts"]["processed"] == len(published)
        async with engine.begin() as conn:
            await access.update_row(conn, schema.courses, published[5].id, {"title": "Neu"})
        async with service(**settings) as (client, runtime):
            resumed = await run_task(client, "export-changes")
            done = await items(client, resumed["id"])
        # Only what changed since the persisted marker (plus its overlap window) is read.
        assert (published[5].number, "ok") in {(i["record_key"], i["outcome"]) for i in done}
        assert resumed["counts"]["processed"] < len(published) // 2, resumed["counts"]
    finally:
        await engine.dispose()
