"""RS256 (production) verification against a JWKS document served over real HTTP."""

from __future__ import annotations

import asyncio
import time
from functools import cache

import pytest
from joserfc.jwk import RSAKey
from mesh_common.auth import (
    AuthSettings,
    RsaKeyPair,
    TokenVerifier,
    generate_rsa_key,
    jwks_document,
    mint_token,
)
from mesh_common.errors import Unauthorized, Unavailable


@cache
def key(name: str, kid: str | None = None) -> RsaKeyPair:
    """RSA generation is slow (~0.1 s); each named key is made once per test run."""
    return generate_rsa_key(kid or name)


def rs_settings(url: str, **over: object) -> AuthSettings:
    values: dict[str, object] = {"mode": "rs256", "jwks_url": url, "jwks_min_refresh_seconds": 0}
    values.update(over)
    return AuthSettings(**values)


async def test_valid_rs256_token(jwks_server) -> None:
    k1 = key("k1")
    jwks_server.document = jwks_document(k1)
    verifier = TokenVerifier(rs_settings(jwks_server.url))
    try:
        token = mint_token(subject="svc-sync", private_key=k1.private_key, roles=["service"])
        principal = await verifier.verify(token)
        assert principal.subject == "svc-sync"
        assert principal.roles == {"service"}
        # Keys are cached: a second token does not refetch.
        await verifier.verify(mint_token(subject="other", private_key=k1.private_key))
        assert jwks_server.hits == 1
    finally:
        await verifier.aclose()


async def test_key_rotation_refetches_on_unknown_kid(jwks_server) -> None:
    k1, k2 = key("k1"), key("k2")
    jwks_server.document = jwks_document(k1)
    verifier = TokenVerifier(rs_settings(jwks_server.url))
    try:
        await verifier.verify(mint_token(subject="a", private_key=k1.private_key))
        assert jwks_server.hits == 1
        # The identity provider rotates: k2 is published and starts signing.
        jwks_server.document = jwks_document(k1, k2)
        principal = await verifier.verify(mint_token(subject="b", private_key=k2.private_key))
        assert principal.subject == "b"
        assert jwks_server.hits == 2
    finally:
        await verifier.aclose()


async def test_unknown_kid_refetch_is_rate_limited(jwks_server) -> None:
    k1, rogue = key("k1"), key("rogue")
    jwks_server.document = jwks_document(k1)
    verifier = TokenVerifier(rs_settings(jwks_server.url, jwks_min_refresh_seconds=60))
    try:
        await verifier.verify(mint_token(subject="a", private_key=k1.private_key))
        for i in range(5):
            with pytest.raises(Unauthorized, match="not a known signing key"):
                await verifier.verify(mint_token(subject=f"m{i}", private_key=rogue.private_key))
        assert jwks_server.hits == 1  # forged kids did not hammer the key server
    finally:
        await verifier.aclose()


async def test_same_kid_different_key_is_bad_signature(jwks_server) -> None:
    real, impostor = key("k1"), key("impostor", "k1")
    jwks_server.document = jwks_document(real)
    verifier = TokenVerifier(rs_settings(jwks_server.url))
    try:
        with pytest.raises(Unauthorized) as err:
            await verifier.verify(mint_token(subject="m", private_key=impostor.private_key))
        assert err.value.code == "token-bad-signature"
    finally:
        await verifier.aclose()


async def test_hs256_signed_with_public_key_is_refused(jwks_server, forge) -> None:
    """Classic alg confusion: HMAC over the token using the *public* RSA key as the secret."""
    k1 = key("k1")
    jwks_server.document = jwks_document(k1)
    verifier = TokenVerifier(rs_settings(jwks_server.url))
    public_pem = k1.private_key.as_pem(private=False)
    now = int(time.time())
    body = {"iss": "edumesh", "aud": "edumesh-api", "sub": "m", "exp": now + 60, "iat": now}
    try:
        for header in ({"alg": "HS256", "kid": "k1"}, {"alg": "HS256"}):
            with pytest.raises(Unauthorized, match="'HS256' is not accepted"):
                await verifier.verify(forge(header, body, public_pem))
        with pytest.raises(Unauthorized, match="'none' is not accepted"):
            await verifier.verify(forge({"alg": "none", "kid": "k1"}, body, None))
    finally:
        await verifier.aclose()


async def test_expired_and_wrong_audience_rs256(jwks_server) -> None:
    k1 = key("k1")
    jwks_server.document = jwks_document(k1)
    verifier = TokenVerifier(rs_settings(jwks_server.url))
    try:
        with pytest.raises(Unauthorized, match="expired"):
            await verifier.verify(
                mint_token(subject="a", private_key=k1.private_key, ttl_seconds=-99)
            )
        with pytest.raises(Unauthorized, match="audience"):
            await verifier.verify(mint_token(subject="a", private_key=k1.private_key, audience="x"))
    finally:
        await verifier.aclose()


async def test_key_server_down_without_keys_is_503(jwks_server) -> None:
    k1 = key("k1")
    jwks_server.status = 500
    verifier = TokenVerifier(rs_settings(jwks_server.url))
    try:
        with pytest.raises(Unavailable):
            await verifier.verify(mint_token(subject="a", private_key=k1.private_key))
    finally:
        await verifier.aclose()


async def test_stale_keys_survive_key_server_outage(jwks_server) -> None:
    k1 = key("k1")
    jwks_server.document = jwks_document(k1)
    verifier = TokenVerifier(
        rs_settings(jwks_server.url, jwks_cache_seconds=0.01, verified_cache_size=0)
    )
    try:
        await verifier.verify(mint_token(subject="a", private_key=k1.private_key))
        jwks_server.status = 503
        await asyncio.sleep(0.02)  # let the cache go stale
        principal = await verifier.verify(mint_token(subject="b", private_key=k1.private_key))
        assert principal.subject == "b"
        assert jwks_server.hits == 2  # it did try to refresh
    finally:
        await verifier.aclose()


async def test_token_without_kid_uses_single_key(jwks_server) -> None:
    k1 = key("k1")
    doc = jwks_document(k1)
    jwks_server.document = doc
    verifier = TokenVerifier(rs_settings(jwks_server.url))
    unnamed = k1.private_key.as_dict(private=True)
    unnamed.pop("kid")
    token = mint_token(subject="a", private_key=RSAKey.import_key(unnamed))
    try:
        assert (await verifier.verify(token)).subject == "a"
        jwks_server.document = jwks_document(k1, key("k2"))
        await verifier.jwks._refresh(force=True)  # type: ignore[union-attr]
        with pytest.raises(Unauthorized, match="no key id"):
            await verifier.verify(mint_token(subject="b", private_key=RSAKey.import_key(unnamed)))
    finally:
        await verifier.aclose()
