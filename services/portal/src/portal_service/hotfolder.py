"""The internal hotfolder: pulling uploads in with the job data as XML, and deleting old ones.

**Pull** (task ``pull-hotfolder``): for every job of a client with ``create_hotfolder`` that has
files in Incoming not yet pulled, per job:

1. copy each file into ``<hotfolder>/<client no>/<project no>/`` (through a temporary name and a
   rename, so the hotfolder never shows half a file; an existing name gets `` (2)`` ...);
2. write ``<project no>.xml`` there: the job data and every file pulled so far (built with
   ``xml.etree.ElementTree``, which escapes all text; characters XML cannot carry are dropped);
3. in one transaction: move the files from Incoming to In progress in the portal (the agency
   has them now; the customer sees them there), mark them pulled, queue the internal mail
   (``hotfolder-internal``, to ``PORTAL_INTERNAL_MAIL_TO``) with the XML attached, record a
   ``portal.files_pulled.v1`` event.

A crash between the copy and the commit copies again on the next run (same name, same bytes,
the rename replaces it); nothing is lost. Each job is one item of the task's execution, so a
failed job is visible and can be retried alone.

**Purge** (task ``purge-hotfolders``): a job's hotfolder directory is deleted
``hotfolder_delete_days`` days after its last pull (or its creation), for clients where that is
not 0. A hotfolder path leading out of the hotfolder root (e.g. a symlink put in its place) is
refused, so the item fails visibly; symlinks inside it are removed, never followed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from mesh_common.mail import Attachment
from mesh_contracts.portal import FileInfo, FilesPulled
from sqlalchemy import select, update

from portal_service import accounts, mails, models
from portal_service.core import Portal, epoch_dt, hotfolder_path, log, record_audit
from portal_service.names import contained, numbered
from portal_service.uploads import free_names

# Characters XML 1.0 cannot represent at all.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
XML_VERSION = "1"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        value = epoch_dt(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return _NOT_XML.sub("", str(value))


def _el(parent: ET.Element, tag: str, text: Any = None, **attrs: Any) -> ET.Element:
    node = ET.SubElement(parent, tag, {k: _text(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        node.text = _text(text)
    return node


def job_xml(
    *,
    job: Any,
    client: Any,
    tickets: list[Any],
    recipient: mails.Recipient | None,
    username: str | None,
    hotfolder: Path,
    files: list[dict[str, Any]],
    pulled_at: float,
) -> bytes:
    """The job data as an XML document (UTF-8, with declaration)."""
    root = ET.Element("portalJob", {"version": XML_VERSION})
    project = _el(root, "project", no=job.project_no, id=job.id)
    _el(project, "description", job.description)
    _el(project, "dueDate", job.due_date)
    tickets_el = _el(project, "tickets")
    for t in tickets:
        ticket = _el(tickets_el, "ticket", no=t.ticket_no)
        _el(ticket, "description", t.description)
        _el(ticket, "dueDate", t.due_date)
    client_el = _el(root, "client", no=client.client_no)
    _el(client_el, "name", client.name)
    _el(client_el, "email", client.email)
    if recipient is not None:
        _el(root, "contact", recipient.name, email=recipient.email, source=recipient.source)
    _el(root, "portalUser", username)
    _el(root, "hotfolder", str(hotfolder))
    _el(root, "pulledAt", pulled_at)
    files_el = _el(root, "files", count=len(files))
    for f in files:
        _el(
            files_el,
            "file",
            name=f["name"],
            size=f["size"],
            sha256=f["sha256"],
            uploadedAt=f["uploaded_at"],
            uploadedBy=f["uploaded_by"],
            pulledAt=f["pulled_at"],
        )
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def _copy_into(source: Path, directory: Path, name: str) -> str:
    """Copy ``source`` into ``directory`` as ``name`` (or ``name (2)`` ... if another file has
    that name), atomically by rename; returns the name used."""
    for n in range(1, 10_000):
        candidate = numbered(name, n)
        target = contained(directory, candidate)
        if target.exists() and not _same_size(target, source):
            continue
        tmp = contained(directory, f".{uuid.uuid4().hex}.tmp")
        try:
            with source.open("rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return candidate
    raise RuntimeError(f"too many files named {name!r} in {directory}")


def _same_size(a: Path, b: Path) -> bool:
    # A file of the same name and size is taken to be the copy of an interrupted earlier pull.
    try:
        return a.stat().st_size == b.stat().st_size
    except OSError:
        return False


async def jobs_to_pull(portal: Portal) -> list[tuple[str, str]]:
    """(job id, project no) of jobs with unpulled Incoming files of hotfolder clients."""
    j, f, c = models.jobs, models.files, models.clients
    async with portal.db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(j.c.id, j.c.project_no)
                .join(c, c.c.id == j.c.client_id)
                .where(
                    c.c.create_hotfolder.is_(True),
                    j.c.id.in_(
                        select(f.c.job_id).where(f.c.folder == "incoming", f.c.pulled_at.is_(None))
                    ),
                )
                .order_by(j.c.project_no)
            )
        ).all()
    return [(r.id, r.project_no) for r in rows]


async def pull_job(portal: Portal, job_id: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Pull one job's new Incoming files (see the module docstring); returns a summary."""
    j, f, c = models.jobs, models.files, models.clients
    async with portal.db.sessionmaker() as session:
        job = (await session.execute(select(j).where(j.c.id == job_id))).one()
        client = (await session.execute(select(c).where(c.c.id == job.client_id))).one()
        new = (
            await session.execute(
                select(f)
                .where(f.c.job_id == job_id, f.c.folder == "incoming", f.c.pulled_at.is_(None))
                .order_by(f.c.uploaded_at, f.c.name)
            )
        ).all()
    if not new:
        return {"files": 0}
    directory = hotfolder_path(portal.settings.hotfolder_dir, client.client_no, job.project_no)
    if dry_run:
        return {"files": len(new), "hotfolder": str(directory), "dry_run": True}
    directory.mkdir(parents=True, exist_ok=True)
    now = portal.now()
    pulled: list[dict[str, Any]] = []
    for row in new:
        source = portal.storage.blob(job.id, row.id)
        hot_name = _copy_into(source, directory, row.name)
        pulled.append(dict(row._mapping) | {"hot_name": hot_name, "pulled_at": now})

    async with portal.db.unit_of_work() as session:
        tickets = (
            await session.execute(
                select(models.job_tickets)
                .where(models.job_tickets.c.job_id == job_id)
                .order_by(models.job_tickets.c.ticket_no)
            )
        ).all()
        earlier = (
            await session.execute(
                select(f)
                .where(f.c.job_id == job_id, f.c.pulled_at.is_not(None))
                .order_by(f.c.pulled_at, f.c.name)
            )
        ).all()
        recipient = await mails.choose_recipient(session, client, contact_id=job.contact_id)
        account = await accounts.account_of_client(session, client.id)
        username = account.username if account is not None else None
        moved = await free_names(session, job.id, "in_progress", [p["name"] for p in pulled])
        for p, name in zip(pulled, moved, strict=True):
            await session.execute(
                update(f)
                .where(f.c.id == p["id"])
                .values(folder="in_progress", name=name, pulled_at=now)
            )
            p["name"] = name
        listed = [dict(r._mapping) for r in earlier] + [p | {"name": p["hot_name"]} for p in pulled]
        xml = job_xml(
            job=job,
            client=client,
            tickets=list(tickets),
            recipient=recipient,
            username=username,
            hotfolder=directory,
            files=listed,
            pulled_at=now,
        )
        xml_name = f"{job.project_no}.xml"
        _write_atomic(contained(directory, xml_name), xml)
        await session.execute(update(j).where(j.c.id == job.id).values(last_pulled_at=now))
        files_data = [
            {"name": p["hot_name"], "size": p["size"], "folder": "in_progress"} for p in pulled
        ]
        data = mails.context(
            portal,
            client=client,
            username=username,
            recipient=recipient,
            job=job,
            files=files_data,
            hotfolder=str(directory),
        )
        mail_id = await mails.queue(
            portal,
            session,
            mails.HOTFOLDER,
            data,
            to=portal.settings.portal_internal_mail_to,
            ref=job.project_no,
            attachments=[
                Attachment(
                    filename=mails.attachment_name(job.project_no),
                    content_type="application/xml",
                    data=xml,
                )
            ],
        )
        await record_audit(
            session,
            now,
            actor="hotfolder",
            action="files-pulled",
            job_id=job.id,
            detail={"files": [p["hot_name"] for p in pulled], "mail_id": mail_id},
        )
        if portal.outbox is not None:
            await portal.outbox.add(
                session,
                FilesPulled(
                    job_id=job.id,
                    project_no=job.project_no,
                    client_no=client.client_no,
                    hotfolder=str(directory),
                    xml_file=xml_name,
                    files=[
                        FileInfo(
                            name=p["hot_name"],
                            size=p["size"],
                            sha256=p["sha256"],
                            folder="in_progress",
                        )
                        for p in pulled
                    ],
                    at=portal.now_dt(),
                ),
            )
    return {"files": len(pulled), "hotfolder": str(directory), "mail_id": mail_id}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


async def hotfolders_to_purge(portal: Portal) -> list[tuple[str, str, str, float]]:
    """(job id, client no, project no, since) of hotfolders past their client's days."""
    j, c = models.jobs, models.clients
    now = portal.now()
    async with portal.db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    j.c.id,
                    j.c.project_no,
                    j.c.hotfolder_created_at,
                    j.c.last_pulled_at,
                    c.c.client_no,
                    c.c.hotfolder_delete_days,
                )
                .join(c, c.c.id == j.c.client_id)
                .where(
                    j.c.hotfolder_created_at.is_not(None),
                    j.c.hotfolder_deleted_at.is_(None),
                    c.c.hotfolder_delete_days > 0,
                )
            )
        ).all()
    due = []
    for r in rows:
        since = max(r.hotfolder_created_at, r.last_pulled_at or 0.0)
        if since + r.hotfolder_delete_days * 86400 <= now:
            due.append((r.id, r.client_no, r.project_no, since))
    return due


async def purge_hotfolder(
    portal: Portal, job_id: str, client_no: str, project_no: str, *, dry_run: bool = False
) -> bool:
    """Delete one job's hotfolder directory; True if it existed. A path that leads out of the
    hotfolder root (a symlink put in its place) is refused (``InvalidFileName``), and
    ``shutil.rmtree`` does not follow symlinks inside the directory."""
    directory = hotfolder_path(portal.settings.hotfolder_dir, client_no, project_no)
    existed = directory.is_dir()
    if dry_run:
        return existed
    if existed:
        shutil.rmtree(directory)
    async with portal.db.unit_of_work() as session:
        now = portal.now()
        j = models.jobs
        await session.execute(update(j).where(j.c.id == job_id).values(hotfolder_deleted_at=now))
        await record_audit(
            session,
            now,
            actor="hotfolder",
            action="hotfolder-deleted",
            job_id=job_id,
            detail={"path": str(directory), "existed": existed},
        )
    log.info("hotfolder %s deleted", directory)
    return existed
