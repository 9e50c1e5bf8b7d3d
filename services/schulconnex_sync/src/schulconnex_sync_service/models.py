"""Tables owned by the schulconnex-sync service (its own schema / database file).

Nothing else writes here.

* ``mesh_outbox`` / ``mesh_inbox``: transactional outbox and inbox of the bus.
* the task framework's tables (``mesh_tasks``, executions, items, leases): every sync run is an
  execution with a per-record item log.
* the connector framework's tables: ``mesh_connections`` (credentials, encrypted),
  ``mesh_links`` (local key ↔ Schulconnex id, per connection = tenant), ``mesh_sync_markers``
  (per local record: last sync, last success, status, remark), mappings, notifications.
* ``sc_confirmations``: decisions the seed leaves to a person (case 3 "is this the same
  person?", cases 4/5 and group cases 2/3 "import?", conflicting concurrent changes). One row per
  subject; a run creates or refreshes it, a person accepts or rejects it, a later run applies it.
* ``sc_runs``: the feedback of each run (seed step 11): counts per entity, case and outcome.
* ``mesh_mail_queue`` / ``mesh_mail_attachments``: the mail outbox of the feedback mails.
* ``sc_group_transitions``: the school-year change (``ablauf-schuljahrwechsel.md``): which
  course's Schulconnex group was continued by which course of the new period, and which ended
  (deleted at once, or its deletion due at ``delete_at``).
"""

from __future__ import annotations

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.connectors import connector_tables
from mesh_common.db import service_metadata
from mesh_common.mail import mail_tables
from mesh_common.tasks import task_tables
from sqlalchemy import JSON, Boolean, Column, Float, Index, SmallInteger, String, Table, Text

metadata = service_metadata()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
tasks = task_tables(metadata)
connectors = connector_tables(metadata)
mail = mail_tables(metadata)

_Epoch = Float(precision=53)

confirmations = Table(
    "sc_confirmations",
    metadata,
    Column("id", String(64), primary_key=True),
    # person-match (case 3) | person-import (4, 5) | group-import (2, 3) |
    # membership-import (2, 3) | conflict (a 409 whose re-diff found a third party's change)
    Column("kind", String(32), nullable=False),
    Column("entity", String(32), nullable=False),  # person | gruppe | gruppenzugehoerigkeit
    Column("case_no", SmallInteger, nullable=False),  # the case of the seed's tables
    Column("tenant", String(100), nullable=False),  # the connection ("env" without one)
    # What the decision is about, unique per tenant: "<kind>:<remote id>" or, for local
    # subjects, "<kind>:<local key>".
    Column("subject", String(300), nullable=False),
    Column("remote_id", String(200), nullable=True),
    Column("local_key", String(200), nullable=True),
    # pending → accepted | rejected (by a person) → applied (by a run) ; obsolete when a run
    # finds the question no longer arises.
    Column("status", String(16), nullable=False),
    Column("candidates", JSON, nullable=False),  # [{local_key, label, attributes}]
    Column("remote", JSON, nullable=False),  # what Schulconnex holds, for the decision
    Column("reason", Text, nullable=False),
    Column("choice", String(200), nullable=True),  # the accepted candidate (person-match)
    Column("remote_revision", String(64), nullable=True),
    Column("local_hash", String(64), nullable=True),  # conflict: local content at decision
    Column("created_at", _Epoch, nullable=False),
    Column("updated_at", _Epoch, nullable=False),
    Column("decided_at", _Epoch, nullable=True),
    Column("decided_by", String(200), nullable=True),
    Column("execution_id", String(64), nullable=True),  # the run that last saw it
    Column("applied_execution_id", String(64), nullable=True),
    Column("error", Text, nullable=True),  # why applying it failed, if it did
)
Index("uq_sc_confirmations_subject", confirmations.c.tenant, confirmations.c.subject, unique=True)
Index("ix_sc_confirmations_status", confirmations.c.status, confirmations.c.kind)

runs = Table(
    "sc_runs",
    metadata,
    Column("execution_id", String(64), primary_key=True),
    Column("tenant", String(100), nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("started_at", _Epoch, nullable=False),
    Column("finished_at", _Epoch, nullable=True),
    Column("status", String(32), nullable=False),  # running | finished | failed | cancelled
    Column("selection", JSON, nullable=False),
    Column("summary", JSON, nullable=False),
    Column("message", Text, nullable=True),
)

transitions = Table(
    "sc_group_transitions",
    metadata,
    Column("tenant", String(100), primary_key=True),
    Column("local_key", String(200), primary_key=True),  # the old period's course
    Column("kind", String(16), nullable=False),  # continued | ended
    # continued: the group now belongs to ``successor``; ended: scheduled (deletion due at
    # ``delete_at``) → deleted | kept (not ours any more when it was due)
    Column("status", String(16), nullable=False),
    Column("remote_id", String(200), nullable=False),  # the Schulconnex group
    Column("successor", String(200), nullable=True),  # continued: the new period's course
    Column("from_semester", String(8), nullable=False),
    Column("to_semester", String(8), nullable=False),
    Column("delete_at", _Epoch, nullable=True),
    Column("note", Text, nullable=True),
    Column("execution_id", String(64), nullable=False),
    Column("created_at", _Epoch, nullable=False),
    Column("updated_at", _Epoch, nullable=False),
)
Index("ix_sc_group_transitions_due", transitions.c.status, transitions.c.delete_at)
