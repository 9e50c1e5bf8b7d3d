"""The alembic step for the connector tables creates exactly what ``connector_tables`` defines
(compared by alembic's autogenerate), on SQLite and PostgreSQL, and downgrades cleanly."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from mesh_common.connectors import connector_tables
from mesh_common.connectors.migrations import downgrade_v1, upgrade_v1
from mesh_common.db import Database, service_metadata
from sqlalchemy import inspect, text


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest) -> Any:
    if request.param == "sqlite":
        database = Database(request.getfixturevalue("sqlite_url"))
        yield database
        await database.dispose()
        return
    url = request.getfixturevalue("pg_url")
    schema = f"mig_{uuid.uuid4().hex[:10]}"
    database = Database(url, schema=schema)
    await database.ensure_schema()
    yield database
    await database.dispose()
    cleanup = Database(url)
    async with cleanup.engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await cleanup.dispose()


async def test_upgrade_matches_the_table_definitions(db: Database) -> None:
    metadata = service_metadata()
    connector_tables(metadata)

    def run(sync_conn: Any) -> tuple[list[Any], set[str], set[str]]:
        ctx = MigrationContext.configure(
            sync_conn,
            opts={"target_metadata": metadata, "compare_type": True},
        )
        with Operations.context(ctx):
            upgrade_v1()
        diffs = compare_metadata(ctx, metadata)
        names = set(inspect(sync_conn).get_table_names())
        with Operations.context(ctx):
            downgrade_v1()
        after = set(inspect(sync_conn).get_table_names())
        return diffs, names, after

    async with db.engine.begin() as conn:
        if db.schema:  # let alembic's inspector look into the service schema
            await conn.execute(text(f'SET LOCAL search_path TO "{db.schema}"'))
        diffs, names, after = await conn.run_sync(run)
    assert diffs == []
    assert names == {
        "mesh_connections",
        "mesh_mappings",
        "mesh_sync_markers",
        "mesh_links",
        "mesh_task_notifications",
    }
    assert after == set()
