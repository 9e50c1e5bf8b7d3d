"""Every service starts from explicit settings on SQLite and PostgreSQL, migrates its own schema,
and answers health, metrics and problem+json the same way."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

SERVICES = ["course_export", "booking", "profile", "portal", "mailbox_invites", "schulconnex_sync"]


async def _client(service: str, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    app_mod = importlib.import_module(f"{service}_service.app")
    settings_mod = importlib.import_module(f"{service}_service.settings")
    app = app_mod.create_app(settings_mod.Settings(**settings))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client


@pytest.mark.parametrize("service", SERVICES)
async def test_service_on_sqlite(service: str, tmp_path: Path) -> None:
    async for client in _client(service, var_dir=tmp_path):
        about = await client.get("/health/about")
        assert about.status_code == 200
        assert about.json()["service"] == service.replace("_", "-")
        assert about.headers["x-request-id"]
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        checks = ready.json()["checks"]
        assert checks["database"] == "ok" and checks["bus"] == "ok"
        assert set(checks.values()) == {"ok"}
        missing = await client.get("/no/such/route")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["status"] == 404
        metrics = await client.get("/metrics")
        assert (
            'http_requests_total{method="GET",route="/health/about",status="200"} 1.0'
            in metrics.text
        )
    assert (tmp_path / f"{service.replace('_', '-')}.sqlite3").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("service", SERVICES)
async def test_service_on_postgres_uses_own_schema(service: str, pg_url: str) -> None:
    async for client in _client(service, database_url=pg_url):
        assert (await client.get("/health/ready")).status_code == 200
    engine = create_async_engine(pg_url)
    async with engine.connect() as conn:
        schemas = set(
            (
                await conn.execute(text("SELECT schema_name FROM information_schema.schemata"))
            ).scalars()
        )
        tables = set(
            (
                await conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"
                    ),
                    {"s": service},
                )
            ).scalars()
        )
        public = set(
            (
                await conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'public'"
                    )
                )
            ).scalars()
        )
    await engine.dispose()
    assert service in schemas
    assert {"alembic_version", "mesh_outbox", "mesh_inbox"} <= tables
    assert not {"mesh_outbox", "mesh_inbox", "alembic_version"} & public


async def test_request_id_from_caller_is_kept(tmp_path: Path) -> None:
    async for client in _client("booking", var_dir=tmp_path):
        r = await client.get("/health/about", headers={"x-request-id": "abc-123-def-456"})
        assert r.headers["x-request-id"] == "abc-123-def-456"
        bad = await client.get("/health/about", headers={"x-request-id": "bad id\twith junk"})
        assert bad.headers["x-request-id"] != "bad id\twith junk"


async def test_oversized_body_is_413_problem(tmp_path: Path) -> None:
    async for client in _client("booking", var_dir=tmp_path, max_body_bytes=1000):
        r = await client.post("/health/about", content=b"x" * 5000)
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_match_models(service: str, tmp_path: Path) -> None:
    """The alembic history of each service produces exactly its declared tables (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from mesh_common.db import Database, upgrade

    app_mod = importlib.import_module(f"{service}_service.app")
    models = importlib.import_module(f"{service}_service.models")
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'drift.sqlite3'}")
    await upgrade(db, app_mod.MIGRATIONS)

    def diff(sync_conn: object) -> list[object]:
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})  # type: ignore[arg-type]
        return [
            d
            for d in compare_metadata(ctx, models.metadata)
            if d[0] != "remove_table" or d[1].name != "alembic_version"
        ]

    async with db.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    await db.dispose()
    assert differences == []
