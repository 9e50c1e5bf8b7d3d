"""iTIP (RFC 5546) over iMIP (RFC 6047): the invitation mails and the parsing of replies.

Built on the ``icalendar`` library and the standard ``email`` package:

- :func:`build_calendar`: a VCALENDAR with METHOD REQUEST or CANCEL, a VTIMEZONE for the
  configured zone and one VEVENT (stable UID, SEQUENCE, DTSTAMP, DTSTART/DTEND with TZID,
  ORGANIZER = technical user, ATTENDEE = room mailbox with CUTYPE=ROOM).
- :func:`to_ical`: ``calendar.to_ical()``, byte for byte, with each shared VTIMEZONE serialized
  once (it is most of the text, and the same in every invitation).
- :func:`build_message`: the mail: ``multipart/alternative`` with a German text/plain summary and
  the ``text/calendar; method=...`` part (the method parameter equals METHOD, RFC 6047 2.4).
- :func:`parse_mail`: the iTIP parts of a received mail (METHOD, UID, SEQUENCE, DTSTAMP, each
  ATTENDEE's PARTSTAT), tolerant of anything else in it.

The VTIMEZONE is derived from the zoneinfo database here rather than taken from
``icalendar.Timezone.from_tzid``: that one writes each DAYLIGHT onset in the *new* offset's wall
time (03:00 for Europe/Berlin), while RFC 5545 3.6.5 reads DTSTART with TZOFFSETFROM, which puts
the change an hour late for strict readers (icalendar issue #252 and its relatives in other
libraries). This module does no IO and keeps no state.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from email import encoders, policy
from email.charset import QP, Charset
from email.header import Header, decode_header, make_header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.parser import BytesParser
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any, Literal
from zoneinfo import ZoneInfo

import icalendar

Method = Literal["REQUEST", "CANCEL"]
PARTSTATS = frozenset({"ACCEPTED", "DECLINED", "TENTATIVE"})

# Changes of these fields need a new answer from the room mailbox: SEQUENCE goes up (RFC 5546
# 2.1.4 lists start and end among the "significant" properties). Title, description, who booked
# it and the room's display name are re-sent with the same SEQUENCE.
SIGNIFICANT_FIELDS = ("starts_at", "ends_at")

_WEEKDAYS = ("Mo", "Di", "Mi", "Do", "Fr", "Sa", "So")


@dataclass(frozen=True)
class Party:
    email: str
    name: str | None = None


def snapshot(
    *,
    kind: str,
    title: str,
    description: str | None,
    booked_by: str | None,
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    room_id: str,
    room_name: str,
) -> dict[str, Any]:
    """The JSON-able content of one version of an invitation."""
    return {
        "kind": kind,
        "title": title,
        "description": description,
        "booked_by": booked_by,
        "starts_at": starts_at.astimezone(dt.UTC).isoformat(),
        "ends_at": ends_at.astimezone(dt.UTC).isoformat(),
        "room_id": room_id,
        "room_name": room_name,
    }


def is_significant(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether going from ``old`` to ``new`` needs a higher SEQUENCE."""
    if old is None:
        return False
    return any(old.get(f) != new.get(f) for f in SIGNIFICANT_FIELDS)


def _instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


# --------------------------------------------------------------------------- VTIMEZONE


@functools.lru_cache(maxsize=64)
def _transitions(tzid: str, first_year: int, last_year: int) -> tuple[tuple[Any, ...], ...]:
    """(utc instant, offset before, offset after, name after, is_dst after) for every change
    of ``tzid``'s UTC offset from 1 January ``first_year`` to 31 December ``last_year``."""
    zone = ZoneInfo(tzid)

    def offset(ts: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(ts, dt.UTC).astimezone(zone).utcoffset()

    start = int(dt.datetime(first_year, 1, 1, tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime(last_year + 1, 1, 1, tzinfo=dt.UTC).timestamp())
    out = []
    step = 6 * 3600
    t = start
    before = offset(t)
    while t < end:
        nxt = t + step
        after = offset(nxt)
        if after != before:
            lo, hi = t, nxt  # offset(lo) == before, offset(hi) == after: bisect to the second
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == before:
                    lo = mid
                else:
                    hi = mid
            local = dt.datetime.fromtimestamp(hi, dt.UTC).astimezone(zone)
            out.append((local.astimezone(dt.UTC), before, after, local.tzname(), bool(local.dst())))
            before = after
        t = nxt
    return tuple(out)


def vtimezone(tzid: str, first: dt.datetime, last: dt.datetime) -> icalendar.Timezone:
    """A VTIMEZONE for ``tzid`` that covers ``first`` .. ``last`` (whole years, one either side).

    Each observance's DTSTART/RDATE is the onset in the wall time *before* the change, so that
    DTSTART + TZOFFSETFROM is the UTC instant of the change (RFC 5545 3.6.5). The component is
    shared between calendars (cached): callers must not modify it."""
    return _vtimezone(tzid, first.year - 1, last.year + 1)


@functools.lru_cache(maxsize=64)
def _vtimezone(tzid: str, first_year: int, last_year: int) -> icalendar.Timezone:
    zone = ZoneInfo(tzid)
    tz = icalendar.Timezone()
    tz.add("tzid", tzid)
    begin = dt.datetime(first_year, 1, 1, tzinfo=dt.UTC).astimezone(zone)
    offset = begin.utcoffset()
    assert offset is not None
    # The observance in force at the start of the range, so every covered instant has one.
    initial: icalendar.Component = (
        icalendar.TimezoneDaylight() if begin.dst() else icalendar.TimezoneStandard()
    )
    initial.add("dtstart", begin.replace(tzinfo=None))
    initial.add("tzoffsetfrom", offset)
    initial.add("tzoffsetto", offset)
    initial.add("tzname", begin.tzname())
    tz.add_component(initial)
    groups: dict[tuple[Any, ...], list[dt.datetime]] = {}
    for instant, before, after, name, is_dst in _transitions(tzid, first_year, last_year):
        onset = (instant + before).replace(tzinfo=None)
        groups.setdefault((before, after, name, is_dst), []).append(onset)
    for (before, after, name, is_dst), onsets in groups.items():
        sub: icalendar.Component = (
            icalendar.TimezoneDaylight() if is_dst else icalendar.TimezoneStandard()
        )
        sub.add("dtstart", onsets[0])
        if len(onsets) > 1:
            sub.add("rdate", onsets[1:])
        sub.add("tzoffsetfrom", before)
        sub.add("tzoffsetto", after)
        sub.add("tzname", name)
        tz.add_component(sub)
    setattr(tz, _TZ_ICAL, tz.to_ical())
    return tz


_TZ_ICAL = "_edumesh_ical"  # where a cached VTIMEZONE keeps its serialized form


def to_ical(calendar: icalendar.Calendar) -> bytes:
    """``calendar.to_ical()`` (same bytes), where a VTIMEZONE from :func:`vtimezone` (cached and
    shared, never modified) is serialized once and reused."""
    head = [
        calendar.content_line(name, value).to_ical()
        for name, value in calendar.property_items(recursive=False)
    ]
    parts = [b"\r\n".join(head[:-1]), b"\r\n"]
    for component in calendar.subcomponents:
        cached = getattr(component, _TZ_ICAL, None)
        parts.append(cached if cached is not None else component.to_ical())
    parts += [head[-1], b"\r\n"]
    return b"".join(parts)


# --------------------------------------------------------------------------- building


def _address(party: Party, **params: str) -> icalendar.vCalAddress:
    address = icalendar.vCalAddress(f"mailto:{party.email}")
    if party.name:
        address.params["CN"] = party.name
    for key, value in params.items():
        address.params[key.replace("_", "-").upper()] = value
    return address


def summary_of(content: Mapping[str, Any]) -> str:
    title = str(content["title"])
    return f"Raumsperre: {title}" if content.get("kind") == "block" else title


def build_calendar(
    *,
    method: Method,
    uid: str,
    sequence: int,
    content: Mapping[str, Any],
    organizer: Party,
    attendee: Party,
    dtstamp: dt.datetime,
    tzid: str,
    prodid: str,
) -> icalendar.Calendar:
    """The iTIP object of one invitation version (see the module docstring)."""
    zone = ZoneInfo(tzid)
    starts = _instant(content["starts_at"]).astimezone(zone)
    ends = _instant(content["ends_at"]).astimezone(zone)
    cal = icalendar.Calendar()
    cal.add("prodid", prodid)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", method)
    cal.add_component(vtimezone(tzid, starts, ends))
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("sequence", sequence)
    event.add("dtstamp", dtstamp.astimezone(dt.UTC))
    event.add("dtstart", starts)
    event.add("dtend", ends)
    event.add("summary", summary_of(content))
    description = describe(content, tzid)
    event.add("description", description)
    event.add("location", content.get("room_name") or content.get("room_id"))
    event.add("categories", ["Raumsperre" if content.get("kind") == "block" else "Raumbuchung"])
    event.add("transp", "OPAQUE")
    event.add("class", "PUBLIC")
    event.add("organizer", _address(organizer))
    if method == "REQUEST":
        event.add("status", "CONFIRMED")
        event.add(
            "attendee",
            _address(
                attendee,
                cutype="ROOM",
                role="REQ-PARTICIPANT",
                partstat="NEEDS-ACTION",
                rsvp="TRUE",
            ),
        )
    else:
        event.add("status", "CANCELLED")
        event.add("attendee", _address(attendee, cutype="ROOM", role="REQ-PARTICIPANT"))
    cal.add_component(event)
    return cal


def _when(value: dt.datetime) -> str:
    return f"{_WEEKDAYS[value.weekday()]}, {value:%d.%m.%Y %H:%M}"


def describe(content: Mapping[str, Any], tzid: str) -> str:
    """The plain-text description of the event (German, like the booking system's UI)."""
    zone = ZoneInfo(tzid)
    starts = _instant(content["starts_at"]).astimezone(zone)
    ends = _instant(content["ends_at"]).astimezone(zone)
    lines = [
        ("Raumsperre" if content.get("kind") == "block" else "Raumbuchung")
        + f": {content['title']}",
        f"Raum: {content.get('room_name') or content.get('room_id')}",
        f"Beginn: {_when(starts)} ({tzid})",
        f"Ende: {_when(ends)} ({tzid})",
    ]
    if content.get("booked_by"):
        lines.append(f"Gebucht von: {content['booked_by']}")
    if content.get("description"):
        lines += ["", str(content["description"])]
    return "\n".join(lines)


def subject_of(method: Method, content: Mapping[str, Any], tzid: str, *, update: bool) -> str:
    starts = _instant(content["starts_at"]).astimezone(ZoneInfo(tzid))
    prefix = "Abgesagt" if method == "CANCEL" else ("Aktualisiert" if update else "Einladung")
    return f"{prefix}: {summary_of(content)} ({starts:%d.%m.%Y %H:%M})"


# compat32 MIME classes with CRLF: the same standard-library package, several times cheaper to
# build and flatten than EmailMessage with the modern header registry (it matters per 1,000).
SMTP_COMPAT = policy.compat32.clone(linesep="\r\n")
_QP_UTF8 = Charset("utf-8")
_QP_UTF8.body_encoding = QP
# Headers in RFC 2047 "Q" encoding, chosen up front: the default for UTF-8 ("shortest") encodes
# every header both ways to compare the lengths, most of the cost of building a mail.
_Q_UTF8 = Charset("utf-8")
_Q_UTF8.header_encoding = QP


def _encoded(value: str) -> str | Header:
    """A header value, RFC 2047-encoded (and folded by the Header) when it is not ASCII."""
    return value if value.isascii() else Header(value, _Q_UTF8)


def build_message(
    *,
    calendar: icalendar.Calendar,
    method: Method,
    content: Mapping[str, Any],
    organizer: Party,
    attendee: Party,
    tzid: str,
    msgid_domain: str,
    update: bool,
    now: dt.datetime,
    ics: bytes | None = None,
) -> Message:
    """The iMIP mail for ``calendar``: multipart/alternative, text/plain + text/calendar, with
    CRLF line ends throughout (RFC 5322, RFC 5545). ``ics`` is ``calendar.to_ical()`` when the
    caller has it already."""
    # A boundary of our own: "=_" occurs in neither base64 nor quoted-printable text, so the
    # generator need not search the parts for it (a fresh regex per message otherwise).
    msg = MIMEMultipart(
        "alternative", boundary=f"=_edumesh_{secrets.token_hex(12)}", policy=SMTP_COMPAT
    )
    msg["From"] = formataddr((organizer.name or "", organizer.email), charset=_Q_UTF8)
    msg["To"] = formataddr((attendee.name or "", attendee.email), charset=_Q_UTF8)
    # compat32 messages take Header values (typeshed only knows str).
    msg["Subject"] = _encoded(subject_of(method, content, tzid, update=update))  # type: ignore[assignment]
    msg["Date"] = format_datetime(now.astimezone(dt.UTC))
    msg["Message-ID"] = make_msgid(domain=msgid_domain)
    text = MIMENonMultipart("text", "plain")
    text.set_payload(describe(content, tzid) + "\n", charset=_QP_UTF8)
    msg.attach(text)
    # The calendar as bytes (base64), so its CRLF line ends and folding arrive unchanged.
    part = MIMEBase("text", "calendar", method=method, charset="UTF-8")
    part.set_payload(ics if ics is not None else to_ical(calendar))
    encoders.encode_base64(part)
    msg.attach(part)
    return msg


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class AttendeeReply:
    email: str
    partstat: str | None


@dataclass(frozen=True)
class ItipEvent:
    method: str
    uid: str
    sequence: int
    dtstamp: dt.datetime | None
    attendees: tuple[AttendeeReply, ...]

    def partstat_of(self, email: str) -> str | None:
        for a in self.attendees:
            if a.email.lower() == email.lower():
                return a.partstat
        return None


@dataclass
class ParsedMail:
    message_id: str | None
    subject: str | None
    sender: str | None
    events: list[ItipEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def methods(self) -> set[str]:
        return {e.method for e in self.events}


def _mailto(value: Any) -> str:
    text = str(value)
    return text[7:] if text.lower().startswith("mailto:") else text


def _calendar_parts(msg: Message) -> list[bytes]:
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        filename = (part.get_filename() or "").lower()
        if ctype in ("text/calendar", "application/ics") or filename.endswith(".ics"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                parts.append(payload)
    return parts


def parse_mail(raw: bytes) -> ParsedMail:
    """The iTIP content of one received mail; never raises for malformed input."""
    msg = BytesParser(policy=policy.compat32).parsebytes(raw)
    parsed = ParsedMail(
        message_id=_header(msg, "Message-ID"),
        subject=_header(msg, "Subject"),
        sender=_header(msg, "From"),
    )
    for payload in _calendar_parts(msg):
        try:
            cal = icalendar.Calendar.from_ical(payload)
        except Exception as exc:  # any parse failure: set the mail aside, never crash
            parsed.problems.append(f"unreadable calendar part: {type(exc).__name__}")
            continue
        method = str(cal.get("METHOD", "")).upper()
        for vevent in cal.walk("VEVENT"):
            uid = vevent.get("UID")
            if uid is None:
                parsed.problems.append("VEVENT without UID")
                continue
            try:
                sequence = int(vevent.get("SEQUENCE", 0))
            except (TypeError, ValueError):
                parsed.problems.append("SEQUENCE is not an integer")
                continue
            stamp = vevent.get("DTSTAMP")
            dtstamp = getattr(stamp, "dt", None)
            if isinstance(dtstamp, dt.datetime) and dtstamp.tzinfo is None:
                dtstamp = dtstamp.replace(tzinfo=dt.UTC)
            raw_attendees = vevent.get("ATTENDEE", [])
            if not isinstance(raw_attendees, list):
                raw_attendees = [raw_attendees]
            attendees = tuple(
                AttendeeReply(
                    email=_mailto(a),
                    partstat=str(a.params["PARTSTAT"]).upper() if "PARTSTAT" in a.params else None,
                )
                for a in raw_attendees
            )
            parsed.events.append(
                ItipEvent(
                    method=method,
                    uid=str(uid),
                    sequence=sequence,
                    dtstamp=dtstamp if isinstance(dtstamp, dt.datetime) else None,
                    attendees=attendees,
                )
            )
    return parsed


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    try:
        return str(make_header(decode_header(str(value))))[:500]
    except Exception:
        return str(value)[:500]
