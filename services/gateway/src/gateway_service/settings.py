"""Gateway configuration: upstream services, token verification, limits and timeouts.

Responsible for describing and validating what the gateway needs. Callers (the launcher, tests,
``create_app_from_env``) construct it explicitly; nothing here runs at import time. It must not
open connections or build the app.
"""

from __future__ import annotations

import re

from mesh_common.auth import AuthSettings
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

DEFAULT_PUBLIC_PATHS = [
    "/api/*/health/live",
    "/api/*/health/ready",
    "/api/*/openapi.json",
    "/api/*/docs",
    "/api/*/docs-static/*",
    "/api/portal/public/*",
]


class AsyncApiSettings(BaseModel):
    """What the AsyncAPI document (``/asyncapi.json``) tells integrators about the broker
    (``GATEWAY_ASYNCAPI__PRODUCTION_HOST`` etc.)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The AMQPS endpoint outside systems connect to (host:port), and a developer's broker.
    production_host: str = "rabbitmq:5671"
    local_host: str = "127.0.0.1:5672"
    vhost: str = "edumesh"
    # The services' bus prefix (BusSettings.prefix), if any: it prefixes the exchange names.
    prefix: str = ""


class GatewaySettings(BaseSettings):
    """Settings of the edge gateway (env prefix ``GATEWAY_``, nested with ``__``, e.g.
    ``GATEWAY_AUTH__HS256_SECRET``; ``GATEWAY_UPSTREAMS`` is a JSON object)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # service name (as it appears in /api/<service>/...) -> base URL, e.g. http://127.0.0.1:8101
    upstreams: dict[str, str]
    auth: AuthSettings
    # Request bodies above this are refused with 413, by Content-Length or while streaming.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # Per-service overrides, e.g. the portal's uploads (the service enforces its own limit too):
    # GATEWAY_MAX_BODY_BYTES_BY_SERVICE='{"portal": 536870912}'.
    max_body_bytes_by_service: dict[str, int] = Field(
        default_factory=lambda: {"portal": 512 * 1024 * 1024}
    )
    # Glob patterns (fnmatch; ``*`` also matches ``/``) of /api paths that need no token.
    public_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_PUBLIC_PATHS))
    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    # Longest silence allowed while waiting for response headers or between body chunks.
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=512, gt=0)
    # Must stay below the upstream servers' idle keep-alive timeout (uvicorn: 5 s), otherwise
    # the pool reuses connections the upstream is just closing.
    keepalive_seconds: float = Field(default=4.0, gt=0)
    openapi_ttl_seconds: float = Field(default=60.0, gt=0)
    openapi_retry_seconds: float = Field(default=5.0, gt=0)
    # A service builds its OpenAPI document on the first request (seconds for a large one on a
    # busy host); the merged document waits this long per service before leaving it out.
    openapi_fetch_timeout_seconds: float = Field(default=15.0, gt=0)
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    # Per upstream call of the /admin dashboard's fan-out (GET /admin/api/tasks, .../executions);
    # a service slower than this is shown as unreachable.
    admin_timeout_seconds: float = Field(default=5.0, gt=0)
    # Peers whose X-Forwarded-For/-Proto/-Host are believed (a load balancer in front of us).
    # Everyone else's are dropped and replaced.
    trusted_proxies: frozenset[str] = frozenset()
    # By default the gateway starts a new trace at the edge: outside callers do not get to
    # choose trace ids that internal services then trust.
    trust_inbound_traceparent: bool = False
    asyncapi: AsyncApiSettings = Field(default_factory=AsyncApiSettings)
    title: str = "edumesh API"
    version: str = "0.1.0"

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not SERVICE_NAME.match(name):
                raise ValueError(f"invalid service name {name!r} (lowercase, digits, hyphens)")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream {name!r} needs an http(s) base URL, got {url!r}")
        return {name: url.rstrip("/") for name, url in value.items()}
