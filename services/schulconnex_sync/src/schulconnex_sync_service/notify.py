"""Seed step 11 "Rückmeldung" by mail: the feedback of a finished run to configured recipients.

Opt-in per connection and for the environment: a stored connection has ``notify_recipients``
and ``notify_on`` (which final statuses are worth a mail); runs without a connection use
``SYNC_NOTIFY_RECIPIENTS`` / ``SYNC_NOTIFY_ON``. No recipients: no mail. Dry runs never mail
(their feedback is the plan on ``GET /runs/{id}``).

:class:`SyncNotifier` is the task runner's ``on_finish`` hook. It reads the run's feedback
(``sc_runs.summary``: counts per entity, case and outcome, totals) and the first failed records
of the execution, renders a plain-text mail and hands it to the connector framework's
:func:`~mesh_common.connectors.mail_delivery`, which queues it in the service's mail outbox
(``mesh_common.mail``: sent with bounded retries by the service's ``MailSender``; failures show
on ``GET /mail/outbox?status=failed``). The mail names records by their keys only
(``participant:12``), never by personal data; errors are the item errors (status lines such as
``HTTP 409/00 ...``). Delivery is best effort after the execution is recorded: a failing hook is
logged by the runner and never changes the execution.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mesh_common.connectors import Connectors
from mesh_common.connectors.notify import Deliver
from mesh_common.db import Database
from mesh_common.tasks import TaskTables
from sqlalchemy import select

from schulconnex_sync_service.connection import ENV_TENANT, KIND
from schulconnex_sync_service.models import runs as runs_table

log = logging.getLogger("schulconnex.notify")

STATUS_DE = {
    "succeeded": "erfolgreich",
    "partially_succeeded": "teilweise erfolgreich",
    "failed": "fehlgeschlagen",
    "cancelled": "abgebrochen",
}
ENTITY_DE = {"persons": "Personen", "groups": "Gruppen", "memberships": "Gruppenzugehörigkeiten"}
TOTALS_DE = (
    ("created", "angelegt"),
    ("updated", "aktualisiert"),
    ("linked", "verknüpft"),
    ("deleted", "gelöscht"),
    ("imported", "importiert"),
    ("unchanged", "unverändert"),
    ("confirmations_pending", "Bestätigungen offen"),
    ("deletions_pending", "davon Löschungen"),
    ("failed", "fehlerhaft"),
)

Rule = tuple[list[str], list[str]]  # (recipients, statuses worth a mail)


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%d.%m.%Y %H:%M:%S UTC")


def render(
    execution: Mapping[str, Any],
    run: Mapping[str, Any] | None,
    failed: Sequence[Mapping[str, Any]],
    *,
    service: str,
    dashboard_url: str | None = None,
) -> tuple[str, str]:
    """``(subject, plain text)`` of the feedback mail of one finished run."""
    status = str(execution["status"])
    label = STATUS_DE.get(status, status)
    summary: Mapping[str, Any] = (run or {}).get("summary") or {}
    totals: Mapping[str, Any] = summary.get("totals") or {}
    mode = (execution.get("params") or {}).get("mode") or "sync"
    what = "Schuljahreswechsel" if mode == "schuljahrwechsel" else "Synchronisation"
    subject = (
        f"[edumesh {service}] Schulconnex-{what}: {label} "
        f"({totals.get('created', 0)} angelegt, {totals.get('updated', 0)} aktualisiert, "
        f"{totals.get('deleted', 0)} gelöscht, {totals.get('failed', 0)} Fehler)"
    )
    lines = [
        f"Die Schulconnex-{what} ist {label}.",
        "",
        f"Ausführung:     {execution['id']} ({execution.get('trigger', '')})",
        f"Verbindung:     {(run or {}).get('tenant') or ENV_TENANT}",
        f"Gestartet:      {_when(execution.get('started_at'))}",
        f"Beendet:        {_when(execution.get('finished_at'))}",
    ]
    if execution.get("error"):
        lines += ["", f"Fehler: {execution['error']}"]
    if run is not None and run.get("message") and run.get("message") != execution.get("error"):
        lines += [f"Meldung: {run['message']}"]
    if totals:
        lines += ["", "Ergebnis:"]
        lines += [f"  {de:<22} {totals.get(key, 0)}" for key, de in TOTALS_DE if key in totals]
    cases: Mapping[str, Mapping[str, Mapping[str, int]]] = summary.get("cases") or {}
    for entity, table in cases.items():
        if not table:
            continue
        lines += ["", f"{ENTITY_DE.get(entity, entity)} (Fall: Ergebnis):"]
        for case, outcomes in table.items():
            per = ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items()))
            lines.append(f"  {case:<10} {per}")
    counts: Mapping[str, Any] = execution.get("counts") or {}
    if failed:
        lines += ["", "Fehlerhafte Datensätze (Auswahl):"]
        lines += [f"  - {i['record_key']} ({i['action']}): {i.get('error') or '-'}" for i in failed]
        more = int(counts.get("failed", 0)) - len(failed)
        if more > 0:
            lines.append(f"  ... und {more} weitere")
        lines += [
            "",
            "Nur die fehlerhaften Datensätze erneut ausführen: POST "
            f"/tasks/executions/{execution['id']}/retry",
        ]
    if totals.get("confirmations_pending"):
        lines += ["", "Offene Bestätigungen: GET /confirmations"]
    lines += ["", f"Rückmeldung im Detail: GET /runs/{execution['id']}"]
    if dashboard_url:
        lines.append(f"Dashboard: {dashboard_url}")
    lines += ["", "-- ", "edumesh schulconnex-sync (automatische Benachrichtigung)"]
    return subject, "\n".join(lines) + "\n"


class SyncNotifier:
    """The ``on_finish`` hook: mail a run's feedback to the recipients its configuration names.

    ``rule_for(params)`` returns ``(recipients, statuses)`` for a run's parameters (the
    connection's settings, or the environment's)."""

    def __init__(
        self,
        db: Database,
        task_tables: TaskTables,
        deliver: Deliver,
        rule_for: Callable[[Mapping[str, Any]], Awaitable[Rule]],
        *,
        task: str,
        service: str,
        dashboard_url: str | None = None,
        max_listed: int = 20,
    ) -> None:
        self.db = db
        self.items = task_tables.items
        self.deliver = deliver
        self.rule_for = rule_for
        self.task = task
        self.service = service
        self.dashboard_url = dashboard_url
        self.max_listed = max_listed
        self.sent = 0

    async def __call__(self, execution: Mapping[str, Any]) -> None:
        if execution.get("task") != self.task or execution.get("dry_run"):
            return
        recipients, statuses = await self.rule_for(execution.get("params") or {})
        if not recipients or str(execution["status"]) not in statuses:
            return
        async with self.db.engine.connect() as conn:
            run = (
                await conn.execute(
                    select(runs_table).where(runs_table.c.execution_id == execution["id"])
                )
            ).first()
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
        subject, text = render(
            execution,
            dict(run._mapping) if run is not None else None,
            failed,
            service=self.service,
            dashboard_url=self.dashboard_url,
        )
        await self.deliver(list(recipients), subject, text, execution)
        self.sent += 1
        log.info(
            "schulconnex run feedback queued",
            extra={"execution_id": execution["id"], "status": execution["status"]},
        )


def rule_lookup(
    connectors: Callable[[], Connectors], env_rule: Rule
) -> Callable[[Mapping[str, Any]], Awaitable[Rule]]:
    """Recipients from the run's connection (``notify_recipients``, ``notify_on``), else from the
    environment (``SYNC_NOTIFY_RECIPIENTS``, ``SYNC_NOTIFY_ON``)."""

    async def rule_for(params: Mapping[str, Any]) -> Rule:
        name = params.get("connection")
        if not name:
            return env_rule
        stored = await connectors().connections.resolve(str(name), kind=KIND)
        return list(stored.notify_recipients), list(stored.notify_on)

    return rule_for


__all__ = ["Deliver", "SyncNotifier", "render", "rule_lookup"]
