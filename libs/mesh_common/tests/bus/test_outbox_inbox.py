"""Outbox and inbox on SQLite and real PostgreSQL, relayed over both bus backends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
from mesh_common.bus import Envelope, MessageContext, Middleware, PublishError
from mesh_common.bus.envelope import H_KIND
from mesh_common.bus.inbox import Inbox, inbox_table, record
from mesh_common.bus.outbox import Outbox, OutboxRelay, outbox_table
from mesh_common.context import bound
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


class SeatBooked(BaseModel):
    __message_type__: ClassVar[str] = "booking.seat_booked.v1"
    n: int


class Unclaimed(BaseModel):
    __message_type__: ClassVar[str] = "nobody.unclaimed.v1"


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
    eng = create_async_engine(url)
    try:
        yield eng
    finally:
        await eng.dispose()


class Tables:
    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.metadata = MetaData()
        self.outbox = outbox_table(self.metadata, name=f"outbox_{suffix}")
        self.inbox = inbox_table(self.metadata, name=f"inbox_{suffix}")
        self.effects = Table(
            f"effects_{suffix}",
            self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("message_id", String(64), nullable=False),
        )


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncIterator[Tables]:
    t = Tables()
    async with engine.begin() as conn:
        await conn.run_sync(t.metadata.create_all)
    try:
        yield t
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.drop_all)


async def _consumer(backend, received: list[str]):
    consumer = backend.bus("audit")

    @consumer.event()
    async def on_seat_booked(msg: SeatBooked, ctx: MessageContext) -> None:
        received.append(ctx.message_id)

    await consumer.start()
    return consumer


async def test_outbox_row_is_published_after_commit_only(backend, engine, tables, eventually):
    received: list[str] = []
    await _consumer(backend, received)
    producer = backend.bus("booking")
    await producer.start()
    outbox = Outbox(tables.outbox, service="booking")
    relay = OutboxRelay(outbox, producer, engine, poll_interval=5.0)
    relay.start()
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Rolled back: never published.
        async with sessions() as session:
            async with session.begin():
                await outbox.add(session, SeatBooked(n=0))
                await session.rollback()
        # Committed through a session: the poke wakes the relay well before the 5 s poll.
        with bound(request_id="req-9", actor="user:7"):
            async with sessions() as session, session.begin():
                mid = await outbox.add(session, SeatBooked(n=1))
        await eventually(lambda: received == [mid], timeout=2.0)
        # Committed through a bare connection.
        async with engine.begin() as conn:
            mid2 = await outbox.add(conn, SeatBooked(n=2))
        await eventually(lambda: received == [mid, mid2], timeout=2.0)
        # Several in one statement: published in order, after the commit only.
        async with sessions() as session:
            async with session.begin():
                assert await outbox.add_many(session, [SeatBooked(n=3)]) != []
                await session.rollback()
        async with sessions() as session, session.begin():
            many = await outbox.add_many(session, [SeatBooked(n=4), SeatBooked(n=5)])
            assert await outbox.add_many(session, []) == []
        await eventually(lambda: received == [mid, mid2, *many], timeout=2.0)
        # Encoded by the caller (e.g. a batch assembled from parts): stored and sent verbatim.
        async with sessions() as session, session.begin():
            encoded = await outbox.add_encoded(session, SeatBooked, b'{"n": 6}')
        await eventually(lambda: received == [mid, mid2, *many, encoded], timeout=2.0)
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(tables.outbox.c.type, tables.outbox.c.body).where(
                        tables.outbox.c.message_id == encoded
                    )
                )
            ).one()
        assert (row.type, row.body) == ("booking.seat_booked.v1", '{"n": 6}')

        async def drained() -> bool:
            backlog = await relay.backlog()  # marked sent in the relay's own commit
            return (backlog.pending, backlog.oldest_age, backlog.failed) == (0, 0.0, 0)

        await eventually(drained, timeout=2.0)
    finally:
        await relay.stop()


class _Crash(Middleware):
    """Kills the relay task in the middle of a batch, after some confirmed publishes."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.count = 0
        self.victim: asyncio.Task[None] | None = None

    async def publish(self, envelope: Envelope, call_next) -> None:
        self.count += 1
        if self.count == self.after and self.victim is not None:
            self.victim.cancel()
            await asyncio.sleep(10)
        await call_next(envelope)


async def test_relay_crash_loses_nothing_and_restart_publishes_the_rest(
    backend, engine, tables, eventually
):
    received: list[str] = []
    await _consumer(backend, received)
    outbox = Outbox(tables.outbox, service="booking")
    # Committed while no relay runs (e.g. the relay process was killed after the commit).
    async with engine.begin() as conn:
        ids = [await outbox.add(conn, SeatBooked(n=i)) for i in range(120)]

    crash = _Crash(after=70)
    crashing_bus = backend.bus("booking", prefetch=1)
    crashing_bus.add_middleware(crash)
    await crashing_bus.start()
    relay = OutboxRelay(outbox, crashing_bus, engine, batch_size=50, poll_interval=0.05)
    crash.victim = relay.start()
    with pytest.raises(asyncio.CancelledError):
        await crash.victim
    # The first batch (50) was marked sent; the second died mid-publish and rolled back.
    assert (await relay.backlog()).pending == 70

    bus = backend.bus("booking")
    await bus.start()
    restarted = OutboxRelay(outbox, bus, engine, batch_size=50, poll_interval=0.05)
    restarted.start()
    try:
        await eventually(lambda: set(received) == set(ids), timeout=5.0)

        async def drained() -> bool:
            return (await restarted.backlog()).pending == 0

        await eventually(drained)
    finally:
        await restarted.stop()
    # At-least-once: the rows published before the crash but not marked are sent again with
    # the same message id (the consumer's inbox drops them); nothing is lost.
    assert set(received) == set(ids)
    assert len(received) >= 120


async def test_unroutable_rows_back_off_then_fail_without_blocking(backend, engine, tables):
    bus = backend.bus("booking")
    await bus.start()
    outbox = Outbox(tables.outbox, service="booking")
    async with engine.begin() as conn:
        await outbox.add_command(conn, Unclaimed())
        await outbox.add(conn, SeatBooked(n=1))  # an event nobody subscribes to: dropped, sent
    relay = OutboxRelay(outbox, bus, engine, max_attempts=2, backoff_base=0.5)
    assert await relay.relay_once() == 2
    backlog = await relay.backlog()
    assert (backlog.pending, backlog.failed) == (1, 0)
    assert await relay.relay_once() == 0  # backing off
    await asyncio.sleep(0.55)
    assert await relay.relay_once() == 1
    backlog = await relay.backlog()
    assert (backlog.pending, backlog.failed) == (0, 1)
    async with engine.connect() as conn:
        error = (
            await conn.execute(
                select(tables.outbox.c.last_error).where(tables.outbox.c.failed_at.is_not(None))
            )
        ).scalar_one()
    assert "no queue bound" in error


async def test_inbox_duplicate_delivery_has_one_effect(backend, engine, tables, eventually):
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    inbox = Inbox(tables.inbox, sessions)
    consumer = backend.bus("audit")
    failures = {"left": 1}
    seen: list[str] = []

    @consumer.event()
    @inbox.idempotent
    async def on_seat_booked(msg: SeatBooked, ctx: MessageContext, session: AsyncSession) -> None:
        await session.execute(tables.effects.insert().values(message_id=ctx.message_id))
        seen.append(ctx.message_id)
        if msg.n == 1 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("fails after the effect: rolled back with the inbox mark")

    await consumer.start()
    producer = backend.bus("booking")
    await producer.start()
    env = producer.envelope("event", SeatBooked(n=1))

    async def effects() -> int:
        async with engine.connect() as conn:
            q = select(func.count()).select_from(tables.effects)
            return (await conn.execute(q)).scalar_one()

    async def one_effect() -> bool:
        return await effects() == 1

    await producer.transport.publish(producer.topology.events, env.type, env.copy())
    await eventually(one_effect)  # first attempt failed after its effect, the retry committed
    assert seen == [env.message_id, env.message_id]
    for _ in range(2):  # the broker (or an outbox relay) delivers the same message again
        await producer.transport.publish(producer.topology.events, env.type, env.copy())
    await eventually(lambda: inbox.duplicates == 2)
    assert await effects() == 1
    assert len(seen) == 2
    assert env.headers[H_KIND] == "event"


async def test_record_detects_duplicates(engine, tables) -> None:
    async with engine.begin() as conn:
        assert await record(conn, tables.inbox, handler="svc.h", message_id="m1") is True
        assert await record(conn, tables.inbox, handler="svc.h", message_id="m1") is False
        assert await record(conn, tables.inbox, handler="svc.other", message_id="m1") is True


class _BrokerDown(Middleware):
    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def publish(self, envelope: Envelope, call_next) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise PublishError("connection refused")
        await call_next(envelope)


async def test_relay_backs_off_while_broker_is_down_without_spending_attempts(
    backend, engine, tables, eventually
):
    received: list[str] = []
    await _consumer(backend, received)
    bus = backend.bus("booking")
    bus.add_middleware(_BrokerDown(failures=3))
    await bus.start()
    outbox = Outbox(tables.outbox, service="booking")
    async with engine.begin() as conn:
        ids = [await outbox.add(conn, SeatBooked(n=i)) for i in range(5)]
    relay = OutboxRelay(outbox, bus, engine, max_attempts=1, backoff_base=0.01, poll_interval=0.05)
    relay.start()
    try:
        await eventually(lambda: sorted(received) == sorted(ids))
    finally:
        await relay.stop()
    assert relay.errors >= 1 and "connection refused" in (relay.last_error or "")
    assert (await relay.backlog()).failed == 0  # outages never count against a row


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
async def test_two_relays_share_the_work_without_duplicates(backend, engine, tables, eventually):
    received: list[str] = []
    await _consumer(backend, received)
    outbox = Outbox(tables.outbox, service="booking")
    async with engine.begin() as conn:
        ids = [await outbox.add(conn, SeatBooked(n=i)) for i in range(400)]
    relays = []
    for _ in range(2):
        bus = backend.bus("booking")
        await bus.start()
        relays.append(OutboxRelay(outbox, bus, engine, batch_size=25, poll_interval=0.05))
    for relay in relays:
        relay.start()
    try:
        await eventually(lambda: len(received) >= 400, timeout=10)
        await asyncio.sleep(0.2)
    finally:
        for relay in relays:
            await relay.stop()
    # FOR UPDATE SKIP LOCKED: each row is published and marked by exactly one relay.
    assert len(received) == 400, f"{len(received) - len(set(received))} duplicates"
    assert sorted(received) == sorted(ids)
    assert sum(relay.relayed for relay in relays) == 400, [r.relayed for r in relays]
