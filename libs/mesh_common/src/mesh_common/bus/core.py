"""The bus facade: handler registration, publishing, consuming, retries/DLQ and RPC.

One implementation of the messaging semantics on top of a :class:`Transport`, so the in-memory
and the RabbitMQ backends behave identically:

- handlers are registered with decorators that return the function unchanged (plain callables in
  unit tests), typed by the pydantic model of their first parameter;
- a consumed message is validated into that model (failure = poison: DLQ for events/commands,
  an error reply for RPC), handled with request id / actor / deadline / trace context bound, and
  acknowledged only after the handler returned;
- a failing event/command handler is retried through ``<queue>.retry`` (per-message delay) up to
  ``max_attempts``, then the message goes to ``<queue>.dlq`` with the error in its headers;
- RPC calls share one reply queue per process, multiplexed by correlation id; the server always
  replies, errors included, as a typed error envelope.

This module must not import aio-pika or know about any service.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import orjson
from opentelemetry import context as otel_context
from opentelemetry import propagate
from pydantic import BaseModel, ValidationError

from mesh_common.bus.envelope import (
    H_ATTEMPT,
    H_ERROR,
    H_ERROR_TYPE,
    H_FAILED_AT,
    H_FAILED_QUEUE,
    H_KIND,
    H_REPLAYED,
    H_STATUS,
    Envelope,
    MessageKind,
    context_headers,
    encode_body,
    make_envelope,
    message_type_of,
)
from mesh_common.bus.errors import (
    BusNotStarted,
    DeadLetter,
    PublishError,
    RemoteInvalidRequest,
    RpcConnectionLost,
    RpcTimeout,
    RpcUnroutable,
    Unroutable,
    error_envelope,
    remote_error,
)
from mesh_common.bus.settings import BusSettings
from mesh_common.bus.topology import HandlerKind, QueueSpec, Topology, main_queue_of
from mesh_common.bus.transport import Delivery, Transport
from mesh_common.context import actor_var, deadline_var, new_id, remaining_seconds, request_id_var

log = logging.getLogger("mesh.bus")

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# Message id of the message being handled in this task: becomes the causation id of what the
# handler publishes.
_current_message: ContextVar[str | None] = ContextVar("mesh_bus_current_message", default=None)


@dataclass(slots=True)
class MessageContext:
    """What a handler knows about the message it handles, besides the payload."""

    bus: Bus
    envelope: Envelope
    queue: str
    handler: str
    kind: HandlerKind
    redelivered: bool
    extras: dict[str, Any] = field(default_factory=dict)
    """Free slots for middleware (e.g. the inbox puts its transaction's session here)."""

    @property
    def message_id(self) -> str:
        return self.envelope.message_id

    @property
    def message_type(self) -> str:
        return self.envelope.type

    @property
    def correlation_id(self) -> str | None:
        return self.envelope.correlation_id

    @property
    def request_id(self) -> str | None:
        return self.envelope.request_id

    @property
    def actor(self) -> str | None:
        return self.envelope.actor

    @property
    def deadline(self) -> float | None:
        return self.envelope.deadline

    @property
    def attempt(self) -> int:
        return self.envelope.attempt

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.envelope.headers


Handler = Callable[[Any, MessageContext], Awaitable[Any]]
ConsumeNext = Callable[[BaseModel, MessageContext], Awaitable[Any]]
PublishNext = Callable[[Envelope], Awaitable[None]]


class Middleware:
    """Hooks around publish and consume; override what you need and call ``call_next``.

    ``publish`` sees events, commands and RPC requests (including outbox relays), not RPC
    replies or the bus' own retry/DLQ moves. ``consume`` sees every validated message before its
    handler; its return value is the handler result (the RPC reply).
    """

    async def publish(self, envelope: Envelope, call_next: PublishNext) -> None:
        await call_next(envelope)

    async def consume(self, message: BaseModel, ctx: MessageContext, call_next: ConsumeNext) -> Any:
        return await call_next(message, ctx)

    def dead_lettered(self, envelope: Envelope, queue: str, reason: str) -> None:
        """Called after a message was moved to the dead-letter queue of ``queue`` (``reason``:
        max-attempts, poison, ...). For counting and alerting; must not raise."""


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    kind: HandlerKind
    name: str
    model: type[BaseModel]
    fn: Handler

    @property
    def message_type(self) -> str:
        return message_type_of(self.model)


def _model_of(fn: Callable[..., Any]) -> type[BaseModel]:
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    model = hints.get(params[0]) if params else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(
            f"handler {fn.__qualname__}: annotate the first parameter with a pydantic model "
            "or pass the model to the decorator"
        )
    return model


class HandlerRegistry:
    """Handlers declared at import time (no settings needed), attached to a bus later.

    The decorators register and return the function unchanged.
    """

    def __init__(self) -> None:
        self.specs: list[HandlerSpec] = []

    def _register(
        self, kind: HandlerKind, model: type[BaseModel] | None, name: str | None
    ) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            resolved = model or _model_of(fn)
            message_type_of(resolved)  # fail at import time, not at start()
            spec = HandlerSpec(kind=kind, name=name or fn.__name__, model=resolved, fn=fn)
            if any(s.name == spec.name for s in self.specs):
                raise ValueError(f"duplicate handler name {spec.name!r}")
            self.specs.append(spec)
            return fn

        return decorator

    def event(
        self, model: type[BaseModel] | None = None, *, name: str | None = None
    ) -> Callable[[F], F]:
        """Subscribe to an event; queue ``<service>.<name or function name>``."""
        return self._register("event", model, name)

    def command(
        self, model: type[BaseModel] | None = None, *, name: str | None = None
    ) -> Callable[[F], F]:
        """Handle a command addressed to this service."""
        return self._register("command", model, name)

    def rpc(
        self, model: type[BaseModel] | None = None, *, name: str | None = None
    ) -> Callable[[F], F]:
        """Serve an RPC; the request model's ``__message_type__`` is the target name."""
        return self._register("rpc", model, name)


class Bus(HandlerRegistry):
    """One service's bus facade. Several facades may share one in-memory broker."""

    def __init__(
        self,
        settings: BusSettings,
        transport: Transport,
        *,
        middlewares: Iterable[Middleware] = (),
    ) -> None:
        super().__init__()
        self.settings = settings
        self.service = settings.service
        self.topology = Topology(settings.prefix)
        self.transport = transport
        self.middlewares: list[Middleware] = list(middlewares)
        self.reply_queue = self.topology.reply_queue(self.service, new_id()[:12])
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._inflight: set[asyncio.Task[Any]] = set()
        self._started = False
        self._publish_chain: PublishNext = self._publish_terminal
        self.unroutable_events = 0
        """Events dropped because no queue was bound (see ``raise_on_unroutable_events``)."""

    # ------------------------------------------------------------------ lifecycle

    def include(self, registry: HandlerRegistry) -> None:
        """Attach handlers declared on a module-level :class:`HandlerRegistry`."""
        for spec in registry.specs:
            if any(s.name == spec.name for s in self.specs):
                raise ValueError(f"duplicate handler name {spec.name!r}")
            self.specs.append(spec)

    def add_middleware(self, middleware: Middleware) -> None:
        if self._started:
            raise RuntimeError("add middleware before start()")
        self.middlewares.append(middleware)

    def queue_name(self, handler: str) -> str:
        return self.topology.handler_queue(self.service, handler)

    def _queue_spec(self, spec: HandlerSpec) -> QueueSpec:
        return self.topology.queue_spec(
            service=self.service,
            handler=spec.name,
            kind=spec.kind,
            routing_key=spec.message_type,
            delivery_limit=self.settings.delivery_limit,
        )

    async def start(self) -> None:
        """Connect, declare exchanges and this service's queues, start consuming."""
        if self._started:
            return
        self._publish_chain = self._build_publish_chain()
        await self.transport.connect()
        queue_specs = [self._queue_spec(s) for s in self.specs]
        await self.transport.declare(self.topology, queue_specs)
        await self.transport.open_reply_queue(self.reply_queue, self._on_reply, self._on_reply_lost)
        self._started = True
        for spec, qspec in zip(self.specs, queue_specs, strict=True):
            consume = self._build_consume_chain(spec)
            prefetch = self.settings.rpc_prefetch if spec.kind == "rpc" else self.settings.prefetch
            await self.transport.consume(
                qspec.name, prefetch, self._delivery_callback(spec, qspec, consume)
            )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop consuming, let in-flight handlers finish (up to ``grace``), then disconnect."""
        if not self._started:
            await self.transport.close()
            return
        self._started = False
        with contextlib.suppress(Exception):
            await self.transport.stop_consuming()
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=grace)
            # Unacked, so the broker hands these messages to another replica.
            for task in late:
                task.cancel()
        self._fail_pending(RpcConnectionLost("bus stopped"))
        await self.transport.close()

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ publishing

    def envelope(
        self, kind: MessageKind, message: BaseModel, *, headers: dict[str, Any] | None = None
    ) -> Envelope:
        """The envelope this bus would publish for ``message`` now (used by the outbox)."""
        return make_envelope(
            kind,
            message,
            app_id=self.service,
            causation_id=_current_message.get(),
            headers=headers,
        )

    async def publish(self, event: BaseModel, *, headers: dict[str, Any] | None = None) -> str:
        """Publish an event (fan-out to every subscribed service). Returns the message id.

        Use the outbox instead when the event must not be lost with the caller's transaction.
        """
        env = self.envelope("event", event, headers=headers)
        await self._publish(env)
        return env.message_id

    async def send(self, command: BaseModel, *, headers: dict[str, Any] | None = None) -> str:
        """Send a command to the one service that owns it. Raises ``Unroutable`` at once if no
        queue is bound for it. Returns the message id."""
        env = self.envelope("command", command, headers=headers)
        await self._publish(env)
        return env.message_id

    async def publish_envelope(self, envelope: Envelope) -> None:
        """Publish a prepared event/command envelope (outbox relay, DLQ tools)."""
        await self._publish(envelope)

    async def publish_envelopes(self, envelopes: Sequence[Envelope]) -> list[BaseException | None]:
        """Publish prepared envelopes pipelined; one result (None = confirmed) per envelope."""
        self._check_started()
        if not self.middlewares:
            # Fast path (outbox relay): one pipelined burst through the transport.
            items = [(self.topology.exchange_for(_kind(e)), e.type, e) for e in envelopes]
            results = await self.transport.publish_many(items)
            return [self._unroutable_ok(env, r) for env, r in zip(envelopes, results, strict=True)]
        chain = self._publish_chain
        gathered = await asyncio.gather(*(chain(e) for e in envelopes), return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in gathered]

    def _unroutable_ok(
        self, envelope: Envelope, result: BaseException | None
    ) -> BaseException | None:
        if (
            isinstance(result, Unroutable)
            and envelope.kind == "event"
            and not self.settings.raise_on_unroutable_events
        ):
            self.unroutable_events += 1
            return None
        return result

    async def _publish(self, envelope: Envelope) -> None:
        self._check_started()
        await self._publish_chain(envelope)

    def _check_started(self) -> None:
        if not self._started:
            raise BusNotStarted(f"bus of {self.service!r} is not started")

    async def _publish_terminal(self, envelope: Envelope) -> None:
        kind = envelope.kind
        if kind == "reply":
            raise ValueError("replies are not published through the chain")
        exchange = self.topology.exchange_for(kind)
        try:
            await self.transport.publish(exchange, envelope.type, envelope)
        except Unroutable:
            if kind == "event" and not self.settings.raise_on_unroutable_events:
                self.unroutable_events += 1
                log.debug("event %s has no subscriber; dropped", envelope.type)
                return
            raise

    def _build_publish_chain(self) -> PublishNext:
        chain: PublishNext = self._publish_terminal
        for mw in reversed(self.middlewares):
            chain = _bind_publish(mw, chain)
        return chain

    # ------------------------------------------------------------------ RPC client

    @overload
    async def call(
        self,
        request: BaseModel,
        response: type[R],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call RPC budget, by design
    ) -> R: ...

    @overload
    async def call(
        self,
        request: BaseModel,
        response: None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call RPC budget, by design
    ) -> Any: ...

    async def call(
        self,
        request: BaseModel,
        response: type[BaseModel] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call RPC budget, by design
    ) -> Any:
        """Call an RPC and return its reply (validated into ``response`` when given).

        The timeout (default ``rpc_timeout``) is capped by the caller's remaining deadline; the
        absolute deadline travels with the request. Raises ``RpcTimeout``, ``RpcUnroutable``
        (no server bound, at once), ``RpcConnectionLost`` (reply queue / connection lost, or the
        request could not be published) or a ``RemoteError`` subclass.
        """
        self._check_started()
        if response is None:
            # Contracts may pair a request with its reply model.
            response = getattr(type(request), "__response_model__", None)
        budget = timeout if timeout is not None else self.settings.rpc_timeout
        remaining = remaining_seconds()
        if remaining is not None:
            if remaining <= 0:
                raise RpcTimeout("the caller's deadline has already passed")
            budget = min(budget, remaining)
        deadline = time.time() + budget
        env = self.envelope("rpc", request)
        cid = env.message_id
        env.correlation_id = cid
        env.reply_to = self.reply_queue
        env.expiration = budget
        env.set_deadline(deadline)
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        try:
            async with asyncio.timeout(budget):
                try:
                    await self._publish_chain(env)
                except Unroutable as exc:
                    raise RpcUnroutable(exc.exchange, exc.routing_key) from None
                except PublishError as exc:
                    raise RpcConnectionLost(f"request not confirmed: {exc}") from exc
                reply = await future
        except TimeoutError:
            raise RpcTimeout(f"no reply from {env.type!r} within {budget:.3f}s") from None
        finally:
            self._pending.pop(cid, None)
        if reply.headers.get(H_STATUS) == "error":
            raise remote_error(orjson.loads(reply.body))
        if response is None:
            return orjson.loads(reply.body)
        return response.model_validate_json(reply.body)

    def _on_reply(self, envelope: Envelope) -> None:
        cid = envelope.correlation_id
        future = self._pending.pop(cid, None) if cid else None
        if future is not None and not future.done():
            future.set_result(envelope)

    def _on_reply_lost(self, exc: BaseException) -> None:
        self._fail_pending(RpcConnectionLost(f"reply queue lost: {exc}"))

    def _fail_pending(self, exc: RpcConnectionLost) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ consuming

    def _build_consume_chain(self, spec: HandlerSpec) -> ConsumeNext:
        fn = spec.fn

        async def terminal(message: BaseModel, ctx: MessageContext) -> Any:
            return await fn(message, ctx)

        chain: ConsumeNext = terminal
        for mw in reversed(self.middlewares):
            chain = _bind_consume(mw, chain)
        return chain

    def _delivery_callback(
        self, spec: HandlerSpec, qspec: QueueSpec, chain: ConsumeNext
    ) -> Callable[[Delivery], Awaitable[None]]:
        handle = self._handle_rpc if spec.kind == "rpc" else self._handle_message

        async def on_delivery(delivery: Delivery) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._inflight.add(task)
            try:
                await handle(spec, qspec, chain, delivery)
            except Exception:
                # A failure to settle (e.g. connection lost): the broker redelivers.
                log.exception("bus: delivery on %s could not be settled", qspec.name)
            finally:
                if task is not None:
                    self._inflight.discard(task)

        return on_delivery

    def _bind(self, envelope: Envelope) -> object | None:
        """Bind the message's context into this task (each delivery runs in its own task, so
        nothing leaks into other messages). Returns the OpenTelemetry token to detach."""
        request_id_var.set(envelope.request_id)
        actor_var.set(envelope.actor)
        deadline_var.set(envelope.deadline)
        _current_message.set(envelope.message_id)
        if "traceparent" in envelope.headers:
            return otel_context.attach(propagate.extract(envelope.headers))
        return None

    async def _handle_message(
        self, spec: HandlerSpec, qspec: QueueSpec, chain: ConsumeNext, delivery: Delivery
    ) -> None:
        env = delivery.envelope
        if not env.message_id:
            # Without an id the inbox cannot tell repeats apart (every id-less message would
            # look like the first one): refuse it visibly instead of guessing.
            await self._dead_letter(
                qspec, delivery, ValueError("message has no message_id"), reason="no-message-id"
            )
            return
        try:
            message = spec.model.model_validate_json(env.body)
        except ValidationError as exc:
            await self._dead_letter(qspec, delivery, exc, reason="poison")
            return
        ctx = MessageContext(
            bus=self,
            envelope=env,
            queue=qspec.name,
            handler=spec.name,
            kind=spec.kind,
            redelivered=delivery.redelivered,
        )
        token = self._bind(env)
        try:
            await chain(message, ctx)
        except DeadLetter as exc:
            await self._dead_letter(qspec, delivery, exc, reason="rejected")
            return
        except Exception as exc:
            await self._retry_or_dead_letter(qspec, delivery, exc)
            return
        finally:
            if token is not None:
                otel_context.detach(token)  # type: ignore[arg-type]
        await delivery.ack()

    async def _retry_or_dead_letter(
        self, qspec: QueueSpec, delivery: Delivery, exc: BaseException
    ) -> None:
        env = delivery.envelope
        attempt = env.attempt
        if attempt >= self.settings.max_attempts:
            log.warning(
                "bus: %s failed %d time(s) on %s, dead-lettering: %r",
                env.message_id,
                attempt,
                qspec.name,
                exc,
            )
            await self._dead_letter(qspec, delivery, exc, reason="max-attempts")
            return
        log.info(
            "bus: %s failed on %s (attempt %d/%d), retrying: %r",
            env.message_id,
            qspec.name,
            attempt,
            self.settings.max_attempts,
            exc,
        )
        retry = env.copy(expiration=self.settings.retry_delay(attempt))
        retry.headers[H_ATTEMPT] = attempt + 1
        retry.headers[H_ERROR] = _describe(exc)
        retry.headers[H_ERROR_TYPE] = type(exc).__name__
        await self._move(delivery, qspec.retry_queue, retry)

    async def _dead_letter(
        self, qspec: QueueSpec, delivery: Delivery, exc: BaseException, *, reason: str
    ) -> None:
        dead = delivery.envelope.copy(expiration=None)
        dead.headers[H_ERROR] = f"{reason}: {_describe(exc)}"
        dead.headers[H_ERROR_TYPE] = type(exc).__name__
        dead.headers[H_FAILED_QUEUE] = qspec.name
        dead.headers[H_FAILED_AT] = int(time.time() * 1000)  # epoch ms
        await self._move(delivery, qspec.dlq, dead)
        for mw in self.middlewares:
            try:
                mw.dead_lettered(dead, qspec.name, reason)
            except Exception:  # pragma: no cover - observers must not break delivery
                log.exception("bus: dead-letter observer failed")

    async def _move(self, delivery: Delivery, queue: str, envelope: Envelope) -> None:
        """Publish to ``queue`` (confirmed), then ack; if the publish fails, requeue instead so
        nothing is lost (the quorum delivery limit bounds the loop)."""
        try:
            await self.transport.publish("", queue, envelope)
        except Exception:
            log.exception("bus: could not move %s to %s", envelope.message_id, queue)
            await delivery.reject(requeue=True)
            return
        await delivery.ack()

    # ------------------------------------------------------------------ RPC server

    async def _handle_rpc(
        self, spec: HandlerSpec, qspec: QueueSpec, chain: ConsumeNext, delivery: Delivery
    ) -> None:
        env = delivery.envelope
        deadline = env.deadline
        body: bytes
        if deadline is not None and time.time() >= deadline:
            ok = False
            body = orjson.dumps(
                {
                    "code": "deadline-exceeded",
                    "message": "the request arrived after its deadline",
                    "details": {},
                    "status": 504,
                    "domain": False,
                }
            )
        else:
            ok = False
            try:
                message = spec.model.model_validate_json(env.body)
            except ValidationError as exc:
                body = orjson.dumps(
                    {
                        "code": RemoteInvalidRequest.code,
                        "message": f"invalid {env.type} request",
                        "details": {"errors": exc.errors(include_url=False, include_input=False)},
                        "status": 400,
                        "domain": False,
                    },
                    default=str,
                )
            else:
                ctx = MessageContext(
                    bus=self,
                    envelope=env,
                    queue=qspec.name,
                    handler=spec.name,
                    kind="rpc",
                    redelivered=delivery.redelivered,
                )
                token = self._bind(env)
                try:
                    # Encoding inside the try: an unserialisable result is an error reply too.
                    body = _result_body(await chain(message, ctx))
                    ok = True
                except Exception as exc:
                    if not _is_domain(exc):
                        log.exception("bus: RPC handler %s failed", qspec.name)
                    body = orjson.dumps(error_envelope(exc), default=str)
                finally:
                    if token is not None:
                        otel_context.detach(token)  # type: ignore[arg-type]
        if env.reply_to:
            reply = Envelope(
                kind="reply",
                type=env.type,
                body=body,
                correlation_id=env.correlation_id,
                app_id=self.service,
                headers={H_KIND: "reply", H_STATUS: "ok" if ok else "error"},
            )
            try:
                await self.transport.publish_reply(env.reply_to, reply)
            except Exception:
                log.warning("bus: reply to %s lost", env.reply_to, exc_info=True)
        await delivery.ack()

    # ------------------------------------------------------------------ DLQ tools

    async def dlq_list(self, queue: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """Return (without removing) up to ``limit`` messages of ``<queue>.dlq``."""
        return await dlq_list(self.transport, self.topology, queue, limit=limit)

    async def dlq_replay(self, queue: str, *, limit: int | None = None) -> int:
        """Move up to ``limit`` messages from ``<queue>.dlq`` back to ``<queue>``."""
        return await dlq_replay(self.transport, self.topology, queue, limit=limit)


def _kind(envelope: Envelope) -> HandlerKind:
    if envelope.kind == "reply":
        raise ValueError("replies are not published through the bus facade")
    return envelope.kind


def _bind_publish(mw: Middleware, call_next: PublishNext) -> PublishNext:
    async def step(envelope: Envelope) -> None:
        await mw.publish(envelope, call_next)

    return step


def _bind_consume(mw: Middleware, call_next: ConsumeNext) -> ConsumeNext:
    async def step(message: BaseModel, ctx: MessageContext) -> Any:
        return await mw.consume(message, ctx, call_next)

    return step


def _is_domain(exc: BaseException) -> bool:
    from mesh_common.errors import DomainError

    return isinstance(exc, DomainError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def _result_body(result: Any) -> bytes:
    if isinstance(result, BaseModel):
        return encode_body(result)
    return orjson.dumps(result)


# ---------------------------------------------------------------------- DLQ tools (no facade)


def _resolve_queue(topology: Topology, queue: str) -> str:
    name = main_queue_of(queue)
    if topology.prefix and not name.startswith(topology.prefix):
        name = topology.prefix + name
    return name


async def dlq_list(
    transport: Transport, topology: Topology, queue: str, *, limit: int = 100
) -> list[dict[str, Any]]:
    """Up to ``limit`` DLQ messages of ``queue`` as dicts (envelope fields, error, payload).

    Messages are fetched and then returned unacknowledged, so the DLQ is unchanged.
    """
    main = _resolve_queue(topology, queue)
    dlq = main + ".dlq"
    held: list[Delivery] = []
    out: list[dict[str, Any]] = []
    try:
        while len(held) < limit:
            delivery = await transport.get(dlq)
            if delivery is None:
                break
            held.append(delivery)
            env = delivery.envelope
            record = env.to_record()
            record["error"] = env.headers.get(H_ERROR)
            try:
                record["payload"] = env.payload()
            except orjson.JSONDecodeError:
                record["payload_raw"] = env.body.decode("utf-8", "replace")
            out.append(record)
    finally:
        for delivery in reversed(held):
            await delivery.reject(requeue=True)
    return out


_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
)


async def dlq_replay(
    transport: Transport, topology: Topology, queue: str, *, limit: int | None = None
) -> int:
    """Move up to ``limit`` (default: all) messages from the DLQ back to the queue.

    Each message is republished (confirmed) with a fresh attempt counter and only then removed
    from the DLQ, so a crash mid-replay duplicates at worst (consumers dedup by message id).
    """
    main = _resolve_queue(topology, queue)
    dlq = main + ".dlq"
    moved = 0
    replayed: set[str] = set()
    empty_polls = 0
    while limit is None or moved < limit:
        delivery = await transport.get(dlq)
        if delivery is None:
            # Quorum queues apply returns (e.g. from a listing just before) asynchronously:
            # a message may be a moment away from being ready again.
            empty_polls += 1
            if empty_polls > 5 or (await transport.message_count(dlq) == 0 and empty_polls > 2):
                break
            await asyncio.sleep(0.05)
            continue
        empty_polls = 0
        if delivery.envelope.message_id in replayed:
            # Replayed in this run and already failed again: stop rather than loop forever.
            await delivery.reject(requeue=True)
            break
        env = delivery.envelope.copy(expiration=None)
        env.headers[H_ATTEMPT] = 1
        env.headers[H_REPLAYED] = int(env.headers.get(H_REPLAYED) or 0) + 1
        for key in _DEATH_HEADERS:
            env.headers.pop(key, None)
        try:
            await transport.publish("", main, env)
        except Exception:
            await delivery.reject(requeue=True)
            raise
        await delivery.ack()
        replayed.add(env.message_id)
        moved += 1
    return moved


__all__ = [
    "Bus",
    "HandlerRegistry",
    "HandlerSpec",
    "MessageContext",
    "Middleware",
    "context_headers",
    "dlq_list",
    "dlq_replay",
]
