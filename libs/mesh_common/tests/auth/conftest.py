"""Fixtures for the auth tests: a dev secret, an HS256 verifier and a real JWKS HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from mesh_common.auth import AuthSettings, TokenVerifier

SECRET = "test-secret-0123456789abcdefghijklmnop"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand, the way an attacker would: any header, HMAC with any bytes (or no
    signature at all for alg none)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    if hmac_key is None:
        return signing_input + "."
    sig = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


@pytest.fixture
def secret() -> str:
    return SECRET


@pytest.fixture
def forge() -> Any:
    return _forge


@pytest.fixture
def hs_settings() -> AuthSettings:
    return AuthSettings(mode="hs256", hs256_secret=SECRET)


@pytest.fixture
def hs_verifier(hs_settings: AuthSettings) -> TokenVerifier:
    return TokenVerifier(hs_settings)


@dataclass
class JwksServer:
    """A real HTTP server serving a JWKS document that a test can swap (key rotation)."""

    url: str = ""
    document: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    hits: int = 0
    status: int = 200


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    state = JwksServer()

    async def handler(request: web.Request) -> web.Response:
        state.hits += 1
        if state.status != 200:
            return web.Response(status=state.status, text="down")
        return web.json_response(state.document)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    try:
        yield state
    finally:
        await runner.cleanup()
