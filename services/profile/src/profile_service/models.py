"""Tables owned by the profile service (its own schema / database file).

Nothing else writes here. The service keeps **no personal data** of its own: addresses, contact
data and bank accounts live only in the centre's course database (coursedb). What it keeps is
bookkeeping about access to that data:

- ``mesh_outbox`` / ``mesh_inbox``: the transactional outbox and the inbox (wired by the app
  factory when declared here).
- ``profile_audit``: who read or changed whose profile, when, through which channel and (for a
  service client) under which delegation (``delegation_jti``). It names fields and record ids,
  never their values: no address, e-mail, phone number or IBAN is ever written here.
"""

from __future__ import annotations

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.connectors import connector_tables
from mesh_common.db import service_metadata
from mesh_common.mail import mail_tables
from mesh_common.tasks import task_tables
from sqlalchemy import JSON, Column, DateTime, Index, Integer, String, Table

metadata = service_metadata()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
# Connector framework (profile_service.connectors): tasks, connections, mappings, sync markers,
# links, task notifications (sent through the mail outbox). Markers and links hold participant
# ids and Brevo ids, no personal data.
tasks = task_tables(metadata)
connectors = connector_tables(metadata)
mail = mail_tables(metadata)

profile_audit = Table(
    "profile_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("channel", String(8), nullable=False),  # http | rpc
    # e.g. profile.read, profile.update, bank_account.add, orders.read, staff.profile.read
    Column("action", String(48), nullable=False),
    Column("actor", String(200), nullable=False),  # subject of the caller's bearer token
    Column("via", String(16), nullable=False),  # participant | delegation | staff
    Column("participant_id", Integer, nullable=False),  # whose data (coursedb id)
    Column("delegation_jti", String(128), nullable=True),
    Column("request_id", String(128), nullable=True),
    # Field names and record ids only, never values.
    Column("detail", JSON, nullable=True),
    Index("ix_profile_audit_participant_at", "participant_id", "at"),
    Index("ix_profile_audit_actor_at", "actor", "at"),
)
