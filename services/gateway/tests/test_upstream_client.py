"""The gateway's pooled upstream client: reuse, stale keep-alive retry, disconnects, limits."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from gateway_service.app import create_app
from gateway_service.upstream import (
    ConnectFailed,
    PoolExhausted,
    UpstreamClosed,
    UpstreamPool,
    UpstreamTimeout,
)


async def test_connections_are_reused(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        ports = set()
        for _ in range(10):
            r = await client.get("/api/beta/echo/p", headers=rig.auth())
            ports.add(r.json()["client_port"])
    assert len(ports) == 1  # one pooled keep-alive connection served all ten


async def test_idle_connection_closed_by_upstream_is_not_reused(rig) -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    url = rig.thread.serve(app, timeout_keep_alive=1)
    pool = UpstreamPool(url, max_connections=4, keepalive=30, connect_timeout=1, read_timeout=2)
    try:
        first = await pool.request(b"GET", b"/ping", [])
        assert await first.read() == b'{"pong":true}'
        assert len(pool._idle) == 1
        await asyncio.sleep(1.3)  # the upstream drops the idle connection; the pool notices
        assert pool._idle == [] and pool._open == 0
        second = await pool.request(b"GET", b"/ping", [])
        assert await second.read() == b'{"pong":true}'
    finally:
        await pool.aclose()


@pytest.fixture
async def one_shot_server():
    """A raw HTTP server that answers the first request on each connection and closes the
    connection, without answering, on the second: the keep-alive race a pool must survive."""
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"content-length: 3" in head.lower():
                await reader.readexactly(3)
            if served:
                writer.close()
                return
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", connections
    server.close()


async def test_stale_connection_is_retried_for_idempotent_requests(one_shot_server) -> None:
    url, connections = one_shot_server
    pool = UpstreamPool(url, max_connections=4, keepalive=30, connect_timeout=1, read_timeout=2)
    try:
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        # Reuses the pooled connection, which dies unanswered; replaced once, transparently.
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        assert len(connections) == 2
        # A POST is not replayed: the upstream might have acted on it.
        with pytest.raises(UpstreamClosed):
            await pool.request(b"POST", b"/", [], b"abc")
    finally:
        await pool.aclose()


async def test_pool_limit_waits_then_fails_bounded(rig) -> None:
    pool = UpstreamPool(
        rig.alpha, max_connections=1, keepalive=30, connect_timeout=0.3, read_timeout=5
    )
    try:
        held = await pool.request(b"GET", b"/courses", [])  # not released yet
        started = time.monotonic()
        with pytest.raises(PoolExhausted):
            await pool.request(b"GET", b"/courses", [])
        assert time.monotonic() - started < 1
        await held.read()  # releases the connection
        again = await pool.request(b"GET", b"/courses", [])
        assert again.status == 200
        await again.read()
        assert pool._open == 1
    finally:
        await pool.aclose()


async def test_connect_failure_and_read_timeout(rig) -> None:
    down = UpstreamPool(rig.down, max_connections=2, keepalive=4, connect_timeout=1, read_timeout=1)
    with pytest.raises(ConnectFailed):
        await down.request(b"GET", b"/", [])
    assert down._open == 0
    slow = UpstreamPool(
        rig.alpha, max_connections=2, keepalive=4, connect_timeout=1, read_timeout=0.3
    )
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await slow.request(b"GET", b"/slow", [])
    assert time.monotonic() - started < 1.5
    await asyncio.sleep(0.05)
    assert slow._open == 0  # the timed-out connection was closed, not pooled


async def test_client_disconnect_stops_upstream_stream(rig) -> None:
    progress = rig.progress
    huge = 1024 * 1024 * 1024  # 1 GiB that nobody will read to the end
    async with (
        httpx.AsyncClient(base_url=rig.gateway, timeout=10) as client,
        client.stream("GET", f"/api/alpha/big?size={huge}", headers=rig.auth()) as response,
    ):
        got = 0
        async for chunk in response.aiter_raw():
            got += len(chunk)
            if got > 1024 * 1024:
                break
    # The client is gone; the gateway must stop pulling from the upstream.
    await asyncio.sleep(0.3)
    first = progress.produced
    await asyncio.sleep(0.3)
    assert progress.produced == first
    assert progress.produced < huge // 4
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        assert (await client.get("/api/alpha/courses", headers=rig.auth())).status_code == 200


async def test_head_and_no_content(rig) -> None:
    pool = UpstreamPool(
        rig.alpha, max_connections=2, keepalive=4, connect_timeout=1, read_timeout=2
    )
    try:
        head = await pool.request(b"HEAD", b"/public/info", [])
        assert head.status == 200 and head.content_length == len(b'{"public":"yes"}')
        assert await head.read() == b""
        get = await pool.request(b"GET", b"/public/info", [])
        assert await get.read() == b'{"public":"yes"}'
    finally:
        await pool.aclose()


def test_create_app_does_not_connect(rig) -> None:
    # Building the app is pure: no sockets until the first request or the lifespan.
    app = create_app(rig.settings)
    assert set(app.proxy.pools) == {"alpha", "beta", "down"}
    assert all(p._open == 0 for p in app.proxy.pools.values())


async def test_interim_1xx_responses_are_skipped() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: yes\r\n\r\nfinal"
        )
        await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(
        f"http://127.0.0.1:{port}",
        max_connections=1,
        keepalive=4,
        connect_timeout=1,
        read_timeout=2,
    )
    try:
        response = await pool.request(b"GET", b"/", [])
        assert response.status == 200
        assert (b"x-final", b"yes") in response.headers
        assert (b"link", b"</a.css>; rel=preload") not in response.headers
        assert await response.read() == b"final"
    finally:
        await pool.aclose()
        server.close()


async def test_early_answer_to_a_streamed_upload_is_returned() -> None:
    """An upstream that refuses a large upload at once and hangs up: the client must get the
    upstream's answer, not a 502 for the body that could not be sent."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(
        f"http://127.0.0.1:{port}",
        max_connections=1,
        keepalive=4,
        connect_timeout=1,
        read_timeout=2,
    )

    async def body():
        for _ in range(160):  # 10 MiB
            yield b"u" * 65536

    try:
        response = await pool.request(b"POST", b"/upload", [], body())
        assert response.status == 413
        assert await response.read() == b"big!"
    finally:
        await pool.aclose()
        server.close()
