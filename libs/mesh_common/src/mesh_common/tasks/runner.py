"""The task runner: scheduler loop, replica-safe leases, executions and their item log.

One :class:`TaskRunner` per service process (a service starts and stops it). Every tick it
renews the leases of its own runs and polls their cancel flags, marks as failed the ``running``
executions whose lease expired (their runner crashed), and starts the due scheduled tasks.

Replica safety rests on two database mechanisms that behave the same on SQLite and PostgreSQL:

* a **lease row per task** (``task`` primary key, ``holder`` = execution id, ``expires_at``),
  taken with ``INSERT .. ON CONFLICT (task) DO UPDATE .. WHERE expires_at < now RETURNING``: one
  atomic statement, so of two replicas exactly one gets a row back. The holder renews it while
  the run lasts and deletes it at the end; a crashed holder's lease simply expires. We do not
  use PostgreSQL advisory locks: they belong to a database session, so a run would pin a pooled
  connection for its whole duration, a dropped connection silently frees the lock while the run
  goes on, and nobody else can see who holds it; a lease row has none of these problems and is
  identical on SQLite (the embedded default).
* a **compare-and-set on ``next_run_at``** in the same transaction that inserts a scheduled
  execution, so a due time is fired by one replica only (``scheduled_for`` records which).

Leases compare against each replica's wall clock; replicas are expected to run NTP, and the
lease duration (default 30 s) dwarfs ordinary skew. This module must not define HTTP routes or
read settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from mesh_common.context import new_id
from mesh_common.db import Database
from mesh_common.errors import Conflict, NotFound
from mesh_common.tasks.registry import (
    ItemSink,
    TaskCancelled,
    TaskContext,
    TaskRegistry,
    TaskSpec,
    derive_status,
    empty_counts,
    first_due,
)
from mesh_common.tasks.tables import (
    CANCELLED,
    FAILED,
    FINAL_STATUSES,
    RUNNING,
    TaskTables,
)

log = logging.getLogger("mesh.tasks")


class _AlreadyFired(Exception):
    pass


@dataclass
class _Run:
    execution_id: str
    task: str
    ctx: TaskContext
    job: asyncio.Task[None] | None = None


class TaskRunner:
    """Runs one service's registered tasks: on schedule, on demand, as retries; one at a time
    per task across all replicas, at most ``max_concurrency`` at a time in this process."""

    def __init__(
        self,
        db: Database,
        registry: TaskRegistry,
        tables: TaskTables,
        *,
        tick_seconds: float = 1.0,
        lease_seconds: float = 30.0,
        max_concurrency: int = 4,
        item_batch_size: int = 200,
        stop_grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        runner_id: str | None = None,
        on_finish: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        retention_seconds: float | None = 90 * 86400.0,
        purge_every_seconds: float = 3600.0,
    ) -> None:
        if lease_seconds <= 3 * tick_seconds:
            # Leases are renewed from the tick; a slower tick would let them lapse mid-run.
            raise ValueError("lease_seconds must exceed three scheduler ticks")
        self.db = db
        self.registry = registry
        self.t = tables
        self.tick_seconds = tick_seconds
        self.lease_seconds = lease_seconds
        self.max_concurrency = max_concurrency
        self.item_batch_size = item_batch_size
        self.stop_grace_seconds = stop_grace_seconds
        self.clock = clock
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        # Called with the final execution row once per execution, by the replica that recorded
        # its end (or reaped it); e.g. the connector framework's e-mail notifications.
        self.on_finish = on_finish
        # Finished executions (with their item logs) older than this are deleted, except each
        # task's latest one; None keeps everything. Checked every ``purge_every_seconds``.
        self.retention_seconds = retention_seconds
        self.purge_every_seconds = purge_every_seconds
        self._last_purge = 0.0
        self._purging: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(max_concurrency)
        self._runs: dict[str, _Run] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._last_renew = 0.0
        self._stopping = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Register the task definitions in the database and start the scheduler loop."""
        await self.sync_definitions()
        self._stopping.clear()
        self._loop_task = asyncio.create_task(self._loop(), name=f"task-runner:{self.runner_id}")

    async def stop(self) -> None:
        """Stop scheduling, ask running executions to cancel, and wait for them (bounded)."""
        # Let the current tick end by itself: cancelling it mid-transaction could leave a
        # connection holding SQLite's write lock until it is garbage collected.
        self._stopping.set()
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_task), self.stop_grace_seconds)
            except TimeoutError:
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
            self._loop_task = None
        if self._purging is not None and not self._purging.done():
            self._purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purging
        runs = list(self._runs.values())
        for run in runs:
            run.ctx.request_cancel()
        jobs = [r.job for r in runs if r.job is not None]
        if jobs:
            _, pending = await asyncio.wait(jobs, timeout=self.stop_grace_seconds)
            for job in pending:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                # A database hiccup must not end scheduling; the next tick tries again.
                log.exception("task scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.tick_seconds)

    async def tick(self) -> list[str]:
        """One scheduler pass; returns the ids of the executions it started."""
        await self._heartbeat()
        await self.reap_stale()
        started = await self._start_due()
        if (
            self.retention_seconds is not None
            and self.clock() - self._last_purge >= self.purge_every_seconds
            and (self._purging is None or self._purging.done())
        ):
            # In the background: a long DELETE must never delay the lease renewals of a tick.
            self._last_purge = self.clock()
            self._purging = asyncio.create_task(self._purge_quietly(), name="task-purge")
        return started

    async def _purge_quietly(self) -> None:
        try:
            await self.purge()
        except Exception:
            log.exception(
                "purging old task executions failed; next try in %.0f s", self.purge_every_seconds
            )

    async def purge(self, *, older_than: float | None = None, batch: int = 500) -> int:
        """Delete finished executions that ended more than ``older_than`` seconds ago
        (default: ``retention_seconds``) with their item logs, in batches; each task's latest
        execution stays whatever its age, so every task still shows how it last ran. Running
        executions are never touched. Returns how many executions were deleted. Safe to run on
        several replicas at once (plain DELETEs of the same rows)."""
        age = self.retention_seconds if older_than is None else older_than
        if age is None:
            return 0
        ex, items = self.t.executions, self.t.items
        cutoff = self.clock() - age
        newer = ex.alias("newer")
        has_newer = (
            select(newer.c.id)
            .where(newer.c.task == ex.c.task, newer.c.started_at > ex.c.started_at)
            .exists()
        )
        candidates = (
            select(ex.c.id)
            .where(
                ex.c.status.in_(sorted(FINAL_STATUSES)),
                ex.c.finished_at < cutoff,
                has_newer,
            )
            .limit(batch)
        )
        deleted = 0
        while True:
            async with self.db.engine.begin() as conn:
                ids = list((await conn.execute(candidates)).scalars())
                if not ids:
                    break
                # Items first: SQLite enforces ON DELETE CASCADE only with foreign_keys on.
                await conn.execute(delete(items).where(items.c.execution_id.in_(ids)))
                res = await conn.execute(delete(ex).where(ex.c.id.in_(ids)))
                deleted += int(res.rowcount or 0)
            if len(ids) < batch:
                break
        if deleted:
            log.info("purged %d task execution(s) finished before the retention window", deleted)
        return deleted

    # ---------------------------------------------------------------- definitions

    async def sync_definitions(self) -> None:
        """Insert missing task rows; refresh kind and schedule of existing ones (a changed
        schedule restarts its due time). ``enabled`` and stored params are left to operators."""
        tasks = self.t.tasks
        now = self.clock()
        async with self.db.engine.connect() as conn:
            existing = {
                row.name: row
                for row in (
                    await conn.execute(
                        select(tasks).where(tasks.c.name.in_(list(self.registry.specs)))
                    )
                ).all()
            }
        for spec in self.registry.specs.values():
            stype = spec.schedule.type if spec.schedule else None
            svalue = spec.schedule.value if spec.schedule else None
            due = first_due(spec.schedule, now) if spec.schedule else None
            row = existing.get(spec.name)
            if row is None:
                # One transaction per insert: a replica starting at the same moment may win the
                # primary key, which is fine (same definition).
                with contextlib.suppress(IntegrityError):
                    async with self.db.engine.begin() as conn:
                        await conn.execute(
                            insert(tasks).values(
                                name=spec.name,
                                kind=spec.kind,
                                schedule_type=stype,
                                schedule_value=svalue,
                                enabled=True,
                                params={},
                                next_run_at=due,
                            )
                        )
                continue
            changed = (row.schedule_type, row.schedule_value) != (stype, svalue)
            values: dict[str, Any] = {"kind": spec.kind}
            if changed or (row.next_run_at is None and due is not None):
                values.update(schedule_type=stype, schedule_value=svalue, next_run_at=due)
            async with self.db.engine.begin() as conn:
                await conn.execute(update(tasks).where(tasks.c.name == spec.name).values(**values))

    def _spec(self, name: str) -> TaskSpec:
        spec = self.registry.get(name)
        if spec is None:
            raise NotFound(f"no task named {name!r}", code="task-not-found")
        return spec

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Pause or resume a task's schedule (manual runs stay possible)."""
        self._spec(name)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(self.t.tasks).where(self.t.tasks.c.name == name).values(enabled=enabled)
            )

    # ---------------------------------------------------------------- leases

    async def _acquire(self, task: str, holder: str) -> bool:
        leases = self.t.leases
        now = self.clock()
        values = {"task": task, "holder": holder, "expires_at": now + self.lease_seconds}
        dialect = self.db.dialect
        if dialect in ("postgresql", "sqlite"):
            stmt = _lease_upsert(dialect, leases, values, now)
            async with self.db.engine.begin() as conn:
                got = (await conn.execute(stmt)).scalar_one_or_none()
            return got == holder
        # Portable fallback (MariaDB): take over an expired row, else insert; the primary key
        # decides a race between two inserts.
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(leases)
                .where(leases.c.task == task, leases.c.expires_at < now)
                .values(holder=holder, expires_at=values["expires_at"])
            )
            if res.rowcount == 1:
                return True
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(leases).values(**values))
            return True
        except IntegrityError:
            return False

    async def _release(self, task: str, holder: str) -> None:
        leases = self.t.leases
        async with self.db.engine.begin() as conn:
            await conn.execute(
                delete(leases).where(leases.c.task == task, leases.c.holder == holder)
            )

    async def _heartbeat(self) -> None:
        """Renew our leases (every third of their duration) and pick up cancel requests made on
        any replica. A lease we lost means another replica may start the task: cancel ours."""
        if not self._runs:
            return
        ex = self.t.executions
        leases = self.t.leases
        now = self.clock()
        ids = list(self._runs)
        async with self.db.engine.begin() as conn:
            if now - self._last_renew >= self.lease_seconds / 3:
                self._last_renew = now
                for run in list(self._runs.values()):
                    res = await conn.execute(
                        update(leases)
                        .where(leases.c.task == run.task, leases.c.holder == run.execution_id)
                        .values(expires_at=now + self.lease_seconds)
                    )
                    if res.rowcount == 0 and not run.ctx.cancelled:
                        log.warning("lease of %s lost; cancelling the run", run.execution_id)
                        run.ctx.request_cancel()
            rows = await conn.execute(
                select(ex.c.id).where(ex.c.id.in_(ids), ex.c.cancel_requested.is_(True))
            )
            for (execution_id,) in rows:
                flagged = self._runs.get(execution_id)
                if flagged is not None:
                    flagged.ctx.request_cancel()

    async def reap_stale(self) -> int:
        """Mark as failed the running executions whose lease is gone (their runner died)."""
        ex = self.t.executions
        leases = self.t.leases
        now = self.clock()
        live = and_(
            leases.c.task == ex.c.task, leases.c.holder == ex.c.id, leases.c.expires_at >= now
        )
        stale = (
            select(ex.c.id)
            .where(ex.c.status == RUNNING, ~select(leases.c.task).where(live).exists())
            .where(ex.c.id.not_in(list(self._runs)) if self._runs else ex.c.id.is_not(None))
        )
        reaped: list[str] = []
        async with self.db.engine.begin() as conn:
            ids = list((await conn.execute(stale)).scalars())
            if not ids:
                return 0
            for execution_id in ids:  # one by one: we notify for the rows *we* changed
                res = await conn.execute(
                    update(ex)
                    .where(ex.c.id == execution_id, ex.c.status == RUNNING)
                    .values(
                        status=FAILED,
                        finished_at=now,
                        error="lease expired: the runner executing it stopped or crashed",
                    )
                )
                if res.rowcount == 1:
                    reaped.append(execution_id)
        log.warning("marked %d stale execution(s) failed: %s", len(reaped), reaped)
        for execution_id in reaped:
            await self._finished(execution_id)
        return len(reaped)

    # ---------------------------------------------------------------- starting runs

    async def _start_due(self) -> list[str]:
        tasks = self.t.tasks
        now = self.clock()
        async with self.db.engine.connect() as conn:
            due = (
                await conn.execute(
                    select(tasks.c.name, tasks.c.next_run_at, tasks.c.params)
                    .where(
                        tasks.c.enabled.is_(True),
                        tasks.c.next_run_at.is_not(None),
                        tasks.c.next_run_at <= now,
                        tasks.c.name.in_(list(self.registry.specs)),
                    )
                    .order_by(tasks.c.next_run_at)
                )
            ).all()
        started: list[str] = []
        running_tasks = {r.task for r in self._runs.values()}
        for row in due:
            spec = self.registry.specs[row.name]
            if spec.schedule is None or row.name in running_tasks:
                continue
            if len(self._runs) >= self.max_concurrency:
                break  # the rest stays due; next tick
            execution_id = await self._start(
                spec,
                trigger="schedule",
                params={**spec.params, **(row.params or {})},
                dry_run=False,
                scheduled_for=row.next_run_at,
                next_run_at=spec.schedule.next_after(row.next_run_at, now),
            )
            if execution_id is not None:
                started.append(execution_id)
        return started

    async def _start(
        self,
        spec: TaskSpec,
        *,
        trigger: str,
        params: Mapping[str, Any],
        dry_run: bool,
        scheduled_for: float | None = None,
        next_run_at: float | None = None,
        parent_id: str | None = None,
        only_keys: frozenset[str] | None = None,
    ) -> str | None:
        """Take the task's lease, insert the execution and launch it; None if the lease is held
        elsewhere or another replica already fired this due time."""
        execution_id = new_id()
        if not await self._acquire(spec.name, execution_id):
            return None
        tasks, ex = self.t.tasks, self.t.executions
        now = self.clock()
        try:
            async with self.db.engine.begin() as conn:
                if scheduled_for is not None:
                    res = await conn.execute(
                        update(tasks)
                        .where(tasks.c.name == spec.name, tasks.c.next_run_at == scheduled_for)
                        .values(next_run_at=next_run_at, last_run_at=now)
                    )
                    if res.rowcount != 1:
                        raise _AlreadyFired  # rolls back; another replica fired this due time
                else:
                    await conn.execute(
                        update(tasks).where(tasks.c.name == spec.name).values(last_run_at=now)
                    )
                await conn.execute(
                    insert(ex).values(
                        id=execution_id,
                        task=spec.name,
                        status=RUNNING,
                        trigger=trigger,
                        dry_run=dry_run,
                        params=dict(params),
                        scheduled_for=scheduled_for,
                        holder=self.runner_id,
                        started_at=now,
                        counts=empty_counts(),
                        parent_id=parent_id,
                        cancel_requested=False,
                    )
                )
        except _AlreadyFired:
            await self._release(spec.name, execution_id)
            return None
        except BaseException:
            await self._release(spec.name, execution_id)
            raise
        ctx = TaskContext(
            task=spec.name,
            execution_id=execution_id,
            params=dict(params),
            dry_run=dry_run,
            only_keys=only_keys,
            sink=self._sink(execution_id),
            batch_size=self.item_batch_size,
        )
        run = _Run(execution_id=execution_id, task=spec.name, ctx=ctx)
        self._runs[execution_id] = run
        run.job = asyncio.create_task(self._execute(spec, run), name=f"task:{spec.name}")
        return execution_id

    def _sink(self, execution_id: str) -> ItemSink:
        items, ex = self.t.items, self.t.executions

        async def sink(rows: list[dict[str, Any]], counts: dict[str, int]) -> None:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(items), rows)
                await conn.execute(update(ex).where(ex.c.id == execution_id).values(counts=counts))

        return sink

    async def _execute(self, spec: TaskSpec, run: _Run) -> None:
        ctx = run.ctx
        status, error = FAILED, None
        try:
            async with self._sem:
                try:
                    if not ctx.cancelled:
                        await spec.fn(ctx)
                    await ctx.flush()
                    status = CANCELLED if ctx.cancelled else derive_status(ctx.counts)
                    if status == FAILED:
                        error = f"all {ctx.counts['failed']} record(s) failed"
                except TaskCancelled:
                    await _flush_quietly(ctx)
                    status = CANCELLED
                except asyncio.CancelledError:
                    await _flush_quietly(ctx)
                    status, error = CANCELLED, "runner stopped before the task finished"
                    raise
                except Exception as exc:
                    # Recorded, never propagated: a broken task must not take the runner down.
                    log.exception("task %s (%s) raised", spec.name, run.execution_id)
                    await _flush_quietly(ctx)
                    status, error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            recorded = False
            try:
                recorded = await self._finish(run, status, error)
            except Exception:
                # The lease will expire and a reaper marks the execution failed.
                log.exception("could not record the end of execution %s", run.execution_id)
            # Forget the run before releasing its lease, so our own heartbeat never mistakes
            # the release for a lost lease.
            self._runs.pop(run.execution_id, None)
            try:
                await self._release(run.task, run.execution_id)
            except Exception:
                log.exception("could not release the lease of %s", run.execution_id)
            if recorded:
                await self._finished(run.execution_id)

    async def _finished(self, execution_id: str) -> None:
        """Hand the final execution to ``on_finish``; its failures are logged, never raised."""
        if self.on_finish is None:
            return
        try:
            await self.on_finish(await self.get_execution(execution_id))
        except Exception:
            log.exception("on_finish hook failed for execution %s", execution_id)

    async def _finish(self, run: _Run, status: str, error: str | None) -> bool:
        """Record the end; False if the execution was no longer running (a reaper failed it)."""
        ex = self.t.executions
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(ex)
                .where(ex.c.id == run.execution_id, ex.c.status == RUNNING)
                .values(
                    status=status,
                    finished_at=self.clock(),
                    counts=dict(run.ctx.counts),
                    error=error,
                )
            )
        return bool(res.rowcount == 1)

    # ---------------------------------------------------------------- public commands

    async def run_now(
        self, name: str, params: Mapping[str, Any] | None = None, dry_run: bool = False
    ) -> str:
        """Start task ``name`` now; returns the execution id. Conflict if it is running."""
        spec = self._spec(name)
        stored = await self._stored_params(name)
        execution_id = await self._start(
            spec,
            trigger="manual",
            params={**spec.params, **stored, **(params or {})},
            dry_run=dry_run,
        )
        if execution_id is None:
            raise Conflict(f"task {name!r} is already running", code="task-running")
        return execution_id

    async def retry_failed(self, execution_id: str, *, dry_run: bool = False) -> str:
        """Run the task of ``execution_id`` again for the records that failed there only."""
        parent = await self.get_execution(execution_id)
        if parent["status"] not in FINAL_STATUSES:
            raise Conflict("the execution is still running", code="execution-running")
        spec = self._spec(parent["task"])
        items = self.t.items
        async with self.db.engine.connect() as conn:
            keys = frozenset(
                (
                    await conn.execute(
                        select(items.c.record_key)
                        .where(items.c.execution_id == execution_id, items.c.outcome == "failed")
                        .distinct()
                    )
                ).scalars()
            )
        if not keys:
            raise Conflict(
                "the execution has no failed records to retry; run the task again instead",
                code="nothing-to-retry",
            )
        new = await self._start(
            spec,
            trigger="retry",
            params=parent["params"] or {},
            dry_run=dry_run,
            parent_id=execution_id,
            only_keys=keys,
        )
        if new is None:
            raise Conflict(f"task {spec.name!r} is already running", code="task-running")
        return new

    async def cancel(self, execution_id: str) -> None:
        """Ask a running execution to stop (cooperative; seen by its runner within a tick)."""
        ex = self.t.executions
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(ex)
                .where(ex.c.id == execution_id, ex.c.status == RUNNING)
                .values(cancel_requested=True)
            )
        if res.rowcount == 0:
            await self.get_execution(execution_id)  # NotFound if unknown
            raise Conflict("the execution is not running", code="execution-not-running")
        run = self._runs.get(execution_id)
        if run is not None:
            run.ctx.request_cancel()

    async def wait(self, execution_id: str, *, within: float = 10.0) -> dict[str, Any]:
        """Wait until the execution is final and return it (local runs: at once; others: poll)."""
        async with asyncio.timeout(within):
            run = self._runs.get(execution_id)
            if run is not None and run.job is not None:
                await asyncio.shield(run.job)
            while True:
                row = await self.get_execution(execution_id)
                if row["status"] in FINAL_STATUSES:
                    return row
                await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- queries

    async def _stored_params(self, name: str) -> dict[str, Any]:
        tasks = self.t.tasks
        async with self.db.engine.connect() as conn:
            value = (
                await conn.execute(select(tasks.c.params).where(tasks.c.name == name))
            ).scalar_one_or_none()
        return dict(value or {})

    async def list_tasks(self) -> list[dict[str, Any]]:
        """The registered tasks with their schedule state and whether one is running now."""
        tasks, leases = self.t.tasks, self.t.leases
        now = self.clock()
        running = (
            select(func.count())
            .select_from(leases)
            .where(leases.c.task == tasks.c.name, leases.c.expires_at >= now)
            .scalar_subquery()
        )
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(tasks, running.label("running"))
                    .where(tasks.c.name.in_(list(self.registry.specs)))
                    .order_by(tasks.c.name)
                )
            ).all()
        out = []
        for row in rows:
            data = dict(row._mapping)
            data["running"] = bool(data["running"])
            data["description"] = self.registry.specs[row.name].description
            out.append(data)
        return out

    async def get_execution(self, execution_id: str) -> dict[str, Any]:
        ex = self.t.executions
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(ex).where(ex.c.id == execution_id))).first()
        if row is None:
            raise NotFound(f"no execution {execution_id!r}", code="execution-not-found")
        return dict(row._mapping)

    async def list_executions(
        self,
        *,
        task: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        ex = self.t.executions
        query = select(ex).order_by(ex.c.started_at.desc(), ex.c.id).limit(limit).offset(offset)
        if task is not None:
            query = query.where(ex.c.task == task)
        if status is not None:
            query = query.where(ex.c.status == status)
        async with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]

    async def list_items(
        self,
        execution_id: str,
        *,
        outcome: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        await self.get_execution(execution_id)
        items = self.t.items
        query = (
            select(items)
            .where(items.c.execution_id == execution_id)
            .order_by(items.c.id)
            .limit(limit)
            .offset(offset)
        )
        if outcome is not None:
            query = query.where(items.c.outcome == outcome)
        async with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]


def _lease_upsert(dialect: str, leases: Table, values: dict[str, Any], now: float) -> Any:
    """INSERT the lease, or take over the existing row only if it expired; RETURNING tells
    whether we got it. One statement, so two replicas can never both succeed."""
    where = leases.c.expires_at < now
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg = postgresql.insert(leases).values(**values)
        return pg.on_conflict_do_update(
            index_elements=[leases.c.task],
            set_={"holder": pg.excluded.holder, "expires_at": pg.excluded.expires_at},
            where=where,
        ).returning(leases.c.holder)
    from sqlalchemy.dialects import sqlite

    lite = sqlite.insert(leases).values(**values)
    return lite.on_conflict_do_update(
        index_elements=[leases.c.task],
        set_={"holder": lite.excluded.holder, "expires_at": lite.excluded.expires_at},
        where=where,
    ).returning(leases.c.holder)


async def _flush_quietly(ctx: TaskContext) -> None:
    try:
        await ctx.flush()
    except Exception:
        log.exception("could not write the item log of %s", ctx.execution_id)


async def create_task_tables(db: Database, tables: TaskTables) -> None:
    """Create the task tables (tests and services without migrations)."""
    await db.ensure_schema()

    def _create(sync_conn: Any) -> None:
        for table in (tables.tasks, tables.executions, tables.items, tables.leases):
            _create_one(sync_conn, table)

    async with db.engine.begin() as conn:
        await conn.run_sync(_create)


def _create_one(sync_conn: Any, table: Table) -> None:
    table.create(sync_conn, checkfirst=True)


__all__ = ["TaskRunner", "create_task_tables"]
