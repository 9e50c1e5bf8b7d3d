"""What goes wrong in real life: stale revisions (409), tokens expiring mid-run, 429 and 503
bursts, records that keep failing (partially succeeded, retry failed only), an unavailable
server, a dry run, the permission, and credentials that must never show up anywhere."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pytest
from pydantic import SecretStr

from .support import ALLOWED, CourseDB, Fake, Service, ServiceFactory, token


async def _one_person(
    fake: Fake, coursedb: CourseDB, *, vorname: str = "Ana"
) -> tuple[int, dict[str, Any]]:
    """A participant in a selected course, and her Schulconnex record with a stale first name."""
    course = await coursedb.course("252-40401", "Spanisch A1")
    anna = await coursedb.participant("Anna", "Alt", dt.date(1990, 1, 1))
    await coursedb.register(course, anna)
    remote = fake.fake.seed_person(
        {
            "referrer": f"participant:{anna}",
            "name": {"familienname": "Alt", "vorname": vorname},
            "geburt": {"datum": "1990-01-01"},
            "vertrauensstufe": "Teil",
            "auskunftssperre": "Nein",
        },
        [{"rolle": "Lern", "referrer": f"participant:{anna}/Lern"}],
    )
    return anna, remote


def _touch_before_first_put(fake: Fake, rid: str, **changes: Any) -> list[int]:
    """A third party changes the record just before our PUT arrives (so it gets a 409)."""
    seen: list[int] = []

    def hook(method: str, path: str, body: bytes) -> None:
        if method == "PUT" and path == f"/personen/{rid}" and not seen:
            seen.append(1)
            fake.fake.touch("person", rid, **changes)

    fake.fake.on_request = hook
    return seen


async def test_409_after_an_unmanaged_change_rereads_and_applies_on_top(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    anna, remote = await _one_person(fake, coursedb)
    seen = _touch_before_first_put(fake, remote["id"], geburt={"geburtsort": "Erfurt"})
    ex = await service.run()
    assert seen and ex["status"] == "succeeded"
    item = (await service.item_map(ex["id"]))[f"participant:{anna}"]
    assert (item["action"], item["outcome"]) == ("person.update", "ok")
    stored = fake.fake.persons[remote["id"]]
    # Theirs kept (place of birth), ours applied (first name), on top of their revision.
    assert stored["geburt"] == {"datum": "1990-01-01", "geburtsort": "Erfurt"}
    assert stored["name"]["vorname"] == "Anna" and stored["revision"] == "3"
    assert fake.fake.counts["status:409"] == 1
    assert await service.confirmations() == []


async def test_409_after_a_managed_change_asks_instead_of_overwriting(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    anna, remote = await _one_person(fake, coursedb)
    _touch_before_first_put(fake, remote["id"], name={"vorname": "Anne-Marie"})
    ex = await service.run()
    item = (await service.item_map(ex["id"]))[f"participant:{anna}"]
    assert (item["action"], item["outcome"]) == ("person.conflict", "skipped")
    assert fake.fake.persons[remote["id"]]["name"]["vorname"] == "Anne-Marie"  # not overwritten
    (c,) = await service.confirmations(kind="conflict")
    assert c["remote"]["fields"]["name.vorname"] == {"schulconnex": "Anne-Marie", "local": "Anna"}
    assert c["local_key"] == f"participant:{anna}"

    # While it is pending, further runs hold the record back.
    fake.fake.on_request = None
    ex2 = await service.run()
    held = (await service.item_map(ex2["id"]))[f"participant:{anna}"]
    assert (held["action"], held["outcome"]) == ("person.conflict", "skipped")
    assert fake.fake.persons[remote["id"]]["name"]["vorname"] == "Anne-Marie"

    # Accepted: the centre's value wins on the next run.
    r = await service.client.post(
        f"/confirmations/{c['id']}/accept", headers=ALLOWED, params={"run": "true"}
    )
    ex3 = await service.finished(r.json()["execution_id"])
    done = (await service.item_map(ex3["id"]))[f"participant:{anna}"]
    assert (done["action"], done["outcome"]) == ("person.update", "ok")
    assert fake.fake.persons[remote["id"]]["name"]["vorname"] == "Anna"
    assert (await service.confirmations(status="applied"))[0]["id"] == c["id"]


async def test_a_rejected_conflict_keeps_schulconnex_values(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    anna, remote = await _one_person(fake, coursedb)
    _touch_before_first_put(fake, remote["id"], name={"vorname": "Anne-Marie"})
    await service.run()
    fake.fake.on_request = None
    (c,) = await service.confirmations(kind="conflict")
    await service.client.post(f"/confirmations/{c['id']}/reject", headers=ALLOWED)
    ex = await service.run()
    item = (await service.item_map(ex["id"]))[f"participant:{anna}"]
    assert item["outcome"] == "skipped" and "kept" in item["detail"]["note"]
    assert fake.fake.persons[remote["id"]]["name"]["vorname"] == "Anne-Marie"


async def test_token_expiring_mid_run_is_renewed(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    course = await coursedb.course("252-40401", "Spanisch A1")
    for i in range(12):
        await coursedb.register(
            course,
            await coursedb.participant(
                f"P{i}", "Muster", dt.date(1990, 1, 1) + dt.timedelta(days=i)
            ),
        )
    posts: list[int] = []

    def hook(method: str, path: str, body: bytes) -> None:
        if method == "POST" and path == "/personen":
            posts.append(1)
            if len(posts) in (4, 9):  # twice during the run
                fake.fake.expire_tokens()

    fake.fake.on_request = hook
    ex = await service.run()
    failed = await service.items(ex["id"], outcome="failed")
    assert ex["status"] == "succeeded" and ex["counts"]["failed"] == 0, (
        ex,
        failed,
        fake.fake.counts,
    )
    assert len(fake.persons_by_referrer()) == 12
    assert fake.fake.counts["status:401"] >= 2  # the server did refuse the expired token
    assert fake.fake.tokens_issued >= 3  # and the client fetched new ones
    client = (await service.report(ex["id"]))["summary"]["client"]
    assert client["token_renewals_after_401"] >= 2


async def test_429_and_503_bursts_are_retried(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    course = await coursedb.course("252-40401", "Spanisch A1")
    for i in range(6):
        await coursedb.register(
            course,
            await coursedb.participant(
                f"P{i}", "Muster", dt.date(1990, 1, 1) + dt.timedelta(days=i)
            ),
        )
    fake.fake.add_fault(
        status=429, count=4, method="POST", path_prefix="/v1/personen", retry_after="1"
    )
    fake.fake.add_fault(status=503, count=5, method="POST", path_prefix="/v1/gruppen")
    fake.fake.add_fault(status=503, count=3, method="GET", path_prefix="/v1/personen")
    ex = await service.run()
    assert ex["status"] == "succeeded" and ex["counts"]["failed"] == 0, ex
    assert fake.fake.counts["fault:429"] == 4 and fake.fake.counts["fault:503"] == 8
    assert len(fake.persons_by_referrer()) == 6 and len(fake.fake.gruppen) == 1
    assert (await service.report(ex["id"]))["summary"]["client"]["retries"] >= 12


async def test_partial_failure_then_retry_failed_only(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    course = await coursedb.course("252-40401", "Spanisch A1")
    ids = []
    for i in range(4):
        pid = await coursedb.participant(
            f"P{i}", "Muster", dt.date(1990, 1, 1) + dt.timedelta(days=i)
        )
        ids.append(pid)
        await coursedb.register(course, pid)
    bad = f"participant:{ids[2]}"
    # Schulconnex fails every creation of this one person (server error, until fixed).
    fault = fake.fake.add_fault(
        status=500, count=None, method="POST", path_prefix="/v1/personen", body_contains=f'"{bad}"'
    )
    ex = await service.run()
    assert ex["status"] == "partially_succeeded", ex
    failed = await service.items(ex["id"], outcome="failed")
    assert {i["record_key"] for i in failed} == {bad, f"registration:{ids[2]}"}
    assert "HTTP 500" in next(i["error"] for i in failed if i["record_key"] == bad)
    assert fault.hits >= 1 and bad not in fake.persons_by_referrer()

    fake.fake.clear_faults()
    r = await service.client.post(f"/tasks/executions/{ex['id']}/retry", headers=ALLOWED)
    assert r.status_code == 202, r.text
    retry = await service.finished(r.json()["execution_id"])
    assert retry["status"] == "succeeded" and retry["parent_id"] == ex["id"]
    keys = {i["record_key"] for i in await service.items(retry["id"])}
    assert keys == {bad, f"registration:{ids[2]}"}  # only what failed
    assert bad in fake.persons_by_referrer()
    assert len(fake.fake.zugehoerigkeiten) == 4


async def test_unavailable_server_aborts_the_run(
    fake: Fake, service_factory: ServiceFactory, coursedb: CourseDB
) -> None:
    service = await service_factory(**fake.env(), schulconnex_max_retries=1)
    course = await coursedb.course("252-40401", "Spanisch A1")
    for i in range(40):
        await coursedb.register(
            course,
            await coursedb.participant(
                f"P{i}", "Muster", dt.date(1990, 1, 1) + dt.timedelta(days=i)
            ),
        )
    fake.fake.add_fault(status=503, count=None, method="POST", path_prefix="/v1/personen")
    ex = await service.run(wait=120)
    assert ex["status"] == "failed" and "unavailable" in ex["error"], ex
    assert ex["counts"]["failed"] < 40  # stopped early instead of failing every record
    feedback = await service.report(ex["id"])
    assert feedback["status"] == "failed" and "run aborted" in feedback["message"]


async def test_dry_run_plans_everything_and_writes_nothing(
    fake: Fake, service: Service, coursedb: CourseDB
) -> None:
    anna, remote = await _one_person(fake, coursedb)  # case 1 with a change
    course = coursedb.ids["252-40401"]
    emil = await coursedb.participant("Emil", "Ernst", dt.date(1999, 9, 9))
    reg = await coursedb.register(course, emil)
    stranger = fake.fake.seed_person(
        {
            "name": {"familienname": "Ypsilon", "vorname": "Yvonne"},
            "vertrauensstufe": "Voll",
            "auskunftssperre": "Nein",
        },
        [{"rolle": "Lern"}],
    )
    before = dict(fake.fake.persons[remote["id"]])
    ex = await service.run(dry_run=True)
    assert ex["dry_run"] and ex["status"] == "succeeded"
    items = await service.item_map(ex["id"])
    assert items[f"participant:{anna}"]["detail"]["planned"] == "update"
    assert items[f"participant:{emil}"]["detail"]["planned"] == "create"
    assert items[f"course:{course}"]["detail"]["planned"] == "create"
    assert items[f"registration:{reg}"]["detail"]["planned"] == "create"
    assert items[f"schulconnex:person:{stranger['id']}"]["action"] == "person.confirm-import"
    assert all(
        i["outcome"] in ("skipped", "unchanged") and i["detail"]["dry_run"] for i in items.values()
    )
    # Nothing written: no POST/PUT/DELETE reached Schulconnex, no links, no confirmations.
    writes = [
        k
        for k in fake.fake.counts
        if k.split(" ")[0] in ("POST", "PUT", "DELETE") and k != "POST /token"
    ]
    assert writes == [] and fake.fake.counts["GET /personen"] == 1
    assert fake.fake.persons[remote["id"]] == before and len(fake.fake.persons) == 2
    hub = service.runtime.extras["connectors"]
    assert await hub.links.find(system="schulconnex") == []
    assert await service.confirmations(status="all") == []
    assert (await service.report(ex["id"]))["summary"]["totals"]["planned"] >= 4


async def test_every_action_needs_the_permission(service: Service) -> None:
    no_scope = token(scopes=["something.else"])
    participant = token(roles=["participant"])
    calls = [
        ("POST", "/sync", {"dry_run": True}),
        ("GET", "/confirmations", None),
        ("POST", "/confirmations/bulk", {"decision": "reject"}),
        ("GET", "/runs", None),
        ("GET", "/selection", None),
        ("GET", "/tasks", None),
        ("POST", "/tasks/schulconnex-sync/run", {}),
        ("GET", "/connections", None),
        ("GET", "/sync-state/links", None),
    ]
    for method, path, body in calls:
        r = await service.client.request(method, path, json=body)
        assert r.status_code == 401, (path, r.status_code)
        for headers in (no_scope, participant):
            r = await service.client.request(method, path, json=body, headers=headers)
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
    assert (await service.client.get("/selection", headers=ALLOWED)).status_code == 200
    admin = token(roles=["admin"], scopes=[])  # admin holds every scope
    assert (await service.client.get("/runs", headers=admin)).status_code == 200


async def test_credentials_from_the_connection_store_never_show(
    fake: Fake,
    service_factory: ServiceFactory,
    coursedb: CourseDB,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # No SCHULCONNEX_* environment: the credentials live only in the encrypted store.
    service = await service_factory()
    course = await coursedb.course("252-40401", "Spanisch A1")
    await coursedb.register(course, await coursedb.participant("Anna", "Alt", dt.date(1990, 1, 1)))
    r = await service.client.post("/sync", headers=ALLOWED, json={})
    ex = await service.finished(r.json()["execution_id"])
    assert ex["status"] == "failed" and "no Schulconnex credentials" in ex["error"]

    admin = token(roles=["admin"])
    secret = fake.creds["client_secret"]
    r = await service.client.post(
        "/connections",
        headers=admin,
        json={
            "name": "land-bw",
            "kind": "schulconnex",
            "settings": {
                "base_url": fake.server.base_url,
                "token_url": fake.server.token_url,
                "client_id": fake.creds["client_id"],
                "client_secret": secret,
                "grant_type": "password",
                "username": fake.creds["username"],
                "password": fake.creds["password"],
            },
        },
    )
    assert r.status_code == 201, r.text
    shown = (await service.client.get("/connections/land-bw", headers=admin)).json()
    assert shown["secrets"] == {"client_secret": "set", "password": "set"}
    r = await service.client.post("/connections/land-bw/test", headers=admin)
    assert r.json()["ok"], r.text
    r = await service.client.post("/sync", headers=ALLOWED, json={"connection": "land-bw"})
    ex = await service.finished(r.json()["execution_id"])
    assert ex["status"] == "succeeded", ex
    assert (await service.report(ex["id"]))["tenant"] == "land-bw"
    links = (
        await service.client.get(
            "/sync-state/links", headers=ALLOWED, params={"system": "schulconnex"}
        )
    ).json()
    assert links and {link["tenant"] for link in links} == {"land-bw"}

    # Nowhere: not in logs, not in the database rows the API shows, not in items or feedback.
    everything = caplog.text
    for path in (
        "/connections",
        f"/runs/{ex['id']}",
        f"/tasks/executions/{ex['id']}/items",
        "/tasks/executions",
    ):
        everything += (await service.client.get(path, headers=admin)).text
    for value in (secret, fake.creds["password"]):
        assert value not in everything
    async with service.runtime.db.engine.connect() as conn:
        raw = await conn.exec_driver_sql("SELECT settings, secrets FROM mesh_connections")
        row = raw.one()
    assert secret not in str(row.settings) and secret not in str(row.secrets)
    assert isinstance(SecretStr(secret), SecretStr)


async def test_a_run_can_be_cancelled(fake: Fake, service: Service, coursedb: CourseDB) -> None:
    course = await coursedb.course("252-40401", "Spanisch A1")
    for i in range(40):
        pid = await coursedb.participant(
            f"P{i}", "Muster", dt.date(1990, 1, 1) + dt.timedelta(days=i)
        )
        await coursedb.register(course, pid)
    fake.fake.add_fault(delay=0.2, count=None, method="POST")  # a slow server
    r = await service.client.post("/sync", json={}, headers=ALLOWED)
    execution_id = r.json()["execution_id"]
    while len(fake.fake.persons) < 3:
        await asyncio.sleep(0.05)
    r = await service.client.post(f"/tasks/executions/{execution_id}/cancel", headers=ALLOWED)
    assert r.status_code == 202
    ex = await service.finished(execution_id)
    assert ex["status"] == "cancelled"
    assert len(fake.fake.persons) < 40  # it stopped between records
    feedback = await service.report(execution_id)
    assert feedback["status"] == "cancelled"
