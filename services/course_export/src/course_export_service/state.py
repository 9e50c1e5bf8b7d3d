"""What the web backend was last sent: content hashes per course, and withdrawals.

:func:`content_hash` fingerprints a course document without its volatile fields (revision,
timestamps, the hash itself), so a course that was merely touched hashes the same and is not
re-sent. :class:`ExportState` partitions freshly built documents into changed and unchanged,
records what was sent, and lists what is published so withdrawals can be found. It runs in the
caller's transaction (together with the outbox rows of the messages it justifies) and never
commits on its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from mesh_contracts.course_export import CourseDocument
from sqlalchemy import DateTime, Integer, String, bindparam, func, null, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from course_export_service.models import exported_courses

VOLATILE = frozenset({"content_hash", "revision", "updated_at"})
_UPSERT_COLUMNS = ("number", "content_hash", "revision", "exported_at", "withdrawn_at")


def _pg_upsert() -> Any:
    rows = (
        func.unnest(
            bindparam("ids", type_=ARRAY(Integer)),
            bindparam("numbers", type_=ARRAY(String)),
            bindparam("hashes", type_=ARRAY(String)),
            bindparam("revisions", type_=ARRAY(Integer)),
        )
        .table_valued("course_id", "number", "content_hash", "revision")
        .render_derived(name="u")
    )
    stmt = pg_insert(exported_courses).from_select(
        ["course_id", "number", "content_hash", "revision", "exported_at", "withdrawn_at"],
        select(
            rows.c.course_id,
            rows.c.number,
            rows.c.content_hash,
            rows.c.revision,
            bindparam("at", type_=DateTime(timezone=True)),
            null(),
        ),
    )
    return stmt.on_conflict_do_update(
        index_elements=[exported_courses.c.course_id],
        set_={c: stmt.excluded[c] for c in _UPSERT_COLUMNS},
    )


_PG_UPSERT = _pg_upsert()


def content_hash(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``document`` without its volatile fields."""
    stable = {k: v for k, v in document.items() if k not in VOLATILE}
    canonical = orjson.dumps(stable, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class Built:
    """A freshly built document for one coursedb course: ``document`` is the contract's JSON
    form (what ``CourseDocument.model_dump(mode="json")`` gives), ``encoded`` its JSON text as
    a snapshot batch carries it, ``model`` the contract object if one was made (else it is
    made from ``document`` when a message needs it)."""

    course_id: int
    number: str
    revision: int
    document: Mapping[str, Any]
    hash: str
    model: CourseDocument | None = None
    encoded: bytes | None = None


@dataclass(frozen=True)
class Sent:
    """What the backend holds for a course: its number and last hash, and whether it is
    published (False once a withdrawal was sent)."""

    number: str
    content_hash: str
    published: bool


@dataclass(frozen=True)
class Partition:
    changed: list[Built]  # new, different, or previously withdrawn
    unchanged: list[Built]


class ExportState:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def known(self, course_ids: Iterable[int]) -> dict[int, Sent]:
        """What was last sent for each of ``course_ids`` (courses never sent are absent)."""
        ids = list(course_ids)
        if not ids:
            return {}
        rows = await self.session.execute(
            select(
                exported_courses.c.course_id,
                exported_courses.c.number,
                exported_courses.c.content_hash,
                exported_courses.c.withdrawn_at,
            ).where(exported_courses.c.course_id.in_(ids))
        )
        return {r.course_id: Sent(r.number, r.content_hash, r.withdrawn_at is None) for r in rows}

    async def partition(
        self, built: Iterable[Built], known: Mapping[int, Sent] | None = None
    ) -> Partition:
        """Changed (new, different, or previously withdrawn) and unchanged documents;
        ``known`` from :meth:`known` saves the query."""
        items = list(built)
        if not items:
            return Partition([], [])
        if known is None:
            known = await self.known(b.course_id for b in items)
        changed, unchanged = [], []
        for b in items:
            prev = known.get(b.course_id)
            if prev is None or prev.content_hash != b.hash or not prev.published:
                changed.append(b)
            else:
                unchanged.append(b)
        return Partition(changed, unchanged)

    async def record_sent(self, built: Iterable[Built], *, at: dt.datetime) -> None:
        items = list(built)
        if not items:
            return
        dialect = self.session.bind.dialect.name if self.session.bind else "sqlite"
        if dialect == "postgresql":
            await self._record_sent_pg(items, at)
            return
        rows = [
            {
                "course_id": b.course_id,
                "number": b.number,
                "content_hash": b.hash,
                "revision": b.revision,
                "exported_at": at,
                "withdrawn_at": None,
            }
            for b in items
        ]
        stmt = sqlite_insert(exported_courses)
        stmt = stmt.on_conflict_do_update(
            index_elements=[exported_courses.c.course_id],
            set_={c: stmt.excluded[c] for c in _UPSERT_COLUMNS},
        )
        # executemany: one statement compiled once (a multi-VALUES literal would be compiled
        # anew for every batch).
        await self.session.execute(stmt, rows)

    async def _record_sent_pg(self, items: list[Built], at: dt.datetime) -> None:
        """One statement for the whole batch: the columns travel as four arrays and PostgreSQL
        unnests them (one plan, one round trip, constant SQL for the statement cache)."""
        await self.session.execute(
            _PG_UPSERT,
            {
                "ids": [b.course_id for b in items],
                "numbers": [b.number for b in items],
                "hashes": [b.hash for b in items],
                "revisions": [b.revision for b in items],
                "at": at,
            },
        )

    async def published_ids(self) -> set[int]:
        result = await self.session.execute(
            select(exported_courses.c.course_id).where(exported_courses.c.withdrawn_at.is_(None))
        )
        return set(result.scalars())

    async def record_withdrawn(self, course_ids: Iterable[int], *, at: dt.datetime) -> None:
        ids = list(course_ids)
        if ids:
            await self.session.execute(
                update(exported_courses)
                .where(exported_courses.c.course_id.in_(ids))
                .values(withdrawn_at=at)
            )
