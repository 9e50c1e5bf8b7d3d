"""Change detection in the centre's course database: which courses changed, within seconds.

On PostgreSQL, course-export installs a trigger-fed change log in the coursedb: every INSERT,
UPDATE or DELETE of a course or of its sessions, lecturers or discounts appends the course id to
``edumesh_course_changes`` and sends ``pg_notify`` on :data:`CHANNEL`. A
:class:`ChangeListener` LISTENs for those notifications (so a change is seen within
milliseconds); the log is the source of truth and is polled too, so a missed notification
(connection drop, listener restart) delays a change but never loses it.

The log works as a **queue**: a consumer takes the committed rows (:func:`take_changes`),
exports those courses, and only then deletes exactly the rows it took (:func:`ack_changes`).
A reader cursor over the ``bigserial`` id would be wrong: ids are drawn when a row is inserted,
not when its transaction commits, so a slow transaction can commit a row *below* a cursor that
already moved past it. Taking and deleting by id leaves such a late row in the log until the
next take. A crash between export and ack exports those courses again, which the content hashes
make harmless (at-least-once). One course-export deployment consumes one coursedb's log (its
replicas take turns through the task lease).

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
    """Courses logged as changed, and the log rows that said so (to ack after exporting)."""

    course_ids: frozenset[int]
    row_ids: tuple[int, ...]

    @property
    def last_id(self) -> int | None:
        return max(self.row_ids) if self.row_ids else None


async def take_changes(engine: AsyncEngine, *, limit: int = 10_000) -> ChangeBatch:
    """Up to ``limit`` committed log rows, oldest first, deduplicated to course ids. Nothing is
    removed: call :func:`ack_changes` with the batch once its courses are exported."""
    async with engine.connect() as conn:
        query = select(_log.c.id, _log.c.course_id).order_by(_log.c.id).limit(limit)
        rows = (await conn.execute(query)).all()
    return ChangeBatch(frozenset(r.course_id for r in rows), tuple(r.id for r in rows))


async def ack_changes(engine: AsyncEngine, batch: ChangeBatch) -> int:
    """Delete exactly the rows of ``batch`` (rows logged meanwhile stay); returns how many."""
    deleted = 0
    ids = list(batch.row_ids)
    async with engine.begin() as conn:
        for start in range(0, len(ids), 5000):  # bounded parameter lists
            chunk = ids[start : start + 5000]
            result = await conn.execute(delete(_log).where(_log.c.id.in_(chunk)))
            deleted += int(result.rowcount or 0)
    return deleted


async def has_changes(engine: AsyncEngine) -> bool:
    """Whether any committed change waits in the log."""
    async with engine.connect() as conn:
        return (await conn.execute(select(_log.c.id).limit(1))).first() is not None


class ChangeListener:
    """LISTEN on :data:`CHANNEL` with its own connection: :meth:`wait` returns when a change was
    committed (True) or after ``timeout`` (False). A lost connection is re-opened on the next
    wait; while it is down, waits simply time out, so polling keeps working."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def open(self) -> bool:
        if self.listening:
            return True
        await self.close()
        url = make_url(self.engine.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        try:
            self._conn = await asyncpg.connect(dsn, timeout=10)
            await self._conn.add_listener(CHANNEL, self._notified)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            # Polling still finds every change; the listener is only an accelerator.
            log.warning("LISTEN %s unavailable; falling back to polling", CHANNEL, exc_info=True)
            await self.close()
            return False
        return True

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def wait(self, within: float) -> bool:
        if not self.listening:
            await self.open()
        try:
            await asyncio.wait_for(self._wake.wait(), within)
        except TimeoutError:
            return False
        self._wake.clear()
        return True

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


class PgChangeFeed:
    """Endless stream of change batches: woken by NOTIFY, backed by polling the log.

    A batch is acked (its rows deleted) when the consumer asks for the next one, so a consumer
    that dies while handling a batch gets it again. ``debounce`` gathers the burst of
    notifications one transaction produces (a course and its sessions) into one batch.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        poll_interval: float = 30.0,
        debounce: float = 0.2,
        limit: int = 10_000,
    ) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.limit = limit
        self.listener = ChangeListener(engine)

    async def close(self) -> None:
        await self.listener.close()

    async def batches(self) -> AsyncIterator[ChangeBatch]:
        await self.listener.open()
        try:
            while True:
                batch = await take_changes(self.engine, limit=self.limit)
                if batch.row_ids:
                    yield batch
                    await ack_changes(self.engine, batch)
                    continue  # drain a backlog before waiting again
                if await self.listener.wait(self.poll_interval) and self.debounce:
                    await asyncio.sleep(self.debounce)
        finally:
            await self.close()
