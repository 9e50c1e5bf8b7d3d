"""Every rejection reason, and bad input: a clear answer and nothing written to the coursedb.

Reason codes are the order's answer (HTTP 200, status ``rejected``); a malformed order is a
422 problem+json that does not even reach booking's own table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from booking_service.models import orders
from coursedb.banking import add_account
from sqlalchemy import func, select

from .conftest import (
    SERVICE,
    STAFF,
    Running,
    add_course,
    add_participant,
    counts,
    headers,
    order,
    person,
    prepare_coursedb,
    running,
    sepa_new,
)

Setup = Callable[[Running], Awaitable[dict[str, Any]]]


async def _course(svc: Running, **kw: Any) -> dict[str, Any]:
    await add_course(svc.coursedb, "262-40401", **kw)
    return order(courses=["262-40401"])


async def unknown_course(svc: Running) -> dict[str, Any]:
    await add_course(svc.coursedb, "262-40401")
    return order(courses=["262-99999"])


async def not_web_bookable(svc: Running) -> dict[str, Any]:
    return await _course(svc, web_bookable=False)


async def not_open(svc: Running) -> dict[str, Any]:
    return await _course(svc, status="planned")


async def cancelled(svc: Running) -> dict[str, Any]:
    return await _course(svc, status="cancelled")


async def finished(svc: Running) -> dict[str, Any]:
    return await _course(svc, status="finished")


async def closed(svc: Running) -> dict[str, Any]:
    return await _course(svc, status="closed")


async def deadline_passed(svc: Running) -> dict[str, Any]:
    return await _course(svc, deadline=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))


async def full(svc: Running) -> dict[str, Any]:
    course = await _course(svc, seats=1)
    first = order(courses=["262-40401"], people=[{"key": "a", "person": person("Anna")}])
    assert (await svc.client.post("/orders", json=first, headers=SERVICE)).is_success
    return course


async def mode_not_allowed(svc: Running) -> dict[str, Any]:
    body = await _course(svc, mode="on_request")
    return body


async def duplicate(svc: Running) -> dict[str, Any]:
    body = await _course(svc)
    assert (await svc.client.post("/orders", json=body, headers=SERVICE)).is_success
    return order(courses=["262-40401"])  # same person (full match), new order id


async def participant_not_found(svc: Running) -> dict[str, Any]:
    await add_course(svc.coursedb, "262-40401")
    return order(courses=["262-40401"], people=[{"key": "me", "participant_id": 9999}])


async def discount_not_available(svc: Running) -> dict[str, Any]:
    await add_course(svc.coursedb, "262-40401")
    item = {"participant": "p1", "course_number": "262-40401", "discount": "pensioner"}
    return order(items=[item])


async def bank_account_not_found(svc: Running) -> dict[str, Any]:
    await add_course(svc.coursedb, "262-40401")
    owner = await add_participant(svc.coursedb, "Olga", "Owner", email="olga@example.org")
    other = await add_participant(svc.coursedb, "Otto", "Other", email="otto@example.org")
    async with svc.coursedb.begin() as conn:
        account = await add_account(
            conn,
            svc.booking.cipher,
            participant_id=owner,
            account_holder="Olga",
            iban="DE02120300000000202051",
        )
    # Otto (a stored profile) tries to pay from Olga's account.
    return order(
        courses=["262-40401"],
        people=[{"key": "me", "participant_id": other}],
        payment={"method": "sepa", "bank_account_id": account},
    )


async def invalid_iban(svc: Running) -> dict[str, Any]:
    await add_course(svc.coursedb, "262-40401")
    return order(courses=["262-40401"], payment=sepa_new("DE89370400440532013001"))


async def no_mandate(svc: Running) -> dict[str, Any]:
    await add_course(svc.coursedb, "262-40401")
    return order(courses=["262-40401"], payment=sepa_new(consent=False))


CASES: list[tuple[Setup, str]] = [
    (unknown_course, "course_not_found"),
    (not_web_bookable, "not_web_bookable"),
    (not_open, "not_open"),
    (cancelled, "cancelled"),
    (finished, "finished"),
    (closed, "registration_closed"),
    (deadline_passed, "registration_closed"),
    (full, "full"),
    (mode_not_allowed, "mode_not_allowed"),
    (duplicate, "duplicate_registration"),
    (participant_not_found, "participant_not_found"),
    (discount_not_available, "discount_not_available"),
    (bank_account_not_found, "bank_account_not_found"),
    (invalid_iban, "invalid_iban"),
    (no_mandate, "mandate_consent_missing"),
]


@pytest.mark.parametrize(("setup", "reason"), CASES, ids=[c[0].__name__ for c in CASES])
async def test_reason_code_and_nothing_written(tmp_path: Path, setup: Setup, reason: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path) as svc:
        body = await setup(svc)
        before = await counts(svc.coursedb)
        # Staff may use stored data without a participant token; the reason is what we test.
        r = await svc.client.post("/orders", json=body, headers=STAFF)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["status"] == "rejected"
        assert [line["reason"] for line in result["lines"]] == [reason]
        assert result["lines"][0]["detail"]
        assert result["order_id"] is None
        assert await counts(svc.coursedb) == before


async def test_invalid_iban_never_leaks_into_answers(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path) as svc:
        bad = "DE89370400440532013001"
        body = await invalid_iban(svc)
        r = await svc.client.post("/orders", json=body, headers=SERVICE)
        assert bad not in r.text
        stored = await svc.client.get(f"/orders/{body['external_order_id']}", headers=STAFF)
        assert bad not in stored.text and stored.json()["status"] == "rejected"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.pop("items"), "items"),
        (lambda o: o.update(items=[]), "items"),
        (lambda o: o["items"][0].update(participant="nobody"), "unknown participants"),
        (lambda o: o.update(external_order_id="has spaces and ;"), "external_order_id"),
        (lambda o: o["participants"][0].update(participant_id=5), "exactly one"),
        (lambda o: o.update(payment={"method": "cash"}), "payment"),
        (lambda o: o["participants"][0]["person"].update(email="not-an-email"), "email"),
        (lambda o: o.update(mode="whenever"), "mode"),
    ],
)
async def test_malformed_order_is_422_and_nothing_is_stored(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path) as svc:
        await add_course(svc.coursedb, "262-40401")
        body = order(courses=["262-40401"])
        mutate(body)
        before = await counts(svc.coursedb)
        r = await svc.client.post("/orders", json=body, headers=SERVICE)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "validation-error"
        assert field in r.text
        assert await counts(svc.coursedb) == before
        async with svc.booking.runtime.db.engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(orders)) == 0


async def test_who_may_book_stored_profiles(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path) as svc:
        await add_course(svc.coursedb, "262-40401")
        await add_course(svc.coursedb, "262-40402")
        await add_course(svc.coursedb, "262-40403")
        me = await add_participant(svc.coursedb, "Erika", "Mustermann")
        other = await add_participant(svc.coursedb, "Hans", "Anders", email="hans@example.org")
        async with svc.coursedb.begin() as conn:
            account = await add_account(
                conn,
                svc.booking.cipher,
                participant_id=me,
                account_holder="Erika Mustermann",
                iban="DE02120300000000202051",
            )
        mine = order(
            courses=["262-40401"],
            people=[{"key": "me", "participant_id": me}],
            payment={"method": "sepa", "bank_account_id": account},
        )
        # The website backend alone may not act for a stored profile ...
        r = await svc.client.post("/orders", json=mine, headers=SERVICE)
        assert r.status_code == 403 and r.json()["code"] == "participant-token-required"
        # ... nor with somebody else's token ...
        r = await svc.client.post(
            "/orders",
            json=mine,
            headers={**SERVICE, "X-Participant-Token": _token(other)},
        )
        assert r.status_code == 403 and r.json()["code"] == "participant-mismatch"
        forged = _token(me)[:-4] + "AAAA"
        r = await svc.client.post(
            "/orders", json=mine, headers={**SERVICE, "X-Participant-Token": forged}
        )
        assert r.status_code == 403 and r.json()["code"] == "participant-token-invalid"
        # ... but with the participant's own token it may.
        r = await svc.client.post(
            "/orders", json=mine, headers={**SERVICE, "X-Participant-Token": _token(me)}
        )
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        assert r.json()["bank_account_id"] == account
        assert r.json()["iban_masked"].endswith("20 51")

        # A participant books for themself (and may bring a new person along).
        own = order(
            courses=["262-40402"],
            people=[{"key": "me", "participant_id": me}, {"key": "kid", "person": person("Kim")}],
            items=[
                {"participant": "me", "course_number": "262-40402"},
                {"participant": "kid", "course_number": "262-40402"},
            ],
        )
        r = await svc.client.post(
            "/orders", json=own, headers=headers("participant", participant_id=me)
        )
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        other_profile = order(courses=["262-40403"], people=[{"key": "x", "participant_id": other}])
        r = await svc.client.post(
            "/orders", json=other_profile, headers=headers("participant", participant_id=me)
        )
        assert r.status_code == 403

        # Reading orders: own ones yes, others' look like they do not exist.
        oid = own["external_order_id"]
        assert (
            await svc.client.get(
                f"/orders/{oid}", headers=headers("participant", participant_id=me)
            )
        ).status_code == 200
        r = await svc.client.get(
            f"/orders/{oid}", headers=headers("participant", participant_id=other)
        )
        assert r.status_code == 404
        assert (await svc.client.get(f"/orders/{oid}")).status_code == 401
        assert (await svc.client.get("/orders", headers=SERVICE)).status_code == 403


def _token(participant_id: int) -> str:
    from .conftest import token

    return token("participant", sub=f"p{participant_id}", participant_id=participant_id)
