"""The service app factory: one FastAPI app per service with the mesh's common parts wired in.

``create_service_app`` builds everything from explicit settings (nothing at import): database,
migrations, bus and outbox relay, auth, problem+json, request context, metrics, tracing, health.
The lifespan starts them in order and stops them in reverse, draining in-flight work within the
settings' grace period. Service packages add their routers, bus handlers and hooks; they must not
duplicate any of this wiring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData

from mesh_common.db import Database, upgrade
from mesh_common.errors import install_problem_handlers
from mesh_common.health import HealthChecks, health_router
from mesh_common.metrics import Metrics, metrics_router
from mesh_common.middleware import BodyLimitMiddleware, RequestContextMiddleware
from mesh_common.settings import ServiceSettings
from mesh_common.telemetry import create_tracer_provider

log = logging.getLogger("mesh.app")

Hook = Callable[["ServiceRuntime"], Awaitable[None]]


@dataclass
class ServiceRuntime:
    """Everything a running service holds; available as ``app.state.runtime``."""

    settings: ServiceSettings
    db: Database
    metrics: Metrics
    health: HealthChecks
    tracer_provider: TracerProvider
    bus: Any = None
    outbox_relay: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    def spawn(self, coro: Awaitable[Any], *, name: str) -> asyncio.Task[Any]:
        """Start a background task that is cancelled on shutdown and logged if it dies."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)

        def _done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s died", name, exc_info=t.exception())

        task.add_done_callback(_done)
        self.background.append(task)
        return task


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    description: str,
    version: str = "0.1.0",
    routers: Sequence[APIRouter] = (),
    metadata: MetaData | None = None,
    migrations: Path | None = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    bus_factory: Callable[[ServiceRuntime], Any] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build a service app. ``migrations`` is the alembic script directory of the service."""
    assert settings.database_url is not None
    db = Database(settings.database_url, schema=settings.db_schema)
    metrics = Metrics(settings.service_name)
    health = HealthChecks()
    health.add("database", db.ping)
    runtime = ServiceRuntime(
        settings=settings,
        db=db,
        metrics=metrics,
        health=health,
        tracer_provider=tracer_provider or create_tracer_provider(settings.service_name),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if migrations is not None:
            await upgrade(db, migrations)
        elif metadata is not None:
            await db.ensure_schema()
            async with db.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        if bus_factory is not None:
            runtime.bus = bus_factory(runtime)
            await runtime.bus.start()
        for hook in on_startup:
            await hook(runtime)
        log.info("service started", extra={"service": settings.service_name})
        try:
            yield {"runtime": runtime}
        finally:
            app.state.draining = True
            for hook in reversed(on_shutdown):
                try:
                    await asyncio.wait_for(hook(runtime), settings.shutdown_grace_seconds)
                except Exception:
                    log.exception("shutdown hook failed")
            for task in runtime.background:
                task.cancel()
            if runtime.background:
                await asyncio.gather(*runtime.background, return_exceptions=True)
            if runtime.bus is not None:
                await runtime.bus.stop()
            await db.dispose()
            runtime.tracer_provider.shutdown()
            log.info("service stopped", extra={"service": settings.service_name})

    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.db = db
    app.state.metrics = metrics
    app.state.health = health
    app.state.draining = False
    install_problem_handlers(app)
    app.include_router(health_router())
    app.include_router(metrics_router())
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    _instrument(app, runtime.tracer_provider)
    return app


def _instrument(app: FastAPI, provider: TracerProvider) -> None:
    """Server spans for every request, continuing the caller's W3C trace context."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:  # pragma: no cover - dependency is declared; keep apps usable without it
        return
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="health/live,health/ready,metrics"
    )
