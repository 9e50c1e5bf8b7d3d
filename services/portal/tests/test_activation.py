"""Activation links: valid 30 minutes, single use, stored as a hash, forged ones refused; a new
link by user name without revealing whether the name exists; the activation is recorded
(checked + timestamp); the links never readable in the mail outbox (sealed until sent, shown
redacted), and no start without MESH_SECRET_KEY. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from typing import Any

import pytest
from mesh_common.mail.sealing import unseal
from mesh_common.secrets import SecretKeyMissing
from portal_service import models
from sqlalchemy import select

from .conftest import (
    PASSWORD,
    STAFF,
    Rig,
    activation_link,
    client_data,
    csrf_of,
    login,
    path_of,
    set_password,
    text_of,
)


async def first_link(rig: Rig, client_no: str = "K-100") -> str:
    await rig.register("P-1", client_data(client_no))
    (mail,) = await rig.mails_to(f"{client_no.lower()}@kunde.example")
    return activation_link(mail)


async def test_activation_sets_password_records_it_and_signs_in(any_rig: Rig) -> None:
    rig = any_rig
    link = await first_link(rig)
    browser = rig.browser()
    page = await browser.get(path_of(link))
    assert page.status_code == 200
    assert "Choose your password" in page.text and 'id="activate-username">k-100<' in page.text
    before = rig.portal.now()
    r = await set_password(browser, link)
    assert r.status_code == 303 and r.headers["location"] == "/public/jobs?welcome=1"
    jobs = await browser.get("/public/jobs?welcome=1")
    assert jobs.status_code == 200 and "Signed in as <strong>k-100</strong>" in jobs.text
    assert "P-1" in jobs.text

    (account,) = (await rig.client.get("/accounts", headers=STAFF)).json()
    assert account["activation_checked"] is True
    assert account["has_password"] is True
    from datetime import datetime

    updated = datetime.fromisoformat(account["activation_updated"]).timestamp()
    assert before - 1 <= updated <= rig.portal.now() + 1
    # The password is an Argon2id hash.
    async with rig.portal.db.sessionmaker() as session:
        stored = (await session.execute(select(models.accounts.c.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored

    # Signing in again with the new password works in a fresh browser.
    other = rig.browser()
    r = await login(other, "k-100")
    assert r.status_code == 303, r.text


async def test_link_is_single_use(any_rig: Rig) -> None:
    rig = any_rig
    link = await first_link(rig)
    assert (await set_password(rig.browser(), link)).status_code == 303
    again = rig.browser()
    page = await again.get(path_of(link))
    assert page.status_code == 400 and "Activation link not valid" in page.text
    # Posting the used token directly does not work either.
    r = await again.post(
        "/public/activate",
        data={
            "csrf": again.cookies["portal_csrf"],
            "token": link.split("token=")[1],
            "password": "Another-Pass-99",
            "password_confirm": "Another-Pass-99",
        },
    )
    assert r.status_code == 422 and "already used, has expired or is unknown" in r.text
    assert (await login(rig.browser(), "k-100", "Another-Pass-99")).status_code == 401


async def test_concurrent_uses_of_one_link_only_one_wins(any_rig: Rig) -> None:
    rig = any_rig
    link = await first_link(rig)
    results = await asyncio.gather(*(set_password(rig.browser(), link) for _ in range(4)))
    assert sorted(r.status_code for r in results) == [303, 422, 422, 422]


async def test_link_expires_after_30_minutes(any_rig: Rig) -> None:
    rig = any_rig
    link = await first_link(rig)
    rig.clock.advance(29 * 60)
    browser = rig.browser()
    assert (await browser.get(path_of(link))).status_code == 200
    rig.clock.advance(61)
    page = await browser.get(path_of(link))
    assert page.status_code == 400 and "valid for 30 minutes" in page.text
    r = await set_password(browser, link)
    assert r.status_code == 422
    assert "not valid" in r.text


async def test_forged_tokens_are_refused(rig: Rig) -> None:
    link = await first_link(rig)
    real = link.split("token=")[1]
    forged = [
        "",
        "abc",
        real[:-1] + ("A" if real[-1] != "A" else "B"),  # one character off
        secrets.token_urlsafe(32),  # well-formed, never issued
        hashlib.sha256(real.encode()).hexdigest(),  # the stored hash is not a token
        "../../etc/passwd",
        "x" * 5000,
    ]
    browser = rig.browser()
    for token in forged:
        page = await browser.get("/public/activate", params={"token": token})
        assert page.status_code == 400, token
        r = await browser.post(
            "/public/activate",
            data={
                "csrf": browser.cookies["portal_csrf"],
                "token": token,
                "password": PASSWORD,
                "password_confirm": PASSWORD,
            },
        )
        assert r.status_code == 422, token
    # The real one still works afterwards.
    assert (await set_password(browser, link)).status_code == 303


async def test_rejected_password_does_not_use_up_the_link(rig: Rig) -> None:
    link = await first_link(rig)
    browser = rig.browser()
    for password, confirm, message in (
        ("short", "short", "at least 10 characters"),
        ("Long-enough-1", "Long-enough-2", "The two passwords differ"),
        ("k-100", "k-100", "at least 10 characters"),
        ("aaaaaaaaaaaa", "aaaaaaaaaaaa", "four different characters"),
    ):
        r = await set_password(browser, link, password, confirm)
        assert r.status_code == 422 and message in r.text, r.text
        assert "Choose your password" in r.text  # the form again, the link still in it
    assert (await set_password(browser, link)).status_code == 303


async def test_missing_csrf_is_refused(rig: Rig) -> None:
    link = await first_link(rig)
    browser = rig.browser()
    await browser.get(path_of(link))
    token = link.split("token=")[1]
    form = {"token": token, "password": PASSWORD, "password_confirm": PASSWORD}
    r = await browser.post("/public/activate", data={**form, "csrf": "wrong"})
    assert r.status_code == 403 and "Reload the page" in r.text
    r = await browser.post(
        "/public/activate",
        data={**form, "csrf": browser.cookies["portal_csrf"]},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert r.status_code == 403
    assert (await set_password(browser, link)).status_code == 303


async def test_new_link_by_user_name_reveals_nothing(any_rig: Rig) -> None:
    rig = any_rig
    old = await first_link(rig)
    browser = rig.browser()

    async def request_link(name: str) -> str:
        page = await browser.get("/public/request-link")
        r = await browser.post(
            "/public/request-link", data={"csrf": csrf_of(page.text), "username": name}
        )
        assert r.status_code == 200
        return r.text

    known = await request_link("K-100")  # user names are case-insensitive
    unknown = await request_link("nobody-here")
    strip = lambda html: html.replace('value="' + browser.cookies["portal_csrf"] + '"', "")  # noqa: E731
    assert strip(known) == strip(unknown)
    assert "If an active portal access with this user name exists" in known

    mails = await rig.mails_to("k-100@kunde.example", 2)
    renewal = mails[1]
    assert renewal["Subject"] == "Neuer Aktivierungslink für Ihren Portalzugang k-100"
    new = activation_link(renewal)
    assert new != old
    assert "gültig für 30 Minuten" in text_of(renewal)
    # Nothing went anywhere for the unknown name.
    await asyncio.sleep(0.3)
    assert len(rig.smtp.messages) == 2
    # The newer link revokes the older one.
    assert (await browser.get(path_of(old))).status_code == 400
    assert (await set_password(rig.browser(), new)).status_code == 303


async def test_new_link_requests_are_limited_per_name(rig: Rig) -> None:
    await first_link(rig)
    browser = rig.browser()
    for _ in range(5):
        page = await browser.get("/public/request-link")
        r = await browser.post(
            "/public/request-link", data={"csrf": csrf_of(page.text), "username": "k-100"}
        )
        assert r.status_code == 200
    await asyncio.sleep(0.5)
    # 1 access mail + 3 links (PORTAL_LINK_REQUESTS_PER_USER), the rest silently dropped.
    assert len(await rig.mails_to("k-100@kunde.example", 4)) == 4
    await asyncio.sleep(0.5)
    assert len(rig.smtp.to("k-100@kunde.example")) == 4


async def test_deactivated_account_cannot_activate_or_sign_in(rig: Rig) -> None:
    link = await first_link(rig)
    browser = rig.browser()
    assert (await set_password(browser, link)).status_code == 303
    (account,) = (await rig.client.get("/accounts", headers=STAFF)).json()
    r = await rig.client.patch(
        f"/accounts/{account['id']}", json={"status": "inactive"}, headers=STAFF
    )
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    # Signed out at once, and cannot sign in.
    page = await browser.get("/public/jobs", headers={"accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/public/login"
    r = await login(rig.browser(), "k-100")
    assert r.status_code == 403 and "deactivated" in r.text
    r = await rig.client.patch(
        f"/accounts/{account['id']}", json={"status": "active"}, headers=STAFF
    )
    assert (await login(rig.browser(), "k-100")).status_code == 303


async def _outbox_record(rig: Rig, mail_id: str, status: str | None = None) -> dict[str, Any]:
    for _ in range(500):
        r = await rig.client.get(f"/mail/outbox/{mail_id}", headers=STAFF)
        assert r.status_code == 200, r.text
        record: dict[str, Any] = r.json()
        if status is None or record["status"] == status:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"mail {mail_id} did not become {status}")


def _sqlite_bytes(rig: Rig) -> bytes:
    return b"".join(p.read_bytes() for p in rig.tmp.rglob("*.sqlite3*"))


async def test_activation_links_are_never_readable_in_the_outbox(any_rig: Rig) -> None:
    """The access mail and a new-link mail carry their token to the customer, but the queue
    keeps it only sealed until sent: staff see ``[redacted]``, no column holds it, and once the
    mail is sent the sealed copy is gone."""
    rig = any_rig
    registered = await rig.register("P-1", client_data("K-100"))
    (access,) = await rig.mails_to("k-100@kunde.example")
    first_token = activation_link(access).split("token=")[1]
    browser = rig.browser()
    page = await browser.get("/public/request-link")
    r = await browser.post(
        "/public/request-link", data={"csrf": csrf_of(page.text), "username": "k-100"}
    )
    assert r.status_code == 200
    renewal = (await rig.mails_to("k-100@kunde.example", 2))[1]
    new_token = activation_link(renewal).split("token=")[1]

    r = await rig.client.get(
        "/mail/outbox", params={"category": "portal-activation-link"}, headers=STAFF
    )
    (listed,) = r.json()["items"]
    for mail_id, token in ((registered["access_mail_id"], first_token), (listed["id"], new_token)):
        record = await _outbox_record(rig, mail_id, "sent")
        assert token not in str(record)
        assert "activate?token=[redacted]" in record["text"]
        assert "activate?token=[redacted]" in record["html"]
        assert record["sealed"] is False  # sent: the sealed copy is erased
    q = models.mail.queue
    async with rig.portal.db.sessionmaker() as session:
        rows = (await session.execute(select(q))).all()
    assert len(rows) == 2 and all(row.sealed_content is None for row in rows)
    assert not any(t in repr(tuple(row)) for row in rows for t in (first_token, new_token))
    if rig.settings.database_url.startswith("sqlite"):
        assert first_token.encode() not in _sqlite_bytes(rig)
        assert new_token.encode() not in _sqlite_bytes(rig)
    # The delivered links work.
    assert (await set_password(rig.browser(), activation_link(renewal))).status_code == 303


async def test_an_unsent_access_mail_shows_staff_no_link(
    rig_factory: Any, clamd_server: Any
) -> None:
    """While the link is valid and the mail not yet sent (this replica only queues), the outbox
    shows it redacted and says its content is sealed; the database holds no token."""
    rig: Rig = await rig_factory(clamd_server, mail_sender_enabled=False)
    registered = await rig.register("P-7", client_data("K-700"))
    record = await _outbox_record(rig, registered["access_mail_id"])
    assert record["status"] == "pending" and record["sealed"] is True
    assert "activate?token=[redacted]" in record["text"]
    q = models.mail.queue
    async with rig.portal.db.sessionmaker() as session:
        sealed = (await session.execute(select(q.c.sealed_content))).scalar_one()
    # The seal holds the real link: it opens with the portal's key on this mail only.
    assert rig.portal.box is not None
    real = unseal(sealed, registered["access_mail_id"], rig.portal.box)
    token = re.search(r"activate\?token=([A-Za-z0-9_-]{43})", real["text"])
    assert token and token.group(1) not in _sqlite_bytes(rig).decode("latin-1")


async def test_the_portal_does_not_start_without_a_secret_key(
    rig_factory: Any, clamd_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESH_SECRET_KEY", raising=False)
    with pytest.raises(SecretKeyMissing, match="MESH_SECRET_KEY is not set"):
        await rig_factory(clamd_server)
