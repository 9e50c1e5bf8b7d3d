"""Serve a :class:`FakeSchulconnex` over real HTTP with uvicorn on a free port.

``async with FakeServer(fake) as server:`` binds ``127.0.0.1:0`` (the kernel picks a free port),
serves in the running event loop and stops gracefully at the end; ``server.base_url`` is the API
root (``http://127.0.0.1:<port>/v1``) and ``server.token_url`` the token endpoint. The embedded
launcher (``make run``) and the tests use it; ``python -m schulconnex_sync_service.fake`` runs one
standalone. This module must not be imported by the production sync code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from typing import Any

import uvicorn

from schulconnex_sync_service.fake.app import FakeClient, FakeSchulconnex


class _Server(uvicorn.Server):
    """Leaves signal handling to whoever runs the loop (tests, the launcher)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class FakeServer:
    """One fake Schulconnex server on ``host`` and a free (or given) port."""

    def __init__(self, fake: FakeSchulconnex, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        self.host = host
        self._port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self._socket is not None, "not started"
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    async def start(self) -> FakeServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        sock.set_inheritable(True)
        self._socket = sock
        config = uvicorn.Config(
            self.fake.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            loop="asyncio",
            http="h11" if os.environ.get("SCHULCONNEX_FAKE_H11") else "auto",
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="fake-schulconnex"
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error
                raise RuntimeError("the fake Schulconnex server stopped during startup")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()
        self._task = None
        self._server = None

    async def __aenter__(self) -> FakeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def demo_fake(**kwargs: Any) -> tuple[FakeSchulconnex, dict[str, str]]:
    """A fake with one client (both grants) and one user, random credentials; returns the fake
    and the credentials (never written anywhere: the caller puts them in the environment)."""
    creds = {
        "client_id": "edumesh-" + secrets.token_hex(4),
        "client_secret": secrets.token_urlsafe(24),
        "username": "sync-" + secrets.token_hex(3),
        "password": secrets.token_urlsafe(18),
    }
    fake = FakeSchulconnex(
        clients=[FakeClient(creds["client_id"], creds["client_secret"])],
        users={creds["username"]: creds["password"]},
        **kwargs,
    )
    return fake, creds
