"""Proxy behaviour over real HTTP: routing, auth, header policy, limits, failures."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

PROBLEM = "application/problem+json"


@pytest.fixture
async def client(rig) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=rig.gateway, timeout=10) as c:
        yield c


def header_map(echo: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in echo["headers"]:
        out.setdefault(k, []).append(v)
    return out


async def test_routes_to_each_service(rig, client: httpx.AsyncClient) -> None:
    for service in ("alpha", "beta"):
        r = await client.get(f"/api/{service}/echo/a/b?x=1&y=%20z", headers=rig.auth())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["service"] == service
        assert body["path"] == "/echo/a/b"
        assert body["query"] == "x=1&y=%20z"


async def test_encoded_path_is_forwarded_verbatim(rig, client: httpx.AsyncClient) -> None:
    r = await client.get("/api/alpha/echo/a%2Fb/%C3%A4", headers=rig.auth())
    assert r.status_code == 200
    assert r.json()["raw_path"] == "/echo/a%2Fb/%C3%A4"


async def test_json_post_roundtrip(rig, client: httpx.AsyncClient) -> None:
    r = await client.post("/api/beta/courses", json={"id": 7, "title": "Yoga"}, headers=rig.auth())
    assert r.status_code == 201
    assert r.json() == {"id": 7, "title": "Yoga"}


async def test_head_request(rig, client: httpx.AsyncClient) -> None:
    r = await client.head("/api/alpha/public/info")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(b'{"public":"yes"}')
    assert r.content == b""


async def test_unknown_service_is_404_problem(rig, client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nope/x", headers=rig.auth())
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "unknown-service"
    assert r.headers["x-request-id"]


async def test_unknown_gateway_path_is_404_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/definitely/not/here")
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["x-request-id"]


async def test_unknown_upstream_path_is_upstream_404(rig, client: httpx.AsyncClient) -> None:
    r = await client.get("/api/alpha/no-such-thing", headers=rig.auth())
    assert r.status_code == 404


async def test_dot_segments_refused(rig, client: httpx.AsyncClient) -> None:
    # HTTP clients normalise "..", so the request is written by hand; %2E%2E decodes to "..".
    host, port = rig.gateway.removeprefix("http://").split(":")
    for raw_path in (b"/api/alpha/public/../echo/x", b"/api/alpha/public/%2E%2E/echo/x"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        response = await reader.read()
        writer.close()
        assert response.startswith(b"HTTP/1.1 400 "), response[:200]
        assert b'"code":"invalid-path"' in response


async def test_inbound_internal_headers_are_replaced(rig, client: httpx.AsyncClient) -> None:
    inbound_trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    r = await client.get(
        "/api/alpha/echo/h",
        headers={
            **rig.auth(subject="alice"),
            "x-mesh-actor": "root",
            "X-Mesh-Tenant": "evil",
            "x-internal-role": "admin",
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-host": "evil.example",
            "x-forwarded-proto": "gopher",
            "forwarded": "for=6.6.6.6",
            "x-real-ip": "6.6.6.6",
            "x-request-id": "bad id with spaces",
            "traceparent": inbound_trace,
            "connection": "keep-alive, x-hop",
            "x-hop": "should-not-pass",
            "x-custom": "kept",
        },
    )
    assert r.status_code == 200
    h = header_map(r.json())
    assert h["x-mesh-actor"] == ["alice"]
    assert "x-mesh-tenant" not in h and "x-internal-role" not in h
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == [rig.gateway.removeprefix("http://")]
    assert h["x-forwarded-prefix"] == ["/api/alpha"]
    assert "forwarded" not in h and "x-real-ip" not in h and "x-hop" not in h
    assert h["x-custom"] == ["kept"]
    assert h["authorization"][0].startswith("Bearer ")  # defence in depth: services re-verify
    (request_id,) = h["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert r.headers["x-request-id"] == request_id
    (traceparent,) = h["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", traceparent)
    assert traceparent.split("-")[1] != "a" * 32  # untrusted inbound trace is not continued
    # internal response headers do not leak out; end-user cookies do pass
    assert "x-mesh-internal-secret" not in r.headers
    assert r.headers["set-cookie"].startswith("sid=abc")


async def test_well_formed_request_id_is_kept(rig, client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/api/beta/echo/x", headers={**rig.auth(), "x-request-id": "client-req-0001"}
    )
    assert r.headers["x-request-id"] == "client-req-0001"
    assert header_map(r.json())["x-request-id"] == ["client-req-0001"]


async def test_missing_token_is_401_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/alpha/echo/x")
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["code"] == "token-missing"
    assert r.headers["x-request-id"]


async def test_expired_token_is_401(rig, client: httpx.AsyncClient) -> None:
    r = await client.get("/api/alpha/echo/x", headers=rig.auth(ttl_seconds=-300))
    assert r.status_code == 401
    assert r.json()["code"] == "token-expired"


async def test_forged_token_is_401(rig, client: httpx.AsyncClient) -> None:
    from mesh_common.auth import mint_token

    forged = mint_token(
        subject="root", secret="not-the-gateway-secret-0123456789abc", roles=["admin"]
    )
    r = await client.get("/api/alpha/echo/x", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "token-bad-signature"
    garbage = await client.get("/api/alpha/echo/x", headers={"Authorization": "Bearer abc"})
    assert garbage.status_code == 401


async def test_public_paths_need_no_token(rig, client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/alpha/public/info")).json() == {"public": "yes"}
    assert (await client.get("/api/beta/health/live")).status_code == 200
    # only alpha's public/* is configured public
    assert (await client.get("/api/beta/public/info")).status_code == 401
    # a forged token on a public path is still refused, never silently ignored
    bad = await client.get("/api/alpha/public/info", headers={"Authorization": "Bearer x.y.z"})
    assert bad.status_code == 401


async def test_oversize_by_content_length_is_413(rig, client: httpx.AsyncClient) -> None:
    rig.progress.received = -1
    r = await client.post("/api/alpha/upload", content=b"x" * (2 * 1024 * 1024), headers=rig.auth())
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "payload-too-large"
    assert rig.progress.received == -1  # refused before the upstream saw anything


async def test_oversize_chunked_stream_is_413(rig, client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(48):  # 3 MiB against a 1 MiB limit, no Content-Length
            yield b"y" * 65536

    r = await client.post("/api/alpha/upload", content=body(), headers=rig.auth())
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["max_body_bytes"] == 1024 * 1024
    assert rig.progress.received <= 1024 * 1024


async def test_a_service_may_have_a_larger_body_limit(rig, client: httpx.AsyncClient) -> None:
    # beta (like the portal's uploads) allows 8 MiB; the default for everyone else is 1 MiB.
    big = b"z" * (3 * 1024 * 1024)
    assert (
        await client.post("/api/beta/upload", content=big, headers=rig.auth())
    ).status_code == 200
    assert (
        await client.post("/api/alpha/upload", content=big, headers=rig.auth())
    ).status_code == 413

    async def body() -> AsyncIterator[bytes]:
        for _ in range(144):  # 9 MiB streamed: over beta's own limit
            yield b"y" * 65536

    r = await client.post("/api/beta/upload", content=body(), headers=rig.auth())
    assert r.status_code == 413 and r.json()["max_body_bytes"] == 8 * 1024 * 1024


async def test_chunked_body_under_limit_passes(rig, client: httpx.AsyncClient) -> None:
    import hashlib

    data = bytes(range(256)) * 2048  # 512 KiB

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 50_000):
            yield data[i : i + 50_000]

    r = await client.post("/api/alpha/upload", content=body(), headers=rig.auth())
    assert r.status_code == 200
    assert r.json() == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_upstream_down_is_502_fast(rig, client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    r = await client.get("/api/down/anything", headers=rig.auth())
    assert r.status_code == 502
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "upstream-unreachable"
    assert time.monotonic() - started < 2


async def test_upstream_silence_is_504_bounded(rig, client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    r = await client.get("/api/alpha/slow", headers=rig.auth())
    assert r.status_code == 504
    assert r.json()["code"] == "upstream-timeout"
    assert time.monotonic() - started < 2.5


async def test_compressed_bytes_pass_through(rig, client: httpx.AsyncClient) -> None:
    r = await client.get("/api/alpha/gzip", headers=rig.auth())
    assert r.headers["content-encoding"] == "gzip"
    assert r.json() == {"zipped": True}  # decoded exactly once, by the client
