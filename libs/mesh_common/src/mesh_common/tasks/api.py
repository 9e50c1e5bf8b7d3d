"""HTTP API of a service's tasks, for staff: list, pause, run now, executions, items, retry, cancel.

``task_router()`` is mounted by a service next to its own routers. The endpoints are thin: they
call the service's :class:`TaskRunner` (found by ``get_runner``; by default
``app.state.task_runner`` or the runner ``task_hooks`` keeps in the runtime), which raises
domain errors mapped to problem+json at the edge. This module must not hold business logic or
touch the database directly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from mesh_common.auth import require
from mesh_common.tasks.runner import TaskRunner

Status = Literal["running", "succeeded", "partially_succeeded", "failed", "cancelled"]
OutcomeFilter = Literal["ok", "failed", "skipped", "unchanged"]


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


class ScheduleOut(BaseModel):
    type: Literal["interval", "cron"]
    value: str


class TaskOut(BaseModel):
    name: str
    kind: str
    description: str
    schedule: ScheduleOut | None
    enabled: bool
    params: dict[str, Any]
    next_run_at: datetime | None
    last_run_at: datetime | None
    running: bool

    @classmethod
    def of(cls, row: dict[str, Any]) -> TaskOut:
        schedule = (
            ScheduleOut(type=row["schedule_type"], value=row["schedule_value"])
            if row["schedule_type"]
            else None
        )
        return cls(
            name=row["name"],
            kind=row["kind"],
            description=row["description"],
            schedule=schedule,
            enabled=row["enabled"],
            params=row["params"] or {},
            next_run_at=_ts(row["next_run_at"]),
            last_run_at=_ts(row["last_run_at"]),
            running=row["running"],
        )


class Counts(BaseModel):
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    unchanged: int = 0


class ExecutionOut(BaseModel):
    id: str
    task: str
    status: Status
    trigger: Literal["manual", "schedule", "retry"]
    dry_run: bool
    params: dict[str, Any]
    scheduled_for: datetime | None
    started_at: datetime
    finished_at: datetime | None
    counts: Counts
    error: str | None
    parent_id: str | None
    cancel_requested: bool

    @classmethod
    def of(cls, row: dict[str, Any]) -> ExecutionOut:
        return cls(
            id=row["id"],
            task=row["task"],
            status=row["status"],
            trigger=row["trigger"],
            dry_run=row["dry_run"],
            params=row["params"] or {},
            scheduled_for=_ts(row["scheduled_for"]),
            started_at=_ts(row["started_at"]) or datetime.now(UTC),
            finished_at=_ts(row["finished_at"]),
            counts=Counts(**(row["counts"] or {})),
            error=row["error"],
            parent_id=row["parent_id"],
            cancel_requested=row["cancel_requested"],
        )


class ItemOut(BaseModel):
    record_key: str
    action: str
    outcome: OutcomeFilter
    error: str | None
    detail: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> ItemOut:
        return cls(
            record_key=row["record_key"],
            action=row["action"],
            outcome=row["outcome"],
            error=row["error"],
            detail=row["detail"],
            created_at=_ts(row["created_at"]) or datetime.now(UTC),
        )


class RunRequest(BaseModel):
    params: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = False


class TaskUpdate(BaseModel):
    enabled: bool


class RetryRequest(BaseModel):
    dry_run: bool = False


class Accepted(BaseModel):
    execution_id: str


def _default_runner(request: Request) -> TaskRunner:
    """``app.state.task_runner``, else the one ``task_hooks`` keeps in the service runtime."""
    runner = getattr(request.app.state, "task_runner", None)
    if runner is None:
        runtime = getattr(request.app.state, "runtime", None)
        runner = getattr(runtime, "extras", {}).get("task_runner")
    if not isinstance(runner, TaskRunner):
        raise RuntimeError("no TaskRunner: add task_hooks(...) to the service's startup hooks")
    return runner


def task_router(
    *,
    prefix: str = "/tasks",
    get_runner: Callable[[Request], TaskRunner] = _default_runner,
    role: str = "staff",
) -> APIRouter:
    """The tasks API of one service, guarded by ``require(role)`` (admin implies staff)."""
    router = APIRouter(prefix=prefix, tags=["tasks"], dependencies=[Depends(require(role))])

    @router.get("", response_model=list[TaskOut])
    async def list_tasks(request: Request) -> list[TaskOut]:
        return [TaskOut.of(r) for r in await get_runner(request).list_tasks()]

    @router.patch("/{name}", response_model=TaskOut)
    async def update_task(name: str, body: TaskUpdate, request: Request) -> TaskOut:
        """Pause or resume the schedule of a task (manual runs stay possible)."""
        runner = get_runner(request)
        await runner.set_enabled(name, body.enabled)
        return next(TaskOut.of(r) for r in await runner.list_tasks() if r["name"] == name)

    @router.post("/{name}/run", status_code=202, response_model=Accepted)
    async def run_now(name: str, body: RunRequest, request: Request) -> Accepted:
        execution_id = await get_runner(request).run_now(
            name, params=body.params, dry_run=body.dry_run
        )
        return Accepted(execution_id=execution_id)

    @router.get("/executions", response_model=list[ExecutionOut])
    async def list_executions(
        request: Request,
        task: str | None = None,
        status: Status | None = None,
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
    ) -> list[ExecutionOut]:
        rows = await get_runner(request).list_executions(
            task=task, status=status, limit=limit, offset=offset
        )
        return [ExecutionOut.of(r) for r in rows]

    @router.get("/executions/{execution_id}", response_model=ExecutionOut)
    async def get_execution(execution_id: str, request: Request) -> ExecutionOut:
        return ExecutionOut.of(await get_runner(request).get_execution(execution_id))

    @router.get("/executions/{execution_id}/items", response_model=list[ItemOut])
    async def list_items(
        execution_id: str,
        request: Request,
        outcome: OutcomeFilter | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> list[ItemOut]:
        rows = await get_runner(request).list_items(
            execution_id, outcome=outcome, limit=limit, offset=offset
        )
        return [ItemOut.of(r) for r in rows]

    @router.post("/executions/{execution_id}/retry", status_code=202, response_model=Accepted)
    async def retry_failed(
        execution_id: str, request: Request, body: RetryRequest | None = None
    ) -> Accepted:
        new_id = await get_runner(request).retry_failed(
            execution_id, dry_run=body.dry_run if body else False
        )
        return Accepted(execution_id=new_id)

    @router.post("/executions/{execution_id}/cancel", status_code=202, response_model=Accepted)
    async def cancel(execution_id: str, request: Request) -> Accepted:
        await get_runner(request).cancel(execution_id)
        return Accepted(execution_id=execution_id)

    return router
