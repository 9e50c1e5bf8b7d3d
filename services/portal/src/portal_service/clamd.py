"""A small asyncio client for clamd: PING, VERSION and INSTREAM.

The protocol (clamd(8)): commands prefixed with ``z`` end with NUL and so do the replies.
``zINSTREAM\\0`` is followed by chunks, each a 4-byte big-endian length and that many bytes, and a
zero-length chunk ends the stream; clamd then answers ``stream: OK``,
``stream: <signature> FOUND`` or ``... ERROR`` (``INSTREAM size limit exceeded. ERROR`` when the
stream passed clamd's ``StreamMaxLength``; clamd may close the connection at that point).

:class:`InStream` is fed while an upload arrives (``await s.write(data)``), so scanning needs no
second pass over the file and no buffering beyond one chunk; ``await s.finish()`` returns the
verdict. Every failure to reach clamd or get a verdict is :class:`ScannerUnavailable`, which the
caller treats as "refuse the upload" (fail closed). No retries: the upload is refused and the
customer tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_REPLY = 4096


class ScannerUnavailable(Exception):
    """clamd could not be reached, or gave no usable verdict (timeout, closed, garbage)."""


class ScannerLimit(Exception):
    """clamd refused the stream as too large (its ``StreamMaxLength``)."""


@dataclass(frozen=True)
class ScanResult:
    clean: bool
    signature: str | None  # set when not clean
    reply: str


class ClamdClient:
    """Connections to one clamd (TCP ``host:port`` or a unix ``socket_path``)."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 3310,
        socket_path: Path | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 120.0,
        chunk_bytes: int = 256 * 1024,
    ) -> None:
        if host is None and socket_path is None:
            raise ValueError("clamd needs a host or a socket path")
        self.host = host
        self.port = port
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes

    @property
    def address(self) -> str:
        return str(self.socket_path) if self.socket_path else f"{self.host}:{self.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.socket_path is not None:
                    return await asyncio.open_unix_connection(str(self.socket_path))
                return await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise ScannerUnavailable(
                f"cannot connect to clamd at {self.address}: {type(exc).__name__}: {exc}"
            ) from exc

    async def command(self, name: str) -> str:
        """A one-line command (``PING``, ``VERSION``, ``STATS``...) and its reply."""
        reader, writer = await self.connect()
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(b"z" + name.encode("ascii") + b"\0")
                await writer.drain()
                return await _read_reply(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise ScannerUnavailable(f"clamd {name} failed: {type(exc).__name__}") from exc
        finally:
            await _close(writer)

    async def ping(self) -> None:
        reply = await self.command("PING")
        if reply != "PONG":
            raise ScannerUnavailable(f"clamd answered PING with {reply!r}")

    async def version(self) -> str:
        return await self.command("VERSION")

    async def instream(self) -> InStream:
        """A started INSTREAM session (connected, command sent)."""
        reader, writer = await self.connect()
        stream = InStream(reader, writer, timeout=self.timeout, chunk_bytes=self.chunk_bytes)
        await stream.start()
        return stream

    async def scan_bytes(self, data: bytes) -> ScanResult:
        stream = await self.instream()
        try:
            await stream.write(data)
            return await stream.finish()
        finally:
            await stream.abort()


class InStream:
    """One INSTREAM session; chunks of at least ``chunk_bytes`` are sent as they fill up."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float,
        chunk_bytes: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.sent = 0
        self._buffer = bytearray()
        self._closed = False

    async def start(self) -> None:
        await self._send(b"zINSTREAM\0")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= self.chunk_bytes:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        chunk, self._buffer = self._buffer, bytearray()
        self.sent += len(chunk)
        await self._send(struct.pack(">I", len(chunk)), bytes(chunk))

    async def _send(self, *parts: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                for part in parts:
                    self.writer.write(part)
                await self.writer.drain()
        except (OSError, TimeoutError) as exc:
            # clamd closes the connection when the stream passes StreamMaxLength; its reply may
            # still be readable and says why.
            reply = await self._reply_after_failure()
            if reply is not None and "size limit" in reply.lower():
                raise ScannerLimit(reply) from exc
            # The reply is often lost: clamd closing with our data unread resets the connection.
            raise ScannerUnavailable(
                f"clamd connection failed while streaming after {self.sent} bytes: "
                f"{type(exc).__name__} (if this happens only for large files, clamd's "
                "StreamMaxLength is below PORTAL_UPLOAD_MAX_BYTES)"
            ) from exc

    async def _reply_after_failure(self) -> str | None:
        try:
            async with asyncio.timeout(1.0):
                return await _read_reply(self.reader)
        except Exception:
            return None

    async def finish(self) -> ScanResult:
        """End the stream and wait for the verdict."""
        await self._flush()
        await self._send(struct.pack(">I", 0))
        try:
            async with asyncio.timeout(self.timeout):
                reply = await _read_reply(self.reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise ScannerUnavailable(f"no verdict from clamd: {type(exc).__name__}") from exc
        finally:
            await self.abort()
        return parse_reply(reply)

    async def abort(self) -> None:
        if not self._closed:
            self._closed = True
            await _close(self.writer)


def parse_reply(reply: str) -> ScanResult:
    """``stream: OK`` / ``stream: <sig> FOUND`` / ``... ERROR`` -> result or exception."""
    if reply.endswith("ERROR"):
        if "size limit" in reply.lower():
            raise ScannerLimit(reply)
        raise ScannerUnavailable(f"clamd reported an error: {reply}")
    _, _, verdict = reply.partition(": ")
    if verdict == "OK":
        return ScanResult(clean=True, signature=None, reply=reply)
    if verdict.endswith(" FOUND"):
        return ScanResult(clean=False, signature=verdict[: -len(" FOUND")], reply=reply)
    raise ScannerUnavailable(f"unexpected clamd reply: {reply[:200]!r}")


async def _read_reply(reader: asyncio.StreamReader) -> str:
    """One NUL-terminated reply (a reply cut off by a closed connection counts as well)."""
    try:
        data = await reader.readuntil(b"\0")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise
        data = exc.partial
    except asyncio.LimitOverrunError as exc:
        raise ScannerUnavailable("clamd reply too long") from exc
    if len(data) > MAX_REPLY:
        raise ScannerUnavailable("clamd reply too long")
    return data.rstrip(b"\0").decode("utf-8", "replace").strip()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
