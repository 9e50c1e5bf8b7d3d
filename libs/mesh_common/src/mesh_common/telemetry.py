"""OpenTelemetry tracing setup.

Each service gets its own TracerProvider (several services share a process in the embedded
default, and each must report its own ``service.name``). Export is configured by the standard
``OTEL_*`` variables: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) set, spans
go over OTLP/HTTP in batches; otherwise tracing still propagates context but exports nothing.
Tests pass their own exporter. This module must not install global state beyond the W3C
propagator, which is process-wide by design.
"""

from __future__ import annotations

import os

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

propagate.set_global_textmap(
    CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
)


def create_tracer_provider(
    service_name: str,
    *,
    exporter: SpanExporter | None = None,
    processor: SpanProcessor | None = None,
) -> TracerProvider:
    """A provider for one service; OTLP exporter when the standard env vars ask for one."""
    resource = Resource.create({"service.name": service_name, "service.namespace": "edumesh"})
    provider = TracerProvider(resource=resource)
    if processor is not None:
        provider.add_span_processor(processor)
    elif exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        if os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
