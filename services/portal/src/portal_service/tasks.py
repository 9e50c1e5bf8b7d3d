"""The portal's tasks on the shared task framework (run now, executions, per-record items).

- ``pull-hotfolder`` (every ``PORTAL_PULL_INTERVAL_SECONDS``, default 60 s): new Incoming files
  of hotfolder clients into the internal hotfolder with the job XML and the internal mail; one
  item per job (key: project number).
- ``send-reminders`` (every ``PORTAL_REMINDER_INTERVAL_SECONDS``): due upload requests (per the
  client's ``portal_reminder_email_automatically``); one item per request (key
  ``<project no>`` or ``<project no>/<ticket no>``). A request is skipped when files were
  uploaded to the job meanwhile, or when the client has no active portal access or no address.
- ``purge-hotfolders`` (cron ``PORTAL_HOTFOLDER_PURGE_CRON``, default 02:30 UTC): hotfolders
  past their client's ``hotfolder_delete_days``; one item per job.
- ``portal-maintenance`` (hourly): expired sessions, old activation tokens and throttle rows.

All support dry runs (nothing changes, items say what would happen) and "retry failed".
"""

from __future__ import annotations

from typing import Any

from mesh_common.app import ServiceRuntime
from mesh_common.tasks import Cron, Interval, TaskContext, TaskRegistry
from sqlalchemy import delete, func, select, update

from portal_service import accounts, hotfolder, mails, models
from portal_service.core import Portal, log, portal_of

PULL, REMINDERS, PURGE, MAINTENANCE = (
    "pull-hotfolder",
    "send-reminders",
    "purge-hotfolders",
    "portal-maintenance",
)


def build(
    holder: dict[str, ServiceRuntime],
    *,
    pull_seconds: float,
    reminder_seconds: float,
    purge_cron: str,
    maintenance_seconds: float,
) -> TaskRegistry:
    tasks = TaskRegistry()

    def portal() -> Portal:
        return portal_of(holder["runtime"])

    @tasks.task(PULL, schedule=Interval(pull_seconds))
    async def pull_hotfolder(ctx: TaskContext) -> None:
        """Pull new uploads into the internal hotfolder with the job XML and an internal mail."""
        p = portal()
        for job_id, project_no in await hotfolder.jobs_to_pull(p):
            if not ctx.wanted(project_no):
                continue
            ctx.check_cancelled()
            try:
                summary = await hotfolder.pull_job(p, job_id, dry_run=ctx.dry_run)
            except Exception as exc:
                log.exception("hotfolder pull of %s failed", project_no)
                await ctx.item(project_no, "pull", "failed", f"{type(exc).__name__}: {exc}")
                continue
            action = "would pull" if ctx.dry_run else "pull"
            await ctx.item(project_no, action, "ok", detail=summary)

    @tasks.task(REMINDERS, schedule=Interval(reminder_seconds))
    async def send_reminders(ctx: TaskContext) -> None:
        """Send due upload requests (reminders) per the clients' reminder setting."""
        p = portal()
        u, j = models.upload_requests, models.jobs
        async with p.db.sessionmaker() as session:
            due = (
                await session.execute(
                    select(u.c.id, u.c.ticket_no, j.c.project_no)
                    .join(j, j.c.id == u.c.job_id)
                    .where(u.c.status == "pending", u.c.due_at <= p.now())
                    .order_by(u.c.due_at, u.c.id)
                )
            ).all()
        for row in due:
            key = row.project_no + (f"/{row.ticket_no}" if row.ticket_no else "")
            if not ctx.wanted(key):
                continue
            ctx.check_cancelled()
            try:
                outcome, note = await send_upload_request(p, row.id, dry_run=ctx.dry_run)
            except Exception as exc:
                log.exception("upload request %s failed", key)
                await ctx.item(key, "remind", "failed", f"{type(exc).__name__}: {exc}")
                continue
            await ctx.item(key, "remind", outcome, None, {"note": note} if note else None)  # type: ignore[arg-type]

    @tasks.task(PURGE, schedule=Cron(purge_cron))
    async def purge_hotfolders(ctx: TaskContext) -> None:
        """Delete hotfolders older than their client's "delete after N days"."""
        p = portal()
        for job_id, client_no, project_no, _since in await hotfolder.hotfolders_to_purge(p):
            if not ctx.wanted(project_no):
                continue
            ctx.check_cancelled()
            try:
                existed = await hotfolder.purge_hotfolder(
                    p, job_id, client_no, project_no, dry_run=ctx.dry_run
                )
            except Exception as exc:
                log.exception("deleting the hotfolder of %s failed", project_no)
                await ctx.item(project_no, "delete", "failed", f"{type(exc).__name__}: {exc}")
                continue
            action = "would delete" if ctx.dry_run else "delete"
            await ctx.item(project_no, action, "ok" if existed else "unchanged")

    @tasks.task(MAINTENANCE, schedule=Interval(maintenance_seconds))
    async def maintenance(ctx: TaskContext) -> None:
        """Remove expired sessions, old activation tokens and old throttle entries."""
        p = portal()
        now = p.now()
        window = max(p.settings.portal_login_window_seconds, 3600)
        s, t, e = models.sessions, models.activation_tokens, models.throttle_events
        idle = p.settings.portal_session_idle_minutes * 60
        statements = {
            "sessions": delete(s).where((s.c.expires_at <= now) | (s.c.last_seen_at <= now - idle)),
            "activation-tokens": delete(t).where(t.c.expires_at <= now - 7 * 86400),
            "throttle-events": delete(e).where(e.c.at <= now - 2 * window),
        }
        for key, statement in statements.items():
            if ctx.dry_run:
                await ctx.item(key, "would purge", "ok")
                continue
            async with p.db.unit_of_work() as session:
                result = await session.execute(statement)
            await ctx.item(key, "purge", "ok", detail={"rows": result.rowcount})  # type: ignore[attr-defined]

    return tasks


async def send_upload_request(
    portal: Portal, request_id: int, *, dry_run: bool = False
) -> tuple[str, str | None]:
    """Send one due upload request; ``(outcome, note)`` for the task item."""
    u, f = models.upload_requests, models.files
    async with portal.db.unit_of_work() as session:
        req = (await session.execute(select(u).where(u.c.id == request_id))).one()
        if req.status != "pending":
            return "unchanged", f"already {req.status}"
        job = (
            await session.execute(select(models.jobs).where(models.jobs.c.id == req.job_id))
        ).one()
        client = await accounts.client_by_id(session, job.client_id)
        ticket: Any = None
        if req.ticket_no:
            t = models.job_tickets
            ticket = (
                await session.execute(
                    select(t).where(t.c.job_id == job.id, t.c.ticket_no == req.ticket_no)
                )
            ).first()
        uploaded = (
            await session.execute(
                select(func.count()).where(f.c.job_id == job.id, f.c.uploaded_at >= req.created_at)
            )
        ).scalar_one()
        account = await accounts.account_of_client(session, client.id)
        recipient = await mails.choose_recipient(session, client, contact_id=job.contact_id)
        skip: str | None = None
        if uploaded:
            skip = "files were uploaded to the job already"
        elif account is None or account.status != "active":
            skip = "the client has no active portal access"
        elif recipient is None:
            skip = "no e-mail address for the client"
        if dry_run:
            return ("skipped", skip) if skip else ("ok", f"would send to {recipient.email}")  # type: ignore[union-attr]
        if skip:
            await session.execute(
                update(u)
                .where(u.c.id == req.id)
                .values(status="skipped", note=skip, done_at=portal.now())
            )
            return "skipped", skip
        assert recipient is not None and account is not None
        data = mails.context(
            portal,
            client=client,
            username=account.username,
            recipient=recipient,
            job=job,
            ticket=ticket,
        )
        mail_id = await mails.queue(
            portal,
            session,
            mails.UPLOAD_REQUEST,
            data,
            to=recipient.email,
            ref=job.project_no,
        )
        await session.execute(
            update(u)
            .where(u.c.id == req.id)
            .values(
                status="sent",
                mail_id=mail_id,
                recipient=recipient.email,
                note=recipient.source,
                done_at=portal.now(),
            )
        )
    return "ok", f"to {recipient.email} ({recipient.source})"
