"""Structured JSON logs for every process, with request id, actor and service on each line.

stdlib logging (uvicorn, SQLAlchemy, aio-pika) and structlog both render through one
ProcessorFormatter so each line is one JSON object. Values under secret-looking keys are redacted
before rendering. Configuration happens once per process, from :func:`configure_logging`; this
module must not configure anything at import.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from mesh_common.context import actor_var, request_id_var

_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|authorization|api[_-]?key|iban|credential|cookie)", re.I
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9\-_.=]+")
REDACTED = "***"
_configured = False


def _add_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    rid = request_id_var.get()
    if rid and "request_id" not in event:
        event["request_id"] = rid
    actor = actor_var.get()
    if actor and "actor" not in event:
        event["actor"] = actor
    return event


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values of secret-looking keys and bearer tokens inside messages."""
    for key in list(event):
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = REDACTED
    msg = event.get("event")
    if isinstance(msg, str) and "Bearer" in msg:
        event["event"] = _BEARER.sub(r"\1" + REDACTED, msg)
    return event


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Route stdlib and structlog through one JSON (or console) renderer. Idempotent."""
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_context,
        redact,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _configured:
        for h in list(root.handlers):
            if getattr(h, "_edumesh", False):
                root.removeHandler(h)
    handler._edumesh = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; let its records reach ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
