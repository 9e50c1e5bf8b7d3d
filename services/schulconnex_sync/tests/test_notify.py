"""Seed step 11 by mail: the feedback of a run (counts per case and outcome, the failed
records) to the configured recipients, through the mail outbox and a real SMTP server
(aiosmtpd); opt-in per connection and for the environment; dry runs never mail."""

from __future__ import annotations

import datetime as dt

import pytest
from mesh_common.testing.smtp import SmtpCapture

from .support import ALLOWED, CourseDB, Fake, ServiceFactory, eventually, token

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def _mail(smtp: SmtpCapture) -> dict[str, object]:
    return {
        "smtp_host": smtp.host,
        "smtp_port": smtp.port,
        "mail_poll_seconds": 0.05,
        "smtp_timeout": 5,
    }


async def test_feedback_mail_after_a_run_with_failures(
    fake: Fake, service_factory: ServiceFactory, coursedb: CourseDB, smtp_server: SmtpCapture
) -> None:
    service = await service_factory(
        **fake.env(),
        **_mail(smtp_server),
        sync_notify_recipients=["office@vhs.example", "it@vhs.example"],
        schulconnex_max_retries=0,
    )
    course = await coursedb.course("252-40401", "Spanisch A1")
    anna = await coursedb.participant("Anna", "Alt", dt.date(1990, 1, 1))
    bert = await coursedb.participant("Bert", "Bauer", dt.date(1985, 5, 5))
    for p in (anna, bert):
        await coursedb.register(course, p)
    # Bert's person cannot be created (the server keeps failing for his record).
    fake.fake.add_fault(status=503, count=None, method="POST", body_contains="Bauer")

    dry = await service.run(dry_run=True)
    assert dry["status"] in ("succeeded", "partially_succeeded")
    ex = await service.run()
    assert ex["status"] == "partially_succeeded", ex
    (mail,) = await smtp_server.wait_for(1)
    assert sorted(mail.rcpt_tos) == ["it@vhs.example", "office@vhs.example"]
    message = mail.message
    subject = " ".join(str(message["Subject"]).split())
    assert subject == (
        "[edumesh schulconnex-sync] Schulconnex-Synchronisation: teilweise erfolgreich "
        "(3 angelegt, 0 aktualisiert, 0 gelöscht, 2 Fehler)"
    )
    body = message.get_content()
    assert ex["id"] in body and f"GET /runs/{ex['id']}" in body
    assert "Personen (Fall: Ergebnis):" in body and "case 6" in body
    assert "Gruppen (Fall: Ergebnis):" in body
    assert f"participant:{bert} (person.create): HTTP 503" in body
    assert f"/tasks/executions/{ex['id']}/retry" in body
    # Keys only, never names or dates of birth.
    for personal in ("Anna", "Bauer", "1990-01-01"):
        assert personal not in body and personal not in subject

    # Queued through the outbox (visible in the mail API), the dry run mailed nothing.
    async def marked_sent() -> bool:
        r = await service.client.get("/mail/outbox", headers=ALLOWED, params={"status": "sent"})
        assert r.status_code == 200, r.text
        return bool(r.json()["items"])

    await eventually(marked_sent)
    r = await service.client.get("/mail/outbox", headers=ALLOWED)
    sent = r.json()["items"]
    assert [m["category"] for m in sent] == ["schulconnex-sync"] and sent[0]["ref"] == ex["id"]

    # A successful run is not worth a mail by default (SYNC_NOTIFY_ON).
    fake.fake.clear_faults()
    ok = await service.run()
    assert ok["status"] == "succeeded"
    r = await service.client.get("/mail/outbox", headers=ALLOWED)
    assert r.json()["total"] == 1


async def test_no_recipients_no_mail_and_connections_have_their_own(
    fake: Fake, service_factory: ServiceFactory, coursedb: CourseDB, smtp_server: SmtpCapture
) -> None:
    service = await service_factory(**fake.env(), **_mail(smtp_server))
    course = await coursedb.course("252-40401", "Spanisch A1")
    await coursedb.register(course, await coursedb.participant("Anna", "Alt", dt.date(1990, 1, 1)))
    ex = await service.run()
    assert ex["status"] == "succeeded"
    assert (await service.client.get("/mail/outbox", headers=ALLOWED)).json()["total"] == 0

    admin = token(roles=["admin"])
    settings = {
        "base_url": fake.server.base_url,
        "token_url": fake.server.token_url,
        "client_id": fake.creds["client_id"],
        "client_secret": fake.creds["client_secret"],
        "notify_recipients": ["not an address"],
    }
    r = await service.client.post(
        "/connections",
        headers=admin,
        json={"name": "land", "kind": "schulconnex", "settings": settings},
    )
    assert r.status_code in (400, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    settings |= {"notify_recipients": ["land@vhs.example"], "notify_on": ["succeeded"]}
    r = await service.client.post(
        "/connections",
        headers=admin,
        json={"name": "land", "kind": "schulconnex", "settings": settings},
    )
    assert r.status_code == 201, r.text
    r = await service.client.post("/sync", headers=ALLOWED, json={"connection": "land"})
    ex2 = await service.finished(r.json()["execution_id"])
    assert ex2["status"] == "succeeded", ex2
    (mail,) = await smtp_server.wait_for(1)
    assert mail.rcpt_tos == ("land@vhs.example",)
    assert "Verbindung:     land" in mail.message.get_content()
    assert "erfolgreich" in str(mail.message["Subject"])
