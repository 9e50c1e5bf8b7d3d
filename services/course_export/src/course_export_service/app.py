"""Builds the course-export service app from explicit settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from coursedb.engine import create_engine as create_coursedb_engine
from fastapi import FastAPI
from mesh_common.app import ServiceRuntime, create_service_app

from course_export_service import __doc__ as DOC
from course_export_service import template_service
from course_export_service.api import router
from course_export_service.models import metadata
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
    return create_service_app(
        settings,
        title="edumesh course-export",
        description=(DOC or "").strip(),
        routers=[router],
        metadata=metadata,
        migrations=MIGRATIONS,
        on_startup=[_open_coursedb],
        on_shutdown=[_close_coursedb],
    )
