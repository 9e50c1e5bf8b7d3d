"""The DDL steps services call from their migrations create exactly the tables that
``mail_tables()``/``template_tables()`` define (alembic's autogenerate finds no difference),
on SQLite and PostgreSQL, and the downgrade steps remove them again. ``_v2`` (``sealed_content``)
also runs the way services run it on PostgreSQL: in the service's schema through the connection's
``schema_translate_map``, with the default search path."""

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
    mail_tables_downgrade_v2,
    mail_tables_upgrade_v1,
    mail_tables_upgrade_v2,
    template_tables,
    template_tables_downgrade_v1,
    template_tables_upgrade_v1,
)
from mesh_common.testing.databases import isolated_engine
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    async with isolated_engine(url, prefix="mailmig") as eng:
        yield eng


def _operations(sync_conn: Any) -> Operations:
    return Operations(MigrationContext.configure(sync_conn))


async def test_upgrade_matches_the_table_definitions(engine: AsyncEngine) -> None:
    metadata = service_metadata()
    mail_tables(metadata)
    template_tables(metadata)

    def upgrade(sync_conn: Any) -> list[Any]:
        op = _operations(sync_conn)
        mail_tables_upgrade_v1(op)
        mail_tables_upgrade_v2(op)
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
        mail_tables_downgrade_v2(op)
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
        mail_tables_upgrade_v2(_operations(sync_conn))
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.begin() as conn:
        diff = await conn.run_sync(upgrade)
    assert [d[0] for d in diff] == ["add_column"]
    assert diff[0][3].name == "priority"


async def test_without_v2_the_sealed_column_is_missing(engine: AsyncEngine) -> None:
    metadata = service_metadata()
    mail_tables(metadata)

    def upgrade(sync_conn: Any) -> list[Any]:
        mail_tables_upgrade_v1(_operations(sync_conn))
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with engine.begin() as conn:
        diff = await conn.run_sync(upgrade)
    assert [(d[0], d[3].name) for d in diff] == [("add_column", "sealed_content")]


async def test_downgrade_v2_fails_unsent_sealed_mail_and_keeps_the_rest(
    engine: AsyncEngine,
) -> None:
    """Without the column, a sealed mail would go out with ``[redacted]``: it is failed."""
    metadata = service_metadata()
    queue = mail_tables(metadata).queue

    def row(mail_id: str, status: str, sealed: str | None) -> dict[str, Any]:
        return {
            "id": mail_id, "status": status, "category": "c", "to_addresses": ["a@b.de"],
            "cc_addresses": [], "bcc_addresses": [], "reply_to": [], "subject": "s",
            "text_body": "t", "headers": {}, "attempts": 0, "next_attempt_at": 0.0,
            "created_at": 0.0, "updated_at": 0.0, "sealed_content": sealed,
        }  # fmt: skip

    def run(sync_conn: Any) -> dict[str, tuple[str, str | None]]:
        op = _operations(sync_conn)
        mail_tables_upgrade_v1(op)
        mail_tables_upgrade_v2(op)
        sync_conn.execute(
            queue.insert(),
            [row("m1", "pending", "v1.x.y"), row("m2", "pending", None), row("m3", "failed", "t")],
        )
        mail_tables_downgrade_v2(op)
        rows = sync_conn.execute(text("SELECT id, status, last_error FROM mesh_mail_queue"))
        return {r.id: (r.status, r.last_error) for r in rows}

    async with engine.begin() as conn:
        after = await conn.run_sync(run)
    assert after["m1"][0] == "failed" and "downgrade" in (after["m1"][1] or "")
    assert after["m2"] == ("pending", None)
    assert after["m3"] == ("failed", None)


async def test_v2_runs_in_the_service_schema_on_postgres(pg_url: str) -> None:
    """As ``mesh_common.db.migrations`` runs it: default search path, schema_translate_map."""
    schema = f"mailmig_{uuid.uuid4().hex[:10]}"
    eng = create_async_engine(pg_url)
    metadata = service_metadata()
    mail_tables(metadata)
    try:
        async with eng.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))

        def migrate(sync_conn: Any) -> list[str]:
            translated = sync_conn.execution_options(schema_translate_map={None: schema})
            op = _operations(translated)
            mail_tables_upgrade_v1(op)
            mail_tables_upgrade_v2(op)
            columns = [c["name"] for c in inspect(sync_conn).get_columns("mesh_mail_queue", schema)]
            mail_tables_downgrade_v2(op)
            mail_tables_downgrade_v1(op)
            return columns

        async with eng.begin() as conn:
            columns = await conn.run_sync(migrate)
        assert "sealed_content" in columns
    finally:
        async with eng.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await eng.dispose()
