"""Trace context: a server span per request when a tracer provider is configured, and the
upstream receives a traceparent that belongs to that span."""

from __future__ import annotations

import asyncio

import httpx
from opentelemetry.trace import SpanKind


async def finished(exporter, name: str) -> list:
    """Spans end just after the last response byte is sent, so poll briefly."""
    for _ in range(100):
        spans = [s for s in exporter.get_finished_spans() if s.name == name]
        if spans:
            return spans
        await asyncio.sleep(0.01)
    return []


def echoed(response: httpx.Response, name: str) -> list[str]:
    return [v for k, v in response.json()["headers"] if k == name]


async def test_server_span_and_propagated_traceparent(rig, traced_gateway) -> None:
    traced_gateway.exporter.clear()
    async with httpx.AsyncClient(base_url=traced_gateway.url) as client:
        r = await client.get("/api/beta/echo/t", headers=rig.auth())
    assert r.status_code == 200
    (traceparent,) = echoed(r, "traceparent")
    _, trace_id, span_id, flags = traceparent.split("-")
    spans = await finished(traced_gateway.exporter, "GET /api/beta")
    assert len(spans) == 1
    span = spans[0]
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.context.span_id, "016x") == span_id
    assert int(flags, 16) & 1  # sampled (newer SDKs also set the "random" bit)
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["mesh.service"] == "beta"


async def test_untrusted_inbound_traceparent_starts_new_trace(rig, traced_gateway) -> None:
    inbound = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    async with httpx.AsyncClient(base_url=traced_gateway.url) as client:
        r = await client.get("/api/beta/echo/t", headers={**rig.auth(), "traceparent": inbound})
    (traceparent,) = echoed(r, "traceparent")
    assert traceparent.split("-")[1] != "1" * 32


async def test_failed_upstream_marks_span_as_error(rig, traced_gateway) -> None:
    traced_gateway.exporter.clear()
    async with httpx.AsyncClient(base_url=traced_gateway.url) as client:
        r = await client.get("/api/down/x", headers=rig.auth())
    assert r.status_code == 502
    (span,) = await finished(traced_gateway.exporter, "GET /api/down")
    assert span.attributes["http.response.status_code"] == 502
    assert not span.status.is_ok


async def test_without_provider_a_traceparent_is_still_sent(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        first = await client.get("/api/alpha/echo/t", headers=rig.auth())
        second = await client.get("/api/alpha/echo/t", headers=rig.auth())
    (a,) = echoed(first, "traceparent")
    (b,) = echoed(second, "traceparent")
    assert a.split("-")[1] != b.split("-")[1]  # a new trace per request
