"""The rules without mail servers: configuration locks, secrets at rest, access, bad input,
events over REST and AMQP (revisions, duplicates, dead letters), SEQUENCE under races."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from asgi_lifespan import LifespanManager
from mailbox_invites_service import itip
from mailbox_invites_service.app import create_app
from mailbox_invites_service.models import invitations, technical_users
from mailbox_invites_service.service import Invites
from mailbox_invites_service.settings import Settings
from mesh_common.app import process_broker
from mesh_common.bus import BusSettings, HandlerRegistry, MessageContext, create_bus
from mesh_contracts.mailbox_invites import (
    DeleteRoomEvent,
    GetInvitationStatus,
    InvitationStatusChanged,
    InvitationStatusReply,
    RoomEventData,
    SyncRoomEvent,
)
from pydantic import BaseModel
from sqlalchemy import select, update

from .conftest import ADMIN, BOOKING, STAFF, Api, future, make_settings

TECH = {
    "name": "raumbot",
    "display_name": "Raumbuchung",
    "email": "raumbot@vhs.example.test",
    "smtp": {
        "host": "mail.example.test",
        "port": 587,
        "security": "starttls",
        "username": "raumbot",
        "password": "smtp-Secret-1",
    },
    "imap": {
        "host": "mail.example.test",
        "port": 993,
        "security": "tls",
        "username": "raumbot",
        "password": "imap-Secret-2",
    },
}


async def mailbox(svc: Api, room_id: str = "r-1", **extra: Any) -> dict[str, Any]:
    user = await svc.call(
        "POST", "/technical-users", json={**TECH, "name": f"bot-{room_id}"}, expect=201
    )
    await svc.call("PUT", f"/rooms/{room_id}", json={"name": f"Raum {room_id}"})
    return await svc.call(
        "POST",
        "/mailboxes",
        json={
            "room_id": room_id,
            "email": f"{room_id}@rooms.test",
            "technical_user_id": user["id"],
            **extra,
        },
        expect=201,
    )


async def test_technical_user_secrets_are_encrypted_and_never_shown(svc: Api) -> None:
    user = await svc.call("POST", "/technical-users", json=TECH, expect=201)
    assert user["smtp"]["password"] == "set" and user["imap"]["password"] == "set"
    listing = await svc.client.get("/technical-users", headers=ADMIN)
    for secret in ("smtp-Secret-1", "imap-Secret-2"):
        assert secret not in listing.text
    async with svc.runtime.db.engine.connect() as conn:
        row = (await conn.execute(select(technical_users))).one()
    assert row.credentials.startswith("v1.")
    assert "Secret" not in row.credentials and "Secret" not in str(dict(row._mapping))
    # The token is bound to its user: copied onto another user it does not open.
    other = await svc.call("POST", "/technical-users", json={**TECH, "name": "other"}, expect=201)
    async with svc.runtime.db.engine.begin() as conn:
        await conn.execute(
            update(technical_users)
            .where(technical_users.c.id == other["id"])
            .values(credentials=row.credentials)
        )
    r = await svc.client.post(f"/technical-users/{other['id']}/check", headers=ADMIN)
    assert r.status_code == 503 and r.json()["code"] == "credentials-unreadable"
    assert "Secret" not in r.text
    # Rename is refused (the name binds the credentials); a half SMTP login too.
    r = await svc.client.patch(
        f"/technical-users/{user['id']}", headers=ADMIN, json={"smtp": {"username": None}}
    )
    assert r.status_code == 422 and r.json()["code"] == "smtp-login-incomplete"
    # Turning the SMTP login off takes both.
    off = await svc.call(
        "PATCH",
        f"/technical-users/{user['id']}",
        json={"smtp": {"username": None, "password": None}},
    )
    assert off["smtp"]["username"] is None and off["smtp"]["password"] == "not set"
    dup = await svc.client.post("/technical-users", headers=ADMIN, json=TECH)
    assert dup.status_code == 409 and dup.json()["code"] == "technical-user-exists"


async def test_missing_secret_key_is_a_clear_503(svc: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_SECRET_KEY")
    r = await svc.client.post("/technical-users", headers=ADMIN, json=TECH)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "secret-key-missing" and "MESH_SECRET_KEY" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({**TECH, "smtp": {**TECH["smtp"], "password": None}}, "smtp"),
        ({**TECH, "imap": {**TECH["imap"], "security": "ssl"}}, "security"),
        ({**TECH, "email": "not-an-address"}, "email"),
        ({**TECH, "imap": {**TECH["imap"], "folder": 'In"box'}}, "folder"),
        (
            {**TECH, "tls_ca_pem": "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----"},
            None,
        ),
        ({**TECH, "unexpected": 1}, "unexpected"),
    ],
)
async def test_bad_technical_user_input(svc: Api, body: dict[str, Any], where: str | None) -> None:
    r = await svc.client.post("/technical-users", headers=ADMIN, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    if where is None:
        assert problem["code"] == "invalid-ca-certificate"
    else:
        assert where in str(problem["errors"])
    assert "imap-Secret-2" not in r.text and "smtp-Secret-1" not in r.text


async def test_mailbox_configuration_is_locked_after_set_up(svc: Api) -> None:
    box = await mailbox(svc)
    for change in ({"email": "other@rooms.test"}, {"room_id": "r-2"}, {"active": False}):
        r = await svc.client.patch(f"/mailboxes/{box['id']}", headers=ADMIN, json=change)
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["code"] == "mailbox-field-locked"
        assert problem["locked"] == list(change)
        assert problem["changeable"] == ["technical_user_id", "include_blocks"]
    unchanged = await svc.call("GET", f"/mailboxes/{box['id']}", headers=STAFF)
    assert unchanged["email"] == "r-1@rooms.test" and unchanged["room_id"] == "r-1"
    # The two changeable fields do change.
    other = await svc.call("POST", "/technical-users", json={**TECH, "name": "bot-2"}, expect=201)
    changed = await svc.call(
        "PATCH",
        f"/mailboxes/{box['id']}",
        json={"technical_user_id": other["id"], "include_blocks": True},
    )
    assert (changed["technical_user_id"], changed["include_blocks"]) == (other["id"], True)
    r = await svc.client.patch(
        f"/mailboxes/{box['id']}", headers=ADMIN, json={"technical_user_id": 999}
    )
    assert r.status_code == 404 and r.json()["code"] == "technical-user-not-found"
    r = await svc.client.patch(
        f"/mailboxes/{box['id']}", headers=ADMIN, json={"include_blocks": None}
    )
    assert r.status_code == 422
    # One mailbox per room and per address.
    r = await svc.client.post(
        "/mailboxes",
        headers=ADMIN,
        json={"room_id": "r-1", "email": "x@rooms.test", "technical_user_id": other["id"]},
    )
    assert r.status_code == 409 and r.json()["code"] == "mailbox-exists"


async def test_room_groups_show_mailbox_state(svc: Api) -> None:
    box = await mailbox(svc, "r-1")
    await svc.call("PUT", "/rooms/r-2", json={"name": "Raum ohne Postfach"})
    group = await svc.call(
        "PUT", "/room-groups/g-1", json={"name": "EG", "room_ids": ["r-2", "r-1"]}
    )
    assert [r["room_id"] for r in group["rooms"]] == ["r-2", "r-1"]
    assert group["rooms"][0]["mailbox"] is None
    assert group["rooms"][1]["mailbox"] == {
        "mailbox_id": box["id"],
        "email": "r-1@rooms.test",
        "active": True,
        "link": f"/mailboxes/{box['id']}",
    }
    await svc.call("POST", f"/mailboxes/{box['id']}/deactivate")
    group = await svc.call("GET", "/room-groups/g-1", headers=STAFF)
    assert group["rooms"][1]["mailbox"]["active"] is False
    r = await svc.client.put(
        "/room-groups/g-2", headers=ADMIN, json={"name": "x", "room_ids": ["nope"]}
    )
    assert r.status_code == 422 and r.json()["unknown"] == ["nope"]


async def test_access_control(svc: Api) -> None:
    assert (await svc.client.get("/technical-users")).status_code == 401
    assert (await svc.client.get("/technical-users", headers=STAFF)).status_code == 403
    assert (await svc.client.get("/technical-users", headers=BOOKING)).status_code == 403
    r = await svc.client.post("/technical-users", headers=STAFF, json=TECH)
    assert r.status_code == 403
    assert (await svc.client.get("/mailboxes", headers=BOOKING)).status_code == 403
    # The booking system may put events; staff may too.
    body = {
        "room_id": "r-9",
        "title": "x",
        "starts_at": future(days=3, hour=9).isoformat(),
        "ends_at": future(days=3, hour=10).isoformat(),
    }
    assert (await svc.client.put("/events/e-1", headers=BOOKING, json=body)).status_code == 200
    assert (await svc.client.put("/events/e-1", headers=ADMIN, json=body)).status_code == 200


async def test_bad_event_input(svc: Api) -> None:
    base = {
        "room_id": "r-1",
        "title": "Kurs",
        "starts_at": "2030-05-01T10:00:00+02:00",
        "ends_at": "2030-05-01T11:00:00+02:00",
    }
    for bad in (
        {**base, "starts_at": "2030-05-01T10:00:00"},  # no offset: ambiguous
        {**base, "ends_at": "2030-05-01T09:00:00+02:00"},
        {**base, "title": ""},
        {**base, "kind": "party"},
    ):
        r = await svc.client.put("/events/e-1", headers=BOOKING, json=bad)
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == "application/problem+json"
    assert (await svc.client.get("/events/e-1", headers=STAFF)).status_code == 404


async def test_revisions_order_changes_and_deletes(svc: Api) -> None:
    await mailbox(svc)
    first = await svc.put_event("e-1", room_id="r-1", revision=5)
    assert first["outcome"] == "created"
    assert (await svc.put_event("e-1", room_id="r-1", title="alt", revision=4))[
        "outcome"
    ] == "stale"
    assert (await svc.put_event("e-1", room_id="r-1", revision=5))["outcome"] == "stale"
    assert (await svc.put_event("e-1", room_id="r-1", revision=6))["outcome"] == "unchanged"
    r = await svc.client.delete("/events/e-1", headers=BOOKING, params={"revision": 3})
    assert r.json()["outcome"] == "stale"
    r = await svc.client.delete("/events/e-1", headers=BOOKING, params={"revision": 7})
    assert r.json()["outcome"] == "deleted"
    # Deleted before anything was sent: nothing to cancel.
    inv = r.json()["event"]["invitations"][0]
    assert (inv["status"], inv["method"]) == ("skipped", "REQUEST")
    # A late "changed" with an older revision cannot bring it back.
    assert (await svc.put_event("e-1", room_id="r-1", revision=6))["outcome"] == "stale"
    assert (await svc.client.delete("/events/nope", headers=BOOKING)).json()["outcome"] == "unknown"
    # Restored by a newer revision: invited again.
    back = await svc.put_event("e-1", room_id="r-1", revision=8)
    assert back["outcome"] == "changed"
    assert back["event"]["invitations"][0]["status"] == "pending"


async def test_what_gets_an_invitation(svc: Api) -> None:
    await mailbox(svc, "r-1")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    await svc.put_event(
        "past",
        room_id="r-1",
        starts_at=past.isoformat(),
        ends_at=(past + dt.timedelta(hours=1)).isoformat(),
    )
    await svc.put_event("no-mailbox", room_id="r-elsewhere")
    await svc.put_event("block", room_id="r-1", kind="block")
    await svc.put_event("booking", room_id="r-1")
    invs = await svc.call("GET", "/invitations", headers=STAFF)
    assert [i["event_id"] for i in invs] == ["booking"]
    # The room the event came with is known now (named after the event's room_name or id).
    rooms = {r["room_id"] for r in await svc.call("GET", "/rooms", headers=STAFF)}
    assert "r-elsewhere" in rooms
    # An event that moves to a room without mailbox: its invitation is withdrawn.
    moved = await svc.put_event("booking", room_id="r-elsewhere")
    assert moved["event"]["invitations"][0]["status"] == "skipped"


async def test_sequence_survives_a_change_during_sending(svc: Api) -> None:
    """The processor read version A and sends it; meanwhile B is queued. After A is recorded as
    delivered, B stays queued and its SEQUENCE is judged against A."""
    settings = svc.runtime.settings
    assert isinstance(settings, Settings)
    await mailbox(svc)
    await svc.put_event("e-1", room_id="r-1")

    def invites(session: Any) -> Invites:
        return Invites(
            session,
            settings=settings,
            now=dt.datetime.now(dt.UTC),
            actor="t",
            outbox=svc.runtime.outbox,
            box=svc.runtime.extras["secret_box"],
        )

    async with svc.runtime.db.unit_of_work() as s:
        (a,) = await invites(s).pending(10)
    async with svc.runtime.db.unit_of_work() as s:
        await invites(s).mark_sent(a, message_id="<a@t>", ics="A", server_reply="250 ok")
    # Now the mailbox holds SEQUENCE 0. Read the next version to send...
    await svc.put_event("e-1", room_id="r-1", title="B")
    async with svc.runtime.db.unit_of_work() as s:
        (b,) = await invites(s).pending(10)
    assert (b["sequence"], b["snapshot"]["title"]) == (0, "B")
    # ...while it is on the wire, the start moves (significant: SEQUENCE 1 against A)...
    await svc.put_event(
        "e-1",
        room_id="r-1",
        title="C",
        starts_at=future(days=9, hour=8).isoformat(),
        ends_at=future(days=9, hour=9).isoformat(),
    )
    async with svc.runtime.db.unit_of_work() as s:
        after = await invites(s).mark_sent(b, message_id="<b@t>", ics="B", server_reply="250 ok")
    # ...B is recorded as delivered, C stays queued with SEQUENCE 1 (significant against B).
    assert (after["status"], after["sent_sequence"], after["sequence"]) == ("pending", 0, 1)
    assert after["snapshot"]["title"] == "C"

    # A delete that arrives while the very first REQUEST is on the wire: once that REQUEST is
    # recorded as delivered, a CANCEL is queued for it (instead of "skipped" forever).
    await svc.put_event("e-2", room_id="r-1")
    async with svc.runtime.db.unit_of_work() as s:
        first = next(p for p in await invites(s).pending(10) if p["event_id"] == "e-2")
    await svc.client.delete("/events/e-2", headers=BOOKING)
    async with svc.runtime.db.unit_of_work() as s:
        inv = await invites(s).mark_sent(first, message_id="<c@t>", ics="X", server_reply="250")
    assert (inv["status"], inv["method"], inv["sequence"]) == ("pending", "CANCEL", 1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the service's database: SQLite (the default) or PostgreSQL (own schema)."""
    if request.param == "sqlite":
        return {}
    pg_url = request.getfixturevalue("pg_url")
    return {"database_url": pg_url, "db_schema": f"mi_{uuid.uuid4().hex[:6]}"}


@pytest.fixture
async def svc_db(tmp_path: Path, database: dict[str, Any]) -> AsyncIterator[Api]:
    """The service on the ``database`` given, with the in-memory bus."""
    app = create_app(make_settings(tmp_path, **database))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://mi"
        ) as client,
    ):
        yield Api(client, app.state.runtime)


async def test_batched_recording_and_replies_match_one_at_a_time(svc_db: Api) -> None:
    """The MailboxProcessor records sends and applies replies in batches (one executemany
    UPDATE each): the outcome must be what one at a time gives — an unchanged invitation
    becomes sent (or keeps the answer it already has for this SEQUENCE), one changed on the wire
    stays queued and is re-judged, a CANCEL becomes cancelled; replies to one invitation in one
    batch apply in order. On SQLite and on PostgreSQL."""
    svc = svc_db
    settings = svc.runtime.settings
    assert isinstance(settings, Settings)
    box = await mailbox(svc)
    outbox = svc.runtime.outbox.table

    def invites(session: Any) -> Invites:
        return Invites(
            session,
            settings=settings,
            now=dt.datetime.now(dt.UTC),
            actor="t",
            outbox=svc.runtime.outbox,
            box=svc.runtime.extras["secret_box"],
            buffer_log=True,
        )

    async def record(pending: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        async with svc.runtime.db.unit_of_work() as s:
            inv = invites(s)
            rows = await inv.mark_sent_many(
                [(p, f"<{p['id']}.{p['version']}@t>", "ICS", "250 ok") for p in pending]
            )
            await inv.flush_log()
        return {r["event_id"]: r for r in rows}

    def reply(uid: str, partstat: str, minute: int, sequence: int = 0) -> itip.ItipEvent:
        return itip.ItipEvent(
            method="REPLY",
            uid=uid,
            sequence=sequence,
            dtstamp=dt.datetime(2030, 1, 1, 12, minute, tzinfo=dt.UTC),
            attendees=(itip.AttendeeReply(box["email"], partstat),),
        )

    async def status_events() -> list[tuple[int, str]]:
        async with svc.runtime.db.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.body)
                .where(outbox.c.type == InvitationStatusChanged.__message_type__)
                .order_by(outbox.c.id)
            )
            bodies = [json.loads(r.body) for r in rows]
        return [(b["invitation_id"], b["status"]) for b in bodies]

    for n in range(4):
        await svc.put_event(f"b-{n}", room_id="r-1", title=f"Kurs {n}")
    async with svc.runtime.db.unit_of_work() as s:
        first = await invites(s).pending(10)
    sent = await record(first)
    assert {e: r["status"] for e, r in sent.items()} == {f"b-{n}": "sent" for n in range(4)}
    uid = {e: r["uid"] for e, r in sent.items()}
    ids = {e: r["id"] for e, r in sent.items()}

    # Replies in one batch: b-0 accepted then declined (later DTSTAMP) → declined, both
    # announced; b-1 accepted twice → the second is a duplicate; an unknown UID is ignored.
    async with svc.runtime.db.unit_of_work() as s:
        inv = invites(s)
        outcomes = await inv.apply_replies(
            1,
            [
                (reply(uid["b-0"], "ACCEPTED", 1), {}),
                (reply(uid["b-1"], "ACCEPTED", 1), {}),
                (reply(uid["b-0"], "DECLINED", 2), {}),
                (reply(uid["b-1"], "ACCEPTED", 3), {}),
                (reply("nobody@else", "ACCEPTED", 1), {}),
                (reply(uid["b-2"], "ACCEPTED", 1, sequence=1), {}),
            ],
        )
        await inv.flush_log()
    assert [o for o, _ in outcomes] == [
        "applied", "applied", "applied", "duplicate", "ignored", "ignored"
    ]  # fmt: skip
    statuses = {e: (await svc.invitation(i))["status"] for e, i in ids.items()}
    assert statuses == {"b-0": "declined", "b-1": "accepted", "b-2": "sent", "b-3": "sent"}
    events = await status_events()
    assert events[-3:] == [
        (ids["b-0"], "accepted"),
        (ids["b-1"], "accepted"),
        (ids["b-0"], "declined"),
    ]

    # Next batch: b-1 re-sent with the same SEQUENCE (title only) keeps its answer; b-2 moves
    # while on the wire (stays queued with SEQUENCE 1); b-3 is deleted → CANCEL → cancelled.
    await svc.put_event("b-1", room_id="r-1", title="Kurs 1, neuer Titel")
    await svc.put_event("b-2", room_id="r-1", title="Kurs 2, neuer Titel")
    await svc.client.delete("/events/b-3", headers=BOOKING)
    async with svc.runtime.db.unit_of_work() as s:
        second = await invites(s).pending(10)
    assert sorted(p["event_id"] for p in second) == ["b-1", "b-2", "b-3"]
    await svc.put_event(
        "b-2",
        room_id="r-1",
        title="Kurs 2, verschoben",
        starts_at=future(days=9, hour=8).isoformat(),
        ends_at=future(days=9, hour=9).isoformat(),
    )
    again = await record(second)
    assert (again["b-1"]["status"], again["b-1"]["sent_sequence"]) == ("accepted", 0)
    b2 = again["b-2"]
    assert (b2["status"], b2["sent_sequence"], b2["sequence"]) == ("pending", 0, 1)
    assert b2["snapshot"]["title"] == "Kurs 2, verschoben"
    assert again["b-3"]["status"] == "cancelled"
    assert [a["action"] for a in await svc.log(ids["b-1"])].count("sent") == 2


class BrokenSync(BaseModel):
    """What a buggy producer might send on the SyncRoomEvent routing key."""

    __message_type__: ClassVar[str] = SyncRoomEvent.__message_type__
    change: str = "created"
    event: dict[str, Any]


async def test_commands_over_the_bus_and_status_rpc(svc: Api) -> None:
    await mailbox(svc)
    seen: list[InvitationStatusChanged] = []
    listener = HandlerRegistry()

    @listener.event(InvitationStatusChanged)
    async def on_status(ev: InvitationStatusChanged, ctx: MessageContext) -> None:
        seen.append(ev)

    booking = create_bus(BusSettings(service="room-booking"), broker=process_broker())
    booking.include(listener)
    await booking.start()
    try:
        data = RoomEventData(
            event_id="amqp-1",
            room_id="r-1",
            title="Per AMQP",
            starts_at=future(days=4, hour=9),
            ends_at=future(days=4, hour=10),
            revision=1,
        )
        env = booking.envelope("command", SyncRoomEvent(change="created", event=data))
        await booking.publish_envelope(env)
        await booking.publish_envelope(env)  # a redelivery of the same message
        for _ in range(100):
            invs = await svc.call(
                "GET", "/invitations", headers=STAFF, params={"event_id": "amqp-1"}
            )
            if invs:
                break
            await asyncio.sleep(0.02)
        assert len(invs) == 1 and invs[0]["status"] == "pending"
        await asyncio.sleep(0.2)
        log = await svc.log(invs[0]["id"])
        assert [e["action"] for e in log] == ["queued"]  # the duplicate did nothing
        assert log[0]["actor"] == (env.actor or "room-booking")  # who sent it

        reply = await booking.call(
            GetInvitationStatus(event_id="amqp-1"), InvitationStatusReply, timeout=5
        )
        assert reply.known and [i.status for i in reply.invitations] == ["pending"]
        unknown = await booking.call(
            GetInvitationStatus(event_id="nope"), InvitationStatusReply, timeout=5
        )
        assert unknown.known is False

        await booking.send(DeleteRoomEvent(event_id="amqp-1", revision=2))
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        # Deleted before sending: "skipped", announced through the outbox.
        assert [(s.event_id, s.status, s.mailbox) for s in seen] == [
            ("amqp-1", "skipped", "r-1@rooms.test")
        ]

        # A command that does not validate (here: ends before it starts) is dead-lettered with
        # the reason at once, never applied and never retried forever.
        await booking.send(
            BrokenSync(event={**data.model_dump(mode="json"), "ends_at": "2020-01-01T00:00:00Z"})
        )
        for _ in range(100):
            dead = await svc.runtime.bus.dlq_list("mailbox-invites.sync_room_event")
            if dead:
                break
            await asyncio.sleep(0.02)
        assert len(dead) == 1 and "ends_at must be after starts_at" in str(dead[0])
        assert len(await svc.call("GET", "/invitations", headers=STAFF)) == 1
    finally:
        await booking.stop()


async def test_recycle_and_reset_need_errors(svc: Api) -> None:
    box = await mailbox(svc)
    await svc.put_event("e-1", room_id="r-1")
    inv = (await svc.call("GET", "/invitations", headers=STAFF))[0]
    r = await svc.client.post(f"/invitations/{inv['id']}/reset", headers=STAFF)
    assert r.status_code == 409 and r.json()["code"] == "invitation-not-in-error"
    assert await svc.call("POST", f"/mailboxes/{box['id']}/recycle", headers=STAFF) == {
        "reset": 0,
        "invitation_ids": [],
    }
    async with svc.runtime.db.engine.begin() as conn:
        await conn.execute(
            update(invitations).values(status="error", attempts=5, last_error="SMTP: down")
        )
    out = await svc.call("POST", f"/mailboxes/{box['id']}/recycle", headers=STAFF)
    assert out == {"reset": 1, "invitation_ids": [inv["id"]]}
    log = await svc.log(inv["id"])
    assert log[-1]["action"] == "reset" and "SMTP: down" in log[-1]["message"]
    assert log[-1]["actor"] == "staff-1"


async def test_runs_on_tmp_settings(tmp_path: Path) -> None:
    """Settings validate their bounds (max attempts, intervals)."""
    with pytest.raises(ValueError):
        Settings(var_dir=tmp_path, max_send_attempts=0)
    with pytest.raises(ValueError):
        Settings(var_dir=tmp_path, processor_interval_seconds=0)
