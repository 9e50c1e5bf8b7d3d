"""The data a service hands to the mail package: :class:`OutgoingMail` and :class:`Attachment`.

Addresses and header fields are validated here, when the mail is built, so a mail that reaches
the queue can always be turned into a MIME message: an address without ``@``, a line break in
a header (header injection), a reserved header or an oversized mail is refused at once with a
``ValueError`` (pydantic ``ValidationError``). This module must not touch the database or the
network.
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.policy import default as _default_policy
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from mesh_common.mail.sealing import redact

# A mail whose parts add up to more than this is refused when built (most servers cap at 25-50 MB
# after base64, which adds a third).
MAX_MAIL_BYTES = 20 * 1024 * 1024

# Headers the package writes itself; a caller setting them would break the message or its envelope.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "return-path",
    }
)
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 ftext: printable ASCII except ':'
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(\s*;.*)?$")


def _no_line_breaks(value: str, what: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{what} must not contain line breaks")
    return value


def parse_address(value: str) -> Address:
    """Parse one address (``a@b.de`` or ``Name <a@b.de>``); ``ValueError`` when it is not one."""
    _no_line_breaks(value, "an e-mail address")
    try:
        header = _default_policy.header_factory("To", value)
        addresses = header.addresses
        defects = header.defects
    except Exception as exc:  # the stdlib parser raises assorted errors on garbage
        raise ValueError(f"not an e-mail address: {value!r}") from exc
    if len(addresses) != 1 or defects:
        raise ValueError(f"not one e-mail address: {value!r}")
    address: Address = addresses[0]
    domain = address.domain
    if not address.username or not domain or ".." in domain or domain.strip(".") != domain:
        raise ValueError(f"not an e-mail address: {value!r}")
    return address


def normalize_address(value: str) -> str:
    """Check one address and return it in canonical form (quoted display name if needed)."""
    return str(parse_address(value))


def addr_spec(address: str) -> str:
    """The bare ``local@domain`` of an address (for the SMTP envelope)."""
    return parse_address(address).addr_spec


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


MailAddress = Annotated[str, AfterValidator(normalize_address)]
AddressList = Annotated[list[MailAddress], BeforeValidator(_as_list)]


def _check_filename(value: str) -> str:
    _no_line_breaks(value, "an attachment filename")
    if not value.strip() or "/" in value or "\\" in value:
        raise ValueError(f"not a plain file name: {value!r}")
    return value


def _check_content_type(value: str) -> str:
    _no_line_breaks(value, "a content type")
    if not _CONTENT_TYPE.match(value):
        raise ValueError(f"not a MIME type: {value!r}")
    return value


class Attachment(BaseModel):
    """One file attached to a mail. ``content_type`` may carry parameters
    (``text/calendar; method=REQUEST``)."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    filename: Annotated[str, AfterValidator(_check_filename), Field(max_length=255)]
    content_type: Annotated[str, AfterValidator(_check_content_type), Field(max_length=255)] = (
        "application/octet-stream"
    )
    data: bytes


class OutgoingMail(BaseModel):
    """A mail to send. ``category`` (e.g. ``booking-confirmation``) and ``ref`` (e.g. the order
    number) are for finding it later in the outbox; they are not sent.

    Addresses may be given as one string or a list; ``from_address`` overrides ``MAIL_FROM``.
    ``text`` is required (every mail has a plain-text part); ``html`` adds an HTML alternative.

    ``sensitive`` names values in the subject, bodies or header values that must never be stored
    or shown in the clear (a one-time activation token): the queue keeps them replaced by
    ``[redacted]`` and the real content sealed with the service's SecretBox until it is sent
    (see :mod:`mesh_common.mail.sealing`). They are never sent as a field, and the repr shows
    the mail redacted.
    """

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    to: AddressList = Field(default_factory=list)
    cc: AddressList = Field(default_factory=list)
    bcc: AddressList = Field(default_factory=list)
    reply_to: AddressList = Field(default_factory=list)
    from_address: MailAddress | None = None
    subject: Annotated[str, Field(max_length=998)]
    text: str
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    category: Annotated[str, Field(min_length=1, max_length=100)] = "general"
    ref: Annotated[str, Field(max_length=200)] | None = None
    sensitive: Annotated[tuple[str, ...], Field(max_length=20, repr=False)] = ()

    @model_validator(mode="after")
    def _check(self) -> OutgoingMail:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("a mail needs at least one recipient (to, cc or bcc)")
        _no_line_breaks(self.subject, "the subject")
        if any(not value.strip() for value in self.sensitive):
            raise ValueError("a sensitive value must not be empty")
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"not a valid header name: {name!r}")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the mail package, not by callers")
            _no_line_breaks(value, f"header {name!r}")
        size = (
            len(self.text.encode())
            + len((self.html or "").encode())
            + sum(len(a.data) for a in self.attachments)
        )
        if size > MAX_MAIL_BYTES:
            raise ValueError(f"the mail is {size} bytes; at most {MAX_MAIL_BYTES} are allowed")
        return self

    def __repr_args__(self) -> Any:
        # A mail logged or printed by mistake shows its sensitive values redacted.
        for name, value in super().__repr_args__():
            if self.sensitive and name in ("subject", "text", "html") and isinstance(value, str):
                value = redact(value, self.sensitive)
            elif self.sensitive and name == "headers":
                value = {k: redact(v, self.sensitive) for k, v in self.headers.items()}
            yield name, value

    @property
    def envelope_recipients(self) -> list[str]:
        """Every recipient (to, cc and bcc) once, as bare addresses."""
        seen: dict[str, str] = {}
        for address in (*self.to, *self.cc, *self.bcc):
            bare = addr_spec(address)
            seen.setdefault(bare.lower(), bare)
        return list(seen.values())
