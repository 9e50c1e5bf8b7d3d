"""Turning an :class:`~mesh_common.mail.models.OutgoingMail` into a MIME message (stdlib ``email``).

Structure: ``text/plain`` alone, or ``multipart/alternative`` (text, then HTML) when there is
HTML; with attachments that becomes the first part of a ``multipart/mixed``. Headers: From, To,
Cc, Reply-To, Subject, Date, Message-ID, ``Auto-Submitted: auto-generated`` (RFC 3834, so
out-of-office replies are not sent back; a caller may override it), then the caller's headers.
Bcc recipients are only in the SMTP envelope, never in a header. Non-ASCII display names,
subjects and file names are encoded by the email package. This module must not do IO.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import format_datetime

from mesh_common.mail.models import OutgoingMail, parse_address


def message_id_for(mail_id: str, from_address: str) -> str:
    """A stable Message-ID: the queue id at the sender's domain (same id on every retry)."""
    return f"<{mail_id}@{parse_address(from_address).domain}>"


def _split_content_type(value: str) -> tuple[str, str, dict[str, str]]:
    header = default_policy.header_factory("Content-Type", value)
    maintype: str = header.maintype
    subtype: str = header.subtype
    params = {k: str(v) for k, v in header.params.items()}
    return maintype, subtype, params


def build_message(
    mail: OutgoingMail,
    *,
    message_id: str,
    default_from: str,
    date: datetime | None = None,
) -> EmailMessage:
    """The complete message of ``mail`` (``default_from`` unless the mail names its sender)."""
    msg = EmailMessage(policy=default_policy)
    msg["From"] = mail.from_address or default_from
    if mail.to:
        msg["To"] = ", ".join(mail.to)
    if mail.cc:
        msg["Cc"] = ", ".join(mail.cc)
    if mail.reply_to:
        msg["Reply-To"] = ", ".join(mail.reply_to)
    msg["Subject"] = mail.subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = message_id
    if not any(name.lower() == "auto-submitted" for name in mail.headers):
        msg["Auto-Submitted"] = "auto-generated"
    for name, value in mail.headers.items():
        msg[name] = value
    # Quoted-printable: 7-bit clean for any relay (no 8BITMIME needed) and no line-length limit.
    msg.set_content(mail.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if mail.html is not None:
        msg.add_alternative(mail.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for attachment in mail.attachments:
        maintype, subtype, params = _split_content_type(attachment.content_type)
        params.pop("name", None)  # the file name goes into Content-Disposition
        # Every attachment travels base64, so its bytes arrive exactly as given.
        msg.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype,
            filename=attachment.filename,
            params=params,
        )
    return msg
