"""Confirmation and protocol mails through a real SMTP server, parsed back with ``email`` and
``pypdf``; template maintenance (admin only, validated, sandboxed, previews with PDFs)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from booking_service.models import templates
from coursedb import schema as cdb
from mesh_common.testing.smtp import SmtpCapture
from pypdf import PdfReader
from sqlalchemy import func, select, update

from .conftest import (
    SERVICE,
    STAFF,
    VALID_IBAN,
    Running,
    add_course,
    add_participant,
    eventually,
    headers,
    order,
    person,
    prepare_coursedb,
    running,
    sepa_new,
)

CENTRE = "anmeldung@vhs-test.example"
ADMIN = headers("admin", sub="ops-anna")


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join(p.extract_text() for p in reader.pages).split())


def mail_settings(tmp_path: Path, smtp: SmtpCapture, **over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "var_dir": tmp_path,
        "notifications_enabled": True,
        "mail_sender_enabled": True,
        "smtp_host": smtp.host,
        "smtp_port": smtp.port,
        "mail_from": "VHS Test <noreply@vhs-test.example>",
        "mail_poll_seconds": 0.2,
        "centre_email": CENTRE,
        "centre_name": "Volkshochschule Teststadt",
    }
    values.update(over)
    return values


async def _coursedb(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    return url


async def settled(svc: Running, external_id: str) -> dict[str, Any]:
    """The order's row (staff list) once its mails were prepared (or given up)."""
    found: dict[str, Any] = {}

    async def done() -> bool:
        listed = (await svc.client.get("/orders", headers=STAFF)).json()
        [row] = [x for x in listed if x["external_order_id"] == external_id]
        found.update(row)
        return row["notify_at"] is None

    await eventually(done)
    return found


async def test_confirmation_and_protocol_with_pdfs(
    tmp_path: Path, smtp_server: SmtpCapture
) -> None:
    url = await _coursedb(tmp_path)
    async with running(url, **mail_settings(tmp_path, smtp_server)) as svc:
        await add_course(svc.coursedb, "262-40401", title="Spanisch A1 für Anfänger")
        await add_course(svc.coursedb, "262-40402", seats=1, mode="waiting_list", title="Töpfern")
        other = order(courses=["262-40402"], people=[{"key": "x", "person": person("Xenia")}])
        await svc.client.post(
            "/orders", json={**other, "payment": {"method": "invoice"}}, headers=SERVICE
        )
        # Only the "other" order's two mails so far.
        await smtp_server.wait_for(2)
        smtp_server.clear()

        body = order(
            "W-MAIL-1",
            items=[
                {"participant": "p1", "course_number": "262-40401"},
                {"participant": "p1", "course_number": "262-40402"},
            ],
            mode="waiting_list",
            payment=sepa_new(),
        )
        body["note"] = "Bitte Rechnung an den Arbeitgeber"
        result = (await svc.client.post("/orders", json=body, headers=SERVICE)).json()
        assert result["status"] == "accepted"
        mails = await smtp_server.wait_for(2)
        by_to = {m.rcpt_tos[0]: m.message for m in mails}
        confirmation = by_to["max.muster@example.org"]
        protocol = by_to[CENTRE]

        # (strip: the stdlib folds this long subject right after "Subject:", and parsing the
        # folded header back keeps the leading space of the continuation line)
        assert confirmation["Subject"].strip() == (
            "Ihre Anmeldung bei der Volkshochschule Teststadt (Bestellung W-MAIL-1)"
        )
        assert confirmation["From"] == "VHS Test <noreply@vhs-test.example>"
        assert confirmation["Reply-To"] == CENTRE
        text = confirmation.get_body(preferencelist=("plain",)).get_content()
        html = confirmation.get_body(preferencelist=("html",)).get_content()
        assert text.startswith("Sehr geehrter Herr Muster,")
        for expected in (
            "262-40401 Spanisch A1 für Anfänger",
            "Status: verbindlich gebucht",
            "Status: Warteliste (Platz 1)",
            "Gesamtbetrag: 129,00 €",
            "SEPA-Lastschrift vom Konto DE** **** **** **** **30 00",
            f"Mandatsreferenz {result['mandate_reference']}",
            "Ihre Volkshochschule Teststadt",
        ):
            assert expected in text, expected
        assert "Töpfern" in html and "<table" in html
        assert VALID_IBAN not in confirmation.as_string()  # only inside the PDF (base64)

        files = {
            part.get_filename(): part.get_content() for part in confirmation.iter_attachments()
        }
        assert set(files) == {
            "Anmeldekarte-W-MAIL-1.pdf",
            "SEPA-Lastschriftmandat-W-MAIL-1.pdf",
        }
        card = pdf_text(files["Anmeldekarte-W-MAIL-1.pdf"])
        assert "Spanisch A1 für Anfänger" in card and "Warteliste (Platz 1)" in card
        mandate = pdf_text(files["SEPA-Lastschriftmandat-W-MAIL-1.pdf"])
        assert "DE89 3704 0044 0532 0130 00" in mandate and "Ich ermächtige" in mandate

        assert protocol["Subject"].strip() == "Anmeldeprotokoll W-MAIL-1: 2 Anmeldung(en)"
        assert protocol["Reply-To"] == "max.muster@example.org"
        ptext = protocol.get_body(preferencelist=("plain",)).get_content()
        for expected in (
            "Besteller/in: Max Muster",
            "Kaiser-Joseph-Straße 1",
            "E-Mail: max.muster@example.org",
            "Bemerkung: Bitte Rechnung an den Arbeitgeber",
        ):
            assert expected in ptext, expected
        assert len(list(protocol.iter_attachments())) == 2

        # A replay of the order sends nothing again.
        again = await svc.client.post("/orders", json=body, headers=SERVICE)
        assert again.json() == result
        outbox = (await svc.client.get("/mail/outbox?ref=W-MAIL-1", headers=STAFF)).json()
        assert outbox["total"] == 2
        assert {x["category"] for x in outbox["items"]} == {
            "booking-confirmation",
            "booking-protocol",
        }


async def test_failed_notification_is_visible_and_can_be_sent_again(
    tmp_path: Path, smtp_server: SmtpCapture
) -> None:
    url = await _coursedb(tmp_path)
    async with running(url, **mail_settings(tmp_path, smtp_server, centre_email=None)) as svc:
        await add_course(svc.coursedb, "262-40401")
        me = await add_participant(svc.coursedb, email="erika@example.org")
        # The stored e-mail address is broken (old data): the booking stands, the mail cannot.
        async with svc.coursedb.begin() as conn:
            await conn.execute(
                update(cdb.participants)
                .where(cdb.participants.c.id == me)
                .values(email="erika at example")
            )
        body = order("W-MAIL-2", ["262-40401"], people=[{"key": "me", "participant_id": me}])
        r = await svc.client.post("/orders", json=body, headers=STAFF)
        assert r.json()["status"] == "accepted"
        # The mails are prepared after the answer; the failure shows on the order then.
        row = await settled(svc, "W-MAIL-2")
        assert row["last_error"].startswith("notification not sent:")
        assert "erika at example" in row["last_error"]
        metrics = (await svc.client.get("/metrics")).text
        assert "booking_notifications_failed_total 1.0" in metrics

        async with svc.coursedb.begin() as conn:
            await conn.execute(
                update(cdb.participants)
                .where(cdb.participants.c.id == me)
                .values(email="erika@example.org")
            )
        again = await svc.client.post("/orders/W-MAIL-2/notify", headers=STAFF)
        assert again.status_code == 200 and len(again.json()["mail_ids"]) == 1
        [mail] = await smtp_server.wait_for(1)
        assert mail.rcpt_tos == ("erika@example.org",)
        assert mail.message["Subject"].strip().endswith("(Bestellung W-MAIL-2)")
        listed = (await svc.client.get("/orders?status=accepted", headers=STAFF)).json()
        assert [x["last_error"] for x in listed if x["external_order_id"] == "W-MAIL-2"] == [None]
        assert (
            await svc.client.post("/orders/W-MAIL-2/notify", headers=SERVICE)
        ).status_code == 403


async def test_template_maintenance(tmp_path: Path, smtp_server: SmtpCapture) -> None:
    url = await _coursedb(tmp_path)
    async with running(url, **mail_settings(tmp_path, smtp_server)) as svc:
        await add_course(svc.coursedb, "262-40401", title="Yoga am Morgen")
        names = {t["name"] for t in (await svc.client.get("/mail/templates", headers=STAFF)).json()}
        assert names == {"booking-confirmation", "booking-protocol", "booking-signature"}

        # Preview (staff): the rendered mail and the PDFs it would carry.
        p = await svc.client.post(
            "/mail/templates/booking-confirmation/preview", json={}, headers=STAFF
        )
        assert p.status_code == 200, p.text
        preview = p.json()
        assert preview["subject"].endswith("(Bestellung W-MUSTER-0001)")
        files = {a["filename"]: base64.b64decode(a["data_base64"]) for a in preview["attachments"]}
        assert "Spanisch A1" in pdf_text(files["Anmeldekarte-W-MUSTER-0001.pdf"])
        assert "Ich ermächtige" in pdf_text(files["SEPA-Lastschriftmandat-W-MUSTER-0001.pdf"])
        # ... with the preview's own data in the PDFs.
        context = preview["context"]
        context["registrations"][0]["course_title"] = "Italienisch B2"
        p = await svc.client.post(
            "/mail/templates/booking-confirmation/preview",
            json={"context": context},
            headers=STAFF,
        )
        files = {a["filename"]: base64.b64decode(a["data_base64"]) for a in p.json()["attachments"]}
        assert "Italienisch B2" in pdf_text(files["Anmeldekarte-W-MUSTER-0001.pdf"])

        async def versions() -> int:
            async with svc.booking.runtime.db.engine.connect() as conn:
                return int(
                    await conn.scalar(select(func.count()).select_from(templates.versions)) or 0
                )

        before = await versions()
        current = (
            await svc.client.get("/mail/templates/booking-confirmation", headers=STAFF)
        ).json()["active"]
        change = {
            "subject": "Anmeldebestätigung {{ order.id }}",
            "text": current["text"],
            "html": current["html"],
            "comment": "kürzerer Betreff",
            "activate": True,
        }
        r = await svc.client.post(
            "/mail/templates/booking-confirmation/versions", json=change, headers=STAFF
        )
        assert r.status_code == 403  # staff may read and preview, not change
        escape = {**change, "text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}
        r = await svc.client.post(
            "/mail/templates/booking-confirmation/versions", json=escape, headers=ADMIN
        )
        assert r.status_code == 422 and r.json()["code"] == "template-invalid"
        assert any(e["kind"] == "security" for e in r.json()["errors"])
        typo = {**change, "text": "{{ payer.greting }}"}
        r = await svc.client.post(
            "/mail/templates/booking-confirmation/versions", json=typo, headers=ADMIN
        )
        assert r.status_code == 422 and r.json()["errors"][0]["kind"] == "undefined"
        assert await versions() == before  # nothing written

        r = await svc.client.post(
            "/mail/templates/booking-confirmation/versions", json=change, headers=ADMIN
        )
        assert (
            r.status_code == 201 and r.json()["version"] == 2 and r.json()["author"] == "ops-anna"
        )
        await svc.client.post("/orders", json=order("W-MAIL-3", ["262-40401"]), headers=SERVICE)
        mails = await smtp_server.wait_for(2)
        subjects = {m.message["Subject"].strip() for m in mails}
        assert "Anmeldebestätigung W-MAIL-3" in subjects
        audit = (
            await svc.client.get("/mail/templates/booking-confirmation/audit", headers=STAFF)
        ).json()
        assert audit[0]["actor"] == "ops-anna"
