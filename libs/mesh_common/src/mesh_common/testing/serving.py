"""uvicorn servers for tests that need real HTTP (browsers, the gateway, JWKS, streaming).

:class:`ServerThread` runs an event loop in a daemon thread and hosts any number of uvicorn
servers on it, each on its own ephemeral port (or a socket the caller bound), so a test talks to
them exactly as clients do while it keeps its own loop. Test support only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from concurrent.futures import Future
from typing import Any

import uvicorn


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a free port, for a server whose address must be known beforehand."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


class ServerThread:
    """An event loop in a daemon thread hosting uvicorn servers; ``stop()`` ends them all."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # Pass ``uvloop.new_event_loop()`` to serve as production does (python -m <service>).
        self.loop = loop or asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[tuple[uvicorn.Server, Future[None]]] = []

    def serve(
        self,
        app: Any,
        *,
        sock: socket.socket | None = None,
        proxy_headers: bool = True,
        start_timeout: float = 30.0,
        **options: Any,
    ) -> str:
        """Start ``app`` and return its base URL once it accepts connections."""
        sock = sock or bound_socket()
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=options.pop("timeout_graceful_shutdown", 2),
            server_header=False,
            proxy_headers=proxy_headers,
            **options,
        )
        # uvicorn captures signals only on the main thread, so serving from ours is fine.
        server = uvicorn.Server(config)
        future = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), self.loop)
        waited = 0.0
        while not server.started:
            if future.done():
                future.result()  # raises what stopped the server (e.g. a failing lifespan)
                raise RuntimeError("the server stopped before it started")
            if waited >= start_timeout:
                server.should_exit = True
                raise RuntimeError(f"the server did not start within {start_timeout:.0f} s")
            threading.Event().wait(0.01)
            waited += 0.01
        self.servers.append((server, future))
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every server to exit (newest first), wait for them, then end the loop."""
        for server, _ in reversed(self.servers):
            server.should_exit = True
        for _, future in self.servers:
            with contextlib.suppress(Exception):
                future.result(timeout=timeout)
        self.servers.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
