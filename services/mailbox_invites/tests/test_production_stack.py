"""The same flow on the production stack: PostgreSQL (own schema) and RabbitMQ, with the
room-booking system talking over AMQP, plus the real Dovecot and SMTP server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from mailbox_invites_service.app import create_app
from mesh_common.bus import BusSettings, HandlerRegistry, MessageContext, create_bus
from mesh_common.testing.dovecot import DovecotServer, SmtpRelay
from mesh_contracts.mailbox_invites import (
    DeleteRoomEvent,
    GetInvitationStatus,
    InvitationStatusChanged,
    InvitationStatusReply,
    RoomEventData,
    SyncRoomEvent,
)

from .conftest import STAFF, Api, configure, future, make_settings


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_invite_accept_cancel_on_postgres_and_rabbitmq(
    tmp_path: Path, pg_url: str, amqp_url: str, dovecot: DovecotServer, smtp: SmtpRelay
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=pg_url,
        db_schema=f"mi_{uuid.uuid4().hex[:6]}",
        amqp_url=amqp_url,
    )
    app = create_app(settings)
    seen: list[tuple[str, str, int]] = []
    listener = HandlerRegistry()

    @listener.event(InvitationStatusChanged)
    async def on_status(ev: InvitationStatusChanged, ctx: MessageContext) -> None:
        seen.append((ev.event_id, ev.status, ev.sequence))

    booking = create_bus(BusSettings(service="room-booking", amqp_url=amqp_url, rpc_timeout=10))
    booking.include(listener)

    async def until(check: object, what: str) -> None:
        for _ in range(300):
            if callable(check) and await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not reached: {what}")

    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://mi"
        ) as client,
    ):
        api = Api(client, app.state.runtime)
        await booking.start()
        try:
            boxes = await configure(api, dovecot, smtp)
            await booking.send(
                SyncRoomEvent(
                    change="created",
                    event=RoomEventData(
                        event_id="pg-1",
                        room_id="r-101",
                        title="Aquarellmalen",
                        starts_at=future(days=5, hour=17),
                        ends_at=future(days=5, hour=19),
                        revision=1,
                    ),
                )
            )

            async def queued() -> bool:
                return bool(
                    await api.call(
                        "GET", "/invitations", headers=STAFF, params={"event_id": "pg-1"}
                    )
                )

            await until(queued, "invitation queued from the AMQP command")
            assert (await api.run_processor())["status"] == "succeeded"
            got = await boxes.responder.process()
            assert [(g.method, g.sequence) for g in got] == [("REQUEST", 0)]
            assert (await api.run_processor())["status"] == "succeeded"
            inv = await api.event_invitation("pg-1")
            assert inv["status"] == "accepted"

            async def heard_accept() -> bool:
                return ("pg-1", "accepted", 0) in seen

            await until(heard_accept, "accepted announced over RabbitMQ")
            reply = await booking.call(
                GetInvitationStatus(event_id="pg-1"), InvitationStatusReply, timeout=10
            )
            assert [(i.status, i.mailbox) for i in reply.invitations] == [
                ("accepted", boxes.room.address)
            ]

            await booking.send(DeleteRoomEvent(event_id="pg-1", revision=2))

            async def cancel_queued() -> bool:
                return (await api.event_invitation("pg-1"))["method"] == "CANCEL"

            await until(cancel_queued, "CANCEL queued from the AMQP command")
            await api.run_processor()
            got = await boxes.responder.process()
            assert [(g.method, g.sequence, g.replied) for g in got] == [("CANCEL", 1, None)]

            async def heard_cancel() -> bool:
                return ("pg-1", "cancelled", 1) in seen

            await until(heard_cancel, "cancellation announced over RabbitMQ")
            assert [s for s in seen if s[0] == "pg-1"] == [
                ("pg-1", "sent", 0),
                ("pg-1", "accepted", 0),
                ("pg-1", "cancelled", 1),
            ]
        finally:
            await booking.stop()
