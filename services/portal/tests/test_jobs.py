"""Jobs from the job system (REST and AMQP), client settings and the automatic portal access:
the account is created when the client is flagged, its access mail (template with placeholders
and the signature's head and foot) goes to the right recipient, and repeats change nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest
from mesh_common.app import process_broker
from mesh_common.bus import BusSettings, create_bus
from mesh_contracts.portal import RegisterJob
from pydantic import SecretStr

from .conftest import (
    ADMIN,
    SERVICE,
    STAFF,
    Rig,
    activation_link,
    client_data,
    html_of,
    text_of,
)


async def test_new_job_creates_account_and_sends_the_access_mail(rig: Rig) -> None:
    registered = await rig.register(
        "P-2026-001",
        client_data("K-100", name="Muster & Söhne GmbH"),
        description="Übersetzung Handbuch DE→EN",
        due_date="2026-12-15",
    )
    assert registered["job_created"] and registered["account_created"]
    assert registered["access_mail_id"] and registered["upload_request"] == ""

    (mail,) = await rig.mails_to("k-100@kunde.example")
    assert mail["Subject"] == "Ihr Zugang zum Kundenportal (Vorgang P-2026-001)"
    text = text_of(mail)
    # Placeholders filled in: project number, description, due date, user name, both links.
    assert "Vorgang: P-2026-001" in text
    assert "Auftrag: Übersetzung Handbuch DE→EN" in text
    assert "Termin: 15.12.2026" in text
    assert "Ihr Benutzername: k-100" in text
    link = activation_link(mail)
    assert link.startswith("https://portal.example/api/portal/public/activate?token=")
    assert "https://portal.example/api/portal/public/request-link?username=k-100" in text
    # The signature's head and foot around the body, as text and as HTML (HTML escaped).
    assert text.startswith("Kundenportal der Agentur\n")
    assert "-- \nMit freundlichen Grüßen\nIhre Agentur" in text
    html = html_of(mail)
    assert "<strong>Kundenportal der Agentur</strong>" in html
    assert "Guten Tag Muster &amp; Söhne GmbH," in html  # data is escaped in HTML
    assert "Übersetzung Handbuch DE→EN" in html
    assert f'href="{link}"' in html.replace("&amp;", "&")

    # The token is stored only as its SHA-256.
    token = link.split("token=")[1]
    import hashlib

    from portal_service import models
    from sqlalchemy import select

    async with rig.portal.db.sessionmaker() as session:
        stored = (await session.execute(select(models.activation_tokens))).all()
    assert [r.token_hash for r in stored] == [hashlib.sha256(token.encode()).hexdigest()]
    assert all(token not in str(tuple(r)) for r in stored)

    account = (await rig.client.get("/accounts", headers=STAFF)).json()
    assert [(a["username"], a["status"], a["activation_checked"]) for a in account] == [
        ("k-100", "active", False)
    ]
    assert account[0]["email"] == "k-100@kunde.example"
    assert account[0]["created_by"] == "auto"


async def test_repeated_registration_changes_nothing(rig: Rig) -> None:
    first = await rig.register("P-1", client_data())
    again = await rig.register("P-1", client_data())
    assert again["job_id"] == first["job_id"]
    assert not again["job_created"] and not again["account_created"]
    assert again["access_mail_id"] is None and again["upload_request"] is None
    await rig.mails_to("k-100@kunde.example")
    await asyncio.sleep(0.5)
    assert len(rig.smtp.to("k-100@kunde.example")) == 1
    # A new job of the same client: no second account, no second access mail.
    second = await rig.register("P-2", client_data())
    assert second["job_created"] and not second["account_created"]
    assert second["account_id"] == first["account_id"]


async def test_flags_off_no_account_or_no_mail(rig: Rig) -> None:
    manual = await rig.register("P-1", client_data("K-1", portal_create_uplogin_automatically=0))
    assert manual["account_id"] is None and not manual["account_created"]
    quiet = await rig.register("P-2", client_data("K-2", portal_send_uplogin_email_automatically=0))
    assert quiet["account_created"] and quiet["access_mail_id"] is None
    await asyncio.sleep(0.5)
    assert rig.smtp.messages == []

    # Staff send it manually, with a copy to themselves (and replies to them).
    r = await rig.client.post(
        f"/accounts/{quiet['account_id']}/access-mail",
        json={"kind": "first", "project_no": "P-2", "copy_to": "sachbearbeiter@agentur.example"},
        headers=STAFF,
    )
    assert r.status_code == 202, r.text
    (mail,) = await rig.mails_to("k-2@kunde.example")
    assert mail["Cc"] == "sachbearbeiter@agentur.example"
    assert mail["Reply-To"] == "sachbearbeiter@agentur.example"
    assert rig.smtp.to("sachbearbeiter@agentur.example")
    assert "Vorgang: P-2" in text_of(mail)

    # Manual creation needs an explicit status.
    r = await rig.client.post("/accounts", json={"client_no": "K-1"}, headers=STAFF)
    assert r.status_code == 422
    r = await rig.client.post(
        "/accounts",
        json={"client_no": "K-1", "status": "inactive", "username": "kunde.eins"},
        headers=STAFF,
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "inactive" and r.json()["username"] == "kunde.eins"
    # An inactive account gets no link.
    r = await rig.client.post(f"/accounts/{r.json()['id']}/access-mail", json={}, headers=STAFF)
    assert r.status_code == 409 and r.json()["code"] == "account-inactive"


@pytest.mark.parametrize(
    ("contacts", "chosen", "expected"),
    [
        # 1. only the client's address
        ([], None, "k-100@kunde.example"),
        # contacts but no favourite: still the client's address
        ([("C1", "eins@kunde.example", False)], None, "k-100@kunde.example"),
        # 2. the favourite contact
        (
            [("C1", "eins@kunde.example", False), ("C2", "fav@kunde.example", True)],
            None,
            "fav@kunde.example",
        ),
        # 3. the contact explicitly chosen for the job beats the favourite
        (
            [("C1", "eins@kunde.example", False), ("C2", "fav@kunde.example", True)],
            "C1",
            "eins@kunde.example",
        ),
    ],
)
async def test_recipient_order(
    rig: Rig, contacts: list[tuple[str, str, bool]], chosen: str | None, expected: str
) -> None:
    data = client_data(
        contacts=[
            {"contact_no": no, "name": f"Kontakt {no}", "email": email, "favourite": fav}
            for no, email, fav in contacts
        ]
    )
    registered = await rig.register("P-9", data, contact_no=chosen)
    (mail,) = await rig.mails_to(expected)
    assert mail["To"].addresses[0].addr_spec == expected
    account = (await rig.client.get(f"/accounts/{registered['account_id']}", headers=STAFF)).json()
    assert account["email"] == expected
    others = {"k-100@kunde.example", "eins@kunde.example", "fav@kunde.example"} - {expected}
    assert all(not rig.smtp.to(o) for o in others)


async def test_unknown_contact_and_foreign_job_are_refused(rig: Rig) -> None:
    r = await rig.client.post(
        "/jobs",
        json={"project_no": "P-1", "client": client_data(), "contact_no": "NOPE"},
        headers=SERVICE,
    )
    assert r.status_code == 422 and r.json()["code"] == "unknown-contact"
    await rig.register("P-1", client_data("K-1"))
    r = await rig.client.post(
        "/jobs", json={"project_no": "P-1", "client": client_data("K-2")}, headers=SERVICE
    )
    assert r.status_code == 409 and r.json()["code"] == "job-client-mismatch"
    # Bad keys never reach the hotfolder as directory names.
    r = await rig.client.post(
        "/jobs", json={"project_no": "../etc", "client": client_data()}, headers=SERVICE
    )
    assert r.status_code == 422
    # Participants may not register jobs.
    from mesh_common.auth import mint_token

    from .conftest import SECRET

    participant = {
        "Authorization": "Bearer " + mint_token(subject="p", secret=SECRET, roles=["participant"])
    }
    r = await rig.client.post(
        "/jobs", json={"project_no": "P-5", "client": client_data()}, headers=participant
    )
    assert r.status_code == 403


async def test_client_settings_defaults_and_updates(rig: Rig) -> None:
    r = await rig.client.put("/clients/K-7", json={"name": "Sieben AG"}, headers=STAFF)
    assert r.status_code == 200, r.text
    client = r.json()
    # A new client gets the configured defaults ("Systemstandards").
    assert client["create_hotfolder"] is True
    assert client["hotfolder_delete_days"] == 30
    assert (
        client["portal_create_uplogin_automatically"],
        client["portal_send_uplogin_email_automatically"],
        client["portal_reminder_email_automatically"],
    ) == (1, 1, 1)
    r = await rig.client.put(
        "/clients/K-7",
        json={"email": "info@sieben.example", "portal_reminder_email_automatically": 2},
        headers=STAFF,
    )
    client = r.json()
    assert client["name"] == "Sieben AG"  # left out: unchanged
    assert client["email"] == "info@sieben.example"
    assert client["portal_reminder_email_automatically"] == 2
    r = await rig.client.put(
        "/clients/K-7", json={"portal_reminder_email_automatically": 3}, headers=STAFF
    )
    assert r.status_code == 422
    # Contacts: one favourite at a time.
    for no, fav in (("A", True), ("B", True)):
        r = await rig.client.put(
            f"/clients/K-7/contacts/{no}",
            json={"name": f"Frau {no}", "email": f"{no.lower()}@sieben.example", "favourite": fav},
            headers=STAFF,
        )
        assert r.status_code == 200, r.text
    assert [(c["contact_no"], c["favourite"]) for c in r.json()["contacts"]] == [
        ("A", False),
        ("B", True),
    ]
    assert (await rig.client.get("/clients/K-7")).status_code == 401


async def test_job_over_amqp(rig_factory: object, clamd_server: object, amqp_url: str) -> None:
    """RegisterJob through a real RabbitMQ: the job, the account and the access mail appear;
    an invalid registration is dead-lettered with its reason, not lost."""
    rig: Rig = await rig_factory(clamd_server, amqp_url=SecretStr(amqp_url))  # type: ignore[operator]
    job_system = create_bus(
        BusSettings(service="ptworkflow", amqp_url=SecretStr(amqp_url)), broker=None
    )
    await job_system.start()
    try:
        await job_system.send(
            RegisterJob(
                project_no="P-AMQP-1",
                ticket_no="1",
                client={"client_no": "K-AMQP", "email": "amqp@kunde.example"},
                description="Flyer",
                due_date=dt.date(2026, 12, 1),
            )
        )
        (mail,) = await rig.mails_to("amqp@kunde.example")
        assert "Vorgang: P-AMQP-1/1" in text_of(mail)
        jobs = (await rig.client.get("/jobs", headers=STAFF)).json()
        assert [(j["project_no"], j["source"]) for j in jobs] == [("P-AMQP-1", "amqp")]
        detail = (await rig.client.get(f"/jobs/{jobs[0]['id']}", headers=STAFF)).json()
        assert [t["ticket_no"] for t in detail["tickets"]] == ["1"]

        await job_system.send(
            RegisterJob(
                project_no="P-AMQP-2",
                client={"client_no": "K-AMQP"},
                contact_no="MISSING",
            )
        )
        queue = "portal.register_job"
        for _ in range(200):
            dead = await rig.runtime.bus.dlq_list(queue)
            if dead:
                break
            await asyncio.sleep(0.05)
        assert dead and "unknown-contact" in str(dead[0])
    finally:
        await job_system.stop()


async def test_in_memory_bus_registration(rig: Rig) -> None:
    """The embedded default: the same command over the in-process broker."""
    sender = create_bus(BusSettings(service="ptworkflow"), broker=process_broker())
    await sender.start()
    try:
        await sender.send(
            RegisterJob(project_no="P-MEM", client={"client_no": "K-MEM", "email": "m@k.example"})
        )
        (mail,) = await rig.mails_to("m@k.example")
        assert re.search(r"Benutzername: k-mem", text_of(mail))
    finally:
        await sender.stop()


async def test_template_edit_changes_the_next_mail(rig: Rig) -> None:
    """Admins edit the access template and the signature (versions, validation); staff only
    read. The next mail uses the new versions."""
    r = await rig.client.get("/mail/templates", headers=STAFF)
    names = {t["name"] for t in r.json()}
    assert {
        "portal-access",
        "portal-activation-link",
        "portal-upload-request",
        "hotfolder-internal",
        "signature",
    } <= names
    broken = {"subject": "x", "text": "{{ data_project['project_no'] ", "html": None}
    r = await rig.client.post("/mail/templates/portal-access/versions", json=broken, headers=ADMIN)
    assert r.status_code == 422 and r.json()["code"] == "template-invalid"
    new = {
        "subject": "Zugang {{ data_project['portal_client_username'] }}",
        "text": "Link: {{ data_project['portal_first_activation_link'] }}",
        "layout": "signature",
        "activate": True,
    }
    r = await rig.client.post("/mail/templates/portal-access/versions", json=new, headers=STAFF)
    assert r.status_code == 403
    r = await rig.client.post("/mail/templates/portal-access/versions", json=new, headers=ADMIN)
    assert r.status_code == 201, r.text
    foot = {
        "kind": "part",
        "text": "KOPF\n{{ content }}\nFUSS",
        "html": "<div>KOPF</div>{{ content }}<div>FUSS</div>",
        "activate": True,
    }
    r = await rig.client.post("/mail/templates/signature/versions", json=foot, headers=ADMIN)
    assert r.status_code == 201, r.text
    await rig.register("P-T", client_data("K-T"))
    (mail,) = await rig.mails_to("k-t@kunde.example")
    assert mail["Subject"] == "Zugang k-t"
    text = text_of(mail)
    assert text.startswith("KOPF\nLink: https://portal.example/api/portal/public/activate?token=")
    assert text.rstrip().endswith("FUSS")


async def test_concurrent_first_jobs_of_a_new_client(any_rig: Rig) -> None:
    """Several jobs of a client the portal does not know yet, at once: one client, one
    account, one access mail, every job stored (SQLite and PostgreSQL)."""
    rig = any_rig
    data = client_data("K-RACE")
    results = await asyncio.gather(
        *(
            rig.client.post(
                "/jobs", json={"project_no": f"P-R{i}", "client": data}, headers=SERVICE
            )
            for i in range(5)
        )
    )
    assert [r.status_code for r in results] == [201] * 5, [r.text for r in results]
    assert sum(r.json()["account_created"] for r in results) == 1
    assert len({r.json()["account_id"] for r in results}) == 1
    await rig.mails_to("k-race@kunde.example")
    await asyncio.sleep(0.5)
    assert len(rig.smtp.to("k-race@kunde.example")) == 1
    jobs = (await rig.client.get("/jobs", headers=STAFF, params={"client_no": "K-RACE"})).json()
    assert len(jobs) == 5
