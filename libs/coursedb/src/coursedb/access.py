"""Writing to the course database so that change detection keeps working.

Every table with ``updated_at``/``row_version`` (courses, participants, bank accounts, orders,
registrations, lecturers, locations) must have both maintained on every change: course-export
finds changed courses by ``updated_at``, and readers/writers use ``row_version`` to drop
duplicates and to detect lost updates. Two layers make sure of it:

- the columns' ``onupdate`` (``coursedb.schema``) sets both on *any* SQLAlchemy Core ``UPDATE``;
- ``update_row`` / ``touch`` below set them explicitly, check an expected version (optimistic
  concurrency) and tell "not found" from "changed meanwhile".

Changing a course's children (sessions, discounts, lecturers) changes what the website shows:
call ``touch(conn, courses, course_id)`` in the same transaction so the course counts as changed.

This module runs statements on a connection it is given; it never opens connections, commits, or
decides transaction boundaries (the caller owns the unit of work).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

_MANAGED = frozenset({"id", "created_at", "updated_at", "row_version"})


class RowNotFoundError(LookupError):
    """No row with that id."""

    def __init__(self, table: str, row_id: int) -> None:
        super().__init__(f"{table} {row_id} does not exist")
        self.table = table
        self.row_id = row_id


class StaleRowError(RuntimeError):
    """The row's version is not the expected one: someone else changed it meanwhile."""

    def __init__(self, table: str, row_id: int, expected: int, actual: int) -> None:
        super().__init__(f"{table} {row_id} is at version {actual}, expected {expected}")
        self.table = table
        self.row_id = row_id
        self.expected = expected
        self.actual = actual


def utcnow() -> dt.datetime:
    """The current instant, timezone-aware UTC (what ``UTCDateTime`` columns take)."""
    return dt.datetime.now(dt.UTC)


async def update_row(
    conn: AsyncConnection,
    table: Table,
    row_id: int,
    values: Mapping[str, Any],
    *,
    expected_version: int | None = None,
) -> int:
    """Update one row by id, bump ``updated_at`` and ``row_version``; return the new version.

    With ``expected_version`` the update only applies to that version (compare-and-set), else
    ``StaleRowError``. ``RowNotFoundError`` when the id does not exist. The managed columns (id,
    created_at, updated_at, row_version) cannot be set through ``values``.
    """
    if "row_version" not in table.c or "updated_at" not in table.c:
        raise ValueError(f"{table.name} has no updated_at/row_version to maintain")
    managed = _MANAGED.intersection(values)
    if managed:
        raise ValueError(f"managed columns cannot be set: {sorted(managed)}")

    stmt = (
        table.update()
        .where(table.c.id == row_id)
        .values(
            **values,
            updated_at=utcnow(),
            row_version=table.c.row_version + 1,
        )
    )
    if expected_version is not None:
        stmt = stmt.where(table.c.row_version == expected_version)
    result = await conn.execute(stmt)

    # MariaDB has no UPDATE ... RETURNING, so read the version back in the same transaction.
    version = await conn.scalar(select(table.c.row_version).where(table.c.id == row_id))
    if version is None:
        raise RowNotFoundError(table.name, row_id)
    if result.rowcount == 0:
        assert expected_version is not None  # only a version mismatch can skip an existing row
        raise StaleRowError(table.name, row_id, expected_version, version)
    return int(version)


async def touch(
    conn: AsyncConnection, table: Table, row_id: int, *, expected_version: int | None = None
) -> int:
    """Mark a row as changed without changing its data (e.g. a course whose sessions changed)."""
    return await update_row(conn, table, row_id, {}, expected_version=expected_version)
