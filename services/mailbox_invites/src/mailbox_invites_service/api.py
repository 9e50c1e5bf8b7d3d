"""HTTP API of mailbox-invites. Thin: each endpoint opens a unit of work and calls the service.

- admin: technical users (with the connection check), rooms, room groups, room mailboxes
- staff: read everything, recycle errored invitations, initialise (preview first), reset one
- service (the room-booking system) or staff: put and delete events
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from mesh_common.app import ServiceRuntime
from mesh_common.auth import Principal, require
from mesh_common.errors import Invalid
from mesh_contracts.mailbox_invites import RoomEventData
from pydantic import ValidationError

from mailbox_invites_service.schemas import (
    CheckOut,
    EventOutcome,
    InitialiseIn,
    InitialiseOut,
    MailboxIn,
    MailboxPatch,
    RecycleOut,
    RoomEventIn,
    RoomGroupIn,
    RoomIn,
    StatusFilter,
    TechnicalUserIn,
    TechnicalUserPatch,
)
from mailbox_invites_service.service import Invites, writing
from mailbox_invites_service.settings import Settings
from mailbox_invites_service.transport import check_imap, check_smtp

Admin = Annotated[Principal, Depends(require("admin"))]
Staff = Annotated[Principal, Depends(require("staff"))]
Booking = Annotated[Principal, Depends(require("service", "staff"))]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]

router = APIRouter()


def _runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


@asynccontextmanager
async def invites(request: Request, principal: Principal) -> AsyncIterator[Invites]:
    runtime = _runtime(request)
    settings = runtime.settings
    assert isinstance(settings, Settings)
    unit = runtime.db.unit_of_work() if request.method == "GET" else writing(runtime.db)
    async with unit as session:
        yield Invites(
            session,
            settings=settings,
            now=dt.datetime.now(dt.UTC),
            actor=principal.subject,
            outbox=runtime.outbox,
            box=runtime.extras["secret_box"],
        )


# --------------------------------------------------------------------------- technical users

users = APIRouter(prefix="/technical-users", tags=["technical users"])


@users.get("", summary="Technical users (passwords shown only as set / not set)")
async def list_users(request: Request, p: Admin) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.list_technical_users()


@users.post("", status_code=201, summary="Create a technical user (SMTP + IMAP)")
async def create_user(request: Request, body: TechnicalUserIn, p: Admin) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.create_technical_user(body.plain())


@users.get("/{user_id}", summary="One technical user")
async def get_user(request: Request, user_id: int, p: Admin) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.technical_user_view(user_id)


@users.patch("/{user_id}", summary="Change a technical user (partial; passwords write-only)")
async def patch_user(
    request: Request, user_id: int, body: TechnicalUserPatch, p: Admin
) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.update_technical_user(user_id, body.changes())


@users.post(
    "/{user_id}/check",
    summary="Connection check: SMTP (connect, TLS, login) and IMAP (connect, TLS, login, folder)",
)
async def check_user(request: Request, user_id: int, p: Admin) -> CheckOut:
    async with invites(request, p) as svc:
        account = await svc.account(user_id)
    smtp, imap = await asyncio.gather(check_smtp(account), check_imap(account))
    async with invites(request, p) as svc:
        result = await svc.record_check(user_id, smtp, imap)
    return CheckOut.model_validate(result)


@users.get("/{user_id}/mail-log", summary="Mail set aside and checks, outside any invitation")
async def user_mail_log(
    request: Request, user_id: int, p: Admin, limit: Limit = 100, offset: Offset = 0
) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.mail_log(user_id, limit=limit, offset=offset)


# --------------------------------------------------------------------------- rooms and groups

rooms = APIRouter(tags=["rooms"])


@rooms.put("/rooms/{room_id}", summary="Create or rename a room of the booking system")
async def put_room(request: Request, room_id: str, body: RoomIn, p: Admin) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.put_room(room_id, body.name)


@rooms.get("/rooms", summary="Rooms, each with its room mailbox (if any) and whether it is active")
async def list_rooms(request: Request, p: Staff) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.list_rooms()


@rooms.put("/room-groups/{group_id}", summary="Create or replace a room group")
async def put_group(request: Request, group_id: str, body: RoomGroupIn, p: Admin) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.put_group(group_id, body.name, body.room_ids)


@rooms.get("/room-groups", summary="Room groups with their rooms' mailbox indicators")
async def list_groups(request: Request, p: Staff) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.list_groups()


@rooms.get(
    "/room-groups/{group_id}",
    summary="One room group: its rooms, each marked with its mailbox (active or not, link)",
)
async def get_group(request: Request, group_id: str, p: Staff) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.group_view(group_id)


# --------------------------------------------------------------------------- mailboxes

boxes = APIRouter(prefix="/mailboxes", tags=["room mailboxes"])


@boxes.get("", summary="Room mailboxes with invitation counts per status")
async def list_mailboxes(request: Request, p: Staff) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.list_mailboxes()


@boxes.post("", status_code=201, summary="Link a room to its room mailbox")
async def create_mailbox(request: Request, body: MailboxIn, p: Admin) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.create_mailbox(body.model_dump())


@boxes.get("/{mailbox_id}", summary="One room mailbox")
async def get_mailbox(request: Request, mailbox_id: int, p: Staff) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.mailbox_view(mailbox_id)


@boxes.patch(
    "/{mailbox_id}",
    summary="Change the technical user or include_blocks (nothing else can change)",
)
async def patch_mailbox(
    request: Request, mailbox_id: int, body: MailboxPatch, p: Admin
) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.update_mailbox(mailbox_id, body.changes())


@boxes.post("/{mailbox_id}/activate", summary="Activate: pending invitations are sent again")
async def activate(request: Request, mailbox_id: int, p: Admin) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.set_active(mailbox_id, True)


@boxes.post("/{mailbox_id}/deactivate", summary="Deactivate: invitations wait, nothing is sent")
async def deactivate(request: Request, mailbox_id: int, p: Admin) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.set_active(mailbox_id, False)


@boxes.post("/{mailbox_id}/recycle", summary="Reset every invitation in status error (recycle)")
async def recycle(request: Request, mailbox_id: int, p: Staff) -> RecycleOut:
    async with invites(request, p) as svc:
        ids = await svc.recycle(mailbox_id)
    return RecycleOut(reset=len(ids), invitation_ids=ids)


@boxes.get(
    "/{mailbox_id}/initialisation",
    summary="Preview: the room's future events (and blocks, if included) without invitation",
)
async def initialisation_preview(
    request: Request, mailbox_id: int, p: Staff
) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.initialisation_preview(mailbox_id)


@boxes.post(
    "/{mailbox_id}/initialisation",
    summary="Queue invitations for the previewed events; the next MailboxProcessor run sends them",
)
async def initialise(
    request: Request, mailbox_id: int, p: Staff, body: InitialiseIn | None = None
) -> InitialiseOut:
    async with invites(request, p) as svc:
        ids, not_eligible = await svc.initialise(
            mailbox_id, body.event_ids if body is not None else None
        )
    return InitialiseOut(created=len(ids), invitation_ids=ids, not_eligible=not_eligible)


# --------------------------------------------------------------------------- events

events = APIRouter(prefix="/events", tags=["events"])


@events.put("/{event_id}", summary="The booking system created or changed an event")
async def put_event(request: Request, event_id: str, body: RoomEventIn, p: Booking) -> EventOutcome:
    try:
        data = RoomEventData(event_id=event_id, **body.model_dump())
    except ValidationError as exc:  # the path's id breaks the contract (e.g. too long)
        raise Invalid(
            "; ".join(e["msg"] for e in exc.errors(include_input=False)), code="invalid-event"
        ) from None
    async with invites(request, p) as svc:
        outcome = await svc.sync_event(data)
        view = await svc.event_view(event_id)
    return EventOutcome(outcome=outcome, event=view)


@events.delete("/{event_id}", summary="The booking system deleted an event")
async def delete_event(
    request: Request,
    event_id: str,
    p: Booking,
    revision: Annotated[int | None, Query(ge=0)] = None,
) -> EventOutcome:
    async with invites(request, p) as svc:
        outcome = await svc.delete_event(event_id, revision)
        view = await svc.event_view(event_id) if outcome != "unknown" else None
    return EventOutcome(outcome=outcome, event=view)


@events.get("/{event_id}", summary="An event with the status of its invitations")
async def get_event(request: Request, event_id: str, p: Booking) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.event_view(event_id)


@events.get("", summary="Events as received from the booking system")
async def list_events(
    request: Request,
    p: Staff,
    room_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.list_events(room_id=room_id, limit=limit, offset=offset)


# --------------------------------------------------------------------------- invitations

invs = APIRouter(prefix="/invitations", tags=["invitations"])


@invs.get("", summary="Invitations, filtered by mailbox, status or event")
async def list_invitations(
    request: Request,
    p: Staff,
    mailbox_id: int | None = None,
    status: StatusFilter | None = None,
    event_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.list_invitations(
            mailbox_id=mailbox_id, status=status, event_id=event_id, limit=limit, offset=offset
        )


@invs.get("/{invitation_id}", summary="One invitation")
async def get_invitation(request: Request, invitation_id: int, p: Staff) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.invitation_view(invitation_id)


@invs.get("/{invitation_id}/log", summary="Everything that happened to one invitation")
async def invitation_log(
    request: Request, invitation_id: int, p: Staff, limit: Limit = 500, offset: Offset = 0
) -> list[dict[str, Any]]:
    async with invites(request, p) as svc:
        return await svc.invitation_log(invitation_id, limit=limit, offset=offset)


@invs.get(
    "/{invitation_id}/ics",
    summary="The iCalendar object last sent",
    response_class=Response,
    responses={200: {"content": {"text/calendar": {}}}},
)
async def invitation_ics(request: Request, invitation_id: int, p: Staff) -> Response:
    async with invites(request, p) as svc:
        ics = await svc.invitation_ics(invitation_id)
    return Response(ics, media_type="text/calendar; charset=utf-8")


@invs.post("/{invitation_id}/reset", summary="Reset one invitation in status error")
async def reset_invitation(request: Request, invitation_id: int, p: Staff) -> dict[str, Any]:
    async with invites(request, p) as svc:
        return await svc.reset_invitation(invitation_id)


for _r in (users, rooms, boxes, events, invs):
    router.include_router(_r)
