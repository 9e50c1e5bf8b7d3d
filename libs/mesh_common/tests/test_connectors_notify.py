"""Task notifications: per-task rules, the runner's on_finish hook (also for crashed executions
reaped by another replica), rendering, and real delivery through the mail outbox and MailSender
to an SMTP server (aiosmtpd). SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mesh_common.connectors import (
    TaskNotifier,
    mail_delivery,
    notification_router,
    render_notification,
)
from mesh_common.connectors.api import get_connectors
from mesh_common.mail import MailSender, MailSettings, create_mail_tables, mail_tables
from mesh_common.tasks import TaskContext, TaskRegistry, TaskRunner
from mesh_common.testing.smtp import SmtpCapture
from sqlalchemy import insert

from .connectors_support import Backend, auth, backend_fixture, make_app  # noqa: F401


@pytest.fixture
def smtp() -> Iterator[SmtpCapture]:
    server = SmtpCapture().start()
    yield server
    server.stop()


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[list[str], str, str]] = []

    async def __call__(
        self, recipients: list[str], subject: str, text: str, execution: Any
    ) -> None:
        self.sent.append((recipients, subject, text))


def registry() -> TaskRegistry:
    tasks = TaskRegistry()

    @tasks.task("sync")
    async def sync(ctx: TaskContext) -> None:
        for key in ("1", "2", "3"):
            if not ctx.wanted(key):
                continue
            if key == "2" and ctx.params.get("break"):
                await ctx.item(key, "update", "failed", error="invalid_parameter: Invalid email")
            else:
                await ctx.item(key, "update", "ok")

    @tasks.task("quiet")
    async def quiet(ctx: TaskContext) -> None:
        await ctx.item("x", "noop", "failed", error="boom")

    return tasks


async def test_rules_decide_and_mail_is_delivered(backend: Backend, smtp: SmtpCapture) -> None:
    mail = mail_tables(backend.metadata)
    await create_mail_tables(backend.db, mail)
    notifier = TaskNotifier(
        backend.db,
        backend.tables,
        backend.tasks,
        mail_delivery(backend.db, mail),
        service="profile",
        dashboard_url="http://127.0.0.1:8080/admin",
    )
    rules = backend.hub.notifications
    await rules.set(
        "sync",
        on_success=False,
        on_failure=True,
        on_partial=True,
        recipients=["ops@vhs.example", "ops@vhs.example", "it@vhs.example"],
        actor="admin",
    )
    runner = TaskRunner(
        backend.db, registry(), backend.tasks, tick_seconds=0.05, on_finish=notifier
    )
    settings = MailSettings(
        smtp_host=smtp.host, smtp_port=smtp.port, mail_poll_seconds=0.05, smtp_timeout=5
    )
    sender = MailSender(backend.db, mail, settings)
    await runner.start()
    await sender.start()
    try:
        ok = await runner.wait(await runner.run_now("sync"))
        assert ok["status"] == "succeeded"
        dry = await runner.wait(await runner.run_now("sync", {"break": True}, dry_run=True))
        assert dry["status"] == "partially_succeeded"
        assert notifier.sent == 0  # success not wanted; dry runs never notify
        partial = await runner.wait(await runner.run_now("sync", {"break": True}))
        assert partial["status"] == "partially_succeeded"
        assert await runner.wait(await runner.run_now("quiet"))  # no rule: no mail
        (captured,) = await smtp.wait_for(1)
    finally:
        await sender.stop()
        await runner.stop()
    assert notifier.sent == 1
    assert sorted(captured.rcpt_tos) == ["it@vhs.example", "ops@vhs.example"]
    message = captured.message
    assert " ".join(str(message["Subject"]).split()) == (  # unfolded
        "[edumesh profile] Aufgabe sync: teilweise erfolgreich (2 ok, 1 Fehler)"
    )
    body = message.get_content()
    assert "2 (update): invalid_parameter: Invalid email" in body
    assert partial["id"] in body
    assert "http://127.0.0.1:8080/admin" in body


async def test_a_reaped_crash_notifies_failure(backend: Backend) -> None:
    recorder = Recorder()
    notifier = TaskNotifier(backend.db, backend.tables, backend.tasks, recorder, service="profile")
    await backend.hub.notifications.set(
        "sync", on_success=False, on_failure=True, on_partial=False, recipients=["ops@vhs.example"]
    )
    runner = TaskRunner(backend.db, registry(), backend.tasks, on_finish=notifier)
    await runner.sync_definitions()
    now = time.time()
    async with backend.db.engine.begin() as conn:  # what a replica that died mid-run leaves
        await conn.execute(
            insert(backend.tasks.executions).values(
                id="dead1",
                task="sync",
                status="running",
                trigger="schedule",
                dry_run=False,
                params={},
                holder="crashed-pod",
                started_at=now - 60,
                counts={"processed": 1, "succeeded": 1, "failed": 0},
                cancel_requested=False,
            )
        )
    assert await runner.reap_stale() == 1
    assert await runner.reap_stale() == 0  # reaped once, notified once
    ((to, subject, text),) = recorder.sent
    assert to == ["ops@vhs.example"]
    assert subject.startswith("[edumesh profile] Aufgabe sync: fehlgeschlagen")
    assert "lease expired" in text


async def test_broken_delivery_never_changes_the_execution(backend: Backend) -> None:
    async def broken(*args: Any) -> None:
        raise ConnectionError("mail outbox unavailable")

    notifier = TaskNotifier(backend.db, backend.tables, backend.tasks, broken, service="x")
    await backend.hub.notifications.set(
        "sync", on_success=True, on_failure=True, on_partial=True, recipients=["a@b.example"]
    )
    runner = TaskRunner(
        backend.db, registry(), backend.tasks, tick_seconds=0.05, on_finish=notifier
    )
    await runner.start()
    try:
        done = await runner.wait(await runner.run_now("sync"))
    finally:
        await runner.stop()
    assert done["status"] == "succeeded" and done["error"] is None


def test_rendering_lists_failures_and_counts_the_rest() -> None:
    execution = {
        "id": "e1",
        "task": "brevo-contact-sync",
        "status": "failed",
        "trigger": "schedule",
        "started_at": 0.0,
        "finished_at": 61.0,
        "counts": {"processed": 30, "succeeded": 0, "failed": 30},
        "error": "all 30 record(s) failed",
    }
    failed = [{"record_key": str(i), "action": "create", "error": "boom"} for i in range(20)]
    subject, text = render_notification(execution, failed, service="profile")
    assert (
        subject == "[edumesh profile] Aufgabe brevo-contact-sync: fehlgeschlagen (0 ok, 30 Fehler)"
    )
    assert "01.01.1970 00:01:01 UTC" in text
    assert text.count("): boom") == 20 and "... und 10 weitere" in text
    assert "Retry failed" in text


async def test_rest_rules(backend: Backend) -> None:
    router = notification_router(
        lambda r: get_connectors(r).notifications, known_tasks=lambda r: ["sync"]
    )
    transport = httpx.ASGITransport(app=make_app(backend.hub, router))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as api:
        body = {"on_success": True, "recipients": ["ops@vhs.example"]}
        assert (
            await api.put("/notifications/sync", json=body, headers=auth("staff"))
        ).status_code == 403
        put = await api.put("/notifications/sync", json=body, headers=auth("admin", subject="al"))
        assert put.status_code == 200
        assert put.json()["on_failure"] is True and put.json()["updated_by"] == "al"
        unknown = await api.put("/notifications/nope", json=body, headers=auth("admin"))
        assert unknown.status_code == 404 and unknown.json()["code"] == "task-not-found"
        bad = await api.put(
            "/notifications/sync", json={"recipients": ["not an address"]}, headers=auth("admin")
        )
        assert bad.status_code == 422
        listed = await api.get("/notifications", headers=auth("staff"))
        assert [r["task"] for r in listed.json()] == ["sync"]
        assert (await api.delete("/notifications/sync", headers=auth("admin"))).status_code == 204
        gone = await api.get("/notifications/sync", headers=auth("staff"))
        assert gone.status_code == 404
