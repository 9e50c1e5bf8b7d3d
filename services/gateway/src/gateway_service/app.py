"""The gateway application: ``create_app(settings)`` wires proxy, OpenAPI, docs, health, /admin.

Responsible for assembling the edge: requests for ``/api/<service>/...`` go from the app's ASGI
entry point straight to the proxy, skipping FastAPI's middleware stack and routing; the
gateway's own routes (``/health/live``, ``/health/ready``, ``/openapi.json``, ``/docs``, the ops
dashboard ``/admin`` of :mod:`.admin`) are ordinary FastAPI routes. Every response carries
``x-request-id``. It must not contain proxy or merge logic itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from mesh_common.auth import Principal, TokenVerifier, current_principal, install_auth
from mesh_common.context import request_id_var
from mesh_common.docs import install_docs
from mesh_common.errors import Forbidden, install_problem_handlers, problem
from mesh_common.telemetry import create_tracer_provider
from opentelemetry.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST

from gateway_service.admin import admin_openapi_paths, admin_router
from gateway_service.asyncapi import asyncapi_openapi_paths, asyncapi_router
from gateway_service.headers import choose_request_id
from gateway_service.openapi import OpenApiAggregator
from gateway_service.proxy import API_PREFIX, Proxy, Receive, Scope, Send
from gateway_service.settings import GatewaySettings
from gateway_service.upstream import UpstreamError

log = logging.getLogger("gateway.app")


class GatewayApp(FastAPI):
    """FastAPI for the gateway's own routes; ``/api/...`` goes straight to the proxy.

    Proxied requests bypass the Starlette/FastAPI middleware stack (error guard, body-limit
    wrapper, exception middleware, router): for a request the proxy answers itself, with its
    own problem+json responses, all of that is per-request overhead on the hot path
    (docs/adr/0003-gateway-http-client.md).
    """

    proxy: Proxy | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        inbound_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                inbound_id = value
                break
        request_id = choose_request_id(inbound_id)
        token = request_id_var.set(request_id)
        try:
            if self.proxy is not None and scope["path"].startswith(API_PREFIX):
                await self._proxy(scope, receive, send, request_id)
                return
            rid = request_id.encode()

            async def send_with_id(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
                await send(message)

            await super().__call__(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        assert self.proxy is not None
        try:
            await self.proxy(scope, receive, send, request_id)
        except Exception:
            log.exception("gateway error on %s %s", scope["method"], scope["path"])
            try:
                response = problem(
                    500,
                    code="internal-error",
                    detail="An unexpected error occurred; it has been logged with the request id.",
                    instance=scope["path"],
                )
                await Proxy._send_response(send, response, request_id)
            except Exception:  # noqa: S110 - the response had already started; nothing to add
                pass


def _own_paths() -> dict[str, Any]:
    def op(summary: str, op_id: str) -> dict[str, Any]:
        return {
            "get": {
                "tags": ["gateway"],
                "summary": summary,
                "operationId": op_id,
                "security": [],
                "responses": {"200": {"description": "OK"}},
            }
        }

    return {
        "/health/live": op("Gateway liveness", "gateway__live"),
        "/health/ready": op("Gateway readiness, per upstream", "gateway__ready"),
        **admin_openapi_paths(),
        **asyncapi_openapi_paths(),
    }


class Gateway:
    """Everything the gateway owns at runtime; exposed as ``app.state.gateway``."""

    def __init__(
        self,
        settings: GatewaySettings,
        verifier: TokenVerifier | None = None,
        tracer_provider: TracerProvider | None = None,
    ):
        self.settings = settings
        self.verifier = verifier or TokenVerifier(settings.auth)
        self.proxy = Proxy(settings, self.verifier, tracer_provider)
        self.openapi = OpenApiAggregator(
            settings.upstreams,
            self._fetch_openapi,
            ttl=settings.openapi_ttl_seconds,
            retry=settings.openapi_retry_seconds,
            title=settings.title,
            version=settings.version,
            is_public=self.proxy.is_public,
            own_paths=_own_paths,
        )

    async def _get(self, service: str, path: bytes, seconds: float) -> tuple[int, bytes]:
        """A small GET to an upstream over the proxy's pool, whole body, bounded in time."""
        pool = self.proxy.pools[service]
        async with asyncio.timeout(seconds):
            response = await pool.request(b"GET", path, [("accept", "application/json")])
            try:
                return response.status, await response.read()
            finally:
                response.release()

    async def _fetch_openapi(self, name: str, base: str) -> dict[str, Any]:
        status, body = await self._get(
            name, b"/openapi.json", self.settings.openapi_fetch_timeout_seconds
        )
        if status != 200:
            raise ValueError(f"/openapi.json answered {status}")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("openapi.json is not a JSON object")
        return document

    async def check_upstream(self, name: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            status, _ = await self._get(name, b"/health/live", self.settings.health_timeout_seconds)
            report: dict[str, Any] = {"status": "up" if status == 200 else "down", "http": status}
        except (UpstreamError, TimeoutError, OSError) as exc:
            report = {"status": "down", "error": type(exc).__name__}
        report["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return report

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        names = sorted(self.settings.upstreams)
        reports = await asyncio.gather(*(self.check_upstream(n) for n in names))
        upstreams = dict(zip(names, reports, strict=True))
        ready = all(r["status"] == "up" for r in reports)
        return ready, {"status": "ready" if ready else "degraded", "upstreams": upstreams}

    async def startup(self) -> None:
        self.proxy.resolve_tracing()
        # Warm the merged OpenAPI document; an upstream that is down is recorded, not fatal.
        await self.openapi.refresh(force=True)

    async def shutdown(self) -> None:
        await self.proxy.aclose()
        await self.verifier.aclose()


def create_app(
    settings: GatewaySettings,
    *,
    verifier: TokenVerifier | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the gateway. ``verifier`` defaults to one built from ``settings.auth``;
    ``tracer_provider`` defaults to the global OpenTelemetry provider."""
    gateway = Gateway(settings, verifier, tracer_provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    app = GatewayApp(
        title=settings.title,
        version=settings.version,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_problem_handlers(app)
    # For the gateway's own protected routes (/admin/api/...); the proxy verifies by itself.
    install_auth(app, gateway.verifier)
    app.include_router(admin_router(gateway.proxy.pools, timeout=settings.admin_timeout_seconds))
    # AsyncAPI document of the AMQP messages beside the OpenAPI docs (public).
    app.include_router(asyncapi_router(settings))

    @app.get("/metrics", include_in_schema=False)
    async def metrics(principal: Principal = Depends(current_principal)) -> Response:
        # The gateway faces the internet: its metrics only for ops and scrapers with a token.
        if not (principal.has_role("staff") or principal.has_role("service")):
            raise Forbidden("metrics need the staff or service role", code="forbidden")
        return Response(gateway.proxy.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health/live", tags=["gateway"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["gateway"])
    async def ready() -> JSONResponse:
        ok, report = await gateway.readiness()
        return JSONResponse(report, status_code=200 if ok else 503)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(await gateway.openapi.document())

    # Swagger UI for the aggregated document, assets served by the gateway itself (no CDN).
    install_docs(app, title=settings.title)

    app.proxy = gateway.proxy
    return app


def create_app_from_env() -> FastAPI:
    """Zero-argument factory for ``uvicorn --factory gateway_service.app:create_app_from_env``;
    reads ``GATEWAY_*`` from the environment at call time, never at import."""
    provider = None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        # Spans exported over OTLP like every service's; without an endpoint the gateway makes
        # no spans at all (it still writes a traceparent) to keep the proxy path lean.
        provider = create_tracer_provider("gateway")
    return create_app(GatewaySettings(), tracer_provider=provider)
