"""Throwaway databases for DDL tests: an engine on its own SQLite file, or on PostgreSQL with a
search path holding only a fresh schema (so DDL and reflection both land there), dropped
afterwards. Test support only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@asynccontextmanager
async def isolated_engine(url: str, *, prefix: str = "ddl") -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` as it is (SQLite: a test's own file) or, on PostgreSQL, confined to
    a new schema named ``<prefix>_<random>`` that is dropped on exit."""
    if not url.startswith("postgresql"):
        engine = create_async_engine(url)
        try:
            yield engine
        finally:
            await engine.dispose()
        return
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    try:
        yield engine
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
