"""Contracts owned by mailbox-invites: what the room-booking system sends, and what it hears back.

The room-booking system (raum]für[raum) is outside the mesh, so the messages it sends about its
events are commands addressed to mailbox-invites, which owns them:

- ``SyncRoomEvent``: an event (a booking, or a room block) was created or changed. It carries the
  whole event; mailbox-invites queues an iTIP REQUEST to the room's mailbox.
- ``DeleteRoomEvent``: the event was deleted; mailbox-invites queues an iTIP CANCEL.

``revision`` (optional, increasing per event in the booking system) makes ordering explicit: a
message whose revision is not newer than the one already applied is ignored, so a late
"changed" can never resurrect a deleted event or undo a newer change. Without revisions the
arrival order counts. Delivery is at-least-once; a repeated message changes nothing.

The status of each invitation comes back as ``InvitationStatusChanged`` events (sent, accepted,
declined, tentative, cancelled, error, skipped), so the booking system can show it on its event;
``GetInvitationStatus`` asks for the current one.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from mesh_contracts.base import Command, Event, RpcReply, RpcRequest
from mesh_contracts.common import Value

ExternalId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
EventKind = Literal["booking", "block"]
InvitationStatus = Literal[
    "pending", "sent", "accepted", "declined", "tentative", "cancelled", "error", "skipped"
]


class RoomEventData(Value):
    """One event of the room-booking system in one room (a booking, or a room block)."""

    event_id: ExternalId
    room_id: ExternalId
    room_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    kind: EventKind = "booking"
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    # Who booked it (shown in the invitation's description, not used as the organizer).
    booked_by: Annotated[str, StringConstraints(max_length=200)] | None = None
    # Instants with their UTC offset; invitations show them in Europe/Berlin.
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    revision: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> RoomEventData:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class SyncRoomEvent(Command):
    """An event was created or changed in the room-booking system (``change`` says which)."""

    __message_type__: ClassVar[str] = "mailbox_invites.sync_room_event.v1"

    change: Literal["created", "changed"]
    event: RoomEventData


class DeleteRoomEvent(Command):
    """An event was deleted in the room-booking system."""

    __message_type__: ClassVar[str] = "mailbox_invites.delete_room_event.v1"

    event_id: ExternalId
    revision: Annotated[int, Field(ge=0)] | None = None
    deleted_at: AwareDatetime | None = None


class InvitationStatusChanged(Event):
    """The invitation of one event to one room mailbox changed its status."""

    __message_type__: ClassVar[str] = "mailbox_invites.invitation_status_changed.v1"

    invitation_id: int
    event_id: str
    room_id: str
    mailbox: str  # the room mailbox's address
    uid: str  # the iCalendar UID
    sequence: int
    status: InvitationStatus
    detail: str | None = None
    at: dt.datetime


class InvitationState(Value):
    invitation_id: int
    room_id: str
    mailbox: str
    status: InvitationStatus
    sequence: int
    attempts: int
    last_error: str | None = None
    updated_at: dt.datetime


class InvitationStatusReply(RpcReply):
    event_id: str
    known: bool  # False: mailbox-invites has never heard of the event
    invitations: list[InvitationState] = Field(default_factory=list)


class GetInvitationStatus(RpcRequest):
    """The current invitation status of an event (one entry per room mailbox it went to)."""

    __message_type__: ClassVar[str] = "mailbox_invites.get_invitation_status"
    __response_model__: ClassVar[type[InvitationStatusReply]] = InvitationStatusReply

    event_id: ExternalId
