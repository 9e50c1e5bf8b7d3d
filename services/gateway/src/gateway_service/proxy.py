"""The reverse proxy: ``/api/<service>/<path>`` -> the service's base URL, streamed both ways.

Responsible for one request's trip through the edge: route lookup, token verification (the
token is still forwarded so services verify again), header policy (:mod:`.headers`), body size
limit (by Content-Length and while streaming), tracing, and mapping upstream failures to
problem+json (502 unreachable, 504 timeout). Bodies are streamed with bounded buffers; only
bodies known to be small (<= 64 KiB) are read whole, because one write beats many.

It is a raw ASGI handler on the lean pooled client in :mod:`.upstream`
(docs/adr/0003-gateway-http-client.md explains why not httpx or aiohttp). It must not interpret
request or response bodies.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from mesh_common.auth import Principal, TokenVerifier, auth_problem, bearer_token
from mesh_common.errors import DomainError, Forbidden, Unauthorized, problem
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway_service.headers import (
    filter_response,
    forwarded_headers,
    new_traceparent,
    split_inbound,
)
from gateway_service.metrics import GatewayMetrics
from gateway_service.settings import GatewaySettings
from gateway_service.upstream import (
    ConnectFailed,
    PoolExhausted,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("gateway.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SMALL_BODY = 64 * 1024
# After refusing an oversized body, read (and discard) at most this much more so the client,
# which is usually still sending, gets to read the 413 instead of a connection reset.
DRAIN_LIMIT = 16 * 1024 * 1024
DRAIN_SECONDS = 5.0
API_PREFIX = "/api/"


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def compile_globs(patterns: list[str]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class Proxy:
    """Holds one connection pool per upstream and forwards requests. One per gateway app."""

    def __init__(
        self,
        settings: GatewaySettings,
        verifier: TokenVerifier,
        tracer_provider: trace.TracerProvider | None = None,
    ):
        self.settings = settings
        self.verifier = verifier
        self.upstreams = dict(settings.upstreams)
        self.pools = {
            name: UpstreamPool(
                url,
                max_connections=settings.max_connections,
                keepalive=settings.keepalive_seconds,
                connect_timeout=settings.connect_timeout_seconds,
                read_timeout=settings.read_timeout_seconds,
            )
            for name, url in settings.upstreams.items()
        }
        self._public = compile_globs(settings.public_paths)
        self._trusted_proxies = settings.trusted_proxies
        self._max_body = settings.max_body_bytes
        self._body_limits = dict(settings.max_body_bytes_by_service)
        # Without an explicit provider the global one is used if one is configured by start-up
        # (see resolve_tracing); otherwise no spans are made at all (the no-op API still costs
        # tens of microseconds per request) and the proxy writes a traceparent of its own.
        self._tracer: trace.Tracer | None = None
        self.metrics = GatewayMetrics()
        self._pool_names = {id(pool): name for name, pool in self.pools.items()}
        if tracer_provider is not None:
            self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        for pool in self.pools.values():
            await pool.aclose()

    def resolve_tracing(self) -> bool:
        """Decide once (at start-up) whether spans are recorded: yes with an explicit provider
        or a configured global one."""
        if self._tracer is None and not isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        ):
            self._tracer = trace.get_tracer(__name__)
        return self._tracer is not None

    def is_public(self, path: str) -> bool:
        return self._public.match(path) is not None

    def body_limit(self, service: str) -> int:
        """The request-body limit for ``service`` (uploads may allow more than the default)."""
        return self._body_limits.get(service, self._max_body)

    # -- request handling --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        path: str = scope["path"]
        service, _, _rest = path[len(API_PREFIX) :].partition("/")
        pool = self.pools.get(service)
        raw_path: bytes = scope.get("raw_path") or path.encode()
        prefix = (API_PREFIX + service).encode()
        if pool is None or raw_path[: len(prefix)] != prefix:
            # (a percent-encoded service name is not a service name)
            self.metrics.refused.labels("unknown-service").inc()
            await self._problem(
                send, scope, request_id, 404, "unknown-service", f"no service named {service!r}"
            )
            return
        if "/./" in path + "/" or "/../" in path + "/":
            # Refuse dot segments outright: a public-path glob must not be bypassable by
            # "/public/../private", whatever the upstream's router would make of it.
            self.metrics.refused.labels("invalid-path").inc()
            await self._problem(send, scope, request_id, 400, "invalid-path", "dot segments")
            return

        inbound = split_inbound(scope["headers"])
        principal: Principal | None = None
        try:
            token = bearer_token(inbound.authorization)
            if token is not None:
                principal = await self.verifier.verify(token)
            elif not self.is_public(path):
                raise Unauthorized("a bearer token is required", code="token-missing")
            if _rest.rstrip("/") == "metrics" and not (
                principal is not None
                and (principal.has_role("staff") or principal.has_role("service"))
            ):
                # A service's /metrics is for its scraper on the private network; from outside
                # the same rule as the gateway's own /metrics (found by tests/security).
                raise Forbidden("metrics need the staff or service role", code="forbidden")
        except (Unauthorized, Forbidden) as exc:
            self.metrics.refused.labels(exc.code).inc()
            await self._send_response(send, auth_problem(exc, instance=path), request_id)
            return
        except DomainError as exc:  # e.g. 503 when the identity provider's keys are unavailable
            await self._problem(send, scope, request_id, exc.status, exc.code, exc.detail)
            return

        content_length: int | None = None
        if inbound.content_length is not None and not inbound.chunked:
            try:
                content_length = int(inbound.content_length)
            except ValueError:
                content_length = -1
            if content_length < 0:
                await self._problem(send, scope, request_id, 400, "bad-request", "Content-Length")
                return
            if content_length > self.body_limit(service):
                await self._refuse_too_large(
                    send, scope, receive, request_id, _BodyState(self.body_limit(service))
                )
                return
        # With Transfer-Encoding, Content-Length is ignored (RFC 9112 section 6.3); the upstream
        # client writes the framing itself either way.

        headers = inbound.forward
        headers.append(("x-request-id", request_id))
        headers.append(("x-forwarded-prefix", API_PREFIX + service))
        client = scope.get("client")
        client_ip = client[0] if client else None
        headers.extend(
            forwarded_headers(
                inbound,
                client_ip=client_ip,
                scheme=scope.get("scheme", "http"),
                trusted_peer=client_ip in self._trusted_proxies,
            )
        )
        if principal is not None:
            headers.append(("x-mesh-actor", principal.subject))

        target = raw_path[len(prefix) :] or b"/"
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query

        body: bytes | AsyncIterator[bytes] | None = None
        state = _BodyState(self.body_limit(service))
        if content_length is not None and content_length <= SMALL_BODY:
            if content_length:
                body = await _read_small(receive)
                if body is None:
                    return  # the client went away while sending
        elif content_length is not None or inbound.chunked:
            body = self._stream_body(receive, state)

        trusted = inbound.traceparent if self.settings.trust_inbound_traceparent else None
        if self._tracer is None:
            headers.append(("traceparent", new_traceparent(trusted)))
            await self._forward(
                scope, receive, send, request_id, pool, target, headers, body, content_length, state
            )
            return
        span = self._tracer.start_span(
            f"{scope['method']} /api/{service}",
            kind=SpanKind.SERVER,
            context=propagate.extract({"traceparent": trusted.decode("latin-1")})
            if trusted
            else None,
            attributes={"http.request.method": scope["method"], "mesh.service": service},
        )
        try:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            headers.extend(carrier.items())
            status = await self._forward(
                scope, receive, send, request_id, pool, target, headers, body, content_length, state
            )
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        finally:
            span.end()

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        pool: UpstreamPool,
        target: bytes,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None,
        state: _BodyState,
    ) -> int:
        started = time.perf_counter()
        status = await self._forward_inner(
            scope, receive, send, request_id, pool, target, headers, body, content_length, state
        )
        service = self._pool_names.get(id(pool), "?")
        self.metrics.observe(service, scope["method"], status, time.perf_counter() - started)
        return status

    async def _forward_inner(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        pool: UpstreamPool,
        target: bytes,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None,
        state: _BodyState,
    ) -> int:
        started = False
        try:
            upstream = await pool.request(
                scope["method"].encode(),
                target,
                headers,
                body,
                content_length=content_length if not isinstance(body, bytes) else None,
            )
            try:
                response_headers = filter_response(upstream.headers, request_id.encode())
                length = upstream.content_length
                if length is not None and length <= SMALL_BODY:
                    payload = await upstream.read()
                    await send(
                        {
                            "type": "http.response.start",
                            "status": upstream.status,
                            "headers": response_headers,
                        }
                    )
                    started = True
                    await send({"type": "http.response.body", "body": payload})
                    return upstream.status
                await send(
                    {
                        "type": "http.response.start",
                        "status": upstream.status,
                        "headers": response_headers,
                    }
                )
                started = True
                await self._stream_response(upstream, send, receive, state, body)
                return upstream.status
            finally:
                upstream.release()
        except (UpstreamError, OSError, BodyTooLarge, ClientGone) as exc:
            if state.too_large:
                await self._refuse_too_large(send, scope, receive, request_id, state)
                return 413
            if state.client_gone or started:
                # Nothing sensible can be sent any more; the truncated response (or closed
                # connection) tells the client. Leave a trace in the log.
                log.warning("proxy %s aborted after start: %r", scope["path"], exc)
                return 499 if state.client_gone else 502
            if isinstance(exc, ConnectFailed):
                status, code, detail = 502, "upstream-unreachable", "the service is unreachable"
            elif isinstance(exc, PoolExhausted):
                status, code, detail = 503, "upstream-busy", "the service has no free connection"
            elif isinstance(exc, UpstreamTimeout):
                status, code, detail = 504, "upstream-timeout", "the service did not answer in time"
            else:
                status, code, detail = 502, "bad-gateway", "the service connection failed"
            log.warning("proxy %s %s failed: %r", scope["method"], scope["path"], exc)
            await self._problem(send, scope, request_id, status, code, detail)
            return status

    @staticmethod
    async def _stream_response(
        upstream: UpstreamResponse,
        send: Send,
        receive: Receive,
        state: _BodyState,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> None:
        """Relay a long or unsized response; stop (and free the upstream connection) as soon
        as the client disconnects instead of reading the rest of the body for nobody."""
        watcher: asyncio.Task[None] | None = None
        task = asyncio.current_task()
        if task is not None and (not isinstance(body, AsyncIterator) or state.ended):
            # Only once the request body is fully read may receive() be used to watch.
            async def watch() -> None:
                # The first message may still be the (empty) request body of a GET.
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not state.responded:
                    state.client_gone = True
                    task.cancel()

            watcher = asyncio.ensure_future(watch())
        try:
            async for chunk in upstream.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            state.responded = True
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            if not state.client_gone or task is None:
                raise
            task.uncancel()
            raise ClientGone from None
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _stream_body(self, receive: Receive, state: _BodyState) -> AsyncIterator[bytes]:
        limit = state.limit
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                state.client_gone = True
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            if chunk:
                state.seen += len(chunk)
                if state.seen > limit:
                    state.too_large = True
                    state.ended = not message.get("more_body", False)
                    raise BodyTooLarge
                yield chunk
            if not message.get("more_body", False):
                state.ended = True
                return

    async def _refuse_too_large(
        self,
        send: Send,
        scope: Scope,
        receive: Receive,
        request_id: str,
        state: _BodyState,
    ) -> None:
        if not state.ended:
            await _drain(receive, DRAIN_LIMIT - state.seen)
        await self._problem(
            send,
            scope,
            request_id,
            413,
            "payload-too-large",
            f"request body exceeds {state.limit} bytes",
            extra={"max_body_bytes": state.limit},
        )

    async def _problem(
        self,
        send: Send,
        scope: Scope,
        request_id: str,
        status: int,
        code: str,
        detail: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        response = problem(status, code=code, detail=detail, instance=scope["path"], extra=extra)
        await self._send_response(send, response, request_id)

    @staticmethod
    async def _send_response(send: Send, response: Any, request_id: str) -> None:
        headers = [*response.raw_headers, (b"x-request-id", request_id.encode())]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": response.body})


class _BodyState:
    __slots__ = ("client_gone", "ended", "limit", "responded", "seen", "too_large")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # the body limit of the target service
        self.seen = 0
        self.too_large = False
        self.ended = False  # the request body has been read to its end
        self.responded = False  # the last response byte is on its way
        self.client_gone = False


async def _read_small(receive: Receive) -> bytes | None:
    """A body whose Content-Length is small, read whole (uvicorn enforces the framing)."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _drain(receive: Receive, limit: int) -> None:
    """Discard the rest of a refused body, bounded in bytes and time."""

    async def _loop() -> None:
        left = limit
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(_loop(), DRAIN_SECONDS)
    except TimeoutError:
        pass
