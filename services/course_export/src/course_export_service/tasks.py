"""course-export's tasks on the shared task framework: what runs when, with per-course items.

- ``full-export`` (cron, default daily 03:00 UTC): a full snapshot; every course is an item.
- ``export-changes`` (interval, default 60 s): courses changed since the last run, then only
  documents whose content hash changed are sent.
  - On a PostgreSQL coursedb with the change log installed, the run takes the logged changes
    and acks them after exporting; the :class:`~course_export_service.watcher.ChangeWatcher`
    starts a run within about a second of a commit (NOTIFY), the interval is the fallback.
    The first run ever compares every course once.
  - Elsewhere (SQLite, MariaDB, no trigger rights) it polls ``updated_at`` from the persisted
    marker minus an overlap window.
  - Runs not started by the change log also look for withdrawals by absence (deleted or
    unpublished courses), the safety net for deletions no trigger saw.
- A retry of failed records (``POST /tasks/executions/{id}/retry``) of either task exports just
  those courses as changes.

Both can be run now over REST (``POST /tasks/{name}/run``, staff) or with the
``course_export.run_export.v1`` command; a command with a future ``run_at`` becomes a scheduled
export (see ``scheduling.py``). The lease of the task framework keeps replicas from running
either task twice at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from coursedb import schema as coursedb_schema
from mesh_common.app import ServiceRuntime
from mesh_common.bus import HandlerRegistry, MessageContext
from mesh_common.errors import Conflict
from mesh_common.tasks import Cron, Interval, TaskContext, TaskRegistry
from mesh_common.tasks.wiring import EXTRAS_KEY
from mesh_contracts.course_export import RunExport
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from course_export_service import markers
from course_export_service.changefeed import ack_changes, take_changes
from course_export_service.exporter import Exporter, Reporter
from course_export_service.polling import TimestampPoller, withdrawn_ids
from course_export_service.state import ExportState

FULL, CHANGES = "full-export", "export-changes"
# runtime.extras keys set at startup (app.py)
CHANGE_SOURCE = "change_source"  # "changelog" or "timestamp"
SCHEDULER = "scheduled_exports"  # the ScheduledExports store
DISPATCHER = "scheduled_exports_dispatcher"
# Log rows taken per round; a run takes at most this many rounds (the watcher or the interval
# picks up the rest).
LOG_BATCH, LOG_ROUNDS = 10_000, 20


async def course_ids_for_keys(coursedb: AsyncEngine, keys: Iterable[str]) -> list[int]:
    """coursedb ids of item keys (course numbers, or ``id:<n>`` for a course without one)."""
    numbers = [k for k in keys if not k.startswith("id:")]
    ids = {int(k[3:]) for k in keys if k.startswith("id:") and k[3:].isdigit()}
    courses = coursedb_schema.courses
    async with coursedb.connect() as conn:
        for start in range(0, len(numbers), 1000):
            found = await conn.execute(
                select(courses.c.id).where(courses.c.number.in_(numbers[start : start + 1000]))
            )
            ids.update(found.scalars())
    return sorted(ids)


def build(
    holder: dict[str, ServiceRuntime], *, cron: str, poll_seconds: float
) -> tuple[TaskRegistry, HandlerRegistry]:
    """The task registry and the bus handlers; ``holder["runtime"]`` is set at startup."""
    tasks = TaskRegistry()
    handlers = HandlerRegistry()

    def exporter() -> Exporter:
        runtime = holder["runtime"]
        return Exporter(runtime, runtime.extras["coursedb"])

    def reporter(ctx: TaskContext, *, cancellable: bool) -> Reporter:
        """Each course outcome becomes an item; a cancellable run stops between courses."""

        async def report(key: str, action: str, outcome: str, error: str | None) -> None:
            if cancellable:
                ctx.check_cancelled()
            await ctx.item(key, action, outcome, error)  # type: ignore[arg-type]

        return report

    async def retry_only(ctx: TaskContext) -> bool:
        """A "retry failed records" run: export just those courses as changes."""
        if ctx.only_keys is None:
            return False
        coursedb = holder["runtime"].extras["coursedb"]
        ids = await course_ids_for_keys(coursedb, ctx.only_keys)
        if ids:
            await exporter().export_changes(ids, reporter(ctx, cancellable=False))
        return True

    async def absent(runtime: ServiceRuntime) -> frozenset[int]:
        """Published courses that were deleted or unpublished (found by their absence)."""
        async with runtime.db.unit_of_work() as session:
            published = await ExportState(session).published_ids()
        return await withdrawn_ids(runtime.extras["coursedb"], published)

    @tasks.task(FULL, schedule=Cron(cron))
    async def full_export(ctx: TaskContext) -> None:
        """Full snapshot of every published course, in batches, then SnapshotCompleted."""
        if await retry_only(ctx):
            return
        await exporter().full_snapshot(reporter(ctx, cancellable=True))

    @tasks.task(CHANGES, schedule=Interval(poll_seconds))
    async def export_changes(ctx: TaskContext) -> None:
        """Courses changed since the last run: sends only those whose document changed."""
        if await retry_only(ctx):
            return
        runtime = holder["runtime"]
        if runtime.extras.get(CHANGE_SOURCE) == "changelog":
            await changes_from_log(ctx, runtime)
        else:
            await changes_by_timestamp(ctx, runtime)

    async def changes_by_timestamp(ctx: TaskContext, runtime: ServiceRuntime) -> None:
        coursedb = runtime.extras["coursedb"]
        async with runtime.db.unit_of_work() as session:
            marker = markers.decode_timestamp(await markers.get_marker(session, markers.TIMESTAMP))
        poll = await TimestampPoller(coursedb).poll(marker)
        ids = sorted(poll.course_ids | await absent(runtime))
        if ids:
            await exporter().export_changes(ids, reporter(ctx, cancellable=False))
        async with runtime.db.unit_of_work() as session:
            await markers.set_marker(
                session,
                markers.TIMESTAMP,
                markers.encode_timestamp(poll.marker),
                at=dt.datetime.now(dt.UTC),
            )

    async def changes_from_log(ctx: TaskContext, runtime: ServiceRuntime) -> None:
        coursedb = runtime.extras["coursedb"]
        async with runtime.db.unit_of_work() as session:
            first_run = await markers.get_marker(session, markers.CHANGELOG) is None
        report = reporter(ctx, cancellable=False)
        for round_no in range(LOG_ROUNDS):
            batch = await take_changes(coursedb, limit=LOG_BATCH)
            ids = set(batch.course_ids)
            if round_no == 0:
                if first_run:
                    # Changes from before the log existed (or before this service database):
                    # compare every course once; the hashes keep the unchanged ones unsent.
                    ids |= (await TimestampPoller(coursedb).poll(None)).course_ids
                if ctx.params.get("trigger") != "change-log":
                    ids |= await absent(runtime)
            if ids:
                await exporter().export_changes(sorted(ids), report)
            if batch.row_ids:
                await ack_changes(coursedb, batch)
            if round_no == 0 or batch.row_ids:
                async with runtime.db.unit_of_work() as session:
                    await markers.set_marker(
                        session,
                        markers.CHANGELOG,
                        f"last_log_id={batch.last_id}" if batch.last_id else "consumed",
                        at=dt.datetime.now(dt.UTC),
                    )
            if len(batch.row_ids) < LOG_BATCH:
                break

    @handlers.command(RunExport)
    async def run_export(cmd: RunExport, ctx: MessageContext) -> None:
        """Idempotency: a duplicate command starts at most one more run (Conflict while one is
        running is fine) and schedules nothing twice (the message id is stored with the
        scheduled export). Failure policy: a naive ``run_at`` fails contract validation and is
        dead-lettered as poison; other errors are retried by the bus."""
        runtime = holder["runtime"]
        requested_by = cmd.requested_by or ctx.actor
        now = dt.datetime.now(dt.UTC)
        if cmd.run_at is not None and cmd.run_at > now:
            store = runtime.extras[SCHEDULER]
            await store.schedule(
                mode=cmd.mode,
                run_at=cmd.run_at,
                requested_by=requested_by,
                note=cmd.note,
                source="amqp",
                now=now,
                message_id=ctx.message_id,
            )
            return
        runner = runtime.extras[EXTRAS_KEY]
        name = FULL if cmd.mode == "full" else CHANGES
        params = {"requested_by": requested_by}
        if cmd.run_at is not None:
            params["run_at"] = cmd.run_at.isoformat()
        try:
            await runner.run_now(name, params=params)
        except Conflict as exc:  # a run already in progress satisfies the request
            if exc.code != "task-running":
                raise

    return tasks, handlers
