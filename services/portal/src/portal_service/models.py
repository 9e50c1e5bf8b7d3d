"""Tables owned by the portal service (its own schema / database file). Nothing else writes here.

Times are UNIX epoch seconds (double), like the mesh tables, so SQLite and PostgreSQL agree.

- ``clients`` (Kunden) with their portal settings, ``contacts`` (PTcontact) per client.
- ``jobs`` (Vorgänge) from the job system and their ``job_tickets``; ``upload_requests`` are the
  reminder mails due per job or ticket (one row each, so a repeated RegisterJob sends nothing
  twice).
- ``accounts`` (uplogin): one portal access per client; ``activation_checked`` /
  ``activation_updated`` record the activation ("checked", "updated").
- ``activation_tokens``: only the SHA-256 of each token; single use, 30 minutes.
- ``sessions``: only the SHA-256 of each session cookie.
- ``throttle_events``: failed logins and link requests per user name / client address, the
  persistent basis of rate limiting (shared by all replicas, survives restarts).
- ``files``: the files in each job folder (incoming / in_progress / final); the bytes are in the
  storage directory.
- ``audit``: who did what (logins, activations, uploads, rejections, downloads, staff changes).

``mesh_outbox``/``mesh_inbox`` (bus), the mail queue and templates (``mesh_mail_*``) and the
task tables (``mesh_task*``) come from the shared libraries.
"""

from __future__ import annotations

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.mail import mail_tables, template_tables
from mesh_common.tasks import task_tables
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

Epoch = Float(precision=53)
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = service_metadata()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
mail = mail_tables(metadata)
templates = template_tables(metadata)
tasks = task_tables(metadata)

clients = Table(
    "clients",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("client_no", String(50), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=True),
    Column("create_hotfolder", Boolean, nullable=False),
    Column("hotfolder_delete_days", Integer, nullable=False),  # 0: never
    Column("portal_create_uplogin_automatically", SmallInteger, nullable=False),
    Column("portal_send_uplogin_email_automatically", SmallInteger, nullable=False),
    Column("portal_reminder_email_automatically", SmallInteger, nullable=False),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "client_id", Id, ForeignKey("clients.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("contact_no", String(50), nullable=False),
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=False),
    Column("favourite", Boolean, nullable=False),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
    UniqueConstraint("client_id", "contact_no"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),  # uuid4: appears in the customers' URLs
    Column("project_no", String(50), nullable=False, unique=True),
    Column("client_id", Id, ForeignKey("clients.id"), nullable=False, index=True),
    Column("description", Text, nullable=False),
    Column("due_date", Date, nullable=True),
    # The contact explicitly chosen for this job (beats the favourite and the client address).
    Column("contact_id", Id, ForeignKey("contacts.id", ondelete="SET NULL"), nullable=True),
    Column("source", String(16), nullable=False),  # rest / amqp
    Column("folders_created_at", Epoch, nullable=True),
    Column("hotfolder_created_at", Epoch, nullable=True),
    Column("last_pulled_at", Epoch, nullable=True),
    Column("hotfolder_deleted_at", Epoch, nullable=True),
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

job_tickets = Table(
    "job_tickets",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("ticket_no", String(50), nullable=False),
    Column("description", Text, nullable=False),
    Column("due_date", Date, nullable=True),
    Column("created_at", Epoch, nullable=False),
    UniqueConstraint("job_id", "ticket_no"),
)

# Upload requests ("reminder" mails) due per job (ticket_no "") or per ticket.
# status: pending -> sent | skipped | failed
upload_requests = Table(
    "upload_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("ticket_no", String(50), nullable=False),
    Column("due_at", Epoch, nullable=False),
    Column("status", String(16), nullable=False),
    Column("mail_id", String(36), nullable=True),
    Column("recipient", String(320), nullable=True),
    Column("note", Text, nullable=True),
    Column("created_at", Epoch, nullable=False),
    Column("done_at", Epoch, nullable=True),
    UniqueConstraint("job_id", "ticket_no"),
    Index("ix_upload_requests_due", "status", "due_at"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("client_id", Id, ForeignKey("clients.id"), nullable=False, unique=True),
    Column("username", String(100), nullable=False, unique=True),  # lower case
    Column("email", String(320), nullable=False),  # where activation links go
    Column("status", String(16), nullable=False),  # active / inactive
    Column("password_hash", String(255), nullable=True),
    Column("activation_checked", Boolean, nullable=False),
    Column("activation_updated", Epoch, nullable=True),
    Column("last_login_at", Epoch, nullable=True),
    Column("password_changed_at", Epoch, nullable=True),
    Column("created_by", String(200), nullable=False),  # "auto" or the staff member
    Column("created_at", Epoch, nullable=False),
    Column("updated_at", Epoch, nullable=False),
)

activation_tokens = Table(
    "activation_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "account_id",
        String(36),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex of the token
    Column("kind", String(16), nullable=False),  # first / renewal
    Column("created_at", Epoch, nullable=False),
    Column("expires_at", Epoch, nullable=False),
    Column("used_at", Epoch, nullable=True),
    Column("revoked_at", Epoch, nullable=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),  # sha256 hex of the cookie value
    Column(
        "account_id",
        String(36),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("created_at", Epoch, nullable=False),
    Column("last_seen_at", Epoch, nullable=False),
    Column("expires_at", Epoch, nullable=False),
    Column("ip", String(64), nullable=True),
)

throttle_events = Table(
    "throttle_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("scope", String(16), nullable=False),  # login-user / login-ip / link-user / link-ip
    Column("key", String(255), nullable=False),
    Column("at", Epoch, nullable=False),
    Index("ix_throttle_events_key", "scope", "key", "at"),
)

files = Table(
    "files",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("folder", String(16), nullable=False),  # incoming / in_progress / final
    Column("name", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("scanner", String(100), nullable=True),  # e.g. "clamd: stream OK"
    Column("uploaded_by", String(200), nullable=False),
    Column("uploaded_at", Epoch, nullable=False),
    Column("pulled_at", Epoch, nullable=True),
    UniqueConstraint("job_id", "folder", "name"),
    Index("ix_files_job_folder", "job_id", "folder"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", Epoch, nullable=False, index=True),
    Column("actor", String(200), nullable=False),
    Column("action", String(50), nullable=False),
    Column("account_id", String(36), nullable=True),
    Column("job_id", String(36), nullable=True),
    Column("ip", String(64), nullable=True),
    Column("detail", JSON, nullable=True),
)
