"""The school-year change (ablauf-schuljahrwechsel.md) end to end: a dry run shows the plan
(continued and ended groups), a real run needs that reviewed plan unchanged, continued groups
keep their UUID and get the new period's name, period and members, new groups are created,
ended groups get their end (and are deleted later) or go at once, and nothing is deleted before
the new period's data exists."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from schulconnex_sync_service.models import transitions
from sqlalchemy import select, update

from .support import ALLOWED, CourseDB, Fake, Service

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

SPRING = dt.date(2025, 3, 3)


async def _start(service: Service, **body: object) -> dict[str, object]:
    r = await service.client.post("/schuljahrwechsel", headers=ALLOWED, json=body)
    assert r.status_code == 202, r.text
    return await service.finished(r.json()["execution_id"])


async def test_school_year_change_plan_then_apply(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    db = coursedb
    old_sem = await db.semester("251", "Frühjahr 2025", dt.date(2025, 2, 1), dt.date(2025, 7, 31))
    lena = await db.lecturer("Lena", "Lang")
    max_ = await db.lecturer("Max", "Mohn")
    anna = await db.participant("Anna", "Alt", dt.date(1990, 1, 1))
    bert = await db.participant("Bert", "Bauer", dt.date(1985, 5, 5))
    cora = await db.participant("Cora", "Conrad", dt.date(1977, 2, 2))
    old = {}
    for number, title in (
        ("251-40401", "Spanisch A1"),  # continued by 252-40401 (same number, same lecturer)
        ("251-40402", "Italienisch A1"),  # ended: 252-40402 has another lecturer
        ("251-40403", "Yoga"),  # ended, deleted at once (delete_after 0)
        ("251-40404", "Töpfern"),  # continued by 252-40499, chosen in the dialog
    ):
        old[number] = await db.course(number, title, semester_id=old_sem, first=SPRING)
        await db.teach(old[number], lena)
    await db.register(old["251-40401"], anna)
    await db.register(old["251-40401"], bert)
    await db.register(old["251-40402"], cora)
    first = await service.run(semester="251")
    assert first["status"] == "succeeded", first
    groups = await service.links("gruppe")
    gid = {n: groups[f"course:{c}"] for n, c in old.items()}
    members = await service.links("gruppenzugehoerigkeit")
    z_anna_old = next(z for k, z in members.items() if k.startswith("registration:"))
    foreign = fake.fake.seed_gruppe({"bezeichnung": "AG Theater", "typ": "Sonstig"})

    new = {}
    for number, title in (
        ("252-40401", "Spanisch A2"),
        ("252-40402", "Italienisch A2"),
        ("252-40405", "Portugiesisch A1"),
        ("252-40499", "Töpfern Fortsetzung"),
    ):
        new[number] = await db.course(number, title, status="planned")
    for number in ("252-40401", "252-40405", "252-40499"):
        await db.teach(new[number], lena)
    await db.teach(new["252-40402"], max_)
    await db.register(new["252-40401"], anna)  # Anna stays, Bert leaves, Cora joins
    await db.register(new["252-40401"], cora)

    options = {
        "from_semester": "251",
        "to_semester": "252",
        "continuations": {"251-40404": "252-40499"},
        "delete_after": {"251-40403": 0},
    }
    # The guide's dialog is not optional: no real run without a reviewed plan; bad input is
    # refused before any run.
    r = await service.client.post(
        "/schuljahrwechsel", headers=ALLOWED, json={**options, "dry_run": False}
    )
    assert r.status_code == 422 and r.json()["code"] == "plan-required", r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await service.client.post(
        "/schuljahrwechsel",
        headers=ALLOWED,
        json={**options, "continuations": {"251-40404": "251-40403"}},
    )
    assert r.status_code == 422 and r.json()["code"] == "invalid-continuation", r.text

    before = (
        {k: dict(v) for k, v in fake.fake.gruppen.items()},
        {k: dict(v) for k, v in fake.fake.zugehoerigkeiten.items()},
    )
    dry = await _start(service, **options)
    assert dry["status"] == "succeeded", dry
    assert (fake.fake.gruppen, fake.fake.zugehoerigkeiten) == before  # nothing written
    plan = (await service.report(str(dry["id"])))["summary"]["schuljahrwechsel"]
    pairs = {(c["old_number"], c["new_number"], c["why"]) for c in plan["continued"]}
    assert pairs == {
        ("251-40401", "252-40401", "same course number, same lecturers"),
        ("251-40404", "252-40499", "chosen"),
    }
    spanish = next(c for c in plan["continued"] if c["old_number"] == "251-40401")
    assert (spanish["participants_staying"], spanish["participants_before"]) == (1, 2)
    ended = {e["old_number"]: e for e in plan["ended"]}
    assert set(ended) == {"251-40402", "251-40403"}
    assert (ended["251-40402"]["action"], ended["251-40402"]["delete_after_days"]) == (
        "expire",
        30,
    )
    assert "other lecturers" in ended["251-40402"]["why"]
    assert ended["251-40403"]["action"] == "delete"
    assert {n["new_number"] for n in plan["new"]} == {"252-40402", "252-40405"}
    dry_items = await service.item_map(str(dry["id"]))
    c1 = dry_items[f"course:{old['251-40401']}"]
    assert (c1["action"], c1["outcome"], c1["detail"]["planned"]) == (
        "gruppe.continue",
        "skipped",
        "continue",
    )
    # The continued group shows as an update of the new course (same UUID), not a create.
    n1 = dry_items[f"course:{new['252-40401']}"]
    assert (n1["action"], n1["detail"]["planned"]) == ("gruppe.update", "update")

    # Something changes after the review: the plan differs, the run refuses.
    await db.teach(new["252-40401"], max_)
    refused = await _start(service, **options, dry_run=False, plan=dry["id"])
    assert refused["status"] == "failed" and "plan changed" in str(refused["error"])
    assert (fake.fake.gruppen, fake.fake.zugehoerigkeiten) == before
    await db.stop_teaching(new["252-40401"], max_)

    ex = await _start(service, **options, dry_run=False, plan=dry["id"])
    assert ex["status"] == "succeeded", ex
    items = await service.item_map(str(ex["id"]))
    # Continued: the same group (UUID), now the new course's name, period and members.
    g1 = fake.fake.gruppen[gid["251-40401"]]
    assert (g1["bezeichnung"], g1["referrer"]) == ("Spanisch A2", f"course:{new['252-40401']}")
    assert g1["laufzeit"] == {"von": "2025-09-01", "bis": "2025-09-08"}
    zs = {z["referrer"]: z for z in fake.fake.zugehoerigkeiten.values() if z["_gruppe"] == g1["id"]}
    assert set(zs) == {
        f"course-lecturer:{new['252-40401']}:{lena}",
        *(f"registration:{r}" for r in await _registrations(db, new["252-40401"])),
    }
    assert z_anna_old in {z["id"] for z in zs.values()}  # Anna's membership kept its id
    assert fake.fake.gruppen[gid["251-40404"]]["bezeichnung"] == "Töpfern Fortsetzung"
    links = await service.links("gruppe")
    assert links[f"course:{new['252-40401']}"] == gid["251-40401"]
    assert f"course:{old['251-40401']}" not in links
    # New groups for the courses without a predecessor.
    assert {f"course:{new['252-40402']}", f"course:{new['252-40405']}"} <= set(links)
    # Ended: Italienisch keeps existing with its end set, Yoga is gone; foreign untouched.
    g2 = fake.fake.gruppen[gid["251-40402"]]
    assert g2["laufzeit"]["bis"] == "2025-03-10" and g2["referrer"] == f"course:{old['251-40402']}"
    assert gid["251-40403"] not in fake.fake.gruppen
    assert foreign["id"] in fake.fake.gruppen
    end = items[f"course:{old['251-40402']}"]
    assert (end["action"], end["outcome"]) == ("gruppe.end", "ok")
    # No group was deleted before the new period's data existed (persons, groups, members).
    log = [(e.method, e.path) for e in fake.fake.log]
    last_create = max(i for i, (m, _) in enumerate(log) if m == "POST")
    first_delete = min(
        i for i, (m, p) in enumerate(log) if m == "DELETE" and p.startswith("/v1/gruppen/")
    )
    assert last_create < first_delete
    rows = await _transitions(service)
    assert rows[f"course:{old['251-40401']}"]["kind"] == "continued"
    assert rows[f"course:{old['251-40402']}"]["status"] == "scheduled"
    assert rows[f"course:{old['251-40402']}"]["delete_at"] > time.time() + 29 * 86400
    assert rows[f"course:{old['251-40403']}"]["status"] == "deleted"

    # The same plan cannot be applied twice (the situation changed: it is applied).
    again = await _start(service, **options, dry_run=False, plan=dry["id"])
    assert again["status"] == "failed" and "plan changed" in str(again["error"])

    # A later regular sync of the old period does not resurrect its courses as new groups.
    posts = fake.fake.counts["POST /gruppen"]
    old_sync = await service.run(semester="251", statuses=["open", "closed", "finished"])
    assert old_sync["status"] == "succeeded", old_sync
    assert fake.fake.counts["POST /gruppen"] == posts

    # When the Italian group's deletion is due, a run deletes it (still ours).
    async with service.runtime.db.engine.begin() as conn:
        await conn.execute(
            update(transitions)
            .where(transitions.c.local_key == f"course:{old['251-40402']}")
            .values(delete_at=time.time() - 1)
        )
    due = await service.run()
    assert due["status"] == "succeeded", due
    assert gid["251-40402"] not in fake.fake.gruppen
    gone = (await service.item_map(str(due["id"])))[f"course:{old['251-40402']}"]
    assert (gone["action"], gone["outcome"]) == ("gruppe.delete", "ok")
    assert (await _transitions(service))[f"course:{old['251-40402']}"]["status"] == "deleted"


async def _registrations(db: CourseDB, course_id: int) -> list[int]:
    from coursedb import schema

    async with db.engine.connect() as conn:
        r = schema.registrations
        return [x for (x,) in await conn.execute(select(r.c.id).where(r.c.course_id == course_id))]


async def _transitions(service: Service) -> dict[str, dict[str, object]]:
    async with service.runtime.db.engine.connect() as conn:
        rows = await conn.execute(select(transitions))
        return {r.local_key: dict(r._mapping) for r in rows}
