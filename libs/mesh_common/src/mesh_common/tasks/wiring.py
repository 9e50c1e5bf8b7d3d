"""Wiring of the task runner into a service built with ``create_service_app``.

``task_hooks(registry, tables)`` returns the startup and shutdown hooks that create, start and
stop the service's :class:`TaskRunner` on the runtime's database and keep it in
``runtime.extras["task_runner"]``, where :func:`~mesh_common.tasks.api.task_router` finds it.
The tables themselves belong to the service's metadata and migrations. The one setting it
reads is ``runtime.settings.task_retention_days`` (unless ``retention_seconds`` is given). This
module must not create tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mesh_common.db import Database
from mesh_common.tasks.registry import TaskRegistry
from mesh_common.tasks.runner import TaskRunner
from mesh_common.tasks.tables import TaskTables

EXTRAS_KEY = "task_runner"


class RuntimeLike(Protocol):
    """The parts of ``mesh_common.app.ServiceRuntime`` the hooks use."""

    db: Database
    extras: dict[str, Any]
    metrics: Any  # mesh_common.metrics.Metrics (task_executions_total)


RuntimeHook = Callable[[Any], Awaitable[None]]


def task_hooks(
    registry: TaskRegistry, tables: TaskTables, **runner_options: Any
) -> tuple[RuntimeHook, RuntimeHook]:
    """``(on_startup, on_shutdown)`` hooks for ``create_service_app``; ``runner_options`` go to
    :class:`TaskRunner` (tick_seconds, lease_seconds, max_concurrency, ...)."""

    async def start(runtime: RuntimeLike) -> None:
        counter = getattr(getattr(runtime, "metrics", None), "task_executions", None)
        user_hook = runner_options.get("on_finish")
        options = {k: v for k, v in runner_options.items() if k != "on_finish"}
        if "retention_seconds" not in options:
            # TASK_RETENTION_DAYS (ServiceSettings); 0 keeps every execution forever.
            days = getattr(getattr(runtime, "settings", None), "task_retention_days", 90.0)
            options["retention_seconds"] = float(days) * 86400.0 if days and days > 0 else None

        async def on_finish(execution: dict[str, Any]) -> None:
            # task_executions_total{task, status} on the service's /metrics.
            if counter is not None:
                counter.labels(execution.get("task", "?"), execution.get("status", "?")).inc()
            if user_hook is not None:
                await user_hook(execution)

        runner = TaskRunner(runtime.db, registry, tables, on_finish=on_finish, **options)
        await runner.start()
        runtime.extras[EXTRAS_KEY] = runner

    async def stop(runtime: RuntimeLike) -> None:
        runner = runtime.extras.pop(EXTRAS_KEY, None)
        if isinstance(runner, TaskRunner):
            await runner.stop()

    return start, stop
