"""Where a run gets its Schulconnex credentials: a stored connection or the environment.

The connector framework's ``schulconnex`` connection kind knows the client-credentials grant
only; this service registers its own version of the kind (same name, same fields, plus the
password grant of the practice guide and the client's limits) in the service's own kind
registry. Secrets are ``SecretStr`` end to end: encrypted at rest by the connection store,
handed to authlib only when a client is built, never logged, never returned by the API.
"""

from __future__ import annotations

from typing import Literal

from mesh_common.connectors import ConnectionSettings, KindRegistry, default_kinds
from mesh_common.errors import Invalid
from pydantic import Field, SecretStr, field_validator, model_validator

from schulconnex_sync_service.client import ClientConfig, SchulconnexClient
from schulconnex_sync_service.settings import NotifyStatus, Settings, check_addresses

KIND = "schulconnex"
ENV_TENANT = "env"


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or " " in value:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class SchulconnexConnection(ConnectionSettings):
    """A Schulconnex server reached with an OAuth2 client: client credentials (the spec's
    flow) or the password grant (the practice guide's)."""

    base_url: str = Field(description="API root including the version, e.g. https://.../v1")
    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    grant_type: Literal["client_credentials", "password"] = "client_credentials"
    username: str | None = None
    password: SecretStr | None = None
    scope: str | None = None
    max_concurrency: int = Field(default=8, ge=1, le=64)
    max_retries: int = Field(default=5, ge=0, le=10)
    # Seed step 11 by mail, opt-in: who gets the feedback of this connection's runs, and for
    # which final statuses.
    notify_recipients: list[str] = Field(default_factory=list, max_length=50)
    notify_on: list[NotifyStatus] = ["partially_succeeded", "failed"]

    _urls = field_validator("base_url", "token_url")(_http_url)
    _addresses = field_validator("notify_recipients")(check_addresses)

    @model_validator(mode="after")
    def _password_grant(self) -> SchulconnexConnection:
        if self.grant_type == "password" and (not self.username or self.password is None):
            raise ValueError("the password grant needs username and password")
        return self

    def client_config(self) -> ClientConfig:
        return ClientConfig(
            base_url=self.base_url,
            token_url=self.token_url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            grant_type=self.grant_type,
            username=self.username,
            password=self.password,
            scope=self.scope,
            timeout_seconds=self.timeout_seconds,
            max_concurrency=self.max_concurrency,
            max_retries=self.max_retries,
        )


async def check_connection(settings: SchulconnexConnection) -> str:
    """ "Test connection": obtain a token and read one (filtered) page of persons."""
    async with SchulconnexClient(settings.client_config()) as client:
        persons = await client.list_personen(referrer="edumesh-connection-test")
    return f"token obtained, GET /personen answered ({len(persons)} matching)"


def kinds() -> KindRegistry:
    registry = default_kinds.copy()
    registry.register(
        KIND,
        SchulconnexConnection,
        check_connection,
        replace=True,
        description="Schulconnex source-system API (OAuth2: client credentials or password).",
    )
    return registry


def config_from_env(settings: Settings) -> ClientConfig:
    """The client config from ``SCHULCONNEX_*`` variables; Invalid when they are incomplete."""
    missing = [
        name
        for name, value in (
            ("SCHULCONNEX_BASE_URL", settings.schulconnex_base_url),
            ("SCHULCONNEX_TOKEN_URL", settings.schulconnex_token_url),
            ("SCHULCONNEX_CLIENT_ID", settings.schulconnex_client_id),
            ("SCHULCONNEX_CLIENT_SECRET", settings.schulconnex_client_secret),
        )
        if not value
    ]
    if missing:
        raise Invalid(
            "no Schulconnex credentials: name a stored connection (parameter 'connection') or "
            f"set {', '.join(missing)}",
            code="schulconnex-not-configured",
        )
    assert settings.schulconnex_base_url and settings.schulconnex_token_url
    assert settings.schulconnex_client_id and settings.schulconnex_client_secret
    try:
        return ClientConfig(
            base_url=settings.schulconnex_base_url,
            token_url=settings.schulconnex_token_url,
            client_id=settings.schulconnex_client_id,
            client_secret=settings.schulconnex_client_secret,
            grant_type=settings.schulconnex_grant_type,
            username=settings.schulconnex_username,
            password=settings.schulconnex_password,
            scope=settings.schulconnex_scope,
            timeout_seconds=settings.schulconnex_timeout_seconds,
            max_concurrency=settings.schulconnex_max_concurrency,
            max_retries=settings.schulconnex_max_retries,
        )
    except ValueError as exc:
        raise Invalid(str(exc), code="schulconnex-not-configured") from None
