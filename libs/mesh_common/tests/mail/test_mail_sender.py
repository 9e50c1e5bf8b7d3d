"""The queue and the sender against a real SMTP server (aiosmtpd) on SQLite and PostgreSQL:
what arrives is parsed back with the stdlib, and outages, refusals and replicas are real."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from mesh_common.mail import (
    FAILED,
    PENDING,
    SENT,
    Attachment,
    MailOutbox,
    MailRecord,
    MailSettings,
    OutgoingMail,
    enqueue,
)
from mesh_common.testing.smtp import SmtpCapture, make_tls_files, server_tls_context
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update

from .conftest import Env, mail_settings

PDF = b"%PDF-1.7\n" + os.urandom(4096) + b"\n%%EOF\n"
ICS = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"


def booking_mail(**overrides: object) -> OutgoingMail:
    fields: dict[str, object] = {
        "to": "Jörg Müller <joerg@example.org>",
        "cc": ["office@vhs-musterstadt.de"],
        "bcc": ["archive@vhs-musterstadt.de"],
        "reply_to": "anmeldung@vhs-musterstadt.de",
        "subject": "Ihre Anmeldung: Spanisch für Anfänger (A1)",
        "text": "Hallo Jörg,\nSie sind angemeldet.",
        "html": "<p>Hallo J&ouml;rg,</p><p>Sie sind angemeldet.</p>",
        "attachments": [
            Attachment(
                filename="Anmeldekarte Müller.pdf", content_type="application/pdf", data=PDF
            ),
            Attachment(filename="kurs.ics", content_type="text/calendar; method=REQUEST", data=ICS),
        ],
        "headers": {"X-Edumesh-Order": "B-2026-0042"},
        "category": "booking-confirmation",
        "ref": "B-2026-0042",
    }
    fields.update(overrides)
    return OutgoingMail(**fields)


async def queue(env: Env, mail: OutgoingMail) -> str:
    async with env.db.unit_of_work() as session:
        return await enqueue(session, env.mail, mail)


async def wait_status(
    outbox: MailOutbox, mail_id: str, status: str, timeout: float = 10.0
) -> MailRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = await outbox.get(mail_id)
        if record.status == status:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"mail {mail_id} is {record.status}, not {status}: {record}")
        await asyncio.sleep(0.02)


async def test_sends_a_complete_mime_message(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    sender = env.sender(settings)
    await sender.start()
    mail_id = await queue(env, booking_mail())

    (captured,) = await smtp_server.wait_for(1)
    record = await wait_status(sender.outbox, mail_id, SENT)
    msg = captured.message

    # Envelope: every recipient once, bcc only here; the sender is MAIL_FROM's address.
    assert captured.mail_from == "noreply@vhs-musterstadt.de"
    assert sorted(captured.rcpt_tos) == [
        "archive@vhs-musterstadt.de",
        "joerg@example.org",
        "office@vhs-musterstadt.de",
    ]
    assert msg["Bcc"] is None
    assert "archive@" not in captured.data.decode("ascii")
    # Headers, decoded back.
    assert msg["From"] == "VHS Musterstadt <noreply@vhs-musterstadt.de>"
    assert msg["To"] == "Jörg Müller <joerg@example.org>"
    assert msg["Cc"] == "office@vhs-musterstadt.de"
    assert msg["Reply-To"] == "anmeldung@vhs-musterstadt.de"
    assert msg["Subject"] == "Ihre Anmeldung: Spanisch für Anfänger (A1)"
    assert msg["Message-ID"] == record.message_id == f"<{mail_id}@vhs-musterstadt.de>"
    assert msg["Date"].datetime.timestamp() == pytest.approx(time.time(), abs=60)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Edumesh-Order"] == "B-2026-0042"
    # Structure: mixed( alternative(text, html), pdf, ics ).
    assert msg.get_content_type() == "multipart/mixed"
    body, pdf, ics = msg.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    text, html = body.iter_parts()
    assert text.get_content_type() == "text/plain"
    # (the wire has CRLF line ends, which the parsed content keeps)
    assert text.get_content().replace("\r\n", "\n").rstrip() == "Hallo Jörg,\nSie sind angemeldet."
    assert html.get_content_type() == "text/html"
    assert "Sie sind angemeldet." in html.get_content()
    assert pdf.get_filename() == "Anmeldekarte Müller.pdf"
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content() == PDF
    assert ics.get_content_type() == "text/calendar"
    assert ics.get_param("method") == "REQUEST"
    assert ics.get_payload(decode=True) == ICS
    # The outbox shows it sent, on the first attempt, without attachment bytes.
    assert record.attempts == 1 and record.sent_at is not None and record.last_error is None
    assert [(a.filename, a.size) for a in record.attachments] == [
        ("Anmeldekarte Müller.pdf", len(PDF)),
        ("kurs.ics", len(ICS)),
    ]


async def test_text_only_mail_is_a_single_part(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    sender = env.sender(settings)
    await sender.start()
    await queue(env, OutgoingMail(to="a@example.org", subject="Erinnerung", text="Morgen!"))
    (captured,) = await smtp_server.wait_for(1)
    assert captured.message.get_content_type() == "text/plain"
    assert captured.message.get_content_charset() == "utf-8"


async def test_commit_wakes_the_sender_at_once(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    sender = env.sender(settings.model_copy(update={"mail_poll_seconds": 60}))
    await sender.start()
    await asyncio.sleep(0.1)  # the sender is now idle for a minute
    started = time.monotonic()
    await queue(env, booking_mail())
    await smtp_server.wait_for(1, timeout=5)
    assert time.monotonic() - started < 5


async def test_rollback_queues_nothing(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    sender = env.sender(settings)
    await sender.start()
    with pytest.raises(RuntimeError):
        async with env.db.unit_of_work() as session:
            await enqueue(session, env.mail, booking_mail())
            raise RuntimeError("the booking failed")
    committed = await queue(env, booking_mail(ref="second"))
    await wait_status(sender.outbox, committed, SENT)
    items, total = await sender.outbox.list_mail()
    assert total == 1 and items[0].ref == "second"
    assert len(smtp_server.messages) == 1


async def test_outage_is_retried_until_the_server_is_back(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    smtp_server.stop()
    sender = env.sender(
        settings.model_copy(update={"mail_backoff_seconds": 0.2, "mail_max_attempts": 20})
    )
    await sender.start()
    mail_id = await queue(env, booking_mail())

    deadline = time.monotonic() + 10
    while (record := await sender.outbox.get(mail_id)).attempts < 2:
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.02)
    assert record.status in (PENDING, "sending")
    assert record.last_error is not None and "attempt" in record.last_error

    smtp_server.start()
    record = await wait_status(sender.outbox, mail_id, SENT)
    assert record.attempts >= 2
    (captured,) = await smtp_server.wait_for(1)
    # The retry is the same message: one stable Message-ID across attempts.
    assert captured.message["Message-ID"] == record.message_id


async def test_gives_up_after_max_attempts(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    smtp_server.stop()
    registry = CollectorRegistry()
    sender = env.sender(settings.model_copy(update={"mail_max_attempts": 3}), registry=registry)
    await sender.start()
    mail_id = await queue(env, booking_mail())

    record = await wait_status(sender.outbox, mail_id, FAILED)
    assert record.attempts == 3
    assert record.last_error is not None
    assert record.last_error.startswith("gave up after 3 attempts")
    await asyncio.sleep(0.3)  # no further attempts once failed
    assert (await sender.outbox.get(mail_id)).attempts == 3
    labels = {"category": "booking-confirmation", "reason": "attempts"}
    assert registry.get_sample_value("mail_failed_total", labels) == 1
    transient = {"category": "booking-confirmation", "kind": "transient"}
    assert registry.get_sample_value("mail_attempt_errors_total", transient) == 3


async def test_permanent_refusal_fails_at_once(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    smtp_server.refuse("nobody@example.org")
    sender = env.sender(settings)
    await sender.start()
    mail_id = await queue(
        env, OutgoingMail(to="nobody@example.org", subject="Hallo", text="Hallo", category="t")
    )
    record = await wait_status(sender.outbox, mail_id, FAILED)
    assert record.attempts == 1
    assert record.last_error is not None
    assert "550" in record.last_error and "nobody@example.org" in record.last_error
    assert smtp_server.messages == []


async def test_partial_refusal_still_sends_to_the_others(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    smtp_server.refuse("gone@example.org")
    sender = env.sender(settings)
    await sender.start()
    mail_id = await queue(
        env,
        OutgoingMail(to=["ok@example.org", "gone@example.org"], subject="Hallo", text="x"),
    )
    record = await wait_status(sender.outbox, mail_id, SENT)
    assert record.last_error is not None and "gone@example.org: 550" in record.last_error
    (captured,) = await smtp_server.wait_for(1)
    assert captured.rcpt_tos == ("ok@example.org",)


async def test_transient_reply_is_retried(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    smtp_server.fail_next(2)  # 451 on DATA, twice
    sender = env.sender(settings)
    await sender.start()
    mail_id = await queue(env, booking_mail())
    record = await wait_status(sender.outbox, mail_id, SENT)
    assert record.attempts == 3
    assert len(smtp_server.messages) == 1


async def test_permanent_data_refusal_fails_at_once(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    smtp_server.fail_next(1, "554 5.7.1 Message rejected as spam")
    sender = env.sender(settings)
    await sender.start()
    mail_id = await queue(env, booking_mail())
    record = await wait_status(sender.outbox, mail_id, FAILED)
    assert record.attempts == 1
    assert record.last_error is not None and "554" in record.last_error


async def test_two_replicas_send_each_mail_once(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    count = 30
    ids = []
    async with env.db.unit_of_work() as session:
        for i in range(count):
            ids.append(
                await enqueue(
                    session,
                    env.mail,
                    OutgoingMail(to=f"p{i}@example.org", subject=f"Mail {i}", text="x", ref=str(i)),
                )
            )
    tuned = settings.model_copy(update={"mail_batch_size": 4, "mail_concurrency": 2})
    a = env.sender(tuned, own_engine=True, holder="replica-a")
    b = env.sender(tuned, own_engine=True, holder="replica-b")
    await asyncio.gather(a.run_once(), b.run_once())  # both claim at the same moment
    await asyncio.gather(a.start(), b.start())

    messages = await smtp_server.wait_for(count)
    for mail_id in ids:
        await wait_status(a.outbox, mail_id, SENT)
    await asyncio.sleep(0.2)
    message_ids = [m.message["Message-ID"] for m in smtp_server.messages]
    assert len(smtp_server.messages) == count == len(set(message_ids))
    assert sorted(m.rcpt_tos[0] for m in messages) == sorted(
        f"p{i}@example.org" for i in range(count)
    )
    q = env.mail.queue
    async with env.db.engine.connect() as conn:
        rows = (await conn.execute(select(q.c.attempts, q.c.status))).all()
    assert {tuple(r) for r in rows} == {(1, SENT)}


async def test_mail_of_a_dead_replica_is_taken_over(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    mail_id = await queue(env, booking_mail())
    outbox = MailOutbox(env.db, env.mail)
    (claimed,) = await outbox.claim(
        holder="dead-replica", limit=5, lease_seconds=1.0, max_attempts=5
    )
    assert claimed.id == mail_id and claimed.attempt == 1
    sender = env.sender(settings)
    await sender.start()
    await asyncio.sleep(0.2)
    assert (await outbox.get(mail_id)).status == "sending"  # still leased to the dead replica
    record = await wait_status(outbox, mail_id, SENT)
    assert record.attempts == 2
    # The dead replica can no longer record an outcome for it.
    assert not await outbox.mark_failed(mail_id, "dead-replica", error="late", message_id=None)


async def test_lost_last_attempt_is_failed_not_resent(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    mail_id = await queue(env, booking_mail())
    outbox = MailOutbox(env.db, env.mail)
    async with env.db.unit_of_work() as session:
        await session.execute(update(env.mail.queue).values(attempts=4))
    await outbox.claim(
        holder="dead-replica", limit=5, lease_seconds=0.1, max_attempts=5
    )  # attempt 5 of 5
    sender = env.sender(settings)
    await sender.start()
    record = await wait_status(outbox, mail_id, FAILED)
    assert (
        record.last_error is not None and "may or may not have been delivered" in record.last_error
    )
    assert smtp_server.messages == []


async def test_failed_mail_can_be_retried(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    smtp_server.refuse("later@example.org")
    sender = env.sender(settings)
    await sender.start()
    mail_id = await queue(env, OutgoingMail(to="later@example.org", subject="s", text="t"))
    await wait_status(sender.outbox, mail_id, FAILED)

    smtp_server.refusals.clear()  # the mailbox exists now
    record = await sender.outbox.retry(mail_id, actor="staff-1")
    assert record.status in (PENDING, "sending", SENT)
    record = await wait_status(sender.outbox, mail_id, SENT)
    assert record.attempts == 1
    assert len(await smtp_server.wait_for(1)) == 1


async def test_not_before_delays_the_first_attempt(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    from datetime import UTC, datetime, timedelta

    sender = env.sender(settings)
    await sender.start()
    async with env.db.unit_of_work() as session:
        mail_id = await enqueue(
            session,
            env.mail,
            booking_mail(),
            not_before=datetime.now(UTC) + timedelta(seconds=0.5),
        )
    await asyncio.sleep(0.25)
    assert smtp_server.messages == []
    await wait_status(sender.outbox, mail_id, SENT)


async def test_login_and_wrong_password(env: Env) -> None:
    with SmtpCapture(credentials={"mesh": "s3cret-pw"}) as server:
        good = mail_settings(server, smtp_username="mesh", smtp_password="s3cret-pw")
        sender = env.sender(good)
        await sender.start()
        first = await queue(env, booking_mail())
        await wait_status(sender.outbox, first, SENT)
        assert server.logins == ["mesh"]
        await sender.stop()

        bad = mail_settings(
            server, smtp_username="mesh", smtp_password="wrong", mail_max_attempts=2
        )
        sender = env.sender(bad)
        await sender.start()
        second = await queue(env, booking_mail())
        record = await wait_status(sender.outbox, second, FAILED)
        assert record.last_error is not None and "login failed" in record.last_error
        assert "wrong" not in record.last_error  # the password never lands in the outbox
        assert len(server.messages) == 1


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls(env: Env, tmp_path: object, security: str) -> None:
    from pathlib import Path

    cert, key = make_tls_files(Path(str(tmp_path)))
    context = server_tls_context(cert, key)
    server = (
        SmtpCapture(starttls_context=context)
        if security == "starttls"
        else SmtpCapture(tls_context=context)
    )
    with server:
        trusted = mail_settings(server, smtp_security=security, smtp_ca_file=cert)
        sender = env.sender(trusted)
        await sender.start()
        mail_id = await queue(env, booking_mail())
        await wait_status(sender.outbox, mail_id, SENT)
        assert len(server.messages) == 1
        await sender.stop()

        # Without the CA the certificate is not trusted: the attempt fails (and is retried).
        untrusted = mail_settings(server, smtp_security=security, mail_max_attempts=1)
        sender = env.sender(untrusted)
        await sender.start()
        mail_id = await queue(env, booking_mail())
        record = await wait_status(sender.outbox, mail_id, FAILED)
        assert record.last_error is not None and "certificate" in record.last_error.lower()
        assert len(server.messages) == 1


async def test_plain_smtp_is_never_upgraded(env: Env, tmp_path: object) -> None:
    """SMTP_SECURITY=none means none: a server offering STARTTLS is not upgraded silently."""
    from pathlib import Path

    cert, key = make_tls_files(Path(str(tmp_path)))
    server = SmtpCapture(starttls_context=server_tls_context(cert, key))
    with server:
        sender = env.sender(mail_settings(server, mail_max_attempts=1))
        await sender.start()
        mail_id = await queue(env, booking_mail())
        record = await wait_status(sender.outbox, mail_id, FAILED)
        assert record.last_error is not None and "STARTTLS" in record.last_error


async def test_metrics_and_purge(
    env: Env, smtp_server: SmtpCapture, settings: MailSettings
) -> None:
    registry = CollectorRegistry()
    sender = env.sender(settings, registry=registry)
    mail_id = await queue(env, booking_mail())
    await queue(env, booking_mail())
    assert await sender.run_once() == 2
    assert registry.get_sample_value("mail_sent_total", {"category": "booking-confirmation"}) == 2
    assert registry.get_sample_value("mail_queue_depth", {"status": "sent"}) == 2
    assert registry.get_sample_value("mail_queue_depth", {"status": "pending"}) == 0

    # Sent mail older than the retention period goes, with its attachments.
    async with env.db.unit_of_work() as session:
        q = env.mail.queue
        await session.execute(
            update(q).where(q.c.id == mail_id).values(sent_at=time.time() - 40 * 86400)
        )
    assert await sender.outbox.purge_sent(time.time() - 30 * 86400) == 1
    _, total = await sender.outbox.list_mail()
    assert total == 1
    a = env.mail.attachments
    async with env.db.engine.connect() as conn:
        left = (await conn.execute(select(a.c.mail_id))).scalars().all()
    assert mail_id not in left and len(left) == 2
