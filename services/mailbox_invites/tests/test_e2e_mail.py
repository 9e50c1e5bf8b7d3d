"""End to end on real servers: Dovecot (IMAP/LMTP, project config) behind a real SMTP server,
the service on SQLite, the room mailbox played by an auto-accepting responder.

Every message the room mailbox receives is parsed back independently of the service's code: the
MIME structure with the ``email`` package, the calendar with ``icalendar``, field by field.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest
from asgi_lifespan import LifespanManager
from mailbox_invites_service.app import create_app
from mailbox_invites_service.responder import Received
from mesh_common.testing.dovecot import DovecotServer, SmtpRelay

from .conftest import STAFF, Api, configure, future, make_settings

BERLIN = ZoneInfo("Europe/Berlin")


def check_invitation(
    r: Received,
    *,
    method: str,
    uid: str,
    sequence: int,
    organizer: str,
    attendee: str,
    starts: dt.datetime,
    ends: dt.datetime,
    summary: str,
    sent_after: dt.datetime,
) -> None:
    """Parse one received iMIP mail from scratch and check it field by field."""
    msg = email.message_from_bytes(r.raw, policy=email.policy.default)
    # MIME: multipart/alternative with a text part and text/calendar; method=<METHOD>.
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p for p in msg.iter_parts()]
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/calendar"]
    cal_part = parts[1]
    assert cal_part.get_param("method") == method
    assert cal_part.get_content_charset() == "utf-8"
    assert email.utils.parseaddr(str(msg["From"]))[1] == organizer
    assert email.utils.parseaddr(str(msg["To"]))[1] == attendee
    assert msg["Message-ID"] and msg["Date"]
    raw_ics = cal_part.get_payload(decode=True)
    assert b"\r\n" in raw_ics and b"\n" not in raw_ics.replace(b"\r\n", b"")  # CRLF only

    cal = icalendar.Calendar.from_ical(raw_ics)
    assert str(cal["METHOD"]) == method
    assert str(cal["VERSION"]) == "2.0"
    assert cal["PRODID"]
    (tz,) = cal.walk("VTIMEZONE")
    assert str(tz["TZID"]) == "Europe/Berlin"
    (vevent,) = cal.walk("VEVENT")
    assert str(vevent["UID"]) == uid
    assert int(vevent["SEQUENCE"]) == sequence
    stamp = vevent["DTSTAMP"].dt
    assert stamp.utcoffset() == dt.timedelta(0) and stamp >= sent_after - dt.timedelta(seconds=1)
    start, end = vevent["DTSTART"], vevent["DTEND"]
    assert start.params["TZID"] == "Europe/Berlin" and end.params["TZID"] == "Europe/Berlin"
    assert start.dt == starts and end.dt == ends
    assert start.dt.replace(tzinfo=None) == starts.astimezone(BERLIN).replace(tzinfo=None)
    assert str(vevent["SUMMARY"]) == summary
    org = vevent["ORGANIZER"]
    assert str(org).lower() == f"mailto:{organizer}".lower()
    assert org.params["CN"] == "Raumbuchung VHS"
    att = vevent["ATTENDEE"]
    assert not isinstance(att, list)
    assert str(att).lower() == f"mailto:{attendee}".lower()
    assert att.params["CUTYPE"] == "ROOM"
    if method == "REQUEST":
        assert att.params["RSVP"] == "TRUE"
        assert att.params["PARTSTAT"] == "NEEDS-ACTION"
        assert str(vevent["STATUS"]) == "CONFIRMED"
    else:
        assert str(vevent["STATUS"]) == "CANCELLED"
    # The raw text, too: the iMIP method parameter is in the part header as sent.
    assert f"method={method}".encode() in r.raw.replace(b'"', b"")


async def test_create_change_delete_round_trip(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    starts, ends = future(days=10, hour=18), future(days=10, hour=19, minute=30)

    # create → REQUEST SEQUENCE 0 → ACCEPTED
    before = dt.datetime.now(dt.UTC)
    out = await svc.put_event(
        "evt-1", starts_at=starts.isoformat(), ends_at=ends.isoformat(), booked_by="Frau Kern"
    )
    assert out["outcome"] == "created"
    inv = await svc.event_invitation("evt-1")
    assert (inv["status"], inv["method"], inv["sequence"]) == ("pending", "REQUEST", 0)

    ex = await svc.run_processor()
    assert ex["status"] == "succeeded", ex
    assert (await svc.invitation(inv["id"]))["status"] == "sent"

    got = await boxes.responder.process()
    assert [(g.method, g.sequence) for g in got] == [("REQUEST", 0)]
    check_invitation(
        got[0],
        method="REQUEST",
        uid=inv["uid"],
        sequence=0,
        organizer=boxes.tech.address,
        attendee=boxes.room.address,
        starts=starts,
        ends=ends,
        summary="Spanisch A1",
        sent_after=before,
    )
    ex = await svc.run_processor()
    assert ex["status"] == "succeeded", ex
    accepted = await svc.invitation(inv["id"])
    assert (accepted["status"], accepted["reply_partstat"], accepted["reply_sequence"]) == (
        "accepted",
        "ACCEPTED",
        0,
    )

    # significant change (new start) → REQUEST SEQUENCE 1 → ACCEPTED
    starts2, ends2 = future(days=11, hour=9), future(days=11, hour=12)
    out = await svc.put_event("evt-1", starts_at=starts2.isoformat(), ends_at=ends2.isoformat())
    assert out["outcome"] == "changed"
    changed = await svc.invitation(inv["id"])
    assert (changed["status"], changed["sequence"], changed["uid"]) == ("pending", 1, inv["uid"])
    before = dt.datetime.now(dt.UTC)
    await svc.run_processor()
    got = await boxes.responder.process()
    assert [(g.method, g.sequence) for g in got] == [("REQUEST", 1)]
    check_invitation(
        got[0],
        method="REQUEST",
        uid=inv["uid"],
        sequence=1,
        organizer=boxes.tech.address,
        attendee=boxes.room.address,
        starts=starts2,
        ends=ends2,
        summary="Spanisch A1",
        sent_after=before,
    )
    await svc.run_processor()
    assert (await svc.invitation(inv["id"]))["status"] == "accepted"

    # minor change (title only) → re-sent with the same SEQUENCE
    await svc.put_event(
        "evt-1", title="Spanisch A1 (neu)", starts_at=starts2.isoformat(), ends_at=ends2.isoformat()
    )
    minor = await svc.invitation(inv["id"])
    assert (minor["status"], minor["sequence"]) == ("pending", 1)
    await svc.run_processor()
    got = await boxes.responder.process()
    assert [(g.method, g.sequence) for g in got] == [("REQUEST", 1)]
    ics = icalendar.Calendar.from_ical(
        email.message_from_bytes(got[0].raw, policy=email.policy.default)
        .get_body(preferencelist=("calendar",))
        .get_payload(decode=True)  # type: ignore[union-attr]
    )
    assert str(ics.walk("VEVENT")[0]["SUMMARY"]) == "Spanisch A1 (neu)"
    await svc.run_processor()
    assert (await svc.invitation(inv["id"]))["status"] == "accepted"

    # delete → CANCEL SEQUENCE 2, no answer expected
    before = dt.datetime.now(dt.UTC)
    r = await svc.client.delete("/events/evt-1", headers=STAFF)
    assert r.json()["outcome"] == "deleted"
    await svc.run_processor()
    cancelled = await svc.invitation(inv["id"])
    assert (cancelled["status"], cancelled["method"], cancelled["sequence"]) == (
        "cancelled",
        "CANCEL",
        2,
    )
    got = await boxes.responder.process()
    assert [(g.method, g.sequence, g.replied) for g in got] == [("CANCEL", 2, None)]
    check_invitation(
        got[0],
        method="CANCEL",
        uid=inv["uid"],
        sequence=2,
        organizer=boxes.tech.address,
        attendee=boxes.room.address,
        starts=starts2,
        ends=ends2,
        summary="Spanisch A1 (neu)",
        sent_after=before,
    )

    # The history tells the whole story, in order.
    actions = [e["action"] for e in await svc.log(inv["id"])]
    assert actions == [
        "queued", "sent", "reply",
        "queued", "sent", "reply",
        "queued", "sent", "reply-duplicate",  # SEQUENCE 1 was accepted already
        "cancel-queued", "sent",
    ]  # fmt: skip
    # Every reply was moved out of the technical user's inbox into the processed folder.
    assert dovecot.stored_messages(boxes.tech.address) == []
    assert len(dovecot.stored_messages(boxes.tech.address, "edumesh-processed")) == 3


async def test_smtp_outage_retries_then_error_then_recycle(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    await svc.put_event("evt-down")
    inv = await svc.event_invitation("evt-down")
    smtp.stop()

    for attempt in range(1, 6):
        ex = await svc.run_processor()
        assert ex["status"] == "failed", ex  # its only item failed
        now = await svc.invitation(inv["id"])
        assert now["attempts"] == attempt
        assert now["status"] == ("error" if attempt == 5 else "pending"), now
        assert "connection refused" in now["last_error"], now["last_error"]
        items = await svc.items(ex["id"])
        assert [
            (i["record_key"], i["outcome"])
            for i in items
            if i["record_key"].startswith("invitation:")
        ] == [(f"invitation:{inv['id']}", "failed")]
    # In error nothing more is tried, even with the server back.
    smtp.start()
    await svc.run_processor()
    assert (await svc.invitation(inv["id"]))["attempts"] == 5
    assert dovecot.stored_messages(boxes.room.address) == []
    levels = [(e["action"], e["level"]) for e in await svc.log(inv["id"])]
    assert levels == [("queued", "info")] + [("send-failed", "warning")] * 4 + [("error", "error")]
    errored = await svc.call(
        "GET",
        "/invitations",
        headers=STAFF,
        params={"mailbox_id": boxes.mailbox_id, "status": "error"},
    )
    assert [i["id"] for i in errored] == [inv["id"]]

    # recycle → pending with a fresh count → sent → accepted
    out = await svc.call("POST", f"/mailboxes/{boxes.mailbox_id}/recycle", headers=STAFF)
    assert out == {"reset": 1, "invitation_ids": [inv["id"]]}
    reset = await svc.invitation(inv["id"])
    assert (reset["status"], reset["attempts"], reset["last_error"]) == ("pending", 0, None)
    await svc.run_processor()
    assert (await svc.invitation(inv["id"]))["status"] == "sent"
    got = await boxes.responder.process()
    assert [(g.method, g.sequence) for g in got] == [("REQUEST", 0)]
    await svc.run_processor()
    assert (await svc.invitation(inv["id"]))["status"] == "accepted"
    assert [e["action"] for e in await svc.log(inv["id"])][-3:] == ["reset", "sent", "reply"]


async def test_connection_check_reports_a_wrong_imap_password(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    ok = await svc.call("POST", f"/technical-users/{boxes.user_id}/check")
    assert ok["ok"] is True, ok
    assert ok["smtp"]["ok"] and ok["imap"]["ok"]
    assert "logged in" in ok["imap"]["message"]

    await svc.call(
        "PATCH", f"/technical-users/{boxes.user_id}", json={"imap": {"password": "wrong-pw-123"}}
    )
    bad = await svc.call("POST", f"/technical-users/{boxes.user_id}/check")
    assert bad["ok"] is False
    assert bad["smtp"]["ok"] is True  # the check tells which side is wrong
    assert bad["imap"]["ok"] is False
    message = bad["imap"]["message"]
    assert message.startswith("IMAP: login as ")
    assert boxes.tech.address in message
    assert "refused by the server" in message and "AUTHENTICATIONFAILED" in message
    assert "wrong-pw-123" not in str(bad)
    user = await svc.call("GET", f"/technical-users/{boxes.user_id}")
    assert user["last_check"]["imap"]["message"] == message
    assert user["imap"]["password"] == "set" and "wrong-pw-123" not in str(user)
    # A processor run with the broken login records the failure; no mail is touched.
    ex = await svc.run_processor()
    failed = [i for i in await svc.items(ex["id"]) if i["outcome"] == "failed"]
    assert any("refused by the server" in (i["error"] or "") for i in failed), failed


async def test_tls_options_and_clear_errors(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    # Without the test CA the self-signed certificates are not trusted: said so, per protocol.
    await svc.call("PATCH", f"/technical-users/{boxes.user_id}", json={"tls_ca_pem": None})
    untrusted = await svc.call("POST", f"/technical-users/{boxes.user_id}/check")
    assert not untrusted["smtp"]["ok"] and not untrusted["imap"]["ok"]
    for proto in ("smtp", "imap"):
        assert "TLS certificate of 127.0.0.1 is not trusted" in untrusted[proto]["message"]
    # Verification off: connects (what an operator may choose for an internal server).
    await svc.call("PATCH", f"/technical-users/{boxes.user_id}", json={"tls_verify": False})
    assert (await svc.call("POST", f"/technical-users/{boxes.user_id}/check"))["ok"] is True
    # Plain IMAP port and no STARTTLS for SMTP also work where allowed.
    await svc.call(
        "PATCH",
        f"/technical-users/{boxes.user_id}",
        json={
            "tls_verify": True,
            "tls_ca_pem": dovecot.ca_pem,
            "smtp": {"security": "none"},
            "imap": {"security": "none", "port": dovecot.imap_port},
        },
    )
    assert (await svc.call("POST", f"/technical-users/{boxes.user_id}/check"))["ok"] is True
    # Nothing listening: connection refused, with host and port.
    smtp.stop()
    down = await svc.call("POST", f"/technical-users/{boxes.user_id}/check")
    assert (
        down["smtp"]["message"]
        == f"SMTP: cannot connect to 127.0.0.1:{smtp.port}: connection refused"
    )
    assert down["imap"]["ok"] is True


async def test_stale_and_unrelated_mail_is_set_aside_never_lost(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    await svc.put_event("evt-stale")
    inv = await svc.event_invitation("evt-stale")
    await svc.run_processor()
    first = await boxes.responder.process()
    # Before the answer is read, the event moves: the answer to SEQUENCE 0 is now stale.
    await svc.put_event(
        "evt-stale",
        starts_at=future(days=8, hour=10).isoformat(),
        ends_at=future(days=8, hour=11).isoformat(),
    )
    await svc.run_processor()  # sends SEQUENCE 1 and reads the stale ACCEPTED of SEQUENCE 0
    mid = await svc.invitation(inv["id"])
    assert (mid["status"], mid["sequence"], mid["reply_partstat"]) == ("sent", 1, None)
    assert [e["action"] for e in await svc.log(inv["id"])][-1] == "reply-stale"

    # Unrelated mail, a reply for an unknown UID and a broken calendar land in the inbox too.
    dovecot.deliver(boxes.tech.address, b"Subject: Hallo\r\n\r\nNur ein Gruss.\r\n")
    foreign = boxes.responder.reply_message(
        icalendar.Event.from_ical(
            "BEGIN:VEVENT\r\nUID:not-ours@elsewhere\r\nSEQUENCE:0\r\n"
            f"ORGANIZER:mailto:{boxes.tech.address}\r\nEND:VEVENT\r\n"
        ),
        "ACCEPTED",
    )
    dovecot.deliver(boxes.tech.address, foreign.as_bytes())
    dovecot.deliver(
        boxes.tech.address,
        b"Subject: kaputt\r\nContent-Type: text/calendar; method=REPLY\r\n\r\nBEGIN:VCALENDAR\r\n",
    )
    second = await boxes.responder.process()
    assert [(g.method, g.sequence) for g in first + second] == [("REQUEST", 0), ("REQUEST", 1)]
    ex = await svc.run_processor()
    assert ex["status"] == "succeeded", ex
    done = await svc.invitation(inv["id"])
    assert (done["status"], done["reply_sequence"]) == ("accepted", 1)

    tech = boxes.tech.address
    assert dovecot.stored_messages(tech) == []
    processed = dovecot.stored_messages(tech, "edumesh-processed")
    ignored = dovecot.stored_messages(tech, "edumesh-ignored")
    assert len(processed) == 1 and len(ignored) == 4  # stale reply + 3 unrelated: all kept
    subjects = sorted(str(email.message_from_bytes(m)["Subject"]) for m in ignored)
    assert "Hallo" in subjects and "kaputt" in subjects
    mail_log = await svc.call("GET", f"/technical-users/{boxes.user_id}/mail-log")
    reasons = " | ".join(e["message"] for e in mail_log if e["action"] == "mail-ignored")
    assert "no iTIP calendar in this mail" in reasons
    assert "no invitation has UID not-ours@elsewhere" in reasons


async def test_initialise_with_preview_and_blocks(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    # Events exist before the room gets its mailbox.
    await svc.call("PUT", "/rooms/r-7", json={"name": "Raum 7"})
    await svc.put_event(
        "past",
        room_id="r-7",
        starts_at=(dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).isoformat(),
        ends_at=(dt.datetime.now(dt.UTC) - dt.timedelta(days=2, hours=-1)).isoformat(),
    )
    await svc.put_event("future-1", room_id="r-7")
    await svc.put_event(
        "future-2",
        room_id="r-7",
        starts_at=future(days=20, hour=8).isoformat(),
        ends_at=future(days=20, hour=9).isoformat(),
    )
    await svc.put_event("block-1", room_id="r-7", kind="block", title="Renovierung")
    await svc.put_event("gone", room_id="r-7")
    await svc.client.delete("/events/gone", headers=STAFF)
    boxes = await configure(svc, dovecot, smtp, room_id="r-7")
    # Creating the mailbox invites nothing by itself.
    assert await svc.call("GET", "/invitations", headers=STAFF) == []

    preview = await svc.call("GET", f"/mailboxes/{boxes.mailbox_id}/initialisation", headers=STAFF)
    assert [p["event_id"] for p in preview] == ["future-1", "future-2"]
    await svc.call("PATCH", f"/mailboxes/{boxes.mailbox_id}", json={"include_blocks": True})
    preview = await svc.call("GET", f"/mailboxes/{boxes.mailbox_id}/initialisation", headers=STAFF)
    assert sorted(p["event_id"] for p in preview) == ["block-1", "future-1", "future-2"]

    out = await svc.call(
        "POST",
        f"/mailboxes/{boxes.mailbox_id}/initialisation",
        headers=STAFF,
        json={"event_ids": ["future-1", "block-1", "past"]},
    )
    assert out["created"] == 2 and out["not_eligible"] == ["past"]
    preview = await svc.call("GET", f"/mailboxes/{boxes.mailbox_id}/initialisation", headers=STAFF)
    assert [p["event_id"] for p in preview] == ["future-2"]
    await svc.run_processor()
    got = await boxes.responder.process()
    summaries = sorted(
        str(
            icalendar.Calendar.from_ical(
                email.message_from_bytes(g.raw, policy=email.policy.default)
                .get_body(preferencelist=("calendar",))
                .get_payload(decode=True)  # type: ignore[union-attr]
            ).walk("VEVENT")[0]["SUMMARY"]
        )
        for g in got
    )
    assert summaries == ["Raumsperre: Renovierung", "Spanisch A1"]
    ex = await svc.run_processor()
    mailbox = await svc.call("GET", f"/mailboxes/{boxes.mailbox_id}", headers=STAFF)
    assert mailbox["invitations"] == {"accepted": 2}, (ex, await svc.items(ex["id"]))

    # Excluding blocks again cancels the block in the room's calendar.
    await svc.call("PATCH", f"/mailboxes/{boxes.mailbox_id}", json={"include_blocks": False})
    await svc.run_processor()
    got = await boxes.responder.process()
    assert [(g.method, g.sequence) for g in got] == [("CANCEL", 1)]


async def test_dry_run_sends_and_moves_nothing(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    await svc.put_event("evt-dry")
    inv = await svc.event_invitation("evt-dry")
    ex = await svc.run_processor(dry_run=True)
    items = await svc.items(ex["id"])
    assert [(i["record_key"], i["action"], i["outcome"]) for i in items] == [
        (f"invitation:{inv['id']}", "would send REQUEST SEQUENCE 0", "skipped")
    ]
    assert (await svc.invitation(inv["id"]))["status"] == "pending"
    assert dovecot.stored_messages(boxes.room.address) == []


def _ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rows]


async def test_sessions_are_reused_a_bounded_number_of_times(
    tmp_path: Path, dovecot: DovecotServer, smtp: SmtpRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 invitations over 2 parallel sessions of at most 3 messages each: 4 SMTP sessions
    (3 + 2 per lane), every invitation delivered once."""
    from mailbox_invites_service import processor

    opened: list[str] = []
    real = processor.smtp_session

    def counting(account: Any) -> Any:
        opened.append(account.name)
        return real(account)

    monkeypatch.setattr(processor, "smtp_session", counting)
    app = create_app(make_settings(tmp_path, smtp_sessions=2, smtp_messages_per_session=3))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://mi"
        ) as client,
    ):
        api = Api(client, app.state.runtime)
        boxes = await configure(api, dovecot, smtp)
        for n in range(10):
            await api.put_event(f"bulk-{n}", title=f"Kurs {n}")
        ex = await api.run_processor()
        assert ex["status"] == "succeeded" and ex["counts"]["succeeded"] == 10, ex
    assert len(opened) == 4, opened
    got = await boxes.responder.process()
    assert len(got) == 10 and len({g.uid for g in got}) == 10
