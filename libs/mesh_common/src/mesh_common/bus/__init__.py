"""The edumesh message bus: events, commands and RPC over one API with two backends.

``create_bus(settings)`` returns a :class:`Bus` on the in-memory broker when
``settings.amqp_url`` is None (the embedded default; pass a shared :class:`MemoryBroker` so the
services of one process reach each other) and on RabbitMQ via aio-pika otherwise. See
docs/messaging.md. This package must not read settings from the environment.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh_common.bus.core import (
    Bus,
    HandlerRegistry,
    HandlerSpec,
    MessageContext,
    Middleware,
    dlq_list,
    dlq_replay,
)
from mesh_common.bus.envelope import Envelope, MessageKind, message_type_of
from mesh_common.bus.errors import (
    BusError,
    BusNotStarted,
    DeadLetter,
    PublishError,
    RemoteDeadlineExceeded,
    RemoteDomainError,
    RemoteError,
    RemoteInternalError,
    RemoteInvalidRequest,
    RpcConnectionLost,
    RpcError,
    RpcTimeout,
    RpcUnroutable,
    Unroutable,
)
from mesh_common.bus.memory import MemoryBroker, MemoryTransport
from mesh_common.bus.settings import BusSettings
from mesh_common.bus.topology import Topology


def create_bus(
    settings: BusSettings,
    *,
    broker: MemoryBroker | None = None,
    middlewares: Iterable[Middleware] = (),
) -> Bus:
    """Build (not start) a service's bus: in-memory when ``amqp_url`` is None, else aio-pika.

    ``broker`` is the shared in-memory broker of the process (ignored with an AMQP URL); without
    one the bus gets a private broker, which only reaches itself.
    """
    if settings.amqp_url is None:
        return Bus(settings, MemoryTransport(broker or MemoryBroker()), middlewares=middlewares)
    from mesh_common.bus.amqp import AmqpTransport

    return Bus(settings, AmqpTransport(settings), middlewares=middlewares)


__all__ = [
    "Bus",
    "BusError",
    "BusNotStarted",
    "BusSettings",
    "DeadLetter",
    "Envelope",
    "HandlerRegistry",
    "HandlerSpec",
    "MemoryBroker",
    "MessageContext",
    "MessageKind",
    "Middleware",
    "PublishError",
    "RemoteDeadlineExceeded",
    "RemoteDomainError",
    "RemoteError",
    "RemoteInternalError",
    "RemoteInvalidRequest",
    "RpcConnectionLost",
    "RpcError",
    "RpcTimeout",
    "RpcUnroutable",
    "Topology",
    "Unroutable",
    "create_bus",
    "dlq_list",
    "dlq_replay",
    "message_type_of",
]
