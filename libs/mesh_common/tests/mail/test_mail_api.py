"""A real service app (create_service_app) wired with mail_hooks/template_hooks and both routers,
on SQLite and PostgreSQL, sending to the test SMTP server: staff outbox API, template API with
roles and problem+json, the preview hook, metrics, and a booking-style flow end to end."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.auth import mint_token
from mesh_common.db import service_metadata
from mesh_common.mail import (
    Attachment,
    MailSettings,
    OutgoingMail,
    PreviewExtras,
    PreviewInput,
    TemplateDefault,
    TemplateStore,
    enqueue,
    mail_hooks,
    mail_router,
    mail_tables,
    template_hooks,
    template_router,
    template_tables,
)
from mesh_common.settings import ServiceSettings
from mesh_common.testing.smtp import SmtpCapture
from pydantic import SecretStr
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text

SECRET = "mail-api-test-secret-0123456789abcdefghij"
PROBLEM = "application/problem+json"


class Settings(ServiceSettings, MailSettings):
    service_name: str = "mailtest"


def token(*roles: str, sub: str = "u1") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(subject=sub, secret=SECRET, roles=roles)}


STAFF, ADMIN = token("staff", sub="sam"), token("admin", sub="ada")


@dataclass
class Service:
    client: httpx.AsyncClient
    app: FastAPI
    smtp: SmtpCapture
    bookings: Table
    store: TemplateStore

    @property
    def runtime(self) -> ServiceRuntime:
        runtime: ServiceRuntime = self.app.state.runtime
        return runtime


def build(settings: Settings, smtp: SmtpCapture) -> tuple[FastAPI, Table, TemplateStore]:
    metadata: MetaData = service_metadata()
    outbox_tables = mail_tables(metadata)
    store = TemplateStore(
        template_tables(metadata),
        {
            "booking-confirmation": TemplateDefault(
                subject="Anmeldung {{ course }}",
                text="Hallo {{ name }}, Sie sind angemeldet.",
                html="<p>Hallo {{ name }}</p>",
                sample={"name": "Erika", "course": "Spanisch A1"},
            )
        },
    )
    bookings = Table(
        "bookings",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("email", String(200), nullable=False),
    )

    async def pdf_preview(p: PreviewInput) -> PreviewExtras:
        card = f"%PDF card for {p.context.get('name')}".encode()
        return PreviewExtras(
            attachments=[
                Attachment(filename="karte.pdf", content_type="application/pdf", data=card)
            ],
            data={"rendered_subject": p.rendered.subject},
        )

    booking_api = APIRouter()

    @booking_api.post("/bookings", status_code=201)
    async def book(body: dict[str, Any]) -> dict[str, Any]:
        """A booking and its confirmation mail commit together (or neither does)."""
        runtime = app.state.runtime
        async with runtime.db.unit_of_work() as session:
            rendered = await store.render(
                "booking-confirmation",
                {"name": body["name"], "course": body["course"]},
                session=session,
            )
            result = await session.execute(bookings.insert().values(email=body["email"]))
            booking_id = result.inserted_primary_key[0]
            mail_id = await enqueue(
                session,
                outbox_tables,
                rendered.mail(
                    to=body["email"], category="booking-confirmation", ref=str(booking_id)
                ),
            )
            if body.get("fail"):
                raise RuntimeError("seat gone")
        return {"booking": booking_id, "mail": mail_id}

    start_mail, stop_mail = mail_hooks(outbox_tables)
    start_templates, stop_templates = template_hooks(store)
    app = create_service_app(
        settings,
        title="mail test",
        description="mail test service",
        metadata=metadata,
        routers=[booking_api, mail_router(), template_router(preview_extras=pdf_preview)],
        on_startup=[start_templates, start_mail],
        on_shutdown=[stop_mail, stop_templates],
    )
    return app, bookings, store


@pytest.fixture(params=["sqlite", "postgres"])
async def service(
    request: pytest.FixtureRequest, smtp_server: SmtpCapture
) -> AsyncIterator[Service]:
    schema = None
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
        schema = f"mailapi_{uuid.uuid4().hex[:10]}"
    settings = Settings(
        database_url=url,
        db_schema=schema,
        mesh_jwt_secret=SecretStr(SECRET),
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        mail_from="VHS <noreply@vhs.example>",
        mail_backoff_seconds=0.05,
        mail_backoff_max_seconds=0.1,
        mail_poll_seconds=0.05,
        mail_max_attempts=2,
    )
    app, bookings, store = build(settings, smtp_server)
    try:
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
                yield Service(client, app, smtp_server, bookings, store)
    finally:
        if schema:
            from mesh_common.db import Database

            cleanup = Database(url)
            async with cleanup.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            await cleanup.dispose()


async def wait_for_status(client: httpx.AsyncClient, mail_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = (await client.get(f"/mail/outbox/{mail_id}", headers=STAFF)).json()
        if body.get("status") == status:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)


async def test_booking_and_mail_commit_together(service: Service) -> None:
    c = service.client
    r = await c.post(
        "/bookings", json={"email": "erika@example.org", "name": "Erika", "course": "Yoga"}
    )
    assert r.status_code == 201
    mail_id = r.json()["mail"]
    (captured,) = await service.smtp.wait_for(1)
    assert captured.message["Subject"] == "Anmeldung Yoga"
    assert captured.message["From"] == "VHS <noreply@vhs.example>"
    record = await wait_for_status(c, mail_id, "sent")
    assert record["ref"] == str(r.json()["booking"])

    with pytest.raises(RuntimeError):
        await c.post(
            "/bookings",
            json={"email": "x@example.org", "name": "X", "course": "Yoga", "fail": True},
        )
    async with service.runtime.db.engine.connect() as conn:
        assert (
            await conn.execute(select(func.count()).select_from(service.bookings))
        ).scalar() == 1
    page = (await c.get("/mail/outbox", headers=STAFF)).json()
    assert page["total"] == 1
    await asyncio.sleep(0.2)
    assert len(service.smtp.messages) == 1


async def test_outbox_api(service: Service) -> None:
    c = service.client
    service.smtp.refuse("gone@example.org")
    tables = service.runtime.extras["mail_outbox"].tables
    ids = []
    async with service.runtime.db.unit_of_work() as session:
        for i, to in enumerate(["a@example.org", "gone@example.org", "b@example.org"]):
            mail = OutgoingMail(
                to=to,
                subject=f"Mail {i}",
                text="x",
                category="notice",
                ref=f"r{i}",
                attachments=[Attachment(filename="a.bin", data=b"\x00secret-bytes")],
            )
            ids.append(await enqueue(session, tables, mail))
    await wait_for_status(c, ids[1], "failed")
    await wait_for_status(c, ids[2], "sent")

    assert (await c.get("/mail/outbox")).status_code == 401
    r = await c.get("/mail/outbox", headers=token("participant"))
    assert r.status_code == 403 and r.headers["content-type"].startswith(PROBLEM)

    page = (await c.get("/mail/outbox?status=failed", headers=STAFF)).json()
    assert page["total"] == 1 and page["items"][0]["id"] == ids[1]
    assert "550" in page["items"][0]["last_error"]
    page = (await c.get("/mail/outbox?limit=2&offset=0", headers=STAFF)).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = (await c.get("/mail/outbox?limit=2&offset=2", headers=STAFF)).json()
    assert len(rest["items"]) == 1
    assert {i["id"] for i in page["items"] + rest["items"]} == set(ids)
    assert (await c.get("/mail/outbox?ref=r2", headers=STAFF)).json()["items"][0]["id"] == ids[2]
    bad = await c.get("/mail/outbox?status=lost", headers=STAFF)
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(PROBLEM)

    detail = await c.get(f"/mail/outbox/{ids[2]}", headers=STAFF)
    assert detail.status_code == 200
    assert detail.json()["attachments"] == [
        {"filename": "a.bin", "content_type": "application/octet-stream", "size": 13}
    ]
    assert (
        "secret-bytes" not in detail.text
        and base64.b64encode(b"\x00secret").decode() not in detail.text
    )

    missing = await c.get("/mail/outbox/nope", headers=STAFF)
    assert missing.status_code == 404 and missing.json()["code"] == "mail-not-found"
    not_failed = await c.post(f"/mail/outbox/{ids[2]}/retry", headers=STAFF)
    assert not_failed.status_code == 409
    assert (
        not_failed.json()["code"] == "mail-not-failed"
        and not_failed.json()["mail_status"] == "sent"
    )

    service.smtp.refusals.clear()
    retried = await c.post(f"/mail/outbox/{ids[1]}/retry", headers=STAFF)
    assert retried.status_code == 200 and retried.json()["attempts"] == 0
    await wait_for_status(c, ids[1], "sent")
    assert len(service.smtp.to("gone@example.org")) == 1

    metrics = (await c.get("/metrics")).text
    assert 'mail_sent_total{category="notice"} 3.0' in metrics
    assert 'mail_failed_total{category="notice",reason="permanent"} 1.0' in metrics
    assert "mail_queue_depth" in metrics


async def test_template_api(service: Service) -> None:
    c = service.client
    listed = (await c.get("/mail/templates", headers=STAFF)).json()
    assert [(t["name"], t["active_version"], t["has_default"]) for t in listed] == [
        ("booking-confirmation", 1, True)
    ]
    detail = (await c.get("/mail/templates/booking-confirmation", headers=STAFF)).json()
    assert detail["sample"] == {"name": "Erika", "course": "Spanisch A1"}
    assert detail["active"]["subject"] == "Anmeldung {{ course }}"

    body = {"subject": "Anmeldung {{ course }}", "text": "Hi {{ name }}\n{% if %}", "comment": "x"}
    assert (
        await c.post("/mail/templates/booking-confirmation/versions", json=body, headers=STAFF)
    ).status_code == 403  # staff may read, not change
    r = await c.post("/mail/templates/booking-confirmation/versions", json=body, headers=ADMIN)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    problem = r.json()
    assert problem["code"] == "template-invalid"
    assert problem["errors"][0]["kind"] == "syntax" and problem["errors"][0]["line"] == 2
    assert "line 2" in problem["detail"]

    escape = {"subject": "x", "text": "{{ ''.__class__.__mro__ }}"}
    r = await c.post("/mail/templates/booking-confirmation/versions", json=escape, headers=ADMIN)
    assert r.status_code == 422 and r.json()["errors"][0]["kind"] == "security"

    good = {"subject": "Bestätigung: {{ course }}", "text": "Hallo {{ name }}!", "comment": "neu"}
    r = await c.post("/mail/templates/booking-confirmation/versions", json=good, headers=ADMIN)
    assert r.status_code == 201
    assert (r.json()["version"], r.json()["active"], r.json()["author"]) == (2, False, "ada")
    r = await c.post("/mail/templates/booking-confirmation/versions/2/activate", headers=STAFF)
    assert r.status_code == 403
    r = await c.post("/mail/templates/booking-confirmation/versions/2/activate", headers=ADMIN)
    assert r.status_code == 200 and r.json()["active"]
    versions = (await c.get("/mail/templates/booking-confirmation/versions", headers=STAFF)).json()
    assert [(v["version"], v["active"]) for v in versions] == [(2, True), (1, False)]
    v1 = (await c.get("/mail/templates/booking-confirmation/versions/1", headers=STAFF)).json()
    assert v1["author"] == "system"

    # Preview: the active version with the sample, a stored version with supplied data, an
    # unsaved body; the service's hook adds its PDF.
    p = (
        await c.post("/mail/templates/booking-confirmation/preview", json={}, headers=STAFF)
    ).json()
    assert p["subject"] == "Bestätigung: Spanisch A1" and p["text"] == "Hallo Erika!"
    assert p["extra"] == {"rendered_subject": "Bestätigung: Spanisch A1"}
    (pdf,) = p["attachments"]
    assert base64.b64decode(pdf["data_base64"]) == b"%PDF card for Erika"
    p = (
        await c.post(
            "/mail/templates/booking-confirmation/preview",
            json={"version": 1, "context": {"name": "Bo", "course": "Ton"}},
            headers=STAFF,
        )
    ).json()
    assert (p["subject"], p["html"]) == ("Anmeldung Ton", "<p>Hallo Bo</p>")
    p = await c.post(
        "/mail/templates/booking-confirmation/preview",
        json={"source": {"subject": "S", "text": "{{ nope }}"}},
        headers=STAFF,
    )
    assert p.status_code == 422 and p.json()["errors"][0]["kind"] == "undefined"

    audit = (await c.get("/mail/templates/booking-confirmation/audit", headers=STAFF)).json()
    assert [(a["action"], a["version"], a["actor"]) for a in audit] == [
        ("activated", 2, "ada"),
        ("created", 2, "ada"),
        ("seeded", 1, "system"),
    ]
    assert len((await c.get("/mail/template-audit", headers=STAFF)).json()) == 3

    r = await c.get("/mail/templates/nope", headers=STAFF)
    assert r.status_code == 404 and r.json()["code"] == "template-not-found"
    r = await c.get("/mail/templates/bad%20name", headers=STAFF)
    assert r.status_code == 422

    # The next booking uses the activated version.
    await c.post("/bookings", json={"email": "z@example.org", "name": "Zoe", "course": "Chor"})
    (captured,) = await service.smtp.wait_for(1)
    assert captured.message["Subject"] == "Bestätigung: Chor"


async def test_settings_without_mail_settings_fail_clearly() -> None:
    start, _ = mail_hooks(mail_tables(service_metadata()))

    @dataclass
    class FakeRuntime:
        settings: Any
        db: Any = None
        extras: dict[str, Any] | None = None

    with pytest.raises(RuntimeError, match="MailSettings"):
        await start(FakeRuntime(settings=ServiceSettings(service_name="x")))
