"""The DDL steps services call from their migrations create exactly the tables that
``task_tables()`` defines (alembic's autogenerate finds no difference), on SQLite and
PostgreSQL, and the downgrade step removes them again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from mesh_common.db import service_metadata
from mesh_common.tasks import task_tables, task_tables_downgrade_v1, task_tables_upgrade_v1
from mesh_common.testing.databases import isolated_engine
from sqlalchemy import Column, Integer, inspect
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    async with isolated_engine(url, prefix="taskmig") as eng:
        yield eng


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
