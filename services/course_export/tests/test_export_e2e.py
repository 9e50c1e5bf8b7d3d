"""Export end to end: course-export (outbox, relay, bus) -> reference consumer's replica.

Full snapshot in several batches, then changes: an edited course is re-sent, an untouched one is
not, an unpublished one is withdrawn, and a full snapshot drops what disappeared. Runs on the
embedded default (SQLite + memory bus) and on PostgreSQL + RabbitMQ.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from course_export_service.app import create_app
from course_export_service.exporter import Exporter
from course_export_service.reference_consumer import CatalogueReplica, reference_handlers
from course_export_service.settings import Settings
from coursedb import schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_common.app import ServiceRuntime, process_broker
from mesh_common.bus import BusSettings, MemoryBroker, create_bus
from sqlalchemy import update


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def mesh(
    settings: dict[str, Any], coursedb_url: str
) -> AsyncIterator[tuple[ServiceRuntime, CatalogueReplica]]:
    engine = create_engine(coursedb_url)
    await seed(engine, courses=60, seed=9, reset=True)
    await engine.dispose()
    amqp = settings.get("amqp_url")
    broker: MemoryBroker | None = None if amqp else process_broker()
    app = create_app(Settings(coursedb_url=coursedb_url, **settings))
    replica = CatalogueReplica()
    # The session's RabbitMQ vhost (or this loop's memory broker) isolates the test.
    website = create_bus(BusSettings(service="website", amqp_url=amqp), broker=broker)
    website.include(reference_handlers(replica))
    async with LifespanManager(app):
        await website.start()
        try:
            yield app.state.runtime, replica
        finally:
            await website.stop()


async def scenario(
    runtime: ServiceRuntime, replica: CatalogueReplica, published_courses: Any
) -> None:
    coursedb = runtime.extras["coursedb"]
    exporter = Exporter(runtime, coursedb, batch_size=7)
    c = schema.courses
    published = await published_courses(coursedb)

    counts = await exporter.full_snapshot()
    assert counts.failed == 0 and counts.exported == len(published) > 7
    await eventually(
        lambda: (
            replica.snapshots.get(counts.snapshot_id) is not None
            and replica.snapshots[counts.snapshot_id].applied
        )
    )
    assert set(replica.courses) == {n for _, n in published}

    edited, untouched, hidden = published[0], published[1], published[2]
    async with coursedb.begin() as conn:
        await conn.execute(
            update(c)
            .where(c.c.id == edited.id)
            .values(title="Englisch B1 - Konversation", row_version=99)
        )
        await conn.execute(
            update(c).where(c.c.id == hidden.id).values(publish=False, web_bookable=False)
        )
    changes = await exporter.export_changes([edited.id, untouched.id, hidden.id])
    assert (changes.exported, changes.unchanged, changes.withdrawn) == (1, 1, 1)
    await eventually(
        lambda: (
            hidden.number not in replica.courses
            and replica.courses[edited.number].title == "Englisch B1 - Konversation"
        )
    )
    assert replica.courses[edited.number].revision == 99

    # Running the same change export again sends nothing new.
    again = await exporter.export_changes([edited.id, untouched.id])
    assert (again.exported, again.unchanged) == (0, 2)

    # A course deleted in the coursedb disappears from the replica with the next snapshot.
    gone = published[3]
    async with coursedb.begin() as conn:
        await conn.execute(
            schema.registrations.delete().where(schema.registrations.c.course_id == gone.id)
        )
        await conn.execute(c.delete().where(c.c.id == gone.id))
    second = await exporter.full_snapshot()
    await eventually(
        lambda: (
            replica.snapshots.get(second.snapshot_id) is not None
            and replica.snapshots[second.snapshot_id].applied
        )
    )
    assert gone.number not in replica.courses
    assert second.withdrawn == 1


async def test_export_on_embedded_default(tmp_path: Path, published_courses: Any) -> None:
    async with mesh(
        {"var_dir": tmp_path}, f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    ) as (rt, replica):
        await scenario(rt, replica, published_courses)


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_export_on_postgres_and_rabbitmq(
    pg_url: str, amqp_url: str, published_courses: Any
) -> None:
    schema_name = f"ce_{uuid.uuid4().hex[:6]}"
    # The scenario drives the exporter itself; the live change watcher would export the same
    # edits in the background (test_live_changes.py covers that path).
    settings = {
        "database_url": pg_url,
        "db_schema": schema_name,
        "amqp_url": amqp_url,
        "change_detection": "polling",
    }
    async with mesh(settings, pg_url) as (rt, replica):
        await scenario(rt, replica, published_courses)
