"""Timestamp polling with an overlap window, and withdrawal detection, on SQLite and MariaDB."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from course_export_service.polling import TimestampPoller, withdrawn_ids
from coursedb import access, schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
async def coursedb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}"
    else:
        url = request.getfixturevalue("mariadb_url")
    engine = create_engine(url)
    await seed(engine, courses=25, seed=5, reset=True)
    try:
        yield engine
    finally:
        await engine.dispose()


async def course_ids(engine: AsyncEngine, n: int) -> list[int]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(schema.courses.c.id)
                    .where(schema.courses.c.publish.is_(True))
                    .order_by(schema.courses.c.id)
                    .limit(n)
                )
            ).scalars()
        )


async def test_first_poll_reports_everything_then_only_changes(coursedb: AsyncEngine) -> None:
    poller = TimestampPoller(coursedb, overlap=dt.timedelta(0))
    first = await poller.poll(None)
    assert len(first.course_ids) == 25
    quiet = await poller.poll(first.marker)
    # Zero overlap re-reads only rows at exactly the marker instant.
    assert len(quiet.course_ids) < 25

    a, b = await course_ids(coursedb, 2)
    async with coursedb.begin() as conn:
        await access.update_row(conn, schema.courses, a, {"title": "Italienisch A2"})
        await access.touch(conn, schema.courses, b)  # e.g. its sessions changed
    changed = await poller.poll(quiet.marker)
    assert {a, b} <= changed.course_ids
    assert changed.marker >= quiet.marker


async def test_overlap_window_catches_a_late_commit_with_an_older_timestamp(
    coursedb: AsyncEngine,
) -> None:
    poller = TimestampPoller(coursedb, overlap=dt.timedelta(minutes=2))
    baseline = await poller.poll(None)
    (late,) = await course_ids(coursedb, 1)
    # A writer whose transaction began 60 s before the marker commits only now.
    stamped = baseline.marker - dt.timedelta(seconds=60)
    async with coursedb.begin() as conn:
        await conn.execute(
            update(schema.courses)
            .where(schema.courses.c.id == late)
            .values(subtitle="spät", updated_at=stamped)
        )
    assert late in (await poller.poll(baseline.marker)).course_ids
    without_overlap = TimestampPoller(coursedb, overlap=dt.timedelta(0))
    assert late not in (await without_overlap.poll(baseline.marker)).course_ids


async def test_withdrawn_ids_finds_deleted_and_unpublished(coursedb: AsyncEngine) -> None:
    ids = await course_ids(coursedb, 5)
    gone, hidden = ids[0], ids[1]
    async with coursedb.begin() as conn:
        await conn.execute(
            delete(schema.registrations).where(schema.registrations.c.course_id == gone)
        )
        await conn.execute(delete(schema.courses).where(schema.courses.c.id == gone))
        await conn.execute(
            update(schema.courses)
            .where(schema.courses.c.id == hidden)
            .values(publish=False, web_bookable=False)
        )
    assert await withdrawn_ids(coursedb, ids) == {gone, hidden}
    assert await withdrawn_ids(coursedb, []) == frozenset()
