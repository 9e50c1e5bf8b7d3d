"""The PostgreSQL change log sees every kind of course change within well under a second, and
polling recovers what a lost notification would have delayed. Real PostgreSQL, seeded coursedb."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from course_export_service.changefeed import (
    ChangeBatch,
    PgChangeFeed,
    install_change_log,
    prune_changes,
    read_changes,
)
from coursedb import schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.postgres


@pytest.fixture
async def coursedb(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    await seed(engine, courses=30, seed=7, reset=True)
    await install_change_log(engine)
    await install_change_log(engine)  # idempotent: a second install changes nothing
    try:
        yield engine
    finally:
        await engine.dispose()


async def next_batch(feed_iter: AsyncIterator[ChangeBatch], timeout: float = 5.0) -> ChangeBatch:
    return await asyncio.wait_for(feed_iter.__anext__(), timeout)


async def start_cursor(engine: AsyncEngine) -> int:
    # Skip whatever the seed itself logged (the triggers were installed after it, so nothing).
    return (await read_changes(engine, 0)).cursor


async def test_every_kind_of_change_is_reported_fast(coursedb: AsyncEngine) -> None:
    feed = PgChangeFeed(
        coursedb, cursor=await start_cursor(coursedb), poll_interval=30.0, debounce=0.05
    )
    batches = feed.batches()
    async with coursedb.connect() as conn:
        ids = list((await conn.execute(select(schema.courses.c.id).limit(4))).scalars())
    a, b, c, d = ids
    try:
        # Prime the listener (first __anext__ starts LISTEN and blocks until a change).
        first = asyncio.ensure_future(next_batch(batches))
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        async with coursedb.begin() as conn:
            await conn.execute(
                update(schema.courses)
                .where(schema.courses.c.id == a)
                .values(title="Spanisch A1 - neu")
            )
        got = await first
        latency = time.perf_counter() - started
        assert got.course_ids == {a}
        # With a 30 s poll interval, only NOTIFY can explain a sub-second answer.
        assert latency < 1.0

        async with coursedb.begin() as conn:
            await conn.execute(
                update(schema.course_sessions)
                .where(schema.course_sessions.c.course_id == b)
                .values(note="Raumänderung")
            )
        assert (await next_batch(batches)).course_ids == {b}

        async with coursedb.begin() as conn:
            await conn.execute(
                delete(schema.course_lecturers).where(schema.course_lecturers.c.course_id == c)
            )
            await conn.execute(
                update(schema.courses).where(schema.courses.c.id == d).values(status="cancelled")
            )
        seen: set[int] = set()
        while seen != {c, d}:
            seen |= (await next_batch(batches)).course_ids
        assert feed.cursor > 0
    finally:
        await batches.aclose()


async def test_polling_recovers_without_notifications(coursedb: AsyncEngine) -> None:
    cursor = await start_cursor(coursedb)
    async with coursedb.connect() as conn:
        course_id = (await conn.execute(select(schema.courses.c.id).limit(1))).scalar_one()
    async with coursedb.begin() as conn:
        await conn.execute(
            update(schema.courses)
            .where(schema.courses.c.id == course_id)
            .values(subtitle="changed while nobody listened")
        )
    # A feed started later (the notification is long gone) still finds the change in the log.
    feed = PgChangeFeed(coursedb, cursor=cursor, poll_interval=0.2, debounce=0.01)
    batches = feed.batches()
    try:
        batch = await next_batch(batches)
        assert batch.course_ids == {course_id}
        assert await prune_changes(coursedb, upto=batch.cursor) >= 1
        assert (await read_changes(coursedb, 0)).course_ids == frozenset()
    finally:
        await batches.aclose()


async def test_install_refuses_non_postgres(tmp_path: object) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/c.sqlite3")
    with pytest.raises(ValueError, match="PostgreSQL"):
        await install_change_log(engine)
    await engine.dispose()
