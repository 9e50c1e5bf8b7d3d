"""Authentication settings: which tokens a process accepts and where its keys come from.

Responsible only for describing and validating the configuration of token verification. It is a
plain pydantic model passed explicitly to :class:`~mesh_common.auth.verifier.TokenVerifier`; it
must never read the environment itself (a service's own settings class may embed it and load it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

DEFAULT_ISSUER = "edumesh"
DEFAULT_AUDIENCE = "edumesh-api"
# HMAC keys shorter than the hash output weaken HS256 (RFC 7518 section 3.2 asks for >= 256 bits).
MIN_HS256_SECRET_BYTES = 32

AuthMode = Literal["hs256", "rs256"]


class AuthSettings(BaseModel):
    """How bearer tokens are verified.

    ``hs256`` is the embedded default: one shared dev secret signs and verifies. ``rs256`` is
    production: public keys come from a JWKS document over HTTP, are cached for
    ``jwks_cache_seconds`` and refetched early when a token names an unknown ``kid`` (at most once
    per ``jwks_min_refresh_seconds``, so forged ``kid`` values cannot hammer the key server).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: AuthMode = "hs256"
    hs256_secret: SecretStr | None = None
    jwks_url: str | None = None
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    leeway_seconds: int = Field(default=30, ge=0, le=600)
    jwks_cache_seconds: float = Field(default=300.0, gt=0)
    jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    jwks_timeout_seconds: float = Field(default=5.0, gt=0)
    # Verified tokens are remembered (until they expire) so a hot path such as the gateway pays
    # the signature check once per token, not once per request. 0 disables the cache.
    verified_cache_size: int = Field(default=1024, ge=0)
    max_token_bytes: int = Field(default=8192, ge=256)

    @model_validator(mode="after")
    def _check_mode(self) -> AuthSettings:
        if self.mode == "hs256":
            if self.hs256_secret is None:
                raise ValueError("auth mode hs256 needs hs256_secret")
            if len(self.hs256_secret.get_secret_value().encode()) < MIN_HS256_SECRET_BYTES:
                raise ValueError(
                    f"hs256_secret must be at least {MIN_HS256_SECRET_BYTES} bytes long"
                )
        elif self.jwks_url is None:
            raise ValueError("auth mode rs256 needs jwks_url")
        return self

    @property
    def algorithms(self) -> frozenset[str]:
        """The only JWS algorithms accepted in this mode: never both families at once, which
        is what rules out HS/RS algorithm confusion."""
        return frozenset({"HS256"}) if self.mode == "hs256" else frozenset({"RS256"})
