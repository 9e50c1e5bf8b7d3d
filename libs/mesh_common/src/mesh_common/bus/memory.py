"""In-memory broker and transport: the embedded default and the unit-test backend.

:class:`MemoryBroker` emulates the RabbitMQ features the bus relies on, in one asyncio event
loop: topic/direct/default exchanges, ``mandatory`` returns, queues with competing consumers and
per-consumer prefetch, redelivery on reject/close, quorum ``x-delivery-limit``, dead-letter
exchanges, per-message expiration (retry queues dead-letter back after their delay) and
exclusive reply queues whose loss cancels their consumer. One broker may be shared by several
:class:`MemoryTransport` instances (several services, or replicas of one, in one process).

Known differences from RabbitMQ (documented in docs/messaging.md): expired messages leave the
queue when they expire rather than only at its head, and nothing survives the process.
This module must not know about handlers, models or retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh_common.bus.envelope import Envelope
from mesh_common.bus.errors import BusError, PublishError, Unroutable
from mesh_common.bus.topology import QueueSpec, Topology
from mesh_common.bus.transport import (
    Delivery,
    DeliveryCallback,
    LostCallback,
    ReplyCallback,
    Transport,
)

log = logging.getLogger("mesh.bus.memory")


@dataclass(slots=True)
class _Stored:
    envelope: Envelope
    delivery_count: int = 0
    redelivered: bool = False
    expires_at: float | None = None


@dataclass(eq=False, slots=True)
class _Consumer:
    queue: _Queue
    prefetch: int
    callback: DeliveryCallback | None
    reply_callback: ReplyCallback | None
    owner: MemoryTransport
    on_cancel: LostCallback | None = None
    unacked: set[_MemoryDelivery] = field(default_factory=set)
    active: bool = True


class _Queue:
    def __init__(self, broker: MemoryBroker, name: str, arguments: dict[str, Any]) -> None:
        self.broker = broker
        self.name = name
        self.arguments = arguments
        self.messages: deque[_Stored] = deque()
        self.consumers: list[_Consumer] = []
        self._rr = itertools.count()
        self.deleted = False
        self.exclusive_owner: MemoryTransport | None = None

    @property
    def delivery_limit(self) -> int | None:
        value = self.arguments.get("x-delivery-limit")
        return int(value) if value is not None else None

    def put(self, stored: _Stored, *, front: bool = False) -> None:
        if stored.envelope.expiration is not None and stored.expires_at is None:
            stored.expires_at = time.monotonic() + stored.envelope.expiration
            self.broker.loop.call_later(max(stored.envelope.expiration, 0.0) + 0.001, self.expire)
        if front:
            self.messages.appendleft(stored)
        else:
            self.messages.append(stored)
        self.dispatch()

    def expire(self) -> None:
        if self.deleted or not self.messages:
            return
        now = time.monotonic()
        keep: deque[_Stored] = deque()
        for stored in self.messages:
            if stored.expires_at is not None and stored.expires_at <= now:
                self.broker.dead_letter(self, stored, "expired")
            else:
                keep.append(stored)
        self.messages = keep

    def dispatch(self) -> None:
        while self.messages and not self.deleted:
            consumer = self._next_consumer()
            if consumer is None:
                return
            stored = self.messages.popleft()
            if stored.expires_at is not None and stored.expires_at <= time.monotonic():
                self.broker.dead_letter(self, stored, "expired")
                continue
            self._deliver(consumer, stored)

    def _next_consumer(self) -> _Consumer | None:
        n = len(self.consumers)
        if n == 0:
            return None
        start = next(self._rr)
        for i in range(n):
            consumer = self.consumers[(start + i) % n]
            if consumer.reply_callback is not None or len(consumer.unacked) < consumer.prefetch:
                return consumer
        return None

    def _deliver(self, consumer: _Consumer, stored: _Stored) -> None:
        if consumer.reply_callback is not None:  # no-ack consumer (RPC replies)
            consumer.reply_callback(stored.envelope)
            return
        assert consumer.callback is not None
        delivery = _MemoryDelivery(consumer, stored)
        consumer.unacked.add(delivery)
        consumer.owner.spawn(consumer.callback(delivery))

    def settle(self, delivery: _MemoryDelivery, *, requeue: bool | None) -> None:
        """``requeue=None`` acks; True returns the message; False dead-letters it."""
        consumer = delivery.consumer
        if consumer is not None:
            consumer.unacked.discard(delivery)
        stored = delivery.stored
        if requeue is True and not self.deleted:
            stored.delivery_count += 1
            stored.redelivered = True
            limit = self.delivery_limit
            if limit is not None and stored.delivery_count > limit:
                self.broker.dead_letter(self, stored, "delivery_limit")
            else:
                self.put(stored, front=True)
        elif requeue is False and not self.deleted:
            self.broker.dead_letter(self, stored, "rejected")
        self.dispatch()


class _MemoryDelivery(Delivery):
    __slots__ = ("consumer", "envelope", "queue", "redelivered", "settled", "stored")

    def __init__(self, consumer: _Consumer | None, stored: _Stored, queue: _Queue | None = None):
        self.consumer = consumer
        self.stored = stored
        self.queue = queue if queue is not None else consumer.queue  # type: ignore[union-attr]
        # Each delivery gets its own copy: a handler mutating headers must not alter the
        # stored message (RabbitMQ hands out bytes).
        self.envelope = stored.envelope.copy()
        self.redelivered = stored.redelivered
        self.settled = False

    def _settle(self, requeue: bool | None) -> None:
        if self.settled:
            raise BusError("delivery already settled")
        self.settled = True
        if self.consumer is not None and not self.consumer.active:
            return  # the consumer's channel is gone: the message was already requeued
        self.queue.settle(self, requeue=requeue)

    async def ack(self) -> None:
        self._settle(None)

    async def reject(self, *, requeue: bool) -> None:
        self._settle(requeue)


class MemoryBroker:
    """A process-local broker shared by every in-memory transport of one event loop."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.exchanges: dict[str, str] = {}  # name -> "topic" | "direct"
        self.bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> [(key, queue)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- topology
    def declare_exchange(self, name: str, kind: str) -> None:
        existing = self.exchanges.get(name)
        if existing is not None and existing != kind:
            raise BusError(f"exchange {name!r} exists with type {existing!r}")
        self.exchanges[name] = kind
        self.bindings.setdefault(name, [])

    def declare_queue(
        self, name: str, arguments: dict[str, Any], *, exclusive_owner: MemoryTransport | None
    ) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = _Queue(self, name, dict(arguments))
            queue.exclusive_owner = exclusive_owner
            self.queues[name] = queue
        return queue

    def bind(self, exchange: str, routing_key: str, queue: str) -> None:
        entry = (routing_key, queue)
        bindings = self.bindings.setdefault(exchange, [])
        if entry not in bindings:
            bindings.append(entry)

    def delete_queue(self, name: str) -> None:
        queue = self.queues.pop(name, None)
        if queue is None:
            return
        queue.deleted = True
        queue.messages.clear()
        for bindings in self.bindings.values():
            bindings[:] = [b for b in bindings if b[1] != name]
        for consumer in list(queue.consumers):
            consumer.active = False
            if consumer.on_cancel is not None:
                consumer.on_cancel(BusError(f"queue {name!r} deleted"))
        queue.consumers.clear()

    # -- routing
    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if exchange == "":
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        kind = self.exchanges.get(exchange)
        if kind is None:
            raise PublishError(f"NOT_FOUND - no exchange {exchange!r}")
        names: list[str] = []
        for key, queue_name in self.bindings.get(exchange, ()):
            matched = key == routing_key if kind == "direct" else _topic_match(key, routing_key)
            if matched and queue_name not in names:
                names.append(queue_name)
        return [self.queues[n] for n in names if n in self.queues]

    def publish(
        self, exchange: str, routing_key: str, envelope: Envelope, *, mandatory: bool
    ) -> None:
        queues = self.route(exchange, routing_key)
        if not queues:
            if mandatory:
                raise Unroutable(exchange, routing_key)
            return
        self.published += 1
        for queue in queues:
            queue.put(_Stored(envelope.copy()))

    def dead_letter(self, queue: _Queue, stored: _Stored, reason: str) -> None:
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if dlx is None:
            return  # dropped, as RabbitMQ does without a DLX
        routing_key = queue.arguments.get("x-dead-letter-routing-key") or stored.envelope.type
        env = stored.envelope.copy(expiration=None)
        deaths = list(env.headers.get("x-death") or [])
        deaths.insert(0, {"queue": queue.name, "reason": reason, "count": 1})
        env.headers["x-death"] = deaths
        env.headers.setdefault("x-first-death-reason", reason)
        env.headers.setdefault("x-first-death-queue", queue.name)
        with contextlib.suppress(BusError):
            self.publish(dlx, routing_key, env, mandatory=False)

    def message_count(self, name: str) -> int:
        queue = self.queues.get(name)
        if queue is None:
            raise BusError(f"NOT_FOUND - no queue {name!r}")
        return len(queue.messages)


def _topic_match(pattern: str, key: str) -> bool:
    if pattern == key:
        return True
    p_words, k_words = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p_words):
            return j == len(k_words)
        word = p_words[i]
        if word == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k_words) + 1))
        if j == len(k_words):
            return False
        return (word == "*" or word == k_words[j]) and match(i + 1, j + 1)

    return match(0, 0)


class MemoryTransport(Transport):
    """One bus facade's connection to a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._consumers: list[_Consumer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = False
        self._reply: tuple[str, ReplyCallback, LostCallback] | None = None

    def spawn(self, coro: Any) -> None:
        task = self.broker.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def connect(self) -> None:
        self.broker.loop  # noqa: B018 - binds the broker to the running loop
        self._connected = True

    def _check(self) -> None:
        if not self._connected:
            raise PublishError("memory transport is not connected")

    async def close(self) -> None:
        self._drop_consumers()
        if self._reply is not None:
            self.broker.delete_queue(self._reply[0])
            self._reply = None
        self._connected = False

    async def declare(self, topology: Topology, specs: Sequence[QueueSpec]) -> None:
        for name in topology.topic_exchanges:
            self.broker.declare_exchange(name, "topic")
        self.broker.declare_exchange(topology.dlx, "direct")
        for spec in specs:
            self.broker.declare_queue(spec.name, spec.main_arguments(), exclusive_owner=None)
            self.broker.bind(spec.exchange, spec.routing_key, spec.name)
            if spec.durable_pipeline:
                self.broker.declare_queue(
                    spec.retry_queue, spec.retry_arguments(), exclusive_owner=None
                )
                self.broker.declare_queue(spec.dlq, spec.dlq_arguments(), exclusive_owner=None)
                self.broker.bind(spec.dlx, spec.name, spec.dlq)

    async def consume(self, queue: str, prefetch: int, callback: DeliveryCallback) -> None:
        self._check()
        target = self.broker.queues.get(queue)
        if target is None:
            raise BusError(f"NOT_FOUND - no queue {queue!r}")
        consumer = _Consumer(
            queue=target, prefetch=prefetch, callback=callback, reply_callback=None, owner=self
        )
        target.consumers.append(consumer)
        self._consumers.append(consumer)
        target.dispatch()

    async def stop_consuming(self) -> None:
        # Like basic.cancel: no new deliveries; unsettled ones stay with the consumer until
        # they are settled or the transport closes.
        for consumer in self._consumers:
            if consumer in consumer.queue.consumers:
                consumer.queue.consumers.remove(consumer)

    def _drop_consumers(self) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            if consumer in consumer.queue.consumers:
                consumer.queue.consumers.remove(consumer)
            consumer.active = False
            # Like a closed channel: unsettled deliveries go back to the queue.
            for delivery in list(consumer.unacked):
                consumer.unacked.discard(delivery)
                consumer.queue.settle(delivery, requeue=True)

    async def publish(
        self, exchange: str, routing_key: str, envelope: Envelope, *, mandatory: bool = True
    ) -> None:
        self._check()
        self.broker.publish(exchange, routing_key, envelope, mandatory=mandatory)

    async def publish_many(
        self, items: Sequence[tuple[str, str, Envelope]]
    ) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for exchange, routing_key, env in items:
            try:
                await self.publish(exchange, routing_key, env)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    async def open_reply_queue(
        self, name: str, on_reply: ReplyCallback, on_lost: LostCallback
    ) -> None:
        self._check()
        self._reply = (name, on_reply, on_lost)
        self._declare_reply_queue()

    def _declare_reply_queue(self) -> None:
        if self._reply is None:
            return
        name, on_reply, _ = self._reply
        queue = self.broker.declare_queue(name, {}, exclusive_owner=self)
        consumer = _Consumer(
            queue=queue,
            prefetch=0,
            callback=None,
            reply_callback=on_reply,
            owner=self,
            on_cancel=self._on_reply_cancel,
        )
        queue.consumers.append(consumer)

    def _on_reply_cancel(self, exc: BaseException) -> None:
        if self._reply is None:
            return
        self._reply[2](exc)
        if self._connected:
            # Like aio-pika's robust channel: re-declare and consume again.
            self.broker.loop.call_soon(self._declare_reply_queue)

    async def get(self, queue: str) -> Delivery | None:
        self._check()
        target = self.broker.queues.get(queue)
        if target is None:
            raise BusError(f"NOT_FOUND - no queue {queue!r}")
        if not target.messages:
            return None
        return _MemoryDelivery(None, target.messages.popleft(), target)

    async def message_count(self, queue: str) -> int:
        return self.broker.message_count(queue)

    async def delete_queue(self, queue: str) -> None:
        self.broker.delete_queue(queue)
