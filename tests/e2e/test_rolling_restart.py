"""Rolling restart of the booking service under load, as separate processes on PostgreSQL and
RabbitMQ (the production topology of `make up-local`).

A website client keeps placing orders over AMQP RPC while the booking process gets SIGTERM
(drains its in-flight handlers, exits by itself) and a new process takes over. Callers retry a
failed call with the same order id, as the website backend does. In the end every order is
booked exactly once: nothing lost, nothing processed twice.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from coursedb import schema as cdb
from coursedb.engine import create_engine as create_coursedb_engine
from mesh_common.bus import BusSettings, RpcError, create_bus
from mesh_common.secrets import generate_key
from mesh_contracts.booking import Order, OrderResult, PlaceOrder
from mesh_embedded.registry import SERVICES
from mesh_embedded.topology import Supervisor, Topology
from pydantic import SecretStr
from sqlalchemy import func, select, text, update

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]
ORDERS = 90
CONCURRENCY = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def booking_mesh(
    pg_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Supervisor]:
    coursedb_url = pg_url.rsplit("/", 1)[0] + f"/edumesh_test_cdb_{uuid.uuid4().hex[:8]}"
    topo = Topology(
        pg_url=pg_url,
        coursedb_url=coursedb_url,
        amqp_url=amqp_url,
        gateway_port=_free_port(),
        port_offset=_free_port() % 20000 + 20000 - 8100,
        secret_key=generate_key(),
        smtp_port=_free_port(),
        services=[s for s in SERVICES if s.name == "booking"],
        extra_env={"NOTIFICATIONS_ENABLED": "false"},
    )
    sup = Supervisor(topo, log_dir=tmp_path_factory.mktemp("rolling") / "logs", grace=20)
    try:
        await sup.start(seed_courses=40)
        yield sup
    finally:
        await sup.stop()
        import asyncpg

        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            name = coursedb_url.rsplit("/", 1)[1]
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _bookable_courses(url: str) -> list[str]:
    engine = create_coursedb_engine(url)
    try:
        c = cdb.courses
        bookable = (c.c.status == "open") & c.c.web_bookable.is_(True)
        async with engine.begin() as conn:
            await conn.execute(
                update(c)
                .where(bookable)
                .values(
                    max_participants=10000,
                    registration_mode="direct",
                    registration_deadline=text("now() + interval '30 days'"),
                )
            )
            return list((await conn.execute(select(c.c.number).where(bookable))).scalars())
    finally:
        await engine.dispose()


def _order(n: int, course: str) -> Order:
    return Order.model_validate(
        {
            "external_order_id": f"R-{n:04d}-{uuid.uuid4().hex[:8]}",
            "participants": [
                {
                    "key": "p1",
                    "person": {
                        "first_name": f"Rolling{n}",
                        "last_name": "Restart",
                        "birth_date": "1991-02-03",
                        "email": f"rolling{n}@example.org",
                    },
                }
            ],
            "items": [{"participant": "p1", "course_number": course}],
            "payment": {"method": "invoice"},
        }
    )


async def test_rolling_restart_under_load_loses_and_duplicates_nothing(
    booking_mesh: Supervisor,
) -> None:
    topo = booking_mesh.topo
    courses = await _bookable_courses(topo.coursedb_url)
    assert courses
    orders = [_order(n, courses[n % len(courses)]) for n in range(ORDERS)]
    bus = create_bus(
        BusSettings(service="e2e-website", amqp_url=SecretStr(topo.amqp_url), rpc_timeout=8.0)
    )
    await bus.start()
    answered: dict[str, OrderResult] = {}
    retries = 0
    queue: asyncio.Queue[Order] = asyncio.Queue()
    for order in orders:
        queue.put_nowait(order)

    async def client() -> None:
        nonlocal retries
        while not queue.empty():
            order = queue.get_nowait()
            for attempt in range(30):
                try:
                    answered[order.external_order_id] = await bus.call(
                        PlaceOrder(order=order), OrderResult
                    )
                    break
                except RpcError:
                    # No answer (the process was restarting): ask again with the same order
                    # id; booking's idempotency makes the repeat harmless.
                    retries += 1
                    await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"{order.external_order_id} never answered")

    at_sigterm: list[int] = []

    async def restart_midway() -> int | None:
        while len(answered) < ORDERS // 3:
            await asyncio.sleep(0.05)
        at_sigterm.append(len(answered))
        return await booking_mesh.restart("booking")

    try:
        results = await asyncio.gather(restart_midway(), *(client() for _ in range(CONCURRENCY)))
    finally:
        await bus.stop()
    exit_code = results[0]
    # The old process drained and exited by itself on SIGTERM (uvicorn re-raises the signal).
    assert exit_code in (0, -15), exit_code
    assert at_sigterm and at_sigterm[0] < ORDERS  # the restart really happened under load
    print(f"restart after {at_sigterm[0]} answers; {retries} calls repeated")
    assert len(answered) == ORDERS
    assert {r.status for r in answered.values()} == {"accepted"}, {
        k: r.status for k, r in answered.items() if r.status != "accepted"
    }
    assert all([line.outcome for line in r.lines] == ["booked"] for r in answered.values())

    engine = create_coursedb_engine(topo.coursedb_url)
    try:
        async with engine.connect() as conn:
            ids = [o.external_order_id for o in orders]
            n_orders = await conn.scalar(
                select(func.count())
                .select_from(cdb.orders)
                .where(cdb.orders.c.external_order_id.in_(ids))
            )
            per_order = (
                await conn.execute(
                    select(cdb.orders.c.external_order_id, func.count(cdb.registrations.c.id))
                    .join(cdb.registrations, cdb.registrations.c.order_id == cdb.orders.c.id)
                    .where(cdb.orders.c.external_order_id.in_(ids))
                    .group_by(cdb.orders.c.external_order_id)
                )
            ).all()
    finally:
        await engine.dispose()
    assert n_orders == ORDERS  # nothing lost, no order twice
    assert len(per_order) == ORDERS and all(count == 1 for _, count in per_order)
    log = (booking_mesh.log_dir / "booking.log").read_text()
    assert log.count("Application shutdown complete") >= 1
