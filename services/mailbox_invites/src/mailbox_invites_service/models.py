"""Tables owned by the mailbox-invites service (its own schema / database file).

Nothing else writes here.

- ``technical_users``: the groupware account that sends the invitations (SMTP) and reads the
  replies (IMAP); its passwords are one SecretBox token bound to the user's name.
- ``rooms``, ``room_groups``, ``room_group_rooms``: the room-booking system's rooms and groups,
  as far as mailbox-invites needs them (names, and which rooms a group shows).
- ``mailboxes``: a room linked to its room mailbox. Room and address are fixed once created;
  only the technical user, ``include_blocks`` and ``active`` change afterwards.
- ``room_events``: the booking system's events (bookings and room blocks) as last received.
- ``invitations``: one per (event, mailbox): the iCalendar UID, the SEQUENCE, what is to be sent
  (REQUEST or CANCEL) and the status the processor and the replies move it through.
- ``invitation_log``: every step of every invitation, and every mail the processor set aside.

``mesh_outbox`` / ``mesh_inbox`` give the transactional outbox and the inbox; the ``mesh_task*``
tables are the task framework's (the MailboxProcessor job).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.tasks import task_tables
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = service_metadata()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
tasks = task_tables(metadata)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An instant, always timezone-aware UTC in Python (SQLite keeps no zone: re-attached)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware one")
        value = value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


technical_users = Table(
    "technical_users",
    metadata,
    Column("id", Integer, primary_key=True),
    # A short handle; also binds the encrypted credentials to this row, so it never changes.
    Column("name", String(100), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("email", String(254), nullable=False),  # ORGANIZER and envelope sender
    Column("smtp_host", String(253), nullable=False),
    Column("smtp_port", Integer, nullable=False),
    Column("smtp_security", String(10), nullable=False),  # starttls | tls | none
    Column("smtp_username", String(254), nullable=True),  # None: no SMTP login
    Column("imap_host", String(253), nullable=False),
    Column("imap_port", Integer, nullable=False),
    Column("imap_security", String(10), nullable=False),  # tls | none
    Column("imap_username", String(254), nullable=False),
    Column("imap_folder", String(200), nullable=False),
    Column("processed_folder", String(200), nullable=False),
    Column("ignored_folder", String(200), nullable=False),
    Column("tls_verify", Boolean, nullable=False),
    Column("tls_ca_pem", Text, nullable=True),  # extra CA to trust (a groupware's own CA)
    Column("timeout_seconds", Float, nullable=False),
    # SecretBox token of {"smtp_password": ..., "imap_password": ...}; context names the user.
    Column("credentials", Text, nullable=False),
    Column("last_check", JSON, nullable=True),
    Column("last_check_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("updated_by", String(200), nullable=False),
)

rooms = Table(
    "rooms",
    metadata,
    Column("room_id", String(100), primary_key=True),  # the booking system's id
    Column("name", String(200), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

room_groups = Table(
    "room_groups",
    metadata,
    Column("group_id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

room_group_rooms = Table(
    "room_group_rooms",
    metadata,
    Column(
        "group_id",
        String(100),
        ForeignKey(room_groups.c.group_id, ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("room_id", String(100), ForeignKey(rooms.c.room_id), primary_key=True),
    Column("position", Integer, nullable=False),
)

mailboxes = Table(
    "mailboxes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("room_id", String(100), ForeignKey(rooms.c.room_id), nullable=False, unique=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("technical_user_id", Integer, ForeignKey(technical_users.c.id), nullable=False),
    Column("include_blocks", Boolean, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("updated_by", String(200), nullable=False),
)

room_events = Table(
    "room_events",
    metadata,
    Column("event_id", String(100), primary_key=True),
    Column("room_id", String(100), nullable=False, index=True),
    Column("kind", String(10), nullable=False),  # booking | block
    Column("title", String(500), nullable=False),
    Column("description", Text, nullable=True),
    Column("booked_by", String(200), nullable=True),
    Column("starts_at", UtcDateTime, nullable=False),
    Column("ends_at", UtcDateTime, nullable=False),
    Column("revision", Integer, nullable=True),
    Column("deleted_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
)

invitations = Table(
    "invitations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("event_id", String(100), ForeignKey(room_events.c.event_id), nullable=False),
    Column("mailbox_id", Integer, ForeignKey(mailboxes.c.id), nullable=False),
    Column("uid", String(255), nullable=False, unique=True),
    # The SEQUENCE of the current version (what is pending, or what was sent last).
    Column("sequence", Integer, nullable=False),
    Column("method", String(10), nullable=False),  # REQUEST | CANCEL: what is/was to be sent
    # pending | sent | accepted | declined | tentative | cancelled | error | skipped
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False),
    # Bumped whenever a new version is queued: a send that raced with a change sees it.
    Column("version", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    # The event as this version shows it (title, times, room, ...).
    Column("snapshot", JSON, nullable=False),
    # What the room mailbox last received: its SEQUENCE and content (significance is judged
    # against this, so two quick edits before a send raise SEQUENCE once).
    Column("sent_sequence", Integer, nullable=True),
    Column("sent_method", String(10), nullable=True),
    Column("sent_snapshot", JSON, nullable=True),
    Column("sent_at", UtcDateTime, nullable=True),
    Column("sent_message_id", String(255), nullable=True),
    Column("last_ics", Text, nullable=True),
    Column("reply_partstat", String(20), nullable=True),
    Column("reply_sequence", Integer, nullable=True),
    Column("reply_dtstamp", UtcDateTime, nullable=True),
    Column("replied_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("event_id", "mailbox_id"),
    Index("ix_invitations_mailbox_status", "mailbox_id", "status"),
    Index("ix_invitations_status", "status"),
)

invitation_log = Table(
    "invitation_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    # None for mail that matched no invitation (set aside into the ignored folder).
    Column("invitation_id", Integer, ForeignKey(invitations.c.id), nullable=True),
    Column("technical_user_id", Integer, nullable=True),
    Column("at", UtcDateTime, nullable=False),
    Column("level", String(10), nullable=False),  # info | warning | error
    Column("action", String(40), nullable=False),
    Column("sequence", Integer, nullable=True),
    Column("message", Text, nullable=False),
    Column("detail", JSON, nullable=True),
    Column("actor", String(200), nullable=True),
    Index("ix_invitation_log_invitation", "invitation_id", "id"),
    Index("ix_invitation_log_user", "technical_user_id", "id"),
)
