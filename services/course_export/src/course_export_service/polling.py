"""Change detection where no trigger can be installed: polling a modification timestamp.

Used for SQLite and MariaDB course databases (and any PostgreSQL one where the connector may not
create triggers). Each poll asks for courses whose ``updated_at`` is at or after the previous
marker minus an **overlap window**: a transaction that started before the previous poll but
committed after it carries an older timestamp, and the overlap re-reads that stretch so such a
row is not skipped. Re-reporting a course is harmless: the exporter compares content hashes and
sends only documents that really changed.

Session, lecturer and discount edits are seen when the course's own ``updated_at`` moves (the
coursedb access layer's ``touch``); deletions leave no row to find, so :func:`withdrawn_ids`
compares the ids the exporter published with those that still exist. This module reads only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from coursedb import schema
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

DEFAULT_OVERLAP = dt.timedelta(minutes=2)


@dataclass(frozen=True)
class PollResult:
    course_ids: frozenset[int]
    marker: dt.datetime  # pass to the next poll; persisted by the caller


class TimestampPoller:
    """Finds courses modified since a marker, re-reading an overlap window each time."""

    def __init__(self, engine: AsyncEngine, *, overlap: dt.timedelta = DEFAULT_OVERLAP) -> None:
        self.engine = engine
        self.overlap = overlap

    async def poll(self, marker: dt.datetime | None) -> PollResult:
        courses = schema.courses
        async with self.engine.connect() as conn:
            # The database's own clock: the app host's clock may differ from the writers'.
            query = select(courses.c.id, courses.c.updated_at)
            if marker is not None:
                query = query.where(courses.c.updated_at >= marker - self.overlap)
            rows = (await conn.execute(query)).all()
        # The newest timestamp is among the rows read (they cover everything at or after the
        # window's start); with no rows the marker stays where it was.
        next_marker = max(
            [r.updated_at for r in rows] + ([marker] if marker else []),
            default=dt.datetime.fromtimestamp(0, dt.UTC),
        )
        return PollResult(frozenset(r.id for r in rows), next_marker)


async def withdrawn_ids(engine: AsyncEngine, published: Iterable[int]) -> frozenset[int]:
    """Which of the ``published`` course ids are gone or no longer meant for publication."""
    wanted = set(published)
    if not wanted:
        return frozenset()
    courses = schema.courses
    still: set[int] = set()
    ids = sorted(wanted)
    async with engine.connect() as conn:
        for start in range(0, len(ids), 1000):  # bounded IN lists on every backend
            chunk = ids[start : start + 1000]
            found = await conn.execute(
                select(courses.c.id).where(courses.c.id.in_(chunk), courses.c.publish.is_(True))
            )
            still.update(found.scalars())
    return frozenset(wanted - still)
