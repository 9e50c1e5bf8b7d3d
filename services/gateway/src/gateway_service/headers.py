"""Header policy at the trust boundary: what passes inbound and outbound, and what is added.

Responsible for the pure, per-request header rewriting of the proxy: dropping hop-by-hop headers,
stripping internal headers that outside callers must never be able to set (``x-mesh-*``,
``x-internal-*``, ``x-forwarded-*``, ``forwarded``, ...), choosing the request id, and building
the W3C ``traceparent`` when no OpenTelemetry tracer is active. It must not do I/O or know about
tokens beyond passing ``Authorization`` through.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# RFC 9110 section 7.6.1 plus the historical ones; never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
INTERNAL_PREFIXES = (b"x-mesh-", b"x-internal-", b"x-forwarded-")
# Set by the gateway itself; an inbound copy is never trusted as is. ("expect" is answered by
# the gateway's own server when the body is read, so it must not reach the upstream.)
GATEWAY_OWNED = frozenset(
    {
        b"host",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"expect",
    }
)
# Upstream response headers the edge server writes itself.
RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}

# Accepted inbound request ids: long enough to be unique-ish, short, and free of anything that
# could forge log lines (no spaces, quotes or control characters).
REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._-]{8,128}$")
TRACEPARENT_RE = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32


@dataclass(slots=True)
class Inbound:
    """What the proxy needs to know about one inbound request, collected in a single pass."""

    forward: list[tuple[str, str]] = field(default_factory=list)
    authorization: str | None = None
    content_length: bytes | None = None
    chunked: bool = False
    host: str | None = None
    request_id: bytes | None = None
    traceparent: bytes | None = None
    forwarded_for: str | None = None
    forwarded_proto: str | None = None
    forwarded_host: str | None = None


def split_inbound(raw_headers: Iterable[tuple[bytes, bytes]]) -> Inbound:
    """Sort inbound headers into "forward as is" and the ones the gateway decides about."""
    out = Inbound()
    forward = out.forward
    connection_tokens: set[bytes] = set()
    for name, value in raw_headers:
        name = name.lower()
        if name == b"authorization":
            out.authorization = value.decode("latin-1")
            forward.append(("authorization", out.authorization))
        elif name in HOP_BY_HOP:
            if name == b"transfer-encoding":
                out.chunked = True
            elif name == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))
        elif name == b"content-length":
            # Framing is re-written by the upstream client, never copied.
            out.content_length = value
        elif name.startswith(INTERNAL_PREFIXES):
            if name == b"x-forwarded-for":
                out.forwarded_for = value.decode("latin-1")
            elif name == b"x-forwarded-proto":
                out.forwarded_proto = value.decode("latin-1")
            elif name == b"x-forwarded-host":
                out.forwarded_host = value.decode("latin-1")
        elif name in GATEWAY_OWNED:
            if name == b"host":
                out.host = value.decode("latin-1")
            elif name == b"x-request-id":
                out.request_id = value
            elif name == b"traceparent":
                out.traceparent = value
        else:
            forward.append((name.decode("latin-1"), value.decode("latin-1")))
    if connection_tokens:
        # Headers listed in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
        names = {t.decode("latin-1") for t in connection_tokens}
        out.forward = [(k, v) for k, v in forward if k not in names or k == "authorization"]
    return out


def choose_request_id(inbound: bytes | None) -> str:
    """Keep a well-formed client request id (so callers can correlate their support tickets
    with our logs); anything else is replaced by a fresh one."""
    if inbound is not None and REQUEST_ID_RE.match(inbound):
        return inbound.decode("ascii")
    # Same shape as mesh_common.context.new_id() (32 hex digits) without building a UUID object;
    # this runs on every request.
    return os.urandom(16).hex()


def new_traceparent(inbound: bytes | None = None) -> str:
    """A W3C traceparent for the hop to the upstream when no OpenTelemetry tracer records:
    a new span id, continuing a trusted inbound trace id or starting a new trace."""
    trace_id = None
    flags = "01"
    if inbound is not None:
        match = TRACEPARENT_RE.match(inbound)
        if match and match.group(1).decode() != _ZERO_TRACE:
            trace_id = match.group(1).decode()
            flags = match.group(3).decode()
    if trace_id is None:
        trace_id = f"{random.getrandbits(128) or 1:032x}"
    return f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-{flags}"


def forwarded_headers(
    inbound: Inbound,
    *,
    client_ip: str | None,
    scheme: str,
    trusted_peer: bool,
) -> list[tuple[str, str]]:
    """``x-forwarded-for/-proto/-host``: replaced at the edge, extended behind a trusted proxy."""
    if trusted_peer and inbound.forwarded_for:
        chain = inbound.forwarded_for + (", " + client_ip if client_ip else "")
    else:
        chain = client_ip or ""
    proto = inbound.forwarded_proto if trusted_peer and inbound.forwarded_proto else scheme
    host = inbound.forwarded_host if trusted_peer and inbound.forwarded_host else inbound.host
    headers = [("x-forwarded-proto", proto)]
    if chain:
        headers.append(("x-forwarded-for", chain))
    if host:
        headers.append(("x-forwarded-host", host))
    return headers


def filter_response(
    raw_headers: Iterable[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop and internal ones, plus our request id."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw_headers:
        name = name.lower()
        if name in RESPONSE_DROP or name.startswith(INTERNAL_PREFIXES):
            continue
        out.append((name, value))
    out.append((b"x-request-id", request_id))
    return out
