"""One request's verified principal never leaks into another request.

Regression: the principal was cached on ``request.state``, which ASGI hosts seed from lifespan
state; where that dict is shared (asgi-lifespan + httpx here), an admin's identity answered a
later staff request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI
from mesh_common.auth import AuthSettings, Principal, TokenVerifier, install_auth, mint_token
from mesh_common.auth.deps import current_principal, require
from mesh_common.errors import install_problem_handlers
from pydantic import SecretStr

SECRET = "k" * 40


def app_with_lifespan_state() -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"something": 1}  # lifespan state: seeds every request's state

    app = FastAPI(lifespan=lifespan)
    install_problem_handlers(app)
    install_auth(app, TokenVerifier(AuthSettings(hs256_secret=SecretStr(SECRET))))

    @app.get("/whoami")
    async def whoami(p: Principal = Depends(current_principal)) -> dict[str, Any]:
        return {"sub": p.subject, "roles": sorted(p.roles)}

    @app.get("/admin-only", dependencies=[Depends(require("admin"))])
    async def admin_only() -> dict[str, bool]:
        return {"ok": True}

    return app


def bearer(sub: str, role: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(subject=sub, secret=SECRET, roles=[role])}


async def test_each_request_sees_its_own_principal() -> None:
    app = app_with_lifespan_state()
    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://t") as c,
    ):
        first = await c.get("/whoami", headers=bearer("root", "admin"))
        second = await c.get("/whoami", headers=bearer("bob", "staff"))
        assert first.json()["sub"] == "root"
        assert second.json() == {"sub": "bob", "roles": ["staff"]}
        assert (await c.get("/admin-only", headers=bearer("root", "admin"))).status_code == 200
        assert (await c.get("/admin-only", headers=bearer("bob", "staff"))).status_code == 403
        assert (await c.get("/admin-only")).status_code == 401
