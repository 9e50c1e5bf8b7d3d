"""The PDFs of a booked order, read back with pypdf: registration card and SEPA mandate request."""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path

from booking_service import documents
from booking_service.documents import Creditor
from pypdf import PdfReader

from .conftest import (
    SERVICE,
    STAFF,
    VALID_IBAN,
    add_course,
    headers,
    order,
    person,
    prepare_coursedb,
    running,
    sepa_new,
)


def text_of(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    # Normalise whitespace: extraction may break lines anywhere.
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


async def test_registration_card_and_sepa_mandate(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(
        url,
        var_dir=tmp_path,
        sepa_creditor_name="Volkshochschule Teststadt e.V.",
        sepa_creditor_address="Marktplatz 1, 79098 Freiburg",
    ) as svc:
        await add_course(svc.coursedb, "262-40401", fee="129.00", title="Spanisch A1 für Anfänger")
        await add_course(svc.coursedb, "262-40402", fee="49.50", title="Töpfern an der Scheibe")
        people = [
            {"key": "p1", "person": person("Jürgen", "Weiß", birth_date="1971-03-09")},
            {"key": "p2", "person": person("Lea", "Weiß", email=None, birth_date="2010-06-01")},
        ]
        items = [
            {"participant": "p1", "course_number": "262-40401"},
            {"participant": "p2", "course_number": "262-40402"},
        ]
        body = order("W-PDF-1", people=people, items=items, payment=sepa_new())
        result = (await svc.client.post("/orders", json=body, headers=SERVICE)).json()
        assert result["status"] == "accepted"

        r = await svc.client.get("/orders/W-PDF-1/documents/registration-card.pdf", headers=STAFF)
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        reader = PdfReader(io.BytesIO(r.content))
        assert len(reader.pages) == 2  # one card per registration
        first = " ".join(reader.pages[0].extract_text().split())
        second = " ".join(reader.pages[1].extract_text().split())
        for expected in (
            "Anmeldekarte",
            "W-PDF-1",
            "Jürgen Weiß",
            "09.03.1971",
            "Kaiser-Joseph-Straße 1",
            "79098 Freiburg",
            "262-40401",
            "Spanisch A1 für Anfänger",
            "129,00 €",
            "verbindlich gebucht",
            "SEPA-Lastschrift",
            "3 Termine",
        ):
            assert expected in first, expected
        assert "Lea Weiß" in second and "Töpfern an der Scheibe" in second
        assert "49,50 €" in second
        assert f"Anmeldung Nr. {result['lines'][0]['registration_id']}" in first

        r = await svc.client.get("/orders/W-PDF-1/documents/sepa-mandate.pdf", headers=STAFF)
        assert r.status_code == 200
        mandate = text_of(r.content)
        groups = " ".join(VALID_IBAN[i : i + 4] for i in range(0, len(VALID_IBAN), 4))
        today = dt.datetime.now(dt.UTC).astimezone(documents.BERLIN).strftime("%d.%m.%Y")
        for expected in (
            "SEPA-Lastschriftmandat",
            "Volkshochschule Teststadt e.V.",
            "Marktplatz 1, 79098 Freiburg",
            "DE98ZZZ09999999999",
            result["mandate_reference"],
            "Max Muster",  # the account holder
            "Kaiser-Joseph-Straße 1",
            groups,
            "COBADEFFXXX",
            "178,50 €",
            today,
            "Ich ermächtige Volkshochschule Teststadt e.V., Zahlungen von meinem Konto mittels "
            "Lastschrift einzuziehen.",
            "Zugleich weise ich mein Kreditinstitut an, die von Volkshochschule Teststadt e.V. "
            "auf mein Konto gezogenen Lastschriften einzulösen.",
            "Ich kann innerhalb von acht Wochen, beginnend mit dem Belastungsdatum, die "
            "Erstattung des belasteten Betrages verlangen.",
            "Es gelten dabei die mit meinem Kreditinstitut vereinbarten Bedingungen.",
        ):
            assert expected in mandate, expected
        assert re.search(r"Gläubiger-Identifikationsnummer\s*DE98ZZZ09999999999", mandate)

        # Who may fetch them: the buyer yes, a stranger gets "not found".
        buyer = result["participant_ids"]["p1"]
        r = await svc.client.get(
            "/orders/W-PDF-1/documents/sepa-mandate.pdf",
            headers=headers("participant", participant_id=buyer),
        )
        assert r.status_code == 200
        r = await svc.client.get(
            "/orders/W-PDF-1/documents/sepa-mandate.pdf",
            headers=headers("participant", participant_id=buyer + 100),
        )
        assert r.status_code == 404


async def test_invoice_order_has_no_mandate_and_rejected_order_no_documents(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path) as svc:
        await add_course(svc.coursedb, "262-40401")
        await svc.client.post("/orders", json=order("W-INV", ["262-40401"]), headers=SERVICE)
        r = await svc.client.get("/orders/W-INV/documents/sepa-mandate.pdf", headers=STAFF)
        assert r.status_code == 404 and r.json()["code"] == "no-sepa-mandate"
        card = await svc.client.get("/orders/W-INV/documents/registration-card.pdf", headers=STAFF)
        assert "Rechnung" in text_of(card.content)
        await svc.client.post("/orders", json=order("W-REJ", ["262-99999"]), headers=SERVICE)
        r = await svc.client.get("/orders/W-REJ/documents/registration-card.pdf", headers=STAFF)
        assert r.status_code == 404 and r.json()["code"] == "no-documents"


def test_sample_documents_render() -> None:
    creditor = Creditor(
        name="VHS Muster",
        address="Marktplatz 1, 12345 Musterstadt",
        identifier="DE98ZZZ09999999999",
        centre="VHS Muster",
    )
    docs = documents.sample_documents(creditor)
    names = [name for name, _ in docs.attachments()]
    assert names == [
        "Anmeldekarte-W-MUSTER-0001.pdf",
        "SEPA-Lastschriftmandat-W-MUSTER-0001.pdf",
    ]
    assert "Erika Mustermann" in text_of(docs.attachments()[1][1])
    assert "DE89 3704 0044 0532 0130 00" in text_of(docs.attachments()[1][1])
