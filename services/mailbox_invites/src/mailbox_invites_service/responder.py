"""A room mailbox that answers invitations by itself, as an Exchange resource mailbox does.

:class:`AutoAcceptResponder` logs in to a room mailbox over IMAP, reads the invitations that
arrived since its last pass (UNSEEN; reading marks them seen, nothing is moved or deleted, so
tests can inspect every message afterwards), and answers each iTIP REQUEST with an iTIP REPLY
(RFC 5546 3.2.3) sent over SMTP to the ORGANIZER: PARTSTAT ACCEPTED by default, or whatever
``decide`` returns. CANCELs are read and recorded, never answered (RFC 5546: no reply to a
CANCEL).

It plays the groupware side in the tests, the benchmark and demos; the service never uses it.
It is written directly on ``icalendar``, ``email``, aioimaplib and aiosmtplib and shares no code
with the service's own iTIP module, so a test that goes through it checks the service's mails
independently.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email import encoders, policy
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.utils import make_msgid

import aioimaplib
import aiosmtplib
import icalendar

_FETCH_UID = re.compile(rb"UID (\d+)")
# RFC 2047 "Q" headers, chosen up front (UTF-8's default "shortest" encodes each header twice).
_Q_UTF8 = Charset("utf-8")
_Q_UTF8.header_encoding = QP


@dataclass(frozen=True)
class Received:
    """One iTIP message the room mailbox got."""

    imap_uid: int
    method: str
    uid: str
    sequence: int
    organizer: str
    raw: bytes
    replied: str | None  # the PARTSTAT sent back, None when not answered


@dataclass
class AutoAcceptResponder:
    address: str
    password: str
    imap_port: int
    smtp_port: int
    host: str = "127.0.0.1"
    decide: Callable[[icalendar.Component], str | None] = field(default=lambda _event: "ACCEPTED")
    batch: int = 200

    async def process(self) -> list[Received]:
        """Answer everything new in the inbox; returns what was read, oldest first."""
        imap = aioimaplib.IMAP4(host=self.host, port=self.imap_port, timeout=30)
        await imap.wait_hello_from_server()
        res = await imap.login(self.address, self.password)
        if res.result != "OK":
            raise RuntimeError(f"responder login failed: {res.lines}")
        try:
            await imap.select("INBOX")
            found = await imap.uid_search("UNSEEN", charset=None)
            uids = [int(x) for x in bytes(found.lines[0]).split() if x.isdigit()]
            messages: list[tuple[int, bytes]] = []
            for start in range(0, len(uids), self.batch):
                chunk = ",".join(map(str, uids[start : start + self.batch]))
                # BODY[] (not PEEK): reading marks the message \Seen, the next pass skips it.
                res = await imap.uid("fetch", chunk, "(UID BODY[])")
                pending: int | None = None
                for line in res.lines:
                    if isinstance(line, bytearray):
                        if pending is not None:
                            messages.append((pending, bytes(line)))
                        pending = None
                    else:
                        m = _FETCH_UID.search(bytes(line))
                        if m:
                            pending = int(m.group(1))
        finally:
            await imap.logout()
        received = [r for uid, raw in sorted(messages) for r in self._read(uid, raw)]
        answers = [r for r in received if r.replied is not None]
        if answers:
            await self._reply_all(answers)
        return received

    def _read(self, imap_uid: int, raw: bytes) -> list[Received]:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw)
        out = []
        for part in msg.walk():
            if part.get_content_type() != "text/calendar":
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            cal = icalendar.Calendar.from_ical(payload)
            method = str(cal.get("METHOD", "")).upper()
            for event in cal.walk("VEVENT"):
                decision = self.decide(event) if method == "REQUEST" else None
                out.append(
                    Received(
                        imap_uid=imap_uid,
                        method=method,
                        uid=str(event["UID"]),
                        sequence=int(event.get("SEQUENCE", 0)),
                        organizer=str(event["ORGANIZER"]).removeprefix("mailto:"),
                        raw=raw,
                        replied=decision,
                    )
                )
                self._requests[(str(event["UID"]), int(event.get("SEQUENCE", 0)))] = event
        return out

    def __post_init__(self) -> None:
        self._requests: dict[tuple[str, int], icalendar.Component] = {}

    def reply_message(self, request: icalendar.Component, partstat: str) -> Message:
        """An iTIP REPLY to ``request`` from this room mailbox."""
        cal = icalendar.Calendar()
        cal.add("prodid", "-//edumesh tests//room mailbox responder//EN")
        cal.add("version", "2.0")
        cal.add("method", "REPLY")
        event = icalendar.Event()
        for name in ("UID", "SEQUENCE", "ORGANIZER", "DTSTART", "DTEND", "SUMMARY"):
            if name in request:
                event.add(name, request[name])
        event.add("dtstamp", dt.datetime.now(dt.UTC))
        attendee = icalendar.vCalAddress(f"mailto:{self.address}")
        attendee.params["PARTSTAT"] = partstat
        attendee.params["CUTYPE"] = "ROOM"
        event.add("attendee", attendee)
        cal.add_component(event)
        organizer = str(request["ORGANIZER"]).removeprefix("mailto:")
        words = {"ACCEPTED": "Angenommen", "DECLINED": "Abgelehnt", "TENTATIVE": "Mit Vorbehalt"}
        msg = MIMEMultipart("alternative", policy=policy.compat32.clone(linesep="\r\n"))
        msg["From"] = self.address
        msg["To"] = organizer
        subject = f"{words.get(partstat, partstat)}: {request.get('SUMMARY', '')}"
        msg["Subject"] = Header(subject, _Q_UTF8)  # type: ignore[assignment]
        msg["Message-ID"] = make_msgid(domain="responder.invalid")
        msg.attach(MIMEText(f"{partstat}\n", "plain", "utf-8"))
        part = MIMEBase("text", "calendar", method="REPLY", charset="UTF-8")
        part.set_payload(cal.to_ical())
        encoders.encode_base64(part)
        msg.attach(part)
        return msg

    async def _reply_all(self, answers: list[Received]) -> None:
        smtp = aiosmtplib.SMTP(hostname=self.host, port=self.smtp_port, start_tls=False, timeout=30)
        await smtp.connect()
        try:
            await smtp.login(self.address, self.password)
            for r in answers:
                assert r.replied is not None
                msg = self.reply_message(self._requests[(r.uid, r.sequence)], r.replied)
                await smtp.sendmail(self.address, [r.organizer], msg.as_bytes())
        finally:
            await smtp.quit()
