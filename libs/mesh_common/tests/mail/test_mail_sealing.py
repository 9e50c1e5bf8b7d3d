"""Sensitive values in queued mail (``OutgoingMail.sensitive``) on SQLite and PostgreSQL: stored
and shown only as ``[redacted]``, the real content sealed with a SecretBox bound to the mail id,
sent in full, the seal erased once sent and kept while the mail is failed (so a retry works);
refused loudly without a key; the sender without a key fails the mail with the reason."""

from __future__ import annotations

import secrets
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from mesh_common.db import service_metadata
from mesh_common.mail import (
    FAILED,
    PENDING,
    REDACTED,
    SENT,
    Attachment,
    MailOutbox,
    MailSettings,
    OutgoingMail,
    enqueue,
    mail_hooks,
    mail_tables,
    redact,
)
from mesh_common.mail.sealing import context_for, seal, unseal
from mesh_common.secrets import DecryptionError, SecretBox, SecretKeyMissing, generate_key
from mesh_common.testing.smtp import SmtpCapture
from sqlalchemy import select, update

from .conftest import Env, mail_settings
from .test_mail_sender import wait_status

BOX = SecretBox([generate_key()])


def access_mail(token: str, **overrides: Any) -> OutgoingMail:
    link = f"https://portal.example/activate?token={token}"
    fields: dict[str, Any] = {
        "to": "Erika Muster <erika@example.org>",
        "subject": f"Ihr Zugang {token}" if overrides.pop("token_in_subject", False) else
        "Ihr Zugang",
        "text": f"Guten Tag,\nIhr Link: {link}\nGültig 30 Minuten.",
        "html": f'<p>Guten Tag,</p><p><a href="{link}&amp;lang=de">aktivieren</a></p>',
        "headers": {"X-Portal-Link": link},
        "category": "portal-access",
        "ref": "k-10023",
        "sensitive": (token,),
    }  # fmt: skip
    fields.update(overrides)
    return OutgoingMail(**fields)


async def queue(env: Env, mail: OutgoingMail, box: SecretBox | None = BOX) -> str:
    async with env.db.unit_of_work() as session:
        return await enqueue(session, env.mail, mail, box=box)


async def stored_row(env: Env, mail_id: str) -> Any:
    q = env.mail.queue
    async with env.db.engine.connect() as conn:
        return (await conn.execute(select(q).where(q.c.id == mail_id))).one()


def database_bytes(env: Env) -> bytes:
    """The SQLite file with its WAL, as a thief with a copy would read it."""
    path = Path(env.url.split("///", 1)[1])
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def plain_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


# ---------------------------------------------------------------------- redaction


def test_redact_replaces_every_form_of_a_value() -> None:
    value = "a&b c/d+e"
    text = (
        f"plain {value}; html a&amp;b c/d+e; url a%26b%20c%2Fd%2Be; form a%26b+c%2Fd%2Be; other a&b"
    )
    out = redact(text, [value])
    assert out == (f"plain {REDACTED}; html {REDACTED}; url {REDACTED}; form {REDACTED}; other a&b")


def test_sensitive_values_must_not_be_empty_and_are_not_in_the_repr() -> None:
    token = secrets.token_urlsafe(32)
    mail = access_mail(token)
    assert token not in repr(mail) and token not in str(mail)
    assert f"token={REDACTED}" in repr(mail)
    with pytest.raises(ValueError, match="must not be empty"):
        access_mail(token, sensitive=(token, "  "))


def test_a_seal_opens_only_on_its_own_mail() -> None:
    token = secrets.token_urlsafe(32)
    sealed = seal(access_mail(token), "mail-1", BOX)
    assert sealed.token is not None and token not in sealed.token
    assert unseal(sealed.token, "mail-1", BOX)["text"].count(token) == 1
    with pytest.raises(DecryptionError):
        unseal(sealed.token, "mail-2", BOX)  # copied onto another row
    with pytest.raises(DecryptionError):
        unseal(sealed.token, "mail-1", SecretBox([generate_key()]))  # another key
    with pytest.raises(DecryptionError, match="no SecretBox"):
        unseal(sealed.token, "mail-1", None)
    assert BOX.decrypt(sealed.token, context=context_for("mail-1"))


def test_nothing_is_sealed_when_no_value_occurs() -> None:
    mail = access_mail("x" * 20, text="no link here", html=None, headers={})
    sealed = seal(mail, "mail-1", BOX)
    assert sealed.token is None and sealed.text == "no link here"


def test_values_where_nothing_is_redacted_are_refused() -> None:
    token = secrets.token_urlsafe(32)
    with pytest.raises(ValueError, match="ref"):
        seal(access_mail(token, ref=token), "m", BOX)
    card = Attachment(filename="link.txt", data=f"link {token}".encode())
    with pytest.raises(ValueError, match=r"attachment 'link\.txt'") as err:
        seal(access_mail(token, attachments=[card]), "m", BOX)
    assert token not in str(err.value)


# ---------------------------------------------------------------------- queue and sender


async def test_stored_redacted_sent_in_full_and_the_seal_erased(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    token = secrets.token_urlsafe(32)
    mail_id = await queue(env, access_mail(token, token_in_subject=True))

    row = await stored_row(env, mail_id)
    assert token not in repr(tuple(row))  # no column holds it, the seal included
    assert row.subject == f"Ihr Zugang {REDACTED}"
    assert f"?token={REDACTED}" in row.text_body
    assert f"?token={REDACTED}&amp;lang=de" in row.html_body
    assert row.headers == {"X-Portal-Link": f"https://portal.example/activate?token={REDACTED}"}
    assert row.sealed_content is not None
    if env.backend == "sqlite":
        assert token.encode() not in database_bytes(env)

    outbox = MailOutbox(env.db, env.mail)  # the staff view needs no key
    record = await outbox.get(mail_id)
    assert record.sealed and record.status == PENDING
    assert token not in record.model_dump_json()
    assert REDACTED in record.text and record.html is not None and REDACTED in record.html
    (summary,), _ = await outbox.list_mail(ref="k-10023")
    assert summary.sealed and summary.subject == f"Ihr Zugang {REDACTED}"

    sender = env.sender(settings, box=BOX)
    await sender.start()
    (captured,) = await smtp_server.wait_for(1)
    message = captured.message
    assert message["Subject"] == f"Ihr Zugang {token}"
    assert message["X-Portal-Link"] == f"https://portal.example/activate?token={token}"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert f"?token={token}\r\n" in text.get_content()
    assert f"?token={token}&amp;lang=de" in html.get_content()
    assert REDACTED not in text.get_content()

    record = await wait_status(outbox, mail_id, SENT)
    assert not record.sealed
    assert (await stored_row(env, mail_id)).sealed_content is None


async def test_a_failed_sealed_mail_keeps_its_seal_and_a_retry_sends_it(
    env: Env, smtp_server: SmtpCapture
) -> None:
    token = secrets.token_urlsafe(32)
    smtp_server.refuse("erika@example.org")
    sender = env.sender(mail_settings(smtp_server), box=BOX)
    await sender.start()
    mail_id = await queue(env, access_mail(token))
    record = await wait_status(sender.outbox, mail_id, FAILED)
    assert record.sealed and token not in (record.last_error or "")

    smtp_server.refusals.clear()
    await sender.outbox.retry(mail_id, actor="sam")
    (captured,) = await smtp_server.wait_for(1)
    assert f"?token={token}" in plain_text(captured.message)
    assert not (await wait_status(sender.outbox, mail_id, SENT)).sealed


async def test_a_sender_without_the_key_fails_the_mail_and_keeps_the_seal(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    token = secrets.token_urlsafe(32)
    mail_id = await queue(env, access_mail(token))
    keyless = env.sender(settings)
    await keyless.start()
    record = await wait_status(keyless.outbox, mail_id, FAILED)
    assert record.last_error is not None
    assert "sealed content cannot be opened" in record.last_error
    assert record.sealed and smtp_server.messages == []  # never sent redacted
    await keyless.stop()

    # Another key fails the same way; the right one sends it after a retry.
    async with env.db.unit_of_work() as session:
        await session.execute(update(env.mail.queue).values(status=PENDING))
    wrong = env.sender(settings, box=SecretBox([generate_key()]))
    await wrong.start()
    record = await wait_status(wrong.outbox, mail_id, FAILED)
    assert "not configured" in (record.last_error or "")
    await wrong.stop()

    right = env.sender(settings, box=BOX)
    await right.start()
    await right.outbox.retry(mail_id, actor="sam")
    (captured,) = await smtp_server.wait_for(1)
    assert f"?token={token}" in plain_text(captured.message)


async def test_enqueue_without_a_box_refuses_and_stores_nothing(env: Env) -> None:
    token = secrets.token_urlsafe(32)
    with pytest.raises(RuntimeError, match="refusing to store them in the clear"):
        await queue(env, access_mail(token), box=None)
    async with env.db.engine.connect() as conn:
        assert (await conn.execute(select(env.mail.queue.c.id))).all() == []
    # A mail without sensitive values needs no box.
    plain = access_mail(token, sensitive=(), text="Hallo", html=None, headers={})
    assert await queue(env, plain, box=None)


async def test_mail_hooks_resolve_the_box_at_startup() -> None:
    """A service queueing sensitive mail passes a factory: a missing key stops the start."""

    def missing() -> SecretBox:
        return SecretBox.from_env(environ={})

    start, _ = mail_hooks(mail_tables(service_metadata()), box=missing)

    class Runtime:
        settings = MailSettings()
        db: Any = None
        extras: dict[str, Any] = {}

    with pytest.raises(SecretKeyMissing):
        await start(Runtime())
