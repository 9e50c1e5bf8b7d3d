"""The DDL steps services call from their migrations create exactly the tables that
``task_tables()`` defines (alembic's autogenerate finds no difference), on SQLite and
PostgreSQL, and the downgrade step removes them again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from mesh_common.db import service_metadata
from mesh_common.tasks import task_tables, task_tables_downgrade_v1, task_tables_upgrade_v1
from sqlalchemy import Column, Integer, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        eng = create_async_engine(request.getfixturevalue("sqlite_url"))
        yield eng
        await eng.dispose()
        return
    schema = f"taskmig_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(request.getfixturevalue("pg_url"))
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng = create_async_engine(
        request.getfixturevalue("pg_url"),
        connect_args={"server_settings": {"search_path": schema}},
    )
    try:
        yield eng
    finally:
        await eng.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


def _operations(sync_conn: Any) -> Operations:
    return Operations(MigrationContext.configure(sync_conn))


def _tables(sync_conn: Any) -> set[str]:
    return set(inspect(sync_conn).get_table_names())


async def test_upgrade_matches_the_table_definitions(engine: AsyncEngine) -> None:
    metadata = service_metadata()
    task_tables(metadata)

    def upgrade(sync_conn: Any) -> list[Any]:
        task_tables_upgrade_v1(_operations(sync_conn))
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.begin() as conn:
        assert await conn.run_sync(upgrade) == []
        assert await conn.run_sync(_tables) == set(metadata.tables)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: task_tables_downgrade_v1(_operations(c)))
        assert await conn.run_sync(_tables) == set()


async def test_a_changed_definition_would_be_noticed(engine: AsyncEngine) -> None:
    metadata = service_metadata()
    task_tables(metadata).executions.append_column(Column("priority", Integer, nullable=True))

    def upgrade(sync_conn: Any) -> list[Any]:
        task_tables_upgrade_v1(_operations(sync_conn))
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.begin() as conn:
        diff = await conn.run_sync(upgrade)
    assert [d[0] for d in diff] == ["add_column"]
    assert diff[0][3].name == "priority"
