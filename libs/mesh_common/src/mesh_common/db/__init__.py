"""Async database access: engine per service, schema isolation, unit of work, migrations.

A service owns its tables. On PostgreSQL they live in the service's own schema, selected with
SQLAlchemy's ``schema_translate_map`` so models and migrations are written without a schema; on
SQLite each service has its own database file (see docs/adr/0002). This module must not define
any service's tables.
"""

from __future__ import annotations

from mesh_common.db.database import Database, service_metadata
from mesh_common.db.migrations import upgrade

__all__ = ["Database", "service_metadata", "upgrade"]
