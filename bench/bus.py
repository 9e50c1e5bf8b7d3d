"""Bus benchmark: raw aio-pika vs the mesh bus on the local RabbitMQ, in one run.

Measures confirmed publish rate (sequential and pipelined), consume rate, RPC latency p50/p99
(the classic aio-pika RPC pattern vs ``Bus.call``) and outbox relay throughput from SQLite, then
prints a table with the targets and writes bench/results/bus.json. Sized for a 2-core machine
(well under two minutes). Everything it declares lives under a unique ``bench<id>.`` prefix and
is deleted at the end.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ .venv/bin/python bench/bus.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import aio_pika
from mesh_common.bus import BusSettings, MessageContext, create_bus
from mesh_common.bus.outbox import Outbox, OutboxRelay, outbox_table
from pydantic import BaseModel
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

RESULTS = Path(__file__).parent / "results" / "bus.json"


class Tick(BaseModel):
    __message_type__: ClassVar[str] = "bench.tick.v1"
    n: int
    payload: str = "x" * 200


class Ping(BaseModel):
    __message_type__: ClassVar[str] = "bench.ping"
    n: int


class Pong(BaseModel):
    n: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


class Bench:
    """Raw and mesh run side by side and are measured in alternating rounds, so the noise of
    a small shared machine (RabbitMQ competes for the same two cores) hits both equally."""

    def __init__(self, url: str, sizes: dict[str, int]) -> None:
        self.url = url
        self.sizes = sizes
        self.prefix = f"bench{uuid.uuid4().hex[:6]}."
        self.results: dict[str, Any] = {}
        self.body = Tick(n=0).model_dump_json().encode()
        self.buses: list[Any] = []
        self.connections: list[aio_pika.abc.AbstractRobustConnection] = []

    def settings(self, service: str, **kw: Any) -> BusSettings:
        return BusSettings(service=service, amqp_url=self.url, prefix=self.prefix, **kw)

    async def connect(self) -> aio_pika.abc.AbstractRobustConnection:
        conn = await aio_pika.connect_robust(self.url)
        self.connections.append(conn)
        return conn

    # ------------------------------------------------------------------ set-up

    async def setup(self) -> None:
        # Raw: one publisher connection, one consumer connection, RPC server and client on
        # their own connections (they are separate processes in a real deployment, as the mesh
        # services are).
        pub = await self.connect()
        self.raw_pub = await pub.channel(publisher_confirms=True)
        self.raw_ex = await self.raw_pub.declare_exchange(
            self.prefix + "raw", aio_pika.ExchangeType.TOPIC, durable=True
        )
        raw_q = await self.raw_pub.declare_queue(
            self.prefix + "raw.q", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await raw_q.bind(self.raw_ex, Tick.__message_type__)
        await self.setup_raw_rpc()

        # Mesh: the sink's queue is declared now but consumed only in the consume phase.
        self.sink = create_bus(self.settings("sink", prefetch=256))
        self.buses.append(self.sink)
        self.sink_count = 0
        self.sink_done = asyncio.Event()

        @self.sink.event()
        async def on_tick(msg: Tick, ctx: MessageContext) -> None:
            self.sink_count += 1
            if self.sink_count == self.sink_target:
                self.sink_done.set()

        await self.sink.transport.connect()
        await self.sink.transport.declare(
            self.sink.topology, [self.sink._queue_spec(s) for s in self.sink.specs]
        )
        self.producer = create_bus(self.settings("source"))
        self.buses.append(self.producer)
        await self.producer.start()
        self.pinger = create_bus(self.settings("pinger"))
        self.buses.append(self.pinger)

        @self.pinger.rpc()
        async def ping(msg: Ping, ctx: MessageContext) -> Pong:
            return Pong(n=msg.n)

        await self.pinger.start()

    async def setup_raw_rpc(self) -> None:
        """The aio-pika RPC tutorial pattern: confirm channel, exclusive callback queue,
        futures keyed by correlation id; the server replies via the default exchange."""
        server = await self.connect()
        sch = await server.channel()
        await sch.set_qos(prefetch_count=64)
        sq = await sch.declare_queue(self.prefix + "raw.rpc", durable=True)

        async def serve(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            request = json.loads(m.body)
            await sch.default_exchange.publish(
                aio_pika.Message(
                    json.dumps({"n": request["n"]}).encode(),
                    correlation_id=m.correlation_id,
                    content_type="application/json",
                ),
                routing_key=m.reply_to or "",
            )
            await m.ack()

        await sq.consume(serve)
        client = await self.connect()
        cch = await client.channel(publisher_confirms=True)
        callback = await cch.declare_queue(exclusive=True, auto_delete=True)
        futures: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = futures.pop(m.correlation_id or "", None)
            if future is not None:
                future.set_result(m.body)

        await callback.consume(on_reply, no_ack=True)
        loop = asyncio.get_running_loop()

        async def call(n: int) -> int:
            cid = uuid.uuid4().hex
            future = loop.create_future()
            futures[cid] = future
            await cch.default_exchange.publish(
                aio_pika.Message(
                    json.dumps({"n": n}).encode(),
                    correlation_id=cid,
                    reply_to=callback.name,
                    content_type="application/json",
                    expiration=10,
                ),
                routing_key=self.prefix + "raw.rpc",
            )
            return int(json.loads(await asyncio.wait_for(future, 10))["n"])

        self.raw_call = call

    async def mesh_call(self, n: int) -> int:
        return (await self.producer.call(Ping(n=n), Pong)).n

    # ------------------------------------------------------------------ measurements

    def raw_message(self, i: int) -> aio_pika.Message:
        return aio_pika.Message(
            self.body,
            message_id=str(i),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=Tick.__message_type__,
        )

    async def raw_publish(self, n: int, window: int) -> float:
        ex = self.raw_ex
        t0 = time.perf_counter()
        if window == 1:
            for i in range(n):
                await ex.publish(self.raw_message(i), Tick.__message_type__, mandatory=True)
        else:
            for start in range(0, n, window):
                await asyncio.gather(
                    *(
                        ex.publish(self.raw_message(i), Tick.__message_type__, mandatory=True)
                        for i in range(start, min(start + window, n))
                    )
                )
        return time.perf_counter() - t0

    async def mesh_publish(self, n: int, window: int) -> float:
        producer = self.producer
        t0 = time.perf_counter()
        if window == 1:
            for i in range(n):
                await producer.publish(Tick(n=i))
        else:
            for start in range(0, n, window):
                envelopes = [
                    producer.envelope("event", Tick(n=i))
                    for i in range(start, min(start + window, n))
                ]
                results = await producer.publish_envelopes(envelopes)
                assert not any(results), results
        return time.perf_counter() - t0

    async def publishing(self) -> None:
        rounds = self.sizes["rounds"]
        for key, n, window in (
            ("publish_seq", self.sizes["seq"], 1),
            ("publish_pipelined", self.sizes["pipe"], self.sizes["window"]),
        ):
            elapsed = {"raw": 0.0, "mesh": 0.0}
            for _ in range(rounds):
                elapsed["raw"] += await self.raw_publish(n // rounds, window)
                elapsed["mesh"] += await self.mesh_publish(n // rounds, window)
            for side in elapsed:
                self.results[f"{side}_{key}_per_s"] = n / elapsed[side]

    async def consuming(self) -> None:
        total = self.sizes["seq"] + self.sizes["pipe"]
        # Raw consumer with the same prefetch as the mesh sink.
        conn = await self.connect()
        cch = await conn.channel()
        await cch.set_qos(prefetch_count=256)
        cq = await cch.get_queue(self.prefix + "raw.q", ensure=False)
        done = asyncio.Event()
        count = 0

        async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            Tick.model_validate_json(m.body)
            await m.ack()
            count += 1
            if count == total:
                done.set()

        t0 = time.perf_counter()
        await cq.consume(on_message)
        await asyncio.wait_for(done.wait(), 120)
        self.results["raw_consume_per_s"] = total / (time.perf_counter() - t0)
        await cch.close()

        self.sink_target = total
        t0 = time.perf_counter()
        await self.sink.start()
        await asyncio.wait_for(self.sink_done.wait(), 120)
        self.results["mesh_consume_per_s"] = total / (time.perf_counter() - t0)

    async def rpc(self) -> None:
        for call in (self.raw_call, self.mesh_call):
            for i in range(self.sizes["rpc_warmup"]):
                assert await call(i) == i
        latencies: dict[str, list[float]] = {"raw": [], "mesh": []}
        # Many short alternating blocks: a load spike from another process hits both sides.
        block = self.sizes["rpc"] // self.sizes["rpc_rounds"]
        for _ in range(self.sizes["rpc_rounds"]):
            for side, call in (("raw", self.raw_call), ("mesh", self.mesh_call)):
                for i in range(block):
                    t0 = time.perf_counter()
                    assert await call(i) == i
                    latencies[side].append(time.perf_counter() - t0)
        for side, values in latencies.items():
            self.results[f"{side}_rpc_p50_ms"] = percentile(values, 0.5) * 1000
            self.results[f"{side}_rpc_p99_ms"] = percentile(values, 0.99) * 1000

    async def outbox(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_async_engine(f"sqlite+aiosqlite:///{tmp}/outbox.sqlite3")
            metadata = MetaData()
            outbox = Outbox(outbox_table(metadata), service="source")
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            n = self.sizes["outbox"]
            async with engine.begin() as conn:
                for start in range(0, n, 1000):
                    # Bulk insert of ready rows (building them is not what we measure).
                    rows = []
                    for i in range(start, min(start + 1000, n)):
                        env = outbox.envelope(Tick(n=i), kind="event")
                        rows.append(
                            {
                                "message_id": env.message_id,
                                "kind": env.kind,
                                "type": env.type,
                                "envelope": json.dumps(env.to_record()),
                                "body": env.body.decode(),
                                "created_at": env.timestamp,
                                "attempts": 0,
                            }
                        )
                    await conn.execute(outbox.table.insert(), rows)
            relay = OutboxRelay(outbox, self.producer, engine, batch_size=self.sizes["relay_batch"])
            t0 = time.perf_counter()
            relayed = 0
            while relayed < n:
                relayed += await relay.relay_once()
            elapsed = time.perf_counter() - t0
            backlog = await relay.backlog()
            assert backlog.pending == 0, backlog
            await engine.dispose()
        self.results["outbox_relay_rows_per_s"] = n / elapsed

    # ------------------------------------------------------------------ tear-down

    async def cleanup(self) -> None:
        from mesh_common.bus.amqp import AmqpTransport

        for bus in self.buses:
            await bus.stop(grace=1.0)
        for conn in self.connections:  # raw consumers first, so no consumer sees its queue go
            await conn.close()
        admin = AmqpTransport(self.settings("admin"))
        await admin.connect()
        try:
            queues = [self.prefix + "raw.q", self.prefix + "raw.rpc"]
            for bus in self.buses:
                for spec in bus.specs:
                    name = bus.queue_name(spec.name)
                    queues += [name, name + ".retry", name + ".dlq"]
            topology = self.producer.topology
            for queue in queues:
                try:
                    await admin.delete_queue(queue)
                except Exception:
                    pass
            for exchange in (*topology.topic_exchanges, topology.dlx, self.prefix + "raw"):
                try:
                    await admin.delete_exchange(exchange)
                except Exception:
                    pass
        finally:
            await admin.close()

    async def run(self) -> None:
        await self.setup()
        try:
            await self.publishing()
            await self.consuming()
            await self.rpc()
            # Like the raw publish measurements, the relay publishes into a queue nobody is
            # draining in this process.
            await self.sink.stop(grace=1.0)
            await self.outbox()
        finally:
            await self.cleanup()


def report(results: dict[str, Any]) -> None:
    r = results
    rpc_ratio = r["mesh_rpc_p50_ms"] / r["raw_rpc_p50_ms"]
    relay_ratio = r["outbox_relay_rows_per_s"] / r["raw_publish_pipelined_per_s"]
    r["targets"] = {
        "mesh_rpc_p50_over_raw": {"value": rpc_ratio, "target": "<= 1.3", "met": rpc_ratio <= 1.3},
        "outbox_relay_over_raw_pipelined": {
            "value": relay_ratio,
            "target": ">= 0.5",
            "met": relay_ratio >= 0.5,
        },
    }
    rows = [
        (
            "confirmed publish, sequential (msg/s)",
            r["raw_publish_seq_per_s"],
            r["mesh_publish_seq_per_s"],
            "",
        ),
        (
            "confirmed publish, pipelined (msg/s)",
            r["raw_publish_pipelined_per_s"],
            r["mesh_publish_pipelined_per_s"],
            "",
        ),
        ("consume + ack (msg/s)", r["raw_consume_per_s"], r["mesh_consume_per_s"], ""),
        (
            "RPC p50 (ms)",
            r["raw_rpc_p50_ms"],
            r["mesh_rpc_p50_ms"],
            f"mesh/raw = {rpc_ratio:.2f} (target <= 1.3) {'OK' if rpc_ratio <= 1.3 else 'MISSED'}",
        ),
        ("RPC p99 (ms)", r["raw_rpc_p99_ms"], r["mesh_rpc_p99_ms"], ""),
        (
            "outbox relay, SQLite (rows/s)",
            None,
            r["outbox_relay_rows_per_s"],
            f"relay/raw pipelined = {relay_ratio:.2f} (target >= 0.5) "
            f"{'OK' if relay_ratio >= 0.5 else 'MISSED'}",
        ),
    ]
    print(f"{'measure':40} {'raw aio-pika':>13} {'mesh bus':>10}  target")
    print("-" * 100)
    for name, raw, mesh, note in rows:
        raw_s = f"{raw:13.2f}" if raw is not None else f"{'-':>13}"
        print(f"{name:40} {raw_s} {mesh:10.2f}  {note}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    sizes = {
        "seq": 1000,
        "pipe": 10000,
        "window": 500,
        "rpc": 2000,
        "rpc_warmup": 200,
        "outbox": 10000,
        "relay_batch": 500,  # = window: the relay gets no bigger bursts than raw pipelining
        "rounds": 10,
        "rpc_rounds": 40,
    }
    if args.quick:
        sizes = {
            "seq": 100,
            "pipe": 1000,
            "window": 200,
            "rpc": 200,
            "rpc_warmup": 20,
            "outbox": 1000,
            "relay_batch": 200,
            "rounds": 2,
            "rpc_rounds": 4,
        }
    bench = Bench(url, sizes)
    t0 = time.perf_counter()
    await bench.run()
    bench.results["sizes"] = sizes
    bench.results["elapsed_s"] = time.perf_counter() - t0
    report(bench.results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(bench.results, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {RESULTS} ({bench.results['elapsed_s']:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
