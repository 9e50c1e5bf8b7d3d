"""Domain errors and their single mapping to RFC 9457 problem+json at the HTTP edge.

Service code raises subclasses of :class:`DomainError` (never ``HTTPException``); the handlers
installed by :func:`install_problem_handlers` turn them, validation errors, HTTP errors and
unexpected exceptions into ``application/problem+json`` responses. This module must not know
about any particular service.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mesh_common.context import current_request_id

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://edumesh.dev/problems/"

log = logging.getLogger("mesh.errors")


class DomainError(Exception):
    """Base of every expected, user-facing error. ``code`` is stable and machine-readable."""

    status: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = dict(extra or {})


class NotFound(DomainError):
    status, code, title = 404, "not-found", "Not found"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "Conflict"


class Invalid(DomainError):
    status, code, title = 422, "invalid", "Unprocessable content"


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Forbidden"


class Unavailable(DomainError):
    status, code, title = 503, "unavailable", "Service unavailable"


def problem(
    status: int,
    *,
    code: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Build one problem+json response (RFC 9457)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    slug = code or phrase.lower().replace(" ", "-")
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title or phrase,
        "status": status,
        "code": slug,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def out_of_range(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a number too large for the database driver:
    ``OverflowError`` from sqlite3 binding, asyncpg's "out of int64 range" data errors."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OverflowError):
            return True
        text = str(current)
        if type(current).__name__ in ("DataError", "NumericValueOutOfRangeError") and (
            "out of range" in text or "int64" in text or "too large" in text
        ):
            return True
        orig = getattr(current, "orig", None)
        todo += [
            current.__cause__,
            current.__context__,
            orig if isinstance(orig, BaseException) else None,
        ]
    return False


def install_problem_handlers(app: FastAPI) -> None:
    """Map every error that reaches the edge to problem+json, exactly once."""

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return problem(
            exc.status,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            instance=request.url.path,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return problem(
            422,
            code="validation-error",
            title="Request validation failed",
            detail=f"{len(errors)} invalid field(s)",
            instance=request.url.path,
            extra={"errors": errors},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            exc.status_code,
            detail=str(exc.detail) if exc.detail else None,
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if out_of_range(exc):
            # A number the database cannot hold (e.g. an id beyond 64 bits in the path): the
            # client's mistake, not ours. Nothing was written (the statement never ran).
            return problem(
                422,
                code="value-out-of-range",
                title="Request validation failed",
                detail="a number in the request is outside the range this API accepts",
                instance=request.url.path,
            )
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            code="internal-error",
            detail="An unexpected error occurred; it has been logged with the request id.",
            instance=request.url.path,
        )

    # Handlers for these classes run inside the app (Starlette's ExceptionMiddleware), so a
    # value-out-of-range answer is an ordinary 422: not logged as an error, not re-raised to the
    # server. The catch-all below runs in ServerErrorMiddleware, which re-raises after it.
    app.add_exception_handler(OverflowError, _unexpected)
    app.add_exception_handler(StatementError, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
