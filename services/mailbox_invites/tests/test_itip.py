"""The iTIP/iMIP building blocks without servers: VTIMEZONE, SEQUENCE rules, reply parsing."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
from mailbox_invites_service import itip
from mailbox_invites_service.service import Invites

BERLIN = ZoneInfo("Europe/Berlin")


def content(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kind": "booking",
        "title": "Töpfern für Fortgeschrittene",
        "description": "Bitte Schürze mitbringen; Ton: 2,50 €",
        "booked_by": "Fachbereich Kunst",
        "starts_at": dt.datetime(2027, 3, 28, 1, 30, tzinfo=dt.UTC),  # 03:30 CEST, DST day
        "ends_at": dt.datetime(2027, 3, 28, 4, 0, tzinfo=dt.UTC),
        "room_id": "r-9",
        "room_name": "Werkraum 9",
    }
    values.update(overrides)
    return itip.snapshot(**values)


def build(method: itip.Method = "REQUEST", **overrides: Any) -> icalendar.Calendar:
    return itip.build_calendar(
        method=method,
        uid="abc@test",
        sequence=3,
        content=content(**overrides),
        organizer=itip.Party("tech@vhs.test", "Raumbuchung"),
        attendee=itip.Party("werkraum9@rooms.test", "Werkraum 9"),
        dtstamp=dt.datetime(2027, 1, 5, 12, 0, tzinfo=dt.UTC),
        tzid="Europe/Berlin",
        prodid="-//edumesh//test//DE",
    )


def onsets(vtz: icalendar.Timezone) -> list[tuple[dt.datetime, dt.timedelta]]:
    """(UTC instant, offset after) of every observance onset, read strictly by RFC 5545 3.6.5:
    DTSTART/RDATE are wall times in the offset *before* the change (TZOFFSETFROM)."""
    out: list[tuple[dt.datetime, dt.timedelta]] = []
    for sub in vtz.subcomponents:
        before, after = sub["TZOFFSETFROM"].td, sub["TZOFFSETTO"].td
        starts = [sub["DTSTART"].dt]
        rdates = sub.get("RDATE", [])
        for rd in rdates if isinstance(rdates, list) else [rdates]:
            starts += [p.dt for p in rd.dts]
        out += [(s - before, after) for s in starts]
    return sorted(out)


def strict_offset(vtz: icalendar.Timezone, local: dt.datetime) -> dt.timedelta:
    """The UTC offset a strict reader gives a wall time under ``vtz``."""
    changes = onsets(vtz)
    for offset in {o for _, o in changes}:
        utc = local - offset
        in_force = [o for t, o in changes if t <= utc]
        if in_force and in_force[-1] == offset:
            return offset
    raise AssertionError(f"{local} not covered")


def test_vtimezone_matches_zoneinfo_at_every_hour_around_both_changes() -> None:
    cal = icalendar.Calendar.from_ical(build().to_ical())  # as a recipient reads it
    (vtz,) = cal.walk("VTIMEZONE")
    hours = []
    for day in (dt.datetime(2027, 3, 27), dt.datetime(2027, 10, 30)):
        hours += [day + dt.timedelta(minutes=30 * i) for i in range(4 * 24)]
    for local in hours:
        aware = local.replace(tzinfo=BERLIN)
        if aware.replace(tzinfo=None) != aware.astimezone(dt.UTC).astimezone(BERLIN).replace(
            tzinfo=None
        ):
            continue  # 02:00-03:00 on the spring day does not exist
        if local.month == 10 and local.day == 31 and 2 <= local.hour < 3:
            continue  # ambiguous autumn hour (fold): either reading is legitimate
        assert strict_offset(vtz, local) == aware.utcoffset(), local


def test_library_vtimezone_would_be_an_hour_off_for_strict_readers() -> None:
    """Why itip builds its own VTIMEZONE: icalendar.Timezone.from_tzid writes the spring onset
    as 03:00 with TZOFFSETFROM +01:00, i.e. 02:00 UTC, while the clocks change at 01:00 UTC."""
    change = dt.datetime(2027, 3, 28, 1, 0)  # UTC, from zoneinfo:
    assert dt.datetime(2027, 3, 28, 0, 59, 59, tzinfo=dt.UTC).astimezone(BERLIN).dst() == (
        dt.timedelta(0)
    )
    assert dt.datetime(2027, 3, 28, 1, 0, 0, tzinfo=dt.UTC).astimezone(BERLIN).dst()
    lib = icalendar.Timezone.from_tzid(
        "Europe/Berlin", first_date=dt.date(2027, 1, 1), last_date=dt.date(2028, 1, 1)
    )
    summer = dt.timedelta(hours=2)
    assert (change + dt.timedelta(hours=1), summer) in onsets(lib)  # the bug we avoid
    (ours,) = icalendar.Calendar.from_ical(build().to_ical()).walk("VTIMEZONE")
    assert (change, summer) in onsets(ours)


def test_request_fields() -> None:
    cal = build()
    assert str(cal["METHOD"]) == "REQUEST"
    (ev,) = cal.walk("VEVENT")
    assert str(ev["UID"]) == "abc@test" and int(ev["SEQUENCE"]) == 3
    assert ev["DTSTART"].params["TZID"] == "Europe/Berlin"
    assert ev["DTSTART"].dt == dt.datetime(2027, 3, 28, 3, 30, tzinfo=BERLIN)
    assert ev["DTEND"].dt == dt.datetime(2027, 3, 28, 6, 0, tzinfo=BERLIN)
    assert ev["DTSTAMP"].dt == dt.datetime(2027, 1, 5, 12, 0, tzinfo=dt.UTC)
    assert str(ev["SUMMARY"]) == "Töpfern für Fortgeschrittene"
    assert str(ev["LOCATION"]) == "Werkraum 9"
    assert "Gebucht von: Fachbereich Kunst" in str(ev["DESCRIPTION"])
    assert "So, 28.03.2027 03:30 (Europe/Berlin)" in str(ev["DESCRIPTION"])
    att = ev["ATTENDEE"]
    assert dict(att.params) == {
        "CN": "Werkraum 9",
        "CUTYPE": "ROOM",
        "ROLE": "REQ-PARTICIPANT",
        "PARTSTAT": "NEEDS-ACTION",
        "RSVP": "TRUE",
    }
    assert str(ev["ORGANIZER"]) == "mailto:tech@vhs.test"
    # A block is labelled as such in the room's calendar.
    (block,) = build(kind="block").walk("VEVENT")
    assert str(block["SUMMARY"]).startswith("Raumsperre: ")


def test_cancel_fields() -> None:
    cal = build("CANCEL")
    assert str(cal["METHOD"]) == "CANCEL"
    (ev,) = cal.walk("VEVENT")
    assert str(ev["STATUS"]) == "CANCELLED"
    assert "RSVP" not in ev["ATTENDEE"].params


def test_message_structure_and_subjects() -> None:
    cal = build()
    msg = itip.build_message(
        calendar=cal,
        method="REQUEST",
        content=content(),
        organizer=itip.Party("tech@vhs.test", "Raumbuchung"),
        attendee=itip.Party("werkraum9@rooms.test", "Werkraum 9"),
        tzid="Europe/Berlin",
        msgid_domain="mi.test",
        update=True,
        now=dt.datetime(2027, 1, 5, 12, 0, tzinfo=dt.UTC),
    )
    assert str(msg["Subject"]) == "Aktualisiert: Töpfern für Fortgeschrittene (28.03.2027 03:30)"
    assert str(msg["Message-ID"]).endswith("@mi.test>")
    raw = msg.as_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    parsed = itip.parse_mail(raw)
    assert [(e.method, e.uid, e.sequence) for e in parsed.events] == [("REQUEST", "abc@test", 3)]
    # The non-ASCII subject is RFC 2047 Q-encoded and reads back exactly (a strict reader).
    assert b"Subject: =?utf-8?q?Aktualisiert=3A_T=C3=B6pfern" in raw
    strict = email.message_from_bytes(raw, policy=email.policy.default)
    assert strict["Subject"] == "Aktualisiert: Töpfern für Fortgeschrittene (28.03.2027 03:30)"


@pytest.mark.parametrize("method", ["REQUEST", "CANCEL"])
def test_to_ical_with_the_cached_vtimezone_is_byte_identical(method: itip.Method) -> None:
    long = "Überlänge " * 30 + "\nzweite Zeile; mit, Sonderzeichen"
    for cal in (build(method), build(method, description=long, title="Ä" * 90)):
        assert itip.to_ical(cal) == cal.to_ical()
    # Another year: another (cached) VTIMEZONE, also identical.
    later = build(
        method,
        starts_at=dt.datetime(2031, 7, 1, 8, tzinfo=dt.UTC),
        ends_at=dt.datetime(2031, 7, 1, 9, tzinfo=dt.UTC),
    )
    assert itip.to_ical(later) == later.to_ical()
    assert b"TZID:Europe/Berlin" in itip.to_ical(later)


@pytest.mark.parametrize(
    ("change", "significant"),
    [
        ({"title": "Neu"}, False),
        ({"description": "anders"}, False),
        ({"room_name": "Werkraum Neun"}, False),
        ({"starts_at": dt.datetime(2027, 3, 28, 1, 0, tzinfo=dt.UTC)}, True),
        ({"ends_at": dt.datetime(2027, 3, 28, 5, 0, tzinfo=dt.UTC)}, True),
    ],
)
def test_significance(change: dict[str, Any], significant: bool) -> None:
    assert itip.is_significant(content(), content(**change)) is significant
    assert itip.is_significant(None, content(**change)) is False


def inv(**values: Any) -> dict[str, Any]:
    base = {
        "sequence": 0,
        "sent_sequence": None,
        "sent_method": None,
        "sent_snapshot": None,
        "reply_sequence": None,
        "reply_partstat": None,
    }
    base.update(values)
    return base


def test_sequence_rules() -> None:
    old, moved = content(), content(starts_at=dt.datetime(2027, 3, 28, 0, 0, tzinfo=dt.UTC))
    renamed = content(title="Neu")
    # Nothing delivered yet: the first number stands, whatever changes.
    assert Invites.next_sequence(inv(sequence=0), moved, "REQUEST") == 0
    delivered = inv(sequence=2, sent_sequence=2, sent_method="REQUEST", sent_snapshot=old)
    assert Invites.next_sequence(delivered, moved, "REQUEST") == 3
    assert Invites.next_sequence(delivered, renamed, "REQUEST") == 2
    assert Invites.next_sequence(delivered, old, "CANCEL") == 3
    # Re-invited after a CANCEL: higher than the CANCEL.
    cancelled = inv(sequence=3, sent_sequence=3, sent_method="CANCEL", sent_snapshot=old)
    assert Invites.next_sequence(cancelled, old, "REQUEST") == 4
    # An answer to the same SEQUENCE still holds after a minor re-send.
    answered = inv(reply_sequence=2, reply_partstat="TENTATIVE")
    assert Invites.delivered_status(answered, 2) == "tentative"
    assert Invites.delivered_status(answered, 3) == "sent"


def reply_mail(ics: str, *, ctype: str = "text/calendar; method=REPLY") -> bytes:
    return (
        "From: room@rooms.test\r\nTo: tech@vhs.test\r\nSubject: Angenommen\r\n"
        f"Message-ID: <r1@rooms.test>\r\nContent-Type: {ctype}\r\n\r\n{ics}"
    ).encode()


REPLY = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\n"
    "UID:abc@test\r\nSEQUENCE:4\r\nDTSTAMP:20270105T120000Z\r\n"
    "ATTENDEE;PARTSTAT=TENTATIVE:mailto:Room@Rooms.test\r\n"
    "ATTENDEE;PARTSTAT=ACCEPTED:mailto:someone@else.test\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_parse_reply() -> None:
    parsed = itip.parse_mail(reply_mail(REPLY))
    assert parsed.message_id == "<r1@rooms.test>" and parsed.problems == []
    (ev,) = parsed.events
    assert (ev.method, ev.uid, ev.sequence) == ("REPLY", "abc@test", 4)
    assert ev.dtstamp == dt.datetime(2027, 1, 5, 12, tzinfo=dt.UTC)
    assert ev.partstat_of("room@rooms.test") == "TENTATIVE"  # addresses compare caselessly
    assert ev.partstat_of("nobody@rooms.test") is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (reply_mail("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n"), "unreadable calendar part"),
        (reply_mail(REPLY.replace("UID:abc@test\r\n", "")), "VEVENT without UID"),
        (reply_mail(REPLY.replace("SEQUENCE:4", "SEQUENCE:vier")), "SEQUENCE is not an integer"),
        (b"\xff\xfe garbage without headers", None),
        (reply_mail(REPLY, ctype="text/plain"), None),
    ],
)
def test_parse_never_raises(raw: bytes, problem: str | None) -> None:
    parsed = itip.parse_mail(raw)
    assert parsed.events == []
    if problem:
        assert any(problem in p for p in parsed.problems), parsed.problems
