"""Fixtures of the bus tests: one parametrised backend (memory | RabbitMQ) per contract test.

RabbitMQ tests run in the session's throwaway vhost (``amqp_url`` from the shared plugin) and
additionally use a unique name prefix per test, so tests never see each other's queues; the
queues and exchanges a test declared are deleted when it ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from mesh_common.bus import Bus, BusSettings, MemoryBroker, Topology, create_bus
from mesh_common.bus.amqp import AmqpTransport


class Backend:
    """Builds buses of one backend that share a broker (memory) or a vhost + prefix (AMQP)."""

    def __init__(self, name: str, amqp_url: str | None) -> None:
        self.name = name
        self.amqp_url = amqp_url
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.broker = MemoryBroker()
        self.buses: list[Bus] = []

    def settings(self, service: str, **overrides: Any) -> BusSettings:
        values: dict[str, Any] = {
            "service": service,
            "amqp_url": self.amqp_url,
            "prefix": self.prefix,
            "retry_delays": (0.05, 0.1),
            "max_attempts": 3,
            "rpc_timeout": 5.0,
            "publish_timeout": 5.0,
            "reconnect_interval": 0.2,
        }
        values.update(overrides)
        return BusSettings(**values)

    def bus(self, service: str, **overrides: Any) -> Bus:
        bus = create_bus(self.settings(service, **overrides), broker=self.broker)
        self.buses.append(bus)
        return bus

    async def aclose(self) -> None:
        for bus in self.buses:
            try:
                await bus.stop(grace=0.2)
            except Exception:
                pass
        if self.amqp_url is None:
            return
        admin = AmqpTransport(self.settings("admin"))
        await admin.connect()
        try:
            queues = set()
            for bus in self.buses:
                for spec in bus.specs:
                    name = bus.queue_name(spec.name)
                    queues.update({name, name + ".retry", name + ".dlq"})
            for name in queues:
                try:
                    await admin.delete_queue(name)
                except Exception:
                    pass
            topology = Topology(self.prefix)
            for exchange in (*topology.topic_exchanges, topology.dlx):
                try:
                    await admin.delete_exchange(exchange)
                except Exception:
                    pass
        finally:
            await admin.close()


@pytest.fixture(params=["memory", "amqp"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("amqp_url") if request.param == "amqp" else None
    b = Backend(request.param, url)
    try:
        yield b
    finally:
        await b.aclose()


Eventually = Callable[..., Awaitable[None]]


@pytest.fixture
def eventually() -> Eventually:
    return _eventually


async def _eventually(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float = 5.0,
    interval: float = 0.01,
) -> None:
    """Wait until ``predicate()`` is true; fail with a clear message after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
