"""The participant's own profile over REST, on SQLite and PostgreSQL coursedbs.

Own data only; ETag / If-Match (428 without, 412 when stale, one winner under concurrency);
validated and normalised address and contact data; the order history's content.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from coursedb.banking import mask
from coursedb.schema import participants
from sqlalchemy import select

from .conftest import Rig, bearer, participant_token, staff_token


async def test_me_returns_own_profile_with_etag(rig: Rig) -> None:
    w = rig.world
    r = await rig.client.get("/me", headers=bearer(participant_token(w.alice)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == w.alice and body["first_name"] == "Alice"
    assert body["address"] == {
        "street": "Rotteckring 12",
        "postcode": "79098",
        "city": "Freiburg im Breisgau",
        "country": "DE",
    }
    assert r.headers["etag"] == f'"{body["version"]}"'
    assert r.headers["cache-control"] == "no-store"
    bob = await rig.client.get("/me", headers=bearer(participant_token(w.bob)))
    assert bob.json()["id"] == w.bob and bob.json()["first_name"] == "Bob"


async def test_unknown_or_malformed_participant_is_404(rig: Rig) -> None:
    for pid in ("999999999", "99999999999", "abc", "-3", "0"):
        r = await rig.client.get("/me", headers=bearer(participant_token(pid)))
        assert r.status_code == 404
        assert r.json()["code"] == "participant-not-found"
        assert r.headers["content-type"] == "application/problem+json"


async def test_patch_needs_if_match_and_refuses_stale(rig: Rig) -> None:
    h = bearer(participant_token(rig.world.alice))
    current = await rig.client.get("/me", headers=h)
    tag = current.headers["etag"]
    change = {"address": {"street": "Kaiser-Joseph-Straße 200"}}

    missing = await rig.client.patch("/me", headers=h, json=change)
    assert missing.status_code == 428 and missing.json()["code"] == "precondition-required"

    ok = await rig.client.patch("/me", headers={**h, "If-Match": tag}, json=change)
    assert ok.status_code == 200, ok.text
    assert ok.json()["address"]["street"] == "Kaiser-Joseph-Straße 200"
    assert ok.json()["address"]["postcode"] == "79098"  # untouched
    new_tag = ok.headers["etag"]
    assert new_tag != tag and ok.json()["version"] == current.json()["version"] + 1

    stale = await rig.client.patch(
        "/me", headers={**h, "If-Match": tag}, json={"phone": "0761 555555"}
    )
    assert stale.status_code == 412
    assert stale.json()["code"] == "precondition-failed"
    assert stale.json()["current_version"] == ok.json()["version"]
    weak = await rig.client.patch(
        "/me", headers={**h, "If-Match": f"W/{new_tag}"}, json={"phone": "0761 555555"}
    )
    assert weak.status_code == 412  # If-Match compares strongly

    listed = await rig.client.patch(
        "/me", headers={**h, "If-Match": f'"1", {new_tag}'}, json={"phone": "0761 555555"}
    )
    assert listed.status_code == 200
    anyv = await rig.client.patch("/me", headers={**h, "If-Match": "*"}, json={"email": None})
    assert anyv.status_code == 200 and anyv.json()["email"] is None
    async with rig.engine.connect() as conn:
        row = (
            await conn.execute(select(participants).where(participants.c.id == rig.world.alice))
        ).one()
    assert row.street == "Kaiser-Joseph-Straße 200" and row.email is None
    assert row.phone == "+49 761 555555"


async def test_concurrent_patches_one_wins(rig: Rig) -> None:
    h = bearer(participant_token(rig.world.alice))
    tag = (await rig.client.get("/me", headers=h)).headers["etag"]
    results = await asyncio.gather(
        *(
            rig.client.patch(
                "/me", headers={**h, "If-Match": tag}, json={"address": {"city": f"Stadt {i}"}}
            )
            for i in range(4)
        )
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 412, 412, 412], [r.text for r in results]
    winner = next(r for r in results if r.status_code == 200).json()
    again = (await rig.client.get("/me", headers=h)).json()
    assert again["address"]["city"] == winner["address"]["city"]
    assert again["version"] == winner["version"]


async def test_patch_normalises_contact_data(rig: Rig) -> None:
    h = bearer(participant_token(rig.world.alice))
    tag = (await rig.client.get("/me", headers=h)).headers["etag"]
    r = await rig.client.patch(
        "/me",
        headers={**h, "If-Match": tag, "Content-Type": "application/merge-patch+json"},
        content=(
            b'{"email": " Alice.Adler@Example.ORG ", "phone": "+41 44 668 18 00",'
            b' "address": {"country": "ch", "postcode": " 8001 ", "city": "  Z\xc3\xbcrich "}}'
        ),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["email"] == "Alice.Adler@example.org"  # the domain is case-insensitive
    assert body["phone"] == "+41 44 668 18 00"
    assert body["address"] == {
        "street": "Rotteckring 12",
        "postcode": "8001",
        "city": "Zürich",
        "country": "CH",
    }


async def test_invalid_contact_data_is_422_without_echo(rig: Rig) -> None:
    h = bearer(participant_token(rig.world.alice))
    tag = (await rig.client.get("/me", headers=h)).headers["etag"]
    bad: dict[str, Any] = {
        "email": "alice-at-nowhere",
        "phone": "12",
        "address": {"postcode": "7909X", "country": "XX"},
    }
    r = await rig.client.patch("/me", headers={**h, "If-Match": tag}, json=bad)
    assert r.status_code == 422
    problem = r.json()
    assert problem["code"] == "profile-invalid"
    assert {(e["field"], e["code"]) for e in problem["errors"]} == {
        ("email", "email-invalid"),
        ("phone", "phone-invalid"),
        ("address.country", "country-invalid"),
        ("address.postcode", "postcode-invalid"),
    }
    for value in ("alice-at-nowhere", "7909X"):
        assert value not in r.text
    # Changing only the country re-checks the stored postcode against it.
    at = await rig.client.patch(
        "/me", headers={**h, "If-Match": tag}, json={"address": {"country": "AT"}}
    )
    assert at.status_code == 422
    assert [e["code"] for e in at.json()["errors"]] == ["postcode-invalid"]
    assert "e.g. 1010" in at.json()["errors"][0]["message"]
    # Names are the centre's to change; unknown fields are refused, not ignored.
    name = await rig.client.patch(
        "/me", headers={**h, "If-Match": tag}, json={"first_name": "Alicia"}
    )
    assert name.status_code == 422 and name.json()["code"] == "validation-error"
    country_null = await rig.client.patch(
        "/me", headers={**h, "If-Match": tag}, json={"address": {"country": None}}
    )
    assert country_null.status_code == 422
    # Nothing was written.
    assert (await rig.client.get("/me", headers=h)).headers["etag"] == tag


async def test_order_history(rig: Rig) -> None:
    w = rig.world
    r = await rig.client.get("/me/orders", headers=bearer(participant_token(w.alice)))
    assert r.status_code == 200, r.text
    history = r.json()
    assert history["total"] == 4
    labels = {v: k for k, v in w.orders.items()}
    got = [labels[o["order_id"]] for o in history["orders"]]
    assert got == ["O1", "O4", "O3", "O2"]  # newest first; O5 is bob's alone
    by_label = {labels[o["order_id"]]: o for o in history["orders"]}

    o1 = by_label["O1"]
    assert o1["placed_by_me"] and o1["status"] == "processed"
    assert o1["payment_method"] == "sepa"
    assert o1["total_amount"] == {"amount": "209.00", "currency": "EUR"}
    assert o1["bank_account_iban_masked"] == mask(w.ibans[w.acct_open])
    regs = {(g["course"]["number"], g["participant_name"], g["is_me"]) for g in o1["registrations"]}
    assert regs == {
        (w.courses["run"], "Alice Adler", True),
        (w.courses["fam"], "Bob Adler", False),
    }
    run = next(g for g in o1["registrations"] if g["is_me"])
    assert run["course"]["title"] == "Spanisch A1 - Einstieg"
    assert run["course"]["status"] == "open" and run["course"]["sessions"] == 3
    starts = dt.date.fromisoformat(run["course"]["starts_on"])
    ends = dt.date.fromisoformat(run["course"]["ends_on"])
    assert (ends - starts).days == 14
    assert run["status"] == "booked" and run["fee_charged"]["amount"] == "89.00"

    o4 = by_label["O4"]  # bob paid for alice: she sees only her own registration, no payment
    assert not o4["placed_by_me"]
    assert o4["payment_method"] is None and o4["total_amount"] is None
    assert o4["bank_account_iban_masked"] is None
    assert [(g["course"]["number"], g["is_me"]) for g in o4["registrations"]] == [
        (w.courses["gift"], True)
    ]
    assert by_label["O3"]["status"] == "failed" and by_label["O3"]["registrations"] == []
    assert by_label["O2"]["registrations"][0]["course"]["status"] == "finished"

    page = await rig.client.get(
        "/me/orders?limit=2&offset=1", headers=bearer(participant_token(w.alice))
    )
    assert [labels[o["order_id"]] for o in page.json()["orders"]] == ["O4", "O3"]
    assert page.json()["total"] == 4
    assert (
        await rig.client.get("/me/orders?limit=0", headers=bearer(participant_token(w.alice)))
    ).status_code == 422

    bob = (await rig.client.get("/me/orders", headers=bearer(participant_token(w.bob)))).json()
    bob_labels = [labels[o["order_id"]] for o in bob["orders"]]
    assert bob_labels == ["O5", "O1", "O4"]
    o1_for_bob = next(o for o in bob["orders"] if labels[o["order_id"]] == "O1")
    assert o1_for_bob["payment_method"] is None  # alice's account is not bob's business
    assert [g["participant_name"] for g in o1_for_bob["registrations"]] == ["Bob Adler"]
    carol = await rig.client.get("/me/orders", headers=bearer(participant_token(w.carol)))
    assert carol.json() == {"orders": [], "total": 0, "limit": 50, "offset": 0}


async def test_staff_have_no_me_and_participants_no_staff_views(rig: Rig) -> None:
    w = rig.world
    r = await rig.client.get("/me", headers=bearer(staff_token()))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    h = bearer(participant_token(w.alice))
    # Another participant's id, an existing one and a made-up one: the same 403.
    answers = [
        await rig.client.get(f"/participants/{pid}", headers=h) for pid in (w.bob, 987654321)
    ]
    assert [a.status_code for a in answers] == [403, 403]
    assert answers[0].json()["code"] == answers[1].json()["code"] == "forbidden"
    assert (await rig.client.get("/audit", headers=h)).status_code == 403
    assert (await rig.client.get("/me")).status_code == 401
