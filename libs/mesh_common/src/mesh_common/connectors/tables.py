"""The connector framework's tables, defined in a service's own ``MetaData`` (SQLAlchemy Core).

``connector_tables(metadata)`` adds five tables next to the task tables (schema None: on
PostgreSQL the service schema comes from ``schema_translate_map``):

- ``mesh_connections``: typed settings per external system; the secret fields are one AES-GCM
  token (``secrets``), the names of the set ones are kept in clear (``secret_fields``) so lists
  can show "set" / "not set" without decrypting anything;
- ``mesh_mappings``: every saved version of every mapping definition;
- ``mesh_sync_markers``: per record and target system: last sync, last success, status, remark
  and the content hash of what was last sent successfully;
- ``mesh_links``: one local record ↔ its keys in several external systems / tenants;
- ``mesh_task_notifications``: per task, whom to mail on success / failure / partial success.

Timestamps are UNIX epoch seconds like the task tables. The alembic DDL for these tables is
:mod:`mesh_common.connectors.migrations`; a test keeps the two identical. This module must not
run queries or create engines.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

_Epoch = Float(precision=53)
_Id = BigInteger().with_variant(Integer, "sqlite")


@dataclass(frozen=True)
class ConnectorTables:
    """The tables of one service's connector framework."""

    connections: Table
    mappings: Table
    markers: Table
    links: Table
    notifications: Table


def connector_tables(metadata: MetaData, *, prefix: str = "mesh_") -> ConnectorTables:
    """Define the connector tables in ``metadata`` (``prefix`` exists for tests only)."""
    connections = Table(
        f"{prefix}connections",
        metadata,
        Column("name", String(100), primary_key=True),
        Column("kind", String(50), nullable=False),
        Column("description", String(500), nullable=False, default=""),
        Column("settings", JSON, nullable=False, default=dict),  # the non-secret fields
        Column("secrets", Text, nullable=True),  # SecretBox token of the secret fields
        Column("secret_fields", JSON, nullable=False, default=list),  # names of the set ones
        Column("created_at", _Epoch, nullable=False),
        Column("updated_at", _Epoch, nullable=False),
        Column("updated_by", String(200), nullable=False),
        Column("last_test_at", _Epoch, nullable=True),
        Column("last_test_ok", Boolean, nullable=True),
        Column("last_test_message", Text, nullable=True),
        Column("last_test_latency_ms", Float, nullable=True),
    )
    mappings = Table(
        f"{prefix}mappings",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("name", String(100), nullable=False),
        Column("version", Integer, nullable=False),
        Column("definition", JSON, nullable=False),
        Column("fingerprint", String(32), nullable=False),
        Column("source_fields", JSON, nullable=True),  # what it was validated against
        Column("comment", String(500), nullable=True),
        Column("created_at", _Epoch, nullable=False),
        Column("created_by", String(200), nullable=False),
        UniqueConstraint("name", "version", name=f"uq_{prefix}mappings_name_version"),
    )
    markers = Table(
        f"{prefix}sync_markers",
        metadata,
        Column("system", String(50), primary_key=True),
        Column("tenant", String(100), primary_key=True),  # "" when the system has one tenant
        Column("entity", String(50), primary_key=True),
        Column("local_key", String(200), primary_key=True),
        Column("status", String(16), nullable=False),  # ok | failed | skipped
        Column("last_sync_at", _Epoch, nullable=False),
        Column("last_success_at", _Epoch, nullable=True),
        Column("remark", Text, nullable=True),
        # Hash of the content last sent *successfully*; a failure keeps the previous one, so
        # change detection still sees the record as changed on the next run.
        Column("content_hash", String(64), nullable=True),
        Column("execution_id", String(64), nullable=True),
    )
    Index(
        f"ix_{prefix}sync_markers_status",
        markers.c.system,
        markers.c.tenant,
        markers.c.entity,
        markers.c.status,
    )
    links = Table(
        f"{prefix}links",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("system", String(50), nullable=False),
        Column("tenant", String(100), nullable=False),
        Column("entity", String(50), nullable=False),
        Column("local_key", String(200), nullable=False),
        Column("external_key", String(200), nullable=False),
        Column("created_at", _Epoch, nullable=False),
        Column("updated_at", _Epoch, nullable=False),
        UniqueConstraint(
            "system", "tenant", "entity", "external_key", name=f"uq_{prefix}links_external"
        ),
        UniqueConstraint("system", "tenant", "entity", "local_key", name=f"uq_{prefix}links_local"),
    )
    Index(f"ix_{prefix}links_local", links.c.entity, links.c.local_key)
    notifications = Table(
        f"{prefix}task_notifications",
        metadata,
        Column("task", String(200), primary_key=True),
        Column("on_success", Boolean, nullable=False, default=False),
        Column("on_failure", Boolean, nullable=False, default=True),
        Column("on_partial", Boolean, nullable=False, default=True),
        Column("recipients", JSON, nullable=False, default=list),
        Column("updated_at", _Epoch, nullable=False),
        Column("updated_by", String(200), nullable=False),
    )
    return ConnectorTables(
        connections=connections,
        mappings=mappings,
        markers=markers,
        links=links,
        notifications=notifications,
    )
