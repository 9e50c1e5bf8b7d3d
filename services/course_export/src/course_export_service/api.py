"""HTTP API of course-export: SQL template maintenance (admin) and scheduled exports (staff).

Thin: calls the service layer. The task endpoints (run now, executions, items, retry) come from
the shared ``mesh_common.tasks.task_router``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from mesh_common.app import ServiceRuntime
from mesh_common.auth import Principal, require
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from course_export_service import template_service
from course_export_service.scheduling import (
    Dispatcher,
    Mode,
    ScheduledExport,
    ScheduledExports,
    Status,
)
from course_export_service.tasks import DISPATCHER, SCHEDULER
from course_export_service.template_service import TemplateVersion
from course_export_service.templates import VARIABLES, TemplateKind

router = APIRouter(prefix="/templates", tags=["sql templates"])
Admin = Annotated[Principal, Depends(require("admin"))]


class TemplateIn(BaseModel):
    sql: Annotated[str, Field(min_length=1, max_length=20_000)]
    comment: Annotated[str | None, Field(max_length=500)] = None


class PreviewOut(BaseModel):
    ok: bool
    errors: list[str]
    columns: list[str]
    rows: list[dict[str, Any]]
    sql_diff: str
    columns_added: list[str]
    columns_removed: list[str]


def _runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


def _coursedb(request: Request) -> AsyncEngine:
    engine: AsyncEngine = _runtime(request).extras["coursedb"]
    return engine


@router.get("", summary="Active template of every kind, and the variables templates may use")
async def list_active(request: Request, _: Admin) -> dict[str, Any]:
    async with _runtime(request).db.unit_of_work() as session:
        active = [(await template_service.active(session, kind=k)) for k in TemplateKind]
    return {"templates": active, "variables": VARIABLES}


@router.get("/{kind}/versions", summary="Every stored version of one template, newest first")
async def list_versions(request: Request, kind: TemplateKind, _: Admin) -> list[TemplateVersion]:
    async with _runtime(request).db.unit_of_work() as session:
        return [(v) for v in await template_service.versions(session, kind=kind)]


@router.post("/{kind}/preview", summary="Validate a proposal, show its first rows and the diff")
async def preview(request: Request, kind: TemplateKind, body: TemplateIn, _: Admin) -> PreviewOut:
    async with _runtime(request).db.unit_of_work() as session:
        p = await template_service.preview(session, _coursedb(request), kind=kind, sql=body.sql)
    return PreviewOut(
        ok=p.report.ok,
        errors=p.report.errors,
        columns=p.report.columns,
        rows=p.report.rows,
        sql_diff=p.sql_diff,
        columns_added=p.columns_added,
        columns_removed=p.columns_removed,
    )


@router.post(
    "/{kind}",
    status_code=201,
    summary="Store a new version and activate it (422 and no change if it is invalid)",
)
async def propose(
    request: Request, kind: TemplateKind, body: TemplateIn, principal: Admin
) -> TemplateVersion:
    async with _runtime(request).db.unit_of_work() as session:
        v = await template_service.propose(
            session,
            _coursedb(request),
            kind=kind,
            sql=body.sql,
            author=principal.subject,
            comment=body.comment,
            now=dt.datetime.now(dt.UTC),
        )
    return v


@router.post("/{kind}/versions/{version}/activate", summary="Roll back or forward to a version")
async def activate(request: Request, kind: TemplateKind, version: int, _: Admin) -> TemplateVersion:
    async with _runtime(request).db.unit_of_work() as session:
        return await template_service.activate(
            session, _coursedb(request), kind=kind, version=version
        )


# ---------------------------------------------------------------------- scheduled exports (staff)

scheduled_router = APIRouter(prefix="/scheduled-exports", tags=["scheduled exports"])
Staff = Annotated[Principal, Depends(require("staff"))]


class ScheduleIn(BaseModel):
    mode: Mode = "full"
    run_at: Annotated[
        AwareDatetime,
        Field(description="When to export, with a UTC offset; a time in the past runs at once"),
    ]
    note: Annotated[str | None, Field(max_length=500)] = None


def _scheduler(request: Request) -> tuple[ScheduledExports, Dispatcher | None]:
    extras = _runtime(request).extras
    return extras[SCHEDULER], extras.get(DISPATCHER)


@scheduled_router.post(
    "", status_code=201, summary="Schedule an export for a given time (publish at)"
)
async def schedule_export(request: Request, body: ScheduleIn, principal: Staff) -> ScheduledExport:
    store, dispatcher = _scheduler(request)
    now = dt.datetime.now(dt.UTC)
    item = await store.schedule(
        mode=body.mode,
        run_at=body.run_at,
        requested_by=principal.subject,
        note=body.note,
        source="rest",
        now=now,
    )
    if dispatcher is not None and item.run_at <= now:
        dispatcher.wake()
    return item


@scheduled_router.get("", summary="Scheduled exports, latest run_at first")
async def list_scheduled(
    request: Request,
    _: Staff,
    status: Annotated[Status | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[ScheduledExport]:
    store, _d = _scheduler(request)
    return await store.find(status=status, limit=limit, offset=offset)


@scheduled_router.get("/{export_id}", summary="One scheduled export and what became of it")
async def get_scheduled(request: Request, export_id: str, _: Staff) -> ScheduledExport:
    store, _d = _scheduler(request)
    return await store.get(export_id)


@scheduled_router.delete(
    "/{export_id}", summary="Cancel a scheduled export that has not fired (409 otherwise)"
)
async def cancel_scheduled(request: Request, export_id: str, principal: Staff) -> ScheduledExport:
    store, _d = _scheduler(request)
    return await store.cancel(export_id, by=principal.subject, now=dt.datetime.now(dt.UTC))
