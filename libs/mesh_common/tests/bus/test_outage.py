"""Broker outages: connections dropped mid-stream (TCP proxy) and a node killed with -9.

Publishing must resume after the robust connection reconnects, every confirmed message must
reach its consumer, and pending RPC calls must fail cleanly instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiomisc.pytest import TCPProxy
from mesh_common.bus import BusSettings, MessageContext, RpcConnectionLost, create_bus
from mesh_common.testing import rabbit_node
from mesh_common.testing.servers import in_ci
from pydantic import BaseModel


class Tick(BaseModel):
    __message_type__: ClassVar[str] = "chaos.tick.v1"
    n: int


class Slow(BaseModel):
    __message_type__: ClassVar[str] = "chaos.slow"
    seconds: float


async def _publish_stream(bus, total: int, window: int, on_progress) -> set[str]:
    """Publish ``total`` events in pipelined windows; return the ids the broker confirmed."""
    confirmed: set[str] = set()
    n = 0
    while n < total:
        batch = [Tick(n=i) for i in range(n, min(n + window, total))]
        results = await asyncio.gather(*(bus.publish(t) for t in batch), return_exceptions=True)
        confirmed.update(r for r in results if isinstance(r, str))
        n += len(batch)
        await on_progress(n)
    return confirmed


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def test_dropped_connections_resume_publishing_without_loss(backend_amqp, eventually):
    url, prefix = backend_amqp
    received: set[str] = set()
    proxy = TCPProxy("127.0.0.1", urlsplit(url).port or 5672)
    await proxy.start()
    # Both sides go through the proxy: a drop hits publisher confirms and unacked deliveries.
    via_proxy = {
        "amqp_url": _via(url, proxy.proxy_port),
        "prefix": prefix,
        "reconnect_interval": 0.1,
        "publish_timeout": 20,
    }
    consumer = create_bus(BusSettings(service="audit", prefetch=8, **via_proxy))

    @consumer.event()
    async def on_tick(msg: Tick, ctx: MessageContext) -> None:
        await asyncio.sleep(0.001)  # keep some deliveries unacked when the drop comes
        received.add(ctx.message_id)

    @consumer.rpc()
    async def slow(msg: Slow, ctx: MessageContext) -> None:
        await asyncio.sleep(msg.seconds)

    producer = create_bus(BusSettings(service="booking", **via_proxy))
    try:
        await consumer.start()
        await producer.start()

        # A pending RPC call fails at once when the connection drops.
        call = asyncio.create_task(producer.call(Slow(seconds=5), timeout=10))
        while producer.pending_calls == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await proxy.disconnect_all()
        with pytest.raises(RpcConnectionLost):
            await call
        assert time.monotonic() - started < 2.0

        drops = {150, 400}

        async def chaos(n: int) -> None:
            if n in drops:
                # Drop while the next window's publishes and confirms are in flight.
                asyncio.get_running_loop().call_later(0.003, proxy.disconnect_all)

        confirmed = await _publish_stream(producer, 600, 25, chaos)
        assert len(confirmed) == 600  # publishes waited for the reconnect instead of failing
        await eventually(lambda: confirmed <= received, timeout=15)
        # RPC works again over the new connection.
        assert await producer.call(Slow(seconds=0), timeout=5) is None
    finally:
        await producer.stop(grace=0.5)
        await consumer.stop(grace=0.5)
        await proxy.close(timeout=5)


@pytest.fixture
async def backend_amqp(amqp_url: str):
    import uuid

    from mesh_common.bus.amqp import AmqpTransport

    prefix = f"o{uuid.uuid4().hex[:8]}."
    yield amqp_url, prefix
    admin = AmqpTransport(BusSettings(service="admin", amqp_url=amqp_url, prefix=prefix))
    await admin.connect()
    try:
        for queue in ("audit.on_tick", "audit.on_tick.retry", "audit.on_tick.dlq", "audit.slow"):
            try:
                await admin.delete_queue(prefix + queue)
            except Exception:
                pass
        for exchange in ("mesh.events", "mesh.commands", "mesh.rpc", "mesh.dlx"):
            try:
                await admin.delete_exchange(prefix + exchange)
            except Exception:
                pass
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def node():
    if not rabbit_node.available():
        message = "rabbitmq-server is not installed on this machine"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    n = rabbit_node.RabbitNode(name="meshbustest", port=5692, dist_port=25692)
    n.start()
    try:
        yield n
    finally:
        n.cleanup()


@pytest.mark.slow
async def test_node_killed_with_9_loses_no_confirmed_message(node, eventually):
    received: set[str] = set()
    settings = {"amqp_url": node.amqp_url, "reconnect_interval": 0.2, "publish_timeout": 60.0}
    consumer = create_bus(BusSettings(service="audit", **settings))

    @consumer.event()
    async def on_tick(msg: Tick, ctx: MessageContext) -> None:
        received.add(ctx.message_id)

    producer = create_bus(BusSettings(service="booking", **settings))
    await consumer.start()
    await producer.start()
    try:
        crash: list[asyncio.Task[None]] = []

        async def kill_and_reboot() -> None:
            await asyncio.sleep(0.005)  # mid-window: publishes and confirms in flight
            await asyncio.to_thread(node.kill)
            await asyncio.to_thread(node.start)

        async def chaos(n: int) -> None:
            if n == 100:
                crash.append(asyncio.create_task(kill_and_reboot()))

        confirmed = await _publish_stream(producer, 300, 20, chaos)
        await crash[0]
        assert len(confirmed) == 300
        await eventually(lambda: confirmed <= received, timeout=30)
    finally:
        await producer.stop(grace=0.5)
        await consumer.stop(grace=0.5)
