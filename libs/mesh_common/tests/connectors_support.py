"""Fixtures shared by the test_connectors_* modules (imported by name, not a conftest, so they
stay out of the other mesh_common tests): a service database per backend (a SQLite file or a
fresh PostgreSQL schema) holding the connector and task tables, the Connectors hub on it, and an
HTTP app with the connector routers behind real auth and problem+json."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from mesh_common.auth import AuthSettings, TokenVerifier, install_auth, mint_token
from mesh_common.connectors import (
    Connectors,
    ConnectorTables,
    build_connectors,
    connector_routers,
    connector_tables,
)
from mesh_common.db import Database, service_metadata
from mesh_common.errors import install_problem_handlers
from mesh_common.secrets import SecretBox, generate_key
from mesh_common.tasks import TaskTables, task_tables
from sqlalchemy import MetaData, text

SECRET = "connectors-test-secret-0123456789abcdef"


def auth(*roles: str, subject: str = "u1") -> dict[str, str]:
    token = mint_token(subject=subject, secret=SECRET, roles=roles)
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Backend:
    name: str
    db: Database
    metadata: MetaData
    tables: ConnectorTables
    tasks: TaskTables
    box: SecretBox
    hub: Connectors


@pytest.fixture(name="backend", params=["sqlite", "postgres"])
async def backend_fixture(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    schema = None
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
        schema = f"conn_{uuid.uuid4().hex[:10]}"
    db = Database(url, schema=schema)
    metadata = service_metadata()
    tables = connector_tables(metadata)
    tasks = task_tables(metadata)
    await db.ensure_schema()
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    box = SecretBox([generate_key()])
    hub = build_connectors(db, tables, box=box)
    try:
        yield Backend(request.param, db, metadata, tables, tasks, box, hub)
    finally:
        await db.dispose()
        if schema:
            cleanup = Database(url)
            async with cleanup.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            await cleanup.dispose()


def make_app(hub: Connectors, *extra: APIRouter) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    install_auth(app, TokenVerifier(AuthSettings(mode="hs256", hs256_secret=SECRET)))
    for router in (*connector_routers(), *extra):
        app.include_router(router)
    app.state.connectors = hub
    return app


@pytest.fixture(name="api")
async def api_fixture(backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(backend.hub))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        yield client
