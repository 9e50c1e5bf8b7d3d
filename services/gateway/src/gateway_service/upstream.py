"""A lean HTTP/1.1 client for the gateway's hop to upstream services, built on httptools.

Responsible for connection pooling (bounded, LIFO reuse, idle expiry below the upstream's
keep-alive), writing requests (head and small body in one write; streamed bodies with
Content-Length or chunked framing and write back-pressure), parsing responses with httptools,
streaming response bodies with read back-pressure, and bounded timeouts (connect, pool wait,
silence while waiting for bytes). It must not interpret bodies or apply gateway policy.

Why not aiohttp or httpx: measured on this project's 2-core machine, aiohttp's client costs
about 240 us of CPU per proxied request and httpx several times more; this client does the
same hop for a fraction of that (docs/adr/0003-gateway-http-client.md has the figures).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

# Read back-pressure: stop reading from the upstream socket while this much body is waiting
# for the client, resume below the low mark.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"DELETE"})


class UpstreamError(Exception):
    """Base of every failure talking to an upstream."""


class ConnectFailed(UpstreamError):
    """The upstream could not be reached (refused, unresolvable, connect timeout)."""


class UpstreamTimeout(UpstreamError):
    """The upstream went silent for longer than the read timeout."""


class PoolExhausted(UpstreamError):
    """No connection became free within the connect timeout."""


class UpstreamClosed(UpstreamError):
    """The connection broke or the upstream sent something that is not HTTP/1.1."""


class _Stale(UpstreamClosed):
    """A reused keep-alive connection was closed before any response byte arrived."""


class _Conn(asyncio.Protocol):
    """One upstream connection and the state of the exchange currently running on it."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.forgotten = False
        self.uses = 0
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.framed = False  # the response has Content-Length or chunked framing
        self.informational = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.head_only = False
        self.request_cut = False  # we stopped sending the request body early
        self.error: BaseException | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.reading_paused = False
        self.write_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"invalid HTTP response from upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and not self.framed and self.error is None:
            # No Content-Length and not chunked: the body is delimited by the close.
            self.complete = True
            self._wake()
        elif not self.complete and self.error is None:
            if self.uses > 1 and not self.got_bytes:
                self._fail(_Stale("keep-alive connection closed by upstream"))
            else:
                self._fail(UpstreamClosed("upstream closed the connection"))
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(UpstreamClosed("upstream closed the connection"))
        self.pool._forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.content_length = None
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length":
            try:
                self.content_length = int(value)
            except ValueError:
                self.content_length = None
            self.framed = True
        elif lower == b"transfer-encoding":
            self.framed = True
        self.headers.append((lower, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # 1xx interim responses (e.g. 103 Early Hints) are skipped; the final one follows.
            self.informational = True
            return
        self.informational = False
        self.status = status
        self.head_done = True
        if status in (204, 304):
            self.framed = True
        if self.head_only:
            # httptools cannot be told that a HEAD response has no body; the exchange ends here
            # and the connection is not reused.
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive() and not self.head_only
        self._wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)  # stop pushing a body nobody will read

    # -- exchange ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def begin(self, head_only: bool) -> None:
        self.uses += 1
        self._reset()
        self.head_only = head_only
        self.last_activity = self.loop.time()

    async def _wait(self) -> None:
        """Wait for the next parser event, failing after read_timeout seconds of silence."""
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        # The clock counts the upstream's silence while we wait, not our own slowness.
        self.last_activity = max(self.last_activity, self.loop.time())
        if self.timer is None:
            self.timer = self.loop.call_at(
                self.last_activity + self.pool.read_timeout, self._on_timer
            )
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _on_timer(self) -> None:
        self.timer = None
        if self.waiter is None or self.waiter.done():
            return
        due = self.last_activity + self.pool.read_timeout
        if self.loop.time() < due:
            self.timer = self.loop.call_at(due, self._on_timer)
            return
        self._fail(UpstreamTimeout("upstream did not answer within the read timeout"))
        self.close()

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise self.error or UpstreamClosed("upstream closed the connection")
        self.transport.write(data)
        if self.write_paused:
            # An upstream that stops reading must not hold us forever; one that has already
            # answered in full wakes us too (see on_message_complete).
            self.drain_waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(self.pool.read_timeout):
                    await self.drain_waiter
            except TimeoutError as exc:
                self.close()
                raise UpstreamTimeout("upstream stopped reading the request body") from exc
            finally:
                self.drain_waiter = None

    async def head(self) -> None:
        while not self.head_done:
            await self._wait()

    def take_body(self) -> bytes | None:
        """Everything buffered so far, or None when nothing is buffered."""
        if not self.body:
            return None
        data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        return data


class UpstreamResponse:
    """Status and headers of an upstream response; the body is read or streamed once."""

    __slots__ = ("_conn", "_released", "content_length", "headers", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._released = False
        self.status = conn.status
        self.headers = conn.headers
        self.content_length = conn.content_length

    async def read(self) -> bytes:
        parts: list[bytes] = []
        async for chunk in self.chunks():
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                data = conn.take_body()
                if data is not None:
                    yield data
                    continue
                if conn.complete:
                    return
                await conn._wait()
        finally:
            self.release()

    def release(self) -> None:
        """Return the connection to the pool when the exchange ended cleanly, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.stop_timer()
        reusable = (
            conn.complete
            and conn.keep_alive
            and not conn.closed
            and not conn.body
            and not conn.request_cut
        )
        self._conn.pool._release(conn, reusable)


class UpstreamPool:
    """Connections to one upstream base URL."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        keepalive: float,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.host_header = (self.host if default_port else f"{self.host}:{self.port}").encode()
        self.base_path = (parts.path or "").rstrip("/").encode()
        self.max_connections = max_connections
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self._idle: list[_Conn] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(self), self.host, self.port, ssl=self._ssl
                )
        except TimeoutError as exc:
            raise ConnectFailed(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    async def _acquire(self) -> _Conn:
        now = self.loop.time()
        while self._idle:
            conn = self._idle.pop()  # most recently used first: least likely to be stale
            if conn.closed:
                continue
            if now - conn.idle_since >= self.keepalive:
                conn.close()
                continue
            return conn
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_Conn | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    handed = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    # Handed a connection (or a slot) in the same instant: pass it on.
                    late = waiter.result()
                    if late is not None:
                        self._release(late, True)
                    else:
                        self._wake_waiter(None)
                if isinstance(exc, TimeoutError):
                    raise PoolExhausted(f"all {self.max_connections} connections busy") from exc
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if handed is not None:
                return handed
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_waiter(None)
            raise

    def _wake_waiter(self, conn: _Conn | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if not reusable:
            conn.close()  # connection_lost -> _forget does the bookkeeping
            return
        if self._wake_waiter(conn):
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        if conn.forgotten:
            return
        conn.forgotten = True
        if conn in self._idle:
            self._idle.remove(conn)
        self._open -= 1
        if self._waiters and self._open < self.max_connections:
            # A slot became free: let one waiter open a fresh connection.
            self._wake_waiter(None)

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request; returns once the response head has arrived.

        ``target`` is the path plus query string, already encoded. ``body`` bytes are sent with
        the head; an async iterator is streamed with Content-Length framing when
        ``content_length`` is given, else chunked. A reused connection found closed before any
        response byte is replaced once for idempotent requests with a replayable body.
        """
        lines = [method, b" ", self.base_path, target, b" HTTP/1.1\r\nhost: ", self.host_header]
        for name, value in headers:
            lines += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
        # Framing is always written here; callers must not pass content-length or
        # transfer-encoding headers.
        streaming = body is not None and not isinstance(body, bytes)
        if streaming:
            if content_length is None:
                lines.append(b"\r\ntransfer-encoding: chunked")
            else:
                lines += (b"\r\ncontent-length: ", str(content_length).encode())
        elif isinstance(body, bytes):
            lines += (b"\r\ncontent-length: ", str(len(body)).encode())
        elif method not in NO_BODY_METHODS:
            lines.append(b"\r\ncontent-length: 0")
        lines.append(b"\r\n\r\n")
        head = b"".join(lines)
        if isinstance(body, bytes):
            head += body
        replayable = not streaming and method in IDEMPOTENT
        for attempt in (1, 2):
            conn = await self._acquire()
            conn.begin(head_only=method == b"HEAD")
            try:
                await conn.write(head)
                if streaming:
                    assert body is not None and not isinstance(body, bytes)
                    try:
                        await self._send_stream(conn, body, chunked=content_length is None)
                    except UpstreamError:
                        # An upstream may answer (e.g. 413) and hang up without reading the
                        # whole body: that answer is what the client should get.
                        if not conn.head_done:
                            raise
                        conn.request_cut = True
                await conn.head()
            except _Stale:
                conn.stop_timer()
                self._release(conn, False)
                if attempt == 1 and replayable:
                    continue
                raise
            except BaseException:
                conn.stop_timer()
                self._release(conn, False)
                raise
            return UpstreamResponse(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _send_stream(conn: _Conn, body: AsyncIterator[bytes], *, chunked: bool) -> None:
        async for chunk in body:
            if not chunk:
                continue
            if conn.complete or conn.error is not None:
                conn.request_cut = True  # the upstream answered (or failed) early
                return
            await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked and not conn.closed:
            await conn.write(b"0\r\n\r\n")
