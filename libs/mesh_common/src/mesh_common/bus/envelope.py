"""The message envelope: what travels on the bus, mapped one-to-one onto AMQP.

An :class:`Envelope` carries the AMQP basic properties (message id, type, correlation id,
reply-to, content type, timestamp, app id, delivery mode, expiration) plus a flat ``headers``
table, and the body: the JSON payload. Both backends move envelopes, so the in-memory broker
exercises exactly the encoding RabbitMQ sees. The bus' own headers are named by the ``H_*``
constants below. JSON only, never pickle. This module must not do IO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol

import orjson
from opentelemetry import propagate
from pydantic import BaseModel

from mesh_common.context import actor_var, new_id, request_id_var

MessageKind = Literal["event", "command", "rpc", "reply"]
CONTENT_TYPE = "application/json"

# Mesh headers (AMQP header table). Trace context uses the W3C names as-is.
H_KIND = "x-mesh-kind"
H_REQUEST_ID = "x-request-id"
H_ACTOR = "x-actor"
H_DEADLINE = "x-deadline"  # absolute UNIX epoch in integer ms (AMQP floats are 32-bit); NTP clocks
H_CAUSATION = "x-causation-id"  # message id of the message being handled when this one was sent
H_ATTEMPT = "x-mesh-attempt"  # 1 for the first delivery, +1 per retry through the retry queue
H_ERROR = "x-mesh-error"
H_ERROR_TYPE = "x-mesh-error-type"
H_FAILED_QUEUE = "x-mesh-failed-queue"
H_FAILED_AT = "x-mesh-failed-at"
H_REPLAYED = "x-mesh-replayed"
H_STATUS = "x-mesh-status"  # RPC replies: "ok" or "error"
TRACE_HEADERS = ("traceparent", "tracestate")


class Message(Protocol):
    """What the bus publishes: a pydantic model whose class names its message type."""

    __message_type__: ClassVar[str]


def message_type_of(model: type[BaseModel] | BaseModel) -> str:
    """The routing key of a message model (its ``__message_type__`` class attribute)."""
    cls = model if isinstance(model, type) else type(model)
    value = getattr(cls, "__message_type__", None)
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"{cls.__qualname__} has no __message_type__: ClassVar[str] "
            "(e.g. 'booking.booking_confirmed.v1')"
        )
    return value


@dataclass(slots=True)
class Envelope:
    """One message: AMQP properties + headers + JSON body."""

    kind: MessageKind
    type: str
    body: bytes
    message_id: str = field(default_factory=new_id)
    correlation_id: str | None = None
    reply_to: str | None = None
    app_id: str | None = None
    timestamp: float = field(default_factory=time.time)
    expiration: float | None = None  # seconds the message may wait in a queue
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = CONTENT_TYPE

    @property
    def persistent(self) -> bool:
        # RPC requests and replies are worthless once the caller gave up; events and commands
        # must survive a broker restart.
        return self.kind in ("event", "command")

    @property
    def request_id(self) -> str | None:
        return _str_or_none(self.headers.get(H_REQUEST_ID))

    @property
    def actor(self) -> str | None:
        return _str_or_none(self.headers.get(H_ACTOR))

    @property
    def deadline(self) -> float | None:
        """Absolute deadline in UNIX epoch seconds (the header holds integer milliseconds)."""
        value = self.headers.get(H_DEADLINE)
        return value / 1000 if isinstance(value, int | float) else None

    def set_deadline(self, deadline: float) -> None:
        self.headers[H_DEADLINE] = int(deadline * 1000)

    @property
    def attempt(self) -> int:
        value = self.headers.get(H_ATTEMPT)
        return int(value) if isinstance(value, int) and value > 0 else 1

    def copy(self, **changes: Any) -> Envelope:
        new = replace(self, **changes)
        if "headers" not in changes:
            new.headers = dict(self.headers)
        return new

    def payload(self) -> Any:
        """The decoded JSON body (raises ``orjson.JSONDecodeError`` on a poison body)."""
        return orjson.loads(self.body)

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict of everything but the body (outbox rows, DLQ listings)."""
        return {
            "kind": self.kind,
            "type": self.type,
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "app_id": self.app_id,
            "timestamp": self.timestamp,
            "expiration": self.expiration,
            "headers": self.headers,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], body: bytes) -> Envelope:
        return cls(
            kind=record["kind"],
            type=record["type"],
            body=body,
            message_id=record["message_id"],
            correlation_id=record.get("correlation_id"),
            reply_to=record.get("reply_to"),
            app_id=record.get("app_id"),
            timestamp=float(record.get("timestamp") or time.time()),
            expiration=record.get("expiration"),
            headers=dict(record.get("headers") or {}),
        )


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def encode_body(message: BaseModel | None) -> bytes:
    """JSON bytes of a pydantic model (fast path: pydantic-core's serializer)."""
    if message is None:
        return b"null"
    return message.__pydantic_serializer__.to_json(message)


def context_headers(causation_id: str | None = None) -> dict[str, Any]:
    """Headers taken from the current context: request id, actor, W3C trace context."""
    headers: dict[str, Any] = {}
    request_id = request_id_var.get()
    if request_id is not None:
        headers[H_REQUEST_ID] = request_id
    actor = actor_var.get()
    if actor is not None:
        headers[H_ACTOR] = actor
    if causation_id is not None:
        headers[H_CAUSATION] = causation_id
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for name in TRACE_HEADERS:
        if name in carrier:
            headers[name] = carrier[name]
    return headers


def make_envelope(
    kind: MessageKind,
    message: BaseModel | type[BaseModel],
    *,
    app_id: str,
    causation_id: str | None = None,
    headers: dict[str, Any] | None = None,
    body: bytes | None = None,
) -> Envelope:
    """Build the envelope of an event/command/RPC request from the current context.

    ``body`` is the message's JSON when the caller has encoded it already; ``message`` may then
    be the model class (it only names the type)."""
    if body is None:
        if isinstance(message, type):
            raise TypeError("make_envelope needs a message instance or its encoded body")
        body = encode_body(message)
    merged = context_headers(causation_id)
    merged[H_KIND] = kind
    if headers:
        merged.update(headers)
    return Envelope(
        kind=kind,
        type=message_type_of(message),
        body=body,
        app_id=app_id,
        headers=merged,
    )
