"""The Database object: engine, sessions, unit of work and readiness for one service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata() -> MetaData:
    """A fresh MetaData for one service.

    Never the global SQLModel one: services share a process in the embedded default.
    """
    return MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; busy_timeout turns lock contention into a wait.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    """One service's database: engine, session factory and unit-of-work scope."""

    def __init__(
        self, url: str, *, schema: str | None = None, echo: bool = False, pre_ping: bool = True
    ) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        # Only PostgreSQL gets a schema; SQLite isolates by file, MariaDB by database.
        self.schema = schema if self.dialect == "postgresql" else None
        # hide_parameters: a failed statement must not print bound values (secrets, IBANs) in logs.
        kwargs: dict[str, Any] = {
            "echo": echo,
            # Test a pooled connection before each use (on asyncpg three round trips: BEGIN,
            # SELECT, ROLLBACK). ``pre_ping=False`` suits a hot path that retries a dead
            # connection itself: after a server restart the first failure invalidates the pool.
            "pool_pre_ping": pre_ping and self.dialect != "sqlite",
            "hide_parameters": True,
        }
        if self.dialect == "sqlite":
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_recycle=1800)
        engine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if self.schema:
            engine = engine.execution_options(schema_translate_map={None: self.schema})
        self.engine: AsyncEngine = engine
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def ensure_schema(self) -> None:
        """Create the service's schema on PostgreSQL (idempotent)."""
        if self.schema:
            async with self.engine.begin() as conn:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commit on success, roll back on any exception."""
        async with self.sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
