"""Builds the portal service app from explicit settings."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.mail import (
    TemplateStore,
    mail_hooks,
    mail_router,
    template_hooks,
    template_router,
)
from mesh_common.middleware import BodyLimitMiddleware
from mesh_common.secrets import SecretBox
from mesh_common.tasks import task_hooks, task_router
from starlette.types import ASGIApp, Receive, Scope, Send

from portal_service import __doc__ as DOC
from portal_service import handlers as bus_handlers
from portal_service import models, public
from portal_service import tasks as portal_tasks
from portal_service.api import router
from portal_service.clamd import ClamdClient
from portal_service.core import EXTRAS_KEY, Clock, Portal, PortalMetrics, Storage, log
from portal_service.mails import DEFAULT_TEMPLATES
from portal_service.passwords import Passwords
from portal_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
UPLOAD_SUFFIX = "/files"


class RoutedBodyLimit:
    """Small bodies everywhere except the upload routes (which enforce their own limit while
    streaming): JSON and form bodies are read into memory, uploads never are."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.limited = BodyLimitMiddleware(app, max_bytes=max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith(UPLOAD_SUFFIX)
        ):
            await self.app(scope, receive, send)
        else:
            await self.limited(scope, receive, send)


def scanner_for(settings: Settings) -> ClamdClient | None:
    if not settings.scanner_configured:
        return None
    return ClamdClient(
        host=settings.clamd_host,
        port=settings.clamd_port,
        socket_path=settings.clamd_socket,
        connect_timeout=settings.clamd_connect_timeout_seconds,
        timeout=settings.clamd_timeout_seconds,
        chunk_bytes=settings.clamd_chunk_bytes,
    )


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    passwords: dict[str, Any] | None = None,
    box: SecretBox | None = None,
) -> FastAPI:
    """``clock`` (epoch seconds) and ``passwords`` (Argon2 parameters: time_cost,
    memory_cost_kib, parallelism) are for tests; production uses the defaults. ``box`` seals
    the activation links in queued mail; by default it is read from ``MESH_SECRET_KEY`` at
    startup, and the start fails without it (links are never queued in the clear)."""
    settings = settings or Settings()
    holder: dict[str, ServiceRuntime] = {}
    boxes: list[SecretBox] = [box] if box is not None else []

    def secret_box() -> SecretBox:
        if not boxes:
            boxes.append(SecretBox.from_env())  # SecretKeyMissing (with a how-to) stops the start
        return boxes[0]

    store = TemplateStore(models.templates, DEFAULT_TEMPLATES)
    registry = portal_tasks.build(
        holder,
        pull_seconds=settings.portal_pull_interval_seconds,
        reminder_seconds=settings.portal_reminder_interval_seconds,
        purge_cron=settings.portal_hotfolder_purge_cron,
        maintenance_seconds=settings.portal_maintenance_interval_seconds,
    )
    handlers = bus_handlers.build(holder)
    start_tasks, stop_tasks = task_hooks(registry, models.tasks)
    start_mail, stop_mail = mail_hooks(models.mail, box=secret_box)
    start_templates, stop_templates = template_hooks(store)

    async def start_portal(runtime: ServiceRuntime) -> None:
        settings.storage_dir.mkdir(parents=True, exist_ok=True)
        settings.hotfolder_dir.mkdir(parents=True, exist_ok=True)
        portal = Portal(
            settings=settings,
            db=runtime.db,
            store=store,
            mail=models.mail,
            storage=Storage(settings.storage_dir),
            passwords=Passwords(**(passwords or {})),
            scanner=scanner_for(settings),
            outbox=runtime.outbox,
            clock=clock or time.time,
            metrics=PortalMetrics(runtime.metrics.registry),
            box=secret_box(),
        )
        runtime.extras[EXTRAS_KEY] = portal
        if settings.environment == "production" and not settings.portal_public_url.startswith(
            "https://"
        ):
            log.warning(
                "PORTAL_PUBLIC_URL is %s: activation links in e-mails will not use https; "
                "set it to the portal's public https address",
                settings.portal_public_url,
            )
        if portal.scanner is None:
            log.warning(
                "no virus scanner configured (CLAMD_HOST / CLAMD_SOCKET): "
                "the portal refuses every upload"
            )

    async def stop_portal(runtime: ServiceRuntime) -> None:
        portal = runtime.extras.get(EXTRAS_KEY)
        pending = portal.extras.get("link_requests", set()) if portal is not None else set()
        if pending:
            await asyncio.wait(pending, timeout=10)

    app = create_service_app(
        settings,
        title="edumesh portal",
        description=(DOC or "").strip(),
        routers=[
            router,
            public.router,
            task_router(),
            mail_router(),
            template_router(store),
        ],
        metadata=models.metadata,
        migrations=MIGRATIONS,
        handlers=[handlers],
        # The portal is up before the bus handler, the tasks or the pages need it.
        on_startup=[start_portal, start_templates, start_mail, start_tasks],
        on_shutdown=[stop_portal, stop_templates, stop_mail, stop_tasks],
    )
    holder["runtime"] = app.state.runtime
    public.install(app)
    app.add_middleware(RoutedBodyLimit, max_bytes=settings.portal_request_max_bytes)
    return app
