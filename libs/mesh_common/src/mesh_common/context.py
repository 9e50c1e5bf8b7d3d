"""Per-request / per-message context carried across HTTP and the bus.

Holds the request id, the acting principal and the deadline of the current unit of work in
contextvars, so logging, the bus envelope and outgoing HTTP calls can pick them up without every
function passing them along. It must not hold anything else (no sessions, no settings).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("mesh_request_id", default=None)
actor_var: ContextVar[str | None] = ContextVar("mesh_actor", default=None)
# Absolute deadline as UNIX epoch seconds; None means "no deadline".
deadline_var: ContextVar[float | None] = ContextVar("mesh_deadline", default=None)


def new_id() -> str:
    """A new random identifier (message ids, request ids, correlation ids)."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()


def current_actor() -> str | None:
    return actor_var.get()


def remaining_seconds() -> float | None:
    """Seconds left until the current deadline, or None when there is none."""
    deadline = deadline_var.get()
    if deadline is None:
        return None
    return deadline - time.time()


@contextmanager
def bound(
    *,
    request_id: str | None = None,
    actor: str | None = None,
    deadline: float | None = None,
) -> Iterator[None]:
    """Bind context values for the duration of a block (a request or a consumed message)."""
    tokens: list[tuple[ContextVar[Any], Token[Any]]] = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if actor is not None:
        tokens.append((actor_var, actor_var.set(actor)))
    if deadline is not None:
        tokens.append((deadline_var, deadline_var.set(deadline)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
