"""Sync markers, the link table and dry-run diffs on SQLite and PostgreSQL, a dry run through the
real task runner, and the read-only REST endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from mesh_common.connectors import (
    MarkerUpdate,
    content_hash,
    diff_records,
    report_dry_run,
)
from mesh_common.errors import Conflict
from mesh_common.tasks import TaskContext, TaskRegistry, TaskRunner
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from .connectors_support import Backend, api_fixture, auth, backend_fixture  # noqa: F401


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_markers_keep_the_last_success_through_failures(backend: Backend) -> None:
    markers = backend.hub.markers
    clock = Clock()
    markers.clock = clock
    await markers.mark("brevo", "contact", "17", "ok", content_hash="h1", execution_id="e1")
    clock.now = 2_000.0
    await markers.mark("brevo", "contact", "17", "failed", remark="Invalid email address")
    m = await markers.get("brevo", "contact", "17")
    assert m is not None
    assert (m.status, m.remark, m.last_sync_at) == ("failed", "Invalid email address", 2_000.0)
    assert (m.last_success_at, m.content_hash) == (1_000.0, "h1")  # kept
    assert await markers.hashes("brevo", "contact") == {"17": "h1"}
    clock.now = 3_000.0
    await markers.mark("brevo", "contact", "17", "ok", content_hash="h2")
    m = await markers.get("brevo", "contact", "17")
    assert m is not None
    assert (m.status, m.remark, m.last_success_at, m.content_hash) == ("ok", None, 3_000.0, "h2")
    # Tenants are separate: the same record in another tenant has its own marker.
    await markers.mark("abacus", "person", "17", "ok", tenant="vhs-nord", content_hash="x")
    assert await markers.get("abacus", "person", "17") is None
    assert (await markers.get("abacus", "person", "17", tenant="vhs-nord")) is not None


async def test_mark_many_filters_and_counts(backend: Backend) -> None:
    markers = backend.hub.markers
    updates = [MarkerUpdate(str(i), "ok", content_hash=f"h{i}") for i in range(600)]
    updates += [MarkerUpdate("bad1", "failed", "no email"), MarkerUpdate("s1", "skipped", "shared")]
    await markers.mark_many("brevo", "contact", updates, execution_id="run-1")
    failed = await markers.find(system="brevo", status="failed")
    assert [(m.local_key, m.remark, m.execution_id) for m in failed] == [
        ("bad1", "no email", "run-1")
    ]
    counts = {r["status"]: r["count"] for r in await markers.counts(system="brevo")}
    assert counts == {"ok": 600, "failed": 1, "skipped": 1}
    assert len(await markers.hashes("brevo", "contact")) == 600
    with pytest.raises(Exception, match="marker status"):
        await markers.mark("brevo", "contact", "1", "weird")  # type: ignore[arg-type]


async def test_marks_join_the_callers_transaction(backend: Backend) -> None:
    markers = backend.hub.markers
    with pytest.raises(RuntimeError):
        async with backend.db.engine.begin() as conn:
            await markers.mark("brevo", "contact", "9", "ok", content_hash="h", conn=conn)
            raise RuntimeError("the import failed after marking")
    assert await markers.get("brevo", "contact", "9") is None  # rolled back with it


async def test_links_across_systems_and_tenants(backend: Backend) -> None:
    links = backend.hub.links
    await links.link("brevo", "contact", "17", "4711")
    await links.link("abacus", "person", "17", "P-88", tenant="vhs-nord")
    await links.link("abacus", "person", "17", "P-12", tenant="vhs-sued")
    assert await links.lookup("brevo", "contact", "17") == "4711"
    assert await links.local_for("brevo", "contact", "4711") == "17"
    assert await links.local_for("abacus", "person", "P-88", tenant="vhs-sued") is None
    assert await links.local_for("abacus", "person", "P-88", tenant="vhs-nord") == "17"
    everything = await links.external_for("person", "17")
    assert [(x.tenant, x.external_key) for x in everything] == [
        ("vhs-nord", "P-88"),
        ("vhs-sued", "P-12"),
    ]
    # Re-link: the contact was recreated in Brevo under a new id.
    await links.link("brevo", "contact", "17", "4800")
    assert await links.lookup("brevo", "contact", "17") == "4800"
    assert await links.local_for("brevo", "contact", "4711") is None
    # One external key never belongs to two local records.
    with pytest.raises(Conflict) as err:
        await links.link("brevo", "contact", "18", "4800")
    assert err.value.code == "link-conflict"
    assert await links.mapping("brevo", "contact") == {"17": "4800"}
    assert await links.unlink("brevo", "contact", "17")
    assert await links.lookup("brevo", "contact", "17") is None


async def test_link_uniqueness_is_enforced_by_the_database(backend: Backend) -> None:
    t = backend.tables.links
    row = {
        "system": "brevo",
        "tenant": "",
        "entity": "contact",
        "created_at": 1.0,
        "updated_at": 1.0,
    }
    async with backend.db.engine.begin() as conn:
        await conn.execute(insert(t).values(**row, local_key="1", external_key="A"))
    for dup in ({"local_key": "2", "external_key": "A"}, {"local_key": "1", "external_key": "B"}):
        with pytest.raises(IntegrityError):
            async with backend.db.engine.begin() as conn:
                await conn.execute(insert(t).values(**row, **dup))


async def test_concurrent_links_of_one_external_key_leave_one_owner(backend: Backend) -> None:
    links = backend.hub.links
    results = await asyncio.gather(
        *(links.link("brevo", "contact", str(i), "4711") for i in range(5)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))
    assert len(await links.find(system="brevo")) == 1


def test_diff_against_current_records_is_field_level() -> None:
    desired = {
        "1": {"email": "a@x.de", "attributes": {"FIRSTNAME": "Anna", "ORT": "Freiburg"}},
        "2": {"email": "b@x.de", "attributes": {"FIRSTNAME": "Ben"}},
        "3": {"email": "c@x.de", "attributes": {}},
    }
    current = {
        "1": {"email": "a@x.de", "attributes": {"FIRSTNAME": "Anna", "ORT": "Basel"}},
        "2": {"email": "b@x.de", "attributes": {"FIRSTNAME": "Ben"}, "modifiedAt": "today"},
        "9": {"email": "gone@x.de"},
    }
    diff = diff_records(desired, current=current, delete_missing=True, ignore=["modifiedAt"])
    assert diff.counts() == {"create": 1, "update": 1, "unchanged": 1, "delete": 1}
    (update,) = diff.updates
    assert update.key == "1"
    assert {p: (c.old, c.new) for p, c in update.fields.items()} == {
        "attributes.ORT": ("Basel", "Freiburg")
    }
    assert update.detail(redact=True) == {
        "action": "update",
        "changes": {"attributes.ORT": "changed"},
    }
    assert diff.creates[0].detail(redact=True)["changes"] == {
        "email": "added",
        "attributes": "added",
    }
    assert diff.creates[0].key == "3" and "email" in diff.creates[0].fields
    assert diff.deletes[0].key == "9" and diff.deletes[0].record is None
    assert [c.key for c in diff.pending()] == ["1", "3", "9"]
    assert not diff_records(desired, current=current).deletes  # only when asked


def test_diff_against_marker_hashes() -> None:
    desired = {"1": {"n": 1}, "2": {"n": 2}, "3": {"n": 3}}
    hashes = {"1": content_hash({"n": 1}), "2": content_hash({"n": 20}), "4": "old"}
    diff = diff_records(desired, hashes=hashes, delete_missing=True)
    assert {c.key: c.action for c in diff.changes} == {
        "1": "unchanged",
        "2": "update",
        "3": "create",
        "4": "delete",
    }
    assert diff.changes[1].hash == content_hash({"n": 2})
    # Key order and int/str normalisation as JSON renders them.
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": "1"})
    with pytest.raises(ValueError):
        diff_records(desired)


async def test_dry_run_reports_the_diff_as_items_and_writes_nothing(backend: Backend) -> None:
    registry = TaskRegistry()
    remote: dict[str, dict[str, Any]] = {"1": {"name": "Anna"}, "2": {"name": "Ben"}}
    writes: list[str] = []

    @registry.task("push")
    async def push(ctx: TaskContext) -> None:
        desired = {"1": {"name": "Anna"}, "2": {"name": "Benedikt"}, "3": {"name": "Cem"}}
        diff = diff_records(desired, current=remote)
        if ctx.dry_run:
            await report_dry_run(ctx, diff)
            return
        for change in diff.pending():
            writes.append(change.key)
            await ctx.item(change.key, change.action, "ok")

    runner = TaskRunner(backend.db, registry, backend.tasks, tick_seconds=0.05)
    await runner.start()
    try:
        done = await runner.wait(await runner.run_now("push", dry_run=True))
        items = await runner.list_items(done["id"])
    finally:
        await runner.stop()
    assert writes == []
    assert done["status"] == "succeeded" and done["dry_run"] is True
    assert done["counts"] == {
        "processed": 3,
        "succeeded": 0,
        "failed": 0,
        "skipped": 2,
        "unchanged": 1,
    }
    by_key = {i["record_key"]: i for i in items}
    assert by_key["2"]["action"] == "update" and by_key["2"]["outcome"] == "skipped"
    assert by_key["2"]["detail"] == {
        "dry_run": True,
        "action": "update",
        "changes": {"name": {"old": "Ben", "new": "Benedikt"}},
    }
    assert by_key["3"]["detail"]["changes"] == {"name": {"old": None, "new": "Cem"}}
    assert by_key["1"]["outcome"] == "unchanged"


async def test_rest_views_of_markers_and_links(backend: Backend, api: httpx.AsyncClient) -> None:
    await backend.hub.markers.mark("brevo", "contact", "1", "ok", content_hash="h")
    await backend.hub.markers.mark("brevo", "contact", "2", "failed", remark="Invalid email")
    await backend.hub.links.link("brevo", "contact", "1", "4711")
    assert (await api.get("/sync/markers")).status_code == 401
    failed = await api.get("/sync/markers", params={"status": "failed"}, headers=auth("staff"))
    assert failed.status_code == 200
    assert [(m["local_key"], m["remark"]) for m in failed.json()] == [("2", "Invalid email")]
    bad = await api.get("/sync/markers", params={"status": "weird"}, headers=auth("staff"))
    assert bad.status_code == 422
    summary = (await api.get("/sync/markers/summary", headers=auth("staff"))).json()
    assert {(r["status"], r["count"]) for r in summary} == {("ok", 1), ("failed", 1)}
    links = await api.get("/sync/links", params={"external_key": "4711"}, headers=auth("staff"))
    assert [(x["system"], x["local_key"]) for x in links.json()] == [("brevo", "1")]
