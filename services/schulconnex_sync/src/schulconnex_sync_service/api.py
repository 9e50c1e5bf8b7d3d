"""HTTP API of schulconnex-sync. Every route needs the permission ``schulconnex.sync``.

The permission is the JWT scope ``schulconnex.sync`` on top of role ``staff`` (or ``service``
for a machine client); ``admin`` holds every scope. Binding it to roles or people happens where
tokens are issued (the identity provider), as the seed leaves it to the operator.

* ``POST /sync`` — step 1 (the button) with step 2 (the selection) in the body; ``dry_run``
  shows every planned action as the execution's items and writes nothing.
* ``GET /selection`` — what step 2 can choose from: semesters and their course counts.
* ``POST /schuljahrwechsel`` — the school-year change (``ablauf-schuljahrwechsel.md``): a dry
  run shows the plan (continued and ended groups, ``GET /runs/{id}``), a real run applies a
  reviewed plan (``plan``: that dry run's execution id).
* ``GET /runs``, ``GET /runs/{execution_id}`` — step 11: the feedback of a run (counts per
  entity, case and outcome; the per-record log is ``/tasks/executions/{id}/items``).
* ``/confirmations`` — pending decisions (cases 3, 4, 5; group and membership cases 2, 3;
  conflicts): list, accept or reject singly or in bulk; ``run=true`` starts a run that applies
  them at once.
* ``/tasks/...`` (task framework), ``/connections/...`` and ``/sync-state/...`` (connector
  framework) are mounted by the app under the same permission.

Thin: the logic lives in the stores and :mod:`schulconnex_sync_service.sync`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from coursedb import schema
from fastapi import APIRouter, Depends, Query, Request
from mesh_common.app import ServiceRuntime
from mesh_common.auth import Principal, require
from mesh_common.errors import Invalid, NotFound
from mesh_common.tasks import TaskRunner
from mesh_common.tasks.wiring import EXTRAS_KEY as RUNNER
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schulconnex_sync_service.confirmations import KINDS, STATUSES, ConfirmationStore
from schulconnex_sync_service.connection import ENV_TENANT
from schulconnex_sync_service.local import DEFAULT_STATUSES, Selection
from schulconnex_sync_service.models import runs as runs_table
from schulconnex_sync_service.schuljahr import ChangeOptions
from schulconnex_sync_service.tasks import CONFIRMATIONS, TASK

SCOPE = "schulconnex.sync"
#: The permission "Synchronisation mit Schulconnex-Service" (seed: bound to roles).
permission = require("staff", "service", scopes=[SCOPE])
Allowed = Annotated[Principal, Depends(permission)]

router = APIRouter(tags=["schulconnex"], dependencies=[Depends(permission)])


def _runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


def _runner(request: Request) -> TaskRunner:
    runner: TaskRunner = _runtime(request).extras[RUNNER]
    return runner


def _store(request: Request) -> ConfirmationStore:
    store: ConfirmationStore = _runtime(request).extras[CONFIRMATIONS]
    return store


def _ts(value: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(value, dt.UTC) if value is not None else None


# --------------------------------------------------------------------------- steps 1 and 2


class SyncRequest(BaseModel):
    """Step 2: which groups (courses) to synchronise, and with them their persons."""

    courses: list[Annotated[str, Field(min_length=1, max_length=20)]] = Field(
        default_factory=list, description="course numbers; empty: by semester / status"
    )
    semester: str | None = Field(default=None, description="semester code, e.g. '252'")
    statuses: list[str] = Field(default_factory=lambda: list(DEFAULT_STATUSES))
    participants: bool = Field(default=True, description="the courses' participants (Lern)")
    lecturers: bool = Field(default=True, description="the courses' lecturers (Lehr)")
    connection: str | None = Field(
        default=None, description="a stored connection; default: the SCHULCONNEX_* environment"
    )
    dry_run: bool = Field(default=False, description="only show the planned actions")


class Accepted(BaseModel):
    execution_id: str


def _params(body: SyncRequest, actor: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        **Selection.from_params(body.model_dump()).as_dict(),
        "requested_by": actor,
    }
    if body.connection:
        params["connection"] = body.connection
    return params


@router.post("/sync", status_code=202, response_model=Accepted, summary="Start a sync (steps 1-11)")
async def start_sync(body: SyncRequest, request: Request, principal: Allowed) -> Accepted:
    execution_id = await _runner(request).run_now(
        TASK, params=_params(body, principal.subject), dry_run=body.dry_run
    )
    return Accepted(execution_id=execution_id)


class ChangeRequest(ChangeOptions):
    """The school-year change: the options of the guide's dialog, and the plan confirmed."""

    connection: str | None = Field(
        default=None, description="a stored connection; default: the SCHULCONNEX_* environment"
    )
    dry_run: bool = Field(default=True, description="show the plan only (the default)")
    plan: str | None = Field(
        default=None,
        description="execution id of the dry run whose plan was reviewed (needed unless dry_run)",
    )


async def _check_change(engine: AsyncEngine, body: ChangeRequest) -> None:
    """Unknown semesters or course numbers are the caller's mistake: 400 before any run."""
    s, c = schema.semesters, schema.courses
    async with engine.connect() as conn:
        sems = {
            r.code: r.id
            for r in await conn.execute(
                select(s.c.code, s.c.id).where(s.c.code.in_([body.from_semester, body.to_semester]))
            )
        }
        missing = [x for x in (body.from_semester, body.to_semester) if x not in sems]
        if missing:
            raise Invalid(f"unknown semester(s): {', '.join(missing)}", code="invalid-selection")
        numbers = set(body.continuations) | set(body.delete_after)
        wanted = {n for n in body.continuations.values() if n is not None}
        found = {
            r.number: r.semester_id
            for r in await conn.execute(
                select(c.c.number, c.c.semester_id).where(c.c.number.in_(numbers | wanted))
            )
        }
    wrong = sorted(n for n in numbers if found.get(n) != sems[body.from_semester])
    wrong += sorted(n for n in wanted if found.get(n) != sems[body.to_semester])
    if wrong:
        raise Invalid(
            f"not courses of {body.from_semester} (keys) or {body.to_semester} (values): "
            + ", ".join(wrong[:20]),
            code="invalid-continuation",
        )


@router.post(
    "/schuljahrwechsel",
    status_code=202,
    response_model=Accepted,
    summary="School-year change: plan (dry run) or apply a reviewed plan",
)
async def start_change(body: ChangeRequest, request: Request, principal: Allowed) -> Accepted:
    if not body.dry_run and not body.plan:
        raise Invalid(
            "review the plan first: run with dry_run=true, then pass that execution id as 'plan'",
            code="plan-required",
        )
    await _check_change(_runtime(request).extras["coursedb"], body)
    params: dict[str, Any] = {
        "mode": "schuljahrwechsel",
        "change": body.model_dump(exclude={"connection", "dry_run", "plan"}),
        "requested_by": principal.subject,
    }
    if body.plan:
        params["plan"] = body.plan
    if body.connection:
        params["connection"] = body.connection
    execution_id = await _runner(request).run_now(TASK, params=params, dry_run=body.dry_run)
    return Accepted(execution_id=execution_id)


class SemesterOut(BaseModel):
    code: str
    name: str
    starts_on: dt.date
    ends_on: dt.date
    courses: dict[str, int] = Field(description="course count per status")


@router.get("/selection", response_model=list[SemesterOut], summary="What step 2 can select")
async def selection(request: Request) -> list[SemesterOut]:
    engine: AsyncEngine = _runtime(request).extras["coursedb"]
    s, c = schema.semesters, schema.courses
    async with engine.connect() as conn:
        sems = (await conn.execute(select(s).order_by(s.c.starts_on.desc()))).all()
        counts = (
            await conn.execute(
                select(c.c.semester_id, c.c.status, func.count()).group_by(
                    c.c.semester_id, c.c.status
                )
            )
        ).all()
    per: dict[int, dict[str, int]] = {}
    for sem_id, status, n in counts:
        per.setdefault(sem_id, {})[status] = int(n)
    return [
        SemesterOut(
            code=r.code,
            name=r.name,
            starts_on=r.starts_on,
            ends_on=r.ends_on,
            courses=per.get(r.id, {}),
        )
        for r in sems
    ]


# --------------------------------------------------------------------------- step 11


class RunOut(BaseModel):
    execution_id: str
    tenant: str
    dry_run: bool
    status: str
    execution_status: str | None = None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    selection: dict[str, Any]
    summary: dict[str, Any]
    message: str | None
    items: str = Field(description="the per-record log")


def _run_out(row: Any, execution: dict[str, Any] | None) -> RunOut:
    return RunOut(
        execution_id=row.execution_id,
        tenant=row.tenant,
        dry_run=row.dry_run,
        status=row.status,
        execution_status=execution["status"] if execution else None,
        started_at=_ts(row.started_at) or dt.datetime.now(dt.UTC),
        finished_at=_ts(row.finished_at),
        selection=row.selection or {},
        summary=row.summary or {},
        message=row.message,
        items=f"/tasks/executions/{row.execution_id}/items",
    )


@router.get("/runs", response_model=list[RunOut], summary="Feedback of the latest runs")
async def list_runs(
    request: Request,
    limit: int = Query(20, ge=1, le=200),
    offset: int = Query(0, ge=0),
) -> list[RunOut]:
    db = _runtime(request).db
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(runs_table)
                .order_by(runs_table.c.started_at.desc())
                .limit(limit)
                .offset(offset)
            )
        ).all()
    return [_run_out(r, None) for r in rows]


@router.get("/runs/{execution_id}", response_model=RunOut, summary="Feedback of one run")
async def get_run(execution_id: str, request: Request) -> RunOut:
    db = _runtime(request).db
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(select(runs_table).where(runs_table.c.execution_id == execution_id))
        ).first()
    execution = await _runner(request).get_execution(execution_id)  # NotFound if unknown
    if row is None:
        raise NotFound(
            f"execution {execution_id!r} has no sync feedback (it failed before starting: "
            f"{execution.get('error')})",
            code="run-not-found",
        )
    return _run_out(row, execution)


# --------------------------------------------------------------------------- confirmations


class Candidate(BaseModel):
    local_key: str
    label: str
    in_selection: bool | None = None


class ConfirmationOut(BaseModel):
    id: str
    kind: str
    entity: str
    case: int
    tenant: str
    status: str
    remote_id: str | None
    local_key: str | None
    candidates: list[Candidate]
    remote: dict[str, Any]
    reason: str
    choice: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    decided_at: dt.datetime | None
    decided_by: str | None
    error: str | None

    @classmethod
    def of(cls, r: dict[str, Any]) -> ConfirmationOut:
        return cls(
            id=r["id"],
            kind=r["kind"],
            entity=r["entity"],
            case=r["case_no"],
            tenant=r["tenant"],
            status=r["status"],
            remote_id=r["remote_id"],
            local_key=r["local_key"],
            candidates=[Candidate(**c) for c in r["candidates"] or []],
            remote=r["remote"] or {},
            reason=r["reason"],
            choice=r["choice"],
            created_at=_ts(r["created_at"]) or dt.datetime.now(dt.UTC),
            updated_at=_ts(r["updated_at"]) or dt.datetime.now(dt.UTC),
            decided_at=_ts(r["decided_at"]),
            decided_by=r["decided_by"],
            error=r["error"],
        )


class ConfirmationPage(BaseModel):
    items: list[ConfirmationOut]
    total: int


Status = Literal["pending", "accepted", "rejected", "applied", "obsolete"]
Kind = Literal[
    "person-match", "person-import", "group-import", "membership-import", "conflict", "delete"
]
assert set(Status.__args__) == set(STATUSES) and set(Kind.__args__) == set(KINDS)  # type: ignore[attr-defined]


@router.get("/confirmations", response_model=ConfirmationPage, summary="Decisions to take")
async def list_confirmations(
    request: Request,
    status: Status | Literal["all"] = Query("pending", description="'all' for every status"),
    kind: Kind | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> ConfirmationPage:
    rows, total = await _store(request).find(
        status=None if status == "all" else status, kind=kind, limit=limit, offset=offset
    )
    return ConfirmationPage(items=[ConfirmationOut.of(r) for r in rows], total=total)


@router.get("/confirmations/{confirmation_id}", response_model=ConfirmationOut)
async def get_confirmation(confirmation_id: str, request: Request) -> ConfirmationOut:
    return ConfirmationOut.of(await _store(request).get(confirmation_id))


class DecisionIn(BaseModel):
    choice: str | None = Field(
        default=None, description="person-match: which candidate (local key) it is"
    )


class DecidedOut(BaseModel):
    decided: list[ConfirmationOut]
    execution_id: str | None = Field(default=None, description="the run started by run=true")


async def _maybe_run(request: Request, run: bool, actor: str) -> str | None:
    """Start a run that applies the decisions, with the selection and connection of the
    latest real run (a decision is about the records that run saw)."""
    if not run:
        return None
    params: dict[str, Any] = {}
    async with _runtime(request).db.engine.connect() as conn:
        last = (
            await conn.execute(
                select(runs_table.c.selection, runs_table.c.tenant)
                .where(runs_table.c.dry_run.is_(False))
                .order_by(runs_table.c.started_at.desc())
                .limit(1)
            )
        ).first()
    if last is not None:
        params.update(last.selection or {})
        if last.tenant != ENV_TENANT:
            params["connection"] = last.tenant
    params["requested_by"] = actor
    return await _runner(request).run_now(TASK, params=params)


@router.post("/confirmations/{confirmation_id}/accept", response_model=DecidedOut)
async def accept(
    confirmation_id: str,
    request: Request,
    principal: Allowed,
    body: DecisionIn | None = None,
    run: bool = False,
) -> DecidedOut:
    rows = await _store(request).decide(
        {confirmation_id: (True, body.choice if body else None)}, actor=principal.subject
    )
    return DecidedOut(
        decided=[ConfirmationOut.of(r) for r in rows],
        execution_id=await _maybe_run(request, run, principal.subject),
    )


@router.post("/confirmations/{confirmation_id}/reject", response_model=DecidedOut)
async def reject(
    confirmation_id: str, request: Request, principal: Allowed, run: bool = False
) -> DecidedOut:
    rows = await _store(request).decide({confirmation_id: (False, None)}, actor=principal.subject)
    return DecidedOut(
        decided=[ConfirmationOut.of(r) for r in rows],
        execution_id=await _maybe_run(request, run, principal.subject),
    )


class BulkDecision(BaseModel):
    id: str
    decision: Literal["accept", "reject"]
    choice: str | None = None


class BulkIn(BaseModel):
    """Either explicit ``decisions``, or one ``decision`` for every pending confirmation
    (optionally of one ``kind``)."""

    decisions: list[BulkDecision] = Field(default_factory=list, max_length=10_000)
    decision: Literal["accept", "reject"] | None = None
    kind: Kind | None = None


@router.post("/confirmations/bulk", response_model=DecidedOut, summary="Decide many at once")
async def bulk(body: BulkIn, request: Request, principal: Allowed, run: bool = False) -> DecidedOut:
    store = _store(request)
    if body.decisions and body.decision:
        raise Invalid("give either 'decisions' or 'decision', not both", code="bulk-ambiguous")
    if body.decisions:
        wanted = {d.id: (d.decision == "accept", d.choice) for d in body.decisions}
    elif body.decision:
        ids = await store.pending_ids(kind=body.kind)
        wanted = {i: (body.decision == "accept", None) for i in ids}
        if not wanted:
            raise Invalid("there is nothing pending to decide", code="nothing-to-decide")
    else:
        raise Invalid("give 'decisions' or 'decision'", code="nothing-to-decide")
    rows = await store.decide(wanted, actor=principal.subject)
    return DecidedOut(
        decided=[ConfirmationOut.of(r) for r in rows],
        execution_id=await _maybe_run(request, run, principal.subject),
    )
