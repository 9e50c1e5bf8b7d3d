"""Unit tests without IO: schedules, status derivation, the registry and the context."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mesh_common.tasks import Cron, Interval, TaskCancelled, TaskContext, TaskRegistry
from mesh_common.tasks.registry import derive_status


@pytest.mark.parametrize(
    ("counts", "status"),
    [
        ({"processed": 0, "failed": 0}, "succeeded"),
        ({"processed": 3, "failed": 0, "skipped": 1}, "succeeded"),
        ({"processed": 3, "failed": 1}, "partially_succeeded"),
        ({"processed": 2, "failed": 2}, "failed"),
    ],
)
def test_derive_status(counts: dict[str, int], status: str) -> None:
    assert derive_status(counts) == status


def test_interval_coalesces_missed_due_times() -> None:
    every = Interval(10)
    assert every.next_after(100.0, 95.0) == 100.0
    assert every.next_after(100.0, 100.0) == 110.0
    assert every.next_after(100.0, 135.0) == 140.0  # three missed: one run, then back on grid
    with pytest.raises(ValueError):
        Interval(0)


def test_cron_is_utc() -> None:
    nightly = Cron("0 3 * * *")
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
    assert nightly.next_after(now, now) == datetime(2026, 11, 24, 3, 0, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError):
        Cron("not a cron")


def test_registry_returns_function_unchanged_and_rejects_duplicates() -> None:
    reg = TaskRegistry()

    async def run(ctx: TaskContext) -> None:
        """Export courses."""

    assert reg.task("export", schedule=Interval(60))(run) is run
    spec = reg.get("export")
    assert spec is not None and spec.description == "Export courses."
    with pytest.raises(ValueError):
        reg.task("export")(run)


async def test_context_counts_cancel_and_wanted() -> None:
    ctx = TaskContext(task="t", execution_id="e", only_keys=frozenset({"a"}))
    await ctx.item("a", "create", "ok")
    await ctx.item("b", "create", "failed", error="x")
    assert ctx.counts["processed"] == 2 and ctx.counts["failed"] == 1
    assert ctx.wanted("a") and not ctx.wanted("b")
    with pytest.raises(ValueError):
        await ctx.item("c", "create", "weird")  # type: ignore[arg-type]
    ctx.check_cancelled()
    ctx.request_cancel()
    assert ctx.cancelled
    with pytest.raises(TaskCancelled):
        ctx.check_cancelled()
