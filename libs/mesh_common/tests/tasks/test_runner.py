"""TaskRunner on real databases (SQLite and PostgreSQL): statuses, item log, retry of failed
records, replica exclusion, schedules, cancel, crashes and dry runs."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from mesh_common.errors import Conflict, NotFound
from mesh_common.tasks import Cron, Interval, TaskContext, TaskRegistry
from sqlalchemy import insert, select

from .conftest import Env


async def test_partial_success_and_item_log(env: Env, registry: TaskRegistry) -> None:
    @registry.task("sync")
    async def sync(ctx: TaskContext) -> None:
        await ctx.item("a", "create", "ok")
        await ctx.item("b", "update", "failed", error="remote said 422", detail={"field": "x"})
        await ctx.item("c", "update", "ok")
        await ctx.item("d", "update", "skipped")
        await ctx.item("e", "update", "unchanged")

    runner = await env.runner(registry, item_batch_size=2)
    done = await runner.wait(await runner.run_now("sync"))
    assert done["status"] == "partially_succeeded"
    assert done["trigger"] == "manual"
    assert done["counts"] == {
        "processed": 5,
        "succeeded": 2,
        "failed": 1,
        "skipped": 1,
        "unchanged": 1,
    }
    items = await runner.list_items(done["id"])
    assert [(i["record_key"], i["outcome"]) for i in items] == [
        ("a", "ok"),
        ("b", "failed"),
        ("c", "ok"),
        ("d", "skipped"),
        ("e", "unchanged"),
    ]
    failed = await runner.list_items(done["id"], outcome="failed")
    assert len(failed) == 1
    assert failed[0]["error"] == "remote said 422"
    assert failed[0]["detail"] == {"field": "x"}


async def test_all_ok_succeeds_and_all_failed_fails(env: Env, registry: TaskRegistry) -> None:
    @registry.task("good")
    async def good(ctx: TaskContext) -> None:
        await ctx.item("a", "create", "ok")
        await ctx.item("b", "create", "unchanged")

    @registry.task("bad")
    async def bad(ctx: TaskContext) -> None:
        await ctx.item("a", "create", "failed", error="nope")

    runner = await env.runner(registry)
    assert (await runner.wait(await runner.run_now("good")))["status"] == "succeeded"
    failed = await runner.wait(await runner.run_now("bad"))
    assert failed["status"] == "failed"
    assert failed["error"] == "all 1 record(s) failed"


async def test_retry_failed_runs_only_failed_keys(env: Env, registry: TaskRegistry) -> None:
    seen: list[frozenset[str] | None] = []
    touched: list[list[str]] = []
    flaky = {"b", "d"}

    @registry.task("export")
    async def export(ctx: TaskContext) -> None:
        seen.append(ctx.only_keys)
        keys = [k for k in "abcde" if ctx.wanted(k)]
        touched.append(keys)
        for key in keys:
            if key in flaky:
                await ctx.item(key, "update", "failed", error="timeout")
            else:
                await ctx.item(key, "update", "ok")

    runner = await env.runner(registry)
    first = await runner.wait(await runner.run_now("export", params={"since": "2026-01-01"}))
    assert first["status"] == "partially_succeeded"
    flaky.clear()  # the remote recovered
    retry = await runner.wait(await runner.retry_failed(first["id"]))
    assert retry["status"] == "succeeded"
    assert retry["trigger"] == "retry"
    assert retry["parent_id"] == first["id"]
    assert retry["params"] == {"since": "2026-01-01"}
    assert seen == [None, frozenset({"b", "d"})]
    assert touched[1] == ["b", "d"]
    assert {i["record_key"] for i in await runner.list_items(retry["id"])} == {"b", "d"}
    with pytest.raises(Conflict):  # nothing failed there
        await runner.retry_failed(retry["id"])


async def test_dry_run_and_params_reach_the_task(env: Env, registry: TaskRegistry) -> None:
    got: dict[str, Any] = {}

    @registry.task("preview", params={"limit": 10, "mode": "full"})
    async def preview(ctx: TaskContext) -> None:
        got.update(dry_run=ctx.dry_run, params=dict(ctx.params))

    runner = await env.runner(registry)
    done = await runner.wait(
        await runner.run_now("preview", params={"mode": "delta"}, dry_run=True)
    )
    assert got == {"dry_run": True, "params": {"limit": 10, "mode": "delta"}}
    assert done["dry_run"] is True


async def test_unknown_task_and_busy_task(env: Env, registry: TaskRegistry) -> None:
    release = asyncio.Event()

    @registry.task("slow")
    async def slow(ctx: TaskContext) -> None:
        await release.wait()

    a = await env.runner(registry)
    b = await env.runner(registry)
    with pytest.raises(NotFound):
        await a.run_now("missing")
    first = await a.run_now("slow")
    with pytest.raises(Conflict):  # the other replica sees the lease
        await b.run_now("slow")
    release.set()
    await a.wait(first)
    await a.wait(await b.run_now("slow"))  # free again once finished


async def test_two_replicas_never_run_one_task_concurrently(
    env: Env, registry: TaskRegistry
) -> None:
    spans: list[tuple[float, float]] = []

    @registry.task("sync", schedule=Interval(0.01))
    async def sync(ctx: TaskContext) -> None:
        start = time.monotonic()
        await asyncio.sleep(0.03)
        spans.append((start, time.monotonic()))

    runners = [await env.runner(registry, tick_seconds=0.005) for _ in range(2)]

    async def hammer(runner: Any) -> None:
        # Manual runs race the schedulers of both replicas.
        for _ in range(15):
            try:
                await runner.run_now("sync")
            except Conflict:
                pass
            await asyncio.sleep(0.01)

    await asyncio.gather(*(hammer(r) for r in runners))
    for r in runners:
        await r.stop()
    spans.sort()
    overlaps = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end)
    assert len(spans) >= 3
    assert overlaps == 0
    rows = await runners[0].list_executions(task="sync", limit=500)
    # A run that stop() cancelled before it began has a row but no span.
    assert len(spans) <= len(rows) <= len(spans) + len(runners)
    statuses = [r["status"] for r in rows]
    # stop() asks a run still in flight to cancel (at most one per replica being stopped).
    assert set(statuses) <= {"succeeded", "cancelled"}
    assert statuses.count("cancelled") <= len(runners)


async def test_control_without_the_lease_runs_overlap(env: Env, registry: TaskRegistry) -> None:
    """The same two-replica workload with the lease switched off: runs do overlap, so the
    exclusion test above measures the lease and not a lucky timing."""
    spans: list[tuple[float, float]] = []

    @registry.task("sync")
    async def sync(ctx: TaskContext) -> None:
        start = time.monotonic()
        await asyncio.sleep(0.05)
        spans.append((start, time.monotonic()))

    async def always(task: str, holder: str) -> bool:
        return True

    runners = [await env.runner(registry) for _ in range(2)]
    for r in runners:
        r._acquire = always
    ids = await asyncio.gather(*(r.run_now("sync") for r in runners))
    for r, execution_id in zip(runners, ids, strict=True):
        await r.wait(execution_id)
    spans.sort()
    assert len(spans) == 2
    assert spans[1][0] < spans[0][1]  # overlapped


async def test_schedule_fires_once_per_due_time(env: Env, registry: TaskRegistry) -> None:
    @registry.task("tick", schedule=Interval(0.05))
    async def tick(ctx: TaskContext) -> None:
        await ctx.item("k", "noop", "ok")

    runners = [await env.runner(registry, tick_seconds=0.005) for _ in range(3)]
    await asyncio.sleep(0.5)
    for r in runners:
        await r.stop()
    rows = await runners[0].list_executions(task="tick", limit=500)
    due_times = [r["scheduled_for"] for r in rows]
    assert all(r["trigger"] == "schedule" for r in rows)
    assert len(due_times) == len(set(due_times))  # no due time fired twice
    assert len(due_times) >= 3
    # Due times sit on the interval grid, one execution per grid point at most.
    gaps = [b - a for a, b in itertools.pairwise(sorted(due_times))]
    assert min(gaps) > 0.049
    assert {r["holder"] for r in rows} <= {r.runner_id for r in runners}


async def test_cancel_from_another_replica(env: Env, registry: TaskRegistry) -> None:
    progressed = asyncio.Event()

    @registry.task("long")
    async def long(ctx: TaskContext) -> None:
        n = 0
        while True:
            ctx.check_cancelled()
            await ctx.item(str(n), "copy", "ok")
            n += 1
            progressed.set()
            await asyncio.sleep(0.01)

    a = await env.runner(registry)
    b = await env.runner(registry)
    execution_id = await a.run_now("long")
    await progressed.wait()
    await b.cancel(execution_id)
    done = await a.wait(execution_id, within=5)
    assert done["status"] == "cancelled"
    assert done["cancel_requested"] is True
    assert done["counts"]["processed"] >= 1
    with pytest.raises(Conflict):
        await b.cancel(execution_id)


async def test_crashing_task_is_recorded_and_scheduler_keeps_going(
    env: Env, registry: TaskRegistry
) -> None:
    good_runs = 0

    @registry.task("boom", schedule=Interval(0.03))
    async def boom(ctx: TaskContext) -> None:
        await ctx.item("x", "create", "ok")
        raise RuntimeError("disk on fire")

    @registry.task("fine", schedule=Interval(0.03))
    async def fine(ctx: TaskContext) -> None:
        nonlocal good_runs
        good_runs += 1

    runner = await env.runner(registry, tick_seconds=0.01)
    await asyncio.sleep(0.3)
    await runner.stop()
    rows = await runner.list_executions(task="boom", limit=100)
    # stop() may catch one run before it began (cancelled); every other one crashed.
    crashed = [r for r in rows if r["status"] == "failed"]
    assert len(crashed) >= 2  # fired again after crashing
    assert len(rows) - len(crashed) <= 1
    assert {r["error"] for r in crashed} == {"RuntimeError: disk on fire"}
    assert {r["counts"]["processed"] for r in crashed} == {1}  # items before the crash kept
    assert good_runs >= 2


async def test_stale_running_execution_is_failed_after_lease_expiry(
    env: Env, registry: TaskRegistry
) -> None:
    @registry.task("sync")
    async def sync(ctx: TaskContext) -> None:
        await ctx.item("a", "create", "ok")

    runner = await env.runner(registry, start=False)
    await runner.sync_definitions()
    t = env.tables
    now = time.time()
    # What a replica that died mid-run leaves behind: a running execution and its lease, expired.
    async with runner.db.engine.begin() as conn:
        await conn.execute(
            insert(t.executions).values(
                id="dead1",
                task="sync",
                status="running",
                trigger="manual",
                dry_run=False,
                params={},
                holder="crashed-pod",
                started_at=now - 60,
                counts={},
                cancel_requested=False,
            )
        )
        await conn.execute(insert(t.leases).values(task="sync", holder="dead1", expires_at=now - 1))
    with pytest.raises(Conflict):  # still "running" until reaped, but the lease is free
        await runner.retry_failed("dead1")
    assert await runner.reap_stale() == 1
    dead = await runner.get_execution("dead1")
    assert dead["status"] == "failed"
    assert "lease expired" in dead["error"]
    assert (await runner.wait(await runner.run_now("sync")))["status"] == "succeeded"


async def test_live_lease_protects_running_execution_from_reaper(
    env: Env, registry: TaskRegistry
) -> None:
    release = asyncio.Event()

    @registry.task("slow")
    async def slow(ctx: TaskContext) -> None:
        await release.wait()

    # A lease long enough that renewal keeps up on a loaded CI machine, short enough that the
    # wait below outlasts it several times over: only renewal keeps the execution alive.
    a = await env.runner(registry, lease_seconds=1.0)
    b = await env.runner(registry)
    execution_id = await a.run_now("slow")
    await asyncio.sleep(2.5)
    assert await b.reap_stale() == 0
    release.set()
    assert (await a.wait(execution_id))["status"] == "succeeded"
    async with a.db.engine.connect() as conn:
        leases = (await conn.execute(select(env.tables.leases))).all()
    assert leases == []  # released at the end


async def test_frozen_replica_run_is_failed_and_task_moves_on(
    env: Env, registry: TaskRegistry
) -> None:
    release = asyncio.Event()

    @registry.task("sync")
    async def sync(ctx: TaskContext) -> None:
        await release.wait()

    a = await env.runner(registry, lease_seconds=0.2)
    b = await env.runner(registry, lease_seconds=0.2)
    first = await a.run_now("sync")
    # A's scheduler stops renewing (a hung or killed pod) while its run is still "running".
    a._stopping.set()
    assert a._loop_task is not None
    await a._loop_task
    stale = await b.wait(first, within=3)  # b's reaper marks it once the lease expired
    assert stale["status"] == "failed"
    second = await b.run_now("sync")
    release.set()
    assert (await b.wait(second))["status"] == "succeeded"
    # The zombie finishing later must not overwrite the verdict.
    assert (await a.wait(first))["status"] == "failed"


async def test_disabled_task_does_not_fire_and_schedule_change_resets_due(
    env: Env, registry: TaskRegistry
) -> None:
    runs = 0

    @registry.task("tick", schedule=Interval(0.02))
    async def tick(ctx: TaskContext) -> None:
        nonlocal runs
        runs += 1

    runner = await env.runner(registry, start=False)
    await runner.sync_definitions()
    await runner.set_enabled("tick", False)
    await runner.start()
    await asyncio.sleep(0.15)
    assert runs == 0
    await runner.stop()

    nightly = TaskRegistry()
    nightly.task("tick", schedule=Cron("0 3 * * *"))(tick)
    other = await env.runner(nightly, start=False)
    await other.sync_definitions()
    row = next(t for t in await other.list_tasks() if t["name"] == "tick")
    assert (row["schedule_type"], row["schedule_value"]) == ("cron", "0 3 * * *")
    assert row["next_run_at"] > time.time() + 60  # re-planned on the new schedule
    assert row["enabled"] is False  # an operator's pause survives a redeploy


async def test_purge_deletes_old_executions_and_items_but_keeps_each_tasks_latest(
    env: Env, registry: TaskRegistry
) -> None:
    now = [1_000_000.0]

    @registry.task("a")
    async def a(ctx: TaskContext) -> None:
        await ctx.item("k", "update", "ok")

    @registry.task("b")
    async def b(ctx: TaskContext) -> None:
        await ctx.item("k", "update", "failed", error="x")

    # No automatic purge while the test arranges its history (retention None).
    runner = await env.runner(registry, clock=lambda: now[0], retention_seconds=None)
    old = [await runner.wait(await runner.run_now("a")) for _ in range(3)]
    only_b = await runner.wait(await runner.run_now("b"))
    now[0] += 100 * 86400  # everything above is now 100 days old
    fresh = await runner.wait(await runner.run_now("a"))

    assert await runner.purge(older_than=90 * 86400, batch=2) == 3  # batches of 2 and 1
    left = {e["id"] for e in await runner.list_executions()}
    # a: the three old ones go (a newer one exists); b: its only (latest) run stays.
    assert left == {fresh["id"], only_b["id"]}
    async with runner.db.engine.connect() as conn:
        item_owners = set((await conn.execute(select(env.tables.items.c.execution_id))).scalars())
    assert item_owners == {fresh["id"], only_b["id"]}
    assert not item_owners & {e["id"] for e in old}
    # Nothing younger than the window goes, and a second purge has nothing left to do.
    assert await runner.purge(older_than=90 * 86400) == 0
    assert await runner.purge(older_than=0) == 0  # both survivors are their task's latest


async def test_purge_runs_from_the_scheduler_tick_and_spares_running_executions(
    env: Env, registry: TaskRegistry
) -> None:
    now = [2_000_000.0]
    release = asyncio.Event()

    @registry.task("slow")
    async def slow(ctx: TaskContext) -> None:
        await release.wait()

    @registry.task("quick")
    async def quick(ctx: TaskContext) -> None:
        await ctx.item("k", "update", "ok")

    runner = await env.runner(
        registry, clock=lambda: now[0], retention_seconds=3600, purge_every_seconds=0
    )
    first = await runner.wait(await runner.run_now("quick"))
    running = await runner.run_now("slow")
    now[0] += 7200
    second = await runner.wait(await runner.run_now("quick"))

    async def gone() -> bool:
        ids = {e["id"] for e in await runner.list_executions()}
        return first["id"] not in ids

    deadline = time.monotonic() + 10
    while not await gone():
        assert time.monotonic() < deadline, "the tick never purged the old execution"
        await asyncio.sleep(0.05)
    ids = {e["id"] for e in await runner.list_executions()}
    assert {second["id"], running} <= ids  # the running one is older than the window too
    release.set()
    assert (await runner.wait(running))["status"] == "succeeded"
