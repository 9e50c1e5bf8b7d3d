"""The real gateway (``gateway_service.app.create_app``) in production mode (rs256, keys from a
JWKS URL) in front of an upstream that echoes what reaches it.

The embedded mesh runs the gateway in hs256 mode and no service shows every header it got;
this rig shows exactly what crosses the trust boundary and lets the HS/RS confusion be tried
where it matters (a gateway that holds only public keys). Both servers run in one event loop in
a daemon thread, over real TCP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI, Request
from gateway_service.app import create_app
from gateway_service.settings import GatewaySettings
from mesh_common.auth import AuthSettings, jwks_document, mint_token
from mesh_common.auth.tokens import RsaKeyPair, generate_rsa_key
from mesh_common.testing.serving import ServerThread

EDGE_MAX_BODY = 1024 * 1024


def echo_app(key: RsaKeyPair) -> FastAPI:
    app = FastAPI(openapi_url=None)

    @app.get("/jwks.json")
    async def jwks() -> dict[str, Any]:
        return jwks_document(key)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/sink")
    async def sink(request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(request: Request, rest: str) -> dict[str, Any]:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return {
            "path": "/" + rest,
            "headers": headers,
            "client": request.client.host if request.client else None,
        }

    return app


@dataclass
class Edge:
    gateway: str
    key: RsaKeyPair

    def token(self, **kw: Any) -> str:
        kw.setdefault("subject", "alice")
        return mint_token(private_key=self.key.private_key, **kw)


@pytest.fixture(scope="session")
def edge() -> Iterator[Edge]:
    thread = ServerThread()
    key = generate_rsa_key("edge-1")
    try:
        upstream = thread.serve(echo_app(key), proxy_headers=True)
        settings = GatewaySettings(
            upstreams={"echo": upstream},
            auth=AuthSettings(mode="rs256", jwks_url=f"{upstream}/jwks.json"),
            public_paths=["/api/*/health/live", "/api/echo/public/*"],
            max_body_bytes=EDGE_MAX_BODY,
        )
        # As python -m gateway_service runs it: uvicorn must not rewrite the client address.
        gateway = thread.serve(create_app(settings), proxy_headers=False)
        yield Edge(gateway, key)
    finally:
        thread.stop()
