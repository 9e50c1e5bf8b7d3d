"""Request and response bodies of the mailbox-invites HTTP API (validation only, no logic)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from mesh_contracts.mailbox_invites import EventKind, InvitationStatus
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=254, pattern=r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$"
    ),
]
Host = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=253)]
Port = Annotated[int, Field(ge=1, le=65535)]
Folder = Annotated[str, StringConstraints(pattern=r"^[\w .\-/]{1,200}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ExternalId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Security = Literal["starttls", "tls", "none"]
# The port a security option normally goes with, where none is given.
SMTP_PORTS = {"starttls": 587, "tls": 465, "none": 25}
IMAP_PORTS = {"starttls": 143, "tls": 993, "none": 143}


class SmtpIn(Strict):
    host: Host
    port: Port | None = Field(default=None, description="default: 587 / 465 / 25 by security")
    security: Security = "starttls"
    username: Annotated[str, StringConstraints(min_length=1, max_length=254)] | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _login_pair(self) -> SmtpIn:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password for an SMTP login, or neither")
        if self.port is None:
            self.port = SMTP_PORTS[self.security]
        return self


class ImapIn(Strict):
    host: Host
    port: Port | None = Field(default=None, description="default: 143 / 993 / 143 by security")
    # starttls: required (a server that does not offer it is refused); tls: implicit (IMAPS).
    security: Security = "tls"
    username: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    password: SecretStr
    folder: Folder = "INBOX"
    processed_folder: Folder = "edumesh-processed"
    ignored_folder: Folder = "edumesh-ignored"

    @model_validator(mode="after")
    def _default_port(self) -> ImapIn:
        if self.port is None:
            self.port = IMAP_PORTS[self.security]
        return self


class TechnicalUserIn(Strict):
    """A technical user: the groupware account that sends invitations and reads replies."""

    name: Name
    display_name: Text200
    email: Email
    smtp: SmtpIn
    imap: ImapIn
    tls_verify: bool = True
    tls_ca_pem: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 15.0

    def plain(self) -> dict[str, Any]:
        """As a dict with the passwords revealed (for the service layer, which encrypts them)."""
        data = self.model_dump()
        data["smtp"]["password"] = (
            self.smtp.password.get_secret_value() if self.smtp.password else None
        )
        data["imap"]["password"] = self.imap.password.get_secret_value()
        return data


class SmtpPatch(Strict):
    host: Host | None = None
    port: Port | None = None
    security: Security | None = None
    username: Annotated[str, StringConstraints(min_length=1, max_length=254)] | None = None
    password: SecretStr | None = None


class ImapPatch(Strict):
    host: Host | None = None
    port: Port | None = None
    security: Security | None = None
    username: Annotated[str, StringConstraints(min_length=1, max_length=254)] | None = None
    password: SecretStr | None = None
    folder: Folder | None = None
    processed_folder: Folder | None = None
    ignored_folder: Folder | None = None


class TechnicalUserPatch(Strict):
    """Fields left out stay as they are; a password left out stays, ``smtp.password: null``
    together with ``smtp.username: null`` turns the SMTP login off."""

    display_name: Text200 | None = None
    email: Email | None = None
    smtp: SmtpPatch | None = None
    imap: ImapPatch | None = None
    tls_verify: bool | None = None
    tls_ca_pem: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> TechnicalUserPatch:
        non_null = ("display_name", "email", "tls_verify", "timeout_seconds", "imap")
        nulled = [k for k in non_null if k in self.model_fields_set and getattr(self, k) is None]
        if nulled:
            raise ValueError(f"{', '.join(nulled)} cannot be null")
        if self.imap is not None:
            for key in ("host", "port", "security", "username", "password", "folder"):
                if key in self.imap.model_fields_set and getattr(self.imap, key) is None:
                    raise ValueError(f"imap.{key} cannot be null")
        if self.smtp is not None:
            for key in ("host", "port", "security"):
                if key in self.smtp.model_fields_set and getattr(self.smtp, key) is None:
                    raise ValueError(f"smtp.{key} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.model_fields_set:
            value = getattr(self, key)
            if isinstance(value, SmtpPatch | ImapPatch):
                part = {}
                for sub in value.model_fields_set:
                    v = getattr(value, sub)
                    part[sub] = v.get_secret_value() if isinstance(v, SecretStr) else v
                out[key] = part
            else:
                out[key] = value
        return out


class ProbeOut(BaseModel):
    ok: bool
    message: str
    latency_ms: float


class CheckOut(BaseModel):
    ok: bool
    smtp: ProbeOut
    imap: ProbeOut
    checked_at: dt.datetime


class RoomIn(Strict):
    name: Text200


class RoomGroupIn(Strict):
    name: Text200
    room_ids: list[ExternalId] = Field(default_factory=list, max_length=1000)


class MailboxIn(Strict):
    room_id: ExternalId
    email: Email
    technical_user_id: int
    include_blocks: bool = False
    active: bool = True


class MailboxPatch(BaseModel):
    """Only ``technical_user_id`` and ``include_blocks`` may change after set-up; any other
    field (room, address, ...) is refused with code ``mailbox-field-locked``."""

    model_config = ConfigDict(extra="allow")

    technical_user_id: int | None = None
    include_blocks: bool | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> MailboxPatch:
        for key in ("technical_user_id", "include_blocks"):
            if key in self.model_fields_set and getattr(self, key) is None:
                raise ValueError(f"{key} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.model_fields_set}
        out.update(self.model_extra or {})
        return out


class RoomEventIn(Strict):
    """An event of the room-booking system (the path names its id)."""

    room_id: ExternalId
    room_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    kind: EventKind = "booking"
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    booked_by: Annotated[str, StringConstraints(max_length=200)] | None = None
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    revision: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> RoomEventIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class EventOutcome(BaseModel):
    outcome: Literal["created", "changed", "unchanged", "stale", "deleted", "unknown"]
    event: dict[str, Any] | None = None


class InitialiseIn(Strict):
    """Which of the previewed events to initialise (all of them when left out)."""

    event_ids: list[ExternalId] | None = Field(default=None, max_length=10_000)


class InitialiseOut(BaseModel):
    created: int
    invitation_ids: list[int]
    not_eligible: list[str]


class RecycleOut(BaseModel):
    reset: int
    invitation_ids: list[int]


StatusFilter = InvitationStatus
