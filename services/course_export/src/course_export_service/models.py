"""Tables owned by the course-export service (its own schema / database file).

Nothing else writes here. ``mesh_outbox`` and ``mesh_inbox`` give the service the transactional
outbox and the inbox. ``exported_courses`` remembers what the web backend was last sent for each
course (content hash, revision, when), which is how unchanged courses are not re-sent and how
withdrawn ones are found. ``scheduled_exports`` holds the "publish at" requests (fired exactly
once across replicas by a conditional claim) and ``export_markers`` where change detection stands,
so a restart resumes there.
"""

from __future__ import annotations

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.tasks import task_tables
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = service_metadata()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
tasks = task_tables(metadata)

exported_courses = Table(
    "exported_courses",
    metadata,
    Column("course_id", Integer, primary_key=True),  # the coursedb id
    Column("number", String(20), nullable=False, index=True),  # Kursnummer, the backend's key
    Column("content_hash", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("exported_at", DateTime(timezone=True), nullable=False),
    # Set when a withdrawal was sent; cleared if the course is published again.
    Column("withdrawn_at", DateTime(timezone=True), nullable=True),
)

sql_templates = Table(
    "sql_templates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("sql", Text, nullable=False),
    Column("author", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("comment", String(500), nullable=True),
    # Exactly one active version per kind; older ones stay for history and rollback.
    Column("active", Boolean, nullable=False, default=False),
    UniqueConstraint("kind", "version"),
)

# "Publish at": an export requested for a later time. status: scheduled -> firing (claimed by one
# replica with a conditional UPDATE) -> fired (execution_id set) | failed; or cancelled.
scheduled_exports = Table(
    "scheduled_exports",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("mode", String(16), nullable=False),  # full / changes
    Column("run_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("requested_by", String(200), nullable=True),
    Column("note", String(500), nullable=True),
    Column("source", String(16), nullable=False),  # rest / amqp
    # The run_export command that asked for it: a redelivered command schedules nothing twice.
    Column("message_id", String(64), nullable=True, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(100), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("fired_at", DateTime(timezone=True), nullable=True),
    Column("execution_id", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
    Column("cancelled_by", String(200), nullable=True),
    Index("ix_scheduled_exports_due", "status", "run_at"),
)

# Where change detection stands (timestamp marker, change-log bookkeeping), one row per name.
export_markers = Table(
    "export_markers",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
