"""Errors of the Schulconnex client, one class per way a call can end badly.

A Schulconnex server answers errors with the body of ``docs/schnittstellendefinition/
http-statuscodes.md``: ``{"code": "409", "subcode": "00", "titel": ..., "beschreibung": ...}``.
:class:`SchulconnexError` carries those four fields (when the server sent them) plus the status,
method and path, never a request body (it may hold personal data) and never a credential.
"""

from __future__ import annotations

from typing import Any


class SchulconnexError(Exception):
    """A call that failed. ``status`` is None when no HTTP answer arrived at all."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        subcode: str | None = None,
        titel: str | None = None,
        beschreibung: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.subcode = subcode
        self.titel = titel
        self.beschreibung = beschreibung
        self.method = method
        self.path = path

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later unchanged (a later run, a retry-failed run)."""
        return False

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "subcode": self.subcode,
            "titel": self.titel,
            "beschreibung": self.beschreibung,
            "method": self.method,
            "path": self.path,
        }

    def short(self) -> str:
        """One line for an item log: ``HTTP 409/00 Konflikt ...: beschreibung``."""
        if self.status is None:
            return str(self)
        sub = f"/{self.subcode}" if self.subcode else ""
        head = f"HTTP {self.status}{sub}"
        text = ": ".join(p for p in (self.titel, self.beschreibung) if p) or str(self)
        return f"{head} {text}"[:500]


class BadRequest(SchulconnexError):
    """400: the server refused the content (validation, subcode says which rule)."""


class AuthError(SchulconnexError):
    """401 even with a fresh token, 403, or the token endpoint refused our credentials."""


class NotFoundError(SchulconnexError):
    """404: the record (or endpoint) does not exist."""


class StaleRevision(SchulconnexError):
    """409: the record changed since we read it (the revision we sent is not the current one)."""


class Unavailable(SchulconnexError):
    """429/5xx or network failures that outlasted every bounded retry."""

    @property
    def retryable(self) -> bool:
        return True


class AmbiguousWrite(Unavailable):
    """A POST whose outcome is unknown (timeout or 5xx after the server may have processed it).
    Never retried blindly: the caller looks the record up by its ``referrer`` first."""


def from_status(status: int) -> type[SchulconnexError]:
    if status == 400:
        return BadRequest
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 409:
        return StaleRevision
    if status == 429 or status >= 500:
        return Unavailable
    return SchulconnexError
