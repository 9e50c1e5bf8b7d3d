"""Builds the profile service app from explicit settings.

To add a part (a router, bus handlers, tables, start/stop hooks), append it to the lists in
:func:`create_app`; nothing else needs to change.
"""

from __future__ import annotations

from pathlib import Path

from coursedb.banking import BankCipher
from coursedb.engine import create_engine as create_coursedb_engine
from fastapi import APIRouter, FastAPI
from mesh_common.app import Hook, ServiceRuntime, create_service_app
from mesh_common.auth import get_verifier
from mesh_common.auth.delegation import DelegationVerifier
from mesh_common.bus import HandlerRegistry
from prometheus_client import Counter

from profile_service import __doc__ as DOC
from profile_service.access import Authorizer
from profile_service.api import ProfileParts, me_router, parts_of, staff_router
from profile_service.audit import AuditLog
from profile_service.connectors import build as build_connectors
from profile_service.handlers import build_handlers
from profile_service.models import metadata
from profile_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    holder: dict[str, ServiceRuntime] = {}

    async def start_profile(runtime: ServiceRuntime) -> None:
        holder["runtime"] = runtime
        # Refuses to start without MESH_SECRET_KEY: new IBANs could not be encrypted (ADR 0007).
        cipher = BankCipher.from_env()
        url = runtime.settings.coursedb_url
        engine = create_coursedb_engine(url)
        writer = (
            create_coursedb_engine(url, sqlite_begin="IMMEDIATE")
            if engine.dialect.name == "sqlite"
            else engine
        )

        async def coursedb_ready() -> None:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")

        runtime.health.add("coursedb", coursedb_ready)
        delegations = DelegationVerifier(
            settings.auth_settings(), audience=settings.delegation_audience
        )
        runtime.extras["profile"] = ProfileParts(
            coursedb=engine,
            writer=writer,
            cipher=cipher,
            authorizer=Authorizer(get_verifier(app), delegations, refusals),
            audit=AuditLog(runtime.db, audit_failures),
        )

    async def stop_profile(runtime: ServiceRuntime) -> None:
        parts = runtime.extras.pop("profile", None)
        if isinstance(parts, ProfileParts):
            await parts.authorizer.aclose()
            await parts.coursedb.dispose()
            if parts.writer is not parts.coursedb:
                await parts.writer.dispose()

    connector_parts = build_connectors({})
    routers: list[APIRouter] = [me_router, staff_router, *connector_parts.routers]
    handlers: list[HandlerRegistry] = [build_handlers(lambda: parts_of(holder["runtime"]))]
    on_startup: list[Hook] = [start_profile, *connector_parts.on_startup]
    on_shutdown: list[Hook] = [stop_profile, *connector_parts.on_shutdown]

    app = create_service_app(
        settings,
        title="edumesh profile",
        description=(DOC or "").strip(),
        routers=routers,
        metadata=metadata,
        migrations=MIGRATIONS,
        handlers=handlers,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    registry = app.state.runtime.metrics.registry
    refusals = Counter(
        "profile_access_refused_total",
        "Profile accesses refused (403), by channel and problem code",
        ["channel", "code"],
        registry=registry,
    )
    audit_failures = Counter(
        "profile_audit_failures_total",
        "Audit records that could not be written, by action",
        ["action"],
        registry=registry,
    )
    return app
