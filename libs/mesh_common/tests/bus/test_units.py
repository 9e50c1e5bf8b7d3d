"""Unit tests (no IO) of bus building blocks: settings, naming, envelope, errors, topic match."""

from __future__ import annotations

from typing import ClassVar

import pytest
from mesh_common.bus import BusSettings, HandlerRegistry, MessageContext, Topology
from mesh_common.bus.envelope import H_ACTOR, H_REQUEST_ID, make_envelope, message_type_of
from mesh_common.bus.errors import (
    RemoteConflict,
    RemoteDomainError,
    RemoteError,
    RemoteInternalError,
    error_envelope,
    remote_error,
)
from mesh_common.bus.memory import _topic_match
from mesh_common.bus.topology import main_queue_of
from mesh_common.context import bound
from mesh_common.errors import Conflict, Forbidden
from pydantic import BaseModel, ValidationError


class Ev(BaseModel):
    __message_type__: ClassVar[str] = "svc.thing_happened.v1"
    x: int


def test_settings_are_explicit_and_validated() -> None:
    s = BusSettings(service="course-export", retry_delays=(1.0, 5.0))
    assert s.amqp_url is None
    assert [s.retry_delay(n) for n in (1, 2, 3, 9)] == [1.0, 5.0, 5.0, 5.0]
    with pytest.raises(ValidationError):
        BusSettings(service="Bad Name")
    url = BusSettings(service="x", amqp_url="amqp://u:secret@h/").amqp_url
    assert url is not None and "secret" not in repr(url)


def test_names() -> None:
    t = Topology("p.")
    assert t.topic_exchanges == ("p.mesh.events", "p.mesh.commands", "p.mesh.rpc")
    spec = t.queue_spec(
        service="mail", handler="h", kind="event", routing_key="a.b.v1", delivery_limit=7
    )
    assert (spec.name, spec.retry_queue, spec.dlq) == ("p.mail.h", "p.mail.h.retry", "p.mail.h.dlq")
    assert spec.main_arguments()["x-delivery-limit"] == 7
    assert spec.main_arguments()["x-dead-letter-exchange"] == "p.mesh.dlx"
    assert spec.retry_arguments()["x-dead-letter-routing-key"] == "p.mail.h"
    assert main_queue_of("a.b.dlq") == main_queue_of("a.b.retry") == "a.b"


def test_envelope_takes_context() -> None:
    with bound(request_id="r1", actor="user:1"):
        env = make_envelope("event", Ev(x=1), app_id="svc")
    assert env.type == "svc.thing_happened.v1" and env.persistent
    assert env.headers[H_REQUEST_ID] == "r1" and env.headers[H_ACTOR] == "user:1"
    assert env.body == b'{"x":1}'
    with pytest.raises(TypeError):
        message_type_of(BaseModel)
    # A body encoded by the caller: the class names the type, the body is taken as given.
    pre = make_envelope("event", Ev, app_id="svc", body=b'{"x": 2}')
    assert (pre.type, pre.body) == ("svc.thing_happened.v1", b'{"x": 2}')
    with pytest.raises(TypeError, match="instance or its encoded body"):
        make_envelope("event", Ev, app_id="svc")


def test_registry_decorators_return_the_function_and_infer_the_model() -> None:
    registry = HandlerRegistry()

    async def on_ev(msg: Ev, ctx: MessageContext) -> None: ...

    assert registry.event()(on_ev) is on_ev
    assert registry.specs[0].model is Ev and registry.specs[0].name == "on_ev"
    with pytest.raises(ValueError):
        registry.event()(on_ev)  # same queue name twice

    async def untyped(msg, ctx) -> None: ...

    with pytest.raises(TypeError):
        registry.command()(untyped)


def test_error_envelopes_round_trip() -> None:
    err = remote_error(error_envelope(Conflict("taken", extra={"seat": 3})))
    assert isinstance(err, RemoteConflict) and isinstance(err, Conflict)
    assert (err.code, err.status, err.detail, err.extra) == ("conflict", 409, "taken", {"seat": 3})
    custom = remote_error({"code": "x-y", "message": "m", "domain": True, "status": 418})
    assert type(custom) is RemoteDomainError and custom.status == 418
    # A service-specific code keeps its code but maps to the family of its status.
    forbidden = remote_error(
        {"code": "delegation-required", "message": "m", "domain": True, "status": 403}
    )
    assert isinstance(forbidden, Forbidden) and forbidden.code == "delegation-required"
    internal = remote_error(error_envelope(ZeroDivisionError("boom")))
    assert isinstance(internal, RemoteInternalError) and "boom" in internal.message
    unknown = remote_error({"code": "weird"})
    assert type(unknown) is RemoteError and unknown.code == "weird"


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a.b.v1", "a.b.v1", True),
        ("a.*.v1", "a.b.v1", True),
        ("a.*", "a.b.v1", False),
        ("a.#", "a.b.v1", True),
        ("#", "a", True),
        ("a.#.v1", "a.v1", True),
        ("b.#", "a.b", False),
    ],
)
def test_topic_match(pattern: str, key: str, matches: bool) -> None:
    assert _topic_match(pattern, key) is matches


class Flaky(BaseModel):
    __message_type__: ClassVar[str] = "metrics.flaky.v1"
    fail_times: int


async def test_metrics_count_published_consumed_redelivered_and_dead_lettered() -> None:
    import asyncio as _asyncio

    from mesh_common.bus import BusSettings as _BusSettings
    from mesh_common.bus import MemoryBroker as _MemoryBroker
    from mesh_common.bus import create_bus as _create_bus
    from mesh_common.metrics import BusMetricsMiddleware, Metrics

    metrics = Metrics("metrics-test")
    bus = _create_bus(
        _BusSettings(service="metricstest", max_attempts=2, retry_delays=(0.01,)),
        broker=_MemoryBroker(),
        middlewares=[BusMetricsMiddleware(metrics)],
    )
    seen: dict[int, int] = {}

    @bus.event()
    async def on_flaky(msg: Flaky, ctx: MessageContext) -> None:
        seen[msg.fail_times] = seen.get(msg.fail_times, 0) + 1
        if ctx.attempt <= msg.fail_times:
            raise RuntimeError("boom")

    await bus.start()
    try:
        for n in (0, 1, 5):  # ok; ok on the retry; dead-lettered after 2 attempts
            await bus.publish(Flaky(fail_times=n))
        for _ in range(200):
            if seen.get(5) == 2 and seen.get(1) == 2:
                break
            await _asyncio.sleep(0.01)
        await _asyncio.sleep(0.05)
    finally:
        await bus.stop()

    def value(direction: str, outcome: str) -> float:
        v = metrics.registry.get_sample_value(
            "bus_messages_total",
            {"direction": direction, "type": "metrics.flaky.v1", "outcome": outcome},
        )
        return v or 0.0

    assert value("published", "ok") == 3
    assert value("consumed", "ok") == 1
    assert value("consumed", "redelivered") == 1
    assert value("consumed", "error") == 3  # 1 + 2 failed attempts
    assert value("dead_lettered", "max-attempts") == 1


class Ping(BaseModel):
    __message_type__: ClassVar[str] = "tracing.ping"
    n: int


class Pong(BaseModel):
    n: int
    trace_id: int
    span_id: int


async def test_consumer_spans_only_when_something_exports() -> None:
    """Without a span processor no consumer span is made (it could not be seen and costs CPU
    per message), yet the caller's trace goes on in the handler; with one, it is recorded."""
    from mesh_common.bus import MemoryBroker, create_bus
    from mesh_common.bus.tracing import BusTracingMiddleware
    from mesh_common.telemetry import create_tracer_provider
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    broker = MemoryBroker()
    server_provider = create_tracer_provider("tracing-server")  # no OTEL_* env: no processor
    server = create_bus(
        BusSettings(service="tracingserver"),
        broker=broker,
        middlewares=[BusTracingMiddleware(server_provider)],
    )

    @server.rpc()
    async def ping(msg: Ping, ctx: MessageContext) -> Pong:
        span = trace.get_current_span().get_span_context()
        return Pong(n=msg.n, trace_id=span.trace_id, span_id=span.span_id)

    caller_exporter = InMemorySpanExporter()
    caller_provider = create_tracer_provider("tracing-caller")
    caller_provider.add_span_processor(SimpleSpanProcessor(caller_exporter))
    client = create_bus(
        BusSettings(service="tracingclient"),
        broker=broker,
        middlewares=[BusTracingMiddleware(caller_provider)],
    )
    await server.start()
    await client.start()
    try:
        tracer = caller_provider.get_tracer("test")
        with tracer.start_as_current_span("caller") as caller:
            quiet = await client.call(Ping(n=1), Pong)
        [publish] = [s for s in caller_exporter.get_finished_spans() if "publish" in s.name]
        # No consumer span: the handler runs in the caller's publish span's context.
        assert quiet.trace_id == caller.get_span_context().trace_id
        assert publish.context is not None and quiet.span_id == publish.context.span_id

        server_exporter = InMemorySpanExporter()
        server_provider.add_span_processor(SimpleSpanProcessor(server_exporter))
        traced = await client.call(Ping(n=2), Pong)
        [process] = server_exporter.get_finished_spans()
        assert process.name == "tracing.ping process"
        assert process.context is not None and traced.span_id == process.context.span_id
    finally:
        await client.stop(grace=0.2)
        await server.stop(grace=0.2)
