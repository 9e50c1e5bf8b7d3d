"""course-export's tasks on the shared task framework: what runs when, with per-course items.

- ``full-export`` (cron, default daily 03:00 UTC): a full snapshot; every course is an item.
- ``export-changes`` (interval, default 60 s): courses modified since the last run (timestamp
  polling with an overlap window, on every backend) and withdrawals; only changed documents are
  sent. The marker lives in memory: after a restart the first run re-reads everything and the
  content hashes keep it from re-sending anything unchanged.
Both can be run now over REST (``POST /tasks/{name}/run``, staff) or with the
``course_export.run_export.v1`` command. The lease of the task framework keeps replicas from
running either twice at once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mesh_common.app import ServiceRuntime
from mesh_common.bus import DeadLetter, HandlerRegistry, MessageContext
from mesh_common.tasks import Cron, Interval, TaskContext, TaskRegistry
from mesh_common.tasks.wiring import EXTRAS_KEY
from mesh_contracts.course_export import RunExport

from course_export_service.exporter import Exporter, Reporter
from course_export_service.polling import TimestampPoller, withdrawn_ids
from course_export_service.state import ExportState

FULL, CHANGES = "full-export", "export-changes"


def build(
    holder: dict[str, ServiceRuntime], *, cron: str, poll_seconds: float
) -> tuple[TaskRegistry, HandlerRegistry]:
    """The task registry and the bus handlers; ``holder["runtime"]`` is set at startup."""
    tasks = TaskRegistry()
    handlers = HandlerRegistry()
    markers: dict[str, Any] = {}

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

    @tasks.task(FULL, schedule=Cron(cron))
    async def full_export(ctx: TaskContext) -> None:
        await exporter().full_snapshot(reporter(ctx, cancellable=True))

    @tasks.task(CHANGES, schedule=Interval(poll_seconds))
    async def export_changes(ctx: TaskContext) -> None:
        runtime = holder["runtime"]
        coursedb = runtime.extras["coursedb"]
        poll = await TimestampPoller(coursedb).poll(markers.get("marker"))
        async with runtime.db.unit_of_work() as session:
            published = await ExportState(session).published_ids()
        # Published courses that were deleted or unpublished are found by their absence.
        ids = sorted(poll.course_ids | await withdrawn_ids(coursedb, published))
        if ids:
            await exporter().export_changes(ids, reporter(ctx, cancellable=False))
        markers["marker"] = poll.marker

    @handlers.command(RunExport)
    async def run_export(cmd: RunExport, ctx: MessageContext) -> None:
        """Idempotency: a duplicate command starts at most one more run (Conflict while one is
        running is fine). Failure policy: a future ``run_at`` is not supported yet → DLQ."""
        if cmd.run_at is not None and cmd.run_at > dt.datetime.now(dt.UTC):
            raise DeadLetter("scheduled exports (run_at in the future) are not supported yet")
        runner = holder["runtime"].extras[EXTRAS_KEY]
        name = FULL if cmd.mode == "full" else CHANGES
        try:
            await runner.run_now(name, params={"requested_by": cmd.requested_by or ctx.actor})
        except Exception as exc:  # a run already in progress satisfies the request
            if getattr(exc, "code", "") != "task-running":
                raise

    return tasks, handlers
