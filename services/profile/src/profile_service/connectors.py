"""The connector framework hosted by profile: Brevo contact sync and the Excel participant import.

Both work on the participants of the course database (coursedb), the data profile looks after:

- **Task ``brevo-contact-sync``** (hourly, or "run now" / dry run / retry failed over
  ``/tasks``): reads the participants, maps each through the stored mapping definition
  ``brevo-contacts`` (default below; operators version their own over ``/mappings``), compares the
  result with the content hash the sync markers kept from the last successful sync, and creates
  or updates only the changed contacts in Brevo (connection ``brevo``, see ``/connections``). The
  Brevo contact id is kept in the link table (system ``brevo``, tenant = connection name), each
  participant's outcome in the sync markers and in the execution's item log. A dry run reports
  the diff (which fields would change; values are left out of the log: they are personal data)
  and writes nothing. Participants sharing an e-mail address (families) are one Brevo contact:
  the lowest id wins, the others are skipped with a remark.
- **``POST /imports/participants``** (staff): an .xlsx with a header row, mapped by the stored
  definition ``participants-xlsx``, validated per row, written to coursedb in one transaction.
- **Notifications**: ``PUT /notifications/brevo-contact-sync`` (admin) mails recipients when an
  execution succeeds / fails / partly fails, through profile's mail outbox (``/mail/outbox``;
  ``SMTP_*`` settings, default: the embedded mail capture).

Task params (``POST /tasks/brevo-contact-sync/run`` ``{"params": {...}}``): ``connection``
(default ``brevo``), ``mapping`` (default ``brevo-contacts``), ``list_ids`` (Brevo lists to add
contacts to, default none). This module must not change participants except through the import.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from coursedb.engine import create_engine as create_coursedb_engine
from coursedb.schema import participants
from fastapi import APIRouter, Request
from mesh_common.app import Hook, ServiceRuntime
from mesh_common.connectors import (
    Connectors,
    MarkerUpdate,
    TaskNotifier,
    connector_hooks,
    connector_routers,
    diff_records,
    get_connectors,
    mail_delivery,
    notification_router,
    report_dry_run,
)
from mesh_common.connectors.brevo import BrevoClient, BrevoError
from mesh_common.connectors.excel import (
    ExcelImport,
    ImportedRow,
    RowRejected,
    excel_import_router,
)
from mesh_common.mail import MailSettings, mail_hooks, mail_router
from mesh_common.tasks import Interval, TaskContext, TaskRegistry, task_hooks, task_router
from pydantic import BaseModel, EmailStr, Field, field_validator
from sqlalchemy import and_, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from profile_service import models

SYSTEM, ENTITY = "brevo", "contact"
SYNC_TASK = "brevo-contact-sync"
SYNC_EVERY_SECONDS = 3600.0

PARTICIPANT_FIELDS = [
    "id",
    "salutation",
    "academic_title",
    "first_name",
    "last_name",
    "birth_date",
    "street",
    "postcode",
    "city",
    "country",
    "email",
    "phone",
    "updated_at",
]

BREVO_CONTACTS: dict[str, Any] = {
    "name": "brevo-contacts",
    "description": "Teilnehmende (coursedb) → Brevo-Kontakte",
    "filter": {"op": "exists", "field": "email"},
    "tables": {"anrede": {"ms": "Frau", "mr": "Herr", "mx": ""}},
    "fields": [
        {
            "target": "email",
            "source": "email",
            "required": True,
            "transform": [{"op": "trim"}, {"op": "lower"}],
        },
        {"target": "attributes.FIRSTNAME", "source": "first_name"},
        {"target": "attributes.LASTNAME", "source": "last_name"},
        {
            "target": "attributes.ANREDE",
            "source": "salutation",
            "omit_if_null": True,
            "transform": [
                {"op": "lookup", "table": "anrede", "on_missing": "default", "default": ""}
            ],
        },
        {"target": "attributes.TITEL", "source": "academic_title", "omit_if_null": True},
        {"target": "attributes.PLZ", "source": "postcode", "omit_if_null": True},
        {"target": "attributes.ORT", "source": "city", "omit_if_null": True},
        {"target": "attributes.LAND", "source": "country", "omit_if_null": True},
        {
            "target": "attributes.GEBURTSTAG",
            "source": "birth_date",
            "omit_if_null": True,
            "transform": [{"op": "date"}],
        },
    ],
}

PARTICIPANTS_XLSX: dict[str, Any] = {
    "name": "participants-xlsx",
    "description": "Excel-Import von Teilnehmenden (Kopfzeile in Zeile 1)",
    "tables": {"anrede": {"Frau": "ms", "Herr": "mr", "Divers": "mx", "frau": "ms", "herr": "mr"}},
    "fields": [
        {
            "target": "salutation",
            "source": "Anrede",
            "omit_if_null": True,
            "transform": [{"op": "lookup", "table": "anrede", "on_missing": "error"}],
        },
        {"target": "academic_title", "source": "Titel", "omit_if_null": True},
        {"target": "first_name", "source": "Vorname", "required": True},
        {"target": "last_name", "source": "Nachname", "required": True},
        {
            "target": "birth_date",
            "source": "Geburtsdatum",
            "omit_if_null": True,
            "transform": [{"op": "date", "parse": "%d.%m.%Y"}],
        },
        {"target": "street", "source": "Straße", "omit_if_null": True},
        {"target": "postcode", "source": "PLZ", "omit_if_null": True},
        {"target": "city", "source": "Ort", "omit_if_null": True},
        {
            "target": "country",
            "source": "Land",
            "transform": [{"op": "default", "value": "DE"}, {"op": "upper"}],
        },
        {"target": "email", "source": "E-Mail", "omit_if_null": True},
        {"target": "phone", "source": "Telefon", "omit_if_null": True},
    ],
}


class ParticipantRow(BaseModel):
    """One participant row of an Excel import, as coursedb takes it."""

    salutation: str | None = Field(default=None, pattern=r"^(ms|mr|mx)$")
    academic_title: str | None = Field(default=None, max_length=20)
    first_name: str = Field(min_length=1, max_length=80)
    last_name: str = Field(min_length=1, max_length=80)
    birth_date: dt.date | None = None
    street: str | None = Field(default=None, max_length=120)
    postcode: str | None = Field(default=None, max_length=10)
    city: str | None = Field(default=None, max_length=80)
    country: str = Field(default="DE", pattern=r"^[A-Z]{2}$")
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40)

    @field_validator("postcode", "phone", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("birth_date")
    @classmethod
    def _plausible(cls, value: dt.date | None) -> dt.date | None:
        if value is not None and not dt.date(1900, 1, 1) <= value <= dt.date.today():
            raise ValueError("birth date is not plausible")
        return value


@dataclass
class CourseDb:
    reader: AsyncEngine
    writer: AsyncEngine


def _hub(runtime: ServiceRuntime) -> Connectors:
    hub = runtime.extras["connectors"]
    assert isinstance(hub, Connectors)
    return hub


def _coursedb(runtime: ServiceRuntime) -> CourseDb:
    found = runtime.extras["connectors_coursedb"]
    assert isinstance(found, CourseDb)
    return found


async def brevo_contact_sync(runtime: ServiceRuntime, ctx: TaskContext) -> None:
    hub, db = _hub(runtime), _coursedb(runtime)
    conn_name = str(ctx.params.get("connection", "brevo"))
    list_ids = [int(i) for i in ctx.params.get("list_ids", [])]
    settings = await hub.connections.resolve(conn_name, kind="brevo")
    mapping = await hub.mappings.compiled(str(ctx.params.get("mapping", "brevo-contacts")))
    async with db.reader.connect() as conn:
        result = await conn.stream(
            select(*(participants.c[f] for f in PARTICIPANT_FIELDS)).order_by(participants.c.id)
        )
        rows = [dict(r._mapping) async for r in result]

    desired: dict[str, dict[str, Any]] = {}
    owner_of: dict[str, str] = {}
    problems: list[MarkerUpdate] = []
    for row in rows:
        key = str(row["id"])
        mapped = mapping.apply(row)
        if mapped.skipped:
            continue
        email = (mapped.record or {}).get("email")
        if mapped.errors or not isinstance(email, str):
            if ctx.wanted(key):
                message = "; ".join(f"{e.field}: {e.message}" for e in mapped.errors)
                problems.append(MarkerUpdate(key, "failed", message))
                await ctx.item(key, "map", "failed", error=message)
            continue
        if email in owner_of:  # the lowest id owns a shared address (rows come sorted by id)
            if ctx.wanted(key):
                remark = f"e-mail address shared with participant {owner_of[email]}"
                problems.append(MarkerUpdate(key, "skipped", remark))
                await ctx.item(key, "skip", "skipped", error=remark)
            continue
        owner_of[email] = key
        if ctx.wanted(key):
            assert mapped.record is not None
            desired[key] = mapped.record

    hashes = await hub.markers.hashes(SYSTEM, ENTITY, tenant=conn_name)
    diff = diff_records(desired, hashes=hashes)
    links = await hub.links.mapping(SYSTEM, ENTITY, tenant=conn_name)
    # Contacts we created or adopted whose participant is no longer exported (deleted in the
    # coursedb, or filtered out by the mapping, e.g. no newsletter consent any more). Records
    # that failed to map or share an address are not "gone": their contacts stay.
    held = {p.local_key for p in problems}
    gone = sorted(
        (k for k in links if k not in desired and k not in held and ctx.wanted(k)), key=int
    )
    deletions = await _deletions_allowed(ctx, gone, len(links))
    if ctx.dry_run:
        await report_dry_run(ctx, diff, redact=True)
        for key in deletions:
            await ctx.item(key, "delete", "skipped", detail={"dry_run": True})
        return
    if problems:
        await hub.markers.mark_many(
            SYSTEM, ENTITY, problems, tenant=conn_name, execution_id=ctx.execution_id
        )
    unchanged = [MarkerUpdate(c.key, "ok", content_hash=c.hash) for c in diff.unchanged]
    await hub.markers.mark_many(
        SYSTEM, ENTITY, unchanged, tenant=conn_name, execution_id=ctx.execution_id
    )
    for change in diff.unchanged:
        await ctx.item(change.key, "unchanged", "unchanged")
    async with BrevoClient.from_settings(settings) as brevo:
        for key in deletions:
            ctx.check_cancelled()
            try:
                await brevo.delete_contact(links[key], identifier_type="contact_id")
            except BrevoError as exc:
                if not exc.is_not_found:  # already gone in Brevo: the outcome we want
                    remark = f"{exc.code}: {exc.message}"
                    await hub.markers.mark(
                        SYSTEM,
                        ENTITY,
                        key,
                        "failed",
                        tenant=conn_name,
                        remark=remark,
                        execution_id=ctx.execution_id,
                    )
                    await ctx.item(key, "delete", "failed", error=remark)
                    continue
            await hub.links.unlink(SYSTEM, ENTITY, key, tenant=conn_name)
            await hub.markers.forget(
                SYSTEM,
                ENTITY,
                [key],
                tenant=conn_name,
                remark="contact deleted in Brevo: the participant is no longer exported",
                execution_id=ctx.execution_id,
            )
            await ctx.item(key, "delete", "ok", detail={"brevo_id": links[key]})
        for change in diff.pending():
            ctx.check_cancelled()
            assert change.record is not None
            try:
                contact_id, action = await _push(
                    brevo, links.get(change.key), change.record, change.key, list_ids
                )
            except BrevoError as exc:
                remark = f"{exc.code}: {exc.message}"
                await hub.markers.mark(
                    SYSTEM,
                    ENTITY,
                    change.key,
                    "failed",
                    tenant=conn_name,
                    remark=remark,
                    execution_id=ctx.execution_id,
                )
                await ctx.item(change.key, change.action, "failed", error=remark)
                continue
            await hub.links.link(SYSTEM, ENTITY, change.key, str(contact_id), tenant=conn_name)
            await hub.markers.mark(
                SYSTEM,
                ENTITY,
                change.key,
                "ok",
                tenant=conn_name,
                content_hash=change.hash,
                execution_id=ctx.execution_id,
            )
            await ctx.item(change.key, action, "ok", detail={"brevo_id": contact_id})


async def _deletions_allowed(ctx: TaskContext, gone: list[str], linked: int) -> list[str]:
    """The contacts to delete, unless the run's params forbid it (``delete_missing``: false)
    or it looks like an accident: more than ``max_delete_fraction`` (default 0.5) of all
    linked contacts and more than ``mass_delete_min`` (default 10) at once -- an emptied or
    misread course database, a mapping filter gone wrong. Then nothing is deleted and the run
    says so (one failed item ``deletions``); ``allow_mass_delete``: true confirms it."""
    if not gone or not bool(ctx.params.get("delete_missing", True)):
        return []
    fraction = float(ctx.params.get("max_delete_fraction", 0.5))
    if (
        len(gone) > int(ctx.params.get("mass_delete_min", 10))
        and len(gone) > fraction * linked
        and not bool(ctx.params.get("allow_mass_delete", False))
    ):
        await ctx.item(
            "deletions",
            "delete",
            "failed",
            error=f"refused to delete {len(gone)} of {linked} Brevo contacts at once (more "
            f"than {fraction:.0%}); check the course database and the mapping filter, then run "
            "with allow_mass_delete: true",
        )
        return []
    return gone


async def _push(
    brevo: BrevoClient,
    contact_id: str | None,
    record: dict[str, Any],
    key: str,
    list_ids: list[int],
) -> tuple[int, str]:
    """Update the linked contact, else create one (or adopt the contact that already has this
    e-mail address). Returns the Brevo id and what was done."""
    attributes = dict(record.get("attributes") or {})
    email = str(record["email"])
    if contact_id is not None:
        try:
            await brevo.update_contact(
                contact_id,
                identifier_type="contact_id",
                attributes={**attributes, "EMAIL": email},
                list_ids=list_ids or None,
            )
            return int(contact_id), "update"
        except BrevoError as exc:
            if not exc.is_not_found:
                raise
            # Deleted in Brevo meanwhile: create it again below.
    try:
        new_id = await brevo.create_contact(
            email=email, attributes=attributes, list_ids=list_ids or None
        )
    except BrevoError as exc:
        if not exc.is_duplicate:
            raise
        existing = await brevo.get_contact(email, identifier_type="email_id")
        if existing is None:
            raise
        await brevo.update_contact(
            existing["id"],
            identifier_type="contact_id",
            attributes=attributes,
            list_ids=list_ids or None,
        )
        return int(existing["id"]), "adopt"
    if new_id is None:  # pragma: no cover - only with updateEnabled, which we do not send
        raise BrevoError(500, "no_id", f"Brevo created participant {key} without an id")
    return new_id, "create"


async def _insert_participants(
    conn: AsyncConnection, rows: list[ImportedRow[ParticipantRow]]
) -> None:
    """Write the imported rows; a person already in coursedb (same name and e-mail or birth
    date) rejects the import at that row, so importing a file twice does not double anyone."""
    for r in rows:
        p = r.record
        same_person = and_(
            func.lower(participants.c.first_name) == p.first_name.lower(),
            func.lower(participants.c.last_name) == p.last_name.lower(),
        )
        ident = []
        if p.email:
            ident.append(func.lower(participants.c.email) == str(p.email).lower())
        if p.birth_date:
            ident.append(participants.c.birth_date == p.birth_date)
        if ident:
            existing = (
                await conn.execute(
                    select(participants.c.id).where(same_person, or_(*ident)).limit(1)
                )
            ).scalar_one_or_none()
            if existing is not None:
                raise RowRejected(
                    r.row, f"already in the course database as participant {existing}"
                )
        values = p.model_dump(exclude_none=True)
        if "email" in values:
            values["email"] = str(values["email"]).lower()
        await conn.execute(insert(participants).values(**values))


@dataclass
class ConnectorParts:
    routers: list[APIRouter]
    on_startup: list[Hook]
    on_shutdown: list[Hook]
    registry: TaskRegistry


def build(holder: dict[str, ServiceRuntime]) -> ConnectorParts:
    """Routers, tasks and hooks of the connector framework for the profile app factory
    (``holder["runtime"]`` is set by the app's first startup hook)."""
    registry = TaskRegistry()

    @registry.task(SYNC_TASK, schedule=Interval(SYNC_EVERY_SECONDS), kind="brevo")
    async def sync(ctx: TaskContext) -> None:
        """Participants → Brevo contacts (changed ones only)."""
        await brevo_contact_sync(holder["runtime"], ctx)

    start_hub, stop_hub = connector_hooks(
        models.connectors, sources={"participants": PARTICIPANT_FIELDS}
    )
    mail_stop: list[Hook] = []

    async def start_mail(runtime: ServiceRuntime) -> None:
        # The service settings if they carry SMTP_* / MAIL_*, else those variables alone.
        chosen = runtime.settings if isinstance(runtime.settings, MailSettings) else MailSettings()
        start_sender, stop_sender = mail_hooks(models.mail, settings=chosen)
        mail_stop.append(stop_sender)
        await start_sender(runtime)

    async def stop_mail(runtime: ServiceRuntime) -> None:
        while mail_stop:
            await mail_stop.pop()(runtime)

    notifier: dict[str, TaskNotifier] = {}

    async def notify(execution: dict[str, Any]) -> None:
        if "n" in notifier:
            await notifier["n"](execution)

    start_tasks, stop_tasks = task_hooks(registry, models.tasks, on_finish=notify)

    async def start(runtime: ServiceRuntime) -> None:
        holder.setdefault("runtime", runtime)
        url = runtime.settings.coursedb_url
        reader = create_coursedb_engine(url)
        writer = (
            create_coursedb_engine(url, sqlite_begin="IMMEDIATE")
            if reader.dialect.name == "sqlite"
            else reader
        )
        runtime.extras["connectors_coursedb"] = CourseDb(reader, writer)
        hub = _hub(runtime)
        await hub.mappings.ensure(BREVO_CONTACTS, source="participants")
        await hub.mappings.ensure(PARTICIPANTS_XLSX)
        notifier["n"] = TaskNotifier(
            runtime.db,
            models.connectors,
            models.tasks,
            mail_delivery(runtime.db, models.mail),
            service=runtime.settings.service_name,
        )

    async def stop(runtime: ServiceRuntime) -> None:
        db = runtime.extras.pop("connectors_coursedb", None)
        if isinstance(db, CourseDb):
            await db.reader.dispose()
            if db.writer is not db.reader:
                await db.writer.dispose()

    async def participant_import(request: Request) -> ExcelImport[Any]:
        runtime: ServiceRuntime = request.app.state.runtime
        mapping = await _hub(runtime).mappings.compiled("participants-xlsx")
        return ExcelImport(
            mapping,
            ParticipantRow,
            _insert_participants,
            _coursedb(runtime).writer,
            unique_by=_person_key,
            unique_label="person",
        )

    routers = [
        *connector_routers(),
        task_router(),
        notification_router(
            lambda request: get_connectors(request).notifications,
            known_tasks=lambda request: list(registry.specs),
        ),
        mail_router(),
        excel_import_router(
            "/imports/participants",
            participant_import,
            summary="Import participants from an Excel file (.xlsx)",
        ),
    ]
    return ConnectorParts(
        routers=routers,
        on_startup=[start_hub, start_mail, start, start_tasks],
        # create_service_app runs these in reverse: tasks stop first, the hub last
        on_shutdown=[stop_hub, stop_mail, stop, stop_tasks],
        registry=registry,
    )


def _person_key(p: ParticipantRow) -> tuple[str, str, str]:
    return (p.first_name.lower(), p.last_name.lower(), str(p.email or p.birth_date or ""))


__all__ = ["ConnectorParts", "ParticipantRow", "build"]
