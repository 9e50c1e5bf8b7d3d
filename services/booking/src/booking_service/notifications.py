"""Notifications of a booked order: confirmation to the participant, protocol to the centre.

Both mails come from editable templates (``mesh_common.mail.TemplateStore``: sandboxed Jinja2,
versioned, validated with sample data before activation, audited) and carry the order's PDFs
(registration card; SEPA mandate request when paid by direct debit). The statement that records
an accepted order marks its mails due; :mod:`booking_service.mailing` **prepares** them after the
answer went out (documents read back, templates rendered, PDFs built) and **enqueues** them in
the transaction that clears the mark, so a recorded order gets its mails once and a replayed
order never gets them twice. The mail package's sender delivers them with retries.

Templates (defaults below, editable over ``/mail/templates``):

- ``booking-confirmation``: to the payer's e-mail (skipped when the payer has none);
- ``booking-protocol``: to ``CENTRE_EMAIL`` (skipped when unset);
- ``booking-signature``: a part both include.

Only accepted orders are mailed: a rejection is answered to the website at once (or announced
by ``booking.order_rejected.v1`` for a pending order), and the website tells the person.

This module must not book anything or decide transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from mesh_common.mail import (
    Attachment,
    MailTables,
    OutgoingMail,
    PreviewExtras,
    PreviewInput,
    TemplateDefault,
    TemplateStore,
    enqueue,
)
from mesh_contracts.booking import Order, OrderResult, OrderStatus, Outcome
from sqlalchemy.ext.asyncio import AsyncConnection

from booking_service.documents import (
    BERLIN,
    STATUS_TEXT,
    Card,
    Creditor,
    OrderDocuments,
    euro,
    sample_documents,
)
from booking_service.settings import Settings

log = logging.getLogger("booking.notifications")

CONFIRMATION, PROTOCOL, SIGNATURE = "booking-confirmation", "booking-protocol", "booking-signature"
PAYMENT_TEXT = {"sepa": "SEPA-Lastschrift", "invoice": "Rechnung"}

_LINES_TEXT = (
    "{% for r in registrations %}\n"
    "- {{ r.course_number }} {{ r.course_title }}\n"
    "  Teilnehmer/in: {{ r.participant }}\n"
    "  Termine: {{ r.schedule }}\n"
    "  Ort: {{ r.place }}\n"
    "  Status: {{ r.status }}"
    "{% if r.waiting_list_position %} (Platz {{ r.waiting_list_position }}){% endif %}\n"
    "  Entgelt: {{ r.fee }}\n"
    "{% endfor %}"
)

_LINES_HTML = """\
<table cellpadding="4" style="border-collapse: collapse">
<tr><th align="left">Kurs</th><th align="left">Teilnehmer/in</th><th align="left">Termine</th>\
<th align="left">Ort</th><th align="left">Status</th><th align="right">Entgelt</th></tr>
{% for r in registrations %}
<tr><td>{{ r.course_number }}<br>{{ r.course_title }}</td><td>{{ r.participant }}</td>\
<td>{{ r.schedule }}</td><td>{{ r.place }}</td><td>{{ r.status }}\
{% if r.waiting_list_position %} (Platz {{ r.waiting_list_position }}){% endif %}</td>\
<td align="right">{{ r.fee }}</td></tr>
{% endfor %}
</table>"""


def mail_context(
    docs: OrderDocuments, result: OrderResult, order: Order | None, centre_email: str | None
) -> dict[str, Any]:
    """The data the templates see. No IBAN (only its masked form) and no birth dates."""
    payer = docs.payer
    method = result.payment_method or docs.payment_method or ""
    return {
        "centre": {"name": docs.centre, "email": centre_email or ""},
        "order": {
            "id": result.external_order_id,
            "date": docs.ordered_at.astimezone(BERLIN).strftime("%d.%m.%Y %H:%M"),
            "total": euro(docs.total if docs.total is not None else _total(result)),
            "payment": PAYMENT_TEXT.get(method, method),
            "sepa": method == "sepa",
            "iban_masked": result.iban_masked or "",
            "mandate_reference": result.mandate_reference or "",
            "note": (order.note if order is not None else None) or "",
        },
        "payer": {
            "greeting": _greeting(payer.salutation, payer.first_name, payer.last_name)
            if payer
            else "Guten Tag",
            "name": payer.name if payer else "",
            "first_name": payer.first_name if payer else "",
            "last_name": payer.last_name if payer else "",
            "email": (payer.email or "") if payer else "",
            "address": list(payer.address) if payer else [],
        },
        "registrations": [
            {
                "participant": card.participant_name,
                "course_number": card.course_number,
                "course_title": card.course_title,
                "schedule": card.schedule,
                "place": card.place,
                "status": STATUS_TEXT.get(card.outcome, card.outcome.value),
                "fee": euro(card.fee),
                "waiting_list_position": card.waiting_list_position,
            }
            for card in docs.cards
        ],
        "attachments": [name for name, _ in _names(docs)],
    }


def _total(result: OrderResult) -> Decimal | None:
    return result.total.amount if result.total is not None else None


def _names(docs: OrderDocuments) -> list[tuple[str, None]]:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in docs.external_order_id)[:60]
    names = [(f"Anmeldekarte-{safe}.pdf", None)]
    if docs.mandate is not None:
        names.append((f"SEPA-Lastschriftmandat-{safe}.pdf", None))
    return names


def _greeting(salutation: str | None, first: str, last: str) -> str:
    if salutation == "ms":
        return f"Sehr geehrte Frau {last}"
    if salutation == "mr":
        return f"Sehr geehrter Herr {last}"
    return f"Guten Tag {first} {last}"


def _sample(creditor: Creditor) -> dict[str, Any]:
    docs = sample_documents(creditor)
    result = OrderResult(
        external_order_id=docs.external_order_id,
        status=OrderStatus.ACCEPTED,
        payment_method="sepa",
        iban_masked="DE** **** **** **** **30 00",
        mandate_reference="VHS-MUSTER-0001",
    )
    return mail_context(docs, result, None, "anmeldung@vhs.example")


def default_templates(creditor: Creditor) -> dict[str, TemplateDefault]:
    sample = _sample(creditor)
    return {
        CONFIRMATION: TemplateDefault(
            description="Bestätigung an die zahlende Person nach einer Buchung",
            subject="Ihre Anmeldung bei der {{ centre.name }} (Bestellung {{ order.id }})",
            text=(
                "{{ payer.greeting }},\n\n"
                "vielen Dank für Ihre Anmeldung. Ihre Bestellung {{ order.id }} vom "
                "{{ order.date }} ist verbucht:\n" + _LINES_TEXT + "\n"
                "Gesamtbetrag: {{ order.total }}\n"
                "Zahlungsart: {{ order.payment }}"
                "{% if order.sepa %} vom Konto {{ order.iban_masked }} "
                "(Mandatsreferenz {{ order.mandate_reference }}){% endif %}\n\n"
                "{% if order.sepa %}Bitte unterschreiben Sie das beigefügte "
                "SEPA-Lastschriftmandat und senden Sie es uns zurück.\n{% endif %}"
                "Im Anhang finden Sie Ihre Anmeldekarte.\n\n"
                "{% include 'booking-signature' %}"
            ),
            html=(
                "<p>{{ payer.greeting }},</p>\n"
                "<p>vielen Dank für Ihre Anmeldung. Ihre Bestellung <b>{{ order.id }}</b> vom "
                "{{ order.date }} ist verbucht:</p>\n" + _LINES_HTML + "\n"
                "<p>Gesamtbetrag: <b>{{ order.total }}</b><br>Zahlungsart: {{ order.payment }}"
                "{% if order.sepa %} vom Konto {{ order.iban_masked }} "
                "(Mandatsreferenz {{ order.mandate_reference }}){% endif %}</p>\n"
                "{% if order.sepa %}<p>Bitte unterschreiben Sie das beigefügte "
                "SEPA-Lastschriftmandat und senden Sie es uns zurück.</p>{% endif %}\n"
                "<p>Im Anhang finden Sie Ihre Anmeldekarte.</p>\n"
                "{% include 'booking-signature' %}"
            ),
            sample=sample,
        ),
        PROTOCOL: TemplateDefault(
            description="Anmeldeprotokoll an die Bildungseinrichtung",
            subject="Anmeldeprotokoll {{ order.id }}: {{ registrations | length }} Anmeldung(en)",
            text=(
                "Neue Web-Bestellung {{ order.id }} vom {{ order.date }}\n\n"
                "Besteller/in: {{ payer.name }}\n"
                "{% for line in payer.address %}{{ line }}\n{% endfor %}"
                "E-Mail: {{ payer.email | default('-', true) }}\n"
                "Zahlungsart: {{ order.payment }}"
                "{% if order.sepa %} ({{ order.iban_masked }}, Mandatsreferenz "
                "{{ order.mandate_reference }}){% endif %}\n"
                "Gesamtbetrag: {{ order.total }}\n"
                "{% if order.note %}Bemerkung: {{ order.note }}\n{% endif %}"
                "\nAnmeldungen:\n" + _LINES_TEXT + "\n{% include 'booking-signature' %}"
            ),
            html=(
                "<p>Neue Web-Bestellung <b>{{ order.id }}</b> vom {{ order.date }}</p>\n"
                "<p>Besteller/in: {{ payer.name }}<br>"
                "{% for line in payer.address %}{{ line }}<br>{% endfor %}"
                "E-Mail: {{ payer.email | default('-', true) }}<br>"
                "Zahlungsart: {{ order.payment }}"
                "{% if order.sepa %} ({{ order.iban_masked }}, Mandatsreferenz "
                "{{ order.mandate_reference }}){% endif %}<br>"
                "Gesamtbetrag: {{ order.total }}</p>\n"
                "{% if order.note %}<p>Bemerkung: {{ order.note }}</p>{% endif %}\n"
                + _LINES_HTML
                + "\n{% include 'booking-signature' %}"
            ),
            sample=sample,
        ),
        SIGNATURE: TemplateDefault(
            kind="part",
            description="Gruß und Absender unter beiden Mails",
            text="Mit freundlichen Grüßen\nIhre {{ centre.name }}",
            html="<p>Mit freundlichen Grüßen<br>Ihre {{ centre.name }}</p>",
            sample={"centre": sample["centre"]},
        ),
    }


class Notifier:
    """Prepares and enqueues the mails of accepted orders."""

    def __init__(
        self,
        *,
        store: TemplateStore,
        tables: MailTables,
        settings: Settings,
        creditor: Creditor,
        documents: Callable[[OrderResult], Awaitable[OrderDocuments | None]],
    ) -> None:
        self.store = store
        self.tables = tables
        self.settings = settings
        self.creditor = creditor
        self.documents = documents

    def wanted(self, result: OrderResult) -> bool:
        """Does ``result`` get mails? (Decided when it is recorded; prepared later.)"""
        return self.settings.notifications_enabled and result.status == OrderStatus.ACCEPTED

    async def prepare(self, order: Order | None, result: OrderResult) -> list[OutgoingMail]:
        """The mails for ``result`` (empty when notifications are off or nothing was booked).
        Raises when the documents cannot be read or a template does not fit the data."""
        if not self.wanted(result):
            return []
        docs = await self.documents(result)
        if docs is None:
            return []
        wanted_confirmation = docs.payer is not None and bool(docs.payer.email)
        if not wanted_confirmation and not self.settings.centre_email:
            return []
        files = await asyncio.to_thread(docs.attachments)  # reportlab is CPU work
        attachments = [
            Attachment(filename=name, content_type="application/pdf", data=data)
            for name, data in files
        ]
        context = mail_context(docs, result, order, self.settings.centre_email)
        mails: list[OutgoingMail] = []
        ref = result.external_order_id
        names = [CONFIRMATION] if wanted_confirmation else []
        if self.settings.centre_email:
            names.append(PROTOCOL)
        rendered_by_name = dict(
            zip(names, await self.store.render_many(names, context), strict=True)
        )
        if wanted_confirmation:
            assert docs.payer is not None and docs.payer.email
            rendered = rendered_by_name[CONFIRMATION]
            mails.append(
                rendered.mail(
                    to=f"{docs.payer.name} <{docs.payer.email}>",
                    reply_to=self.settings.centre_email or [],
                    attachments=attachments,
                    category=CONFIRMATION,
                    ref=ref,
                )
            )
        if self.settings.centre_email:
            rendered = rendered_by_name[PROTOCOL]
            mails.append(
                rendered.mail(
                    to=self.settings.centre_email,
                    reply_to=(docs.payer.email if docs.payer and docs.payer.email else []),
                    attachments=attachments,
                    category=PROTOCOL,
                    ref=ref,
                )
            )
        return mails

    async def enqueue(self, conn: AsyncConnection, mails: list[OutgoingMail]) -> list[str]:
        return [await enqueue(conn, self.tables, mail) for mail in mails]

    async def preview(self, p: PreviewInput) -> PreviewExtras:
        """Template preview hook: the PDFs the mail would carry, built from the preview data
        (the sample order, with the preview's registrations and payer where they fit)."""
        if p.kind != "mail":
            return PreviewExtras()
        docs = sample_documents(self.creditor)
        note = "PDFs built from the preview data"
        try:
            docs = _documents_from_context(docs, p.context)
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as exc:
            note = f"PDFs built from the sample order (the preview data did not fit: {exc})"
        files = await asyncio.to_thread(docs.attachments)
        return PreviewExtras(
            attachments=[
                Attachment(filename=name, content_type="application/pdf", data=data)
                for name, data in files
            ],
            data={"documents": note},
        )


def _documents_from_context(docs: OrderDocuments, context: dict[str, Any]) -> OrderDocuments:
    regs = context.get("registrations")
    cards = docs.cards
    if isinstance(regs, list) and regs:
        template = docs.cards[0]
        cards = [
            replace(
                template,
                participant_name=str(r["participant"]),
                course_number=str(r["course_number"]),
                course_title=str(r["course_title"]),
                schedule=str(r.get("schedule", template.schedule)),
                place=str(r.get("place", template.place)),
                fee=_money(r.get("fee")),
                outcome=_outcome(str(r.get("status", ""))),
                waiting_list_position=r.get("waiting_list_position"),
            )
            for r in regs
        ]
    order = context.get("order") or {}
    payer = context.get("payer") or {}
    mandate = docs.mandate
    if mandate is not None and payer.get("name"):
        mandate = replace(mandate, debtor_name=str(payer["name"]))
    if mandate is not None and not order.get("sepa", True):
        mandate = None
    return replace(
        docs,
        external_order_id=str(order.get("id", docs.external_order_id)),
        cards=cards,
        mandate=mandate,
    )


def _money(value: Any) -> Decimal | None:
    if value in (None, "", "\u2013"):
        return None
    text = str(value).replace("€", "").replace(".", "").replace(",", ".").strip()
    return Decimal(text)


def _outcome(status: str) -> Outcome:
    for outcome, text in STATUS_TEXT.items():
        if status.startswith(text):
            return outcome
    return Outcome.BOOKED


__all__ = ["Card", "Notifier", "default_templates", "mail_context"]
