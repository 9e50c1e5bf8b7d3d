"""Migration steps for the mail tables, called from each service's own alembic revisions.

The tables are defined once in :mod:`mesh_common.mail.tables`; a service that sends mail adds a
revision that calls these steps with its ``op``::

    from mesh_common.mail.migrations import mail_tables_upgrade_v1, mail_tables_downgrade_v1

    def upgrade() -> None:
        mail_tables_upgrade_v1(op)

    def downgrade() -> None:
        mail_tables_downgrade_v1(op)

(likewise ``template_tables_upgrade_v1`` / ``template_tables_downgrade_v1`` for templates).
``mail_tables_upgrade_v2`` / ``mail_tables_downgrade_v2`` add and drop ``sealed_content`` (the
sealed real content of mail naming sensitive values), in a later revision after ``_v1``.
A step is frozen once released: a later change to the tables gets a new ``..._v2`` used by a new
revision in each service, never an edit of an old one. A test checks that the tables these steps
create are exactly the ones ``mail_tables()`` / ``template_tables()`` define.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations

from mesh_common.db import Database
from mesh_common.mail.tables import MailTables, TemplateTables

_Epoch = sa.Float(precision=53)
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def mail_tables_upgrade_v1(op: Operations) -> None:
    """Create ``mesh_mail_queue`` and ``mesh_mail_attachments`` with their indexes."""
    op.create_table(
        "mesh_mail_queue",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=True),
        sa.Column("from_address", sa.Text(), nullable=True),
        sa.Column("to_addresses", sa.JSON(), nullable=False),
        sa.Column("cc_addresses", sa.JSON(), nullable=False),
        sa.Column("bcc_addresses", sa.JSON(), nullable=False),
        sa.Column("reply_to", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _Epoch, nullable=False),
        sa.Column("locked_until", _Epoch, nullable=True),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _Epoch, nullable=False),
        sa.Column("updated_at", _Epoch, nullable=False),
        sa.Column("sent_at", _Epoch, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_mail_queue")),
    )
    op.create_index("ix_mesh_mail_queue_due", "mesh_mail_queue", ["status", "next_attempt_at"])
    op.create_index("ix_mesh_mail_queue_ref", "mesh_mail_queue", ["category", "ref"])
    op.create_index("ix_mesh_mail_queue_created", "mesh_mail_queue", ["created_at"])
    op.create_table(
        "mesh_mail_attachments",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("mail_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mail_id"],
            ["mesh_mail_queue.id"],
            name=op.f("fk_mesh_mail_attachments_mail_id_mesh_mail_queue"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_mail_attachments")),
    )
    op.create_index(
        "ix_mesh_mail_attachments_mail", "mesh_mail_attachments", ["mail_id", "position"]
    )


def mail_tables_downgrade_v1(op: Operations) -> None:
    op.drop_index("ix_mesh_mail_attachments_mail", table_name="mesh_mail_attachments")
    op.drop_table("mesh_mail_attachments")
    op.drop_index("ix_mesh_mail_queue_created", table_name="mesh_mail_queue")
    op.drop_index("ix_mesh_mail_queue_ref", table_name="mesh_mail_queue")
    op.drop_index("ix_mesh_mail_queue_due", table_name="mesh_mail_queue")
    op.drop_table("mesh_mail_queue")


def _schema(op: Operations) -> str | None:
    """The service's schema: ALTER TABLE is rendered by alembic itself, outside the connection's
    ``schema_translate_map`` (which ``mesh_common.db.migrations`` sets on PostgreSQL)."""
    translate = op.get_bind().get_execution_options().get("schema_translate_map") or {}
    schema: str | None = translate.get(None)
    return schema


def mail_tables_upgrade_v2(op: Operations) -> None:
    """Add ``mesh_mail_queue.sealed_content`` (nullable: existing mail has nothing sealed)."""
    op.add_column(
        "mesh_mail_queue",
        sa.Column("sealed_content", sa.Text(), nullable=True),
        schema=_schema(op),
    )


def mail_tables_downgrade_v2(op: Operations) -> None:
    """Drop ``sealed_content``. Unsent mail that still has sealed content would go out with
    ``[redacted]`` in place of its sensitive values: it is failed instead, with the reason."""
    schema = _schema(op)
    queue = sa.table(
        "mesh_mail_queue",
        sa.column("status", sa.String()),
        sa.column("last_error", sa.Text()),
        sa.column("locked_until", _Epoch),
        sa.column("claimed_by", sa.String()),
        sa.column("sealed_content", sa.Text()),
        schema=schema,
    )
    op.execute(
        queue.update()
        .where(queue.c.sealed_content.is_not(None), queue.c.status.in_(("pending", "sending")))
        .values(
            status="failed",
            locked_until=None,
            claimed_by=None,
            last_error="its sealed content was dropped by a schema downgrade; queue it again",
        )
    )
    # A plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a batch copy of the table: with
    # SQLite's foreign keys on, dropping the old table would cascade to the attachments.
    op.drop_column("mesh_mail_queue", "sealed_content", schema=schema)


def template_tables_upgrade_v1(op: Operations) -> None:
    """Create ``mesh_mail_templates``, ``mesh_mail_template_versions`` and
    ``mesh_mail_template_audit``."""
    op.create_table(
        "mesh_mail_templates",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("created_at", _Epoch, nullable=False),
        sa.Column("updated_at", _Epoch, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mesh_mail_templates")),
    )
    op.create_table(
        "mesh_mail_template_versions",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("layout", sa.String(length=100), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("created_at", _Epoch, nullable=False),
        sa.ForeignKeyConstraint(
            ["name"],
            ["mesh_mail_templates.name"],
            name=op.f("fk_mesh_mail_template_versions_name_mesh_mail_templates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_mesh_mail_template_versions")),
    )
    op.create_table(
        "mesh_mail_template_audit",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", _Epoch, nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_mail_template_audit")),
    )
    op.create_index("ix_mesh_mail_template_audit_name", "mesh_mail_template_audit", ["name", "at"])


def template_tables_downgrade_v1(op: Operations) -> None:
    op.drop_index("ix_mesh_mail_template_audit_name", table_name="mesh_mail_template_audit")
    op.drop_table("mesh_mail_template_audit")
    op.drop_table("mesh_mail_template_versions")
    op.drop_table("mesh_mail_templates")


async def create_mail_tables(db: Database, *table_sets: MailTables | TemplateTables) -> None:
    """Create the given tables directly (tests, and services without migrations)."""
    await db.ensure_schema()
    tables: list[sa.Table] = []
    for t in table_sets:
        if isinstance(t, MailTables):
            tables += [t.queue, t.attachments]
        else:
            tables += [t.templates, t.versions, t.audit]

    def _create(sync_conn: Any) -> None:
        for table in tables:
            table.create(sync_conn, checkfirst=True)

    async with db.engine.begin() as conn:
        await conn.run_sync(_create)
