"""Seed step 9 "Löschen": what this centre created in Schulconnex and no longer has is deleted
(groups with DELETE /gruppen/{id}, memberships one by one, persons as ablauf-löschen.md
describes), with the current revision, after a confirmation (default) or at once; never what
other systems manage. Against the fake over real HTTP, validated against the OpenAPI files."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from .support import ALLOWED, CourseDB, Fake, Service, ServiceFactory

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


async def _two_courses(coursedb: CourseDB) -> dict[str, int]:
    ids = {
        "a": await coursedb.course("252-40401", "Spanisch A1"),
        "b": await coursedb.course("252-40402", "Spanisch A2"),
        "anna": await coursedb.participant("Anna", "Alt", dt.date(1990, 1, 1)),
        "bert": await coursedb.participant("Bert", "Bauer", dt.date(1985, 5, 5)),
        "lena": await coursedb.lecturer("Lena", "Lang"),
    }
    await coursedb.register(ids["a"], ids["anna"])
    await coursedb.register(ids["b"], ids["bert"])
    await coursedb.teach(ids["a"], ids["lena"])
    await coursedb.teach(ids["b"], ids["lena"])
    return ids


async def test_deleted_course_and_lecturer_are_deleted_after_confirmation_never_foreign_ones(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    ids = await _two_courses(coursedb)
    first = await service.run()
    assert first["status"] == "succeeded", first
    groups = await service.links("gruppe")
    members = await service.links("gruppenzugehoerigkeit")
    gid_a, gid_b = groups[f"course:{ids['a']}"], groups[f"course:{ids['b']}"]
    zid_lena_b = members[f"course-lecturer:{ids['b']}:{ids['lena']}"]
    # What other systems manage: a group without our keys, a group with our key shape but no
    # link (seed case 2: a restored backup?), and a membership of theirs in our group A.
    foreign_group = fake.fake.seed_gruppe({"bezeichnung": "AG Theater", "typ": "Sonstig"})
    our_shape = fake.fake.seed_gruppe(
        {"referrer": "course:9999", "bezeichnung": "X", "typ": "Kurs"}
    )
    anna_kt = next(
        z["ktid"]
        for z in fake.fake.zugehoerigkeiten.values()
        if z["_gruppe"] == gid_a and z.get("rollen") == ["Lern"]
    )
    foreign_member = fake.fake.seed_zugehoerigkeit(
        gid_b, {"ktid": anna_kt, "rollen": ["Lern"], "referrer": "stundenplan-77"}
    )

    # Locally: course A is deleted, Lena no longer teaches B.
    await coursedb.delete_course(ids["a"])
    await coursedb.stop_teaching(ids["b"], ids["lena"])

    # The dry run shows the questions and writes nothing.
    before = {k: dict(v) for k, v in fake.fake.gruppen.items()}
    dry = await service.run(dry_run=True)
    dry_items = await service.item_map(dry["id"])
    assert dry_items[f"course:{ids['a']}"]["action"] == "gruppe.confirm-delete"
    assert fake.fake.gruppen == before and not await service.confirmations(kind="delete")

    ex = await service.run()
    assert ex["status"] == "succeeded", ex
    items = await service.item_map(ex["id"])
    ga = items[f"course:{ids['a']}"]
    assert (ga["action"], ga["outcome"], ga["detail"]["case"]) == (
        "gruppe.confirm-delete",
        "skipped",
        "gone",
    )
    lm = items[f"course-lecturer:{ids['b']}:{ids['lena']}"]
    assert lm["action"] == "gruppenzugehoerigkeit.confirm-delete", lm
    # Nothing deleted yet; the foreign records are neither deleted nor asked about.
    assert gid_a in fake.fake.gruppen and zid_lena_b in fake.fake.zugehoerigkeiten
    asked = {c["remote_id"]: c for c in await service.confirmations(kind="delete")}
    assert set(asked) == {gid_a, zid_lena_b}
    assert asked[gid_a]["local_key"] == f"course:{ids['a']}"
    assert asked[gid_a]["remote"]["bezeichnung"] == "Spanisch A1"
    summary = (await service.report(ex["id"]))["summary"]
    assert summary["totals"]["deletions_pending"] == 2 and summary["totals"]["deleted"] == 0
    assert summary["cases"]["groups"]["case gone"] == {"skipped": 1}
    assert items[f"schulconnex:gruppe:{our_shape['id']}"]["action"] == "gruppe.confirm-import"

    # Right before our DELETE of group A a third party changes it (new revision): the DELETE
    # answers 409, the group is read again, is still ours, and goes with the fresh revision.
    # Right before our DELETE of Lena's membership another system takes it over: on the 409
    # the fresh record is not ours any more, so it stays.
    touched: set[str] = set()

    def take_over(method: str, path: str, body: bytes) -> None:
        if method != "DELETE" or path in touched:
            return
        if path == f"/gruppen/{gid_a}":
            touched.add(path)
            fake.fake.touch("gruppe", gid_a, beschreibung="geändert von Dritten")
        elif path == f"/gruppenzugehoerigkeiten/{zid_lena_b}":
            touched.add(path)
            fake.fake.touch("zugehoerigkeit", zid_lena_b, referrer="stundenplan-78")

    fake.fake.on_request = take_over
    run_id = await service.decide_all("delete")
    ex2 = await service.finished(run_id)
    fake.fake.on_request = None
    assert ex2["status"] == "succeeded", ex2
    items2 = await service.item_map(ex2["id"])
    deleted = items2[f"course:{ids['a']}"]
    assert (deleted["action"], deleted["outcome"]) == ("gruppe.delete", "ok"), deleted
    assert gid_a not in fake.fake.gruppen
    assert not [z for z in fake.fake.zugehoerigkeiten.values() if z["_gruppe"] == gid_a]
    assert fake.fake.counts["status:409"] == 2
    assert fake.fake.counts["DELETE /gruppen/{id}"] == 2
    kept = items2[f"course-lecturer:{ids['b']}:{ids['lena']}"]
    assert (kept["action"], kept["outcome"]) == ("gruppenzugehoerigkeit.delete", "skipped")
    assert "not ours" in kept["detail"]["note"]
    assert fake.fake.zugehoerigkeiten[zid_lena_b]["referrer"] == "stundenplan-78"
    # Never touched: the foreign group, the group with only our key shape, the foreign member.
    assert foreign_group["id"] in fake.fake.gruppen and our_shape["id"] in fake.fake.gruppen
    assert foreign_member["id"] in fake.fake.zugehoerigkeiten
    assert gid_b in fake.fake.gruppen
    report = (await service.report(ex2["id"]))["summary"]["totals"]
    assert report["deleted"] == 1
    links = await service.links("gruppe")
    assert f"course:{ids['a']}" not in links and f"course:{ids['b']}" in links
    memberships = await service.links("gruppenzugehoerigkeit")
    assert f"course-lecturer:{ids['b']}:{ids['lena']}" not in memberships
    assert f"course-lecturer:{ids['a']}:{ids['lena']}" not in memberships
    assert not await service.confirmations(kind="delete")  # applied
    (applied,) = [c for c in await service.confirmations(kind="delete", status="applied")]
    assert applied["remote_id"] == gid_a


async def test_auto_mode_deletes_at_once_but_asks_when_others_records_would_go(
    fake: Fake, service_factory: ServiceFactory, coursedb: CourseDB
) -> None:
    service = await service_factory(**fake.env(), sync_delete_mode="auto")
    ids = await _two_courses(coursedb)
    assert (await service.run())["status"] == "succeeded"
    groups = await service.links("gruppe")
    gid_a, gid_b = groups[f"course:{ids['a']}"], groups[f"course:{ids['b']}"]
    some_kt = next(iter(fake.fake.kontexte))
    fake.fake.seed_zugehoerigkeit(gid_b, {"ktid": some_kt, "rollen": ["Lern"]})  # not ours
    await coursedb.delete_course(ids["a"])
    await coursedb.delete_course(ids["b"])

    dry = await service.run(dry_run=True)
    planned = await service.item_map(dry["id"])
    assert planned[f"course:{ids['a']}"]["detail"]["planned"] == "delete"
    assert gid_a in fake.fake.gruppen

    ex = await service.run()
    assert ex["status"] == "succeeded", ex
    items = await service.item_map(ex["id"])
    assert items[f"course:{ids['a']}"]["action"] == "gruppe.delete"
    assert items[f"course:{ids['a']}"]["outcome"] == "ok"
    assert gid_a not in fake.fake.gruppen
    # B holds a membership of another system: deleting B would delete it too, so even in
    # auto mode a person decides.
    b = items[f"course:{ids['b']}"]
    assert (b["action"], b["detail"]["blocked"]) == (
        "gruppe.confirm-delete",
        "1 of its memberships belong to other systems",
    )
    assert gid_b in fake.fake.gruppen
    (question,) = await service.confirmations(kind="delete")
    assert question["remote"]["foreign_memberships"] == 1
    # Rejected: kept, and not asked again.
    r = await service.client.post(f"/confirmations/{question['id']}/reject", headers=ALLOWED)
    assert r.status_code == 200, r.text
    ex2 = await service.run()
    again = (await service.item_map(ex2["id"]))[f"course:{ids['b']}"]
    assert (again["outcome"], again["detail"]["note"]) == (
        "skipped",
        "kept: the deletion was rejected",
    )
    assert gid_b in fake.fake.gruppen and not await service.confirmations(kind="delete")


async def test_off_mode_deletes_nothing(
    fake: Fake, service_factory: ServiceFactory, coursedb: CourseDB
) -> None:
    service = await service_factory(**fake.env(), sync_delete_mode="off")
    ids = await _two_courses(coursedb)
    assert (await service.run())["status"] == "succeeded"
    gid_a = (await service.links("gruppe"))[f"course:{ids['a']}"]
    await coursedb.delete_course(ids["a"])
    ex = await service.run()
    item = (await service.item_map(ex["id"]))[f"course:{ids['a']}"]
    assert (item["action"], item["outcome"]) == ("gruppe.delete", "skipped")
    assert "switched off" in item["detail"]["note"]
    assert gid_a in fake.fake.gruppen and not await service.confirmations(kind="delete")


async def test_deleted_persons_kontext_first_then_person_or_a_loeschzeitpunkt(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    course = await coursedb.course("252-40403", "Spanisch B1")
    keep = await coursedb.participant("Kim", "Keller", dt.date(1970, 7, 7))
    plain = await coursedb.participant("Paul", "Plain", dt.date(1980, 1, 1))
    used = await coursedb.participant("Ute", "Used", dt.date(1981, 1, 1))
    shared = await coursedb.participant("Sam", "Shared", dt.date(1982, 1, 1))
    for p in (keep, plain, used, shared):
        await coursedb.register(course, p)
    # Persons of other systems: one with our key shape but no link (case 4), one without keys.
    backup = fake.fake.seed_person(
        {
            "referrer": "participant:99999",
            "name": {"familienname": "Zorn", "vorname": "Zoe"},
            "vertrauensstufe": "Unbe",
            "auskunftssperre": "Nein",
        },
        [{"rolle": "Lern"}],
    )
    theirs = fake.fake.seed_person(
        {
            "name": {"familienname": "Yilmaz", "vorname": "Yus"},
            "vertrauensstufe": "Voll",
            "auskunftssperre": "Nein",
        },
        [{"rolle": "Lehr"}],
    )
    assert (await service.run())["status"] == "succeeded"
    persons = await service.links("person")
    kontexte = await service.links("personenkontext")
    pid = {k: persons[f"participant:{v}"] for k, v in (("plain", plain), ("used", used))}
    pid["shared"] = persons[f"participant:{shared}"]
    fake.fake.mark_used(kontexte[f"participant:{used}"])  # services used it: 400/13 on DELETE
    # Sam is also a parent at another school: a personenkontext that is not ours.
    other = {
        "id": "kt-other-org",
        "mandant": fake.fake.mandant,
        "organisation": {"id": "another-org"},
        "rolle": "SorgBer",
        "personenstatus": "Aktiv",
        "revision": "1",
        "_person": pid["shared"],
    }
    fake.fake._put_kontext(other)
    for p in (plain, used, shared):
        await coursedb.delete_participant(p)

    ex = await service.run()
    assert ex["status"] == "succeeded", ex
    items = await service.item_map(ex["id"])
    for p in (plain, used, shared):
        assert items[f"participant:{p}"]["action"] == "person.confirm-delete"
    assert f"schulconnex:person:{backup['id']}" in items  # asked for import, not deletion
    asked = {c["local_key"] for c in await service.confirmations(kind="delete")}
    assert {f"participant:{p}" for p in (plain, used, shared)} <= asked
    assert len(asked) == 6  # and the three registrations' memberships

    run_id = await service.decide_all("delete")
    ex2 = await service.finished(run_id)
    assert ex2["status"] == "succeeded", ex2
    items2 = await service.item_map(ex2["id"])
    # Paul: membership, personenkontext, person: all gone.
    assert items2[f"participant:{plain}"]["detail"]["deleted"] == "person"
    assert pid["plain"] not in fake.fake.persons
    # Ute's personenkontext was used by services: a Löschzeitpunkt in the future instead.
    ute = items2[f"participant:{used}"]
    assert (ute["action"], ute["outcome"]) == ("person.delete", "ok")
    ute_kt = fake.fake.kontexte[kontexte[f"participant:{used}"]]
    when = ute_kt["loeschung"]["zeitpunkt"]
    assert when == ute["detail"]["scheduled"]
    at = dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    assert at > time.time() and pid["used"] in fake.fake.persons
    # Sam keeps the other organisation's personenkontext; ours went.
    sam = items2[f"participant:{shared}"]
    assert sam["detail"]["deleted"] == "personenkontext" and "other roles" in sam["detail"]["note"]
    assert pid["shared"] in fake.fake.persons
    assert [k["id"] for k in fake.kontexte_of(pid["shared"])] == ["kt-other-org"]
    # Never touched: the person of another system and the one with our key shape only.
    assert backup["id"] in fake.fake.persons and theirs["id"] in fake.fake.persons
    assert f"participant:{keep}" in await service.links("person")

    # Schulconnex deletes Ute's personenkontext at its time; the next run deletes her person
    # without asking again (the deletion was decided already).
    assert fake.fake.run_scheduled_deletions(now=at + 1) == [kontexte[f"participant:{used}"]]
    ex3 = await service.run()
    items3 = await service.item_map(ex3["id"])
    assert items3[f"participant:{used}"]["detail"]["deleted"] == "person"
    assert pid["used"] not in fake.fake.persons
    assert not await service.confirmations(kind="delete")
    links = await service.links("person")
    assert f"participant:{plain}" not in links and f"participant:{used}" not in links
