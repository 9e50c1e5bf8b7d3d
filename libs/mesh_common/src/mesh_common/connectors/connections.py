"""Connections: typed, encrypted settings per external system, and a "test connection" action.

A *kind* (``brevo``, ``smtp``, ``imap``, ``schulconnex``, or one a service registers) is a
pydantic model of its settings plus an optional async *checker*. Fields typed ``SecretStr`` are
credentials: the store encrypts them together as one :class:`~mesh_common.secrets.SecretBox`
token bound to the connection's name and kind (a token copied to another row does not decrypt),
keeps only the *names* of the set ones in clear, and never returns or logs a value. Reading a
connection shows each secret as ``"set"`` / ``"not set"``; only :meth:`ConnectionStore.resolve`
(what a task calls) decrypts, returning the typed settings whose secrets stay ``SecretStr``.

Updates are partial: a secret field that is absent keeps its value, ``null`` clears it, a string
replaces it; the merged settings are validated as a whole, with errors located like
``settings.base_url: ...`` and never quoting a submitted value. This module must not define HTTP
routes (see :mod:`mesh_common.connectors.api`) and must not read the environment itself (the
key comes from the ``box`` it is given).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from mesh_common.connectors.tables import ConnectorTables
from mesh_common.db import Database
from mesh_common.errors import Conflict, Invalid, NotFound, Unavailable
from mesh_common.rekey import RekeyTarget, rekey_column
from mesh_common.secrets import DecryptionError, SecretBox, SecretsError

log = logging.getLogger("mesh.connectors")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
SET, NOT_SET = "set", "not set"


# --------------------------------------------------------------------------- settings models


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/?#]+(/[^\s]*)?$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class ConnectionSettings(BaseModel):
    """Base of every kind's settings: unknown fields are refused, timeouts are bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


class BrevoSettings(ConnectionSettings):
    """Brevo (newsletter) API v3. ``rate_limit_per_second`` is the contacts endpoints' limit of
    the account's plan (10 on the general plan)."""

    base_url: str = "https://api.brevo.com"
    api_key: SecretStr
    rate_limit_per_second: float = Field(default=10.0, gt=0, le=1000)

    _url = field_validator("base_url")(_http_url)


class SmtpSettings(ConnectionSettings):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str | None = None


class ImapSettings(ConnectionSettings):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=993, ge=1, le=65535)
    tls: bool = True
    username: str = Field(min_length=1)
    password: SecretStr
    mailbox: str = "INBOX"


class SchulconnexSettings(ConnectionSettings):
    """Schulconnex API with an OAuth2 client (client credentials)."""

    base_url: str
    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    grant_type: Literal["client_credentials"] = "client_credentials"
    scope: str | None = None

    _urls = field_validator("base_url", "token_url")(_http_url)


# --------------------------------------------------------------------------- kinds and checks


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a connection test: never raises, never carries a secret."""

    ok: bool
    message: str
    latency_ms: float


Checker = Callable[[Any], Awaitable[str]]
"""``async def check(settings) -> str``: returns a short success message or raises."""


@dataclass(frozen=True)
class ConnectionKind:
    kind: str
    model: type[ConnectionSettings]
    checker: Checker | None = None
    description: str = ""

    @property
    def secret_fields(self) -> tuple[str, ...]:
        return secret_fields(self.model)


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return any(a is SecretStr for a in typing.get_args(annotation))
    return False


def secret_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The names of the fields typed ``SecretStr`` (optionally ``| None``)."""
    return tuple(n for n, f in model.model_fields.items() if _is_secret(f.annotation))


class KindRegistry:
    """The connection kinds a service knows. :data:`default_kinds` holds the built-in ones."""

    def __init__(self) -> None:
        self._kinds: dict[str, ConnectionKind] = {}

    def register(
        self,
        kind: str,
        model: type[ConnectionSettings],
        checker: Checker | None = None,
        *,
        description: str = "",
        replace: bool = False,
    ) -> ConnectionKind:
        if kind in self._kinds and not replace:
            raise ValueError(f"connection kind {kind!r} is already registered")
        entry = ConnectionKind(kind, model, checker, description or (model.__doc__ or "").strip())
        self._kinds[kind] = entry
        return entry

    def get(self, kind: str) -> ConnectionKind:
        entry = self._kinds.get(kind)
        if entry is None:
            raise Invalid(
                f"unknown connection kind {kind!r}; known: {', '.join(sorted(self._kinds))}",
                code="unknown-connection-kind",
            )
        return entry

    def all(self) -> list[ConnectionKind]:
        return [self._kinds[k] for k in sorted(self._kinds)]

    def copy(self) -> KindRegistry:
        other = KindRegistry()
        other._kinds = dict(self._kinds)
        return other


async def check_brevo(settings: BrevoSettings) -> str:
    from mesh_common.connectors.brevo import BrevoClient

    async with BrevoClient.from_settings(settings, max_retries=0) as client:
        account = await client.account()
    return f"authenticated as {account.get('email') or 'unknown account'}"


async def check_smtp(settings: SmtpSettings) -> str:
    import aiosmtplib

    smtp = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        use_tls=settings.security == "tls",
        start_tls=settings.security == "starttls",
        timeout=settings.timeout_seconds,
    )
    await smtp.connect()
    try:
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else ""
            await smtp.login(settings.username, password)
        code, _ = await smtp.noop()
    finally:
        try:
            await smtp.quit()
        except aiosmtplib.SMTPException:
            smtp.close()
    auth = " and logged in" if settings.username else ""
    return f"connected to {settings.host}:{settings.port}{auth} (NOOP {code})"


async def check_imap(settings: ImapSettings) -> str:
    import aioimaplib

    cls = aioimaplib.IMAP4_SSL if settings.tls else aioimaplib.IMAP4
    imap = cls(host=settings.host, port=settings.port, timeout=settings.timeout_seconds)
    await imap.wait_hello_from_server()
    try:
        res = await imap.login(settings.username, settings.password.get_secret_value())
        if res.result != "OK":
            raise PermissionError("login refused by the server")
        res = await imap.select(settings.mailbox)
        if res.result != "OK":
            raise LookupError(f"mailbox {settings.mailbox!r} not available")
    finally:
        try:
            await imap.logout()
        except Exception:  # noqa: S110 - closing a session we are done with
            pass
    return f"logged in to {settings.host}:{settings.port}, mailbox {settings.mailbox} selected"


async def check_schulconnex(settings: SchulconnexSettings) -> str:
    data: dict[str, str] = {"grant_type": settings.grant_type}
    if settings.scope:
        data["scope"] = settings.scope
    async with httpx.AsyncClient(timeout=settings.timeout_seconds) as client:
        resp = await client.post(
            settings.token_url,
            data=data,
            auth=(settings.client_id, settings.client_secret.get_secret_value()),
        )
    if resp.status_code != 200:
        raise PermissionError(f"token endpoint answered HTTP {resp.status_code}")
    try:
        body = resp.json()
    except ValueError:
        raise ValueError("token endpoint did not answer JSON") from None
    if not isinstance(body, dict) or not body.get("access_token"):
        raise ValueError("token endpoint answered without an access_token")
    return f"token obtained (expires in {body.get('expires_in', '?')} s)"


default_kinds = KindRegistry()
default_kinds.register("brevo", BrevoSettings, check_brevo)
default_kinds.register("smtp", SmtpSettings, check_smtp, description="Outgoing mail (SMTP).")
default_kinds.register("imap", ImapSettings, check_imap, description="A mailbox (IMAP).")
default_kinds.register("schulconnex", SchulconnexSettings, check_schulconnex)


# --------------------------------------------------------------------------- store


@dataclass
class ConnectionView:
    """A connection as the API shows it: secrets reduced to "set" / "not set"."""

    name: str
    kind: str
    description: str
    settings: dict[str, Any]
    secrets: dict[str, str]
    created_at: float
    updated_at: float
    updated_by: str
    last_test: CheckResult | None = None
    last_test_at: float | None = None


@dataclass
class _Row:
    view: ConnectionView
    token: str | None
    secret_names: list[str] = field(default_factory=list)


def _located(exc: ValidationError, prefix: str = "settings") -> Invalid:
    """Validation errors with locations and messages only (``input`` may hold a secret)."""
    errors = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in (prefix, *e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        errors.append({"loc": loc, "message": msg})
    detail = "; ".join(f"{e['loc']}: {e['message']}" for e in errors)
    return Invalid(detail, code="invalid-connection-settings", extra={"errors": errors})


def _scrub(message: str, secrets: Mapping[str, str]) -> str:
    for value in secrets.values():
        if value and len(value) >= 4:
            message = message.replace(value, "***")
    return message[:500]


class ConnectionStore:
    """CRUD, resolution and testing of one service's connections."""

    def __init__(
        self,
        db: Database,
        tables: ConnectorTables,
        *,
        kinds: KindRegistry = default_kinds,
        box: SecretBox | Callable[[], SecretBox] = SecretBox.from_env,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.table = tables.connections
        self.kinds = kinds
        self._box_source = box
        self._box: SecretBox | None = box if isinstance(box, SecretBox) else None
        self.clock = clock

    def box(self) -> SecretBox:
        """The SecretBox, built on first use (so a missing key fails the request that needs it,
        with a clear message, not the service start)."""
        if self._box is None:
            assert not isinstance(self._box_source, SecretBox)
            try:
                self._box = self._box_source()
            except SecretsError as exc:
                raise Unavailable(
                    f"connection secrets cannot be encrypted or read: {exc}",
                    code="secret-key-missing",
                ) from None
        return self._box

    @staticmethod
    def _context(name: str, kind: str) -> str:
        return f"mesh_connections|{kind}|{name}"

    def _split(
        self, kind: ConnectionKind, model: ConnectionSettings
    ) -> tuple[dict[str, Any], dict[str, str]]:
        secret_names = set(kind.secret_fields)
        plain = model.model_dump(mode="json", exclude=secret_names)
        secrets = {
            n: v.get_secret_value()
            for n in kind.secret_fields
            if isinstance(v := getattr(model, n), SecretStr)
        }
        return plain, secrets

    def _validate(self, kind: ConnectionKind, data: Mapping[str, Any]) -> ConnectionSettings:
        try:
            return kind.model.model_validate(dict(data))
        except ValidationError as exc:
            raise _located(exc) from None

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME.match(name):
            raise Invalid(
                "connection names are 1-100 characters: lower-case letters, digits, '_', '.', "
                "'-', starting with a letter or digit",
                code="invalid-connection-name",
            )

    async def _row(self, name: str) -> _Row:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(self.table).where(self.table.c.name == name))).first()
        if row is None:
            raise NotFound(f"no connection named {name!r}", code="connection-not-found")
        return self._to_row(row._mapping)

    def _to_row(self, r: Any) -> _Row:
        kind_names: tuple[str, ...] = ()
        try:
            kind_names = self.kinds.get(r["kind"]).secret_fields
        except Invalid:
            pass  # a kind no longer registered: still listable and deletable
        stored = list(r["secret_fields"] or [])
        names = list(dict.fromkeys([*kind_names, *stored]))
        last = None
        if r["last_test_at"] is not None:
            last = CheckResult(
                ok=bool(r["last_test_ok"]),
                message=r["last_test_message"] or "",
                latency_ms=float(r["last_test_latency_ms"] or 0.0),
            )
        view = ConnectionView(
            name=r["name"],
            kind=r["kind"],
            description=r["description"] or "",
            settings=dict(r["settings"] or {}),
            secrets={n: SET if n in stored else NOT_SET for n in names},
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            updated_by=r["updated_by"],
            last_test=last,
            last_test_at=r["last_test_at"],
        )
        return _Row(view=view, token=r["secrets"], secret_names=stored)

    def _decrypt(self, row: _Row) -> dict[str, str]:
        if not row.token:
            return {}
        try:
            value = self.box().decrypt(
                row.token, context=self._context(row.view.name, row.view.kind)
            )
        except DecryptionError as exc:
            raise Unavailable(
                f"the secrets of connection {row.view.name!r} cannot be decrypted with the "
                f"configured key(s): {exc}; set them again or restore the old key",
                code="connection-secrets-unreadable",
            ) from None
        if not isinstance(value, dict):  # pragma: no cover - we only ever store dicts
            raise TypeError("connection secrets are not a mapping")
        return {str(k): str(v) for k, v in value.items()}

    # ---------------------------------------------------------------- public API

    async def create(
        self,
        name: str,
        kind: str,
        settings: Mapping[str, Any],
        *,
        description: str = "",
        actor: str = "system",
    ) -> ConnectionView:
        self._check_name(name)
        entry = self.kinds.get(kind)
        model = self._validate(entry, settings)
        plain, secrets = self._split(entry, model)
        token = self.box().encrypt(secrets, context=self._context(name, kind)) if secrets else None
        now = self.clock()
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(self.table).values(
                        name=name,
                        kind=kind,
                        description=description,
                        settings=plain,
                        secrets=token,
                        secret_fields=sorted(secrets),
                        created_at=now,
                        updated_at=now,
                        updated_by=actor,
                    )
                )
        except IntegrityError:
            raise Conflict(
                f"a connection named {name!r} already exists", code="connection-exists"
            ) from None
        log.info("connection created", extra={"connection": name, "kind": kind, "actor": actor})
        return (await self._row(name)).view

    async def update(
        self,
        name: str,
        settings: Mapping[str, Any] | None = None,
        *,
        description: str | None = None,
        actor: str = "system",
    ) -> ConnectionView:
        """Partial update; see the module docstring for how secret fields merge."""
        row = await self._row(name)
        entry = self.kinds.get(row.view.kind)
        merged: dict[str, Any] = {**row.view.settings, **self._decrypt(row)}
        for key, value in (settings or {}).items():
            if value is None and key in entry.secret_fields:
                merged.pop(key, None)
            else:
                merged[key] = value
        model = self._validate(entry, merged)
        plain, secrets = self._split(entry, model)
        ctx = self._context(name, row.view.kind)
        token = self.box().encrypt(secrets, context=ctx) if secrets else None
        values: dict[str, Any] = {
            "settings": plain,
            "secrets": token,
            "secret_fields": sorted(secrets),
            "updated_at": self.clock(),
            "updated_by": actor,
            # A changed connection has not been tested yet.
            "last_test_at": None,
            "last_test_ok": None,
            "last_test_message": None,
            "last_test_latency_ms": None,
        }
        if description is not None:
            values["description"] = description
        async with self.db.engine.begin() as conn:
            await conn.execute(update(self.table).where(self.table.c.name == name).values(**values))
        log.info("connection updated", extra={"connection": name, "actor": actor})
        return (await self._row(name)).view

    async def get(self, name: str) -> ConnectionView:
        return (await self._row(name)).view

    async def all(self, kind: str | None = None) -> list[ConnectionView]:
        query = select(self.table).order_by(self.table.c.name)
        if kind is not None:
            query = query.where(self.table.c.kind == kind)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._to_row(r._mapping).view for r in rows]

    async def delete(self, name: str, *, actor: str = "system") -> None:
        async with self.db.engine.begin() as conn:
            res = await conn.execute(delete(self.table).where(self.table.c.name == name))
        if res.rowcount == 0:
            raise NotFound(f"no connection named {name!r}", code="connection-not-found")
        log.info("connection deleted", extra={"connection": name, "actor": actor})

    async def resolve(self, name: str, kind: str | None = None) -> Any:
        """The typed settings of connection ``name`` with its secrets, for a task to use.

        ``kind`` asserts the expected kind (a task built for Brevo given an SMTP connection
        fails here, clearly, instead of somewhere in the client)."""
        row = await self._row(name)
        if kind is not None and row.view.kind != kind:
            raise Invalid(
                f"connection {name!r} is of kind {row.view.kind!r}, expected {kind!r}",
                code="wrong-connection-kind",
            )
        entry = self.kinds.get(row.view.kind)
        return self._validate(entry, {**row.view.settings, **self._decrypt(row)})

    async def test(self, name: str) -> CheckResult:
        """Run the kind's checker (bounded by the settings' timeout) and record the outcome."""
        row = await self._row(name)
        entry = self.kinds.get(row.view.kind)
        if entry.checker is None:
            raise Invalid(
                f"connections of kind {row.view.kind!r} have no test", code="no-connection-test"
            )
        secrets: dict[str, str] = {}
        start = time.perf_counter()
        try:
            secrets = self._decrypt(row)
            model = self._validate(entry, {**row.view.settings, **secrets})
            async with asyncio.timeout(model.timeout_seconds + 1):
                message = await entry.checker(model)
            ok = True
        except TimeoutError:
            ok, message = False, "timed out"
        except Exception as exc:
            ok = False
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency = (time.perf_counter() - start) * 1000
        result = CheckResult(ok=ok, message=_scrub(message, secrets), latency_ms=round(latency, 1))
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(self.table)
                .where(self.table.c.name == name)
                .values(
                    last_test_at=self.clock(),
                    last_test_ok=result.ok,
                    last_test_message=result.message,
                    last_test_latency_ms=result.latency_ms,
                )
            )
        log.info(
            "connection tested",
            extra={"connection": name, "ok": result.ok, "latency_ms": result.latency_ms},
        )
        return result

    async def rotate_keys(self) -> int:
        """Re-encrypt every connection's secrets with the primary key; returns how many changed."""
        return (await rekey_column(self.db, _secrets_target(self.table), self.box()))["rekeyed"]


def connections_rekey_target(tables: ConnectorTables) -> RekeyTarget:
    """The connections' encrypted secrets, for ``python -m <service> rekey`` (key rotation)."""
    return _secrets_target(tables.connections)


def _secrets_target(table: Table) -> RekeyTarget:
    return RekeyTarget(
        name="connections.secrets",
        table=table,
        column="secrets",
        key="name",
        context=lambda row: ConnectionStore._context(row.name, row.kind),
    )
