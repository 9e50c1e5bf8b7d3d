"""Two service apps built by the app factory talk through the outbox, the bus and the inbox.

Runs on the embedded default (SQLite + in-memory broker) and on the production stack (PostgreSQL
schemas + RabbitMQ), proving the factory wires relay, consumers and RPC the same way on both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI, Request
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.bus import BusSettings, HandlerRegistry, MemoryBroker, MessageContext
from mesh_common.bus.envelope import Envelope
from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.errors import NotFound
from mesh_common.settings import ServiceSettings
from pydantic import BaseModel
from sqlalchemy import Column, Integer, String, Table, func, select


class SeatReserved(BaseModel):
    __message_type__: ClassVar[str] = "shop.seat_reserved.v1"
    seat: str


class GetSeatCount(BaseModel):
    __message_type__: ClassVar[str] = "ledger.get_seat_count"
    seat: str


class SeatCount(BaseModel):
    seat: str
    count: int


def build_shop(settings: ServiceSettings, broker: MemoryBroker | None, bus: BusSettings) -> FastAPI:
    metadata = service_metadata()
    outbox_table(metadata)
    inbox_table(metadata)
    router = APIRouter()

    @router.post("/reserve/{seat}")
    async def reserve(seat: str, request: Request) -> dict[str, str]:
        runtime: ServiceRuntime = request.app.state.runtime
        assert runtime.outbox is not None
        async with runtime.db.unit_of_work() as session:
            message_id = await runtime.outbox.add(session, SeatReserved(seat=seat))
        return {"message_id": message_id}

    @router.get("/count/{seat}")
    async def count(seat: str, request: Request) -> dict[str, Any]:
        runtime: ServiceRuntime = request.app.state.runtime
        reply = await runtime.bus.call(GetSeatCount(seat=seat), SeatCount, timeout=5)
        return reply.model_dump()

    return create_service_app(
        settings,
        title="shop",
        description="test",
        routers=[router],
        metadata=metadata,
        broker=broker,
        bus_settings=bus,
    )


def build_ledger(
    settings: ServiceSettings, broker: MemoryBroker | None, bus: BusSettings
) -> FastAPI:
    metadata = service_metadata()
    inbox_table(metadata)
    seats = Table(
        "seats",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("seat", String(50), nullable=False),
    )
    handlers = HandlerRegistry()
    holder: dict[str, ServiceRuntime] = {}

    @handlers.event(SeatReserved)
    async def on_seat_reserved(msg: SeatReserved, ctx: MessageContext) -> None:
        inbox = holder["rt"].inbox
        assert inbox is not None

        async def effect(m: SeatReserved, c: MessageContext, session: Any) -> None:
            await session.execute(seats.insert().values(seat=m.seat))

        await inbox.idempotent(effect)(msg, ctx)

    @handlers.rpc(GetSeatCount)
    async def get_seat_count(req: GetSeatCount, ctx: MessageContext) -> SeatCount:
        async with holder["rt"].db.unit_of_work() as session:
            n = (
                await session.execute(
                    select(func.count()).select_from(seats).where(seats.c.seat == req.seat)
                )
            ).scalar()
        if not n:
            raise NotFound(f"no reservation for seat {req.seat}", code="seat-unknown")
        return SeatCount(seat=req.seat, count=int(n))

    async def remember(rt: ServiceRuntime) -> None:
        holder["rt"] = rt

    return create_service_app(
        settings,
        title="ledger",
        description="test",
        metadata=metadata,
        handlers=[handlers],
        on_startup=[remember],
        broker=broker,
        bus_settings=bus,
    )


@asynccontextmanager
async def mesh(**common: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI, FastAPI]]:
    broker = MemoryBroker() if common.get("amqp_url") is None else None
    prefix = f"t{uuid.uuid4().hex[:6]}."
    apps = []
    for name, build in (("ledger", build_ledger), ("shop", build_shop)):
        settings = ServiceSettings(service_name=name, **common)
        bus = BusSettings(
            service=name, amqp_url=common.get("amqp_url"), prefix=prefix, retry_delays=(0.05,)
        )
        apps.append(build(settings, broker, bus))
    async with AsyncExitStack() as stack:
        managers = [await stack.enter_async_context(LifespanManager(a)) for a in apps]
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=managers[1].app), base_url="http://shop"
            )
        )
        yield client, apps[1], apps[0]


async def seat_rows(ledger: FastAPI, seat: str) -> int:
    runtime: ServiceRuntime = ledger.state.runtime
    assert runtime.inbox is not None
    table = runtime.inbox.table.metadata.tables["seats"]
    async with runtime.db.unit_of_work() as session:
        return int(
            (
                await session.execute(
                    select(func.count()).select_from(table).where(table.c.seat == seat)
                )
            ).scalar()
        )


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def scenario(client: httpx.AsyncClient, shop: FastAPI, ledger: FastAPI) -> None:
    r = await client.post("/reserve/A1")
    assert r.status_code == 200

    async def arrived() -> bool:
        return await seat_rows(ledger, "A1") == 1

    await wait_for(arrived)
    count = await client.get("/count/A1")
    assert count.status_code == 200 and count.json() == {"seat": "A1", "count": 1}
    # A typed remote DomainError comes back as the same problem+json code through HTTP.
    missing = await client.get("/count/Z9")
    assert missing.status_code == 404
    assert missing.json()["code"] == "seat-unknown"

    # Redeliver the same envelope (as after a crash between publish and ack): one effect only.
    shop_rt: ServiceRuntime = shop.state.runtime
    assert shop_rt.outbox is not None
    async with shop_rt.db.unit_of_work() as session:
        row = (await session.execute(select(shop_rt.outbox.table))).one()
    assert row.sent_at is not None  # the relay marked it sent
    env = Envelope.from_record(orjson.loads(row.envelope), row.body.encode())
    await shop_rt.bus.publish_envelope(env)
    await asyncio.sleep(0.5)
    assert await seat_rows(ledger, "A1") == 1
    assert ledger.state.runtime.inbox.duplicates >= 1

    # Bus traffic shows up in each service's own /metrics registry.
    shop_metrics = shop_rt.metrics.render().decode()
    ledger_metrics = ledger.state.runtime.metrics.render().decode()
    published = (
        'bus_messages_total{direction="published",outcome="ok",type="shop.seat_reserved.v1"}'
    )
    consumed = 'bus_messages_total{direction="consumed",outcome="ok",type="shop.seat_reserved.v1"}'
    assert published in shop_metrics
    assert consumed in ledger_metrics


async def test_outbox_bus_inbox_rpc_on_embedded_default(tmp_path: Path) -> None:
    async with mesh(var_dir=tmp_path) as apps:
        await scenario(*apps)


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_outbox_bus_inbox_rpc_on_postgres_and_rabbitmq(pg_url: str, amqp_url: str) -> None:
    async with mesh(database_url=pg_url, amqp_url=amqp_url) as apps:
        await scenario(*apps)
