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
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData

from mesh_common.auth import TokenVerifier, install_auth
from mesh_common.bus import Bus, BusSettings, HandlerRegistry, MemoryBroker, create_bus
from mesh_common.bus.inbox import Inbox
from mesh_common.bus.outbox import Outbox, OutboxRelay
from mesh_common.bus.tracing import BusTracingMiddleware
from mesh_common.db import Database, upgrade
from mesh_common.docs import install_docs
from mesh_common.errors import install_problem_handlers
from mesh_common.health import HealthChecks, health_router
from mesh_common.metrics import BusMetricsMiddleware, Metrics, metrics_router
from mesh_common.middleware import BodyLimitMiddleware, RequestContextMiddleware
from mesh_common.settings import ServiceSettings
from mesh_common.telemetry import create_tracer_provider

log = logging.getLogger("mesh.app")

Hook = Callable[["ServiceRuntime"], Awaitable[None]]

_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MemoryBroker] = (
    weakref.WeakKeyDictionary()
)
_loopless_broker: MemoryBroker | None = None


def process_broker() -> MemoryBroker:
    """The in-memory broker shared by every service of this event loop (the embedded default).

    Keyed by loop because a broker's queues and consumers belong to one loop (tests run a loop
    per test); an app built before any loop runs gets the process's loop-less broker.
    """
    global _loopless_broker
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if _loopless_broker is None:
            _loopless_broker = MemoryBroker()
        return _loopless_broker
    broker = _brokers.get(loop)
    if broker is None:
        broker = _brokers[loop] = MemoryBroker()
    return broker


@dataclass
class ServiceRuntime:
    """Everything a running service holds; available as ``app.state.runtime``."""

    settings: ServiceSettings
    db: Database
    metrics: Metrics
    health: HealthChecks
    tracer_provider: TracerProvider
    bus: Bus
    outbox: Outbox | None = None
    outbox_relay: OutboxRelay | None = None
    inbox: Inbox | None = None
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
    handlers: Sequence[HandlerRegistry] = (),
    broker: MemoryBroker | None = None,
    bus_settings: BusSettings | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build a service app. ``migrations`` is the alembic script directory of the service.

    ``handlers`` are the service's bus handler registries. Without ``AMQP_URL`` the bus runs on
    ``broker`` (default: the process-wide in-memory broker, so services of one process reach
    each other).
    """
    assert settings.database_url is not None
    db = Database(
        settings.database_url, schema=settings.db_schema, pre_ping=settings.db_pool_pre_ping
    )
    metrics = Metrics(settings.service_name)
    health = HealthChecks()
    health.add("database", db.ping)
    provider = tracer_provider or create_tracer_provider(settings.service_name)
    bus = create_bus(
        bus_settings or settings.bus_settings(),
        broker=broker or (process_broker() if settings.amqp_url is None else None),
        middlewares=[BusMetricsMiddleware(metrics), BusTracingMiddleware(provider)],
    )
    for registry in handlers:
        bus.include(registry)

    async def bus_ready() -> None:
        if not bus._started:
            raise RuntimeError("bus not started")
        connection = getattr(bus.transport, "connection", None)
        if connection is not None and getattr(connection, "is_closed", False):
            raise RuntimeError("broker connection closed (reconnecting)")

    health.add("bus", bus_ready)
    runtime = ServiceRuntime(
        settings=settings,
        bus=bus,
        db=db,
        metrics=metrics,
        health=health,
        tracer_provider=provider,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if migrations is not None:
            await upgrade(db, migrations)
        elif metadata is not None:
            await db.ensure_schema()
            async with db.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        await bus.start()
        if runtime.outbox is not None:
            runtime.outbox_relay = OutboxRelay(
                runtime.outbox,
                bus,
                db.engine,
                backoff_max=settings.outbox_relay_backoff_max_seconds,
            )
            runtime.outbox_relay.start()
            runtime.spawn(_watch_outbox(runtime), name="outbox-metrics")
        if runtime.outbox_relay is not None or runtime.inbox is not None:
            runtime.spawn(_housekeeping(runtime), name="mesh-housekeeping")
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
            if runtime.outbox_relay is not None:
                await runtime.outbox_relay.stop()
            await bus.stop(grace=settings.shutdown_grace_seconds)
            await db.dispose()
            runtime.tracer_provider.shutdown()
            log.info("service stopped", extra={"service": settings.service_name})

    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        docs_url=None,  # install_docs: Swagger UI from local assets, no CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install_docs(app, title=title)
    if metadata is not None:
        # A service that declares the mesh tables gets the outbox relay and the inbox wired.
        if "mesh_outbox" in metadata.tables:
            runtime.outbox = Outbox(metadata.tables["mesh_outbox"], service=settings.service_name)
        if "mesh_inbox" in metadata.tables:
            runtime.inbox = Inbox(metadata.tables["mesh_inbox"], db.sessionmaker)
    app.state.runtime = runtime
    app.state.draining = False
    install_problem_handlers(app)
    install_auth(app, TokenVerifier(settings.auth_settings()))
    app.include_router(health_router())
    app.include_router(metrics_router())
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    _instrument(app, runtime.tracer_provider)
    _instrument_db(db, runtime.tracer_provider)
    return app


async def _watch_outbox(runtime: ServiceRuntime, interval: float = 5.0) -> None:
    """Keep the outbox backlog gauges current (size and age of what is not yet relayed)."""
    assert runtime.outbox_relay is not None
    while True:
        try:
            backlog = await runtime.outbox_relay.backlog()
            runtime.metrics.outbox_backlog.set(backlog.pending)
            runtime.metrics.outbox_oldest_age.set(backlog.oldest_age)
        except Exception:
            log.warning("outbox backlog probe failed", exc_info=True)
        await asyncio.sleep(interval)


async def housekeep(runtime: ServiceRuntime) -> dict[str, int]:
    """Delete relayed outbox rows and inbox marks past their retention (settings
    ``outbox_retention_hours`` / ``inbox_retention_days``; 0 keeps them). Returns the counts."""
    settings = runtime.settings
    done: dict[str, int] = {}
    if runtime.outbox_relay is not None and settings.outbox_retention_hours > 0:
        done["outbox"] = await runtime.outbox_relay.purge_sent(
            settings.outbox_retention_hours * 3600
        )
    if runtime.inbox is not None and settings.inbox_retention_days > 0:
        done["inbox"] = await runtime.inbox.purge(settings.inbox_retention_days * 86400)
    return done


async def _housekeeping(runtime: ServiceRuntime, interval: float = 3600.0) -> None:
    """Hourly :func:`housekeep`; every replica does it (plain DELETEs, harmless twice)."""
    while True:
        await asyncio.sleep(interval)
        try:
            done = await housekeep(runtime)
            if any(done.values()):
                log.info("housekeeping: deleted %s", done)
        except Exception:
            log.warning("housekeeping failed; next try in %.0f s", interval, exc_info=True)


def _instrument(app: FastAPI, provider: TracerProvider) -> None:
    """Server spans for every request, continuing the caller's W3C trace context."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:  # pragma: no cover - dependency is declared; keep apps usable without it
        return
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="health/live,health/ready,metrics"
    )


def _instrument_db(db: Database, provider: TracerProvider) -> None:
    """Client spans for every statement of the service's database (parameters are never
    recorded). Per engine, with this service's provider: the instrumentor's global
    ``instrument()`` would patch ``create_engine`` process-wide and only once."""
    try:
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.metrics import NoOpMeter
    except ImportError:  # pragma: no cover - dependency is declared
        return
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    usage = NoOpMeter("mesh").create_up_down_counter("db.client.connections.usage")
    EngineTracer(tracer, db.engine.sync_engine, usage)  # type: ignore[no-untyped-call]
