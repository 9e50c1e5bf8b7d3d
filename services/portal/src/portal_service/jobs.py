"""Clients, contacts and jobs from the agency's job system (``RegisterJob``, over AMQP or REST).

Registering a job, in one transaction:

1. the client is created or updated (settings not given keep their value; a new client gets
   the configured defaults), and its contacts replaced when the message lists them;
2. the job is created (or its data updated), and the ticket recorded when there is one;
3. without a portal account, and with ``portal_create_uplogin_automatically = 1``, the account
   is created (active) for the chosen recipient; with
   ``portal_send_uplogin_email_automatically = 1`` its access mail is queued as well;
4. with an active account the job's folders (Incoming / In progress / Final) are created;
   with ``create_hotfolder`` its internal hotfolder directory;
5. an upload request (reminder) is scheduled per ``portal_reminder_email_automatically``:
   0 none, 1 for a new job, 2 for every new ticket (a job registered without a ticket number
   counts as its first ticket). The ``send-reminders`` task sends it when due.

Repeating a registration is harmless: the job is keyed by project number, tickets and upload
requests are unique per job, and the account and its mail are only made once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from mesh_common.errors import Conflict, Invalid, NotFound
from mesh_contracts.portal import ClientData, ContactData, RegisterJob
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import accounts, mails, models
from portal_service.core import Portal, hotfolder_path, log, record_audit


@dataclass
class Registered:
    job_id: str
    project_no: str
    job_created: bool
    ticket_created: bool
    account_id: str | None = None
    account_created: bool = False
    access_mail_id: str | None = None
    upload_request: str | None = None  # the ticket key of a newly scheduled upload request
    notes: list[str] = field(default_factory=list)


async def client_by_no(session: AsyncSession, client_no: str) -> Any:
    c = models.clients
    return (await session.execute(select(c).where(c.c.client_no == client_no))).first()


async def upsert_client(portal: Portal, session: AsyncSession, data: ClientData) -> Any:
    """Create or update the client (given fields only), and replace its contacts if listed."""
    c = models.clients
    s = portal.settings
    now = portal.now()
    given = data.model_dump(exclude_unset=True, exclude={"contacts", "client_no"})
    given = {k: v for k, v in given.items() if v is not None}
    existing = await client_by_no(session, data.client_no)
    if existing is None:
        values: dict[str, Any] = {
            "client_no": data.client_no,
            "name": data.name or data.client_no,
            "email": data.email,
            "create_hotfolder": s.portal_default_create_hotfolder,
            "hotfolder_delete_days": s.portal_default_hotfolder_delete_days,
            "portal_create_uplogin_automatically": s.portal_default_create_uplogin,
            "portal_send_uplogin_email_automatically": s.portal_default_send_uplogin_email,
            "portal_reminder_email_automatically": s.portal_default_reminder_email,
            "created_at": now,
            "updated_at": now,
        }
        values.update(given)
        await session.execute(c.insert().values(**values))
    elif given:
        await session.execute(
            update(c).where(c.c.id == existing.id).values(**given, updated_at=now)
        )
    client = await client_by_no(session, data.client_no)
    if data.contacts is not None:
        await replace_contacts(portal, session, client.id, data.contacts)
    return client


async def replace_contacts(
    portal: Portal, session: AsyncSession, client_id: int, contacts: list[ContactData]
) -> None:
    t = models.contacts
    now = portal.now()
    wanted = {x.contact_no: x for x in contacts}
    rows = (await session.execute(select(t).where(t.c.client_id == client_id))).all()
    for row in rows:
        if row.contact_no not in wanted:
            await session.execute(delete(t).where(t.c.id == row.id))
    present = {r.contact_no: r for r in rows}
    for no, x in wanted.items():
        values = {"name": x.name, "email": x.email, "favourite": x.favourite, "updated_at": now}
        if no in present:
            await session.execute(update(t).where(t.c.id == present[no].id).values(**values))
        else:
            await session.execute(
                t.insert().values(client_id=client_id, contact_no=no, created_at=now, **values)
            )


async def set_favourite(portal: Portal, session: AsyncSession, contact: Any) -> None:
    """Make ``contact`` the client's only favourite."""
    t = models.contacts
    await session.execute(
        update(t)
        .where(t.c.client_id == contact.client_id, t.c.id != contact.id)
        .values(favourite=False, updated_at=portal.now())
    )


async def job_by_id(session: AsyncSession, job_id: str) -> Any:
    j = models.jobs
    row = (await session.execute(select(j).where(j.c.id == job_id))).first()
    if row is None:
        raise NotFound(f"no job {job_id!r}", code="job-not-found")
    return row


async def job_by_no(session: AsyncSession, project_no: str) -> Any:
    j = models.jobs
    return (await session.execute(select(j).where(j.c.project_no == project_no))).first()


async def ticket_of(session: AsyncSession, job_id: str, ticket_no: str) -> Any:
    t = models.job_tickets
    return (
        await session.execute(select(t).where(t.c.job_id == job_id, t.c.ticket_no == ticket_no))
    ).first()


async def register_job(
    portal: Portal, session: AsyncSession, cmd: RegisterJob, *, source: str, actor: str
) -> Registered:
    """Apply ``cmd`` in ``session``'s transaction (see the module docstring)."""
    now = portal.now()
    client = await upsert_client(portal, session, cmd.client)
    contact_id: int | None = None
    if cmd.contact_no is not None:
        t = models.contacts
        contact_id = (
            await session.execute(
                select(t.c.id).where(t.c.client_id == client.id, t.c.contact_no == cmd.contact_no)
            )
        ).scalar_one_or_none()
        if contact_id is None:
            raise Invalid(
                f"contact {cmd.contact_no!r} is not a contact of client {client.client_no}",
                code="unknown-contact",
            )

    j = models.jobs
    job = await job_by_no(session, cmd.project_no)
    job_created = job is None
    if job is None:
        job_id = str(uuid.uuid4())
        await session.execute(
            j.insert().values(
                id=job_id,
                project_no=cmd.project_no,
                client_id=client.id,
                description=cmd.description,
                due_date=cmd.due_date,
                contact_id=contact_id,
                source=source,
                created_at=now,
                updated_at=now,
            )
        )
    else:
        if job.client_id != client.id:
            raise Conflict(
                f"job {cmd.project_no} belongs to another client", code="job-client-mismatch"
            )
        job_id = job.id
        if cmd.ticket_no is None:
            await session.execute(
                update(j)
                .where(j.c.id == job_id)
                .values(
                    description=cmd.description or job.description,
                    due_date=cmd.due_date or job.due_date,
                    contact_id=contact_id if contact_id is not None else job.contact_id,
                    updated_at=now,
                )
            )
    job = await job_by_id(session, job_id)
    result = Registered(job_id, cmd.project_no, job_created, ticket_created=False)

    ticket = None
    if cmd.ticket_no is not None:
        ticket = await ticket_of(session, job_id, cmd.ticket_no)
        if ticket is None:
            await session.execute(
                models.job_tickets.insert().values(
                    job_id=job_id,
                    ticket_no=cmd.ticket_no,
                    description=cmd.description,
                    due_date=cmd.due_date,
                    created_at=now,
                )
            )
            ticket = await ticket_of(session, job_id, cmd.ticket_no)
            result.ticket_created = True

    # The portal access (uplogin).
    account = await accounts.account_of_client(session, client.id)
    if account is None and client.portal_create_uplogin_automatically == 1:
        recipient = await mails.choose_recipient(session, client, contact_id=job.contact_id)
        if recipient is None:
            result.notes.append("no portal account created: the client has no e-mail address")
            log.warning("client %s has no e-mail address; no portal account", client.client_no)
        else:
            account = await accounts.create_account(
                portal, session, client, email=recipient.email, status="active", created_by="auto"
            )
            result.account_created = True
            if client.portal_send_uplogin_email_automatically == 1:
                result.access_mail_id = await accounts.send_access_mail(
                    portal,
                    session,
                    account,
                    kind="first",
                    actor="auto",
                    job=job,
                    ticket=ticket,
                    to=recipient.email,
                    recipient_name=recipient.name,
                )
    if account is not None:
        result.account_id = account.id
        if account.status == "active" and job.folders_created_at is None:
            portal.storage.job_dir(job_id)
            await session.execute(update(j).where(j.c.id == job_id).values(folders_created_at=now))
    if client.create_hotfolder and job.hotfolder_created_at is None:
        hotfolder_path(portal.settings.hotfolder_dir, client.client_no, job.project_no).mkdir(
            parents=True, exist_ok=True
        )
        await session.execute(update(j).where(j.c.id == job_id).values(hotfolder_created_at=now))

    # Upload request (reminder) per the client's flag.
    flag = client.portal_reminder_email_automatically
    key: str | None = None
    if flag == 1 and job_created:
        key = ""
    elif flag == 2 and (result.ticket_created or (job_created and cmd.ticket_no is None)):
        key = cmd.ticket_no or ""
    if key is not None:
        u = models.upload_requests
        exists = (
            await session.execute(select(u.c.id).where(u.c.job_id == job_id, u.c.ticket_no == key))
        ).first()
        if exists is None:
            await session.execute(
                u.insert().values(
                    job_id=job_id,
                    ticket_no=key,
                    due_at=now + portal.settings.portal_reminder_delay_minutes * 60,
                    status="pending",
                    created_at=now,
                )
            )
            result.upload_request = key
    if job_created or result.ticket_created:
        await record_audit(
            session,
            now,
            actor=actor,
            action="job-registered",
            job_id=job_id,
            account_id=result.account_id,
            detail={
                "project_no": cmd.project_no,
                "ticket_no": cmd.ticket_no,
                "client_no": client.client_no,
                "source": source,
            },
        )
    return result
