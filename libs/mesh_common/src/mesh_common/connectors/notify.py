"""E-mail notifications per task: on success, failure and/or partial success, to its recipients.

Rules live in ``mesh_task_notifications`` (one per task; default for a task without a rule: no
mail). :class:`TaskNotifier` is the task runner's ``on_finish`` hook (pass it to
``task_hooks(..., on_finish=notifier)``): when an execution ends (or a reaper fails a crashed
one) it looks up the task's rule, renders a short plain-text mail (status, counts, the first
failed records with their errors, the link to the dashboard) and hands it to a *delivery*:
:func:`mail_delivery` queues it in the service's mail outbox (:mod:`mesh_common.mail`, sent with
retries by the service's ``MailSender``). Dry runs never notify. Delivery is best effort after
the execution is recorded: a failing delivery is logged and never changes the execution.

:func:`notification_router` lets admins set the rules (staff read them). This module must not
send mail itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import delete, insert, select, update

from mesh_common.auth import Principal, require
from mesh_common.connectors.tables import ConnectorTables
from mesh_common.db import Database
from mesh_common.errors import NotFound
from mesh_common.tasks import TaskTables

log = logging.getLogger("mesh.connectors.notify")

_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
STATUS_DE = {
    "succeeded": "erfolgreich",
    "partially_succeeded": "teilweise erfolgreich",
    "failed": "fehlgeschlagen",
    "cancelled": "abgebrochen",
}


@dataclass
class NotificationRule:
    task: str
    on_success: bool = False
    on_failure: bool = True
    on_partial: bool = True
    recipients: list[str] = field(default_factory=list)
    updated_at: float = 0.0
    updated_by: str = ""

    def wants(self, status: str) -> bool:
        if not self.recipients:
            return False
        return {
            "succeeded": self.on_success,
            "partially_succeeded": self.on_partial,
            "failed": self.on_failure,
        }.get(status, False)


class TaskNotifications:
    """The notification rules of one service's tasks."""

    def __init__(
        self, db: Database, tables: ConnectorTables, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.t = tables.notifications
        self.clock = clock

    @staticmethod
    def _rule(r: Any) -> NotificationRule:
        return NotificationRule(
            task=r.task,
            on_success=bool(r.on_success),
            on_failure=bool(r.on_failure),
            on_partial=bool(r.on_partial),
            recipients=list(r.recipients or []),
            updated_at=r.updated_at,
            updated_by=r.updated_by,
        )

    async def get(self, task: str) -> NotificationRule | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(self.t).where(self.t.c.task == task))).first()
        return self._rule(row) if row is not None else None

    async def all(self) -> list[NotificationRule]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(self.t).order_by(self.t.c.task))).all()
        return [self._rule(r) for r in rows]

    async def set(
        self,
        task: str,
        *,
        on_success: bool,
        on_failure: bool,
        on_partial: bool,
        recipients: Sequence[str],
        actor: str = "system",
    ) -> NotificationRule:
        values = {
            "on_success": on_success,
            "on_failure": on_failure,
            "on_partial": on_partial,
            "recipients": list(dict.fromkeys(recipients)),
            "updated_at": self.clock(),
            "updated_by": actor,
        }
        async with self.db.engine.begin() as conn:
            res = await conn.execute(update(self.t).where(self.t.c.task == task).values(**values))
            if res.rowcount == 0:
                await conn.execute(insert(self.t).values(task=task, **values))
        rule = await self.get(task)
        assert rule is not None
        return rule

    async def delete(self, task: str) -> None:
        async with self.db.engine.begin() as conn:
            res = await conn.execute(delete(self.t).where(self.t.c.task == task))
        if res.rowcount == 0:
            raise NotFound(f"no notification rule for task {task!r}", code="notification-not-found")


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%d.%m.%Y %H:%M:%S UTC")


def render_notification(
    execution: Mapping[str, Any],
    failed: Sequence[Mapping[str, Any]],
    *,
    service: str,
    dashboard_url: str | None = None,
) -> tuple[str, str]:
    """``(subject, plain text)`` of the mail about one finished execution."""
    status = str(execution["status"])
    counts = execution.get("counts") or {}
    label = STATUS_DE.get(status, status)
    subject = (
        f"[edumesh {service}] Aufgabe {execution['task']}: {label} "
        f"({counts.get('succeeded', 0)} ok, {counts.get('failed', 0)} Fehler)"
    )
    lines = [
        f"Die Aufgabe »{execution['task']}« des Dienstes {service} ist {label}.",
        "",
        f"Ausführung:     {execution['id']} ({execution.get('trigger', '')})",
        f"Gestartet:      {_when(execution.get('started_at'))}",
        f"Beendet:        {_when(execution.get('finished_at'))}",
        f"Datensätze:     {counts.get('processed', 0)} verarbeitet, "
        f"{counts.get('succeeded', 0)} erfolgreich, {counts.get('failed', 0)} fehlerhaft, "
        f"{counts.get('skipped', 0)} übersprungen, {counts.get('unchanged', 0)} unverändert",
    ]
    if execution.get("error"):
        lines += ["", f"Fehler: {execution['error']}"]
    if failed:
        lines += ["", "Fehlerhafte Datensätze (Auswahl):"]
        lines += [f"  - {i['record_key']} ({i['action']}): {i.get('error') or '-'}" for i in failed]
        more = int(counts.get("failed", 0)) - len(failed)
        if more > 0:
            lines.append(f"  ... und {more} weitere")
    if status in ("partially_succeeded", "failed") and counts.get("failed"):
        lines += [
            "",
            "Nur die fehlerhaften Datensätze erneut ausführen: im Dashboard »Retry failed«.",
        ]
    if dashboard_url:
        lines += ["", f"Dashboard: {dashboard_url}"]
    lines += ["", "-- ", "edumesh (automatische Benachrichtigung; Einstellungen: /notifications)"]
    return subject, "\n".join(lines) + "\n"


Deliver = Callable[[list[str], str, str, Mapping[str, Any]], Awaitable[None]]
"""``async def deliver(recipients, subject, text, execution)``: get the mail on its way."""


class TaskNotifier:
    """The ``on_finish`` hook of a :class:`~mesh_common.tasks.TaskRunner`."""

    def __init__(
        self,
        db: Database,
        tables: ConnectorTables,
        task_tables: TaskTables,
        deliver: Deliver,
        *,
        service: str,
        dashboard_url: str | None = None,
        max_listed: int = 20,
    ) -> None:
        self.db = db
        self.rules = TaskNotifications(db, tables)
        self.items = task_tables.items
        self.deliver = deliver
        self.service = service
        self.dashboard_url = dashboard_url
        self.max_listed = max_listed
        self.sent = 0

    async def __call__(self, execution: Mapping[str, Any]) -> None:
        if execution.get("dry_run"):
            return
        rule = await self.rules.get(str(execution["task"]))
        if rule is None or not rule.wants(str(execution["status"])):
            return
        async with self.db.engine.connect() as conn:
            failed = [
                dict(r._mapping)
                for r in (
                    await conn.execute(
                        select(self.items.c.record_key, self.items.c.action, self.items.c.error)
                        .where(
                            self.items.c.execution_id == execution["id"],
                            self.items.c.outcome == "failed",
                        )
                        .order_by(self.items.c.id)
                        .limit(self.max_listed)
                    )
                ).all()
            ]
        subject, text = render_notification(
            execution, failed, service=self.service, dashboard_url=self.dashboard_url
        )
        await self.deliver(list(rule.recipients), subject, text, execution)
        self.sent += 1
        log.info(
            "task notification queued",
            extra={"task": execution["task"], "status": execution["status"]},
        )


def mail_delivery(
    db: Database, mail_tables: Any, *, category: str = "task-notification"
) -> Deliver:
    """Deliver through the service's mail outbox (``mesh_common.mail``: queued in the service
    database, sent with retries by its MailSender)."""
    from mesh_common.mail import OutgoingMail, enqueue

    async def deliver(
        recipients: list[str], subject: str, text: str, execution: Mapping[str, Any]
    ) -> None:
        mail = OutgoingMail(
            to=recipients, subject=subject, text=text, category=category, ref=str(execution["id"])
        )
        async with db.engine.begin() as conn:
            await enqueue(conn, mail_tables, mail)

    return deliver


# --------------------------------------------------------------------------- REST


class RuleIn(BaseModel):
    on_success: bool = False
    on_failure: bool = True
    on_partial: bool = True
    recipients: list[str] = Field(min_length=1, max_length=50)

    @field_validator("recipients")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for v in values:
            if not _ADDRESS.match(v.strip()):
                raise ValueError(f"not an e-mail address: {v!r}")
        return [v.strip() for v in values]


class RuleOut(BaseModel):
    task: str
    on_success: bool
    on_failure: bool
    on_partial: bool
    recipients: list[str]
    updated_at: datetime
    updated_by: str

    @classmethod
    def of(cls, r: NotificationRule) -> RuleOut:
        return cls(
            task=r.task,
            on_success=r.on_success,
            on_failure=r.on_failure,
            on_partial=r.on_partial,
            recipients=r.recipients,
            updated_at=datetime.fromtimestamp(r.updated_at, UTC),
            updated_by=r.updated_by,
        )


def notification_router(
    get: Callable[[Request], TaskNotifications],
    *,
    prefix: str = "/notifications",
    known_tasks: Callable[[Request], Sequence[str]] | None = None,
    read_role: str = "staff",
    write_role: str = "admin",
) -> APIRouter:
    """``GET /notifications``, ``GET|PUT|DELETE /notifications/{task}``. ``known_tasks``
    refuses rules for tasks the service does not have (404)."""
    router = APIRouter(prefix=prefix, tags=["notifications"])
    Reader = Depends(require(read_role))
    Writer = Depends(require(write_role))

    def check(request: Request, task: str) -> None:
        if known_tasks is not None and task not in known_tasks(request):
            raise NotFound(f"no task named {task!r}", code="task-not-found")

    @router.get("", response_model=list[RuleOut], dependencies=[Reader])
    async def list_rules(request: Request) -> list[RuleOut]:
        return [RuleOut.of(r) for r in await get(request).all()]

    @router.get("/{task}", response_model=RuleOut, dependencies=[Reader])
    async def get_rule(task: str, request: Request) -> RuleOut:
        rule = await get(request).get(task)
        if rule is None:
            raise NotFound(f"no notification rule for task {task!r}", code="notification-not-found")
        return RuleOut.of(rule)

    @router.put("/{task}", response_model=RuleOut)
    async def put_rule(
        task: str, body: RuleIn, request: Request, principal: Principal = Writer
    ) -> RuleOut:
        """Mail ``recipients`` when an execution of ``task`` succeeds / fails / partly fails."""
        check(request, task)
        rule = await get(request).set(
            task,
            on_success=body.on_success,
            on_failure=body.on_failure,
            on_partial=body.on_partial,
            recipients=body.recipients,
            actor=principal.subject,
        )
        return RuleOut.of(rule)

    @router.delete("/{task}", status_code=204, dependencies=[Writer])
    async def delete_rule(task: str, request: Request) -> Response:
        await get(request).delete(task)
        return Response(status_code=204)

    return router
