"""Outgoing mail for edumesh services: a durable queue, an SMTP sender, editable templates.

- :class:`OutgoingMail` / :class:`Attachment`: what a service sends (validated when built).
- ``mail_tables(metadata)`` and :func:`enqueue`: the mail is written in the caller's transaction
  (transactional outbox), so it exists exactly when the business change does.
- :class:`MailSender` (started by ``mail_hooks``): claims due mail (safe with replicas), builds
  MIME messages with the stdlib ``email`` package, sends with aiosmtplib, retries transient
  failures with exponential backoff up to ``MAIL_MAX_ATTEMPTS``, fails permanent refusals at
  once. ``mail_router()``: the staff outbox API (list, inspect, retry failed mail).
- ``template_tables(metadata)`` and :class:`TemplateStore`: named, versioned templates (mails and
  parts such as signatures and layouts) in a Jinja2 sandbox, validated with sample data before
  activation, with an audit trail; ``template_router(store)`` for staff and admins.
- ``OutgoingMail(sensitive=(token,))``: values stored and shown only as ``[redacted]``, the real
  content sealed with the service's SecretBox until sent (:mod:`mesh_common.mail.sealing`).
- :class:`MailSettings`: ``SMTP_*`` and ``MAIL_*`` environment variables, mixed into a service's
  settings. DDL for service migrations: :mod:`mesh_common.mail.migrations`.

See docs/mail.md.
"""

from __future__ import annotations

from mesh_common.mail.api import MailPage, mail_router
from mesh_common.mail.message import build_message, message_id_for
from mesh_common.mail.migrations import (
    create_mail_tables,
    mail_tables_downgrade_v1,
    mail_tables_downgrade_v2,
    mail_tables_upgrade_v1,
    mail_tables_upgrade_v2,
    template_tables_downgrade_v1,
    template_tables_upgrade_v1,
)
from mesh_common.mail.models import MAX_MAIL_BYTES, Attachment, OutgoingMail
from mesh_common.mail.queue import (
    AttachmentInfo,
    MailOutbox,
    MailRecord,
    MailSummary,
    QueueStats,
    enqueue,
)
from mesh_common.mail.rendering import RenderLimits, TemplateProblem
from mesh_common.mail.sealing import REDACTED, redact
from mesh_common.mail.sender import MailSender, SendError, classify
from mesh_common.mail.settings import MailSettings
from mesh_common.mail.tables import (
    FAILED,
    PENDING,
    SENDING,
    SENT,
    MailTables,
    TemplateTables,
    mail_tables,
    template_tables,
)
from mesh_common.mail.template_api import (
    PreviewExtras,
    PreviewHook,
    PreviewInput,
    template_router,
)
from mesh_common.mail.templates import (
    AuditEntry,
    Rendered,
    TemplateDefault,
    TemplateInfo,
    TemplateInvalid,
    TemplateSource,
    TemplateStore,
    TemplateVersion,
)
from mesh_common.mail.wiring import mail_hooks, outbox_of, template_hooks

__all__ = [
    "FAILED",
    "MAX_MAIL_BYTES",
    "PENDING",
    "REDACTED",
    "SENDING",
    "SENT",
    "Attachment",
    "AttachmentInfo",
    "AuditEntry",
    "MailOutbox",
    "MailPage",
    "MailRecord",
    "MailSender",
    "MailSettings",
    "MailSummary",
    "MailTables",
    "OutgoingMail",
    "PreviewExtras",
    "PreviewHook",
    "PreviewInput",
    "QueueStats",
    "RenderLimits",
    "Rendered",
    "SendError",
    "TemplateDefault",
    "TemplateInfo",
    "TemplateInvalid",
    "TemplateProblem",
    "TemplateSource",
    "TemplateStore",
    "TemplateTables",
    "TemplateVersion",
    "build_message",
    "classify",
    "create_mail_tables",
    "enqueue",
    "mail_hooks",
    "mail_router",
    "mail_tables",
    "mail_tables_downgrade_v1",
    "mail_tables_downgrade_v2",
    "mail_tables_upgrade_v1",
    "mail_tables_upgrade_v2",
    "message_id_for",
    "outbox_of",
    "redact",
    "template_hooks",
    "template_router",
    "template_tables",
    "template_tables_downgrade_v1",
    "template_tables_upgrade_v1",
]
