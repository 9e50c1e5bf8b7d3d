"""Staff REST API of the portal (mesh JWT; role ``staff``, admin implied).

Clients with their portal settings and contacts, jobs (also ``POST /jobs`` from the job system,
role ``service`` or ``staff``), job folders and files (staff may upload into any folder, scanned
like customer uploads, download any file, move and delete files), portal accounts (create,
activate/deactivate, send the access mail or a new link), the audit trail and the virus
scanner's state. Thin: the rules live in ``jobs``, ``accounts``, ``uploads``. The task endpoints
come from ``mesh_common.tasks.task_router``, the mail outbox and templates from
``mesh_common.mail``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from mesh_common.app import ServiceRuntime
from mesh_common.auth import Principal, require
from mesh_common.errors import Conflict, DomainError, Invalid, NotFound
from mesh_contracts.portal import ClientData, ContactData, EmailText, Folder, Key, RegisterJob
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import accounts, jobs, mails, models, security, uploads
from portal_service.clamd import ScannerUnavailable
from portal_service.core import FOLDERS, Portal, epoch_dt, log, portal_of, record_audit

router = APIRouter()
Staff = Annotated[Principal, Depends(require("staff"))]
JobSystem = Annotated[Principal, Depends(require("staff", "service"))]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]


def _portal(request: Request) -> Portal:
    runtime: ServiceRuntime = request.app.state.runtime
    return portal_of(runtime)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


# ---------------------------------------------------------------------- models


class ContactOut(BaseModel):
    contact_no: str
    name: str
    email: str
    favourite: bool


class AccountSummary(BaseModel):
    id: str
    username: str
    status: str
    activated: bool


class ClientOut(BaseModel):
    client_no: str
    name: str
    email: str | None
    create_hotfolder: bool
    hotfolder_delete_days: int
    portal_create_uplogin_automatically: int
    portal_send_uplogin_email_automatically: int
    portal_reminder_email_automatically: int
    contacts: list[ContactOut]
    account: AccountSummary | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ClientIn(BaseModel):
    """Portal settings of a client; fields left out keep their value (defaults when new)."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    email: EmailText | None = None
    create_hotfolder: bool | None = None
    hotfolder_delete_days: Annotated[int, Field(ge=0, le=3650)] | None = None
    portal_create_uplogin_automatically: Literal[0, 1] | None = None
    portal_send_uplogin_email_automatically: Literal[0, 1] | None = None
    portal_reminder_email_automatically: Literal[0, 1, 2] | None = None
    contacts: list[ContactData] | None = None


class ContactIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    email: EmailText
    favourite: bool = False


class FileOut(BaseModel):
    id: str
    folder: Folder
    name: str
    size: int
    sha256: str
    uploaded_by: str
    uploaded_at: dt.datetime
    pulled_at: dt.datetime | None


class TicketOut(BaseModel):
    ticket_no: str
    description: str
    due_date: dt.date | None
    created_at: dt.datetime


class UploadRequestOut(BaseModel):
    ticket_no: str
    status: str
    due_at: dt.datetime
    recipient: str | None
    note: str | None
    mail_id: str | None


class JobOut(BaseModel):
    id: str
    project_no: str
    client_no: str
    description: str
    due_date: dt.date | None
    contact_no: str | None
    source: str
    hotfolder_created_at: dt.datetime | None
    last_pulled_at: dt.datetime | None
    hotfolder_deleted_at: dt.datetime | None
    created_at: dt.datetime
    tickets: list[TicketOut] = []
    files: list[FileOut] = []
    upload_requests: list[UploadRequestOut] = []


class RegisteredOut(BaseModel):
    job_id: str
    project_no: str
    job_created: bool
    ticket_created: bool
    account_id: str | None
    account_created: bool
    access_mail_id: str | None
    upload_request: str | None
    notes: list[str]


class AccountOut(BaseModel):
    id: str
    client_no: str
    username: str
    email: str
    status: Literal["active", "inactive"]
    # The activation record: checked, and when ("updated").
    activation_checked: bool
    activation_updated: dt.datetime | None
    has_password: bool
    last_login_at: dt.datetime | None
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class AccountIn(BaseModel):
    client_no: Key
    # A manually created access must be given its state explicitly.
    status: Literal["active", "inactive"]
    username: Annotated[str, Field(min_length=3, max_length=100)] | None = None
    email: EmailText | None = Field(
        None, description="default: the client's favourite contact, else the client's address"
    )
    send_access_mail: bool = False
    copy_to: EmailText | None = Field(
        None, description="the staff member sending it: gets a copy and the replies"
    )


class AccountPatch(BaseModel):
    status: Literal["active", "inactive"] | None = None
    email: EmailText | None = None


class AccessMailIn(BaseModel):
    kind: Literal["first", "renewal"] = "first"
    project_no: Key | None = Field(None, description="the job the mail is about (placeholders)")
    contact_no: Key | None = Field(None, description="send to this contact of the client")
    copy_to: EmailText | None = None


class MailQueued(BaseModel):
    mail_id: str
    to: str


class MoveIn(BaseModel):
    folder: Folder


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    account_id: str | None
    job_id: str | None
    ip: str | None
    detail: dict[str, Any] | None


class ScannerOut(BaseModel):
    configured: bool
    address: str | None
    reachable: bool
    version: str | None
    error: str | None


# ---------------------------------------------------------------------- helpers


def _ts(value: float) -> dt.datetime:
    out = epoch_dt(value)
    assert out is not None
    return out


async def _client_out(session: AsyncSession, client: Any) -> ClientOut:
    c = models.contacts
    contacts = (
        await session.execute(select(c).where(c.c.client_id == client.id).order_by(c.c.contact_no))
    ).all()
    account = await accounts.account_of_client(session, client.id)
    return ClientOut(
        client_no=client.client_no,
        name=client.name,
        email=client.email,
        create_hotfolder=client.create_hotfolder,
        hotfolder_delete_days=client.hotfolder_delete_days,
        portal_create_uplogin_automatically=client.portal_create_uplogin_automatically,
        portal_send_uplogin_email_automatically=client.portal_send_uplogin_email_automatically,
        portal_reminder_email_automatically=client.portal_reminder_email_automatically,
        contacts=[
            ContactOut(contact_no=x.contact_no, name=x.name, email=x.email, favourite=x.favourite)
            for x in contacts
        ],
        account=AccountSummary(
            id=account.id,
            username=account.username,
            status=account.status,
            activated=account.activation_checked,
        )
        if account is not None
        else None,
        created_at=_ts(client.created_at),
        updated_at=_ts(client.updated_at),
    )


async def _client(session: AsyncSession, client_no: str) -> Any:
    client = await jobs.client_by_no(session, client_no)
    if client is None:
        raise NotFound(f"no client {client_no!r}", code="client-not-found")
    return client


def file_out(row: Any) -> FileOut:
    return FileOut(
        id=row.id,
        folder=row.folder,
        name=row.name,
        size=row.size,
        sha256=row.sha256,
        uploaded_by=row.uploaded_by,
        uploaded_at=_ts(row.uploaded_at),
        pulled_at=epoch_dt(row.pulled_at),
    )


async def _job_out(session: AsyncSession, job: Any, *, detail: bool) -> JobOut:
    client = await accounts.client_by_id(session, job.client_id)
    contact_no = None
    if job.contact_id is not None:
        c = models.contacts
        contact_no = (
            await session.execute(select(c.c.contact_no).where(c.c.id == job.contact_id))
        ).scalar_one_or_none()
    out = JobOut(
        id=job.id,
        project_no=job.project_no,
        client_no=client.client_no,
        description=job.description,
        due_date=job.due_date,
        contact_no=contact_no,
        source=job.source,
        hotfolder_created_at=epoch_dt(job.hotfolder_created_at),
        last_pulled_at=epoch_dt(job.last_pulled_at),
        hotfolder_deleted_at=epoch_dt(job.hotfolder_deleted_at),
        created_at=_ts(job.created_at),
    )
    if detail:
        t, f, u = models.job_tickets, models.files, models.upload_requests
        out.tickets = [
            TicketOut(
                ticket_no=r.ticket_no,
                description=r.description,
                due_date=r.due_date,
                created_at=_ts(r.created_at),
            )
            for r in (
                await session.execute(select(t).where(t.c.job_id == job.id).order_by(t.c.ticket_no))
            ).all()
        ]
        out.files = [
            file_out(r)
            for r in (
                await session.execute(
                    select(f).where(f.c.job_id == job.id).order_by(f.c.folder, f.c.name)
                )
            ).all()
        ]
        out.upload_requests = [
            UploadRequestOut(
                ticket_no=r.ticket_no,
                status=r.status,
                due_at=_ts(r.due_at),
                recipient=r.recipient,
                note=r.note,
                mail_id=r.mail_id,
            )
            for r in (
                await session.execute(select(u).where(u.c.job_id == job.id).order_by(u.c.id))
            ).all()
        ]
    return out


async def account_out(session: AsyncSession, row: Any) -> AccountOut:
    client = await accounts.client_by_id(session, row.client_id)
    return AccountOut(
        id=row.id,
        client_no=client.client_no,
        username=row.username,
        email=row.email,
        status=row.status,
        activation_checked=row.activation_checked,
        activation_updated=epoch_dt(row.activation_updated),
        has_password=row.password_hash is not None,
        last_login_at=epoch_dt(row.last_login_at),
        created_by=row.created_by,
        created_at=_ts(row.created_at),
        updated_at=_ts(row.updated_at),
    )


async def file_row(session: AsyncSession, job_id: str, file_id: str) -> Any:
    f = models.files
    row = (await session.execute(select(f).where(f.c.id == file_id, f.c.job_id == job_id))).first()
    if row is None:
        raise NotFound(f"no file {file_id!r} in job {job_id!r}", code="file-not-found")
    return row


def download_response(portal: Portal, row: Any) -> FileResponse:
    """The file as an attachment: never rendered by the browser, whatever it contains."""
    path = portal.storage.blob(row.job_id, row.id)
    if not path.is_file():
        raise NotFound("the file's content is missing from the storage", code="file-missing")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=row.name,
        content_disposition_type="attachment",
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        },
    )


# ---------------------------------------------------------------------- clients


@router.get("/clients", tags=["clients"], summary="Clients with their portal settings")
async def list_clients(
    request: Request, _: Staff, limit: Limit = 100, offset: Offset = 0
) -> list[ClientOut]:
    c = models.clients
    async with _portal(request).db.sessionmaker() as session:
        rows = (
            await session.execute(select(c).order_by(c.c.client_no).limit(limit).offset(offset))
        ).all()
        return [await _client_out(session, r) for r in rows]


@router.get("/clients/{client_no}", tags=["clients"], summary="One client")
async def get_client(request: Request, client_no: str, _: Staff) -> ClientOut:
    async with _portal(request).db.sessionmaker() as session:
        return await _client_out(session, await _client(session, client_no))


@router.put(
    "/clients/{client_no}",
    tags=["clients"],
    summary="Create or update a client's settings (fields left out keep their value)",
)
async def put_client(
    request: Request, client_no: Key, body: ClientIn, principal: Staff
) -> ClientOut:
    portal = _portal(request)
    data = ClientData(client_no=client_no, **body.model_dump(exclude_unset=True))
    async with portal.db.unit_of_work() as session:
        client = await jobs.upsert_client(portal, session, data)
        await record_audit(
            session,
            portal.now(),
            actor=principal.subject,
            action="client-saved",
            detail={"client_no": client_no, "fields": sorted(body.model_fields_set)},
        )
        return await _client_out(session, client)


@router.put(
    "/clients/{client_no}/contacts/{contact_no}",
    tags=["clients"],
    summary="Create or update a contact (favourite: the only favourite of the client)",
)
async def put_contact(
    request: Request, client_no: str, contact_no: Key, body: ContactIn, principal: Staff
) -> ClientOut:
    portal = _portal(request)
    c = models.contacts
    async with portal.db.unit_of_work() as session:
        client = await _client(session, client_no)
        now = portal.now()
        row = (
            await session.execute(
                select(c).where(c.c.client_id == client.id, c.c.contact_no == contact_no)
            )
        ).first()
        values = {"name": body.name, "email": body.email, "favourite": body.favourite}
        if row is None:
            await session.execute(
                c.insert().values(
                    client_id=client.id,
                    contact_no=contact_no,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
            )
        else:
            await session.execute(
                update(c).where(c.c.id == row.id).values(**values, updated_at=now)
            )
        contact = (
            await session.execute(
                select(c).where(c.c.client_id == client.id, c.c.contact_no == contact_no)
            )
        ).one()
        if body.favourite:
            await jobs.set_favourite(portal, session, contact)
        await record_audit(
            session,
            now,
            actor=principal.subject,
            action="contact-saved",
            detail={"client_no": client_no, "contact_no": contact_no},
        )
        return await _client_out(session, client)


@router.delete(
    "/clients/{client_no}/contacts/{contact_no}",
    tags=["clients"],
    status_code=204,
    summary="Remove a contact",
)
async def delete_contact(
    request: Request, client_no: str, contact_no: str, principal: Staff
) -> Response:
    portal = _portal(request)
    c = models.contacts
    async with portal.db.unit_of_work() as session:
        client = await _client(session, client_no)
        result = await session.execute(
            delete(c).where(c.c.client_id == client.id, c.c.contact_no == contact_no)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"no contact {contact_no!r}", code="contact-not-found")
        await record_audit(
            session,
            portal.now(),
            actor=principal.subject,
            action="contact-deleted",
            detail={"client_no": client_no, "contact_no": contact_no},
        )
    return Response(status_code=204)


# ---------------------------------------------------------------------- jobs


@router.post(
    "/jobs",
    tags=["jobs"],
    status_code=201,
    summary="Register a job or ticket from the job system (same body as portal.register_job.v1)",
)
async def post_job(request: Request, body: RegisterJob, principal: JobSystem) -> RegisteredOut:
    portal = _portal(request)
    for attempt in range(3):
        try:
            async with portal.db.unit_of_work() as session:
                result = await jobs.register_job(
                    portal, session, body, source="rest", actor=principal.subject
                )
            return RegisteredOut(**result.__dict__)
        except IntegrityError:
            # A concurrent registration created the same client, job or account first: the
            # next attempt finds it (bounded; then the error is visible as a 409).
            if attempt == 2:
                raise Conflict(
                    "a concurrent registration of the same job or client did not settle; "
                    "send it again",
                    code="registration-conflict",
                ) from None
    raise AssertionError("unreachable")


@router.get("/jobs", tags=["jobs"], summary="Jobs, newest first")
async def list_jobs(
    request: Request,
    _: Staff,
    client_no: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[JobOut]:
    j = models.jobs
    async with _portal(request).db.sessionmaker() as session:
        query = select(j).order_by(j.c.created_at.desc(), j.c.project_no)
        if client_no is not None:
            client = await _client(session, client_no)
            query = query.where(j.c.client_id == client.id)
        rows = (await session.execute(query.limit(limit).offset(offset))).all()
        return [await _job_out(session, r, detail=False) for r in rows]


@router.get("/jobs/{job_id}", tags=["jobs"], summary="One job: tickets, files, upload requests")
async def get_job(request: Request, job_id: str, _: Staff) -> JobOut:
    async with _portal(request).db.sessionmaker() as session:
        return await _job_out(session, await jobs.job_by_id(session, job_id), detail=True)


@router.post(
    "/jobs/{job_id}/folders/{folder}/files",
    tags=["jobs"],
    status_code=201,
    summary="Upload files into any folder of a job (multipart, virus-scanned, streamed)",
    responses={413: {"description": "too large"}, 422: {"description": "virus found"}},
)
async def staff_upload(
    request: Request, job_id: str, folder: Folder, principal: Staff
) -> list[FileOut]:
    portal = _portal(request)
    try:
        async with portal.db.sessionmaker() as session:
            job = await jobs.job_by_id(session, job_id)
            client = await accounts.client_by_id(session, job.client_id)
    except Exception:
        await uploads.drain(request.stream())  # so the client gets to read the answer
        raise
    actor = f"staff:{principal.subject}"
    files = await receive_logged(
        portal, request, job, actor=actor, csrf_expected=None, csrf_ok=True
    )
    rows = await uploads.store(
        portal, job, client.client_no, folder, files, uploaded_by=actor, ip=client_ip(request)
    )
    async with portal.db.sessionmaker() as session:
        return [file_out(await file_row(session, job.id, r["id"])) for r in rows]


async def receive_logged(
    portal: Portal,
    request: Request,
    job: Any,
    *,
    actor: str,
    csrf_expected: str | None,
    csrf_ok: bool,
) -> list[uploads.Spooled]:
    """:func:`uploads.receive`, with refused uploads logged and audited."""
    try:
        return await uploads.receive(
            portal,
            request.headers,
            request.stream(),
            csrf_expected=csrf_expected,
            csrf_ok=csrf_ok,
        )
    except DomainError as exc:
        portal.metrics.uploads.labels(exc.code).inc()
        detail: dict[str, Any] = {"code": exc.code, "reason": exc.detail}
        detail.update({k: v for k, v in exc.extra.items() if k in ("file", "signature")})
        if isinstance(exc, uploads.VirusFound):
            log.warning(
                "infected upload rejected: job %s, by %s from %s: %s",
                job.project_no,
                actor,
                client_ip(request),
                exc.detail,
            )
        async with portal.db.unit_of_work() as session:
            await record_audit(
                session,
                portal.now(),
                actor=actor,
                action="upload-rejected",
                job_id=job.id,
                ip=client_ip(request),
                detail=detail,
            )
        raise


@router.get("/jobs/{job_id}/files/{file_id}", tags=["jobs"], summary="Download a file")
async def staff_download(request: Request, job_id: str, file_id: str, _: Staff) -> FileResponse:
    portal = _portal(request)
    async with portal.db.sessionmaker() as session:
        row = await file_row(session, job_id, file_id)
    return download_response(portal, row)


@router.post(
    "/jobs/{job_id}/files/{file_id}/move",
    tags=["jobs"],
    summary="Move a file to another folder (e.g. a result into Final)",
)
async def move_file(
    request: Request, job_id: str, file_id: str, body: MoveIn, principal: Staff
) -> FileOut:
    portal = _portal(request)
    f = models.files
    async with portal.db.unit_of_work() as session:
        row = await file_row(session, job_id, file_id)
        if row.folder != body.folder:
            (name,) = await uploads.free_names(session, job_id, body.folder, [row.name])
            await session.execute(
                update(f).where(f.c.id == file_id).values(folder=body.folder, name=name)
            )
            await record_audit(
                session,
                portal.now(),
                actor=f"staff:{principal.subject}",
                action="file-moved",
                job_id=job_id,
                detail={"file": name, "from": row.folder, "to": body.folder},
            )
        return file_out(await file_row(session, job_id, file_id))


@router.delete(
    "/jobs/{job_id}/files/{file_id}", tags=["jobs"], status_code=204, summary="Delete a file"
)
async def delete_file(request: Request, job_id: str, file_id: str, principal: Staff) -> Response:
    portal = _portal(request)
    f = models.files
    async with portal.db.unit_of_work() as session:
        row = await file_row(session, job_id, file_id)
        await session.execute(delete(f).where(f.c.id == file_id))
        await record_audit(
            session,
            portal.now(),
            actor=f"staff:{principal.subject}",
            action="file-deleted",
            job_id=job_id,
            detail={"file": row.name, "folder": row.folder},
        )
    portal.storage.blob(job_id, file_id).unlink(missing_ok=True)
    return Response(status_code=204)


# ---------------------------------------------------------------------- accounts


@router.get("/accounts", tags=["accounts"], summary="Portal accounts (uplogin)")
async def list_accounts(
    request: Request,
    _: Staff,
    status: Literal["active", "inactive"] | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AccountOut]:
    a = models.accounts
    async with _portal(request).db.sessionmaker() as session:
        query = select(a).order_by(a.c.username)
        if status is not None:
            query = query.where(a.c.status == status)
        rows = (await session.execute(query.limit(limit).offset(offset))).all()
        return [await account_out(session, r) for r in rows]


@router.get("/accounts/{account_id}", tags=["accounts"], summary="One portal account")
async def get_account(request: Request, account_id: str, _: Staff) -> AccountOut:
    async with _portal(request).db.sessionmaker() as session:
        return await account_out(session, await accounts.account_by_id(session, account_id))


@router.post(
    "/accounts",
    tags=["accounts"],
    status_code=201,
    summary="Create a client's portal account manually (status required)",
)
async def create_account(request: Request, body: AccountIn, principal: Staff) -> AccountOut:
    portal = _portal(request)
    async with portal.db.unit_of_work() as session:
        client = await _client(session, body.client_no)
        email = body.email
        if email is None:
            recipient = await mails.choose_recipient(session, client)
            if recipient is None:
                raise Invalid(
                    "the client has no e-mail address and no contact; give one",
                    code="no-email",
                )
            email = recipient.email
        account = await accounts.create_account(
            portal,
            session,
            client,
            email=email,
            status=body.status,
            created_by=principal.subject,
            username=body.username,
        )
        if body.send_access_mail:
            await accounts.send_access_mail(
                portal,
                session,
                account,
                kind="first",
                actor=principal.subject,
                copy_to=body.copy_to,
            )
        return await account_out(session, account)


@router.patch(
    "/accounts/{account_id}",
    tags=["accounts"],
    summary="Activate or deactivate an account, or change its e-mail address",
)
async def patch_account(
    request: Request, account_id: str, body: AccountPatch, principal: Staff
) -> AccountOut:
    portal = _portal(request)
    a, t = models.accounts, models.activation_tokens
    async with portal.db.unit_of_work() as session:
        account = await accounts.account_by_id(session, account_id)
        changes = body.model_dump(exclude_none=True)
        if changes:
            now = portal.now()
            await session.execute(
                update(a).where(a.c.id == account_id).values(**changes, updated_at=now)
            )
            if changes.get("status") == "inactive":
                # Signed out everywhere; open links void.
                await security.end_sessions_of(session, account_id)
                await session.execute(
                    update(t)
                    .where(t.c.account_id == account_id, t.c.used_at.is_(None))
                    .values(revoked_at=now)
                )
            await record_audit(
                session,
                now,
                actor=principal.subject,
                action="account-changed",
                account_id=account_id,
                detail={"changes": changes, "before": {"status": account.status}},
            )
        return await account_out(session, await accounts.account_by_id(session, account_id))


@router.post(
    "/accounts/{account_id}/access-mail",
    tags=["accounts"],
    status_code=202,
    summary="Send the access mail (first) or a new activation link (renewal) now",
)
async def send_access_mail(
    request: Request, account_id: str, body: AccessMailIn, principal: Staff
) -> MailQueued:
    portal = _portal(request)
    async with portal.db.unit_of_work() as session:
        account = await accounts.account_by_id(session, account_id)
        client = await accounts.client_by_id(session, account.client_id)
        job = None
        if body.project_no is not None:
            job = await jobs.job_by_no(session, body.project_no)
            if job is None or job.client_id != client.id:
                raise NotFound(f"no job {body.project_no!r} of this client", code="job-not-found")
        to, name = account.email, None
        if body.contact_no is not None:
            c = models.contacts
            contact = (
                await session.execute(
                    select(c).where(c.c.client_id == client.id, c.c.contact_no == body.contact_no)
                )
            ).first()
            if contact is None:
                raise NotFound(f"no contact {body.contact_no!r}", code="contact-not-found")
            to, name = contact.email, contact.name
        elif job is not None:
            recipient = await mails.choose_recipient(session, client, contact_id=job.contact_id)
            if recipient is not None:
                to, name = recipient.email, recipient.name
        mail_id = await accounts.send_access_mail(
            portal,
            session,
            account,
            kind=body.kind,
            actor=principal.subject,
            job=job,
            to=to,
            recipient_name=name,
            copy_to=body.copy_to,
        )
    return MailQueued(mail_id=mail_id, to=to)


# ---------------------------------------------------------------------- audit and scanner


@router.get("/audit", tags=["audit"], summary="Audit trail, newest first")
async def list_audit(
    request: Request,
    _: Staff,
    action: str | None = None,
    account_id: str | None = None,
    job_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AuditOut]:
    t = models.audit
    query = select(t).order_by(t.c.id.desc())
    if action is not None:
        query = query.where(t.c.action == action)
    if account_id is not None:
        query = query.where(t.c.account_id == account_id)
    if job_id is not None:
        query = query.where(t.c.job_id == job_id)
    async with _portal(request).db.sessionmaker() as session:
        rows = (await session.execute(query.limit(limit).offset(offset))).all()
    return [
        AuditOut(
            id=r.id,
            at=_ts(r.at),
            actor=r.actor,
            action=r.action,
            account_id=r.account_id,
            job_id=r.job_id,
            ip=r.ip,
            detail=r.detail,
        )
        for r in rows
    ]


@router.get("/scanner", tags=["audit"], summary="Whether the virus scanner (clamd) answers")
async def scanner_state(request: Request, _: Staff) -> ScannerOut:
    portal = _portal(request)
    scanner = portal.scanner
    if scanner is None:
        return ScannerOut(
            configured=False,
            address=None,
            reachable=False,
            version=None,
            error="no scanner configured (CLAMD_HOST / CLAMD_SOCKET): uploads are refused",
        )
    try:
        version = await scanner.version()
        return ScannerOut(
            configured=True, address=scanner.address, reachable=True, version=version, error=None
        )
    except ScannerUnavailable as exc:
        return ScannerOut(
            configured=True, address=scanner.address, reachable=False, version=None, error=str(exc)
        )


async def folder_counts(session: AsyncSession, job_ids: list[str]) -> dict[str, dict[str, int]]:
    f = models.files
    counts: dict[str, dict[str, int]] = {j: dict.fromkeys(FOLDERS, 0) for j in job_ids}
    if not job_ids:
        return counts
    rows = (
        await session.execute(
            select(f.c.job_id, f.c.folder, func.count())
            .where(f.c.job_id.in_(job_ids))
            .group_by(f.c.job_id, f.c.folder)
        )
    ).all()
    for job_id, folder, n in rows:
        counts[job_id][folder] = int(n)
    return counts
