"""Delegation tokens: a service client acting for one participant (RFC 8693 ``act``).

Valid, expired, forged (other key, alg none, hand-made HMAC), wrong actor, wrong type, wrong
audience, too long a lifetime, missing claims, scopes; a delegation never passes as a bearer
token and a bearer token never passes as a delegation; RS256 through a real JWKS server.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from mesh_common.auth import (
    AuthSettings,
    Principal,
    TokenVerifier,
    generate_rsa_key,
    jwks_document,
    mint_token,
)
from mesh_common.auth.delegation import (
    DELEGATION_AUDIENCE,
    MAX_LIFETIME_SECONDS,
    DelegationRefused,
    DelegationVerifier,
    mint_delegation,
)
from mesh_common.auth.verifier import peek_header
from mesh_common.errors import Unauthorized

WEBSITE = Principal(subject="website-backend", roles=frozenset({"service"}))


@pytest.fixture
def verifier(hs_settings: AuthSettings) -> DelegationVerifier:
    return DelegationVerifier(hs_settings)


def delegation(secret: str, **over: Any) -> str:
    values: dict[str, Any] = {
        "participant_id": "42",
        "actor": "website-backend",
        "scopes": ["profile:read"],
        "secret": secret,
    }
    values.update(over)
    return mint_delegation(**values)


async def refused(verifier: DelegationVerifier, token: str, **kw: Any) -> DelegationRefused:
    with pytest.raises(DelegationRefused) as info:
        await verifier.verify(token, actor=kw.pop("actor", WEBSITE), **kw)
    assert info.value.status == 403
    return info.value


async def test_valid_delegation(verifier: DelegationVerifier, secret: str) -> None:
    token = delegation(secret, scopes=["profile:read", "profile:write"], jti="j-1")
    d = await verifier.verify(token, actor=WEBSITE, scopes=["profile:read"])
    assert (d.participant_id, d.actor, d.jti) == ("42", "website-backend", "j-1")
    assert d.scopes == {"profile:read", "profile:write"}
    assert d.expires_at - d.issued_at == MAX_LIFETIME_SECONDS
    p = d.principal()
    assert p.participant_id == "42" and p.has_role("participant") and not p.has_role("service")
    assert p.claims["act"] == {"sub": "website-backend"}
    assert peek_header(token)["typ"] == "delegation+jwt"


async def test_expired_delegation(verifier: DelegationVerifier, secret: str) -> None:
    token = delegation(secret, now=time.time() - 400, ttl_seconds=60)
    assert (await refused(verifier, token)).code == "delegation-expired"


async def test_issued_to_another_client(verifier: DelegationVerifier, secret: str) -> None:
    other = Principal(subject="mallory-client", roles=frozenset({"service"}))
    err = await refused(verifier, delegation(secret), actor=other)
    assert err.code == "delegation-actor-mismatch"


async def test_only_service_clients_use_delegations(
    verifier: DelegationVerifier, secret: str
) -> None:
    person = Principal(
        subject="website-backend", roles=frozenset({"participant"}), participant_id="7"
    )
    err = await refused(verifier, delegation(secret), actor=person)
    assert err.code == "delegation-not-allowed"


async def test_other_tenant(verifier: DelegationVerifier, secret: str) -> None:
    actor = Principal(subject="website-backend", roles=frozenset({"service"}), tenant="vhs-a")
    err = await refused(verifier, delegation(secret, tenant="vhs-b"), actor=actor)
    assert err.code == "delegation-actor-mismatch"
    ok = await verifier.verify(delegation(secret, tenant="vhs-a"), actor=actor)
    assert ok.tenant == "vhs-a"


async def test_missing_scope(verifier: DelegationVerifier, secret: str) -> None:
    err = await refused(verifier, delegation(secret), scopes=["profile:write"])
    assert err.code == "insufficient-scope" and "profile:write" in err.detail


@pytest.mark.parametrize(
    "claims",
    [
        {"act": None},
        {"act": {"sub": ""}},
        {"act": "website-backend"},
        {"participant_id": None},
        {"participant_id": ""},
        {"jti": None},
        {"iat": None},
    ],
)
async def test_missing_or_malformed_claims(
    verifier: DelegationVerifier, secret: str, claims: dict[str, Any]
) -> None:
    err = await refused(verifier, delegation(secret, extra_claims=claims))
    assert err.code == "delegation-invalid"


async def test_lifetime_longer_than_five_minutes(verifier: DelegationVerifier, secret: str) -> None:
    now = int(time.time())
    token = delegation(secret, now=now, extra_claims={"exp": now + MAX_LIFETIME_SECONDS + 60})
    err = await refused(verifier, token)
    assert err.code == "delegation-invalid" and "lifetime" in err.detail
    with pytest.raises(ValueError, match="at most"):
        delegation(secret, ttl_seconds=MAX_LIFETIME_SECONDS + 1)


async def test_forged_delegations(verifier: DelegationVerifier, secret: str, forge: Any) -> None:
    # Signed with another key.
    other = delegation("another-secret-that-is-long-enough-0123456789")
    assert (await refused(verifier, other)).code == "delegation-invalid"
    # Hand-made: alg none, and an HMAC with a guessed key; both with the right header and claims.
    now = int(time.time())
    claims = {
        "iss": "edumesh",
        "aud": DELEGATION_AUDIENCE,
        "sub": "participant:42",
        "participant_id": "42",
        "act": {"sub": "website-backend"},
        "scope": "profile:read",
        "iat": now,
        "exp": now + 60,
        "jti": "x",
    }
    none = forge({"alg": "none", "typ": "delegation+jwt"}, claims, None)
    assert (await refused(verifier, none)).code == "delegation-invalid"
    guessed = forge({"alg": "HS256", "typ": "delegation+jwt"}, claims, b"guess")
    assert (await refused(verifier, guessed)).code == "delegation-invalid"
    # The genuine token with its payload swapped for another participant.
    head, _, sig = delegation(secret).split(".")
    swapped = forge(
        {"alg": "HS256", "typ": "delegation+jwt"}, {**claims, "participant_id": "9"}, None
    )
    tampered = f"{head}.{swapped.split('.')[1]}.{sig}"
    assert (await refused(verifier, tampered)).code == "delegation-invalid"
    assert (await refused(verifier, "not-a-jwt")).code == "delegation-invalid"


async def test_bearer_token_is_not_a_delegation(verifier: DelegationVerifier, secret: str) -> None:
    bearer = mint_token(
        subject="participant:42",
        secret=secret,
        roles=["participant"],
        participant_id="42",
        extra_claims={"act": {"sub": "website-backend"}},
    )
    assert (await refused(verifier, bearer)).code == "delegation-invalid"
    # Even with the right header type, the bearer audience is refused.
    typed = mint_delegation(
        participant_id="42",
        actor="website-backend",
        scopes=["profile:read"],
        secret=secret,
        audience="edumesh-api",
    )
    assert (await refused(verifier, typed)).code == "delegation-invalid"


async def test_delegation_is_not_a_bearer_token(hs_verifier: TokenVerifier, secret: str) -> None:
    with pytest.raises(Unauthorized) as info:
        await hs_verifier.verify(delegation(secret))
    assert "audience" in info.value.detail


def test_same_audience_is_refused(hs_settings: AuthSettings) -> None:
    with pytest.raises(ValueError, match="differ"):
        DelegationVerifier(hs_settings, audience=hs_settings.audience)


async def test_rs256_delegation_through_jwks(jwks_server: Any) -> None:
    pair = generate_rsa_key("idp-1")
    jwks_server.document = jwks_document(pair)
    settings = AuthSettings(mode="rs256", jwks_url=jwks_server.url)
    verifier = DelegationVerifier(settings)
    try:
        token = mint_delegation(
            participant_id="42",
            actor="website-backend",
            scopes=["profile:read"],
            private_key=pair.private_key,
        )
        d = await verifier.verify(token, actor=WEBSITE, scopes=["profile:read"])
        assert d.participant_id == "42"
        hs = mint_delegation(
            participant_id="42", actor="website-backend", scopes=["profile:read"], secret="k" * 40
        )
        assert (await refused(verifier, hs)).code == "delegation-invalid"
    finally:
        await verifier.aclose()
