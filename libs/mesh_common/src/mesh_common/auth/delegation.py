"""Signed delegation: a machine client acting for one participant (RFC 8693 ``act`` claim).

A service client (role ``service``, e.g. the website's backend) may read or change a
participant's data only with that participant's own token or with a **delegation token**: a
short-lived JWT, signed with the mesh's token key (the shared HS256 secret in the embedded
default, the identity provider's RS256 key in production, where it comes from an RFC 8693 token
exchange), that says "client *actor* may act for participant *P* with scopes *S* until *exp*".

Format (everything required)::

    header  {"alg": "HS256" | "RS256", "typ": "delegation+jwt", ["kid": ...]}
    claims  {"iss": <mesh issuer>, "aud": "edumesh-delegation", "sub": <participant subject>,
             "participant_id": "<coursedb participant id>", "act": {"sub": <actor subject>},
             "scope": "profile:read ...", "iat": ..., "exp": <= iat + 300, "jti": "..."}

Why these rules: the explicit ``typ`` (RFC 8725 section 3.11) and the separate audience keep a
delegation from ever passing as an ordinary bearer token (the gateway and every service refuse
its audience) and an ordinary token from passing as a delegation. The delegation is bound to its
actor: it is only honoured next to a valid bearer token whose subject is ``act.sub``, so a leaked
delegation alone opens nothing. Its lifetime is at most five minutes, its scopes are the only
rights it carries, and its ``jti`` goes into the audit trail of whoever honours it.

Responsible for minting (development, tests, the embedded default) and verifying delegation
tokens and for turning a valid one into a :class:`Delegation`. It raises
:class:`~mesh_common.errors.Forbidden` (403: the caller is authenticated, the delegation does not
authorise it) with a stable code, never logs a token, and does not decide which data a delegated
principal may touch (the service does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from mesh_common.auth.principal import Principal, Role
from mesh_common.auth.settings import DEFAULT_ISSUER, AuthSettings
from mesh_common.auth.verifier import TokenVerifier, peek_header
from mesh_common.errors import Forbidden, Unauthorized

DELEGATION_TYPE = "delegation+jwt"
DELEGATION_AUDIENCE = "edumesh-delegation"
MAX_LIFETIME_SECONDS = 300
#: HTTP request header that carries a delegation token next to the client's own bearer token.
DELEGATION_HEADER = "X-Delegation-Token"


class DelegationRefused(Forbidden):
    """The delegation does not authorise this call. ``code`` says why (see docs/auth.md)."""

    code, title = "delegation-invalid", "Delegation refused"


@dataclass(frozen=True, slots=True)
class Delegation:
    """A verified delegation: ``actor`` may act for ``participant_id`` with ``scopes``."""

    participant_id: str
    subject: str
    actor: str
    scopes: frozenset[str]
    jti: str
    issued_at: int
    expires_at: int
    tenant: str | None = None

    def principal(self) -> Principal:
        """The participant as seen through this delegation: role ``participant`` and only the
        delegated scopes; ``claims["act"]`` names the actor."""
        return Principal(
            subject=self.subject,
            roles=frozenset({Role.PARTICIPANT.value}),
            scopes=self.scopes,
            participant_id=self.participant_id,
            tenant=self.tenant,
            claims=MappingProxyType(
                {
                    "sub": self.subject,
                    "participant_id": self.participant_id,
                    "act": {"sub": self.actor},
                    "jti": self.jti,
                    "scope": " ".join(sorted(self.scopes)),
                }
            ),
        )


def mint_delegation(
    *,
    participant_id: str,
    actor: str,
    scopes: Iterable[str],
    secret: str | bytes | None = None,
    private_key: RSAKey | None = None,
    subject: str | None = None,
    ttl_seconds: int = MAX_LIFETIME_SECONDS,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DELEGATION_AUDIENCE,
    tenant: str | None = None,
    jti: str | None = None,
    now: float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Sign a delegation for ``actor`` to act for ``participant_id``.

    Exactly one of ``secret`` (HS256) and ``private_key`` (RS256) must be given. ``ttl_seconds``
    above :data:`MAX_LIFETIME_SECONDS` is refused; a negative one yields an already expired
    token (tests). ``subject`` defaults to ``participant:<id>``. ``extra_claims`` exists so tests
    can build deliberately broken tokens.
    """
    if (secret is None) == (private_key is None):
        raise ValueError("give exactly one of secret (HS256) or private_key (RS256)")
    if ttl_seconds > MAX_LIFETIME_SECONDS:
        raise ValueError(f"a delegation lives at most {MAX_LIFETIME_SECONDS} seconds")
    scope_list = sorted(set(scopes))
    if not scope_list:
        raise ValueError("a delegation needs at least one scope")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject or f"participant:{participant_id}",
        "participant_id": participant_id,
        "act": {"sub": actor},
        "scope": " ".join(scope_list),
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": jti or uuid.uuid4().hex,
    }
    if tenant is not None:
        claims["tenant"] = tenant
    if extra_claims:
        claims.update(extra_claims)
    header: dict[str, Any] = {"typ": DELEGATION_TYPE}
    if secret is not None:
        key = OctKey.import_key(secret.encode() if isinstance(secret, str) else secret)
        return jwt.encode({**header, "alg": "HS256"}, claims, key)
    assert private_key is not None
    header["alg"] = "RS256"
    if private_key.kid:
        header["kid"] = private_key.kid
    return jwt.encode(header, claims, private_key)


def _refused(detail: str, code: str = "delegation-invalid") -> DelegationRefused:
    return DelegationRefused(detail, code=code)


class DelegationVerifier:
    """Verifies delegation tokens with the same keys as the mesh's bearer tokens.

    ``settings`` are the process's :class:`AuthSettings` (same mode, key or JWKS, issuer); only
    the audience differs (``audience``, default :data:`DELEGATION_AUDIENCE`).
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        audience: str = DELEGATION_AUDIENCE,
        max_lifetime_seconds: int = MAX_LIFETIME_SECONDS,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if audience == settings.audience:
            raise ValueError("the delegation audience must differ from the bearer-token audience")
        self._tokens = TokenVerifier(
            settings.model_copy(update={"audience": audience}), http_client=http_client
        )
        self._max_lifetime = max_lifetime_seconds
        self._max_bytes = settings.max_token_bytes

    async def aclose(self) -> None:
        await self._tokens.aclose()

    async def verify(
        self, token: str, *, actor: Principal, scopes: Iterable[str] = ()
    ) -> Delegation:
        """The delegation carried by ``token`` if it authorises ``actor`` (the verified bearer of
        the same request) with all of ``scopes``; :class:`DelegationRefused` otherwise.

        Codes: ``delegation-not-allowed`` (actor is not a service client), ``delegation-invalid``
        (malformed, forged, wrong type/audience/issuer, lifetime too long, claims missing),
        ``delegation-expired``, ``delegation-actor-mismatch`` (issued to another client or
        tenant), ``insufficient-scope``. ``Unavailable`` (503) passes through when rs256 keys
        were never obtained.
        """
        if not actor.has_role(Role.SERVICE.value):
            raise _refused(
                "only service clients act through a delegation", "delegation-not-allowed"
            )
        if len(token) > self._max_bytes:
            raise _refused("delegation token is too large")
        header = _header(token)
        if header.get("typ") != DELEGATION_TYPE:
            raise _refused(f"token is not a delegation (typ must be {DELEGATION_TYPE!r})")
        try:
            verified = await self._tokens.verify(token)
        except Unauthorized as exc:
            code = "delegation-expired" if exc.code == "token-expired" else "delegation-invalid"
            raise _refused(f"delegation refused: {exc.detail}", code) from None
        claims = verified.claims
        delegation = self._parse(claims)
        if delegation.actor != actor.subject:
            raise _refused(
                "the delegation was issued to another client", "delegation-actor-mismatch"
            )
        if delegation.tenant and actor.tenant and delegation.tenant != actor.tenant:
            raise _refused("the delegation belongs to another tenant", "delegation-actor-mismatch")
        missing = sorted(set(scopes) - delegation.scopes)
        if missing:
            raise _refused(
                "the delegation does not grant scope " + " and ".join(missing),
                "insufficient-scope",
            )
        return delegation

    def _parse(self, claims: Mapping[str, Any]) -> Delegation:
        act = claims.get("act")
        actor = act.get("sub") if isinstance(act, Mapping) else None
        if not isinstance(actor, str) or not actor:
            raise _refused("delegation lacks the actor claim act.sub")
        participant = claims.get("participant_id")
        if isinstance(participant, int) and not isinstance(participant, bool):
            participant = str(participant)
        if not isinstance(participant, str) or not participant:
            raise _refused("delegation lacks the participant_id claim")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 128:
            raise _refused("delegation lacks a usable jti claim")
        issued, expires = _timestamp(claims.get("iat")), _timestamp(claims.get("exp"))
        if issued is None or expires is None:
            raise _refused("delegation lacks iat/exp")
        if expires - issued > self._max_lifetime:
            raise _refused(
                f"delegation lifetime exceeds {self._max_lifetime} seconds", "delegation-invalid"
            )
        principal_scopes = Principal.from_claims(claims).scopes
        tenant = claims.get("tenant")
        return Delegation(
            participant_id=participant,
            subject=str(claims["sub"]),
            actor=actor,
            scopes=principal_scopes,
            jti=jti,
            issued_at=issued,
            expires_at=expires,
            tenant=tenant if isinstance(tenant, str) and tenant else None,
        )


def _header(token: str) -> dict[str, Any]:
    try:
        return peek_header(token)
    except Unauthorized as exc:
        raise _refused(f"delegation refused: {exc.detail}") from None


def _timestamp(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
