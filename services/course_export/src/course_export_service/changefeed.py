"""Change detection in the centre's course database: which courses changed, within seconds.

On PostgreSQL, course-export installs a trigger-fed change log in the coursedb: every INSERT,
UPDATE or DELETE of a course or of its sessions, lecturers or discounts appends the course id to
``edumesh_course_changes`` and sends ``pg_notify`` on :data:`CHANNEL`. :class:`PgChangeFeed`
LISTENs for those notifications (so a change is seen within milliseconds) and also polls the log
at an interval, so a missed notification (connection drop, listener restart) delays a change but
never loses it: the log, read from a persisted cursor, is the source of truth.

This module only reports *which* courses changed. Deciding whether the exported document really
differs (content hash) and sending it belong to the exporter. It must not write to any coursedb
table other than its own change log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from sqlalchemy import column, delete, select, table, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("course_export.changefeed")

CHANNEL = "edumesh_course_changes"
LOG_TABLE = "edumesh_course_changes"

# (table, expression yielding the course id from NEW/OLD)
_WATCHED = (
    ("courses", "id"),
    ("course_sessions", "course_id"),
    ("course_lecturers", "course_id"),
    ("course_discounts", "course_id"),
)

_log = table(LOG_TABLE, column("id"), column("course_id"))

# DDL built only from the module constants above, never from input.
_INSTALL = [
    f"""
    CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
        id bigserial PRIMARY KEY,
        course_id integer NOT NULL,
        source varchar(32) NOT NULL,
        op char(1) NOT NULL,
        changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
    )
    """,
    f"CREATE INDEX IF NOT EXISTS ix_{LOG_TABLE}_changed_at ON {LOG_TABLE} (changed_at)",
    f"""
    CREATE OR REPLACE FUNCTION edumesh_log_course_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        cid integer;
    BEGIN
        IF TG_OP = 'DELETE' THEN
            EXECUTE format('SELECT ($1).%I', TG_ARGV[0]) INTO cid USING OLD;
        ELSE
            EXECUTE format('SELECT ($1).%I', TG_ARGV[0]) INTO cid USING NEW;
        END IF;
        INSERT INTO {LOG_TABLE} (course_id, source, op)
            VALUES (cid, TG_TABLE_NAME, left(TG_OP, 1));
        -- The payload is only a hint; listeners read the log from their cursor.
        PERFORM pg_notify('{CHANNEL}', cid::text);
        RETURN NULL;
    END
    $$
    """,  # noqa: S608 - constants only
]


def _trigger_sql(table: str, column: str) -> list[str]:
    name = f"edumesh_changes_{table}"
    return [
        f"DROP TRIGGER IF EXISTS {name} ON {table}",
        f"CREATE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION edumesh_log_course_change('{column}')",
    ]


async def install_change_log(engine: AsyncEngine) -> None:
    """Create (or refresh) the change log table, function and triggers. Idempotent."""
    if engine.dialect.name != "postgresql":
        raise ValueError("the trigger-fed change log is for PostgreSQL; use polling elsewhere")
    async with engine.begin() as conn:
        # One installer at a time across replicas.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('edumesh_changefeed'))"))
        for statement in _INSTALL:
            await conn.execute(text(statement))
        for table, column in _WATCHED:
            for statement in _trigger_sql(table, column):
                await conn.execute(text(statement))


@dataclass(frozen=True)
class ChangeBatch:
    """Courses changed since the previous cursor; ``cursor`` is the new position to persist."""

    course_ids: frozenset[int]
    cursor: int


async def read_changes(engine: AsyncEngine, cursor: int, *, limit: int = 10_000) -> ChangeBatch:
    """Course ids logged after ``cursor`` (deduplicated), and the cursor after them."""
    async with engine.connect() as conn:
        query = (
            select(_log.c.id, _log.c.course_id)
            .where(_log.c.id > cursor)
            .order_by(_log.c.id)
            .limit(limit)
        )
        rows = (await conn.execute(query)).all()
    if not rows:
        return ChangeBatch(frozenset(), cursor)
    return ChangeBatch(frozenset(r.course_id for r in rows), rows[-1].id)


async def prune_changes(engine: AsyncEngine, *, upto: int) -> int:
    """Delete log rows every consumer has read (ids <= ``upto``); returns how many."""
    async with engine.begin() as conn:
        result = await conn.execute(delete(_log).where(_log.c.id <= upto))
    return int(result.rowcount or 0)


class PgChangeFeed:
    """Yields batches of changed course ids: woken by NOTIFY, backed by polling the log.

    ``debounce`` gathers the burst of notifications one transaction produces (a course and its
    sessions) into one batch.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cursor: int = 0,
        poll_interval: float = 30.0,
        debounce: float = 0.2,
    ) -> None:
        self.engine = engine
        self.cursor = cursor
        self.poll_interval = poll_interval
        self.debounce = debounce
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    async def _listen(self) -> None:
        url = make_url(self.engine.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        try:
            self._listener = await asyncpg.connect(dsn)
            await self._listener.add_listener(CHANNEL, lambda *_: self._wake.set())
        except (OSError, asyncpg.PostgresError):
            # Polling still finds every change; the listener is only an accelerator.
            log.warning("LISTEN %s unavailable; falling back to polling", CHANNEL, exc_info=True)
            self._listener = None

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def batches(self) -> AsyncIterator[ChangeBatch]:
        """Endless stream of non-empty batches; the caller persists ``batch.cursor``."""
        await self._listen()
        try:
            while True:
                batch = await read_changes(self.engine, self.cursor)
                if batch.course_ids:
                    self.cursor = batch.cursor
                    yield batch
                    continue  # drain a backlog before waiting again
                if self._listener is not None and self._listener.is_closed():
                    await self._listen()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                self._wake.clear()
                await asyncio.sleep(self.debounce)
        finally:
            await self.close()
