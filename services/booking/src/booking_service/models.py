"""Tables owned by the booking service (its own schema / database file).

Nothing else writes here. The course database (coursedb) holds the bookings themselves; this
database holds what booking needs around them:

- ``mesh_outbox`` / ``mesh_inbox``: the transactional outbox and the inbox (wired by the app
  factory).
- ``orders``: one row per web order booking has answered or accepted. ``id`` is the arrival
  order. ``status`` is ``pending`` (waiting in the backlog because the coursedb was unreachable),
  ``accepted`` / ``rejected`` (final; ``result`` is the JSON answer given) or ``failed`` (a pending
  order that could not be processed; staff can retry it). ``payload`` is the order itself,
  encrypted (it may carry an IBAN) and kept only while the order is not final or its mails are
  not queued yet. ``payload_hash`` is a keyed hash of the canonical order: same id + other hash =
  conflict. ``notify_at`` is set, in the statement that records an accepted order, while its
  mails wait to be prepared (``booking_service.mailing``).

- ``mesh_mail_*``: the mail queue (an order's mails are queued in the transaction that clears its
  ``notify_at``) and the versioned mail templates (``mesh_common.mail``).

Timestamps are UNIX epoch seconds (double), like the mesh tables, for portability.
"""

from __future__ import annotations

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.mail import mail_tables, template_tables
from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

metadata = service_metadata()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
mail = mail_tables(metadata)  # the mail queue: confirmations and protocols with their PDFs
templates = template_tables(metadata)  # the editable mail templates, versions, audit

orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("external_order_id", String(64), nullable=False, unique=True),
    Column("payload_hash", String(64), nullable=False),
    Column("payload", Text, nullable=True),  # encrypted order JSON while not final
    Column("status", String(16), nullable=False),
    Column("result", Text, nullable=True),  # OrderResult JSON once final
    Column("detail", String(500), nullable=True),
    Column("source", String(8), nullable=False),  # rpc / rest
    # Who placed it (the participant behind the token), for "my orders" checks.
    Column("owner_participant_id", Integer, nullable=True, index=True),
    Column("coursedb_order_id", Integer, nullable=True),
    Column("received_at", Float(precision=53), nullable=False),
    Column("processed_at", Float(precision=53), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float(precision=53), nullable=True),
    Column("last_error", String(500), nullable=True),
    # Mails of an accepted order still to prepare (documents, PDFs, templates) and queue: when
    # they are due (NULL: nothing to send; a claimed order's lease end) and the failed tries.
    Column("notify_at", Float(precision=53), nullable=True),
    Column("notify_attempts", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_orders_status_id", "status", "id"),
    Index("ix_orders_notify_at", "notify_at"),
)
