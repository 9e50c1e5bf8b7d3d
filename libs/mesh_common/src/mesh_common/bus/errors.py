"""Exceptions of the bus and the typed RPC error envelope.

An RPC server turns every failure into an error envelope ``{code, message, details, status}``;
:func:`remote_error` turns it back into an exception on the caller: a :class:`RemoteError`
subclass that keeps the code, and for domain errors also a
:class:`mesh_common.errors.DomainError` (so the HTTP edge maps it to problem+json unchanged).
This module must not do IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh_common.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
)


class BusError(Exception):
    """Base of every bus failure."""


class BusNotStarted(BusError):
    """The bus was used before ``start()`` or after ``stop()``."""


class PublishError(BusError):
    """The broker did not confirm a publish (nack, channel or connection lost, timeout)."""


class Unroutable(PublishError):
    """No queue is bound for the routing key (``mandatory`` publish returned by the broker)."""

    def __init__(self, exchange: str, routing_key: str) -> None:
        super().__init__(f"no queue bound for {routing_key!r} on exchange {exchange!r}")
        self.exchange = exchange
        self.routing_key = routing_key


class DeadLetter(Exception):
    """Raise from an event/command handler to send the message straight to its DLQ (no retry)."""


class RpcError(BusError):
    """Base of every failed RPC call."""


class RpcTimeout(RpcError, TimeoutError):
    """No reply within the call's timeout (or the caller's deadline had already passed)."""


class RpcUnroutable(RpcError, Unroutable):
    """No server is bound for the RPC target: fails at once instead of timing out."""


class RpcConnectionLost(RpcError):
    """The reply queue, its channel or the connection was lost while the call was pending."""


class RemoteError(RpcError):
    """The server replied with an error envelope. ``code`` is stable and machine-readable."""

    code: str = "remote-error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = dict(details or {})
        self.remote_status = status


class RemoteInternalError(RemoteError):
    """The handler failed with an unexpected exception (a bug or an outage on the server)."""

    code = "internal-error"


class RemoteInvalidRequest(RemoteError):
    """The server could not decode or validate the request payload (a contract mismatch)."""

    code = "invalid-request"


class RemoteDeadlineExceeded(RemoteError, RpcTimeout):
    """The request reached the server after its deadline; it was not executed."""

    code = "deadline-exceeded"


class RemoteDomainError(RemoteError, DomainError):
    """A :class:`DomainError` raised by the remote handler, re-raised with the same code/status."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        RemoteError.__init__(self, message, code=code, details=details, status=status)
        self.detail = message
        if status is not None:
            self.status = status
        self.extra = dict(details or {})


class RemoteNotFound(RemoteDomainError, NotFound):
    code, status, title = NotFound.code, NotFound.status, NotFound.title


class RemoteConflict(RemoteDomainError, Conflict):
    code, status, title = Conflict.code, Conflict.status, Conflict.title


class RemoteInvalid(RemoteDomainError, Invalid):
    code, status, title = Invalid.code, Invalid.status, Invalid.title


class RemoteUnauthorized(RemoteDomainError, Unauthorized):
    code, status, title = Unauthorized.code, Unauthorized.status, Unauthorized.title


class RemoteForbidden(RemoteDomainError, Forbidden):
    code, status, title = Forbidden.code, Forbidden.status, Forbidden.title


class RemoteUnavailable(RemoteDomainError, Unavailable):
    code, status, title = Unavailable.code, Unavailable.status, Unavailable.title


_DOMAIN_BY_CODE: dict[str, type[RemoteDomainError]] = {
    cls.code: cls
    for cls in (
        RemoteNotFound,
        RemoteConflict,
        RemoteInvalid,
        RemoteUnauthorized,
        RemoteForbidden,
        RemoteUnavailable,
    )
}
# A domain error with a service-specific code (e.g. "delegation-required") maps by its status to
# the family class, so callers can still ``except Forbidden`` while the code stays exact.
_DOMAIN_BY_STATUS: dict[int, type[RemoteDomainError]] = {
    cls.status: cls
    for cls in (
        RemoteNotFound,
        RemoteConflict,
        RemoteInvalid,
        RemoteUnauthorized,
        RemoteForbidden,
        RemoteUnavailable,
    )
}
_PLAIN_BY_CODE: dict[str, type[RemoteError]] = {
    cls.code: cls for cls in (RemoteInternalError, RemoteInvalidRequest, RemoteDeadlineExceeded)
}


def error_envelope(exc: BaseException) -> dict[str, Any]:
    """The error envelope a server replies with for ``exc``."""
    if isinstance(exc, DomainError):
        return {
            "code": exc.code,
            "message": exc.detail,
            "details": exc.extra,
            "status": exc.status,
            "domain": True,
        }
    if isinstance(exc, RemoteError):
        # A nested RPC failed: pass its code on rather than hiding it behind internal-error.
        return {
            "code": exc.code,
            "message": exc.message,
            "details": exc.details,
            "status": exc.remote_status,
            "domain": False,
        }
    return {
        "code": RemoteInternalError.code,
        "message": f"{type(exc).__name__}: {exc}"[:500],
        "details": {},
        "status": 500,
        "domain": False,
    }


def remote_error(envelope: Mapping[str, Any]) -> RemoteError:
    """The exception a caller raises for an error envelope."""
    code = str(envelope.get("code") or RemoteError.code)
    message = str(envelope.get("message") or code)
    details = envelope.get("details")
    details = details if isinstance(details, Mapping) else {}
    raw_status = envelope.get("status")
    status = raw_status if isinstance(raw_status, int) else None
    if envelope.get("domain"):
        cls: type[RemoteError] = _DOMAIN_BY_CODE.get(code) or _DOMAIN_BY_STATUS.get(
            status or 0, RemoteDomainError
        )
    else:
        cls = _PLAIN_BY_CODE.get(code, RemoteError)
    return cls(message, code=code, details=details, status=status)
