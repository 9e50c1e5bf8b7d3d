"""LIVE booking over REST on SQLite and PostgreSQL: what gets written, idempotency, 409,
all-or-nothing, the registration modes, several participants, matching of known people."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from coursedb import schema as cdb
from coursedb.banking import add_account
from sqlalchemy import select

from .conftest import (
    SERVICE,
    STAFF,
    VALID_IBAN,
    add_course,
    add_participant,
    counts,
    order,
    person,
    registrations_of,
    running,
    sepa_new,
)


async def test_direct_booking_with_new_person_and_new_sepa_account(
    stack: tuple[str, dict[str, Any]],
) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        course = await add_course(svc.coursedb, "262-40401", seats=5, fee="129.00")
        body = order("W-1001", payment=sepa_new())
        r = await svc.client.post("/orders", json=body, headers=SERVICE)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["status"] == "accepted"
        [line] = result["lines"]
        assert (line["outcome"], line["reason"]) == ("booked", None)
        assert Decimal(line["fee"]["amount"]) == Decimal("129.00")
        assert Decimal(result["total"]["amount"]) == Decimal("129.00")
        assert result["iban_masked"] == "DE** **** **** **** **30 00"
        assert result["mandate_reference"].startswith("VHS-")
        assert VALID_IBAN not in r.text

        [reg] = await registrations_of(svc.coursedb, course)
        assert reg.status == "booked" and reg.fee_charged == Decimal("129.00")
        assert reg.id == line["registration_id"]
        async with svc.coursedb.connect() as conn:
            o = (await conn.execute(select(cdb.orders))).one()
            p = (await conn.execute(select(cdb.participants))).one()
            a = (await conn.execute(select(cdb.bank_accounts))).one()
        assert (o.external_order_id, o.status, o.payment_method) == ("W-1001", "processed", "sepa")
        assert o.id == result["order_id"] and o.bank_account_id == a.id
        assert len(o.payload_hash) == 64
        assert (p.first_name, p.last_name, p.email) == ("Max", "Muster", "max.muster@example.org")
        assert result["participant_ids"] == {"p1": p.id} and reg.participant_id == p.id
        # The IBAN is stored only encrypted (and the masked form).
        assert VALID_IBAN not in a.iban_ciphertext and a.iban_masked.endswith("30 00")
        assert svc.booking.cipher.open(a) == VALID_IBAN
        assert a.mandate_reference == result["mandate_reference"]


async def test_same_order_twice_books_once_and_other_content_is_409(
    stack: tuple[str, dict[str, Any]],
) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        course = await add_course(svc.coursedb, "262-40401", seats=5)
        body = order("W-2001")
        first = await svc.client.post("/orders", json=body, headers=SERVICE)
        second = await svc.client.post("/orders", json=body, headers=SERVICE)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert len(await registrations_of(svc.coursedb, course)) == 1
        before = await counts(svc.coursedb)

        changed = order("W-2001", people=[{"key": "p1", "person": person("Moritz")}])
        r = await svc.client.post("/orders", json=changed, headers=SERVICE)
        assert r.status_code == 409
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "order-conflict"
        assert await counts(svc.coursedb) == before

        got = await svc.client.get("/orders/W-2001", headers=SERVICE)
        assert got.status_code == 200 and got.json() == first.json()


async def test_several_courses_are_all_or_nothing(stack: tuple[str, dict[str, Any]]) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        open_course = await add_course(svc.coursedb, "262-40401", seats=5)
        await add_course(svc.coursedb, "262-40402", seats=1)
        other = [{"key": "z", "person": person("Zoe")}]
        await svc.client.post(
            "/orders", json=order(courses=["262-40402"], people=other), headers=SERVICE
        )
        before = await counts(svc.coursedb)

        r = await svc.client.post(
            "/orders", json=order("W-3001", courses=["262-40401", "262-40402"]), headers=SERVICE
        )
        assert r.status_code == 200
        result = r.json()
        assert result["status"] == "rejected"
        by_course = {line["course_number"]: line for line in result["lines"]}
        assert by_course["262-40402"]["reason"] == "full"
        assert by_course["262-40401"]["outcome"] == "rejected"
        assert by_course["262-40401"]["reason"] == "order_rejected"
        assert await counts(svc.coursedb) == before
        assert await registrations_of(svc.coursedb, open_course) == []

        # The rejection is the order's answer: asking again gives it again, nothing is booked.
        again = await svc.client.post(
            "/orders", json=order("W-3001", courses=["262-40401", "262-40402"]), headers=SERVICE
        )
        assert again.json() == result
        assert await counts(svc.coursedb) == before

        ok = await svc.client.post(
            "/orders", json=order("W-3002", courses=["262-40401"]), headers=SERVICE
        )
        assert ok.json()["status"] == "accepted"


async def test_modes_waiting_list_provisional_on_request(
    stack: tuple[str, dict[str, Any]],
) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        await add_course(svc.coursedb, "262-50001", seats=1, mode="waiting_list")
        prov = await add_course(svc.coursedb, "262-50002", seats=1, mode="provisional")
        await add_course(svc.coursedb, "262-50003", seats=5, mode="on_request")

        async def place(number: str, mode: str, who: str) -> dict[str, Any]:
            body = order(courses=[number], mode=mode, people=[{"key": "p", "person": person(who)}])
            r = await svc.client.post("/orders", json=body, headers=SERVICE)
            assert r.status_code == 200, r.text
            result: dict[str, Any] = r.json()
            return result

        first = await place("262-50001", "waiting_list", "Anna")
        second = await place("262-50001", "waiting_list", "Berta")
        third = await place("262-50001", "waiting_list", "Carla")
        assert first["lines"][0]["outcome"] == "booked"
        assert [x["lines"][0]["outcome"] for x in (second, third)] == ["waiting_list"] * 2
        assert [x["lines"][0]["waiting_list_position"] for x in (second, third)] == [1, 2]
        assert second["lines"][0]["fee"] is None
        # "direct" on a waiting-list course: book or refuse, never the waiting list.
        direct = await place("262-50001", "direct", "Dora")
        assert (direct["status"], direct["lines"][0]["reason"]) == ("rejected", "full")

        held = await place("262-50002", "provisional", "Emma")
        assert held["lines"][0]["outcome"] == "provisional"
        assert (await place("262-50002", "provisional", "Frida"))["lines"][0]["reason"] == "full"
        wrong = await place("262-50002", "direct", "Greta")
        assert wrong["lines"][0]["reason"] == "mode_not_allowed"

        ask = await place("262-50003", "on_request", "Hanna")
        assert ask["lines"][0]["outcome"] == "waiting_list"

        # The centre confirms the provisional reservation: it becomes a booking.
        reg_id = held["lines"][0]["registration_id"]
        r = await svc.client.post(f"/registrations/{reg_id}/confirm", headers=STAFF)
        assert r.status_code == 200 and r.json()["decision"] == "confirmed"
        [reg] = await registrations_of(svc.coursedb, prov)
        assert reg.status == "booked"
        assert (await svc.client.post(f"/registrations/{reg_id}/confirm", headers=STAFF)).is_success
        assert (
            await svc.client.post(f"/registrations/{reg_id}/decline", headers=STAFF)
        ).status_code == 409
        assert (
            await svc.client.post(f"/registrations/{reg_id}/confirm", headers=SERVICE)
        ).status_code == 403


async def test_declining_a_reservation_frees_the_seat(stack: tuple[str, dict[str, Any]]) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        course = await add_course(svc.coursedb, "262-50002", seats=1, mode="provisional")
        body = order(courses=["262-50002"], mode="provisional")
        held = (await svc.client.post("/orders", json=body, headers=SERVICE)).json()
        reg_id = held["lines"][0]["registration_id"]
        r = await svc.client.post(f"/registrations/{reg_id}/decline", headers=STAFF)
        assert r.status_code == 200 and r.json()["decision"] == "declined"
        [reg] = await registrations_of(svc.coursedb, course)
        assert reg.status == "cancelled" and reg.cancelled_at is not None
        other = order(
            courses=["262-50002"],
            mode="provisional",
            people=[{"key": "p", "person": person("Ida")}],
        )
        again = (await svc.client.post("/orders", json=other, headers=SERVICE)).json()
        assert again["lines"][0]["outcome"] == "provisional"


async def test_family_order_takes_the_last_seat_then_waits(
    stack: tuple[str, dict[str, Any]],
) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        course = await add_course(svc.coursedb, "262-60001", seats=1, mode="waiting_list")
        await add_course(svc.coursedb, "262-60002", seats=4)
        people = [
            {"key": "mum", "person": person("Petra", "Weber")},
            {"key": "kid", "person": person("Paul", "Weber", email=None, birth_date="2014-05-01")},
        ]
        items = [
            {"participant": "mum", "course_number": "262-60001"},
            {"participant": "kid", "course_number": "262-60001"},
            {"participant": "kid", "course_number": "262-60002"},
        ]
        body = order("W-FAM", people=people, items=items, mode="waiting_list")
        r = await svc.client.post("/orders", json=body, headers=SERVICE)
        result = r.json()
        assert result["status"] == "accepted", r.text
        assert [(x["participant"], x["outcome"]) for x in result["lines"]] == [
            ("mum", "booked"),
            ("kid", "waiting_list"),
            ("kid", "booked"),
        ]
        regs = await registrations_of(svc.coursedb, course)
        ids = result["participant_ids"]
        assert [(x.participant_id, x.status) for x in regs] == [
            (ids["mum"], "booked"),
            (ids["kid"], "waiting_list"),
        ]
        async with svc.coursedb.connect() as conn:
            o = (await conn.execute(select(cdb.orders))).one()
        assert o.participant_id == ids["mum"]  # the first participant pays by default
        assert o.total_amount == Decimal("258.00")  # the waiting-list line costs nothing yet


async def test_known_person_is_reused_only_on_full_match(
    stack: tuple[str, dict[str, Any]],
) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        await add_course(svc.coursedb, "262-40401", seats=9)
        await add_course(svc.coursedb, "262-40402", seats=9)
        known = await add_participant(svc.coursedb, "Erika", "Mustermann")
        same = person("erika ", "MUSTERMANN", email="Erika@Example.org", birth_date="1964-08-12")
        r1 = await svc.client.post(
            "/orders",
            json=order(people=[{"key": "p", "person": same}], courses=["262-40401"]),
            headers=SERVICE,
        )
        assert r1.json()["participant_ids"] == {"p": known}
        other_birthday = person("Erika", "Mustermann", email="erika@example.org")
        r2 = await svc.client.post(
            "/orders",
            json=order(people=[{"key": "p", "person": other_birthday}], courses=["262-40402"]),
            headers=SERVICE,
        )
        assert r2.json()["participant_ids"]["p"] != known
        # Booking the known person again for the same course is a duplicate.
        r3 = await svc.client.post(
            "/orders",
            json=order(people=[{"key": "p", "person": same}], courses=["262-40401"]),
            headers=SERVICE,
        )
        assert r3.json()["lines"][0]["reason"] == "duplicate_registration"


async def test_discount_is_applied(stack: tuple[str, dict[str, Any]]) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        course = await add_course(
            svc.coursedb, "262-40401", fee="120.00", discounts={"student": "25.00"}
        )
        body = order(
            items=[{"participant": "p1", "course_number": "262-40401", "discount": "student"}]
        )
        result = (await svc.client.post("/orders", json=body, headers=SERVICE)).json()
        assert Decimal(result["lines"][0]["fee"]["amount"]) == Decimal("90.00")
        [reg] = await registrations_of(svc.coursedb, course)
        assert reg.fee_charged == Decimal("90.00") and reg.discount_id is not None


async def test_deadline_passed_and_started_course_are_closed(
    stack: tuple[str, dict[str, Any]],
) -> None:
    url, extra = stack
    async with running(url, **extra) as svc:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        await add_course(svc.coursedb, "262-70001", deadline=past)
        # No deadline: open until the first session starts (which was an hour ago).
        await add_course(svc.coursedb, "262-70002", first_session=past.replace(tzinfo=None))
        for number in ("262-70001", "262-70002"):
            r = await svc.client.post("/orders", json=order(courses=[number]), headers=SERVICE)
            assert r.json()["lines"][0]["reason"] == "registration_closed", number


async def test_payer_and_account_on_every_write_path(stack: tuple[str, dict[str, Any]]) -> None:
    """A new payer who books nothing with a new SEPA account for two children (PostgreSQL: all
    rows in one statement), a known person's new account, a stored account without a mandate
    reference: ids, line order, defaults and references as written."""
    url, extra = stack
    async with running(url, **extra) as svc:
        await add_course(svc.coursedb, "262-70001", seats=5, fee="50.00")
        await add_course(svc.coursedb, "262-70002", seats=5, fee="70.00")
        people = [
            {
                "key": "kid1",
                "person": person("Lena", "Brandt", email=None, birth_date="2015-01-02"),
            },
            {"key": "dad", "person": person("Jan", "Brandt")},
            {"key": "kid2", "person": person("Tom", "Brandt", email=None, birth_date="2017-03-04")},
        ]
        items = [
            {"participant": "kid2", "course_number": "262-70002"},
            {"participant": "kid1", "course_number": "262-70001"},
            {"participant": "kid2", "course_number": "262-70001"},
        ]
        body = {**order("W-PAY-1", people=people, items=items, payment=sepa_new()), "payer": "dad"}
        result = (await svc.client.post("/orders", json=body, headers=SERVICE)).json()
        assert result["status"] == "accepted", result
        ids = result["participant_ids"]
        assert set(ids) == {"kid1", "dad", "kid2"} and len(set(ids.values())) == 3
        lines = result["lines"]
        assert [(x["participant"], x["course_number"]) for x in lines] == [
            ("kid2", "262-70002"),
            ("kid1", "262-70001"),
            ("kid2", "262-70001"),
        ]
        reg_ids = [x["registration_id"] for x in lines]
        assert reg_ids == sorted(reg_ids)  # written in line order
        async with svc.coursedb.connect() as conn:
            regs = {
                r.id: r
                for r in await conn.execute(
                    select(cdb.registrations).where(
                        cdb.registrations.c.order_id == result["order_id"]
                    )
                )
            }
            o = (
                await conn.execute(select(cdb.orders).where(cdb.orders.c.id == result["order_id"]))
            ).one()
            account = (
                await conn.execute(
                    select(cdb.bank_accounts).where(
                        cdb.bank_accounts.c.id == result["bank_account_id"]
                    )
                )
            ).one()
            dad = (
                await conn.execute(
                    select(cdb.participants).where(cdb.participants.c.id == ids["dad"])
                )
            ).one()
        assert [(regs[i].participant_id, regs[i].fee_charged) for i in reg_ids] == [
            (ids["kid2"], Decimal("70.00")),
            (ids["kid1"], Decimal("50.00")),
            (ids["kid2"], Decimal("50.00")),
        ]
        assert (o.participant_id, o.bank_account_id, o.external_order_id) == (
            ids["dad"],
            account.id,
            "W-PAY-1",
        )
        assert o.total_amount == Decimal("170.00") and o.row_version == 1
        assert (dad.first_name, dad.country, dad.row_version) == ("Jan", "DE", 1)
        assert account.participant_id == ids["dad"] and account.is_default
        assert account.mandate_reference == result["mandate_reference"]
        assert result["mandate_reference"].startswith(f"VHS-{ids['dad']}-")
        assert result["iban_masked"] == account.iban_masked == "DE** **** **** **** **30 00"
        assert svc.booking.cipher.open(account) == VALID_IBAN

        # A known person (matched) with a new account: found, stored as the first default.
        known = await add_participant(svc.coursedb, "Erika", "Mustermann")
        same = person("Erika", "Mustermann", email="erika@example.org", birth_date="1964-08-12")
        body = order(
            "W-PAY-2",
            people=[{"key": "p", "person": same}],
            courses=["262-70001"],
            payment=sepa_new("DE02120300000000202051"),
        )
        result = (await svc.client.post("/orders", json=body, headers=SERVICE)).json()
        assert result["status"] == "accepted" and result["participant_ids"] == {"p": known}
        assert result["mandate_reference"].startswith(f"VHS-{known}-")

        # A stored account without a mandate reference gets one with the booking.
        async with svc.coursedb.begin() as conn:
            stored = await add_account(
                conn,
                svc.booking.cipher,
                participant_id=known,
                account_holder="Erika Mustermann",
                iban="DE02500105170137075030",
            )
        body = order(
            "W-PAY-3",
            people=[{"key": "me", "participant_id": known}],
            courses=["262-70002"],
            payment={"method": "sepa", "bank_account_id": stored},
        )
        result = (await svc.client.post("/orders", json=body, headers=STAFF)).json()
        assert result["status"] == "accepted", result
        assert result["bank_account_id"] == stored
        assert result["mandate_reference"].startswith(f"VHS-{known}-")
        async with svc.coursedb.connect() as conn:
            reference = await conn.scalar(
                select(cdb.bank_accounts.c.mandate_reference).where(
                    cdb.bank_accounts.c.id == stored
                )
            )
        assert reference == result["mandate_reference"]


async def test_an_order_from_before_a_key_rotation_is_still_recognised(
    stack: tuple[str, dict[str, Any]], monkeypatch: Any
) -> None:
    """The payload hash is keyed with MESH_SECRET_KEY's first key. After a rotation
    (``<new>,<old>``) a resent order from before it gets its original answer, not a 409;
    other content under the same id is still a conflict."""
    from mesh_common.secrets import generate_key

    url, extra = stack
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("MESH_SECRET_KEY", old)
    body = order("W-ROT-1")
    async with running(url, **extra) as svc:
        await add_course(svc.coursedb, "262-40401", seats=5)
        first = await svc.client.post("/orders", json=body, headers=SERVICE)
        assert first.status_code == 200, first.text
    monkeypatch.setenv("MESH_SECRET_KEY", f"{new},{old}")
    async with running(url, **extra) as svc:
        again = await svc.client.post("/orders", json=body, headers=SERVICE)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        changed = order("W-ROT-1", people=[{"key": "p1", "person": person("Moritz")}])
        assert (await svc.client.post("/orders", json=changed, headers=SERVICE)).status_code == 409
    monkeypatch.setenv("MESH_SECRET_KEY", new)  # the old key gone: no longer recognisable
    async with running(url, **extra) as svc:
        assert (await svc.client.post("/orders", json=body, headers=SERVICE)).status_code == 409
