"""Builds the schulconnex-sync service app from explicit settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coursedb.engine import create_engine as create_coursedb_engine
from fastapi import APIRouter, Depends, FastAPI
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.connectors import (
    connection_router,
    connector_hooks,
    mail_delivery,
    sync_router,
)
from mesh_common.connectors.api import EXTRAS_KEY as CONNECTORS
from mesh_common.mail import mail_hooks, mail_router
from mesh_common.tasks import task_hooks, task_router

from schulconnex_sync_service import __doc__ as DOC
from schulconnex_sync_service import tasks as sync_tasks
from schulconnex_sync_service.api import permission, router
from schulconnex_sync_service.confirmations import ConfirmationStore
from schulconnex_sync_service.connection import kinds
from schulconnex_sync_service.models import connectors as connector_tables
from schulconnex_sync_service.models import mail as mail_tables
from schulconnex_sync_service.models import metadata
from schulconnex_sync_service.models import tasks as task_tables
from schulconnex_sync_service.notify import SyncNotifier, rule_lookup
from schulconnex_sync_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


async def _open(runtime: ServiceRuntime) -> None:
    engine = create_coursedb_engine(runtime.settings.coursedb_url)
    runtime.extras["coursedb"] = engine
    runtime.extras[sync_tasks.CONFIRMATIONS] = ConfirmationStore(runtime.db)

    async def coursedb_ready() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    runtime.health.add("coursedb", coursedb_ready)


async def _close(runtime: ServiceRuntime) -> None:
    await runtime.extras["coursedb"].dispose()


def _guarded(*routers: APIRouter) -> APIRouter:
    """The framework routers, behind this service's permission as well as their own roles."""
    outer = APIRouter(dependencies=[Depends(permission)])
    for r in routers:
        outer.include_router(r)
    return outer


def create_app(settings: Settings | None = None, **task_options: Any) -> FastAPI:
    """``task_options`` go to the task runner (tests use a short tick)."""
    settings = settings or Settings()
    holder: dict[str, ServiceRuntime] = {}
    registry = sync_tasks.build(holder, settings)
    notifier: dict[str, SyncNotifier] = {}

    async def on_finish(execution: dict[str, Any]) -> None:
        # Seed step 11 by mail (opt-in): see schulconnex_sync_service.notify.
        if "n" in notifier:
            await notifier["n"](execution)

    start_tasks, stop_tasks = task_hooks(registry, task_tables, on_finish=on_finish, **task_options)
    start_connectors, stop_connectors = connector_hooks(connector_tables, kinds=kinds())
    start_mail, stop_mail = mail_hooks(mail_tables)

    async def remember(runtime: ServiceRuntime) -> None:
        holder["runtime"] = runtime

    async def wire_notifier(runtime: ServiceRuntime) -> None:
        notifier["n"] = SyncNotifier(
            runtime.db,
            task_tables,
            mail_delivery(runtime.db, mail_tables, category="schulconnex-sync"),
            rule_lookup(
                lambda: runtime.extras[CONNECTORS],
                (list(settings.sync_notify_recipients), list(settings.sync_notify_on)),
            ),
            task=sync_tasks.TASK,
            service=settings.service_name,
        )

    return create_service_app(
        settings,
        title="edumesh schulconnex-sync",
        description=(DOC or "").strip(),
        routers=[
            router,
            _guarded(
                task_router(),
                connection_router(),
                sync_router(prefix="/sync-state"),
                mail_router(),
            ),
        ],
        metadata=metadata,
        migrations=MIGRATIONS,
        on_startup=[remember, _open, start_connectors, start_mail, wire_notifier, start_tasks],
        # Run in reverse: the tasks stop first, the course database goes last.
        on_shutdown=[_close, stop_connectors, stop_mail, stop_tasks],
    )
