"""Builds the mailbox-invites service app from explicit settings."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.secrets import SecretBox
from mesh_common.tasks import task_hooks, task_router

from mailbox_invites_service import __doc__ as DOC
from mailbox_invites_service import handlers as bus_handlers
from mailbox_invites_service import tasks as processor_tasks
from mailbox_invites_service.api import router
from mailbox_invites_service.models import metadata
from mailbox_invites_service.models import tasks as task_tables
from mailbox_invites_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


class LazySecretBox:
    """``MESH_SECRET_KEY`` is read on first use, so a missing key fails the request that needs
    the credentials (503, with the reason) instead of the service start."""

    def __init__(self) -> None:
        self._box: SecretBox | None = None

    def __call__(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox.from_env()
        return self._box


def create_app(settings: Settings | None = None, *, box: SecretBox | None = None) -> FastAPI:
    settings = settings or Settings()
    holder: dict[str, ServiceRuntime] = {}
    registry = processor_tasks.build(holder, interval_seconds=settings.processor_interval_seconds)
    handlers = bus_handlers.build(holder)
    start_tasks, stop_tasks = task_hooks(registry, task_tables)

    async def remember(runtime: ServiceRuntime) -> None:
        holder["runtime"] = runtime
        runtime.extras["secret_box"] = (lambda: box) if box is not None else LazySecretBox()

    return create_service_app(
        settings,
        title="edumesh mailbox-invites",
        description=(DOC or "").strip(),
        routers=[router, task_router()],
        metadata=metadata,
        migrations=MIGRATIONS,
        handlers=[handlers],
        on_startup=[remember, start_tasks],
        on_shutdown=[stop_tasks],
    )
