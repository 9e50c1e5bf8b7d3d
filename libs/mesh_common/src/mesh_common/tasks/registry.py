"""Task declarations: schedules, the registry decorator and the context a run receives.

A service declares its tasks with ``@registry.task("name", schedule=Interval(60))``; the decorator
returns the function unchanged, so a task is a plain ``async def run(ctx)`` that unit tests call
with a hand-made :class:`TaskContext`. This module must not touch the database itself: the
context writes items through the ``sink`` the runner gives it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from croniter import croniter

Outcome = Literal["ok", "failed", "skipped", "unchanged"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "failed", "skipped", "unchanged")


@dataclass(frozen=True)
class Interval:
    """Run every ``seconds`` (missed due times while down are coalesced into one run)."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("Interval seconds must be positive")

    @property
    def type(self) -> str:
        return "interval"

    @property
    def value(self) -> str:
        return repr(float(self.seconds))

    def next_after(self, due: float, now: float) -> float:
        """The first due time strictly after ``now`` on the grid of ``due``."""
        if due > now:
            return due
        steps = int((now - due) // self.seconds) + 1
        return due + steps * self.seconds


@dataclass(frozen=True)
class Cron:
    """Run on a cron expression, evaluated in UTC (``"0 3 * * *"``: daily at 03:00 UTC)."""

    expression: str

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.expression):
            raise ValueError(f"invalid cron expression: {self.expression!r}")

    @property
    def type(self) -> str:
        return "cron"

    @property
    def value(self) -> str:
        return self.expression

    def next_after(self, due: float, now: float) -> float:
        start = datetime.fromtimestamp(max(due, now), UTC)
        return float(croniter(self.expression, start).get_next(float))


Schedule = Interval | Cron


def first_due(schedule: Schedule, now: float) -> float:
    """When a newly registered task first runs: after one interval, or at the next cron time."""
    if isinstance(schedule, Interval):
        return now + schedule.seconds
    return schedule.next_after(now, now)


class TaskCancelled(Exception):
    """Raised by :meth:`TaskContext.check_cancelled` once a cancel was requested."""


class ItemSink(Protocol):
    async def __call__(self, rows: list[dict[str, Any]], counts: dict[str, int]) -> None: ...


def empty_counts() -> dict[str, int]:
    return {"processed": 0, "succeeded": 0, "failed": 0, "skipped": 0, "unchanged": 0}


_COUNT_OF: dict[str, str] = {
    "ok": "succeeded",
    "failed": "failed",
    "skipped": "skipped",
    "unchanged": "unchanged",
}


@dataclass
class TaskContext:
    """What one run of a task sees: its parameters, flags, the item log and cancellation.

    ``only_keys`` is None for an ordinary run; on a "retry failed only" run it is the set of
    record keys that failed in the parent execution, and the task must touch only those.
    """

    task: str
    execution_id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    only_keys: frozenset[str] | None = None
    sink: ItemSink | None = None
    batch_size: int = 200
    counts: dict[str, int] = field(default_factory=empty_counts)
    _buffer: list[dict[str, Any]] = field(default_factory=list)
    _cancelled: bool = False

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested (on any replica); the task should stop soon."""
        return self._cancelled

    def request_cancel(self) -> None:
        self._cancelled = True

    def check_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if a cancel was requested (a convenient stopping point)."""
        if self._cancelled:
            raise TaskCancelled(self.execution_id)

    def wanted(self, key: str) -> bool:
        """Whether this run should process ``key`` (always, except on retry-failed runs)."""
        return self.only_keys is None or key in self.only_keys

    async def item(
        self,
        key: str,
        action: str,
        outcome: Outcome,
        error: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the outcome for one record. Written in batches of ``batch_size``."""
        if outcome not in _COUNT_OF:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        self.counts["processed"] += 1
        self.counts[_COUNT_OF[outcome]] += 1
        self._buffer.append(
            {
                "execution_id": self.execution_id,
                "record_key": str(key),
                "action": action,
                "outcome": outcome,
                "error": error,
                "detail": dict(detail) if detail is not None else None,
                "created_at": time.time(),
            }
        )
        if len(self._buffer) >= self.batch_size:
            await self.flush()

    async def flush(self) -> None:
        """Write buffered items (and the running counts) now."""
        rows, self._buffer = self._buffer, []
        if self.sink is not None and rows:
            await self.sink(rows, dict(self.counts))


TaskFn = Callable[[TaskContext], Awaitable[None]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fn: TaskFn
    schedule: Schedule | None
    kind: str
    params: Mapping[str, Any]
    description: str


class TaskRegistry:
    """The tasks of one service, declared with :meth:`task`."""

    def __init__(self) -> None:
        self.specs: dict[str, TaskSpec] = {}

    def task(
        self,
        name: str,
        *,
        schedule: Schedule | None = None,
        kind: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Callable[[TaskFn], TaskFn]:
        """Register ``async def run(ctx)`` as task ``name``; returns the function unchanged.

        ``schedule`` None means manual only (run now / retry). ``kind`` groups tasks for the
        dashboard (default: the name); ``params`` are the defaults a run's params override.
        """

        def decorator(fn: TaskFn) -> TaskFn:
            if name in self.specs:
                raise ValueError(f"task {name!r} is already registered")
            self.specs[name] = TaskSpec(
                name=name,
                fn=fn,
                schedule=schedule,
                kind=kind or name,
                params=dict(params or {}),
                description=(fn.__doc__ or "").strip().split("\n")[0],
            )
            return fn

        return decorator

    def get(self, name: str) -> TaskSpec | None:
        return self.specs.get(name)


def derive_status(counts: Mapping[str, int]) -> str:
    """Status of a run that returned normally: failed when every recorded item failed, partially
    succeeded when some did, succeeded otherwise (no items at all is a success)."""
    failed = counts.get("failed", 0)
    if failed == 0:
        return "succeeded"
    if failed >= counts.get("processed", 0):
        return "failed"
    return "partially_succeeded"
