"""The bus contract: every test runs on the in-memory backend and on real RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, ClassVar

import pytest
from mesh_common.bus import (
    DeadLetter,
    Envelope,
    MessageContext,
    Middleware,
    RemoteDeadlineExceeded,
    RemoteDomainError,
    RemoteError,
    RemoteInternalError,
    RemoteInvalidRequest,
    RpcConnectionLost,
    RpcTimeout,
    RpcUnroutable,
    Unroutable,
)
from mesh_common.bus.envelope import H_DEADLINE, H_ERROR, H_KIND
from mesh_common.context import actor_var, bound, deadline_var, request_id_var
from mesh_common.errors import Conflict, DomainError, NotFound
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from pydantic import BaseModel


class BookingConfirmed(BaseModel):
    __message_type__: ClassVar[str] = "booking.booking_confirmed.v1"
    booking_id: str
    seats: int = 1


class SendInvite(BaseModel):
    __message_type__: ClassVar[str] = "mailbox_invites.send_invite.v1"
    email: str


class GetProfile(BaseModel):
    __message_type__: ClassVar[str] = "profile.get_profile"
    user_id: str
    delay: float = 0.0


class Profile(BaseModel):
    user_id: str
    name: str


class Nobody(BaseModel):
    __message_type__: ClassVar[str] = "nobody.nothing.v1"


class NoTarget(BaseModel):
    __message_type__: ClassVar[str] = "nobody.get_nothing"


# ---------------------------------------------------------------------------- events/commands


async def test_publish_consume_binds_context(backend, eventually) -> None:
    seen: list[tuple[BookingConfirmed, dict[str, Any]]] = []
    consumer = backend.bus("mailbox_invites")

    @consumer.event()
    async def on_booking_confirmed(msg: BookingConfirmed, ctx: MessageContext) -> None:
        seen.append(
            (
                msg,
                {
                    "actor": actor_var.get(),
                    "request_id": request_id_var.get(),
                    "ctx_actor": ctx.actor,
                    "queue": ctx.queue,
                    "type": ctx.message_type,
                    "traceparent": ctx.headers.get("traceparent"),
                    "kind": ctx.headers.get(H_KIND),
                    "app_id": ctx.envelope.app_id,
                    "attempt": ctx.attempt,
                },
            )
        )

    # The decorator registers and returns the function unchanged.
    assert on_booking_confirmed.__name__ == "on_booking_confirmed"
    producer = backend.bus("booking")
    await consumer.start()
    await producer.start()
    span = NonRecordingSpan(
        SpanContext(
            trace_id=0x1234,
            span_id=0x5678,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    )
    with trace.use_span(span), bound(request_id="req-1", actor="user:42"):
        message_id = await producer.publish(BookingConfirmed(booking_id="b1", seats=2))
    await eventually(lambda: len(seen) == 1)
    msg, info = seen[0]
    assert msg == BookingConfirmed(booking_id="b1", seats=2)
    assert info["actor"] == "user:42" == info["ctx_actor"]
    assert info["request_id"] == "req-1"
    assert info["queue"] == backend.prefix + "mailbox_invites.on_booking_confirmed"
    assert info["type"] == "booking.booking_confirmed.v1"
    assert info["traceparent"] == f"00-{0x1234:032x}-{0x5678:016x}-01"
    assert info["kind"] == "event"
    assert info["app_id"] == "booking"
    assert info["attempt"] == 1
    assert len(message_id) == 32


async def test_events_fan_out_to_every_service(backend, eventually) -> None:
    got: Counter[str] = Counter()
    a, b = backend.bus("svc_a"), backend.bus("svc_b")

    @a.event()
    async def on_confirmed(msg: BookingConfirmed, ctx: MessageContext) -> None:
        got["a"] += 1

    @b.event()
    async def on_confirmed_b(msg: BookingConfirmed, ctx: MessageContext) -> None:
        got["b"] += 1

    producer = backend.bus("booking")
    for bus in (a, b, producer):
        await bus.start()
    for i in range(5):
        await producer.publish(BookingConfirmed(booking_id=str(i)))
    await eventually(lambda: got == Counter(a=5, b=5))


async def test_replicas_of_a_service_compete(backend, eventually) -> None:
    handled: list[tuple[int, str]] = []

    def make(replica: int) -> None:
        bus = backend.bus("mailbox_invites", prefetch=1)

        @bus.command(SendInvite, name="send_invite")
        async def send_invite(msg: SendInvite, ctx: MessageContext) -> None:
            handled.append((replica, msg.email))
            await asyncio.sleep(0.01)

    make(1)
    make(2)
    producer = backend.bus("booking")
    for bus in backend.buses:
        await bus.start()
    emails = [f"u{i}@example.org" for i in range(20)]
    for email in emails:
        await producer.send(SendInvite(email=email))
    await eventually(lambda: len(handled) == 20)
    await asyncio.sleep(0.05)
    assert sorted(e for _, e in handled) == sorted(emails)  # each exactly once
    assert {r for r, _ in handled} == {1, 2}  # both replicas worked


async def test_failed_handler_is_retried_with_attempt_count(backend, eventually) -> None:
    attempts: list[int] = []
    consumer = backend.bus("mailbox_invites")

    @consumer.command()
    async def send_invite(msg: SendInvite, ctx: MessageContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise RuntimeError("smtp down")

    producer = backend.bus("booking")
    await consumer.start()
    await producer.start()
    await producer.send(SendInvite(email="a@example.org"))
    await eventually(lambda: attempts == [1, 2, 3])
    await asyncio.sleep(0.2)
    assert attempts == [1, 2, 3]
    assert await consumer.dlq_list("mailbox_invites.send_invite") == []


async def test_unacked_message_is_redelivered_when_consumer_dies(backend, eventually) -> None:
    started = asyncio.Event()
    handled: list[tuple[str, bool]] = []
    first = backend.bus("mailbox_invites")

    @first.command(SendInvite, name="send_invite")
    async def hang(msg: SendInvite, ctx: MessageContext) -> None:
        started.set()
        await asyncio.sleep(30)

    producer = backend.bus("booking")
    await first.start()
    await producer.start()
    await producer.send(SendInvite(email="a@example.org"))
    await asyncio.wait_for(started.wait(), 5)
    # The replica dies without acking: its channel closes, the broker redelivers.
    await first.transport.close()
    second = backend.bus("mailbox_invites")

    @second.command(SendInvite, name="send_invite")
    async def ok(msg: SendInvite, ctx: MessageContext) -> None:
        handled.append((msg.email, ctx.redelivered))

    await second.start()
    await eventually(lambda: handled == [("a@example.org", True)])


async def test_poison_messages_go_straight_to_dlq(backend, eventually) -> None:
    calls = 0
    consumer = backend.bus("mailbox_invites")

    @consumer.command()
    async def send_invite(msg: SendInvite, ctx: MessageContext) -> None:
        nonlocal calls
        calls += 1

    await consumer.start()
    exchange = consumer.topology.commands
    for body in (b"{not json", b'{"mail": "wrong field"}'):
        env = Envelope(
            kind="command", type=SendInvite.__message_type__, body=body, headers={H_KIND: "command"}
        )
        await consumer.transport.publish(exchange, env.type, env)

    async def two_dead() -> bool:
        return len(await consumer.dlq_list("mailbox_invites.send_invite")) == 2

    await eventually(two_dead)
    dead = await consumer.dlq_list("mailbox_invites.send_invite")
    assert calls == 0
    assert all(d["error"].startswith("poison: ValidationError") for d in dead)
    assert sorted(d.get("payload_raw", "") for d in dead) == ["", "{not json"]
    assert [d["payload"] for d in dead if "payload" in d] == [{"mail": "wrong field"}]
    # Listing does not consume.
    assert len(await consumer.dlq_list("mailbox_invites.send_invite")) == 2


async def test_a_message_without_id_is_dead_lettered_not_handled(backend, eventually) -> None:
    """A foreign publisher that sends no message_id cannot be deduplicated, so the message is
    refused. (Our own AMQP client cannot send one: aiormq assigns an id to every publish with
    confirms, so only the memory backend can inject it; the check itself is backend-neutral.)"""
    calls = 0
    consumer = backend.bus("mailbox_invites")

    @consumer.command()
    async def send_invite(msg: SendInvite, ctx: MessageContext) -> None:
        nonlocal calls
        calls += 1

    await consumer.start()
    env = Envelope(
        kind="command",
        type=SendInvite.__message_type__,
        body=b'{"email": "a@example.org"}',
        headers={H_KIND: "command"},
        message_id="",
    )
    await consumer.transport.publish(consumer.topology.commands, env.type, env)
    if backend.name == "amqp":
        await eventually(lambda: calls == 1)  # aiormq gave it an id on the way
        return

    async def one_dead() -> bool:
        return len(await consumer.dlq_list("mailbox_invites.send_invite")) == 1

    await eventually(one_dead)
    (dead,) = await consumer.dlq_list("mailbox_invites.send_invite")
    assert dead["error"].startswith("no-message-id") and calls == 0


async def test_exhausted_retries_dead_letter_then_replay(backend, eventually) -> None:
    healthy = False
    attempts: list[int] = []
    delivered: list[str] = []
    consumer = backend.bus("mailbox_invites")

    @consumer.command()
    async def send_invite(msg: SendInvite, ctx: MessageContext) -> None:
        attempts.append(ctx.attempt)
        if not healthy:
            raise RuntimeError(f"smtp down for {msg.email}")
        delivered.append(msg.email)

    producer = backend.bus("booking")
    await consumer.start()
    await producer.start()
    await producer.send(SendInvite(email="a@example.org"))
    await producer.send(SendInvite(email="b@example.org"))

    async def dead() -> bool:
        return len(await consumer.dlq_list("mailbox_invites.send_invite")) == 2

    await eventually(dead)
    assert sorted(attempts) == [1, 1, 2, 2, 3, 3]  # max_attempts=3
    listed = await consumer.dlq_list("mailbox_invites.send_invite")
    assert "RuntimeError: smtp down for" in listed[0]["error"]
    assert listed[0]["headers"][H_ERROR].startswith("max-attempts")
    healthy = True
    assert await consumer.dlq_replay("mailbox_invites.send_invite", limit=1) == 1
    await eventually(lambda: len(delivered) == 1)
    assert len(await consumer.dlq_list("mailbox_invites.send_invite")) == 1
    assert await consumer.dlq_replay("mailbox_invites.send_invite.dlq") == 1
    await eventually(lambda: sorted(delivered) == ["a@example.org", "b@example.org"])
    assert await consumer.dlq_list("mailbox_invites.send_invite") == []


async def test_dead_letter_exception_skips_retries(backend, eventually) -> None:
    attempts = 0
    consumer = backend.bus("mailbox_invites")

    @consumer.command()
    async def send_invite(msg: SendInvite, ctx: MessageContext) -> None:
        nonlocal attempts
        attempts += 1
        raise DeadLetter("address blocked")

    producer = backend.bus("booking")
    await consumer.start()
    await producer.start()
    await producer.send(SendInvite(email="x@example.org"))

    async def dead() -> bool:
        return len(await consumer.dlq_list("mailbox_invites.send_invite")) == 1

    await eventually(dead)
    assert attempts == 1


async def test_unroutable_command_raises_and_event_is_dropped(backend) -> None:
    producer = backend.bus("booking")
    await producer.start()
    with pytest.raises(Unroutable):
        await producer.send(SendInvite(email="nobody@example.org"))
    await producer.publish(Nobody())
    assert producer.unroutable_events == 1
    strict = backend.bus("booking2", raise_on_unroutable_events=True)
    await strict.start()
    with pytest.raises(Unroutable):
        await strict.publish(Nobody())


async def test_middleware_wraps_publish_and_consume(backend, eventually) -> None:
    order: list[str] = []

    class Stamp(Middleware):
        async def publish(self, envelope: Envelope, call_next) -> None:
            envelope.headers["x-stamp"] = "yes"
            order.append("publish")
            await call_next(envelope)

        async def consume(self, message, ctx, call_next):
            order.append(f"before:{ctx.headers.get('x-stamp')}")
            result = await call_next(message, ctx)
            order.append("after")
            return result

    consumer = backend.bus("mailbox_invites")
    consumer.add_middleware(Stamp())

    @consumer.command()
    async def send_invite(msg: SendInvite, ctx: MessageContext) -> None:
        order.append("handler")

    producer = backend.bus("booking")
    producer.add_middleware(Stamp())
    await consumer.start()
    await producer.start()
    await producer.send(SendInvite(email="a@example.org"))
    await eventually(lambda: len(order) == 4)
    assert order == ["publish", "before:yes", "handler", "after"]


# ---------------------------------------------------------------------------- RPC


async def _profile_server(backend, **overrides: Any):
    server = backend.bus("profile", **overrides)
    calls: list[str] = []

    @server.rpc()
    async def get_profile(msg: GetProfile, ctx: MessageContext) -> Profile:
        calls.append(msg.user_id)
        if msg.delay:
            await asyncio.sleep(msg.delay)
        if msg.user_id == "missing":
            raise NotFound(f"no profile {msg.user_id}", extra={"user_id": msg.user_id})
        if msg.user_id == "teapot":
            raise DomainError("I am a teapot", code="teapot", status=418)
        if msg.user_id == "boom":
            raise ValueError("division by cucumber")
        if msg.user_id == "deadline":
            return Profile(user_id=str(deadline_var.get()), name=str(ctx.deadline))
        return Profile(user_id=msg.user_id, name=f"name-{msg.user_id}")

    await server.start()
    return server, calls


async def test_rpc_success(backend) -> None:
    await _profile_server(backend)
    caller = backend.bus("gateway")
    await caller.start()
    assert await caller.call(GetProfile(user_id="u1"), Profile) == Profile(
        user_id="u1", name="name-u1"
    )
    assert await caller.call(GetProfile(user_id="u2")) == {"user_id": "u2", "name": "name-u2"}
    assert caller.pending_calls == 0


async def test_rpc_errors_are_typed(backend) -> None:
    await _profile_server(backend)
    caller = backend.bus("gateway")
    await caller.start()
    with pytest.raises(NotFound) as not_found:
        await caller.call(GetProfile(user_id="missing"), Profile)
    err = not_found.value
    assert isinstance(err, RemoteDomainError)
    assert (err.code, err.status, err.detail) == ("not-found", 404, "no profile missing")
    assert err.extra == {"user_id": "missing"}
    with pytest.raises(RemoteDomainError) as custom:
        await caller.call(GetProfile(user_id="teapot"))
    assert (custom.value.code, custom.value.status) == ("teapot", 418)
    assert isinstance(custom.value, DomainError) and not isinstance(custom.value, Conflict)
    with pytest.raises(RemoteInternalError) as internal:
        await caller.call(GetProfile(user_id="boom"))
    assert internal.value.code == "internal-error"
    assert "division by cucumber" in internal.value.message
    assert not isinstance(internal.value, DomainError)
    # A request the server cannot validate gets an error reply, not silence.
    env = caller.envelope("rpc", GetProfile(user_id="x"))
    env.body = b'{"user": 1}'
    with pytest.raises(RemoteInvalidRequest):
        await _raw_call(caller, env)


async def _raw_call(caller, env: Envelope, timeout: float = 5.0) -> Any:
    future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
    env.correlation_id = env.message_id
    env.reply_to = caller.reply_queue
    caller._pending[env.message_id] = future
    await caller.transport.publish(caller.topology.rpc, env.type, env)
    reply = await asyncio.wait_for(future, timeout)
    import orjson
    from mesh_common.bus.errors import remote_error

    if reply.headers.get("x-mesh-status") == "error":
        raise remote_error(orjson.loads(reply.body))
    return orjson.loads(reply.body)


async def test_rpc_timeout(backend) -> None:
    await _profile_server(backend)
    caller = backend.bus("gateway")
    await caller.start()
    started = time.monotonic()
    with pytest.raises(RpcTimeout):
        await caller.call(GetProfile(user_id="slow", delay=2.0), timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert caller.pending_calls == 0


async def test_rpc_unknown_target_fails_at_once(backend) -> None:
    caller = backend.bus("gateway")
    await caller.start()
    started = time.monotonic()
    with pytest.raises(RpcUnroutable):
        await caller.call(NoTarget(), timeout=5.0)
    assert time.monotonic() - started < 1.0
    assert caller.pending_calls == 0


async def test_200_concurrent_calls_are_not_serialised(backend) -> None:
    _, calls = await _profile_server(backend)
    caller = backend.bus("gateway")
    await caller.start()
    started = time.monotonic()
    results = await asyncio.gather(
        *(caller.call(GetProfile(user_id=f"u{i}", delay=0.05), Profile) for i in range(200))
    )
    elapsed = time.monotonic() - started
    assert [r.user_id for r in results] == [f"u{i}" for i in range(200)]
    assert all(r.name == f"name-u{i}" for i, r in enumerate(results))
    # 200 x 50 ms one at a time would take 10 s; rpc_prefetch=64 runs them side by side.
    assert elapsed < 3.0
    assert len(calls) == 200


async def test_deadline_propagates_and_caps_timeout(backend) -> None:
    await _profile_server(backend)
    caller = backend.bus("gateway")
    await caller.start()
    deadline = time.time() + 3.0
    with bound(deadline=deadline):
        profile = await caller.call(GetProfile(user_id="deadline"), Profile, timeout=30)
    # The server bound the caller's deadline (not its own 30 s timeout).
    assert float(profile.user_id) == pytest.approx(deadline, abs=0.01)
    assert float(profile.name) == pytest.approx(deadline, abs=0.01)
    started = time.monotonic()
    with bound(deadline=time.time() + 0.3), pytest.raises(RpcTimeout):
        await caller.call(GetProfile(user_id="slow", delay=2.0), timeout=30)
    assert time.monotonic() - started < 1.0
    with bound(deadline=time.time() - 1), pytest.raises(RpcTimeout):
        await caller.call(GetProfile(user_id="late"))


async def test_stale_requests_are_not_executed(backend, eventually) -> None:
    _, calls = await _profile_server(backend, rpc_prefetch=1)
    caller = backend.bus("gateway")
    await caller.start()
    busy = asyncio.create_task(caller.call(GetProfile(user_id="busy", delay=0.6)))
    await eventually(lambda: calls == ["busy"])
    # Queued behind the busy request, this one expires in the queue (AMQP expiration).
    with pytest.raises(RpcTimeout):
        await caller.call(GetProfile(user_id="stale"), timeout=0.2)
    await busy
    await asyncio.sleep(0.2)
    assert calls == ["busy"]
    # A request that arrives already past its deadline is answered, not executed.
    env = caller.envelope("rpc", GetProfile(user_id="late"))
    env.set_deadline(time.time() - 0.5)
    assert env.headers[H_DEADLINE] < time.time() * 1000
    with pytest.raises(RemoteDeadlineExceeded) as exc:
        await _raw_call(caller, env)
    assert isinstance(exc.value, RpcTimeout)
    assert calls == ["busy"]


async def test_pending_calls_fail_when_reply_queue_is_lost(backend) -> None:
    await _profile_server(backend)
    caller = backend.bus("gateway")
    await caller.start()
    calls = [
        asyncio.create_task(caller.call(GetProfile(user_id=f"s{i}", delay=3.0), timeout=10))
        for i in range(3)
    ]
    for _ in range(100):
        if caller.pending_calls == 3:
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await caller.transport.delete_queue(caller.reply_queue)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, RpcConnectionLost) for r in results), results
    assert time.monotonic() - started < 2.0
    # The reply queue comes back by itself; later calls work again.
    for _ in range(50):
        try:
            profile = await caller.call(GetProfile(user_id="again"), Profile, timeout=1.0)
            break
        except (RpcConnectionLost, RpcTimeout):
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("RPC did not recover after reply queue loss")
    assert profile.user_id == "again"


async def test_remote_error_code_survives_nested_calls(backend) -> None:
    await _profile_server(backend)
    caller = backend.bus("gateway")
    await caller.start()
    # A RemoteError re-raised by a handler keeps its code for the next caller.
    from mesh_common.bus.errors import error_envelope, remote_error

    try:
        await caller.call(GetProfile(user_id="missing"))
    except RemoteError as exc:
        again = remote_error(error_envelope(exc))
    assert again.code == "not-found" and isinstance(again, RemoteError)


class Odd(BaseModel):
    __message_type__: ClassVar[str] = "odd.get_odd"
    __response_model__: ClassVar[type[BaseModel]] = Profile


async def test_unserialisable_result_and_response_model_convention(backend) -> None:
    server = backend.bus("odd")

    @server.rpc()
    async def get_odd(msg: Odd, ctx: MessageContext) -> object:
        return {1, 2}  # a set is not JSON: the caller gets an error reply, not a timeout

    await server.start()
    caller = backend.bus("gateway")
    await caller.start()
    with pytest.raises(RemoteInternalError):
        await caller.call(Odd(), timeout=3)

    profiles = backend.bus("profile")

    @profiles.rpc(Odd, name="get_odd_profile")
    async def get_odd_profile(msg: Odd, ctx: MessageContext) -> Profile:  # pragma: no cover
        return Profile(user_id="x", name="y")

    assert get_odd_profile.__name__ == "get_odd_profile"


class Sticky(BaseModel):
    __message_type__: ClassVar[str] = "sticky.stick.v1"


async def test_quorum_delivery_limit_dead_letters_endless_redeliveries(backend, eventually):
    """A message that is returned again and again (e.g. it crashes every consumer before the
    handler can reply) is dead-lettered by the broker after ``delivery_limit`` returns."""
    bus = backend.bus("sticky", delivery_limit=2)

    @bus.command()
    async def stick(msg: Sticky, ctx: MessageContext) -> None:  # pragma: no cover
        raise AssertionError("never consumed in this test")

    # Declare the topology without consuming, and play a crashing consumer with get/reject.
    await bus.transport.connect()
    await bus.transport.declare(bus.topology, [bus._queue_spec(s) for s in bus.specs])
    env = bus.envelope("command", Sticky())
    await bus.transport.publish(bus.topology.commands, env.type, env)
    queue = bus.queue_name("stick")
    returns = 0
    for _ in range(50):
        delivery = await bus.transport.get(queue)
        if delivery is None:
            if returns > 2:
                break
            await asyncio.sleep(0.05)
            continue
        await delivery.reject(requeue=True)
        returns += 1
    assert returns == 3  # first delivery + 2 redeliveries, then the limit
    for _ in range(100):
        delivery = await bus.transport.get(queue + ".dlq")
        if delivery is not None:
            break
        await asyncio.sleep(0.05)
    assert delivery is not None and delivery.envelope.message_id == env.message_id
    deaths = delivery.envelope.headers.get("x-death") or []
    assert deaths and deaths[0]["reason"] == "delivery_limit"
    await delivery.ack()
