"""Seed steps 3-6 end to end: the six person cases against the fake server over real HTTP, with
the confirmations API (accept / reject, singly and in bulk) and the imports of step 6."""

from __future__ import annotations

import datetime as dt

import pytest
from coursedb import schema
from sqlalchemy import select

from .support import ALLOWED, CourseDB, Fake, Service

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def lern(referrer: str | None = None) -> dict[str, object]:
    k: dict[str, object] = {"rolle": "Lern"}
    if referrer:
        k["referrer"] = referrer
    return k


async def test_cases_1_2_and_6(fake: Fake, service: Service, coursedb: CourseDB) -> None:
    course = await coursedb.course("252-40401", "Spanisch A1")
    anna = await coursedb.participant("Anna", "Alt", dt.date(1990, 1, 1), email="anna@example.org")
    bert = await coursedb.participant("Bert", "Bauer", dt.date(1985, 5, 5), salutation="mr")
    emil = await coursedb.participant("Emil", "Ernst", dt.date(1999, 9, 9))
    for p in (anna, bert, emil):
        await coursedb.register(course, p)
    # Case 1 by referrer, with a differing first name and a place of birth we do not manage.
    r_anna = fake.fake.seed_person(
        {
            "referrer": f"participant:{anna}",
            "name": {"familienname": "Alt", "vorname": "Ana"},
            "geburt": {"datum": "1990-01-01", "geburtsort": "Erfurt"},
            "vertrauensstufe": "Teil",
            "auskunftssperre": "Nein",
        },
        [lern(f"participant:{anna}/Lern")],
    )
    # Case 2: no key, every attribute equal (written differently).
    r_bert = fake.fake.seed_person(
        {
            "name": {"familienname": "BAUER", "vorname": "bert"},
            "geburt": {"datum": "1985-05-05"},
            "vertrauensstufe": "Voll",
            "auskunftssperre": "Ja",
        },
        [lern()],
    )

    ex = await service.run()
    assert ex["status"] == "succeeded", ex
    items = await service.item_map(ex["id"])
    a = items[f"participant:{anna}"]
    assert (a["action"], a["outcome"], a["detail"]["case"]) == ("person.update", "ok", 1)
    assert a["detail"]["via"] == "referrer" and a["detail"]["fields"] == ["name.vorname"]
    b = items[f"participant:{bert}"]
    assert (b["action"], b["outcome"], b["detail"]["case"]) == ("person.update", "ok", 2)
    e = items[f"participant:{emil}"]
    assert (e["action"], e["outcome"], e["detail"]["case"]) == ("person.create", "ok", 6)

    # Schulconnex now: Anna corrected with a new revision, her place of birth and trust level
    # kept (PUT of the full record); Bert carries our referrer, keeps "Voll"/"Ja"; Emil created
    # with a Lern personenkontext.
    stored_anna = fake.fake.persons[r_anna["id"]]
    assert stored_anna["name"]["vorname"] == "Anna" and stored_anna["revision"] == "2"
    assert stored_anna["geburt"] == {"datum": "1990-01-01", "geburtsort": "Erfurt"}
    assert stored_anna["vertrauensstufe"] == "Teil"
    anna_k = fake.kontexte_of(r_anna["id"])
    assert [k["erreichbarkeiten"] for k in anna_k] == [
        [{"typ": "E-Mail", "kennung": "anna@example.org"}]
    ]
    stored_bert = fake.fake.persons[r_bert["id"]]
    assert stored_bert["referrer"] == f"participant:{bert}"
    assert stored_bert["name"] == {"familienname": "Bauer", "vorname": "Bert", "anrede": ["Herr"]}
    assert (stored_bert["vertrauensstufe"], stored_bert["auskunftssperre"]) == ("Voll", "Ja")
    created = fake.persons_by_referrer()[f"participant:{emil}"]
    assert created["geburt"] == {"datum": "1999-09-09"} and created["vertrauensstufe"] == "Unbe"
    assert [k["rolle"] for k in fake.kontexte_of(created["id"])] == ["Lern"]
    assert len(fake.fake.persons) == 3  # nobody duplicated

    feedback = await service.report(ex["id"])
    persons = feedback["summary"]["cases"]["persons"]
    assert persons == {"case 1": {"ok": 1}, "case 2": {"ok": 1}, "case 6": {"ok": 1}}
    assert feedback["summary"]["totals"]["created"] >= 1 + 1  # Emil and the group
    assert feedback["summary"]["totals"]["updated"] >= 2

    # Per-record sync markers and the link table (local key <-> Schulconnex id per tenant).
    markers = (
        await service.client.get(
            "/sync-state/markers", headers=ALLOWED, params={"entity": "person", "limit": 100}
        )
    ).json()
    assert {m["local_key"]: m["status"] for m in markers} == {
        f"participant:{anna}": "ok",
        f"participant:{bert}": "ok",
        f"participant:{emil}": "ok",
    }
    assert all(m["last_success_at"] and m["execution_id"] == ex["id"] for m in markers)
    links = (
        await service.client.get(
            "/sync-state/links", headers=ALLOWED, params={"entity": "person", "tenant": "env"}
        )
    ).json()
    assert {link["local_key"]: link["external_key"] for link in links} == {
        f"participant:{anna}": r_anna["id"],
        f"participant:{bert}": r_bert["id"],
        f"participant:{emil}": created["id"],
    }

    # Second run: everything is found through the link table and nothing changes.
    ex2 = await service.run()
    again = await service.item_map(ex2["id"])
    for key in (f"participant:{anna}", f"participant:{bert}", f"participant:{emil}"):
        assert again[key]["outcome"] == "unchanged" and again[key]["detail"]["via"] == "link"
    assert ex2["counts"]["succeeded"] == 0 and ex2["counts"]["failed"] == 0
    assert stored_anna["revision"] == fake.fake.persons[r_anna["id"]]["revision"] == "2"


async def test_case_3_needs_a_confirmation_and_accepting_links(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    course = await coursedb.course("252-40402", "Spanisch A2")
    dora = await coursedb.participant("Dora", "Dorn", dt.date(1970, 7, 7))
    dorothea = await coursedb.participant("Dora", "Dorn", None)  # a namesake without a birthday
    await coursedb.register(course, dora)
    remote = fake.fake.seed_person(
        {
            "name": {"familienname": "Dorn", "vorname": "Dora"},
            "vertrauensstufe": "Teil",
            "auskunftssperre": "Nein",
        },
        [lern()],
    )
    ex = await service.run()
    items = await service.item_map(ex["id"])
    ask = items[f"schulconnex:person:{remote['id']}"]
    assert (ask["action"], ask["outcome"], ask["detail"]["case"]) == (
        "person.confirm-match",
        "skipped",
        3,
    )
    assert items[f"participant:{dora}"]["action"] == "person.wait"  # held back, not created
    assert len(fake.fake.persons) == 1

    pending = await service.confirmations()
    assert len(pending) == 1
    c = pending[0]
    assert (c["kind"], c["case"], c["remote"]["familienname"]) == ("person-match", 3, "Dorn")
    assert {x["local_key"] for x in c["candidates"]} == {
        f"participant:{dora}",
        f"participant:{dorothea}",
    }

    # Two candidates: accepting needs a choice; a foreign choice is refused.
    r = await service.client.post(f"/confirmations/{c['id']}/accept", headers=ALLOWED)
    assert r.status_code == 422 and r.json()["code"] == "choice-required"
    r = await service.client.post(
        f"/confirmations/{c['id']}/accept", headers=ALLOWED, json={"choice": "participant:999"}
    )
    assert r.status_code == 422 and r.json()["code"] == "choice-not-a-candidate"
    r = await service.client.post(
        f"/confirmations/{c['id']}/accept",
        headers=ALLOWED,
        json={"choice": f"participant:{dora}"},
        params={"run": "true"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decided"][0]["status"] == "accepted" and body["execution_id"]
    ex2 = await service.finished(body["execution_id"])
    items2 = await service.item_map(ex2["id"])
    done = items2[f"participant:{dora}"]
    assert (done["action"], done["outcome"], done["detail"]["case"]) == ("person.update", "ok", 3)
    assert done["detail"]["via"] == "confirmed"
    stored = fake.fake.persons[remote["id"]]
    assert stored["referrer"] == f"participant:{dora}"
    assert stored["geburt"] == {"datum": "1970-07-07"}  # what we knew and Schulconnex lacked
    assert (await service.confirmations(status="applied"))[0]["id"] == c["id"]
    assert await service.confirmations() == []  # nothing pending any more
    # Deciding it again is refused.
    r = await service.client.post(f"/confirmations/{c['id']}/reject", headers=ALLOWED)
    assert r.status_code == 409 and r.json()["code"] == "confirmation-not-pending"


async def test_case_3_rejected_creates_ours_and_offers_theirs_for_import(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    course = await coursedb.course("252-40403", "Spanisch B1")
    dora = await coursedb.participant("Dora", "Dorn", dt.date(1970, 7, 7))
    await coursedb.register(course, dora)
    remote = fake.fake.seed_person(
        {
            "name": {"familienname": "Dorn", "vorname": "Dora"},
            "vertrauensstufe": "Teil",
            "auskunftssperre": "Nein",
        },
        [lern()],
    )
    await service.run()
    (c,) = await service.confirmations()
    r = await service.client.post(f"/confirmations/{c['id']}/reject", headers=ALLOWED)
    assert r.status_code == 200 and r.json()["decided"][0]["status"] == "rejected"
    ex = await service.run()
    items = await service.item_map(ex["id"])
    assert items[f"participant:{dora}"]["action"] == "person.create"  # not that person: ours
    ask = items[f"schulconnex:person:{remote['id']}"]
    assert (ask["action"], ask["detail"]["case"]) == ("person.confirm-import", 5)
    assert len(fake.fake.persons) == 2


async def test_cases_4_and_5_import_on_confirmation(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    await coursedb.course("252-40404", "Spanisch B2")
    # Case 4: our referrer, but no such participant (a backup was restored).
    restored = fake.fake.seed_person(
        {
            "referrer": "participant:4711",
            "name": {"familienname": "Xylo", "vorname": "Xaver", "anrede": ["Herr"]},
            "geburt": {"datum": "1960-01-01"},
            "vertrauensstufe": "Voll",
            "auskunftssperre": "Nein",
        },
        [{"rolle": "Lern", "erreichbarkeiten": [{"typ": "E-Mail", "kennung": "x@example.org"}]}],
    )
    # Case 5: nobody here; a teacher (becomes a lecturer).
    stranger = fake.fake.seed_person(
        {
            "name": {"familienname": "Ypsilon", "vorname": "Yvonne", "titel": "Dr."},
            "vertrauensstufe": "Voll",
            "auskunftssperre": "Nein",
        },
        [{"rolle": "Lehr"}],
    )
    # Case 5 as well, but only a Schulbegleiter: cannot be imported.
    helper = fake.fake.seed_person(
        {
            "name": {"familienname": "Zett", "vorname": "Zora"},
            "vertrauensstufe": "Voll",
            "auskunftssperre": "Nein",
        },
        [{"rolle": "SchB"}],
    )
    ex = await service.run()
    items = await service.item_map(ex["id"])
    assert items[f"schulconnex:person:{restored['id']}"]["detail"]["case"] == 4
    assert items[f"schulconnex:person:{stranger['id']}"]["detail"]["case"] == 5
    pending = await service.confirmations(kind="person-import")
    assert {c["remote_id"]: c["case"] for c in pending} == {
        restored["id"]: 4,
        stranger["id"]: 5,
        helper["id"]: 5,
    }
    # Bulk: accept the first two, reject the third.
    ids = {c["remote_id"]: c["id"] for c in pending}
    r = await service.client.post(
        "/confirmations/bulk",
        headers=ALLOWED,
        json={
            "decisions": [
                {"id": ids[restored["id"]], "decision": "accept"},
                {"id": ids[stranger["id"]], "decision": "accept"},
                {"id": ids[helper["id"]], "decision": "reject"},
            ]
        },
    )
    assert r.status_code == 200, r.text
    ex2 = await service.run()
    items2 = await service.item_map(ex2["id"])
    imp = items2[f"schulconnex:person:{restored['id']}"]
    assert (imp["action"], imp["outcome"], imp["detail"]["case"]) == ("person.import", "ok", 4)
    imp2 = items2[f"schulconnex:person:{stranger['id']}"]
    assert (imp2["action"], imp2["outcome"]) == ("person.import", "ok")
    assert f"schulconnex:person:{helper['id']}" not in items2  # rejected: not asked again

    # Step 6 wrote the course database, and our keys went back to Schulconnex as referrers.
    async with coursedb.engine.connect() as conn:
        p = (
            await conn.execute(
                select(schema.participants).where(schema.participants.c.last_name == "Xylo")
            )
        ).one()
        lect = (
            await conn.execute(
                select(schema.lecturers).where(schema.lecturers.c.last_name == "Ypsilon")
            )
        ).one()
    assert (p.first_name, p.birth_date, p.email, p.salutation) == (
        "Xaver",
        dt.date(1960, 1, 1),
        "x@example.org",
        "mr",
    )
    assert (lect.first_name, lect.academic_title) == ("Yvonne", "Dr.")
    assert imp["detail"]["imported_as"] == f"participant:{p.id}"
    assert fake.fake.persons[restored["id"]]["referrer"] == f"participant:{p.id}"
    assert fake.fake.persons[stranger["id"]]["referrer"] == f"lecturer:{lect.id}"
    statuses = {c["remote_id"]: c["status"] for c in await service.confirmations(status="all")}
    assert statuses == {
        restored["id"]: "applied",
        stranger["id"]: "applied",
        helper["id"]: "rejected",
    }

    # A third run: all three are settled (two linked, one rejected), nothing is asked.
    ex3 = await service.run()
    assert await service.confirmations() == []
    assert ex3["status"] == "succeeded"
