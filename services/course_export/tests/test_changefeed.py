"""The PostgreSQL change log sees every kind of course change within well under a second,
polling recovers what a lost notification would have delayed, and a row committed late (below
ids already consumed) is not lost. Real PostgreSQL, seeded coursedb."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from course_export_service.changefeed import (
    ChangeBatch,
    PgChangeFeed,
    ack_changes,
    has_changes,
    install_change_log,
    take_changes,
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


async def drain(engine: AsyncEngine) -> None:
    # Whatever an earlier test logged (the seed ran before the triggers, so it logged nothing).
    await ack_changes(engine, await take_changes(engine))


async def test_every_kind_of_change_is_reported_fast(coursedb: AsyncEngine) -> None:
    await drain(coursedb)
    feed = PgChangeFeed(coursedb, poll_interval=30.0, debounce=0.05)
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
    finally:
        await batches.aclose()


async def test_polling_recovers_without_notifications(coursedb: AsyncEngine) -> None:
    await drain(coursedb)
    async with coursedb.connect() as conn:
        course_id = (await conn.execute(select(schema.courses.c.id).limit(1))).scalar_one()
    async with coursedb.begin() as conn:
        await conn.execute(
            update(schema.courses)
            .where(schema.courses.c.id == course_id)
            .values(subtitle="changed while nobody listened")
        )
    # A feed started later (the notification is long gone) still finds the change in the log.
    feed = PgChangeFeed(coursedb, poll_interval=0.2, debounce=0.01)
    batches = feed.batches()
    try:
        batch = await next_batch(batches)
        assert batch.course_ids == {course_id}
        assert await has_changes(coursedb)  # not acked until the consumer moves on
    finally:
        await batches.aclose()
    # The consumer stopped before asking for more: the batch is still there for the next one.
    again = await take_changes(coursedb)
    assert again.row_ids == batch.row_ids
    assert await ack_changes(coursedb, again) == len(batch.row_ids)
    assert not await has_changes(coursedb)


async def test_a_late_commit_below_consumed_ids_is_not_lost(coursedb: AsyncEngine) -> None:
    """Log ids are drawn at insert, not at commit: a slow transaction's row can sit below rows
    already consumed. Taking and acking exact rows (no cursor) still delivers it."""
    await drain(coursedb)
    async with coursedb.connect() as conn:
        slow_id, fast_id = list(
            (
                await conn.execute(
                    select(schema.courses.c.id).order_by(schema.courses.c.id).limit(2)
                )
            ).scalars()
        )
    async with coursedb.connect() as slow:
        await slow.begin()
        await slow.execute(
            update(schema.courses).where(schema.courses.c.id == slow_id).values(subtitle="slow")
        )  # its log row has the lower id, but is not committed yet
        async with coursedb.begin() as fast:
            await fast.execute(
                update(schema.courses).where(schema.courses.c.id == fast_id).values(subtitle="fast")
            )
        first = await take_changes(coursedb)
        assert first.course_ids == {fast_id}
        await ack_changes(coursedb, first)
        await slow.commit()
    late = await take_changes(coursedb)
    assert late.course_ids == {slow_id}
    assert late.last_id is not None and first.last_id is not None
    assert late.last_id < first.last_id


async def test_install_refuses_non_postgres(tmp_path: object) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/c.sqlite3")
    with pytest.raises(ValueError, match="PostgreSQL"):
        await install_change_log(engine)
    await engine.dispose()
