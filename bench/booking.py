"""LIVE booking benchmark: orders over AMQP RPC into a PostgreSQL coursedb, 32 concurrent clients.

Set-up (all throwaway, removed at the end): a coursedb database seeded with the demo programme
(``coursedb.seed``) whose open courses get plenty of seats and a deadline in the future, so seat
contention does not dominate; a database for booking's own tables; a RabbitMQ vhost. The booking
service runs as its own process (``python -m booking_service``, as in production); this process
is the website backend: ``--clients`` tasks each place one order after the other with
``booking.place_order`` (a new person per order, a random course; every fifth order pays by SEPA
with a new bank account, the rest by invoice) and time each call. By default notifications are
off (they are optional per centre; the bench measures the booking). ``--notifications`` turns
them on (confirmation + centre protocol with PDFs, queued but not sent: no SMTP server): the
answers do not wait for them (the mails are prepared after the answer), and the bench also
reports how long the service needed until every accepted order's mails were queued.

It reads the CPU time the booking process and this (client) process spent during the measured
window from ``/proc``, so "CPU per booking" is reported next to the rates: on a busy machine the
rate mostly says how much CPU the service got, the CPU per booking says what a booking costs.

In the same run it measures the raw single-row transaction rate of the same PostgreSQL server
(``--clients`` asyncpg connections, each committing one ``INSERT`` after the other) and prints the
ratio bookings/s ÷ raw transactions/s. Afterwards it checks that every accepted order left
exactly one registration and that no course is overbooked.

Targets: >= 300 bookings/s and p99 < 100 ms. Writes bench/results/booking.json.

    .venv/bin/python bench/booking.py [--clients 32] [--seconds 20] [--courses 2000]
        [--notifications] [--replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from coursedb import schema as cdb
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_common.bus import BusSettings, create_bus
from mesh_common.secrets import generate_key
from mesh_contracts.booking import Order, OrderResult, PlaceOrder
from sqlalchemy import func, select, text, update

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "booking.json"
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
IBANS = ["DE89370400440532013000", "DE02120300000000202051", "DE02500105170137075030"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True)


async def prepare_coursedb(url: str, courses: int) -> list[str]:
    """Seed the programme, then give the bookable courses room: open, web-bookable, direct
    booking, 30000 seats, a deadline a month ahead. Returns their numbers."""
    engine = create_engine(url)
    try:
        report = await seed(engine, courses=courses, seed=7)
        print(f"  seeded: {report}", flush=True)
        c = cdb.courses
        bookable = (c.c.status == "open") & c.c.web_bookable.is_(True)
        async with engine.begin() as conn:
            await conn.execute(
                update(c)
                .where(bookable)
                .values(
                    max_participants=30000,
                    registration_mode="direct",
                    registration_deadline=text("now() + interval '30 days'"),
                )
            )
            numbers = list((await conn.execute(select(c.c.number).where(bookable))).scalars())
            await conn.execute(text("ANALYZE"))
        return numbers
    finally:
        await engine.dispose()


def make_order(n: int, numbers: list[str], rng: random.Random) -> Order:
    payment: dict[str, Any] = {"method": "invoice"}
    if n % 5 == 0:
        payment = {
            "method": "sepa",
            "new_account": {
                "account_holder": f"Bench Person {n}",
                "iban": rng.choice(IBANS),
                "mandate_consent": True,
            },
        }
    return Order.model_validate(
        {
            "external_order_id": f"B-{uuid.uuid4().hex}",
            "participants": [
                {
                    "key": "p1",
                    "person": {
                        "first_name": f"Bench{n}",
                        "last_name": "Person",
                        "birth_date": "1990-01-01",
                        "email": f"bench{n}@example.org",
                        "address": {
                            "street": "Bertoldstraße 1",
                            "postcode": "79098",
                            "city": "Freiburg",
                        },
                    },
                }
            ],
            "items": [{"participant": "p1", "course_number": rng.choice(numbers)}],
            "payment": payment,
        }
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def booking_load(
    amqp_url: str,
    numbers: list[str],
    clients: int,
    seconds: float,
    warmup: float,
    service_pids: list[int],
) -> dict[str, Any]:
    bus = create_bus(BusSettings(service="website", amqp_url=amqp_url, rpc_timeout=30.0))
    await bus.start()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    counter = iter(range(10**9))
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    cpu: dict[str, float] = {}

    async def window() -> None:
        # The CPU both processes spend while the measured window runs.
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu["service"] = sum(cpu_seconds(pid) for pid in service_pids)
        cpu["client"] = time.process_time()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu["service"] = sum(cpu_seconds(pid) for pid in service_pids) - cpu["service"]
        cpu["client"] = time.process_time() - cpu["client"]

    async def client(seed_no: int) -> None:
        rng = random.Random(seed_no)
        while True:
            order = make_order(next(counter), numbers, rng)
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                result = await bus.call(PlaceOrder(order=order), OrderResult)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                latencies.append(t1 - t0)
                statuses[result.status.value] = statuses.get(result.status.value, 0) + 1

    try:
        await asyncio.gather(window(), *(client(i) for i in range(clients)))
    finally:
        await bus.stop(grace=2)
    accepted = statuses.get("accepted", 0)
    answered = len(latencies)
    return {
        "bookings_per_s": accepted / seconds,
        # Per call answered in the window (calls that straddle its edges are not counted, so
        # these slightly overstate the cost).
        "service_cpu_ms_per_booking": cpu["service"] * 1000 / answered if answered else None,
        "client_cpu_ms_per_call": cpu["client"] * 1000 / answered if answered else None,
        "service_cpu_share": cpu["service"] / seconds,
        "calls_measured": len(latencies),
        "statuses": statuses,
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
        "p95_ms": percentile(latencies, 0.95) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
        "max_ms": max(latencies) * 1000 if latencies else None,
    }


async def raw_rate(dsn: str, clients: int, seconds: float) -> float:
    """Single-row INSERT transactions per second on the same server, same concurrency."""
    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients)
    assert pool is not None
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, v text NOT NULL)")
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.perf_counter() < stop_at:
                await conn.execute("INSERT INTO bench_raw (v) VALUES ($1)", "x" * 64)
                done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    await pool.close()
    return done / elapsed


async def raw_rpc_rate(amqp_url: str, clients: int, seconds: float) -> float:
    """The broker's RPC ceiling on this machine: the aio-pika tutorial RPC pattern (echo server
    and client in this process), ``clients`` concurrent calls. No booking can be faster."""
    import aio_pika

    queue = f"bench.echo.{uuid.uuid4().hex[:6]}"
    server = await aio_pika.connect_robust(amqp_url)
    client = await aio_pika.connect_robust(amqp_url)
    try:
        sch = await server.channel()
        await sch.set_qos(prefetch_count=64)
        sq = await sch.declare_queue(queue, auto_delete=True)

        async def serve(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            await sch.default_exchange.publish(
                aio_pika.Message(m.body, correlation_id=m.correlation_id),
                routing_key=m.reply_to or "",
            )
            await m.ack()

        await sq.consume(serve)
        cch = await client.channel(publisher_confirms=True)
        callback = await cch.declare_queue(exclusive=True, auto_delete=True)
        futures: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = futures.pop(m.correlation_id or "", None)
            if future is not None:
                future.set_result(m.body)

        await callback.consume(on_reply, no_ack=True)
        loop = asyncio.get_running_loop()
        done = 0
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                cid = uuid.uuid4().hex
                futures[cid] = loop.create_future()
                await cch.default_exchange.publish(
                    aio_pika.Message(b'{"n":1}', correlation_id=cid, reply_to=callback.name),
                    routing_key=queue,
                )
                await futures[cid]
                done += 1

        await asyncio.gather(*(caller() for _ in range(clients)))
        return done / seconds
    finally:
        await client.close()
        await server.close()


async def mails_drained(booking_url: str, started: float, limit: float) -> dict[str, Any]:
    """Wait until no accepted order's mails wait to be prepared; how long it took (from the
    start of the load) and how many mails were queued."""
    engine = create_engine(booking_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SET search_path TO booking"))
            deadline = time.perf_counter() + limit
            while True:
                due = await conn.scalar(
                    text("SELECT count(*) FROM orders WHERE notify_at IS NOT NULL")
                )
                if not due or time.perf_counter() > deadline:
                    break
                await conn.commit()
                await asyncio.sleep(0.5)
            queued = await conn.scalar(text("SELECT count(*) FROM mesh_mail_queue"))
            failed = await conn.scalar(
                text("SELECT count(*) FROM orders WHERE last_error LIKE 'notification%'")
            )
    finally:
        await engine.dispose()
    return {
        "mails_queued": queued,
        "orders_with_mail_errors": failed,
        "orders_still_due": due,
        "all_mails_queued_after_s": time.perf_counter() - started,
    }


async def check_integrity(url: str, accepted_at_least: int) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            r, o = cdb.registrations, cdb.orders
            bench_orders = await conn.scalar(
                select(func.count()).select_from(o).where(o.c.external_order_id.like("B-%"))
            )
            bench_regs = await conn.scalar(
                select(func.count())
                .select_from(r.join(o, o.c.id == r.c.order_id))
                .where(o.c.external_order_id.like("B-%"))
            )
            overbooked = await conn.scalar(
                text(
                    "SELECT count(*) FROM courses c WHERE c.max_participants < (SELECT count(*) "
                    "FROM registrations r WHERE r.course_id = c.id "
                    "AND r.status IN ('booked', 'provisional'))"
                )
            )
    finally:
        await engine.dispose()
    assert bench_orders == bench_regs, "every bench order must have exactly one registration"
    assert bench_orders is not None and bench_orders >= accepted_at_least
    return {"orders": bench_orders, "registrations": bench_regs, "overbooked_courses": overbooked}


def start_service(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "booking_service"],
        cwd=ROOT,
        env={**os.environ, **env, "PORT": str(port), "LOG_LEVEL": "WARNING"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the booking service exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the booking service did not become ready")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--courses", type=int, default=2000)
    parser.add_argument("--raw-seconds", type=float, default=5.0)
    parser.add_argument(
        "--notifications",
        action="store_true",
        help="confirmation and protocol mails with PDFs on (queued, not sent)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="booking processes sharing the RPC queue"
    )
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    # One data key for the seed (bank accounts) and the service; random per run, never stored.
    os.environ.setdefault("MESH_SECRET_KEY", generate_key())
    tag = uuid.uuid4().hex[:8]
    coursedb_name, booking_name, vhost = f"bench_cdb_{tag}", f"bench_bk_{tag}", f"bench-{tag}"
    coursedb_url = f"{PG.replace('postgresql://', 'postgresql+asyncpg://')}/{coursedb_name}"
    booking_url = f"{PG.replace('postgresql://', 'postgresql+asyncpg://')}/{booking_name}"
    amqp_url = AMQP.rstrip("/") + "/" + quote(vhost, safe="")
    await admin(f'CREATE DATABASE "{coursedb_name}"')
    await admin(f'CREATE DATABASE "{booking_name}"')
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"== seeding a coursedb with {args.courses} courses", flush=True)
        numbers = await prepare_coursedb(coursedb_url, args.courses)
        print(f"  {len(numbers)} bookable courses", flush=True)
        env = {
            "DATABASE_URL": booking_url,
            "COURSEDB_URL": coursedb_url,
            "AMQP_URL": amqp_url,
            "COURSEDB_POOL_SIZE": str(args.clients),
            "ENVIRONMENT": "production",
            # By default the booking itself is measured; mails are optional per centre.
            "NOTIFICATIONS_ENABLED": "true" if args.notifications else "false",
            "CENTRE_EMAIL": "anmeldung@vhs-bench.example",
            "MAIL_SENDER_ENABLED": "false",
        }
        # Replicas consume the same RPC queue (competing consumers), as in production.
        for i in range(args.replicas):
            procs.append(start_service(env, port=18102 + i))
        mode = "with mails" if args.notifications else "no mails"
        mode += f", {args.replicas} booking process{'es' if args.replicas > 1 else ''}"
        print(f"== LIVE booking: {args.clients} clients, {args.seconds:.0f} s, {mode}", flush=True)
        started = time.perf_counter()
        load = await booking_load(
            amqp_url, numbers, args.clients, args.seconds, args.warmup, [p.pid for p in procs]
        )
        if args.notifications:
            print("== waiting until every accepted order's mails are queued", flush=True)
            load["mails"] = await mails_drained(booking_url, started, limit=600)
        # The raw figures need the server's connections: the service's pools are closed first.
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        print("== raw single-row transactions on the same server", flush=True)
        raw = await raw_rate(f"{PG}/{coursedb_name}", args.clients, args.raw_seconds)
        print("== raw aio-pika RPC echo on the same broker", flush=True)
        rpc_ceiling = await raw_rpc_rate(amqp_url, args.clients, args.raw_seconds)
        integrity = await check_integrity(coursedb_url, load["statuses"].get("accepted", 0))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        await admin(f'DROP DATABASE IF EXISTS "{coursedb_name}" WITH (FORCE)')
        await admin(f'DROP DATABASE IF EXISTS "{booking_name}" WITH (FORCE)')
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)  # noqa: ASYNC221

    rate, p99 = load["bookings_per_s"], load["p99_ms"] or float("inf")
    ratio = rate / raw
    results: dict[str, Any] = {
        "clients": args.clients,
        "seconds": args.seconds,
        "notifications": args.notifications,
        "replicas": args.replicas,
        "courses": args.courses,
        "bookable_courses": len(numbers),
        **load,
        "raw_single_row_tx_per_s": raw,
        "bookings_over_raw_tx": ratio,
        "raw_rpc_echo_per_s": rpc_ceiling,
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
        "integrity": integrity,
        "targets": {
            "bookings_per_s": {"target": ">= 300", "value": rate, "met": rate >= 300},
            "p99_ms": {"target": "< 100", "value": p99, "met": p99 < 100},
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    target = RESULTS.with_name("booking_notifications.json") if args.notifications else RESULTS
    target.write_text(json.dumps(results, indent=2, default=str) + "\n")
    mails = load.get("mails")
    mail_line = (
        f"\n  mails             {mails['mails_queued']} queued, all after "
        f"{mails['all_mails_queued_after_s']:.1f} s (load ran {args.warmup + args.seconds:.0f} s)"
        f"; {mails['orders_with_mail_errors']} orders with mail errors"
        if mails
        else ""
    )
    print(
        f"""
LIVE booking over AMQP RPC (PostgreSQL + RabbitMQ, {args.clients} clients, {args.seconds:.0f} s, \
{mode})
  bookings/s        {rate:8.1f}   (target >= 300: {"met" if rate >= 300 else "MISSED"})
  p50 / p95 / p99   {load["p50_ms"]:.1f} / {load["p95_ms"]:.1f} / {p99:.1f} ms
                    (p99 target < 100: {"met" if p99 < 100 else "MISSED"})
  statuses          {load["statuses"]}  errors {load["errors"]}
  CPU per booking   {load["service_cpu_ms_per_booking"] or 0:.2f} ms booking process \
({load["service_cpu_share"]:.2f} CPUs used), {load["client_cpu_ms_per_call"] or 0:.2f} ms \
client{mail_line}
  raw single-row tx {raw:8.1f} /s on the same server
  ratio             {ratio:.3f} bookings per raw transaction
  raw RPC echo      {rpc_ceiling:8.1f} /s (aio-pika, same broker, same concurrency: the ceiling)
  load average      {load_start:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs
  integrity         {integrity}
"""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
