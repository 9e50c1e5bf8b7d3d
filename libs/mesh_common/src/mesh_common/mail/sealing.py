"""Sensitive values in queued mail: redacted where they are stored or shown, sealed for sending.

A mail may name values that must never be readable in the queue (``OutgoingMail.sensitive``: a
one-time activation token, a password-reset link). :func:`seal` turns such a mail into what the
queue stores:

- ``subject``, ``text``, ``html`` and the header values with every sensitive value (also in its
  HTML-escaped and URL-encoded forms) replaced by :data:`REDACTED`: this is what the database
  holds in the clear and what staff see in the outbox API;
- the real subject, bodies and headers as one :class:`~mesh_common.secrets.SecretBox` token
  (AES-256-GCM, ``MESH_SECRET_KEY``) bound to the mail id (:func:`context_for`), so it does not
  open on another row. The sender opens it with :func:`unseal` to send; once the mail is sent the
  token is erased.

A sensitive value found where nothing is redacted (recipients, ``ref``, ``category``, attachment
bytes) is refused with ``ValueError``: it would be stored as it is. This module must not touch the
database, and never puts a sensitive value into an exception message or a log line.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

from mesh_common.mail.tables import MailTables
from mesh_common.rekey import RekeyTarget
from mesh_common.secrets import DecryptionError, SecretBox

if TYPE_CHECKING:  # models imports redact() from here
    from mesh_common.mail.models import OutgoingMail

REDACTED = "[redacted]"
_CONTEXT = "mesh_mail_queue.sealed_content|"


def context_for(mail_id: str) -> str:
    """The SecretBox context of one mail's sealed content (the token opens on that row only)."""
    return _CONTEXT + mail_id


def _forms(values: Iterable[str]) -> list[str]:
    """Each value as it may appear in a mail: plain, HTML-escaped, URL-encoded (longest first,
    so a longer form is replaced before a shorter one inside it)."""
    forms: set[str] = set()
    for value in values:
        for form in (value, quote(value, safe=""), quote_plus(value, safe="")):
            forms |= {form, html.escape(form, quote=True), html.escape(form, quote=False)}
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with every form of every value replaced by :data:`REDACTED`."""
    for form in _forms(values):
        text = text.replace(form, REDACTED)
    return text


@dataclass(frozen=True)
class Sealed:
    """What the queue stores for one mail: the redacted fields, and the sealed real ones
    (``None`` when no sensitive value occurred, so there is nothing to hide)."""

    subject: str
    text: str
    html: str | None
    headers: dict[str, str]
    token: str | None


def _refuse_elsewhere(mail: OutgoingMail, forms: list[str]) -> None:
    stored_as_is: dict[str, list[str]] = {
        "recipients": [*mail.to, *mail.cc, *mail.bcc, *mail.reply_to],
        "from_address": [mail.from_address or ""],
        "ref": [mail.ref or ""],
        "category": [mail.category],
        "header names": list(mail.headers),
    }
    for where, texts in stored_as_is.items():
        if any(form in text for form in forms for text in texts):
            raise ValueError(f"a sensitive value appears in the mail's {where}, which are stored")
    encoded = [f.encode() for f in forms]
    for attachment in mail.attachments:
        if any(form in attachment.data for form in encoded):
            raise ValueError(
                f"a sensitive value appears in attachment {attachment.filename!r}; "
                "attachments are stored as they are"
            )


def seal(mail: OutgoingMail, mail_id: str, box: SecretBox | None) -> Sealed:
    """The stored form of ``mail`` (see the module docstring). A mail that names sensitive values
    needs ``box``: without it this raises instead of storing anything in the clear."""
    if not mail.sensitive:
        return Sealed(mail.subject, mail.text, mail.html, dict(mail.headers), None)
    if box is None:
        raise RuntimeError(
            "this mail names sensitive values, but no SecretBox was given to seal them "
            "(MESH_SECRET_KEY); refusing to store them in the clear"
        )
    forms = _forms(mail.sensitive)
    _refuse_elsewhere(mail, forms)
    subject = redact(mail.subject, mail.sensitive)
    text = redact(mail.text, mail.sensitive)
    html_body = redact(mail.html, mail.sensitive) if mail.html is not None else None
    headers = {name: redact(value, mail.sensitive) for name, value in mail.headers.items()}
    if (subject, text, html_body, headers) == (mail.subject, mail.text, mail.html, mail.headers):
        return Sealed(subject, text, html_body, headers, None)
    real: dict[str, Any] = {
        "subject": mail.subject,
        "text": mail.text,
        "html": mail.html,
        "headers": dict(mail.headers),
    }
    return Sealed(
        subject, text, html_body, headers, box.encrypt(real, context=context_for(mail_id))
    )


def unseal(token: str, mail_id: str, box: SecretBox | None) -> dict[str, Any]:
    """The real ``subject``, ``text``, ``html`` and ``headers`` of a sealed mail.

    Raises :class:`~mesh_common.secrets.DecryptionError` (without key material or content in
    the message) when there is no box, the key is not held, or the token belongs elsewhere."""
    if box is None:
        raise DecryptionError(
            "the mail's content is sealed, but this sender has no SecretBox (MESH_SECRET_KEY)"
        )
    value = box.decrypt(token, context=context_for(mail_id))
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise DecryptionError("the sealed content is not a mail")
    return value


def rekey_target(tables: MailTables) -> RekeyTarget:
    """The queue's sealed copies, for ``python -m <service> rekey`` (key rotation)."""
    return RekeyTarget(
        name="mail.sealed_content",
        table=tables.queue,
        column="sealed_content",
        key="id",
        context=lambda row: context_for(row.id),
    )
