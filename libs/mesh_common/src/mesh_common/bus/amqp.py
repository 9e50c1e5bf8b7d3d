"""RabbitMQ transport on aio-pika's robust connection.

Maps :class:`Envelope` onto AMQP basic properties + headers and implements the transport
primitives: topology declaration (quorum handler queues with delivery limit and DLX, classic
retry queues with dead-lettering back, quorum DLQs, classic RPC queues), one channel per consumer
(prefetch = its concurrency), one publisher-confirm channel with ``mandatory`` returns raised,
and an exclusive reply queue whose loss (queue deleted, channel or connection closed) is
reported so pending RPC calls fail at once.

Publishing survives reconnects: a publish that fails because the connection dropped waits for
the robust connection to come back and is sent again (same message id) until the broker
confirms it or ``publish_timeout`` runs out. This module must not know about handlers, models,
retries or RPC semantics.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from mesh_common.bus.envelope import CONTENT_TYPE, H_KIND, Envelope
from mesh_common.bus.errors import BusError, PublishError, Unroutable
from mesh_common.bus.settings import BusSettings
from mesh_common.bus.topology import QueueSpec, Topology
from mesh_common.bus.transport import (
    Delivery,
    DeliveryCallback,
    LostCallback,
    ReplyCallback,
    Transport,
)

log = logging.getLogger("mesh.bus.amqp")

_KINDS: frozenset[str] = frozenset({"event", "command", "rpc", "reply"})
# Failures that mean "the connection or channel went away": retry after reconnect.
_RETRIABLE = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,
)


def properties_of(envelope: Envelope) -> aiormq.spec.Basic.Properties:
    """AMQP basic properties of an envelope (the headers table included)."""
    expiration = envelope.expiration
    return aiormq.spec.Basic.Properties(
        content_type=envelope.content_type,
        delivery_mode=2 if envelope.persistent else 1,
        message_id=envelope.message_id,
        correlation_id=envelope.correlation_id,
        reply_to=envelope.reply_to,
        expiration=None if expiration is None else str(max(int(expiration * 1000), 0)),
        timestamp=datetime.fromtimestamp(int(envelope.timestamp), tz=UTC),
        message_type=envelope.type,
        app_id=envelope.app_id,
        headers=envelope.headers,
    )


def envelope_of(props: aiormq.spec.Basic.Properties, body: bytes) -> Envelope:
    """Inverse of :func:`properties_of` for a received message."""
    headers: dict[str, Any] = dict(props.headers or {})
    kind = headers.get(H_KIND)
    timestamp = props.timestamp
    expiration = props.expiration
    return Envelope(
        kind=kind if isinstance(kind, str) and kind in _KINDS else "event",  # type: ignore[arg-type]
        type=props.message_type or "",
        body=body,
        message_id=props.message_id or "",
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        app_id=props.app_id,
        timestamp=timestamp.timestamp() if isinstance(timestamp, datetime) else 0.0,
        expiration=int(expiration) / 1000 if expiration else None,
        headers=headers,
        content_type=props.content_type or CONTENT_TYPE,
    )


def _tag(message: DeliveredMessage) -> int:
    tag = getattr(message.delivery, "delivery_tag", None)
    if not isinstance(tag, int):
        raise BusError("message has no delivery tag")
    return tag


class _AmqpDelivery(Delivery):
    __slots__ = ("envelope", "message", "redelivered")

    def __init__(self, message: AbstractIncomingMessage | DeliveredMessage, envelope: Envelope):
        self.message = message
        self.envelope = envelope
        delivery = message.delivery if isinstance(message, DeliveredMessage) else None
        if delivery is not None:
            self.redelivered = bool(getattr(delivery, "redelivered", False))
        else:
            self.redelivered = bool(getattr(message, "redelivered", False))

    async def ack(self) -> None:
        message = self.message
        if isinstance(message, DeliveredMessage):
            await message.channel.basic_ack(_tag(message))
        else:
            await message.ack()

    async def reject(self, *, requeue: bool) -> None:
        message = self.message
        if isinstance(message, DeliveredMessage):
            await message.channel.basic_reject(_tag(message), requeue=requeue)
        else:
            await message.reject(requeue=requeue)


def tls_context(settings: BusSettings, url: str) -> ssl.SSLContext | None:
    """The TLS context for an ``amqps://`` URL (None for plain ``amqp://``): TLS 1.2+, the
    broker's certificate and host name verified against ``tls_ca_file`` (or the system CAs),
    and the client certificate presented when configured. There is no switch to turn
    verification off."""
    if not url.startswith("amqps://"):
        if settings.tls_ca_file or settings.tls_cert_file:
            raise ValueError("TLS files are configured but the AMQP URL is not amqps://")
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


class AmqpTransport(Transport):
    """Transport of one bus facade over one robust AMQP connection."""

    def __init__(self, settings: BusSettings, *, url: str | None = None) -> None:
        if url is None:
            if settings.amqp_url is None:
                raise ValueError("AmqpTransport needs an AMQP URL")
            url = settings.amqp_url.get_secret_value()
        self._url = url
        self.settings = settings
        self.connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._replier: AbstractRobustChannel | None = None
        self._consumers: list[tuple[AbstractRobustChannel, AbstractQueue, str]] = []
        self._specs: dict[str, QueueSpec] = {}
        self._reply_channel: AbstractRobustChannel | None = None
        self._reply_lost: LostCallback | None = None
        self._admin: AbstractRobustChannel | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._closing = False

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        if self.connection is not None:
            return
        self._closing = False
        self.connection = await aio_pika.connect_robust(
            self._url,
            ssl_context=tls_context(self.settings, self._url),
            timeout=self.settings.connect_timeout,
            client_properties={"connection_name": f"edumesh:{self.settings.service}"},
            reconnect_interval=self.settings.reconnect_interval,
            heartbeat=self.settings.heartbeat,
        )
        self.connection.close_callbacks.add(self._on_connection_close)
        self._publisher = await self._channel(publisher_confirms=True)
        # RPC replies go out without publisher confirms: a lost reply is a caller's timeout
        # (and a retry) either way, and waiting for a confirm per reply halves RPC throughput.
        self._replier = await self._channel(publisher_confirms=False)

    async def _channel(self, *, publisher_confirms: bool) -> AbstractRobustChannel:
        assert self.connection is not None
        channel = self.connection.channel(
            publisher_confirms=publisher_confirms, on_return_raises=publisher_confirms
        )
        await channel.initialize(timeout=self.settings.connect_timeout)
        return channel

    def _on_connection_close(self, _: Any, exc: BaseException | None = None) -> None:
        if self._reply_lost is not None and not self._closing:
            self._reply_lost(exc or BusError("connection closed"))

    async def close(self) -> None:
        self._closing = True
        connection, self.connection = self.connection, None
        self._publisher = self._reply_channel = self._admin = self._replier = None
        self._reply_lost = None
        if connection is not None:
            await connection.close()
        self._consumers.clear()

    # ------------------------------------------------------------------ topology

    async def declare(self, topology: Topology, specs: Sequence[QueueSpec]) -> None:
        channel = await self._channel(publisher_confirms=False)
        try:
            for name in topology.topic_exchanges:
                await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            await channel.declare_exchange(topology.dlx, aio_pika.ExchangeType.DIRECT, durable=True)
            for spec in specs:
                self._specs[spec.name] = spec
                queue = await channel.declare_queue(
                    spec.name, durable=True, arguments=spec.main_arguments()
                )
                await queue.bind(spec.exchange, spec.routing_key)
                if spec.durable_pipeline:
                    await channel.declare_queue(
                        spec.retry_queue, durable=True, arguments=spec.retry_arguments()
                    )
                    dlq = await channel.declare_queue(
                        spec.dlq, durable=True, arguments=spec.dlq_arguments()
                    )
                    await dlq.bind(spec.dlx, spec.name)
        finally:
            await channel.close()

    # ------------------------------------------------------------------ consuming

    async def consume(self, queue: str, prefetch: int, callback: DeliveryCallback) -> None:
        spec = self._specs.get(queue)
        channel = await self._channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        if spec is not None:
            q = await channel.declare_queue(queue, durable=True, arguments=spec.main_arguments())
        else:
            q = await channel.declare_queue(queue, passive=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            props = message.properties
            env = envelope_of(props, message.body)
            await callback(_AmqpDelivery(message, env))

        tag = await q.consume(on_message)
        self._consumers.append((channel, q, tag))

    async def stop_consuming(self) -> None:
        for _, queue, tag in self._consumers:
            try:
                await queue.cancel(tag, timeout=5)
            except Exception:
                log.debug("cancel of %s failed", queue.name, exc_info=True)

    # ------------------------------------------------------------------ publishing

    async def publish(
        self, exchange: str, routing_key: str, envelope: Envelope, *, mandatory: bool = True
    ) -> None:
        publisher = self._publisher
        if publisher is None:
            raise PublishError("AMQP transport is not connected")
        properties = properties_of(envelope)
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                while True:
                    try:
                        channel = await publisher.get_underlay_channel()
                        result = await channel.basic_publish(
                            envelope.body,
                            exchange=exchange,
                            routing_key=routing_key,
                            properties=properties,
                            mandatory=mandatory,
                        )
                    except aiormq.exceptions.PublishError:
                        raise Unroutable(exchange, routing_key) from None
                    except aiormq.exceptions.DeliveryError as exc:
                        raise PublishError(f"broker refused {envelope.message_id}: {exc}") from exc
                    except aiormq.exceptions.ChannelNotFoundEntity as exc:
                        raise PublishError(str(exc)) from exc
                    except _RETRIABLE as exc:
                        if self._closing:
                            raise PublishError(f"transport closed: {exc!r}") from exc
                        log.debug(
                            "publish of %s interrupted (%r); retrying", envelope.message_id, exc
                        )
                        await self._wait_ready(publisher)
                        continue
                    if isinstance(result, Basic.Ack) or result is None:
                        return
                    if isinstance(result, DeliveredMessage):  # returned, on_return_raises off
                        raise Unroutable(exchange, routing_key)
                    raise PublishError(f"broker did not confirm {envelope.message_id}: {result}")
        except TimeoutError:
            raise PublishError(
                f"no confirm for {envelope.message_id} within {self.settings.publish_timeout}s"
            ) from None

    async def publish_reply(self, reply_to: str, envelope: Envelope) -> None:
        """Send an RPC reply to the caller's reply queue, unconfirmed (see ``connect``)."""
        replier = self._replier
        if replier is None:
            raise PublishError("AMQP transport is not connected")
        channel = await replier.get_underlay_channel()
        await channel.basic_publish(
            envelope.body,
            exchange="",
            routing_key=reply_to,
            properties=properties_of(envelope),
            mandatory=False,
        )

    async def publish_many(
        self, items: Sequence[tuple[str, str, Envelope]]
    ) -> list[BaseException | None]:
        """Pipelined publish: all frames go out at once, then the confirms are collected.

        Items interrupted by a connection loss are published again one by one (waiting for the
        reconnect) through :meth:`publish`.
        """
        publisher = self._publisher
        if publisher is None:
            raise PublishError("AMQP transport is not connected")
        try:
            channel = await publisher.get_underlay_channel()
        except _RETRIABLE:
            return await super().publish_many(items)
        publish = channel.basic_publish
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                results = await asyncio.gather(
                    *(
                        publish(
                            env.body,
                            exchange=exchange,
                            routing_key=routing_key,
                            properties=properties_of(env),
                            mandatory=True,
                        )
                        for exchange, routing_key, env in items
                    ),
                    return_exceptions=True,
                )
        except TimeoutError:
            error = PublishError(f"no confirms within {self.settings.publish_timeout}s")
            return [error for _ in items]
        out: list[BaseException | None] = []
        again: list[int] = []
        for index, ((exchange, routing_key, _), result) in enumerate(
            zip(items, results, strict=True)
        ):
            if isinstance(result, aiormq.exceptions.PublishError):
                out.append(Unroutable(exchange, routing_key))
            elif isinstance(result, _RETRIABLE):
                out.append(None)
                again.append(index)
            elif isinstance(result, BaseException):
                out.append(PublishError(f"{type(result).__name__}: {result}"))
            elif isinstance(result, DeliveredMessage):
                out.append(Unroutable(exchange, routing_key))
            else:
                out.append(None)
        if again:
            retried = await asyncio.gather(
                *(self.publish(*items[i]) for i in again), return_exceptions=True
            )
            for index, result in zip(again, retried, strict=True):
                out[index] = result if isinstance(result, BaseException) else None
        return out

    async def _wait_ready(self, channel: AbstractRobustChannel) -> None:
        # Give the robust connection a moment to notice the loss before waiting for recovery.
        await asyncio.sleep(0.05)
        await channel.ready()

    # ------------------------------------------------------------------ RPC reply queue

    async def open_reply_queue(
        self, name: str, on_reply: ReplyCallback, on_lost: LostCallback
    ) -> None:
        channel = await self._channel(publisher_confirms=False)
        self._reply_channel = channel
        self._reply_lost = on_lost
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)

        def lost(*args: Any) -> None:
            if not self._closing:
                on_lost(BusError(f"reply queue {name} lost: {args[1:] or args}"))

        # Three ways to lose replies, each failing the pending calls at once: the broker cancels
        # the consumer (queue deleted), the channel closes, the connection closes (see
        # _on_connection_close). The robust channel re-declares and re-consumes the queue by
        # itself; a reopened channel is a new aiormq channel, so the cancel hook is re-armed.
        async def watch_cancel() -> None:
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(lambda frame: lost(None, frame))

        def rearm(*_: Any) -> None:
            task = asyncio.ensure_future(watch_cancel())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await watch_cancel()
        channel.reopen_callbacks.add(rearm)
        channel.close_callbacks.add(lost)

        async def on_message(message: AbstractIncomingMessage) -> None:
            props = message.properties
            on_reply(envelope_of(props, message.body))

        await queue.consume(on_message, no_ack=True)

    # ------------------------------------------------------------------ admin (DLQ tools)

    async def get(self, queue: str) -> Delivery | None:
        channel = await self._admin_channel()
        underlay = await channel.get_underlay_channel()
        message = await underlay.basic_get(queue, no_ack=False)
        if isinstance(message.delivery, Basic.GetEmpty):
            return None
        return _AmqpDelivery(message, envelope_of(message.header.properties, message.body))

    async def _admin_channel(self) -> AbstractRobustChannel:
        if self._admin is None or self._admin.is_closed:
            self._admin = await self._channel(publisher_confirms=False)
        return self._admin

    async def message_count(self, queue: str) -> int:
        channel = await self._admin_channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def delete_queue(self, queue: str) -> None:
        channel = await self._admin_channel()
        await channel.queue_delete(queue)

    async def delete_exchange(self, exchange: str) -> None:
        channel = await self._admin_channel()
        await channel.exchange_delete(exchange)
