"""One trace spans gateway → service → AMQP → another service → database.

Real HTTP (uvicorn servers on free ports), real RabbitMQ and PostgreSQL; every process part shares
one TracerProvider with an in-memory exporter so the test can read the whole trace.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from gateway_service.app import create_app as create_gateway
from gateway_service.settings import GatewaySettings
from mesh_common.app import ServiceRuntime, create_service_app
from mesh_common.auth import AuthSettings, mint_token
from mesh_common.bus import BusSettings, HandlerRegistry, MessageContext
from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.settings import ServiceSettings
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, SecretStr
from sqlalchemy import text

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]
SECRET = "tracing-test-secret-tracing-test-secret"


class Lookup(BaseModel):
    __message_type__: ClassVar[str] = "back.lookup"
    seat: str


class Found(BaseModel):
    seat: str
    rows: int


class Reserved(BaseModel):
    __message_type__: ClassVar[str] = "front.reserved.v1"
    seat: str


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_front(settings: ServiceSettings, bus: BusSettings, provider: TracerProvider) -> FastAPI:
    metadata = service_metadata()
    outbox_table(metadata)
    router = APIRouter()

    @router.get("/ask/{seat}")
    async def ask(seat: str, request: Request) -> dict[str, Any]:
        runtime: ServiceRuntime = request.app.state.runtime
        return (await runtime.bus.call(Lookup(seat=seat), Found, timeout=10)).model_dump()

    @router.post("/reserve/{seat}")
    async def reserve(seat: str, request: Request) -> dict[str, str]:
        runtime: ServiceRuntime = request.app.state.runtime
        assert runtime.outbox is not None
        async with runtime.db.unit_of_work() as session:
            return {"id": await runtime.outbox.add(session, Reserved(seat=seat))}

    return create_service_app(
        settings,
        title="front",
        description="t",
        routers=[router],
        metadata=metadata,
        bus_settings=bus,
        tracer_provider=provider,
    )


def build_back(settings: ServiceSettings, bus: BusSettings, provider: TracerProvider) -> FastAPI:
    metadata = service_metadata()
    inbox_table(metadata)
    handlers = HandlerRegistry()
    holder: dict[str, ServiceRuntime] = {}

    @handlers.rpc(Lookup)
    async def lookup(msg: Lookup, ctx: MessageContext) -> Found:
        async with holder["rt"].db.unit_of_work() as session:
            rows = (await session.execute(text("SELECT count(*) FROM pg_class"))).scalar()
        return Found(seat=msg.seat, rows=int(rows or 0))

    @handlers.event(Reserved)
    async def on_reserved(msg: Reserved, ctx: MessageContext) -> None:
        async with holder["rt"].db.unit_of_work() as session:
            await session.execute(text("SELECT 1"))

    async def remember(rt: ServiceRuntime) -> None:
        holder["rt"] = rt

    return create_service_app(
        settings,
        title="back",
        description="t",
        metadata=metadata,
        handlers=[handlers],
        on_startup=[remember],
        bus_settings=bus,
        tracer_provider=provider,
    )


@asynccontextmanager
async def serving(app: FastAPI, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_config=None)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def traced_mesh(
    pg_url: str, amqp_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    prefix = f"tr{uuid.uuid4().hex[:6]}."
    ports = {"front": _port(), "back": _port(), "gateway": _port()}
    apps = {}
    for name, build in (("back", build_back), ("front", build_front)):
        settings = ServiceSettings(
            service_name=name,
            database_url=pg_url,
            amqp_url=SecretStr(amqp_url),
            mesh_jwt_secret=SecretStr(SECRET),
        )
        bus = BusSettings(service=name, amqp_url=SecretStr(amqp_url), prefix=prefix)
        apps[name] = build(settings, bus, provider)
    gateway = create_gateway(
        GatewaySettings(
            upstreams={"front": f"http://127.0.0.1:{ports['front']}"},
            auth=AuthSettings(mode="hs256", hs256_secret=SecretStr(SECRET)),
        ),
        tracer_provider=provider,
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serving(apps["back"], ports["back"]))
        await stack.enter_async_context(serving(apps["front"], ports["front"]))
        await stack.enter_async_context(serving(gateway, ports["gateway"]))
        token = mint_token(subject="tracer", secret=SECRET, roles=["admin"])
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{ports['gateway']}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=15,
            )
        )
        yield client, exporter


def _trace(spans: list[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context.trace_id == trace_id]


def _assert_chain(spans: list[ReadableSpan], leaf: ReadableSpan, root: ReadableSpan) -> list[str]:
    """Walk parents from ``leaf`` up to ``root``; return the span names on the way."""
    by_id = {s.context.span_id: s for s in spans}
    names, span = [leaf.name], leaf
    while span.context.span_id != root.context.span_id:
        assert span.parent is not None, f"{span.name} has no parent: chain broken at {names}"
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_one_trace_from_the_gateway_through_amqp_to_the_database(traced_mesh) -> None:
    client, exporter = traced_mesh
    r = await client.get("/api/front/ask/A1")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] > 0

    await asyncio.sleep(0.3)  # the SimpleSpanProcessor exports as spans end
    spans = list(exporter.get_finished_spans())
    gateway_spans = [s for s in spans if s.kind == SpanKind.SERVER and "/api/front" in s.name]
    assert gateway_spans, [s.name for s in spans]
    root = gateway_spans[0]
    trace = _trace(spans, root.context.trace_id)
    consumer = next(s for s in trace if s.kind == SpanKind.CONSUMER and "back.lookup" in s.name)
    db = next(
        s
        for s in trace
        if s.kind == SpanKind.CLIENT
        and "pg_class" in str(s.attributes.get("db.statement", s.attributes.get("db.query.text")))
    )
    chain = _assert_chain(trace, db, root)
    # gateway server → (gateway client →) front server → publish → back consumer → db
    assert any("publish" in n for n in chain), chain
    assert consumer.name in chain
    assert any(s.name.startswith("GET /ask") for s in trace), [s.name for s in trace]


async def test_an_outbox_message_continues_the_trace_of_the_request_that_wrote_it(
    traced_mesh,
) -> None:
    client, exporter = traced_mesh
    r = await client.post("/api/front/reserve/B2")
    assert r.status_code == 200, r.text
    consumer = None
    for _ in range(100):
        spans = list(exporter.get_finished_spans())
        consumer = next(
            (s for s in spans if s.kind == SpanKind.CONSUMER and "front.reserved" in s.name), None
        )
        if consumer:
            break
        await asyncio.sleep(0.1)
    assert consumer is not None
    names = [(s.name, s.kind) for s in spans]
    root = next(
        (s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("POST /api/front")),
        None,
    )
    assert root is not None, [n for n in names if n[1] != SpanKind.CLIENT and "send" not in n[0]]
    assert consumer.context.trace_id == root.context.trace_id
    _assert_chain(_trace(spans, root.context.trace_id), consumer, root)
