"""Publish-at end to end: scheduled exports over REST and AMQP fire once at their time (even
with two replicas), can be listed and cancelled, and become executions of the task framework.
On the embedded default (SQLite + memory bus) and on PostgreSQL + RabbitMQ."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from course_export_service.app import MIGRATIONS, create_app
from course_export_service.models import tasks as task_tables
from course_export_service.reference_consumer import CatalogueReplica, reference_handlers
from course_export_service.scheduling import ScheduledExports
from course_export_service.settings import Settings
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_common.app import ServiceRuntime, process_broker
from mesh_common.auth import mint_token
from mesh_common.bus import BusSettings, MemoryBroker, create_bus
from mesh_common.db import Database, upgrade
from mesh_contracts.course_export import RunExport
from pydantic import SecretStr, ValidationError

SECRET = "s" * 40
STAFF = {"Authorization": "Bearer " + mint_token(subject="ops", secret=SECRET, roles=["staff"])}
PARTICIPANT = {
    "Authorization": "Bearer " + mint_token(subject="p1", secret=SECRET, roles=["participant"])
}


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


class Mesh:
    """One or more course-export replicas on one database, and a website replica."""

    def __init__(self, clients: list[httpx.AsyncClient], runtimes: list[ServiceRuntime]) -> None:
        self.clients = clients
        self.runtimes = runtimes
        self.replica = CatalogueReplica()

    @property
    def client(self) -> httpx.AsyncClient:
        return self.clients[0]

    async def executions(self, task: str) -> list[dict[str, Any]]:
        r = await self.client.get("/tasks/executions", headers=STAFF, params={"task": task})
        assert r.status_code == 200, r.text
        return list(r.json())


@asynccontextmanager
async def mesh(
    settings: dict[str, Any], coursedb_url: str, *, replicas: int = 1
) -> AsyncIterator[Mesh]:
    engine = create_engine(coursedb_url)
    await seed(engine, courses=25, seed=12, reset=True)
    await engine.dispose()
    amqp = settings.get("amqp_url")
    broker: MemoryBroker | None = None if amqp else process_broker()
    async with AsyncExitStack() as stack:
        clients, runtimes = [], []
        for _ in range(replicas):  # one after another: the first one migrates
            app = create_app(
                Settings(
                    coursedb_url=coursedb_url,
                    mesh_jwt_secret=SecretStr(SECRET),
                    change_poll_seconds=3600,
                    schedule_check_seconds=0.2,
                    **settings,
                )
            )
            manager = await stack.enter_async_context(LifespanManager(app))
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=manager.app), base_url="http://ce"
                    )
                )
            )
            runtimes.append(app.state.runtime)
        m = Mesh(clients, runtimes)
        # Queues of its own: nothing another test left in the session's vhost reaches it.
        name = f"website{uuid.uuid4().hex[:6]}"
        website = create_bus(BusSettings(service=name, amqp_url=amqp), broker=broker)
        website.include(reference_handlers(m.replica))
        await website.start()
        stack.push_async_callback(website.stop)
        yield m


def in_seconds(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def scenario(m: Mesh) -> None:
    client = m.client
    # Scheduled for about a second from now: nothing before, the snapshot after.
    r = await client.post(
        "/scheduled-exports",
        headers=STAFF,
        json={"mode": "full", "run_at": in_seconds(1.0), "note": "Semesterstart"},
    )
    assert r.status_code == 201, r.text
    scheduled = r.json()
    assert scheduled["status"] == "scheduled" and scheduled["requested_by"] == "ops"
    assert await m.executions("full-export") == []
    listed = (await client.get("/scheduled-exports", headers=STAFF)).json()
    assert [s["id"] for s in listed] == [scheduled["id"]]

    async def fired() -> dict[str, Any] | None:
        body = (await client.get(f"/scheduled-exports/{scheduled['id']}", headers=STAFF)).json()
        return body if body["execution_status"] == "succeeded" else None

    done = await eventually(fired)
    fired_at = dt.datetime.fromisoformat(done["fired_at"])
    assert fired_at >= dt.datetime.fromisoformat(scheduled["run_at"])
    runs = await m.executions("full-export")
    assert [r["id"] for r in runs] == [done["execution_id"]]
    assert runs[0]["params"]["scheduled_export_id"] == scheduled["id"]
    await eventually(lambda: any(s.applied for s in m.replica.snapshots.values()))
    assert m.replica.courses  # the snapshot arrived at the website

    # Scheduled and cancelled: nothing fires, and a cancelled one cannot be cancelled again.
    r = await client.post(
        "/scheduled-exports", headers=STAFF, json={"mode": "full", "run_at": in_seconds(1.0)}
    )
    cancelled = (await client.delete(f"/scheduled-exports/{r.json()['id']}", headers=STAFF)).json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_by"] == "ops"
    again = await client.delete(f"/scheduled-exports/{cancelled['id']}", headers=STAFF)
    assert again.status_code == 409
    assert again.json()["code"] == "scheduled-export-not-pending"
    await asyncio.sleep(2.0)
    assert len(await m.executions("full-export")) == 1
    assert len(m.replica.snapshots) == 1
    pending = await client.get("/scheduled-exports", headers=STAFF, params={"status": "scheduled"})
    assert pending.json() == []

    # A fired export cannot be cancelled; a time in the past runs at once.
    assert (
        await client.delete(f"/scheduled-exports/{scheduled['id']}", headers=STAFF)
    ).status_code == 409
    r = await client.post(
        "/scheduled-exports", headers=STAFF, json={"mode": "changes", "run_at": in_seconds(-3600)}
    )
    past = r.json()
    changed = await eventually(lambda: _status_is(client, past["id"], "fired"), timeout=10)
    assert changed["execution_id"] in [e["id"] for e in await m.executions("export-changes")]


async def _status_is(client: httpx.AsyncClient, export_id: str, status: str) -> Any:
    body = (await client.get(f"/scheduled-exports/{export_id}", headers=STAFF)).json()
    return body if body["status"] == status else None


async def test_publish_at_on_embedded_default(tmp_path: Path) -> None:
    async with mesh({"var_dir": tmp_path}, f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}") as m:
        await scenario(m)


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_publish_at_on_postgres_and_rabbitmq(pg_url: str, amqp_url: str) -> None:
    schema = f"ce_{uuid.uuid4().hex[:6]}"
    settings = {"database_url": pg_url, "db_schema": schema, "amqp_url": amqp_url}
    async with mesh(settings, pg_url) as m:
        await scenario(m)


async def two_replicas_fire_once(m: Mesh) -> None:
    a, b = m.clients
    ids = []
    for i in range(3):
        r = await (a if i % 2 else b).post(
            "/scheduled-exports",
            headers=STAFF,
            json={"mode": "changes", "run_at": in_seconds(0.6 + 0.3 * i)},
        )
        ids.append(r.json()["id"])
    for export_id in ids:
        await eventually(lambda e=export_id: _status_is(a, e, "fired"))
    runs = await m.executions("export-changes")
    fired_for = sorted(r["params"]["scheduled_export_id"] for r in runs)
    assert fired_for == sorted(ids)  # every one once, none twice


async def test_two_replicas_fire_once_on_embedded_default(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}"
    async with mesh({"var_dir": tmp_path}, url, replicas=2) as m:
        assert m.runtimes[0].extras["task_runner"].runner_id != (
            m.runtimes[1].extras["task_runner"].runner_id
        )
        await two_replicas_fire_once(m)


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_two_replicas_fire_once_on_postgres(pg_url: str, amqp_url: str) -> None:
    schema = f"ce_{uuid.uuid4().hex[:6]}"
    settings = {"database_url": pg_url, "db_schema": schema, "amqp_url": amqp_url}
    async with mesh(settings, pg_url, replicas=2) as m:
        await two_replicas_fire_once(m)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service_db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(f"sqlite+aiosqlite:///{tmp_path / 'ce.sqlite3'}")
    return Database(request.getfixturevalue("pg_url"), schema=f"ce_{uuid.uuid4().hex[:6]}")


async def test_concurrent_claims_have_one_winner(service_db: Database) -> None:
    db = service_db
    await upgrade(db, MIGRATIONS)
    store = ScheduledExports(db, task_tables)
    now = dt.datetime.now(dt.UTC)
    try:
        for _ in range(5):
            item = await store.schedule(
                mode="full", run_at=now, requested_by=None, note=None, source="rest", now=now
            )
            wins = await asyncio.gather(
                *(store.claim(item.id, holder=f"r{i}", now=now) for i in range(4))
            )
            assert sorted(wins) == [False, False, False, True]
    finally:
        await db.dispose()


async def test_run_export_command_schedules_once_and_validates(tmp_path: Path) -> None:
    async with mesh({"var_dir": tmp_path}, f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}") as m:
        cms = create_bus(BusSettings(service="cms"), broker=process_broker())
        await cms.start()
        try:
            at = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
            env = cms.envelope("command", RunExport(mode="full", run_at=at, requested_by="cms"))
            # The same command delivered twice (same message id) schedules one export.
            assert await cms.publish_envelopes([env]) == [None]
            assert await cms.publish_envelopes([env]) == [None]
            await eventually(lambda: _listed(m.client), timeout=10)
            await asyncio.sleep(0.5)  # the second delivery has had time to be handled
            listed = await _listed(m.client)
            assert len(listed) == 1
            assert listed[0]["source"] == "amqp" and listed[0]["requested_by"] == "cms"
            assert dt.datetime.fromisoformat(listed[0]["run_at"]) == at
            assert await m.executions("full-export") == []
        finally:
            await cms.stop()

        # REST refuses a time without offset, an unknown mode, and callers without staff role.
        bad = await m.client.post(
            "/scheduled-exports", headers=STAFF, json={"run_at": "2030-01-01T08:00:00"}
        )
        assert bad.status_code == 422 and bad.headers["content-type"].startswith(
            "application/problem+json"
        )
        bad = await m.client.post(
            "/scheduled-exports", headers=STAFF, json={"mode": "all", "run_at": in_seconds(60)}
        )
        assert bad.status_code == 422
        far = await m.client.post(
            "/scheduled-exports", headers=STAFF, json={"run_at": in_seconds(86400 * 500)}
        )
        assert far.status_code == 422 and far.json()["code"] == "run-at-too-far"
        forbidden = await m.client.get("/scheduled-exports", headers=PARTICIPANT)
        assert forbidden.status_code == 403
        assert (await m.client.get("/scheduled-exports")).status_code == 401
        missing = await m.client.delete("/scheduled-exports/nope", headers=STAFF)
        assert missing.status_code == 404
        assert missing.json()["code"] == "scheduled-export-not-found"
    # A naive run_at is not a valid command at all (the bus dead-letters it as poison).
    with pytest.raises(ValidationError):
        RunExport.model_validate({"mode": "full", "run_at": "2030-01-01T08:00:00"})


async def _listed(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    return list((await client.get("/scheduled-exports", headers=STAFF)).json())
