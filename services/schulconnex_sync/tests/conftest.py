"""Fixtures of the schulconnex-sync tests: a fake Schulconnex server over real HTTP (uvicorn on a
free port), a small hand-made course database, and the service app on SQLite or PostgreSQL.

Every test that uses ``fake`` asserts at the end that the fake saw no request violating the
OpenAPI files and produced no invalid response. Helpers live in ``support.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from coursedb.engine import create_engine
from pydantic import SecretStr
from schulconnex_sync_service.app import create_app
from schulconnex_sync_service.fake import FakeServer, demo_fake
from schulconnex_sync_service.settings import Settings

from .support import SECRET, CourseDB, Fake, Service, ServiceFactory


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    # Both validators on every message: the compiled one must agree with openapi-core's full
    # validate_request / validate_response, or the disagreement is a violation.
    server_fake, creds = demo_fake(validation="both")
    async with FakeServer(server_fake) as server:
        yield Fake(server_fake, server, creds)
    bad = server_fake.violations
    assert not bad, f"the fake saw requests/responses violating the OpenAPI files: {bad[:3]}"


@pytest.fixture
async def coursedb(tmp_path: Path) -> AsyncIterator[CourseDB]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}")
    db = CourseDB(engine)
    await db.setup()
    yield db
    await engine.dispose()


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The service database; tests that must also run on PostgreSQL parametrize it."""
    return str(request.param)


@pytest.fixture
async def service_factory(
    tmp_path: Path, coursedb: CourseDB, backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[ServiceFactory]:
    """Builds (and tears down) the service app; ``overrides`` go to Settings."""
    managers: list[tuple[LifespanManager, httpx.AsyncClient]] = []

    async def build(**overrides: Any) -> Service:
        kw: dict[str, Any] = {
            "var_dir": tmp_path,
            "coursedb_url": str(coursedb.engine.url),
            "mesh_jwt_secret": SecretStr(SECRET),
            "log_json": False,
            "schulconnex_max_retries": 5,
        }
        if backend == "postgres":
            kw["database_url"] = request.getfixturevalue("pg_url")
            kw["db_schema"] = f"sc_{uuid.uuid4().hex[:10]}"
        kw.update(overrides)
        app = create_app(Settings(**kw), tick_seconds=0.2, lease_seconds=5.0)
        manager = LifespanManager(app, startup_timeout=60, shutdown_timeout=30)
        await manager.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://sc"
        )
        managers.append((manager, client))
        return Service(client, app.state.runtime)

    yield build
    for manager, client in reversed(managers):
        await client.aclose()
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def service(service_factory: ServiceFactory, fake: Fake) -> Service:
    return await service_factory(**fake.env())
