"""The transport interface: the few broker primitives the bus is built on.

Two implementations: :mod:`mesh_common.bus.memory` (asyncio, in-process broker) and
:mod:`mesh_common.bus.amqp` (aio-pika, RabbitMQ). Everything with semantics (envelopes,
validation, retries, DLQ, RPC multiplexing, middleware) lives once in
:mod:`mesh_common.bus.core` on top of this interface, so both backends behave the same.
A transport must not know about handlers, models or retries.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence

from mesh_common.bus.envelope import Envelope
from mesh_common.bus.topology import QueueSpec, Topology


class Delivery(ABC):
    """One delivered message awaiting a verdict (exactly one of ack / reject)."""

    envelope: Envelope
    redelivered: bool

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def reject(self, *, requeue: bool) -> None: ...


DeliveryCallback = Callable[[Delivery], Awaitable[None]]
ReplyCallback = Callable[[Envelope], None]
LostCallback = Callable[[BaseException], None]


class Transport(ABC):
    """Broker primitives. ``publish`` returns only once the broker confirmed the message."""

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Close; unsettled deliveries go back to their queues (like a closed AMQP channel)."""

    @abstractmethod
    async def declare(self, topology: Topology, specs: Sequence[QueueSpec]) -> None:
        """Declare the exchanges of ``topology`` and each handler queue with its companions."""

    @abstractmethod
    async def consume(self, queue: str, prefetch: int, callback: DeliveryCallback) -> None:
        """Start a consumer; each delivery runs ``callback`` in its own task."""

    @abstractmethod
    async def stop_consuming(self) -> None:
        """Cancel every consumer (no new deliveries); in-flight callbacks continue."""

    @abstractmethod
    async def publish(
        self, exchange: str, routing_key: str, envelope: Envelope, *, mandatory: bool = True
    ) -> None:
        """Publish and wait for the confirm. Raises ``Unroutable`` or ``PublishError``."""

    async def publish_reply(self, reply_to: str, envelope: Envelope) -> None:
        """Send an RPC reply (default: an ordinary publish to the default exchange)."""
        await self.publish("", reply_to, envelope, mandatory=False)

    async def publish_many(
        self, items: Sequence[tuple[str, str, Envelope]]
    ) -> list[BaseException | None]:
        """Publish several messages pipelined; one result (None = confirmed) per item."""
        results = await asyncio.gather(
            *(self.publish(ex, rk, env) for ex, rk, env in items), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    @abstractmethod
    async def open_reply_queue(
        self, name: str, on_reply: ReplyCallback, on_lost: LostCallback
    ) -> None:
        """Declare this process' exclusive reply queue and consume it without acks.

        ``on_lost`` is called whenever the queue, its channel or the connection is lost (pending
        calls must then fail); the transport re-establishes the queue by itself afterwards.
        """

    @abstractmethod
    async def get(self, queue: str) -> Delivery | None:
        """Fetch one message without a consumer (basic.get), or None when the queue is empty."""

    @abstractmethod
    async def message_count(self, queue: str) -> int: ...

    @abstractmethod
    async def delete_queue(self, queue: str) -> None: ...
