"""Tables owned by the course-export service (its own schema / database file).

Nothing else writes here. ``mesh_outbox`` and ``mesh_inbox`` give the service the transactional
outbox and the inbox. ``exported_courses`` remembers what the web backend was last sent for each
course (content hash, revision, when), which is how unchanged courses are not re-sent and how
withdrawn ones are found.
"""

from __future__ import annotations

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.tasks import task_tables
from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table, Text, UniqueConstraint

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
