"""Prometheus metrics per service, on a registry of the service's own.

Several services share one process in the embedded default, so nothing here uses the global
registry: each app gets a :class:`Metrics` whose registry backs its ``/metrics`` endpoint.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel

from mesh_common.bus.core import ConsumeNext, MessageContext, Middleware, PublishNext
from mesh_common.bus.envelope import Envelope


class Metrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.bus_messages = Counter(
            "bus_messages_total",
            "Bus messages by direction and outcome",
            ["direction", "type", "outcome"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "outbox_backlog", "Outbox rows not yet relayed", registry=self.registry
        )
        self.outbox_oldest_age = Gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest unrelayed outbox row",
            registry=self.registry,
        )
        self.task_executions = Counter(
            "task_executions_total",
            "Task executions by task and status",
            ["task", "status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        m: Metrics = request.app.state.runtime.metrics
        return Response(m.render(), media_type=CONTENT_TYPE_LATEST)

    return router


class BusMetricsMiddleware(Middleware):
    """Counts every published and consumed bus message by type and outcome."""

    def __init__(self, metrics: Metrics) -> None:
        self.counter = metrics.bus_messages

    async def publish(self, envelope: Envelope, call_next: PublishNext) -> None:
        try:
            await call_next(envelope)
        except Exception:
            self.counter.labels("published", envelope.type, "error").inc()
            raise
        self.counter.labels("published", envelope.type, "ok").inc()

    async def consume(self, message: BaseModel, ctx: MessageContext, call_next: ConsumeNext) -> Any:
        outcome = "redelivered" if ctx.redelivered or ctx.attempt > 1 else "ok"
        try:
            result = await call_next(message, ctx)
        except Exception:
            self.counter.labels("consumed", ctx.message_type, "error").inc()
            raise
        self.counter.labels("consumed", ctx.message_type, outcome).inc()
        return result

    def dead_lettered(self, envelope: Envelope, queue: str, reason: str) -> None:
        self.counter.labels("dead_lettered", envelope.type, reason).inc()
