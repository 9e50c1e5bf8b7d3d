"""Where change detection stands, persisted so that a restart resumes there.

One row per marker name in ``export_markers``:

- ``changes.timestamp``: the timestamp poller's marker (ISO 8601), on SQLite and MariaDB
  course databases; the next run reads from it minus the overlap window.
- ``changes.changelog``: on PostgreSQL the unconsumed rows of the change log are themselves the
  durable position; this row records that the one-time comparison of every course (done when
  the log is first consumed) has happened, and the last log id consumed, for operators.

Written by the change task after its export committed; runs in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from course_export_service.models import export_markers

TIMESTAMP = "changes.timestamp"
CHANGELOG = "changes.changelog"


async def get_marker(session: AsyncSession, name: str) -> str | None:
    return (
        await session.execute(select(export_markers.c.value).where(export_markers.c.name == name))
    ).scalar_one_or_none()


async def set_marker(session: AsyncSession, name: str, value: str, *, at: dt.datetime) -> None:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(export_markers).values(name=name, value=value, updated_at=at)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[export_markers.c.name],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        )
    )


def encode_timestamp(value: dt.datetime) -> str:
    return value.isoformat()


def decode_timestamp(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None
