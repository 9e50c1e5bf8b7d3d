"""Alembic migrations per service, run programmatically inside the service's schema.

Each service keeps an alembic script directory (``<package>/migrations``) whose ``env.py`` only
calls :func:`run_env` with the service's MetaData. :func:`upgrade` runs them on startup or from
the CLI; the version table lives in the service's schema so services migrate independently.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from mesh_common.db.database import Database

# alembic keeps the running migration in module globals (alembic.context, alembic.op), so two
# services migrating at once in one process (the embedded default) would clobber each other.
_ALEMBIC_LOCK = asyncio.Lock()


def _config(script_location: Path, schema: str | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["schema"] = schema
    return cfg


async def upgrade(db: Database, script_location: Path, revision: str = "head") -> None:
    """Bring the service's schema to ``revision`` (idempotent; safe on every start)."""
    await db.ensure_schema()
    cfg = _config(script_location, db.schema)

    def _run(sync_conn: Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with _ALEMBIC_LOCK, db.engine.begin() as conn:
        if db.is_postgres:
            # Serialise concurrent replicas migrating the same schema.
            from sqlalchemy import text

            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"migrate:{db.schema}"}
            )
        await conn.run_sync(_run)


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's alembic ``env.py`` (online mode, connection given by upgrade())."""
    cfg = context.config
    connection: Connection | None = cfg.attributes.get("connection")
    schema: str | None = cfg.attributes.get("schema")
    if connection is None:
        raise RuntimeError(
            "edumesh migrations run through mesh_common.db.upgrade(); "
            "use `python -m <service>_service migrate` rather than the alembic CLI"
        )
    opts: dict[str, Any] = {
        "connection": connection,
        "target_metadata": target_metadata,
        "render_as_batch": connection.dialect.name == "sqlite",
        "compare_type": True,
    }
    if schema:
        connection = connection.execution_options(schema_translate_map={None: schema})
        opts.update(connection=connection, version_table_schema=schema)
    context.configure(**opts)
    with context.begin_transaction():
        context.run_migrations()


async def make_revision(db: Database, script_location: Path, message: str) -> None:
    """Autogenerate a new revision against ``db`` (brought to head first). Developer tool."""
    await upgrade(db, script_location)
    cfg = _config(script_location, db.schema)

    def _run(sync_conn: Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        command.revision(cfg, message=message, autogenerate=True)

    async with _ALEMBIC_LOCK, db.engine.begin() as conn:
        await conn.run_sync(_run)
