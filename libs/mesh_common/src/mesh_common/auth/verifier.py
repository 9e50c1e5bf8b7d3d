"""Bearer token (JWT) verification for every edumesh process.

Responsible for deciding whether a compact JWS token is authentic and currently valid for this
mesh (signature, algorithm, issuer, audience, expiry) and for fetching and caching the public keys
(JWKS) in production mode. It raises :class:`mesh_common.errors.Unauthorized` with a precise
detail and never lets a library exception escape. It must not know about HTTP requests or roles.

Built on ``joserfc``: authlib deprecates ``authlib.jose`` in its favour (authlib >= 1.4 warns
"please use joserfc instead").
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key, OctKey, RSAKey

from mesh_common.auth.principal import Principal
from mesh_common.auth.settings import AuthSettings
from mesh_common.errors import Unauthorized, Unavailable

log = logging.getLogger("mesh.auth")


def _invalid(detail: str, code: str = "token-invalid") -> Unauthorized:
    return Unauthorized(detail, code=code)


def peek_header(token: str) -> dict[str, Any]:
    """Decode the (unverified) JOSE header, so the algorithm and key id can be checked *before*
    any key is chosen."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid("token is not a compact JWS (expected three dot-separated parts)")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid("token header is not valid base64url JSON") from exc
    if not isinstance(header, dict):
        raise _invalid("token header is not a JSON object")
    return header


class JwksCache:
    """Public keys of the identity provider, fetched over HTTP and cached.

    Refreshes after ``jwks_cache_seconds``; a token with an unknown ``kid`` triggers an early
    refresh (key rotation), rate-limited to one per ``jwks_min_refresh_seconds``. When the key
    server is down, stale keys keep working; with no keys at all, verification fails with 503.
    """

    def __init__(self, settings: AuthSettings, http_client: httpx.AsyncClient | None = None):
        assert settings.jwks_url is not None
        self._url = settings.jwks_url
        self._ttl = settings.jwks_cache_seconds
        self._min_refresh = settings.jwks_min_refresh_seconds
        self._timeout = settings.jwks_timeout_seconds
        self._client = http_client
        self._owns_client = http_client is None
        self._keys: dict[str | None, RSAKey] = {}
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    def _due(self, now: float, *, force: bool) -> bool:
        if self._attempted_at is not None and now - self._attempted_at < self._min_refresh:
            return False
        return force or self._loaded_at is None or now - self._loaded_at >= self._ttl

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            if not self._due(time.monotonic(), force=force):
                return
            self._attempted_at = time.monotonic()
            self.fetch_count += 1
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self._timeout)
            try:
                response = await self._client.get(self._url, timeout=self._timeout)
                response.raise_for_status()
                document = response.json()
                keys = self._parse(document)
            except (httpx.HTTPError, ValueError) as exc:
                # Keep serving with the keys we have; a key server blip must not log everyone out.
                log.warning("JWKS fetch from %s failed: %s", self._url, exc)
                return
            self._keys = keys
            self._loaded_at = time.monotonic()

    @staticmethod
    def _parse(document: object) -> dict[str | None, RSAKey]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        keys: dict[str | None, RSAKey] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("kty") != "RSA":
                continue
            if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
                continue
            public = {k: v for k, v in entry.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}
            try:
                keys[entry.get("kid")] = RSAKey.import_key(public)
            except (JoseError, ValueError) as exc:
                log.warning("ignoring unusable JWKS key %r: %s", entry.get("kid"), exc)
        return keys

    async def key_for(self, kid: str | None) -> RSAKey:
        if self._due(time.monotonic(), force=False):
            await self._refresh(force=False)
        if not self._keys and self._loaded_at is None:
            raise Unavailable("signing keys of the identity provider are unavailable")
        key = self._lookup(kid)
        if key is None and kid is not None:
            await self._refresh(force=True)
            key = self._lookup(kid)
        if key is None:
            if kid is None:
                raise _invalid("token has no key id (kid) and the key set has several keys")
            raise _invalid(f"token key id {kid!r} is not a known signing key")
        return key

    def _lookup(self, kid: str | None) -> RSAKey | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


class TokenVerifier:
    """Verifies bearer tokens according to :class:`AuthSettings`."""

    def __init__(self, settings: AuthSettings, *, http_client: httpx.AsyncClient | None = None):
        self.settings = settings
        self._algorithms = settings.algorithms
        self._hs_key: OctKey | None = None
        self._jwks: JwksCache | None = None
        if settings.mode == "hs256":
            assert settings.hs256_secret is not None
            self._hs_key = OctKey.import_key(settings.hs256_secret.get_secret_value().encode())
        else:
            self._jwks = JwksCache(settings, http_client)
        self._claims = jwt.JWTClaimsRegistry(
            leeway=settings.leeway_seconds,
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "value": settings.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._cache_size = settings.verified_cache_size

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    async def aclose(self) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()

    async def verify(self, token: str) -> Principal:
        """Return the principal of a valid token or raise ``Unauthorized`` saying why not.

        Raises ``Unavailable`` (503) only in rs256 mode when no signing key was ever obtained.
        """
        cached = self._cache.get(token)
        if cached is not None:
            # exp (plus leeway) is re-checked on every hit; the cache never extends a token's life.
            if time.time() < cached[0]:
                self._cache.move_to_end(token)
                return cached[1]
            del self._cache[token]
        if len(token) > self.settings.max_token_bytes:
            raise _invalid("token is too large")
        header = peek_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            allowed = ", ".join(sorted(self._algorithms))
            raise _invalid(f"token algorithm {alg!r} is not accepted (allowed: {allowed})")
        key = await self._key_for(header)
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except BadSignatureError as exc:
            raise _invalid("token signature is invalid", "token-bad-signature") from exc
        except JoseError as exc:
            raise _invalid(f"token could not be decoded: {exc.description or exc.error}") from exc
        claims = decoded.claims
        try:
            self._claims.validate(claims)
        except ExpiredTokenError as exc:
            raise _invalid("token has expired", "token-expired") from exc
        except MissingClaimError as exc:
            raise _invalid(f"token lacks required claim(s): {exc.claim}") from exc
        except ClaimError as exc:
            raise _invalid(self._claim_detail(exc)) from exc
        principal = Principal.from_claims(claims)
        if self._cache_size:
            self._cache[token] = (float(claims["exp"]) + self.settings.leeway_seconds, principal)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    def _claim_detail(self, exc: ClaimError) -> str:
        if exc.claim == "aud":
            return f"token audience does not include {self.settings.audience!r}"
        if exc.claim == "iss":
            return f"token issuer is not {self.settings.issuer!r}"
        if exc.claim == "nbf":
            return "token is not valid yet (nbf)"
        if exc.claim == "iat":
            return "token was issued in the future (iat)"
        return f"token claim {exc.claim!r} is invalid"

    async def _key_for(self, header: dict[str, Any]) -> Key:
        if self._hs_key is not None:
            return self._hs_key
        assert self._jwks is not None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("token key id (kid) is not a string")
        return await self._jwks.key_for(kid)
