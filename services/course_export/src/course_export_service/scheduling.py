"""Publish-at: exports scheduled for a given time, fired exactly once across replicas.

A scheduled export (REST ``POST /scheduled-exports`` or a ``run_export`` command with a future
``run_at``) is a row in ``scheduled_exports``. Every replica runs a :class:`Dispatcher` that
looks for due rows about once a second and **claims** each with one conditional statement
(``UPDATE .. SET status='firing' WHERE id=:id AND status='scheduled'``): of two replicas exactly
one gets the row, on PostgreSQL and on SQLite alike. The claimer starts the export as an
execution of the task framework (``full-export`` or ``export-changes``, with the scheduled
export's id in the execution's params) and records the execution id (``fired``).

- While the task is already running (for instance the daily full export), the claim is handed
  back and the row fires when the task is free.
- Other failures to start are retried on the next passes and, after ``MAX_ATTEMPTS``, the row
  is marked ``failed`` with the error (visible in the list).
- A replica that dies between claiming and recording leaves a ``firing`` row; after
  ``STALE_AFTER`` any replica looks for an execution carrying the row's id and either records
  it or hands the row back, so a crash neither loses the export nor runs it twice.

Cancelling is the same kind of conditional update (only a still ``scheduled`` row can be
cancelled). Business rules only: HTTP lives in ``api.py``, the command in ``tasks.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mesh_common.context import new_id
from mesh_common.db import Database
from mesh_common.errors import Conflict, Invalid, NotFound
from mesh_common.tasks import TaskRunner, TaskTables
from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError

from course_export_service.models import scheduled_exports

log = logging.getLogger("course_export.scheduling")

Mode = Literal["full", "changes"]
Status = Literal["scheduled", "firing", "fired", "failed", "cancelled"]
TASK_OF: Mapping[str, str] = {"full": "full-export", "changes": "export-changes"}
MAX_ATTEMPTS = 5
STALE_AFTER = dt.timedelta(seconds=60)
MAX_AHEAD = dt.timedelta(days=400)

_t = scheduled_exports


def utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC; SQLite hands back naive values that were stored as UTC."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@dataclass(frozen=True)
class ScheduledExport:
    id: str
    mode: Mode
    run_at: dt.datetime
    status: Status
    requested_by: str | None
    note: str | None
    source: str
    created_at: dt.datetime
    fired_at: dt.datetime | None
    execution_id: str | None
    execution_status: str | None
    attempts: int
    error: str | None
    cancelled_at: dt.datetime | None
    cancelled_by: str | None


def _opt(value: dt.datetime | None) -> dt.datetime | None:
    return utc(value) if value is not None else None


class ScheduledExports:
    """The scheduled exports of one service database (short transactions of their own)."""

    def __init__(self, db: Database, tasks: TaskTables) -> None:
        self.db = db
        self.tasks = tasks

    def _select(self) -> Any:
        ex = self.tasks.executions
        return select(_t, ex.c.status.label("execution_status")).select_from(
            _t.outerjoin(ex, ex.c.id == _t.c.execution_id)
        )

    @staticmethod
    def _of(row: Any) -> ScheduledExport:
        return ScheduledExport(
            id=row.id,
            mode=row.mode,
            run_at=utc(row.run_at),
            status=row.status,
            requested_by=row.requested_by,
            note=row.note,
            source=row.source,
            created_at=utc(row.created_at),
            fired_at=_opt(row.fired_at),
            execution_id=row.execution_id,
            execution_status=row.execution_status,
            attempts=row.attempts,
            error=row.error,
            cancelled_at=_opt(row.cancelled_at),
            cancelled_by=row.cancelled_by,
        )

    async def schedule(
        self,
        *,
        mode: Mode,
        run_at: dt.datetime,
        requested_by: str | None,
        note: str | None,
        source: str,
        now: dt.datetime,
        message_id: str | None = None,
    ) -> ScheduledExport:
        """Store a scheduled export; a ``run_at`` in the past fires at once. With
        ``message_id`` (the command that asked), a repeat returns the row already stored."""
        if run_at.tzinfo is None:
            raise Invalid("run_at needs a time zone offset", code="run-at-naive")
        if run_at - now > MAX_AHEAD:
            raise Invalid(
                f"run_at may be at most {MAX_AHEAD.days} days ahead", code="run-at-too-far"
            )
        if mode not in TASK_OF:
            raise Invalid(f"unknown export mode {mode!r}", code="invalid-mode")
        if message_id is not None:
            existing = await self._by_message(message_id)
            if existing is not None:
                return existing
        new = new_id()
        values = {
            "id": new,
            "mode": mode,
            "run_at": utc(run_at),
            "status": "scheduled",
            "requested_by": requested_by,
            "note": note,
            "source": source,
            "message_id": message_id,
            "created_at": now,
            "attempts": 0,
        }
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(_t.insert().values(**values))
        except IntegrityError:
            # The same command, delivered twice at the same moment: the first one stored it.
            if message_id is None:
                raise
            again = await self._by_message(message_id)
            if again is None:
                raise
            return again
        return await self.get(new)

    async def _by_message(self, message_id: str) -> ScheduledExport | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(self._select().where(_t.c.message_id == message_id))).first()
        return self._of(row) if row is not None else None

    async def get(self, export_id: str) -> ScheduledExport:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(self._select().where(_t.c.id == export_id))).first()
        if row is None:
            raise NotFound(f"no scheduled export {export_id!r}", code="scheduled-export-not-found")
        return self._of(row)

    async def find(
        self, *, status: Status | None = None, limit: int = 100, offset: int = 0
    ) -> list[ScheduledExport]:
        """Newest ``run_at`` first (upcoming ones on top)."""
        query = self._select().order_by(_t.c.run_at.desc(), _t.c.id).limit(limit).offset(offset)
        if status is not None:
            query = query.where(_t.c.status == status)
        async with self.db.engine.connect() as conn:
            return [self._of(r) for r in (await conn.execute(query)).all()]

    async def cancel(self, export_id: str, *, by: str, now: dt.datetime) -> ScheduledExport:
        """Cancel a still pending export; 409 once it fired (or is firing) or was cancelled."""
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(_t)
                .where(_t.c.id == export_id, _t.c.status == "scheduled")
                .values(status="cancelled", cancelled_at=now, cancelled_by=by)
            )
        current = await self.get(export_id)  # NotFound if unknown
        if res.rowcount != 1:
            raise Conflict(
                f"the scheduled export is {current.status}, only a scheduled one can be cancelled",
                code="scheduled-export-not-pending",
            )
        return current

    # ------------------------------------------------------------------ firing

    async def due(self, now: dt.datetime, *, limit: int = 20) -> list[str]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(_t.c.id)
                .where(_t.c.status == "scheduled", _t.c.run_at <= now)
                .order_by(_t.c.run_at, _t.c.id)
                .limit(limit)
            )
            return list(rows.scalars())

    async def claim(self, export_id: str, *, holder: str, now: dt.datetime) -> bool:
        """Take a due row for this replica; True for exactly one caller."""
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(_t)
                .where(_t.c.id == export_id, _t.c.status == "scheduled", _t.c.run_at <= now)
                .values(status="firing", claimed_by=holder, claimed_at=now)
            )
        return res.rowcount == 1

    async def fired(
        self, export_id: str, *, holder: str, execution_id: str, now: dt.datetime
    ) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(_t)
                .where(_t.c.id == export_id, _t.c.status == "firing", _t.c.claimed_by == holder)
                .values(status="fired", fired_at=now, execution_id=execution_id, error=None)
            )

    async def hand_back(
        self, export_id: str, *, holder: str, error: str | None, count_attempt: bool
    ) -> Status:
        """Return a claimed row to ``scheduled`` (or ``failed`` after too many attempts)."""
        async with self.db.engine.begin() as conn:
            attempts = (
                await conn.execute(select(_t.c.attempts).where(_t.c.id == export_id))
            ).scalar_one()
            attempts += 1 if count_attempt else 0
            status: Status = "failed" if attempts >= MAX_ATTEMPTS else "scheduled"
            await conn.execute(
                update(_t)
                .where(_t.c.id == export_id, _t.c.status == "firing", _t.c.claimed_by == holder)
                .values(
                    status=status, attempts=attempts, error=error, claimed_by=None, claimed_at=None
                )
            )
        return status

    async def recover_stale(self, now: dt.datetime) -> int:
        """Settle rows left ``firing`` by a replica that died: record the execution it started
        (found by the id in its params) or hand the row back to be fired."""
        ex = self.tasks.executions
        async with self.db.engine.connect() as conn:
            stale = (
                await conn.execute(
                    select(_t.c.id, _t.c.mode, _t.c.claimed_by, _t.c.claimed_at).where(
                        _t.c.status == "firing", _t.c.claimed_at < now - STALE_AFTER
                    )
                )
            ).all()
        settled = 0
        for row in stale:
            since = utc(row.claimed_at).timestamp() - 5
            async with self.db.engine.connect() as conn:
                candidates = (
                    await conn.execute(
                        select(ex.c.id, ex.c.params).where(
                            and_(ex.c.task == TASK_OF[row.mode], ex.c.started_at >= since)
                        )
                    )
                ).all()
            started = next(
                (c.id for c in candidates if (c.params or {}).get("scheduled_export_id") == row.id),
                None,
            )
            values: dict[str, Any] = (
                {"status": "fired", "fired_at": now, "execution_id": started}
                if started is not None
                else {"status": "scheduled", "claimed_by": None, "claimed_at": None}
            )
            async with self.db.engine.begin() as conn:
                res = await conn.execute(
                    update(_t)
                    .where(
                        _t.c.id == row.id,
                        _t.c.status == "firing",
                        _t.c.claimed_by == row.claimed_by,
                    )
                    .values(**values)
                )
            if res.rowcount == 1:
                settled += 1
                log.warning(
                    "scheduled export %s was left firing by %s: %s",
                    row.id,
                    row.claimed_by,
                    f"recorded execution {started}" if started else "handed back",
                )
        return settled


class Dispatcher:
    """Fires due scheduled exports; one per replica, safe to run on all of them."""

    def __init__(
        self,
        store: ScheduledExports,
        runner: TaskRunner,
        *,
        interval: float = 1.0,
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.interval = interval
        self.holder = holder or runner.runner_id
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_recovery = 0.0
        self._waiting: set[str] = set()  # due but their task is busy (logged once)

    def wake(self) -> None:
        """Look for due exports now (after one was scheduled for the past)."""
        self._wake.set()

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="scheduled-exports")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("scheduled exports: pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def tick(self) -> list[str]:
        """One pass: settle stale claims (every 30 s), fire what is due. Returns the ids of
        the executions started."""
        now = dt.datetime.now(dt.UTC)
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_recovery >= 30:
            self._last_recovery = loop_now
            await self.store.recover_stale(now)
        started: list[str] = []
        for export_id in await self.store.due(now):
            if self._stopping.is_set():
                break
            execution_id = await self.fire(export_id, now)
            if execution_id is not None:
                started.append(execution_id)
        return started

    async def fire(self, export_id: str, now: dt.datetime) -> str | None:
        if not await self.store.claim(export_id, holder=self.holder, now=now):
            return None  # another replica has it, or it was cancelled meanwhile
        item = await self.store.get(export_id)
        params = {
            "scheduled_export_id": item.id,
            "run_at": item.run_at.isoformat(),
            "requested_by": item.requested_by,
            "note": item.note,
        }
        try:
            execution_id = await self.runner.run_now(TASK_OF[item.mode], params=params)
        except Conflict as exc:
            if exc.code != "task-running":
                raise
            if export_id not in self._waiting:
                self._waiting.add(export_id)
                log.info("scheduled export %s waits: %s is running", export_id, TASK_OF[item.mode])
            await self.store.hand_back(
                export_id, holder=self.holder, error=None, count_attempt=False
            )
            return None
        except Exception as exc:
            status = await self.store.hand_back(
                export_id,
                holder=self.holder,
                error=f"{type(exc).__name__}: {exc}"[:1000],
                count_attempt=True,
            )
            log.exception("scheduled export %s could not start (now %s)", export_id, status)
            return None
        self._waiting.discard(export_id)
        await self.store.fired(
            export_id, holder=self.holder, execution_id=execution_id, now=dt.datetime.now(dt.UTC)
        )
        log.info("scheduled export %s fired as execution %s", export_id, execution_id)
        return execution_id
