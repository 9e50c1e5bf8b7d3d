"""Builds the booking service app from explicit settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from coursedb.banking import BankCipher
from coursedb.engine import create_engine as create_coursedb_engine
from fastapi import FastAPI
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.auth import TokenVerifier
from mesh_common.mail import TemplateStore, mail_hooks, mail_router, template_hooks, template_router
from mesh_common.secrets import SecretBox
from mesh_contracts.booking import OrderResult
from prometheus_client import Counter, Gauge
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from booking_service import __doc__ as DOC
from booking_service import handlers as booking_handlers
from booking_service import models
from booking_service.api import router
from booking_service.booker import Booker
from booking_service.context import EXTRAS_KEY, Booking, booking_of
from booking_service.documents import Creditor, OrderDocuments
from booking_service.mailing import NotificationWorker
from booking_service.notifications import Notifier, default_templates
from booking_service.pgfast import PgPool
from booking_service.service import BacklogWorker, OrderService, same_payload
from booking_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
# Connections of the order path to booking's own database (one short statement per use; as
# many as mesh_common.db gives its engine).
FAST_DB_POOL_SIZE = 20


def coursedb_engine(settings: Settings) -> AsyncEngine:
    """The coursedb engine booking needs: IMMEDIATE transactions on SQLite (the seat lock),
    bounded connect and pool waits everywhere (so an outage is noticed, not waited out)."""
    url = settings.coursedb_url
    assert url is not None
    backend = make_url(url).get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend != "sqlite":
        connect_timeout = settings.coursedb_connect_timeout_seconds
        kwargs.update(
            pool_size=settings.coursedb_pool_size,
            max_overflow=settings.coursedb_pool_size // 2,
            pool_timeout=settings.coursedb_timeout_seconds,
            # No ping before every use (a round trip per booking): the booker retries once on
            # a connection that turns out dead, and an unreachable server is an outage anyway.
            pool_pre_ping=False,
        )
        if backend == "postgresql":
            kwargs["connect_args"] = {"timeout": connect_timeout}
        else:
            kwargs["connect_args"] = {"connect_timeout": max(1, int(connect_timeout))}
    engine: AsyncEngine = create_coursedb_engine(url, sqlite_begin="IMMEDIATE", **kwargs)
    return engine


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    holder: dict[str, ServiceRuntime] = {}
    handlers = booking_handlers.build(holder)
    creditor = Creditor(
        name=settings.sepa_creditor_name,
        address=settings.sepa_creditor_address,
        identifier=settings.sepa_creditor_id,
        centre=settings.centre_name,
    )
    store = TemplateStore(models.templates, default_templates(creditor), allow_new=False)

    async def documents(result: OrderResult) -> OrderDocuments | None:
        return await booking_of(holder["runtime"]).documents(result)

    notifier = Notifier(
        store=store, tables=models.mail, settings=settings, creditor=creditor, documents=documents
    )
    start_mail, stop_mail = mail_hooks(models.mail)
    start_templates, stop_templates = template_hooks(store)

    async def start(runtime: ServiceRuntime) -> None:
        holder["runtime"] = runtime
        box = SecretBox.from_env()  # MESH_SECRET_KEY: IBAN encryption and the payload hash
        cipher = BankCipher(box)
        engine = coursedb_engine(settings)
        # PostgreSQL: the order path runs on asyncpg pools of its own (booking_service.pgfast).
        fast_coursedb = PgPool.for_engine(
            engine,
            max_size=settings.coursedb_pool_size + settings.coursedb_pool_size // 2,
            connect_timeout=settings.coursedb_connect_timeout_seconds,
            acquire_timeout=settings.coursedb_timeout_seconds,
        )
        fast_db = PgPool.for_engine(runtime.db.engine, max_size=FAST_DB_POOL_SIZE)
        booker = Booker(
            engine,
            cipher,
            mandate_prefix=settings.mandate_reference_prefix,
            fast=fast_coursedb,
            same_payload=lambda stored, order: same_payload(box, stored, order),
        )
        orders_total = Counter(
            "booking_orders_total",
            "Orders answered, by status",
            ["status"],
            registry=runtime.metrics.registry,
        )
        service = OrderService(
            runtime.db,
            booker,
            box,
            settings,
            outbox=runtime.outbox,
            notifier=notifier,
            fast=fast_db,
        )
        service.observe = lambda status: orders_total.labels(status).inc()
        mails_failed = Counter(
            "booking_notifications_failed_total",
            "Accepted orders whose mails could not be prepared (see the order's last_error)",
            registry=runtime.metrics.registry,
        )
        service.notification_failed = mails_failed.inc
        worker = BacklogWorker(service)
        pending = Gauge(
            "booking_backlog_pending",
            "Orders waiting for the course database",
            registry=runtime.metrics.registry,
        )
        worker.observe = pending.set
        mailer = NotificationWorker(service)
        mails_due = Gauge(
            "booking_notifications_due",
            "Accepted orders whose mails wait to be prepared and queued",
            registry=runtime.metrics.registry,
        )
        mailer.observe = mails_due.set
        runtime.extras[EXTRAS_KEY] = Booking(
            runtime=runtime,
            settings=settings,
            coursedb=engine,
            cipher=cipher,
            booker=booker,
            orders=service,
            worker=worker,
            mailer=mailer,
            verifier=TokenVerifier(settings.auth_settings()),
            creditor=creditor,
            extras={},
        )
        booking_of(runtime).extras["worker_task"] = runtime.spawn(
            worker.run(), name="booking-backlog"
        )
        booking_of(runtime).extras["mailer_task"] = runtime.spawn(
            mailer.run(), name="booking-mails"
        )

    async def stop(runtime: ServiceRuntime) -> None:
        if EXTRAS_KEY not in runtime.extras:
            return
        booking = booking_of(runtime)
        tasks = [booking.extras.get(name) for name in ("worker_task", "mailer_task")]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        for fast in (booking.booker.fast, booking.orders.fast):
            if fast is not None:  # orders still in flight finish first (bus.stop comes later)
                await fast.close(grace=settings.shutdown_grace_seconds)
        await booking.coursedb.dispose()

    return create_service_app(
        settings,
        title="edumesh booking",
        description=(DOC or "").strip(),
        routers=[
            router,
            mail_router(),
            template_router(store, preview_extras=notifier.preview),
        ],
        metadata=models.metadata,
        migrations=MIGRATIONS,
        handlers=[handlers],
        on_startup=[start_templates, start, start_mail],
        on_shutdown=[stop_mail, stop, stop_templates],
    )
