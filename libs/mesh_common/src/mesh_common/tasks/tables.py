"""The task framework's tables, defined in a service's own ``MetaData`` (SQLAlchemy Core).

``task_tables(metadata)`` adds four tables, schema None like ``mesh_common.bus.outbox`` (on
PostgreSQL the service schema comes from ``schema_translate_map``): the task definitions and
their schedule state, executions, the per-record item log, and the lease table that keeps
replicas from running one task at the same time. Timestamps are UNIX epoch seconds (portable
across SQLite and PostgreSQL). This module must not run queries or create engines.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

# Execution statuses. Only ``running`` is not final.
RUNNING = "running"
SUCCEEDED = "succeeded"
PARTIALLY_SUCCEEDED = "partially_succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATUSES = frozenset({SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED, CANCELLED})

_Epoch = Float(precision=53)


@dataclass(frozen=True)
class TaskTables:
    """The four tables of one service's task framework."""

    tasks: Table
    executions: Table
    items: Table
    leases: Table


def task_tables(metadata: MetaData, *, prefix: str = "mesh_") -> TaskTables:
    """Define the task tables in ``metadata``. ``prefix`` exists for tests that share a database."""
    tasks = Table(
        f"{prefix}tasks",
        metadata,
        Column("name", String(200), primary_key=True),
        Column("kind", String(100), nullable=False),
        # "interval" (value: seconds) or "cron" (value: expression); None = manual only
        Column("schedule_type", String(16), nullable=True),
        Column("schedule_value", String(200), nullable=True),
        Column("enabled", Boolean, nullable=False, default=True),
        Column("params", JSON, nullable=False, default=dict),
        Column("next_run_at", _Epoch, nullable=True),
        Column("last_run_at", _Epoch, nullable=True),
    )
    executions = Table(
        f"{prefix}task_executions",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("task", String(200), ForeignKey(tasks.c.name, ondelete="CASCADE"), nullable=False),
        Column("status", String(32), nullable=False),
        Column("trigger", String(16), nullable=False),  # manual | schedule | retry
        Column("dry_run", Boolean, nullable=False, default=False),
        Column("params", JSON, nullable=False, default=dict),
        # The due time a scheduled run was fired for: proves a schedule fires once per due time.
        Column("scheduled_for", _Epoch, nullable=True),
        Column("holder", String(100), nullable=False),
        Column("started_at", _Epoch, nullable=False),
        Column("finished_at", _Epoch, nullable=True),
        Column("counts", JSON, nullable=False, default=dict),
        Column("error", Text, nullable=True),
        Column("parent_id", String(64), nullable=True),
        Column("cancel_requested", Boolean, nullable=False, default=False),
    )
    Index(f"ix_{prefix}task_executions_task", executions.c.task, executions.c.started_at)
    Index(f"ix_{prefix}task_executions_status", executions.c.status)
    items = Table(
        f"{prefix}task_items",
        metadata,
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        Column(
            "execution_id",
            String(64),
            ForeignKey(executions.c.id, ondelete="CASCADE"),
            nullable=False,
        ),
        Column("record_key", String(500), nullable=False),
        Column("action", String(50), nullable=False),
        Column("outcome", String(16), nullable=False),  # ok | failed | skipped | unchanged
        Column("error", Text, nullable=True),
        Column("detail", JSON, nullable=True),
        Column("created_at", _Epoch, nullable=False),
    )
    Index(f"ix_{prefix}task_items_execution", items.c.execution_id, items.c.outcome)
    leases = Table(
        f"{prefix}task_leases",
        metadata,
        Column("task", String(200), primary_key=True),
        Column("holder", String(100), nullable=False),
        Column("expires_at", _Epoch, nullable=False),
    )
    return TaskTables(tasks=tasks, executions=executions, items=items, leases=leases)
