"""Service settings: one pydantic-settings model every service extends.

Settings are read from the environment (and nothing else: no .env files, so secrets never live in
the repository) only when a caller instantiates them — never at import time. Tests and the
embedded launcher construct them explicitly. This module must not open connections.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh_common.auth.settings import AuthSettings
from mesh_common.bus.settings import BusSettings


class ServiceSettings(BaseSettings):
    """Settings shared by every edumesh service. Field names map to upper-case env vars."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service_name: str = Field(description="Service name, e.g. 'booking' (schema, queues, logs).")
    environment: Literal["embedded", "production", "test"] = "embedded"
    host: str = "127.0.0.1"
    port: int = 8000

    # Persistence: one schema per service on PostgreSQL; one SQLite file per service otherwise.
    database_url: str | None = None
    db_schema: str | None = Field(default=None, description="PostgreSQL schema; default: service")
    # Ping pooled connections before use (see mesh_common.db.Database); a service whose hot
    # path retries a dead connection itself turns it off to save the round trips.
    db_pool_pre_ping: bool = True
    var_dir: Path = Path("var")
    # Finished task executions (and their per-record logs) are kept this many days; each task's
    # latest execution is kept regardless. 0 keeps everything.
    task_retention_days: float = Field(default=90.0, ge=0)
    # Housekeeping (hourly): relayed outbox rows and inbox marks are deleted after these ages.
    # Inbox marks absorb duplicates: keep them longer than a redelivery or a DLQ replay may take.
    outbox_retention_hours: float = Field(default=72.0, ge=0)
    inbox_retention_days: float = Field(default=14.0, ge=0)
    # The outbox relay's wait between attempts while the broker is unreachable (doubling).
    outbox_relay_backoff_max_seconds: float = Field(default=30.0, gt=0)

    # Bus: None selects the in-memory broker (embedded default and unit tests).
    amqp_url: SecretStr | None = None
    # amqps:// only: CA of the broker's certificate, and a client certificate for mutual TLS.
    amqp_tls_ca_file: str | None = None
    amqp_tls_cert_file: str | None = None
    amqp_tls_key_file: str | None = None

    # The centre's course database (system of record), used by course-export, booking, profile.
    coursedb_url: str | None = None

    # Auth: "hs256" with a dev secret for the embedded default, "rs256" with JWKS in production.
    jwt_mode: Literal["hs256", "rs256"] = "hs256"
    mesh_jwt_secret: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str = "edumesh"
    jwt_audience: str = "edumesh-api"

    log_level: str = "INFO"
    log_json: bool = True

    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_grace_seconds: float = 20.0

    @model_validator(mode="after")
    def _defaults(self) -> ServiceSettings:
        if self.database_url is None:
            path = self.var_dir / f"{self.service_name}.sqlite3"
            self.database_url = f"sqlite+aiosqlite:///{path}"
        if self.db_schema is None:
            self.db_schema = self.service_name.replace("-", "_")
        if self.coursedb_url is None:
            self.coursedb_url = f"sqlite+aiosqlite:///{self.var_dir / 'coursedb.sqlite3'}"
        return self

    def bus_settings(self) -> BusSettings:
        """The bus of this service as configured by the environment."""
        return BusSettings(
            service=self.service_name,
            amqp_url=self.amqp_url,
            tls_ca_file=self.amqp_tls_ca_file,
            tls_cert_file=self.amqp_tls_cert_file,
            tls_key_file=self.amqp_tls_key_file,
        )

    def auth_settings(self) -> AuthSettings:
        """Token verification for this service (the same tokens the gateway checks)."""
        if self.jwt_mode == "rs256":
            return AuthSettings(
                mode="rs256",
                jwks_url=self.jwt_jwks_url,
                issuer=self.jwt_issuer,
                audience=self.jwt_audience,
            )
        secret = self.mesh_jwt_secret
        if secret is None:
            # No key configured: verify against a random one, so no token is ever accepted
            # (fail closed) while public endpoints keep working.
            secret = SecretStr(secrets.token_urlsafe(48))
        return AuthSettings(
            mode="hs256", hs256_secret=secret, issuer=self.jwt_issuer, audience=self.jwt_audience
        )

    @property
    def package_name(self) -> str:
        return self.service_name.replace("-", "_")

    @property
    def is_sqlite(self) -> bool:
        return str(self.database_url).startswith("sqlite")
