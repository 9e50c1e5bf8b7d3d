"""FastAPI integration: 401 vs 403, problem+json bodies, WWW-Authenticate, role/scope rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from mesh_common.auth import (
    AdminDep,
    OptionalPrincipalDep,
    Principal,
    PrincipalDep,
    StaffDep,
    TokenVerifier,
    install_auth,
    mint_token,
    require,
)
from mesh_common.context import actor_var
from mesh_common.errors import install_problem_handlers

BookerDep = Annotated[Principal, Depends(require("participant", scopes=["booking:write"]))]
ServiceDep = Annotated[Principal, Depends(require("service"))]


def build_app(verifier: TokenVerifier | None) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    if verifier is not None:
        install_auth(app, verifier)

    @app.get("/me")
    async def me(principal: PrincipalDep) -> dict[str, object]:
        return {"sub": principal.subject, "actor": actor_var.get()}

    @app.get("/maybe")
    async def maybe(principal: OptionalPrincipalDep) -> dict[str, object]:
        return {"sub": principal.subject if principal else None}

    @app.get("/staff")
    async def staff(principal: StaffDep) -> dict[str, str]:
        return {"sub": principal.subject}

    @app.get("/admin")
    async def admin(principal: AdminDep) -> dict[str, str]:
        return {"sub": principal.subject}

    @app.post("/bookings")
    async def book(principal: BookerDep) -> dict[str, str]:
        return {"sub": principal.subject}

    @app.post("/sync")
    async def sync(principal: ServiceDep) -> dict[str, str]:
        return {"sub": principal.subject}

    @app.post("/sync-or-admin", dependencies=[Depends(require("service", "admin"))])
    async def sync_or_admin() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture
async def client(hs_verifier: TokenVerifier) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(hs_verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def bearer(secret: str, **kw: object) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(secret=secret, **kw)}  # type: ignore[arg-type]


async def test_missing_token_is_401_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/me")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == 'Bearer realm="edumesh"'
    body = r.json()
    assert body["code"] == "token-missing"
    assert body["status"] == 401
    assert body["instance"] == "/me"


async def test_invalid_token_is_401_with_invalid_token_challenge(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/me", headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["code"] == "token-invalid"


async def test_expired_token_is_401(client: httpx.AsyncClient, secret: str) -> None:
    r = await client.get("/me", headers=bearer(secret, subject="a", ttl_seconds=-100))
    assert r.status_code == 401
    assert r.json()["code"] == "token-expired"


async def test_non_bearer_scheme_is_401(client: httpx.AsyncClient) -> None:
    r = await client.get("/me", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert r.status_code == 401
    assert "Bearer" in r.json()["detail"]


async def test_valid_token_binds_actor(client: httpx.AsyncClient, secret: str) -> None:
    r = await client.get("/me", headers=bearer(secret, subject="alice"))
    assert r.status_code == 200
    assert r.json() == {"sub": "alice", "actor": "alice"}


async def test_optional_principal(client: httpx.AsyncClient, secret: str) -> None:
    assert (await client.get("/maybe")).json() == {"sub": None}
    r = await client.get("/maybe", headers=bearer(secret, subject="bob"))
    assert r.json() == {"sub": "bob"}
    # A forged token is rejected, not treated as anonymous.
    forged = await client.get("/maybe", headers={"Authorization": "Bearer x.y.z"})
    assert forged.status_code == 401


async def test_authenticated_but_not_allowed_is_403(client: httpx.AsyncClient, secret: str) -> None:
    r = await client.get("/staff", headers=bearer(secret, subject="p", roles=["participant"]))
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "forbidden"
    assert "role staff" in r.json()["detail"]
    # No token at all on the same endpoint is a 401, not a 403.
    assert (await client.get("/staff")).status_code == 401


async def test_scope_required(client: httpx.AsyncClient, secret: str) -> None:
    no_scope = await client.post(
        "/bookings", headers=bearer(secret, subject="p", roles=["participant"])
    )
    assert no_scope.status_code == 403
    assert no_scope.json()["code"] == "insufficient-scope"
    assert 'error="insufficient_scope"' in no_scope.headers["www-authenticate"]
    ok = await client.post(
        "/bookings",
        headers=bearer(secret, subject="p", roles=["participant"], scopes=["booking:write"]),
    )
    assert ok.status_code == 200
    wrong_role = await client.post(
        "/bookings", headers=bearer(secret, subject="s", roles=["staff"], scopes=["booking:write"])
    )
    assert wrong_role.status_code == 403


async def test_admin_implies_staff_and_scopes_but_not_identity_roles(
    client: httpx.AsyncClient, secret: str
) -> None:
    admin = bearer(secret, subject="root", roles=["admin"])
    assert (await client.get("/staff", headers=admin)).status_code == 200
    assert (await client.get("/admin", headers=admin)).status_code == 200
    # participant and service are identities, never implied by admin
    assert (await client.post("/bookings", headers=admin)).status_code == 403
    assert (await client.post("/sync", headers=admin)).status_code == 403
    assert (await client.post("/sync-or-admin", headers=admin)).status_code == 200
    staff = bearer(secret, subject="s", roles=["staff"])
    assert (await client.get("/admin", headers=staff)).status_code == 403


def test_principal_rules() -> None:
    admin = Principal(subject="a", roles=frozenset({"admin"}))
    assert admin.has_scope("schulconnex.sync")
    assert admin.has_role("staff") and not admin.has_role("service")
    svc = Principal(subject="s", roles=frozenset({"service"}), scopes=frozenset({"x"}))
    assert svc.allows(["service"], ["x"])
    assert svc.missing(["service"], ["x", "y"]) == ["scope y"]
    assert svc.missing(["staff", "admin"]) == ["role staff or admin"]
    assert Principal.from_claims({"sub": "z", "roles": "a b", "scp": ["s1"], "scope": "s2"}) == (
        Principal(
            subject="z",
            roles=frozenset({"a", "b"}),
            scopes=frozenset({"s1", "s2"}),
            claims={"sub": "z", "roles": "a b", "scp": ["s1"], "scope": "s2"},
        )
    )


async def test_missing_install_auth_is_a_server_error(secret: str) -> None:
    transport = httpx.ASGITransport(app=build_app(None), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/me", headers=bearer(secret, subject="a"))
    assert r.status_code == 500
