"""Content hashes decide what is re-sent; state survives in course-export's own schema."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from course_export_service.app import MIGRATIONS
from course_export_service.state import Built, ExportState, content_hash
from mesh_common.db import Database, upgrade

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


def built(course_id: int, title: str, revision: int = 1) -> Built:
    doc = {
        "number": f"252-{course_id:05d}",
        "title": title,
        "revision": revision,
        "updated_at": NOW.isoformat(),
        "fee": {"amount": "10.00"},
    }
    return Built(course_id, doc["number"], revision, doc, content_hash(doc))  # type: ignore[arg-type]


def test_hash_ignores_volatile_fields_and_key_order() -> None:
    a = {"title": "Yoga", "revision": 1, "updated_at": "x", "sessions": [1, 2]}
    b = {"sessions": [1, 2], "updated_at": "y", "revision": 9, "title": "Yoga"}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({**a, "title": "Yoga!"})
    assert content_hash(a) != content_hash({**a, "sessions": [2, 1]})  # order of sessions matters


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'ce.sqlite3'}")
    else:
        import uuid

        schema = f"ce_{uuid.uuid4().hex[:8]}"
        database = Database(request.getfixturevalue("pg_url"), schema=schema)
    await upgrade(database, MIGRATIONS)
    try:
        yield database
    finally:
        await database.dispose()


async def test_partition_record_and_withdraw(db: Database) -> None:
    first = [built(1, "Yoga"), built(2, "Excel"), built(3, "Spanisch")]
    async with db.unit_of_work() as s:
        part = await ExportState(s).partition(first)
        assert [b.course_id for b in part.changed] == [1, 2, 3] and part.unchanged == []
        await ExportState(s).record_sent(part.changed, at=NOW)

    second = [built(1, "Yoga", revision=2), built(2, "Excel für Fortgeschrittene"), built(4, "Neu")]
    async with db.unit_of_work() as s:
        state = ExportState(s)
        part = await state.partition(second)
        # course 1 was only touched (new revision, same content): not re-sent
        assert [b.course_id for b in part.unchanged] == [1]
        assert sorted(b.course_id for b in part.changed) == [2, 4]
        await state.record_sent(part.changed, at=NOW)
        assert await state.published_ids() == {1, 2, 3, 4}
        await state.record_withdrawn([3], at=NOW)
        assert await state.published_ids() == {1, 2, 4}

    # A withdrawn course that comes back is sent again even with an identical document.
    async with db.unit_of_work() as s:
        part = await ExportState(s).partition([built(3, "Spanisch")])
        assert [b.course_id for b in part.changed] == [3]
        await ExportState(s).record_sent(part.changed, at=NOW)
        assert 3 in await ExportState(s).published_ids()


async def test_rollback_leaves_no_state(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.unit_of_work() as s:
            await ExportState(s).record_sent([built(9, "X")], at=NOW)
            raise RuntimeError("publish failed")
    async with db.unit_of_work() as s:
        assert await ExportState(s).published_ids() == set()


@pytest.mark.postgres
async def test_outbox_bodies_are_compressed_with_lz4_on_postgres(pg_url: str) -> None:
    """Migration 0006: snapshot batches are large; lz4 costs PostgreSQL a third of pglz."""
    import uuid

    from sqlalchemy import text

    schema = f"ce_{uuid.uuid4().hex[:8]}"
    database = Database(pg_url, schema=schema)
    try:
        await upgrade(database, MIGRATIONS)
        async with database.engine.connect() as conn:
            lz4 = (
                await conn.execute(
                    text(
                        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                        "WHERE name = 'default_toast_compression'"
                    )
                )
            ).scalar()
            method = (
                await conn.execute(
                    text(
                        "SELECT CAST(a.attcompression AS text) FROM pg_attribute a "
                        "JOIN pg_class c ON c.oid = a.attrelid "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = :schema AND c.relname = 'mesh_outbox' "
                        "AND a.attname = 'body'"
                    ),
                    {"schema": schema},
                )
            ).scalar()
        assert method == ("l" if lz4 else "")
    finally:
        async with database.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await database.dispose()
