"""The shared task framework: scheduled and on-demand runs with per-record outcomes.

Every edumesh sync (course export, hotfolder pull, mailbox processor, Schulconnex sync) runs as a
task: declared on a :class:`TaskRegistry`, executed by a :class:`TaskRunner` that a service
starts and stops, exposed to staff through :func:`task_router`. Executions record a status
(running / succeeded / partially_succeeded / failed / cancelled), counts and a per-record item
log; failed records can be retried alone; runs can be dry runs or cancelled. A lease row per
task keeps replicas from running one task twice at once. This package must not know about any
particular sync or read settings.

Usage::

    tasks = TaskRegistry()

    @tasks.task("course-export", schedule=Cron("0 3 * * *"))
    async def export(ctx: TaskContext) -> None:
        for course in await load_courses():
            if not ctx.wanted(course.key):
                continue
            ctx.check_cancelled()
            ...
            await ctx.item(course.key, "update", "ok")
"""

from __future__ import annotations

from mesh_common.tasks.api import task_router
from mesh_common.tasks.migrations import task_tables_downgrade_v1, task_tables_upgrade_v1
from mesh_common.tasks.registry import (
    Cron,
    Interval,
    Outcome,
    Schedule,
    TaskCancelled,
    TaskContext,
    TaskRegistry,
    TaskSpec,
    derive_status,
)
from mesh_common.tasks.runner import TaskRunner, create_task_tables
from mesh_common.tasks.tables import TaskTables, task_tables
from mesh_common.tasks.wiring import task_hooks

__all__ = [
    "Cron",
    "Interval",
    "Outcome",
    "Schedule",
    "TaskCancelled",
    "TaskContext",
    "TaskRegistry",
    "TaskRunner",
    "TaskSpec",
    "TaskTables",
    "create_task_tables",
    "derive_status",
    "task_hooks",
    "task_router",
    "task_tables",
    "task_tables_downgrade_v1",
    "task_tables_upgrade_v1",
]
