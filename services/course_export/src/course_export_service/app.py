"""Builds the course-export service app from explicit settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from coursedb.engine import create_engine as create_coursedb_engine
from fastapi import FastAPI
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.tasks import task_hooks, task_router

from course_export_service import __doc__ as DOC
from course_export_service import tasks as export_tasks
from course_export_service import template_service
from course_export_service.api import router
from course_export_service.models import metadata
from course_export_service.models import tasks as task_tables
from course_export_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


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
        routers=[router, task_router()],
        metadata=metadata,
        migrations=MIGRATIONS,
        handlers=[handlers],
        on_startup=[remember, _open_coursedb, start_tasks],
        on_shutdown=[_close_coursedb, stop_tasks],
    )
