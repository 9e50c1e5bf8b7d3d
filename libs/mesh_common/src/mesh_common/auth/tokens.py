"""Issuing tokens for development, tests and benchmarks, and making dev RSA key sets.

Responsible for :func:`mint_token` (HS256 with a shared secret, or RS256 with a private key) and
:func:`generate_rsa_jwks` (a key pair plus the public JWKS document an rs256 verifier fetches).
edumesh has no identity provider of its own; in production tokens come from the real one. This
module must not verify tokens and must never log or print secrets.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from mesh_common.auth.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER


def mint_token(
    *,
    subject: str,
    secret: str | bytes | None = None,
    private_key: RSAKey | None = None,
    roles: Iterable[str] = (),
    scopes: Iterable[str] = (),
    ttl_seconds: int = 3600,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    participant_id: str | None = None,
    tenant: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Sign a token for ``subject``. Exactly one of ``secret`` (HS256) and ``private_key``
    (RS256; its ``kid`` goes into the header) must be given. A negative ``ttl_seconds`` yields
    an already expired token, which tests use."""
    if (secret is None) == (private_key is None):
        raise ValueError("give exactly one of secret (HS256) or private_key (RS256)")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    role_list = sorted(set(roles))
    if role_list:
        claims["roles"] = role_list
    scope_list = sorted(set(scopes))
    if scope_list:
        claims["scope"] = " ".join(scope_list)
    if participant_id is not None:
        claims["participant_id"] = participant_id
    if tenant is not None:
        claims["tenant"] = tenant
    if extra_claims:
        claims.update(extra_claims)
    if secret is not None:
        key = OctKey.import_key(secret.encode() if isinstance(secret, str) else secret)
        return jwt.encode({"alg": "HS256"}, claims, key)
    assert private_key is not None
    header: dict[str, Any] = {"alg": "RS256"}
    if private_key.kid:
        header["kid"] = private_key.kid
    return jwt.encode(header, claims, private_key)


@dataclass(frozen=True)
class RsaKeyPair:
    private_key: RSAKey
    kid: str

    @property
    def public_jwk(self) -> dict[str, Any]:
        return {**self.private_key.as_dict(private=False), "use": "sig", "alg": "RS256"}

    def private_pem(self) -> bytes:
        return self.private_key.as_pem(private=True)


def generate_rsa_key(kid: str | None = None, key_size: int = 2048) -> RsaKeyPair:
    """A fresh RSA signing key; ``kid`` defaults to its RFC 7638 thumbprint."""
    key = RSAKey.generate_key(key_size, private=True)
    key_id = kid or key.thumbprint()
    key = RSAKey.import_key(key.as_dict(private=True), parameters={"kid": key_id})
    return RsaKeyPair(private_key=key, kid=key_id)


def jwks_document(*pairs: RsaKeyPair) -> dict[str, Any]:
    """The public JWKS document listing the given keys (what the identity provider serves)."""
    return {"keys": [p.public_jwk for p in pairs]}


def load_private_key(pem_path: str | Path, kid: str | None = None) -> RSAKey:
    pem = Path(pem_path).read_bytes()
    key = RSAKey.import_key(pem)
    key_id = kid or key.thumbprint()
    return RSAKey.import_key(key.as_dict(private=True), parameters={"kid": key_id})


def generate_rsa_jwks(directory: str | Path, kid: str | None = None) -> RsaKeyPair:
    """Write ``private.pem`` (mode 0600) and ``jwks.json`` into ``directory`` for dev/tests."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    pair = generate_rsa_key(kid)
    pem_path = target / "private.pem"
    # Create with restrictive permissions from the start rather than chmod after writing.
    fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair.private_pem())
    (target / "jwks.json").write_text(json.dumps(jwks_document(pair), indent=2) + "\n")
    return pair
