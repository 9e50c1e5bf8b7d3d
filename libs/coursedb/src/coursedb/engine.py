"""Engines for the course database, and creating/dropping its schema.

``create_engine(url)`` returns an ``AsyncEngine`` for SQLite (aiosqlite, the default), PostgreSQL
(asyncpg) or MariaDB (``mysql+asyncmy``). The URL always comes from the caller; only the CLI
reads ``COURSEDB_URL``. Nothing here runs at import time.

SQLite needs three fixes to behave like a server database, applied on every new connection:
foreign keys on (SQLite's default is off), WAL (readers do not block the writer), and a busy
timeout. Python's sqlite3 module also starts transactions lazily and on its own terms, so its
transaction handling is switched off and SQLAlchemy emits ``BEGIN`` itself: with
``sqlite_begin="IMMEDIATE"`` a transaction takes SQLite's write lock at its start, which is what a
booking transaction that counts seats and then inserts needs (SQLite ignores ``FOR UPDATE``).

This module must not read settings or environment variables, and must not create tables on its
own: ``create_schema`` is an explicit step (``coursedb init``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coursedb.schema import metadata

DEFAULT_URL = "sqlite+aiosqlite:///./var/coursedb.sqlite3"

SqliteBegin = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"]


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a file-backed SQLite URL, else None (server or in-memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def create_engine(
    url: str | None = None,
    *,
    sqlite_begin: SqliteBegin = "DEFERRED",
    sqlite_busy_timeout_ms: int = 10_000,
    sqlite_cache_mib: int = 64,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An AsyncEngine for the course database at ``url`` (default: ``DEFAULT_URL``).

    For a SQLite file the parent directory is created, since a missing directory is the only
    reason opening a fresh local database fails. ``engine_kwargs`` go to
    ``create_async_engine`` (e.g. ``echo=True``, pool settings).
    """
    parsed = make_url(url or DEFAULT_URL)
    backend = parsed.get_backend_name()
    if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        # The driver default is not utf8mb4 everywhere; names like "Ærøskøbing" must round-trip.
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    if backend in ("mysql", "mariadb"):
        # MariaDB closes idle connections after wait_timeout; recycle before that happens.
        engine_kwargs.setdefault("pool_recycle", 3600)
        engine_kwargs.setdefault("pool_pre_ping", True)

    path = sqlite_file(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)

    engine = create_async_engine(parsed, **engine_kwargs)
    if backend == "sqlite":
        _configure_sqlite(
            engine,
            begin=sqlite_begin,
            busy_timeout_ms=sqlite_busy_timeout_ms,
            cache_mib=sqlite_cache_mib,
        )
    return engine


def _configure_sqlite(
    engine: AsyncEngine, *, begin: SqliteBegin, busy_timeout_ms: int, cache_mib: int
) -> None:
    begin_sql = f"BEGIN {begin}"

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" hook below decides when a
        # transaction starts, so SAVEPOINT and the lock mode behave as documented.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL is durable against application crashes and much faster than FULL.
            cursor.execute("PRAGMA synchronous = NORMAL")
            # SQLite's default page cache is 2 MiB; a course catalogue with its registrations
            # outgrows that quickly and every index insert would then go to disk.
            cursor.execute(f"PRAGMA cache_size = {-1024 * int(cache_mib)}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin_sql)


async def create_schema(engine: AsyncEngine) -> None:
    """Create every coursedb table that does not exist yet (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def drop_schema(engine: AsyncEngine) -> None:
    """Drop every coursedb table (children first). Data is gone afterwards."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
