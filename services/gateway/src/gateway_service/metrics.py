"""Prometheus metrics of the gateway: proxied requests by service, method and status, their
latency, and requests refused at the edge (auth, unknown service, body too large).

A registry of its own (not the process-global one), rendered at ``GET /metrics`` for callers
with the staff or service role."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total",
            "Requests proxied to a service, by service, method and status",
            ["service", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from forwarding a request to the end of its response, by service",
            ["service"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "gateway_refused_total",
            "Requests answered by the gateway itself without reaching a service, by code",
            ["code"],
            registry=self.registry,
        )

    def observe(self, service: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(service, method, str(status)).inc()
        self.latency.labels(service).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
