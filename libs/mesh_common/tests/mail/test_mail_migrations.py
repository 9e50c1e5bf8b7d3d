"""The DDL steps services call from their migrations create exactly the tables that
``mail_tables()``/``template_tables()`` define (alembic's autogenerate finds no difference),
on SQLite and PostgreSQL, and the downgrade steps remove them again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from mesh_common.db import service_metadata
from mesh_common.mail import (
    mail_tables,
    mail_tables_downgrade_v1,
    mail_tables_upgrade_v1,
    template_tables,
    template_tables_downgrade_v1,
    template_tables_upgrade_v1,
)
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        eng = create_async_engine(request.getfixturevalue("sqlite_url"))
        yield eng
        await eng.dispose()
        return
    schema = f"mailmig_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(request.getfixturevalue("pg_url"))
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # A search path with only the fresh schema: DDL and reflection both land there.
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


async def test_upgrade_matches_the_table_definitions(engine: AsyncEngine) -> None:
    metadata = service_metadata()
    mail_tables(metadata)
    template_tables(metadata)

    def upgrade(sync_conn: Any) -> list[Any]:
        op = _operations(sync_conn)
        mail_tables_upgrade_v1(op)
        template_tables_upgrade_v1(op)
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.begin() as conn:
        diff = await conn.run_sync(upgrade)
    assert diff == []

    def tables(sync_conn: Any) -> set[str]:
        return set(inspect(sync_conn).get_table_names())

    async with engine.begin() as conn:
        assert await conn.run_sync(tables) == set(metadata.tables)

    def downgrade(sync_conn: Any) -> None:
        op = _operations(sync_conn)
        template_tables_downgrade_v1(op)
        mail_tables_downgrade_v1(op)

    async with engine.begin() as conn:
        await conn.run_sync(downgrade)
        assert await conn.run_sync(tables) == set()


async def test_a_changed_definition_would_be_noticed(engine: AsyncEngine) -> None:
    """The comparison above can fail: a column the steps do not create shows up as a diff."""
    from sqlalchemy import Column, Integer

    metadata = service_metadata()
    mail_tables(metadata).queue.append_column(Column("priority", Integer, nullable=True))

    def upgrade(sync_conn: Any) -> list[Any]:
        mail_tables_upgrade_v1(_operations(sync_conn))
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.begin() as conn:
        diff = await conn.run_sync(upgrade)
    assert [d[0] for d in diff] == ["add_column"]
    assert diff[0][3].name == "priority"
