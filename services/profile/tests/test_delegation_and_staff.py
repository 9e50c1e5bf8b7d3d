"""Who may act for whom over REST: delegations (valid, expired, another client's, another
participant's, forged, too weak), service tokens without one, staff read-only views, and the
audit trail (fail closed for reads by anyone but the participant)."""

from __future__ import annotations

import time

from mesh_common.auth import mint_token
from mesh_common.auth.delegation import mint_delegation
from profile_service.models import profile_audit

from .conftest import (
    SECRET,
    WEBSITE,
    Rig,
    as_website,
    bearer,
    delegation,
    participant_token,
    service_token,
    staff_token,
)


async def test_service_token_alone_is_refused(rig: Rig) -> None:
    for path in ("/me", "/me/bank-accounts", "/me/orders"):
        r = await rig.client.get(path, headers=bearer(service_token()))
        assert r.status_code == 403, path
        assert r.json()["code"] == "delegation-required"


async def test_website_reads_with_a_delegation(rig: Rig) -> None:
    w = rig.world
    me = await rig.client.get("/me", headers=as_website(w.alice))
    assert me.status_code == 200 and me.json()["id"] == w.alice
    accounts = await rig.client.get("/me/bank-accounts", headers=as_website(w.alice))
    assert accounts.json()["accounts"][0]["id"] == w.acct_open
    bob = await rig.client.get("/me/bank-accounts", headers=as_website(w.bob))
    assert [a["id"] for a in bob.json()["accounts"]] == [w.bob_acct]
    # Reads under a delegation are audited with the delegation's jti.
    jti = "jti-for-audit-test"
    await rig.client.get("/me/orders", headers=as_website(w.alice, jti=jti))
    log = await rig.client.get(f"/audit?participant_id={w.alice}", headers=bearer(staff_token()))
    entries = log.json()
    assert [e["action"] for e in entries] == ["orders.read", "bank_accounts.read", "profile.read"]
    assert {e["via"] for e in entries} == {"delegation"} and entries[0]["delegation_jti"] == jti
    assert {e["actor"] for e in entries} == {WEBSITE}
    # The participant's own reads are not (their own data, no third party involved).
    await rig.client.get("/me", headers=bearer(participant_token(w.alice)))
    again = await rig.client.get(f"/audit?participant_id={w.alice}", headers=bearer(staff_token()))
    assert len(again.json()) == 3


async def test_delegation_refusals(rig: Rig) -> None:
    w = rig.world
    svc = bearer(service_token())

    async def code(headers: dict[str, str], path: str = "/me") -> tuple[int, str]:
        r = await rig.client.get(path, headers=headers)
        return r.status_code, r.json().get("code", "")

    expired = delegation(w.alice, now=time.time() - 600, ttl_seconds=60)
    assert await code({**svc, "X-Delegation-Token": expired}) == (403, "delegation-expired")
    # Issued to another client: the website cannot use it, the other client cannot either
    # without being that client.
    other = delegation(w.alice, actor="some-other-client")
    assert await code({**svc, "X-Delegation-Token": other}) == (403, "delegation-actor-mismatch")
    forged = mint_delegation(
        participant_id=str(w.alice),
        actor=WEBSITE,
        scopes=["profile:read"],
        secret="attacker-secret-0123456789abcdefghij",
    )
    assert await code({**svc, "X-Delegation-Token": forged}) == (403, "delegation-invalid")
    # A participant's bearer token is not a delegation.
    as_token = participant_token(w.alice)
    assert await code({**svc, "X-Delegation-Token": as_token}) == (403, "delegation-invalid")
    # A delegation is not a bearer token (other audience): 401 at the door.
    status, problem = await code(bearer(delegation(w.alice)))
    assert (status, problem) == (401, "token-invalid")
    # Participants act with their own token only.
    mixed = {**bearer(participant_token(w.bob)), "X-Delegation-Token": delegation(w.alice)}
    assert await code(mixed) == (403, "delegation-not-allowed")
    # A delegation for a participant that does not exist reads like any unknown participant.
    ghost = {**svc, "X-Delegation-Token": delegation(987654321)}
    assert await code(ghost) == (404, "participant-not-found")
    # Refusals are counted by code.
    metrics = (await rig.client.get("/metrics")).text
    assert 'profile_access_refused_total{channel="http",code="delegation-expired"} 1.0' in metrics


async def test_write_needs_write_scope(rig: Rig) -> None:
    w = rig.world
    read_only = as_website(w.alice)
    tag = (await rig.client.get("/me", headers=read_only)).headers["etag"]
    r = await rig.client.patch(
        "/me", headers={**read_only, "If-Match": tag}, json={"phone": "0761 12345"}
    )
    assert r.status_code == 403 and r.json()["code"] == "insufficient-scope"
    add = await rig.client.post(
        "/me/bank-accounts", headers=read_only, json={"account_holder": "A", "iban": "DE00"}
    )
    assert add.status_code == 403  # refused before the body is looked at
    writer = as_website(w.alice, scopes=["profile:read", "profile:write"], jti="jti-write")
    ok = await rig.client.patch(
        "/me", headers={**writer, "If-Match": tag}, json={"phone": "0761 12345"}
    )
    assert ok.status_code == 200 and ok.json()["phone"] == "+49 761 12345"
    entries = (
        await rig.client.get(f"/audit?participant_id={w.alice}", headers=bearer(staff_token()))
    ).json()
    update = next(e for e in entries if e["action"] == "profile.update")
    assert update["via"] == "delegation" and update["delegation_jti"] == "jti-write"
    assert update["detail"] == {"fields": ["phone"]}  # names, never values
    assert "12345" not in str(entries)


async def test_staff_read_only_and_audited(rig: Rig) -> None:
    w = rig.world
    staff = bearer(staff_token("office-anna"))
    profile = await rig.client.get(f"/participants/{w.bob}", headers=staff)
    assert profile.status_code == 200 and profile.json()["first_name"] == "Bob"
    accounts = await rig.client.get(f"/participants/{w.alice}/bank-accounts", headers=staff)
    assert len(accounts.json()["accounts"]) == 3
    orders = await rig.client.get(f"/participants/{w.alice}/orders", headers=staff)
    assert orders.json()["total"] == 4
    missing = await rig.client.get("/participants/987654321", headers=staff)
    assert missing.status_code == 404 and missing.json()["code"] == "participant-not-found"
    admin = bearer(mint_token(subject="root", secret=SECRET, roles=["admin"]))
    assert (await rig.client.get(f"/participants/{w.bob}", headers=admin)).status_code == 200
    log = (await rig.client.get("/audit?actor=office-anna", headers=staff)).json()
    assert [(e["action"], e["participant_id"], e["via"]) for e in log] == [
        ("staff.profile.read", 987654321, "staff"),
        ("staff.orders.read", w.alice, "staff"),
        ("staff.bank_accounts.read", w.alice, "staff"),
        ("staff.profile.read", w.bob, "staff"),
    ]
    older = (
        await rig.client.get(f"/audit?actor=office-anna&before_id={log[1]['id']}", headers=staff)
    ).json()
    assert [e["id"] for e in older] == [log[2]["id"], log[3]["id"]]
    # Staff have no way to change a profile here.
    assert (
        await rig.client.patch(f"/participants/{w.bob}", headers=staff, json={})
    ).status_code == 405
    assert (await rig.client.patch("/me", headers=staff, json={})).status_code == 403


async def test_reads_fail_closed_when_the_audit_cannot_be_written(rig: Rig) -> None:
    w = rig.world
    async with rig.app.state.runtime.db.connect() as conn:
        await conn.run_sync(profile_audit.drop)  # schema-aware (PostgreSQL: the service schema)
    r = await rig.client.get("/me/bank-accounts", headers=as_website(w.alice))
    assert r.status_code == 503 and r.json()["code"] == "audit-unavailable"
    assert "iban_masked" not in r.text
    staff = await rig.client.get(f"/participants/{w.alice}", headers=bearer(staff_token()))
    assert staff.status_code == 503
    # The participant's own read needs no audit record and still works.
    own = await rig.client.get("/me/bank-accounts", headers=bearer(participant_token(w.alice)))
    assert own.status_code == 200
    # A change commits, and the lost audit record is visible in the metrics.
    tag = (await rig.client.get("/me", headers=bearer(participant_token(w.alice)))).headers["etag"]
    ok = await rig.client.patch(
        "/me",
        headers={**bearer(participant_token(w.alice)), "If-Match": tag},
        json={"address": {"city": "Freiburg"}},
    )
    assert ok.status_code == 200
    metrics = (await rig.client.get("/metrics")).text
    assert 'profile_audit_failures_total{action="profile.update"} 1.0' in metrics
    assert 'profile_audit_failures_total{action="bank_accounts.read"} 1.0' in metrics
