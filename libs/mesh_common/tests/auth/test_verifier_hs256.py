"""HS256 (embedded default) verification: what is accepted and every way a token is refused."""

from __future__ import annotations

import asyncio
import time

import pytest
from mesh_common.auth import AuthSettings, Principal, TokenVerifier, generate_rsa_key, mint_token
from mesh_common.errors import Unauthorized
from pydantic import ValidationError


def claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": "edumesh",
        "aud": "edumesh-api",
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
    }
    base.update(over)
    return base


async def test_valid_token_yields_principal(hs_verifier: TokenVerifier, secret: str) -> None:
    token = mint_token(
        subject="alice",
        secret=secret,
        roles=["participant"],
        scopes=["booking:write", "profile:read"],
        participant_id="p-42",
        tenant="vhs-berlin",
    )
    principal = await hs_verifier.verify(token)
    assert principal == Principal(
        subject="alice",
        roles=frozenset({"participant"}),
        scopes=frozenset({"booking:write", "profile:read"}),
        participant_id="p-42",
        tenant="vhs-berlin",
        claims=principal.claims,
    )
    assert principal.claims["iss"] == "edumesh"


async def test_expired_token(hs_verifier: TokenVerifier, secret: str) -> None:
    token = mint_token(subject="alice", secret=secret, ttl_seconds=-120)
    with pytest.raises(Unauthorized) as err:
        await hs_verifier.verify(token)
    assert err.value.code == "token-expired"
    assert err.value.detail == "token has expired"


async def test_leeway_accepts_recently_expired(secret: str) -> None:
    verifier = TokenVerifier(AuthSettings(hs256_secret=secret, leeway_seconds=60))
    token = mint_token(subject="alice", secret=secret, ttl_seconds=-10)
    assert (await verifier.verify(token)).subject == "alice"


async def test_wrong_key(hs_verifier: TokenVerifier) -> None:
    token = mint_token(subject="mallory", secret="another-secret-of-sufficient-length!!")
    with pytest.raises(Unauthorized) as err:
        await hs_verifier.verify(token)
    assert err.value.code == "token-bad-signature"


async def test_tampered_payload(hs_verifier: TokenVerifier, secret: str, forge) -> None:
    good = mint_token(subject="alice", secret=secret, roles=["participant"])
    evil = forge({"alg": "HS256", "typ": "JWT"}, claims(roles=["admin"]), b"guess")
    tampered = ".".join([*evil.split(".")[:2], good.split(".")[2]])
    with pytest.raises(Unauthorized, match="signature"):
        await hs_verifier.verify(tampered)


async def test_wrong_audience(hs_verifier: TokenVerifier, secret: str) -> None:
    token = mint_token(subject="alice", secret=secret, audience="someone-else")
    with pytest.raises(Unauthorized, match="audience"):
        await hs_verifier.verify(token)


async def test_wrong_issuer(hs_verifier: TokenVerifier, secret: str) -> None:
    token = mint_token(subject="alice", secret=secret, issuer="https://evil.example")
    with pytest.raises(Unauthorized, match="issuer"):
        await hs_verifier.verify(token)


async def test_missing_exp_and_sub(hs_verifier: TokenVerifier, secret: str, forge) -> None:
    body = claims()
    del body["exp"]
    token = forge({"alg": "HS256"}, body, secret.encode())
    with pytest.raises(Unauthorized, match="exp"):
        await hs_verifier.verify(token)
    body = claims()
    del body["sub"]
    with pytest.raises(Unauthorized, match="sub"):
        await hs_verifier.verify(forge({"alg": "HS256"}, body, secret.encode()))


async def test_not_yet_valid(hs_verifier: TokenVerifier, secret: str, forge) -> None:
    token = forge({"alg": "HS256"}, claims(nbf=int(time.time()) + 3600), secret.encode())
    with pytest.raises(Unauthorized, match="not valid yet"):
        await hs_verifier.verify(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(hs_verifier: TokenVerifier, forge, alg: str) -> None:
    token = forge({"alg": alg, "typ": "JWT"}, claims(roles=["admin"]), None)
    with pytest.raises(Unauthorized, match="algorithm"):
        await hs_verifier.verify(token)


async def test_rs256_token_refused_in_hs_mode(hs_verifier: TokenVerifier) -> None:
    pair = generate_rsa_key("k1")
    token = mint_token(subject="alice", private_key=pair.private_key)
    with pytest.raises(Unauthorized, match="'RS256' is not accepted"):
        await hs_verifier.verify(token)


async def test_other_hmac_algorithms_refused(hs_verifier: TokenVerifier, forge, secret) -> None:
    token = forge({"alg": "HS512"}, claims(), secret.encode())
    with pytest.raises(Unauthorized, match="'HS512' is not accepted"):
        await hs_verifier.verify(token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "a.b.c.d", "!!!.e30.x", "e30.e30"])
async def test_malformed_tokens(hs_verifier: TokenVerifier, garbage: str) -> None:
    with pytest.raises(Unauthorized) as err:
        await hs_verifier.verify(garbage)
    assert err.value.status == 401


async def test_oversized_token(hs_verifier: TokenVerifier, secret: str) -> None:
    token = mint_token(subject="alice", secret=secret, extra_claims={"pad": "x" * 10_000})
    with pytest.raises(Unauthorized, match="too large"):
        await hs_verifier.verify(token)


async def test_cache_never_outlives_expiry(secret: str) -> None:
    verifier = TokenVerifier(AuthSettings(hs256_secret=secret, leeway_seconds=0))
    token = mint_token(subject="alice", secret=secret, ttl_seconds=1)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first  # served from the cache
    exp = int(first.claims["exp"])
    while time.time() < exp:
        await asyncio.sleep(0.05)
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)


def test_settings_validation() -> None:
    with pytest.raises(ValidationError, match="hs256_secret"):
        AuthSettings(mode="hs256")
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        AuthSettings(mode="hs256", hs256_secret="short")
    with pytest.raises(ValidationError, match="jwks_url"):
        AuthSettings(mode="rs256")
    assert AuthSettings(mode="rs256", jwks_url="http://x/jwks").algorithms == {"RS256"}
    assert "s" * 40 not in repr(AuthSettings(hs256_secret="s" * 40))
