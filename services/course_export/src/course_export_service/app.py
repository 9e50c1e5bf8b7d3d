"""Builds the course-export service app from explicit settings."""

from __future__ import annotations

import datetime as dt
import gc
import logging
from pathlib import Path

from coursedb.engine import create_engine as create_coursedb_engine
from fastapi import FastAPI
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.tasks import task_hooks, task_router
from mesh_common.tasks.wiring import EXTRAS_KEY

from course_export_service import __doc__ as DOC
from course_export_service import tasks as export_tasks
from course_export_service import template_service
from course_export_service.api import router, scheduled_router
from course_export_service.changefeed import install_change_log
from course_export_service.models import metadata
from course_export_service.models import tasks as task_tables
from course_export_service.scheduling import Dispatcher, ScheduledExports
from course_export_service.settings import Settings
from course_export_service.watcher import ChangeWatcher

MIGRATIONS = Path(__file__).parent / "migrations"
WATCHER = "change_watcher"
log = logging.getLogger("course_export")


async def _open_coursedb(runtime: ServiceRuntime) -> None:
    engine = create_coursedb_engine(runtime.settings.coursedb_url)
    runtime.extras["coursedb"] = engine

    async def coursedb_ready() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    runtime.health.add("coursedb", coursedb_ready)
    async with runtime.db.unit_of_work() as session:
        await template_service.ensure_defaults(session, now=dt.datetime.now(dt.UTC))


async def _close_coursedb(runtime: ServiceRuntime) -> None:
    await runtime.extras["coursedb"].dispose()


async def _change_source(runtime: ServiceRuntime) -> str:
    """The trigger-fed change log on PostgreSQL (installed idempotently), else polling."""
    coursedb = runtime.extras["coursedb"]
    settings = runtime.settings
    wanted = getattr(settings, "change_detection", "auto")
    if coursedb.dialect.name != "postgresql" or wanted == "polling":
        return "timestamp"
    try:
        await install_change_log(coursedb)
    except Exception:
        log.warning(
            "cannot install the change log in the coursedb (trigger rights?); "
            "falling back to timestamp polling",
            exc_info=True,
        )
        return "timestamp"
    return "changelog"


async def _choose_change_source(runtime: ServiceRuntime) -> None:
    """Before the task runner starts, so every change run knows where to look."""
    source = await _change_source(runtime)
    runtime.extras[export_tasks.CHANGE_SOURCE] = source
    log.info("course-export change detection: %s", source)


async def _freeze_startup_heap(runtime: ServiceRuntime) -> None:
    """Move everything alive after startup (modules, app, schemas: hundreds of thousands of
    objects that live as long as the process) out of the cyclic garbage collector's reach.

    A full snapshot allocates millions of short-lived containers; every full collection would
    otherwise walk the whole startup heap again (measured: a quarter of the snapshot's CPU).
    Reference counting still frees these objects; only cycles among them are never collected,
    and they live for the whole process anyway. Process-wide, so harmless when several
    services share a process (the embedded launcher).
    """
    gc.collect()
    gc.freeze()


async def _start_live(runtime: ServiceRuntime) -> None:
    """Scheduled exports (every backend) and, on PostgreSQL, the change watcher."""
    settings = runtime.settings
    assert isinstance(settings, Settings)
    runner = runtime.extras[EXTRAS_KEY]
    source = runtime.extras[export_tasks.CHANGE_SOURCE]
    store = ScheduledExports(runtime.db, task_tables)
    dispatcher = Dispatcher(store, runner, interval=settings.schedule_check_seconds)
    runtime.extras[export_tasks.SCHEDULER] = store
    runtime.extras[export_tasks.DISPATCHER] = dispatcher
    dispatcher.start()
    if source == "changelog":
        watcher = ChangeWatcher(
            runtime.extras["coursedb"],
            runner,
            export_tasks.CHANGES,
            debounce=settings.change_debounce_seconds,
        )
        runtime.extras[WATCHER] = watcher
        watcher.start()


async def _stop_live(runtime: ServiceRuntime) -> None:
    watcher = runtime.extras.pop(WATCHER, None)
    if watcher is not None:
        await watcher.stop()
    dispatcher = runtime.extras.pop(export_tasks.DISPATCHER, None)
    if dispatcher is not None:
        await dispatcher.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    holder: dict[str, ServiceRuntime] = {}
    registry, handlers = export_tasks.build(
        holder, cron=settings.full_export_cron, poll_seconds=settings.change_poll_seconds
    )
    start_tasks, stop_tasks = task_hooks(registry, task_tables)

    async def remember(runtime: ServiceRuntime) -> None:
        holder["runtime"] = runtime

    return create_service_app(
        settings,
        title="edumesh course-export",
        description=(DOC or "").strip(),
        routers=[router, scheduled_router, task_router()],
        metadata=metadata,
        migrations=MIGRATIONS,
        handlers=[handlers],
        on_startup=[
            remember,
            _open_coursedb,
            _choose_change_source,
            start_tasks,
            _start_live,
            _freeze_startup_heap,
        ],
        # Run in reverse: the watcher and dispatcher stop first, the coursedb closes last.
        on_shutdown=[_close_coursedb, stop_tasks, _stop_live],
    )
