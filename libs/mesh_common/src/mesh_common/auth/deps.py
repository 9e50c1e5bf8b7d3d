"""FastAPI integration of token verification: install once, then declare what an endpoint needs.

Responsible for reading the bearer token of a request, verifying it with the verifier stored on
``app.state`` by :func:`install_auth`, and turning the outcome into ``Unauthorized`` (401, with
``WWW-Authenticate: Bearer``) or ``Forbidden`` (403) problem+json responses. Endpoints use the
dependencies below; they must not parse ``Authorization`` themselves, and this module must not
decide role semantics (that is :class:`~mesh_common.auth.principal.Principal`).

Usage::

    install_auth(app, TokenVerifier(settings.auth))

    BookerDep = Annotated[Principal, Depends(require("participant", scopes=["booking:write"]))]

    @router.post("/orders")
    async def create_order(principal: BookerDep) -> ...: ...

    AdminDep = Annotated[Principal, Depends(require("admin"))]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from mesh_common.auth.principal import Principal
from mesh_common.auth.verifier import TokenVerifier
from mesh_common.context import actor_var
from mesh_common.errors import Forbidden, Unauthorized, problem

REALM = "edumesh"
_STATE_KEY = "mesh_token_verifier"
_SCOPE_KEY = "mesh.principal"


def install_auth(app: FastAPI, verifier: TokenVerifier) -> None:
    """Store ``verifier`` on ``app.state`` and make 401/403 problems carry the RFC 6750
    ``WWW-Authenticate`` challenge (the generic DomainError handler sends no headers).

    Starlette picks the handler of the most specific exception class, so these win over the
    DomainError handler of :func:`mesh_common.errors.install_problem_handlers` whatever the order
    of installation.
    """
    setattr(app.state, _STATE_KEY, verifier)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Unauthorized)
        return auth_problem(exc, instance=request.url.path)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Forbidden)
        return auth_problem(exc, instance=request.url.path)


def www_authenticate(exc: Unauthorized | Forbidden) -> str:
    """The RFC 6750 challenge: no error code when no token was sent, ``invalid_token`` for a
    rejected one, ``insufficient_scope`` for a 403."""
    if isinstance(exc, Forbidden):
        return f'Bearer realm="{REALM}", error="insufficient_scope"'
    if exc.code == "token-missing":
        return f'Bearer realm="{REALM}"'
    detail = exc.detail.replace("\\", "").replace('"', "'")
    return f'Bearer realm="{REALM}", error="invalid_token", error_description="{detail}"'


def auth_problem(exc: Unauthorized | Forbidden, *, instance: str | None = None) -> JSONResponse:
    """The problem+json response for an auth failure, challenge header included."""
    return problem(
        exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        instance=instance,
        extra=exc.extra,
        headers={"WWW-Authenticate": www_authenticate(exc)},
    )


def get_verifier(app: FastAPI) -> TokenVerifier:
    verifier = getattr(app.state, _STATE_KEY, None)
    if not isinstance(verifier, TokenVerifier):
        raise RuntimeError("install_auth(app, verifier) was not called for this app")
    return verifier


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value; None when absent.
    Any other scheme is rejected rather than ignored, so a misconfigured client learns why."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'", code="token-invalid")
    return token.strip()


async def _principal_of(request: Request) -> Principal | None:
    # Verified once per request even if several dependencies ask. Cached in the ASGI scope, which
    # is per request by definition; ``request.state`` is not safe for this, because servers and
    # test hosts seed it from lifespan state and some share one dict across requests.
    cached = request.scope.get(_SCOPE_KEY)
    if isinstance(cached, Principal):
        return cached
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        return None
    principal = await get_verifier(request.app).verify(token)
    request.scope[_SCOPE_KEY] = principal
    actor_var.set(principal.subject)
    return principal


async def current_principal(request: Request) -> Principal:
    """The verified caller; 401 when the token is missing or invalid."""
    principal = await _principal_of(request)
    if principal is None:
        raise Unauthorized("a bearer token is required", code="token-missing")
    return principal


async def optional_principal(request: Request) -> Principal | None:
    """The verified caller, or None when no token was sent. A token that *is* sent but invalid
    is still a 401: a forged or expired credential is never silently downgraded to anonymous."""
    return await _principal_of(request)


def require(*roles: str, scopes: Iterable[str] = ()) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that passes the principal through when it has any of ``roles`` (none named:
    any authenticated caller) and all of ``scopes``; otherwise 403. Unauthenticated: 401."""
    wanted_roles = tuple(roles)
    wanted_scopes = tuple(scopes)

    async def _require(principal: Principal = Depends(current_principal)) -> Principal:
        missing = principal.missing(wanted_roles, wanted_scopes)
        if missing:
            raise Forbidden(
                "not allowed: requires " + " and ".join(missing),
                code="insufficient-scope"
                if any(m.startswith("scope ") for m in missing)
                else "forbidden",
            )
        return principal

    return _require


PrincipalDep = Annotated[Principal, Depends(current_principal)]
OptionalPrincipalDep = Annotated[Principal | None, Depends(optional_principal)]
StaffDep = Annotated[Principal, Depends(require("staff"))]
AdminDep = Annotated[Principal, Depends(require("admin"))]
ServiceDep = Annotated[Principal, Depends(require("service"))]
