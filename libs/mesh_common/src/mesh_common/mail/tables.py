"""The mail package's tables, defined in a service's own ``MetaData`` (SQLAlchemy Core).

``mail_tables(metadata)`` adds the outgoing-mail queue and its attachments;
``template_tables(metadata)`` adds the editable templates, their versions and the audit trail.
Schema None like the other mesh tables (on PostgreSQL the service schema comes from
``schema_translate_map``); timestamps are UNIX epoch seconds. The DDL that services run from
their migrations is in :mod:`mesh_common.mail.migrations` and must stay identical to this (a test
compares them). This module must not run queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

# Queue statuses. ``sent`` and ``failed`` are final (``failed`` until staff retry it).
PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
STATUSES = (PENDING, SENDING, SENT, FAILED)

_Epoch = Float(precision=53)
_Id = BigInteger().with_variant(Integer, "sqlite")


@dataclass(frozen=True)
class MailTables:
    """The queue tables of one service, plus the in-process wake-up of its senders."""

    queue: Table
    attachments: Table
    _listeners: list[Callable[[], None]] = field(default_factory=list, compare=False, repr=False)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a transaction that queued mail commits (senders use it)."""
        self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def notify(self) -> None:
        for callback in list(self._listeners):
            callback()


def mail_tables(metadata: MetaData) -> MailTables:
    """Define ``mesh_mail_queue`` and ``mesh_mail_attachments`` in ``metadata``."""
    queue = Table(
        "mesh_mail_queue",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("category", String(100), nullable=False),
        Column("ref", String(200), nullable=True),
        Column("from_address", Text, nullable=True),  # None: MAIL_FROM at send time
        Column("to_addresses", JSON, nullable=False),
        Column("cc_addresses", JSON, nullable=False),
        Column("bcc_addresses", JSON, nullable=False),
        Column("reply_to", JSON, nullable=False),
        Column("subject", Text, nullable=False),
        Column("text_body", Text, nullable=False),
        Column("html_body", Text, nullable=True),
        Column("headers", JSON, nullable=False),
        # Set on the first attempt and kept, so a resend after a lost reply has the same id.
        Column("message_id", String(255), nullable=True),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_at", _Epoch, nullable=False),
        # A replica that claimed the row holds it until then; afterwards another may retry it.
        Column("locked_until", _Epoch, nullable=True),
        Column("claimed_by", String(100), nullable=True),
        Column("last_error", Text, nullable=True),
        Column("created_at", _Epoch, nullable=False),
        Column("updated_at", _Epoch, nullable=False),
        Column("sent_at", _Epoch, nullable=True),
        # A mail naming sensitive values: its real subject, bodies and headers as a SecretBox
        # token bound to the id (the columns above hold them redacted); erased once sent.
        Column("sealed_content", Text, nullable=True),
    )
    Index("ix_mesh_mail_queue_due", queue.c.status, queue.c.next_attempt_at)
    Index("ix_mesh_mail_queue_ref", queue.c.category, queue.c.ref)
    Index("ix_mesh_mail_queue_created", queue.c.created_at)
    attachments = Table(
        "mesh_mail_attachments",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("mail_id", String(36), ForeignKey(queue.c.id, ondelete="CASCADE"), nullable=False),
        Column("position", Integer, nullable=False),
        Column("filename", String(255), nullable=False),
        Column("content_type", String(255), nullable=False),
        Column("size", Integer, nullable=False),
        Column("data", LargeBinary, nullable=False),
    )
    Index("ix_mesh_mail_attachments_mail", attachments.c.mail_id, attachments.c.position)
    return MailTables(queue=queue, attachments=attachments)


@dataclass(frozen=True)
class TemplateTables:
    """The template tables of one service."""

    templates: Table
    versions: Table
    audit: Table


def template_tables(metadata: MetaData) -> TemplateTables:
    """Define ``mesh_mail_templates``, ``mesh_mail_template_versions`` and
    ``mesh_mail_template_audit`` in ``metadata``."""
    templates = Table(
        "mesh_mail_templates",
        metadata,
        Column("name", String(100), primary_key=True),
        Column("kind", String(16), nullable=False),  # mail | part
        Column("description", Text, nullable=True),
        Column("active_version", Integer, nullable=True),
        Column("created_at", _Epoch, nullable=False),
        Column("updated_at", _Epoch, nullable=False),
    )
    versions = Table(
        "mesh_mail_template_versions",
        metadata,
        Column(
            "name",
            String(100),
            ForeignKey(templates.c.name, ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("subject", Text, nullable=True),  # None for parts
        Column("text_body", Text, nullable=False),
        Column("html_body", Text, nullable=True),
        Column("layout", String(100), nullable=True),
        Column("comment", Text, nullable=True),
        Column("author", String(200), nullable=False),
        Column("created_at", _Epoch, nullable=False),
    )
    audit = Table(
        "mesh_mail_template_audit",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("name", String(100), nullable=False),
        Column("version", Integer, nullable=True),
        Column("action", String(16), nullable=False),  # seeded | created | activated
        Column("actor", String(200), nullable=False),
        Column("at", _Epoch, nullable=False),
        Column("detail", JSON, nullable=True),
    )
    Index("ix_mesh_mail_template_audit_name", audit.c.name, audit.c.at)
    return TemplateTables(templates=templates, versions=versions, audit=audit)
