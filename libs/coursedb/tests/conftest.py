"""Fixtures for the coursedb tests: the same tests run on SQLite, PostgreSQL and MariaDB.

Server databases are real and throwaway: each purpose gets its own database on the server
(``coursedb_test_<purpose>_<random>``), created on first use and dropped at the end of the session,
so tests that drop tables never disturb the seeded data other tests read. A missing server skips
locally and fails under ``CI=true`` (``mesh_common.testing.servers.require_server``).

Fixtures that need a database but not an event loop (creating databases, seeding the shared
dataset) run their async work in their own ``asyncio.run``; engines used inside tests are made in
the test's own loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import pytest
from coursedb.engine import create_engine
from coursedb.seed import SeedReport, seed
from mesh_common.testing.servers import MARIADB_HOST, MARIADB_PORT, PG_ADMIN_URL, require_server
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

BACKENDS = ("sqlite", "postgresql", "mariadb")

#: The shared seeded dataset: small, but big enough for every status and mode to appear.
SEED_ARGS: dict[str, Any] = {
    "courses": 150,
    "participants": 160,
    "seed": 11,
    "today": dt.date(2025, 10, 15),
}


class ServerDatabases:
    """Creates throwaway databases on the PostgreSQL and MariaDB servers; drops them at the end."""

    def __init__(self) -> None:
        self._created: dict[tuple[str, str], str] = {}
        self._tag = uuid.uuid4().hex[:8]

    def url(self, backend: str, purpose: str) -> str:
        key = (backend, purpose)
        if key not in self._created:
            name = f"coursedb_test_{purpose}_{self._tag}"
            if backend == "postgresql":
                pg = make_url(PG_ADMIN_URL)
                require_server("PostgreSQL", pg.host or "127.0.0.1", pg.port or 5432)
                asyncio.run(self._pg(f'CREATE DATABASE "{name}"'))
                self._created[key] = name
            else:
                require_server("MariaDB", MARIADB_HOST, MARIADB_PORT)
                asyncio.run(self._mariadb(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                self._created[key] = name
        name = self._created[key]
        if backend == "postgresql":
            pg = make_url(PG_ADMIN_URL)
            return str(
                pg.set(drivername="postgresql+asyncpg", database=name).render_as_string(
                    hide_password=False
                )
            )
        return f"mysql+asyncmy://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}?charset=utf8mb4"

    def drop_all(self) -> None:
        for (backend, _purpose), name in self._created.items():
            if backend == "postgresql":
                asyncio.run(self._pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                asyncio.run(self._mariadb(f"DROP DATABASE IF EXISTS `{name}`"))

    @staticmethod
    async def _pg(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    @staticmethod
    async def _mariadb(sql: str) -> None:
        conn = await asyncmy.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root")
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql)
        finally:
            conn.close()


@pytest.fixture(scope="session")
def server_databases() -> Iterator[ServerDatabases]:
    databases = ServerDatabases()
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def database_url(
    server_databases: ServerDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], str]:
    """``database_url(backend, purpose)``: a URL to a database of its own for that purpose."""

    def make(backend: str, purpose: str) -> str:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp(f"coursedb-{purpose}") / "coursedb.sqlite3"
            return f"sqlite+aiosqlite:///{path}"
        return server_databases.url(backend, purpose)

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def scratch_url(backend: str, database_url: Callable[[str, str], str]) -> str:
    """A database each test may create and drop tables in (SQLite: fresh per test)."""
    return database_url(backend, "scratch")


@pytest.fixture
async def scratch_engine(scratch_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(scratch_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def seeded(database_url: Callable[[str, str], str]) -> Callable[[str], tuple[str, SeedReport]]:
    """``seeded(backend)``: (url, report) of the shared dataset, seeded once per backend."""
    done: dict[str, tuple[str, SeedReport]] = {}

    def get(backend: str) -> tuple[str, SeedReport]:
        if backend not in done:
            url = database_url(backend, "seeded")

            async def run() -> SeedReport:
                engine = create_engine(url)
                try:
                    return await seed(engine, reset=True, **SEED_ARGS)
                finally:
                    await engine.dispose()

            done[backend] = (url, asyncio.run(run()))
        return done[backend]

    return get


@pytest.fixture
def seeded_url(backend: str, seeded: Callable[[str], tuple[str, SeedReport]]) -> str:
    # A sync fixture: seeding runs its own event loop, which cannot nest in the test's loop.
    return seeded(backend)[0]


@pytest.fixture
async def seeded_engine(seeded_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(seeded_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_file_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'var' / 'coursedb.sqlite3'}"
