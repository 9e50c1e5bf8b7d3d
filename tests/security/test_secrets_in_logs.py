"""Secrets never appear in logs.

The flows that handle secrets run against the embedded mesh (with INFO logging): a portal
customer activates an access with a password, fails to sign in with a wrong one and signs in;
participants store bank accounts (valid and invalid IBANs) and book with a new SEPA account;
admins store connection credentials (Brevo API key, Schulconnex client secret, SMTP/IMAP
passwords) and test them against servers that refuse them; tokens travel in ``Authorization``,
``X-Delegation-Token`` and ``X-Participant-Token``, valid and forged. Then the launcher's log
and every log under var/ are scanned for each of those values (and for any bearer token at
all). The same scan runs once more over the whole session when the mesh stops (conftest), with
the secrets every other test registered.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

import httpx
import pytest
from mesh_common.auth.delegation import mint_delegation

from .conftest import JWT_SECRET, Mesh
from .portal_customer import CSRF_RE, new_customer, sign_in


def _iban_forms(iban: str) -> set[str]:
    grouped = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return {iban, grouped, iban[4:-4]}  # the account digits, without the masked tail


@dataclass
class Flows:
    secrets: set[str]
    activation_token: str
    access_mail_id: str | None


@pytest.fixture(scope="module")
def flows(mesh: Mesh) -> Flows:
    """Run every secret-handling flow once; the secrets they used."""
    used: set[str] = set()
    admin = mesh.headers("admin", sub="secrets-admin")

    # --- portal: activation password, a wrong password, sign-in; the links' tokens
    customer = new_customer(mesh)
    wrong = "Wrong-" + secrets.token_urlsafe(12)
    with httpx.Client(base_url=f"{mesh.url}/api/portal/public", timeout=30) as client:
        page = client.get("/login")
        csrf = CSRF_RE.search(page.text)
        assert csrf
        r = client.post(
            "/login",
            data={"username": customer.username, "password": wrong, "csrf": csrf.group(1)},
        )
        assert r.status_code == 401
    signed_in = sign_in(mesh, customer.username, customer.password)
    session_cookie = signed_in.cookies.get("portal_session")
    assert session_cookie
    used |= {customer.password, wrong, customer.activation_token, session_cookie}
    signed_in.close()
    customer.client.close()

    # --- profile: bank accounts (stored, duplicate, invalid checksum, garbage)
    participant = int(str(mesh.coursedb("SELECT min(id) FROM participants")[0][0]))
    p_headers = mesh.headers("participant", participant_id=str(participant))
    good_iban = "DE75512108001245126199"
    bad_iban = "DE75512108001245126198"  # checksum wrong
    api = f"{mesh.url}/api/profile/me/bank-accounts"
    for iban in (good_iban, good_iban, bad_iban, "XX" + good_iban[2:] + "999999"):
        r = httpx.post(api, json={"account_holder": "Geheim", "iban": iban}, headers=p_headers)
        assert r.status_code in (200, 201, 422), r.text
    used |= _iban_forms(good_iban) | _iban_forms(bad_iban)

    # --- booking: a new SEPA account in an order (valid), and an invalid one
    course = mesh.bookable_course()
    booking_iban = "DE88100900001234567892"
    bad_booking_iban = "DE88100900001234567893"
    for iban in (booking_iban, bad_booking_iban):
        order = {
            "external_order_id": f"SEC-LOG-{uuid.uuid4().hex[:10]}",
            "participants": [
                {
                    "key": "p1",
                    "person": {
                        "salutation": "mr",
                        "first_name": "Max",
                        "last_name": "Geheimnis",
                        "birth_date": "1980-02-03",
                        "email": "max.geheimnis@example.org",
                        "address": {"street": "Weg 1", "postcode": "79098", "city": "Freiburg"},
                    },
                }
            ],
            "items": [{"participant": "p1", "course_number": course}],
            "payment": {
                "method": "sepa",
                "new_account": {
                    "account_holder": "Max Geheimnis",
                    "iban": iban,
                    "mandate_consent": True,
                },
            },
        }
        r = httpx.post(
            f"{mesh.url}/api/booking/orders",
            json=order,
            headers=mesh.headers("service", sub="website-backend"),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        expected = "accepted" if iban == booking_iban else "rejected"
        assert r.json()["status"] == expected, r.text
    used |= _iban_forms(booking_iban) | _iban_forms(bad_booking_iban)

    # --- profile connections: a Brevo API key the (fake) Brevo refuses, changed once
    brevo_key = "xkeysib-" + secrets.token_hex(32)
    brevo_key2 = "xkeysib-" + secrets.token_hex(32)
    name = f"sec-brevo-{uuid.uuid4().hex[:6]}"
    r = httpx.post(
        f"{mesh.url}/api/profile/connections",
        json={
            "name": name,
            "kind": "brevo",
            "settings": {"base_url": mesh.brevo_url, "api_key": brevo_key},
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    assert brevo_key not in r.text
    httpx.post(f"{mesh.url}/api/profile/connections/{name}/test", headers=admin, timeout=60)
    r = httpx.patch(
        f"{mesh.url}/api/profile/connections/{name}",
        json={"settings": {"api_key": brevo_key2}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    httpx.post(f"{mesh.url}/api/profile/connections/{name}/test", headers=admin, timeout=60)
    used |= {brevo_key, brevo_key2}

    # --- schulconnex-sync: client credentials the fake Schulconnex refuses
    match = re.search(r"Schulconnex \(fake, for schulconnex-sync\)\s+(\S+)", mesh.log.read_text())
    base = match.group(1) if match else f"{mesh.brevo_url}/v1"
    client_secret = "sc-secret-" + secrets.token_urlsafe(20)
    sc_password = "sc-pass-" + secrets.token_urlsafe(12)
    name = f"sec-sc-{uuid.uuid4().hex[:6]}"
    r = httpx.post(
        f"{mesh.url}/api/schulconnex-sync/connections",
        json={
            "name": name,
            "kind": "schulconnex",
            "settings": {
                "base_url": base,
                "token_url": base.removesuffix("/v1") + "/token",
                "client_id": "edumesh-security",
                "client_secret": client_secret,
                "grant_type": "password",
                "username": "sync-user",
                "password": sc_password,
                "max_retries": 0,
            },
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    httpx.post(
        f"{mesh.url}/api/schulconnex-sync/connections/{name}/test", headers=admin, timeout=60
    )
    used |= {client_secret, sc_password}

    # --- mailbox-invites: a technical user with SMTP and IMAP passwords, checked (refused)
    smtp_pw = "smtp-" + secrets.token_urlsafe(16)
    imap_pw = "imap-" + secrets.token_urlsafe(16)
    r = httpx.post(
        f"{mesh.url}/api/mailbox-invites/technical-users",
        json={
            "name": f"sec-{uuid.uuid4().hex[:6]}",
            "display_name": "Security",
            "email": "security@example.org",
            "smtp": {
                "host": "127.0.0.1",
                "port": 1,
                "security": "none",
                "username": "u",
                "password": smtp_pw,
            },
            "imap": {"host": "127.0.0.1", "port": 1, "security": "none", "username": "u",
                     "password": imap_pw},
            "timeout_seconds": 3,
        },
        headers=admin,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    httpx.post(
        f"{mesh.url}/api/mailbox-invites/technical-users/{r.json()['id']}/check",
        headers=admin,
        timeout=60,
    )
    used |= {smtp_pw, imap_pw}

    # --- tokens in headers: valid, expired, forged, delegations and pass-through tokens
    delegation = mint_delegation(
        participant_id=str(participant),
        actor="website-backend",
        scopes=["profile:read"],
        secret=JWT_SECRET,
    )
    service = mesh.headers("service", sub="website-backend")
    httpx.get(f"{mesh.url}/api/profile/me", headers={**service, "X-Delegation-Token": delegation})
    forged = delegation[:-6] + "AAAAAA"
    httpx.get(f"{mesh.url}/api/profile/me", headers={**service, "X-Delegation-Token": forged})
    httpx.get(f"{mesh.url}/api/booking/backlog", headers={"Authorization": f"Bearer {forged}"})
    expired = mesh.token("admin", ttl_seconds=-100)
    httpx.get(f"{mesh.url}/api/booking/backlog", headers={"Authorization": f"Bearer {expired}"})
    httpx.post(
        f"{mesh.url}/api/booking/orders",
        json={"external_order_id": "x"},
        headers={**service, "X-Participant-Token": forged},
    )
    used |= {
        delegation,
        forged,
        expired,
        service["Authorization"].removeprefix("Bearer "),
        p_headers["Authorization"].removeprefix("Bearer "),
        admin["Authorization"].removeprefix("Bearer "),
    }
    mesh.secrets |= used
    return Flows(used, customer.activation_token, customer.access_mail_id)


def test_flows_logged_something(mesh: Mesh, flows: Flows) -> None:
    """The scan below only means something if the flows were logged at all."""
    text = mesh.log.read_text(errors="replace")
    for path in ("/me/bank-accounts", "/orders", "/connections", "/technical-users", "/login"):
        assert path in text, f"no log line for {path}: is LOG_LEVEL=INFO reaching the log?"
    assert len(flows.secrets) > 20


def test_no_secret_in_any_log(mesh: Mesh, flows: Flows) -> None:
    findings = mesh.log_findings(flows.secrets)
    assert not findings, "\n".join(findings[:30])


def _in_databases(mesh: Mesh, values: set[str]) -> list[str]:
    findings = []
    for path in mesh.var.glob("*.sqlite3*"):
        data = path.read_bytes()
        findings += [f"{path.name}: {v[:12]}..." for v in values if v.encode() in data]
    return findings


def test_no_secret_in_plaintext_in_any_database(mesh: Mesh, flows: Flows) -> None:
    """Secrets at rest are encrypted (IBANs, connection credentials) or hashed (passwords,
    sessions): none of the values is readable in a database file, its WAL included. (The
    activation link is the next test's.)"""
    findings = _in_databases(mesh, flows.secrets - {flows.activation_token})
    assert not findings, "\n".join(findings)


def test_activation_link_is_not_kept_readable(mesh: Mesh, flows: Flows) -> None:
    assert flows.access_mail_id
    r = httpx.get(
        f"{mesh.url}/api/portal/mail/outbox/{flows.access_mail_id}", headers=mesh.headers("staff")
    )
    assert r.status_code == 200, r.text
    assert flows.activation_token not in r.text
    assert not _in_databases(mesh, {flows.activation_token})
