"""The data rule behind the participant endpoints: a token reaches its own participant's data
and nothing of anyone else's, on every operation the policy marks ``own``.

Two real participants of the demo course database: P1 stores a bank account and books a course
(paying by SEPA); P2, with a perfectly valid participant token, tries to read, change and use
P1's data through every own-data operation and gets 404 (indistinguishable from "does not
exist") or 403, and its own answers never contain P1's data.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from mesh_common.auth.delegation import mint_delegation

from .conftest import JWT_SECRET, Mesh, assert_problem
from .policy import POLICY

IBAN = "DE02120300000000202051"  # a valid German test IBAN (Deutsche Kreditbank)
BOOKING_IBAN = "DE02500105170137075030"

# Every operation the policy marks own-data, and the test below that proves its rule.
ME, ACCOUNTS, ORDERS = (
    "test_profile_me_is_always_the_callers_own",
    "test_bank_accounts_of_another_participant",
    "test_orders_of_another_participant",
)
COVERED = {
    "GET /api/profile/me": ME,
    "PATCH /api/profile/me": ME,
    "GET /api/profile/me/bank-accounts": ACCOUNTS,
    "POST /api/profile/me/bank-accounts": ACCOUNTS,
    "GET /api/profile/me/bank-accounts/{account_id}": ACCOUNTS,
    "DELETE /api/profile/me/bank-accounts/{account_id}": ACCOUNTS,
    "PUT /api/profile/me/bank-accounts/{account_id}/default": ACCOUNTS,
    "GET /api/profile/me/orders": ORDERS,
    "GET /api/booking/orders/{external_order_id}": ORDERS,
    "GET /api/booking/orders/{external_order_id}/documents/{kind}.pdf": ORDERS,
}


class People:
    def __init__(self, mesh: Mesh) -> None:
        rows = mesh.coursedb(
            "SELECT id, first_name, last_name, email FROM participants ORDER BY id DESC LIMIT 2"
        )
        (self.p1, self.p1_first, self.p1_last, self.p1_email), (self.p2, *_) = (
            (int(str(r[0])), str(r[1]), str(r[2]), str(r[3])) for r in rows
        )
        self.h1 = mesh.headers("participant", sub=f"user-{self.p1}", participant_id=str(self.p1))
        self.h2 = mesh.headers("participant", sub=f"user-{self.p2}", participant_id=str(self.p2))
        self.p2_token = self.h2["Authorization"].removeprefix("Bearer ")


@pytest.fixture(scope="module")
def people(mesh: Mesh) -> People:
    return People(mesh)


def test_every_own_data_operation_is_covered() -> None:
    own = {key for key, rule in POLICY.items() if rule.own is not None}
    assert own == set(COVERED), own ^ set(COVERED)


def test_profile_me_is_always_the_callers_own(mesh: Mesh, people: People) -> None:
    api = f"{mesh.url}/api/profile"
    mine = httpx.get(f"{api}/me", headers=people.h1)
    theirs = httpx.get(f"{api}/me", headers=people.h2)
    assert mine.status_code == theirs.status_code == 200, (mine.text, theirs.text)
    assert mine.json()["id"] == people.p1 and theirs.json()["id"] == people.p2
    assert people.p1_last not in theirs.text and people.p1_email not in theirs.text
    assert mine.headers.get("cache-control") == "no-store"
    # There is no parameter to name another participant: query and body cannot redirect "me".
    sneaky = httpx.get(f"{api}/me", params={"participant_id": people.p1}, headers=people.h2)
    assert sneaky.json()["id"] == people.p2
    patched = httpx.patch(
        f"{api}/me",
        json={"id": people.p1, "phone": "+49 761 000"},
        headers={**people.h2, "If-Match": theirs.headers.get("etag", "*")},
    )
    assert_problem(patched, 422)  # unknown field "id": refused, nothing changed
    assert httpx.get(f"{api}/me", headers=people.h1).json() == mine.json()

    # A service client reaches a participant only with a delegation issued to it, for them.
    service = mesh.headers("service", sub="website-backend")
    assert_problem(httpx.get(f"{api}/me", headers=service), 403, "delegation-required")
    good = mint_delegation(
        participant_id=str(people.p1),
        actor="website-backend",
        scopes=["profile:read"],
        secret=JWT_SECRET,
    )
    r = httpx.get(f"{api}/me", headers={**service, "X-Delegation-Token": good})
    assert r.status_code == 200 and r.json()["id"] == people.p1
    stolen = mint_delegation(
        participant_id=str(people.p1),
        actor="another-client",
        scopes=["profile:read"],
        secret=JWT_SECRET,
    )
    r = httpx.get(f"{api}/me", headers={**service, "X-Delegation-Token": stolen})
    assert_problem(r, 403, "delegation-actor-mismatch")
    r = httpx.get(f"{api}/me", headers={**people.h2, "X-Delegation-Token": good})
    assert_problem(r, 403, "delegation-not-allowed")
    read_only = {**service, "X-Delegation-Token": good}
    r = httpx.patch(f"{api}/me", json={"phone": "+49 1"}, headers=read_only)
    assert_problem(r, 403, "insufficient-scope")


def test_bank_accounts_of_another_participant(mesh: Mesh, people: People) -> None:
    api = f"{mesh.url}/api/profile/me/bank-accounts"
    added = httpx.post(
        api,
        json={"account_holder": f"{people.p1_first} {people.p1_last}", "iban": IBAN},
        headers=people.h1,
    )
    assert added.status_code in (200, 201), added.text
    account = added.json()
    assert IBAN not in added.text and account["iban_masked"].replace(" ", "").endswith(IBAN[-4:])
    url = f"{api}/{account['id']}"
    assert httpx.get(url, headers=people.h1).status_code == 200

    assert_problem(httpx.get(url, headers=people.h2), 404)
    assert_problem(httpx.put(f"{url}/default", headers=people.h2), 404)
    assert_problem(httpx.delete(url, headers=people.h2), 404)
    listed = httpx.get(api, headers=people.h2)
    assert listed.status_code == 200
    assert account["id"] not in [a["id"] for a in listed.json()["accounts"]]
    # Storing the same IBAN as P2 makes a separate account of P2's, never P1's.
    copy = httpx.post(api, json={"account_holder": "P Two", "iban": IBAN}, headers=people.h2)
    assert copy.status_code == 201, copy.text
    assert copy.json()["id"] != account["id"]
    # P1's account is untouched by all of it.
    still = httpx.get(url, headers=people.h1)
    assert still.status_code == 200 and still.json() == httpx.get(url, headers=people.h1).json()
    assert httpx.delete(f"{api}/{copy.json()['id']}", headers=people.h2).status_code == 204
    # Staff read it (audited), read-only.
    staff = httpx.get(
        f"{mesh.url}/api/profile/participants/{people.p1}/bank-accounts",
        headers=mesh.headers("staff"),
    )
    assert staff.status_code == 200 and IBAN not in staff.text


def _order(people: People, course: str, participant: int) -> dict[str, Any]:
    return {
        "external_order_id": f"SEC-{uuid.uuid4().hex[:12]}",
        "participants": [{"key": "me", "participant_id": participant}],
        "items": [{"participant": "me", "course_number": course}],
        "payment": {
            "method": "sepa",
            "new_account": {
                "account_holder": f"{people.p1_first} {people.p1_last}",
                "iban": BOOKING_IBAN,
                "mandate_consent": True,
            },
        },
    }


def test_orders_of_another_participant(mesh: Mesh, people: People) -> None:
    api = f"{mesh.url}/api/booking"
    order = _order(people, mesh.bookable_course(people.p1), people.p1)
    # Booking P1's stored profile needs P1's consent: P2's token, a service without the
    # participant's token, or with P2's token passed through, are all refused.
    assert_problem(httpx.post(f"{api}/orders", json=order, headers=people.h2), 403)
    service = mesh.headers("service", sub="website-backend")
    assert_problem(
        httpx.post(f"{api}/orders", json=order, headers=service), 403, "participant-token-required"
    )
    assert_problem(
        httpx.post(
            f"{api}/orders",
            json=order,
            headers={**service, "X-Participant-Token": people.p2_token},
        ),
        403,
        "participant-mismatch",
    )
    placed = httpx.post(f"{api}/orders", json=order, headers=people.h1, timeout=60)
    assert placed.status_code == 200, placed.text
    assert placed.json()["status"] == "accepted", placed.text
    assert BOOKING_IBAN not in placed.text
    oid = order["external_order_id"]

    assert httpx.get(f"{api}/orders/{oid}", headers=people.h1).status_code == 200
    assert httpx.get(f"{api}/orders/{oid}", headers=service).status_code == 200
    assert_problem(httpx.get(f"{api}/orders/{oid}", headers=people.h2), 404, "order-not-found")
    for kind in ("registration-card", "sepa-mandate"):
        r = httpx.get(f"{api}/orders/{oid}/documents/{kind}.pdf", headers=people.h2)
        assert_problem(r, 404, "order-not-found")
    for kind in ("registration-card", "sepa-mandate"):
        own = httpx.get(f"{api}/orders/{oid}/documents/{kind}.pdf", headers=people.h1)
        assert own.status_code == 200 and own.content.startswith(b"%PDF"), own.text[:200]

    mine = httpx.get(f"{mesh.url}/api/profile/me/orders", headers=people.h1, params={"limit": 200})
    theirs = httpx.get(
        f"{mesh.url}/api/profile/me/orders", headers=people.h2, params={"limit": 200}
    )
    assert mine.status_code == theirs.status_code == 200
    their_ids = {o["order_id"] for o in theirs.json()["orders"]}
    assert oid not in their_ids
    assert oid in {o["order_id"] for o in mine.json()["orders"]}
    p1_orders = {
        str(r[0])
        for r in mesh.coursedb(
            "SELECT external_order_id FROM orders WHERE participant_id = ?", people.p1
        )
    }
    assert not (p1_orders & their_ids)
