"""PDF attachments of a booking, made with reportlab: registration card and SEPA mandate request.

- :func:`registration_card`: one page per registration of the order (Anmeldekarte): centre,
  order id and date, participant (name, address, birth date), course (number, title, dates,
  place), status (booked / provisional / waiting list with position) and the fee.
- :func:`sepa_mandate`: the SEPA core direct-debit mandate request (SEPA-Lastschriftmandat) the
  participant signs and returns: creditor name, address and creditor identifier, mandate
  reference, payment type, the mandatory legal text (German), debtor name and address, bank,
  BIC, IBAN and date. The plaintext IBAN exists only inside this PDF (read with
  ``BankCipher.open`` while it is built, never logged or stored elsewhere).

:func:`load_documents` gathers the data from the coursedb for a booked order;
:func:`sample_documents` gives fixed sample data for template previews. This module must not
send anything or write to a database.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from coursedb import schema as cdb
from coursedb.banking import BankCipher
from mesh_contracts.booking import OrderResult, Outcome
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS = ("Mo", "Di", "Mi", "Do", "Fr", "Sa", "So")

#: The mandatory text of a SEPA core direct-debit mandate (SEPA-Basislastschrift), in German, as
#: the Rulebook and the German banking industry's model form require it. ``{creditor}`` is the
#: creditor's name.
SEPA_MANDATE_TEXT = (
    "Ich ermächtige {creditor}, Zahlungen von meinem Konto mittels Lastschrift einzuziehen. "
    "Zugleich weise ich mein Kreditinstitut an, die von {creditor} auf mein Konto gezogenen "
    "Lastschriften einzulösen."
)
SEPA_MANDATE_NOTE = (
    "Hinweis: Ich kann innerhalb von acht Wochen, beginnend mit dem Belastungsdatum, die "
    "Erstattung des belasteten Betrages verlangen. Es gelten dabei die mit meinem "
    "Kreditinstitut vereinbarten Bedingungen."
)

STATUS_TEXT = {
    Outcome.BOOKED: "verbindlich gebucht",
    Outcome.PROVISIONAL: "vorgemerkt (verbindlich nach Bestätigung durch die VHS)",
    Outcome.WAITING_LIST: "Warteliste",
    Outcome.CANCELLED: "storniert",
}


@dataclass(frozen=True)
class Card:
    registration_id: int | None
    participant_name: str
    participant_address: list[str]
    birth_date: dt.date | None
    course_number: str
    course_title: str
    schedule: str
    sessions: list[str]
    place: str
    fee: Decimal | None
    outcome: Outcome
    waiting_list_position: int | None = None


@dataclass(frozen=True)
class Mandate:
    creditor_name: str
    creditor_address: str
    creditor_id: str
    mandate_reference: str
    debtor_name: str
    debtor_address: list[str]
    iban: str = field(repr=False)
    bic: str | None
    bank_name: str | None
    signed_place: str
    date: dt.date
    amount: Decimal | None


@dataclass(frozen=True)
class Payer:
    """Who placed and pays the order (the confirmation goes to them)."""

    salutation: str | None
    name: str
    first_name: str
    last_name: str
    email: str | None
    address: list[str]


@dataclass(frozen=True)
class OrderDocuments:
    centre: str
    external_order_id: str
    ordered_at: dt.datetime
    payment_method: str | None
    cards: list[Card]
    mandate: Mandate | None
    payer: Payer | None = None
    total: Decimal | None = None

    def attachments(self) -> list[tuple[str, bytes]]:
        """(file name, PDF) of every document this order has."""
        files = [(f"Anmeldekarte-{_safe(self.external_order_id)}.pdf", registration_card(self))]
        if self.mandate is not None:
            files.append(
                (f"SEPA-Lastschriftmandat-{_safe(self.external_order_id)}.pdf", sepa_mandate(self))
            )
        return files


def _safe(value: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in value)[:60]


def euro(amount: Decimal | None) -> str:
    if amount is None:
        return "\u2013"
    text = f"{amount:,.2f}".replace(",", "X").replace(".", ",").replace("X", ".")
    return f"{text} €"


def iban_groups(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


# ---------------------------------------------------------------------- rendering


@functools.cache
def _styles() -> dict[str, ParagraphStyle]:
    # Built once: styles are only read while a document is laid out (thread-safe to share).
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("t", parent=base["Title"], fontSize=16, alignment=TA_LEFT),
        "h": ParagraphStyle("h", parent=base["Heading3"], spaceBefore=6, spaceAfter=2),
        "p": ParagraphStyle("p", parent=base["Normal"], fontSize=10, leading=13),
        "small": ParagraphStyle("s", parent=base["Normal"], fontSize=8, leading=10),
    }


def _table(rows: list[tuple[str, str]]) -> Table:
    styles = _styles()
    data = [
        [Paragraph(f"<b>{escape(k)}</b>", styles["p"]), Paragraph(v, styles["p"])] for k, v in rows
    ]
    table = Table(data, colWidths=[60 * mm, 110 * mm])
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    return table


def _pdf(title: str, story: list[Any]) -> bytes:
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        title=title,
        author="edumesh booking",
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=18 * mm,
        bottomMargin=18 * mm,
    )
    doc.build(story)
    return buffer.getvalue()


def _lines(values: list[str]) -> str:
    return "<br/>".join(escape(v) for v in values if v)


def registration_card(docs: OrderDocuments) -> bytes:
    """The registration card(s): one page per registration."""
    s = _styles()
    story: list[Any] = []
    for n, card in enumerate(docs.cards):
        if n:
            story.append(PageBreak())
        status = STATUS_TEXT.get(card.outcome, card.outcome.value)
        if card.outcome == Outcome.WAITING_LIST and card.waiting_list_position:
            status += f" (Platz {card.waiting_list_position})"
        story += [
            Paragraph(escape(docs.centre), s["p"]),
            Paragraph("Anmeldekarte", s["title"]),
            _table(
                [
                    ("Bestellnummer", escape(docs.external_order_id)),
                    ("Bestellt am", docs.ordered_at.astimezone(BERLIN).strftime("%d.%m.%Y %H:%M")),
                    ("Anmeldung Nr.", str(card.registration_id or "\u2013")),
                ]
            ),
            Paragraph("Teilnehmer/in", s["h"]),
            _table(
                [
                    ("Name", escape(card.participant_name)),
                    ("Anschrift", _lines(card.participant_address) or "\u2013"),
                    (
                        "Geburtsdatum",
                        card.birth_date.strftime("%d.%m.%Y") if card.birth_date else "\u2013",
                    ),
                ]
            ),
            Paragraph("Kurs", s["h"]),
            _table(
                [
                    ("Kursnummer", escape(card.course_number)),
                    ("Titel", escape(card.course_title)),
                    ("Termine", escape(card.schedule)),
                    ("Ort", escape(card.place)),
                    ("Status", escape(status)),
                    ("Entgelt", euro(card.fee)),
                    ("Zahlungsart", _payment_text(docs.payment_method)),
                ]
            ),
        ]
        if card.sessions:
            story += [
                Paragraph("Einzeltermine", s["h"]),
                Paragraph(_lines(card.sessions), s["small"]),
            ]
    if not story:
        story.append(Paragraph("Keine Anmeldungen", s["p"]))
    return _pdf(f"Anmeldekarte {docs.external_order_id}", story)


def _payment_text(method: str | None) -> str:
    return {"sepa": "SEPA-Lastschrift", "invoice": "Rechnung"}.get(method or "", "\u2013")


def sepa_mandate(docs: OrderDocuments) -> bytes:
    """The SEPA core direct-debit mandate request; ``ValueError`` if the order has no SEPA
    payment."""
    m = docs.mandate
    if m is None:
        raise ValueError("the order is not paid by SEPA direct debit")
    s = _styles()
    creditor = escape(m.creditor_name)
    story: list[Any] = [
        Paragraph("SEPA-Lastschriftmandat", s["title"]),
        Paragraph("(Mandatsanforderung \u2013 bitte unterschrieben zurücksenden)", s["p"]),
        Spacer(1, 4 * mm),
        Paragraph("Zahlungsempfänger", s["h"]),
        _table(
            [
                ("Name", creditor),
                ("Anschrift", escape(m.creditor_address)),
                ("Gläubiger-Identifikationsnummer", escape(m.creditor_id)),
                ("Mandatsreferenz", escape(m.mandate_reference)),
                ("Zahlungsart", "Wiederkehrende Zahlung"),
                ("Bestellnummer", escape(docs.external_order_id)),
                ("Betrag dieser Bestellung", euro(m.amount)),
            ]
        ),
        Spacer(1, 4 * mm),
        KeepTogether(
            [
                Paragraph(SEPA_MANDATE_TEXT.format(creditor=creditor), s["p"]),
                Spacer(1, 2 * mm),
                Paragraph(SEPA_MANDATE_NOTE, s["p"]),
            ]
        ),
        Paragraph("Zahlungspflichtige/r (Kontoinhaber/in)", s["h"]),
        _table(
            [
                ("Name", escape(m.debtor_name)),
                ("Anschrift", _lines(m.debtor_address) or "\u2013"),
                ("Kreditinstitut", escape(m.bank_name or "\u2013")),
                ("BIC", escape(m.bic or "\u2013")),
                ("IBAN", iban_groups(m.iban)),
            ]
        ),
        Spacer(1, 10 * mm),
        _table(
            [
                ("Ort, Datum", f"{escape(m.signed_place)}, {m.date.strftime('%d.%m.%Y')}"),
                ("Unterschrift", "<br/><br/>_______________________________________"),
            ]
        ),
    ]
    return _pdf(f"SEPA-Lastschriftmandat {m.mandate_reference}", story)


# ---------------------------------------------------------------------- data


@dataclass(frozen=True)
class Creditor:
    name: str
    address: str
    identifier: str
    centre: str


# The statements of load_documents, built once (per call only the parameters change).
_r, _c, _p = cdb.registrations, cdb.courses, cdb.participants
_loc, _room, _s = cdb.locations, cdb.rooms, cdb.course_sessions
_ORDER = select(cdb.orders).where(cdb.orders.c.id == bindparam("id"))
_REGISTRATIONS = (
    select(
        _r.c.id,
        _r.c.status,
        _r.c.fee_charged,
        _r.c.course_id,
        _p.c.salutation,
        _p.c.academic_title,
        _p.c.first_name,
        _p.c.last_name,
        _p.c.birth_date,
        _p.c.street,
        _p.c.postcode,
        _p.c.city,
        _c.c.number,
        _c.c.title,
        _loc.c.name.label("location"),
        _loc.c.street.label("loc_street"),
        _loc.c.postcode.label("loc_postcode"),
        _loc.c.city.label("loc_city"),
        _room.c.name.label("room"),
    )
    .join(_p, _p.c.id == _r.c.participant_id)
    .join(_c, _c.c.id == _r.c.course_id)
    .outerjoin(_loc, _loc.c.id == _c.c.location_id)
    .outerjoin(_room, _room.c.id == _c.c.room_id)
    .where(_r.c.order_id == bindparam("order_id"))
    .order_by(_r.c.id)
)
_SESSIONS = (
    select(_s.c.course_id, _s.c.session_date, _s.c.start_time, _s.c.end_time)
    .where(_s.c.course_id.in_(bindparam("ids", expanding=True)))
    .order_by(_s.c.course_id, _s.c.session_date, _s.c.start_time)
)
_PAYER = select(_p).where(_p.c.id == bindparam("id"))
_ACCOUNT = select(cdb.bank_accounts).where(cdb.bank_accounts.c.id == bindparam("id"))


async def load_documents(
    engine: AsyncEngine, cipher: BankCipher, creditor: Creditor, result: OrderResult
) -> OrderDocuments | None:
    """The documents of a booked order from the coursedb (None if it was not booked)."""
    if result.order_id is None:
        return None
    async with engine.connect() as conn:
        order = (await conn.execute(_ORDER, {"id": result.order_id})).first()
        if order is None:
            return None
        regs = (await conn.execute(_REGISTRATIONS, {"order_id": result.order_id})).all()
        course_ids = sorted({row.course_id for row in regs})
        sessions: dict[int, list[Any]] = {}
        if course_ids:
            for row in (await conn.execute(_SESSIONS, {"ids": course_ids})).all():
                sessions.setdefault(row.course_id, []).append(row)
        mandate: Mandate | None = None
        payer = (await conn.execute(_PAYER, {"id": order.participant_id})).first()
        if order.bank_account_id is not None:
            account = (await conn.execute(_ACCOUNT, {"id": order.bank_account_id})).one()
            mandate = Mandate(
                creditor_name=creditor.name,
                creditor_address=creditor.address,
                creditor_id=creditor.identifier,
                mandate_reference=account.mandate_reference or "",
                debtor_name=account.account_holder,
                debtor_address=_address(payer) if payer is not None else [],
                iban=cipher.open(account),
                bic=account.bic,
                bank_name=account.bank_name,
                signed_place=(payer.city or "") if payer is not None else "",
                date=(order.processed_at or order.received_at).astimezone(BERLIN).date(),
                amount=order.total_amount,
            )
    positions = {line.registration_id: line.waiting_list_position for line in result.lines}
    cards = [
        Card(
            registration_id=row.id,
            participant_name=_name(row),
            participant_address=_address(row),
            birth_date=row.birth_date,
            course_number=row.number,
            course_title=row.title,
            schedule=_schedule(sessions.get(row.course_id, [])),
            sessions=[_session(x) for x in sessions.get(row.course_id, [])],
            place=_place(row),
            fee=row.fee_charged,
            outcome=Outcome(row.status),
            waiting_list_position=positions.get(row.id),
        )
        for row in regs
    ]
    return OrderDocuments(
        centre=creditor.centre,
        external_order_id=order.external_order_id,
        ordered_at=order.received_at,
        payment_method=order.payment_method,
        cards=cards,
        mandate=mandate,
        payer=_payer(payer) if payer is not None else None,
        total=order.total_amount,
    )


def _payer(row: Any) -> Payer:
    return Payer(
        salutation=row.salutation,
        name=_name(row),
        first_name=row.first_name,
        last_name=row.last_name,
        email=row.email,
        address=_address(row),
    )


def _name(row: Any) -> str:
    parts = [row.academic_title, row.first_name, row.last_name]
    return " ".join(x for x in parts if x)


def _address(row: Any) -> list[str]:
    city = " ".join(x for x in (row.postcode, row.city) if x)
    return [x for x in (row.street, city) if x]


def _place(row: Any) -> str:
    if row.location is None:
        return "Online"
    parts = [row.location, f"{row.loc_street}, {row.loc_postcode} {row.loc_city}"]
    if row.room:
        parts.append(row.room)
    return " \u2013 ".join(parts)


def _session(row: Any) -> str:
    day: dt.date = row.session_date
    return (
        f"{WEEKDAYS[day.weekday()]} {day.strftime('%d.%m.%Y')}, "
        f"{row.start_time.strftime('%H:%M')}\u2013{row.end_time.strftime('%H:%M')} Uhr"
    )


def _schedule(rows: list[Any]) -> str:
    if not rows:
        return "nach Vereinbarung"
    first, last = rows[0], rows[-1]
    if len(rows) == 1:
        return _session(first)
    return (
        f"{len(rows)} Termine, {first.session_date.strftime('%d.%m.%Y')} bis "
        f"{last.session_date.strftime('%d.%m.%Y')}, {WEEKDAYS[first.session_date.weekday()]} "
        f"{first.start_time.strftime('%H:%M')}\u2013{first.end_time.strftime('%H:%M')} Uhr"
    )


def sample_documents(creditor: Creditor) -> OrderDocuments:
    """Fixed sample data (a fictitious person, the standard test IBAN) for template previews."""
    today = dt.date(2026, 9, 1)
    return OrderDocuments(
        centre=creditor.centre,
        external_order_id="W-MUSTER-0001",
        ordered_at=dt.datetime(2026, 9, 1, 8, 30, tzinfo=dt.UTC),
        payment_method="sepa",
        cards=[
            Card(
                registration_id=4711,
                participant_name="Erika Mustermann",
                participant_address=["Heidestraße 17", "51147 Köln"],
                birth_date=dt.date(1964, 8, 12),
                course_number="262-40401",
                course_title="Spanisch A1 \u2013 Einstieg",
                schedule="10 Termine, 15.09.2026 bis 24.11.2026, Di 18:00\u201319:30 Uhr",
                sessions=[],
                place="Volkshochschulhaus am Rotteckring \u2013 Rotteckring 12, 79098 Freiburg",
                fee=Decimal("129.00"),
                outcome=Outcome.BOOKED,
            )
        ],
        mandate=Mandate(
            creditor_name=creditor.name,
            creditor_address=creditor.address,
            creditor_id=creditor.identifier,
            mandate_reference="VHS-MUSTER-0001",
            debtor_name="Erika Mustermann",
            debtor_address=["Heidestraße 17", "51147 Köln"],
            iban="DE89370400440532013000",
            bic="COBADEFFXXX",
            bank_name="Commerzbank",
            signed_place="Freiburg",
            date=today,
            amount=Decimal("129.00"),
        ),
        payer=Payer(
            salutation="ms",
            name="Erika Mustermann",
            first_name="Erika",
            last_name="Mustermann",
            email="erika.mustermann@example.org",
            address=["Heidestraße 17", "51147 Köln"],
        ),
        total=Decimal("129.00"),
    )
