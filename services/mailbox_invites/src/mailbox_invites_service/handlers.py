"""Bus handlers of mailbox-invites: the room-booking system's commands and the status RPC.

- ``mailbox_invites.sync_room_event.v1`` / ``mailbox_invites.delete_room_event.v1``: idempotent
  through the inbox (message id recorded in the same transaction as the effect) and by their
  content (``revision`` orders them; an older or repeated message changes nothing). Failure
  policy: a payload that does not validate, or that the service refuses (a domain error), is
  dead-lettered at once with the reason; a database failure is retried by the bus (bounded by
  the queue's delivery limit) and then dead-lettered, so nothing is lost.
- ``mailbox_invites.get_invitation_status``: read-only; always answered (errors included).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mesh_common.app import ServiceRuntime
from mesh_common.bus import DeadLetter, HandlerRegistry, MessageContext
from mesh_common.errors import DomainError
from mesh_contracts.mailbox_invites import (
    DeleteRoomEvent,
    GetInvitationStatus,
    InvitationState,
    InvitationStatusReply,
    SyncRoomEvent,
)
from sqlalchemy.ext.asyncio import AsyncSession

from mailbox_invites_service.service import Invites
from mailbox_invites_service.settings import Settings


def build(holder: dict[str, ServiceRuntime]) -> HandlerRegistry:
    """The handlers; ``holder["runtime"]`` is set at startup (before the bus consumes)."""
    handlers = HandlerRegistry()

    def service(session: AsyncSession, ctx: MessageContext) -> Invites:
        runtime = holder["runtime"]
        settings = runtime.settings
        assert isinstance(settings, Settings)
        return Invites(
            session,
            settings=settings,
            now=dt.datetime.now(dt.UTC),
            actor=ctx.actor or "room-booking",
            outbox=runtime.outbox,
            box=runtime.extras["secret_box"],
        )

    async def in_inbox(fn: Any, message: Any, ctx: MessageContext) -> None:
        inbox = holder["runtime"].inbox
        assert inbox is not None
        try:
            await inbox.idempotent(fn)(message, ctx)
        except DomainError as exc:
            raise DeadLetter(f"{exc.code}: {exc.detail}") from exc

    @handlers.command(SyncRoomEvent)
    async def sync_room_event(cmd: SyncRoomEvent, ctx: MessageContext) -> None:
        """Idempotency key: the message id (inbox) and the event's revision."""

        async def effect(msg: SyncRoomEvent, c: MessageContext, session: AsyncSession) -> None:
            await service(session, c).sync_event(msg.event)

        await in_inbox(effect, cmd, ctx)

    @handlers.command(DeleteRoomEvent)
    async def delete_room_event(cmd: DeleteRoomEvent, ctx: MessageContext) -> None:
        """Idempotency key: the message id (inbox); deleting twice changes nothing."""

        async def effect(msg: DeleteRoomEvent, c: MessageContext, session: AsyncSession) -> None:
            await service(session, c).delete_event(msg.event_id, msg.revision)

        await in_inbox(effect, cmd, ctx)

    @handlers.rpc(GetInvitationStatus)
    async def get_invitation_status(
        req: GetInvitationStatus, ctx: MessageContext
    ) -> InvitationStatusReply:
        """Read-only."""
        async with holder["runtime"].db.unit_of_work() as session:
            rows = await service(session, ctx).status_of_event(req.event_id)
        if rows is None:
            return InvitationStatusReply(event_id=req.event_id, known=False)
        return InvitationStatusReply(
            event_id=req.event_id,
            known=True,
            invitations=[InvitationState(**r) for r in rows],
        )

    return handlers
