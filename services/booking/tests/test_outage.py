"""The course database goes away: orders wait durably, survive a restart of booking and are
booked in arrival order once it is back, each exactly once, with an event per order.

The outage is real: booking reaches the coursedb's PostgreSQL server through a TCP link that
the test cuts (connections refused, open ones reset) and restores. A second test makes the
coursedb hang instead (a lock held longer than the booking budget), and a third one has an
order fail for good (a conflicting order in the coursedb), stay visible and be retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from booking_service.app import MIGRATIONS
from booking_service.booker import Booker
from booking_service.models import orders
from booking_service.service import OrderService
from booking_service.settings import Settings
from coursedb import schema as cdb
from coursedb.banking import BankCipher
from mesh_common.app import process_broker
from mesh_common.bus import BusSettings, MessageContext, create_bus
from mesh_common.db import Database
from mesh_common.db.migrations import upgrade
from mesh_common.secrets import SecretBox, generate_key
from mesh_common.testing.smtp import SmtpCapture
from mesh_contracts.booking import Order, OrderConfirmed, OrderRejected
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError

from .conftest import (
    SERVICE,
    STAFF,
    Link,
    add_course,
    eventually,
    order,
    person,
    prepare_coursedb,
    registrations_of,
    running,
)

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def website() -> AsyncIterator[dict[str, list[Any]]]:
    """The website backend's event consumer (on this test's in-memory broker)."""
    seen: dict[str, list[Any]] = {"confirmed": [], "rejected": []}
    bus = create_bus(BusSettings(service="website"), broker=process_broker())

    @bus.event()
    async def on_confirmed(msg: OrderConfirmed, ctx: MessageContext) -> None:
        seen["confirmed"].append(msg.result)

    @bus.event()
    async def on_rejected(msg: OrderRejected, ctx: MessageContext) -> None:
        seen["rejected"].append(msg.result)

    await bus.start()
    try:
        yield seen
    finally:
        await bus.stop(grace=1)


def _body(n: int, number: str = "262-90001") -> dict[str, Any]:
    return order(
        f"W-OUT-{n}",
        courses=[number],
        mode="waiting_list",
        people=[{"key": "p", "person": person(f"Kundin{n}", "Wartend")}],
    )


async def test_orders_wait_through_an_outage_and_a_restart(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    direct = pg_database()
    engine = await prepare_coursedb(direct)
    course = await add_course(engine, "262-90001", seats=3, mode="waiting_list")
    link = Link("127.0.0.1", 5432)
    await link.up()
    settings = {
        "database_url": pg_database(),
        "db_schema": "booking",
        "var_dir": tmp_path,
        "coursedb_timeout_seconds": 3.0,
    }
    try:
        async with running(link.url(direct), **settings) as svc:
            live = await svc.client.post("/orders", json=_body(0), headers=SERVICE)
            assert live.status_code == 200 and live.json()["status"] == "accepted"

            await link.down()
            pending = []
            for n in range(1, 6):
                r = await svc.client.post("/orders", json=_body(n), headers=SERVICE)
                assert r.status_code == 202, r.text
                assert r.json()["status"] == "pending" and r.json()["lines"] == []
                pending.append(r.json())
            # The same order again: the same pending answer; other content: 409.
            again = await svc.client.post("/orders", json=_body(2), headers=SERVICE)
            assert (again.status_code, again.json()) == (202, pending[1])
            last = await svc.client.post("/orders", json=_body(5), headers=SERVICE)
            assert (last.status_code, last.json()) == (202, pending[4])
            clash = _body(2)
            clash["participants"][0]["person"]["first_name"] = "Jemand"
            assert (
                await svc.client.post("/orders", json=clash, headers=SERVICE)
            ).status_code == 409

            backlog = (await svc.client.get("/backlog", headers=STAFF)).json()
            assert backlog["counts"]["pending"] == 5 and backlog["oldest_pending"] == "W-OUT-1"
            listed = (await svc.client.get("/orders?status=pending", headers=STAFF)).json()
            assert [x["external_order_id"] for x in listed] == [f"W-OUT-{n}" for n in range(1, 6)]
            # The worker kept trying meanwhile and recorded why it could not book.
            await eventually(lambda: _attempted(svc.booking.runtime.db.engine), timeout=10)
        # booking stopped ("process restart") with five orders waiting; the link comes back.
        await link.up()
        async with website() as seen, running(link.url(direct), **settings) as svc:
            await eventually(lambda: len(seen["confirmed"]) >= 5, timeout=30)
            results = {}
            for n in range(1, 6):
                r = await svc.client.get(f"/orders/W-OUT-{n}", headers=SERVICE)
                results[n] = r.json()
            assert all(x["status"] == "accepted" for x in results.values())
            outcomes = [
                (results[n]["lines"][0]["outcome"], results[n]["lines"][0]["waiting_list_position"])
                for n in range(1, 6)
            ]
            # Arrival order: two seats were left after the LIVE order, then the waiting list.
            assert outcomes == [
                ("booked", None),
                ("booked", None),
                ("waiting_list", 1),
                ("waiting_list", 2),
                ("waiting_list", 3),
            ]
            assert {x.external_order_id for x in seen["confirmed"]} == {
                f"W-OUT-{n}" for n in range(1, 6)
            }
            assert seen["rejected"] == []
            # Exactly once in the coursedb.
            regs = await registrations_of(engine, course)
            assert len(regs) == 6
            async with engine.connect() as conn:
                ids = (await conn.execute(select(cdb.orders.c.external_order_id))).scalars().all()
            assert sorted(ids) == sorted(f"W-OUT-{n}" for n in range(6))
            # Registration ids follow the arrival order too.
            reg_ids = [results[n]["lines"][0]["registration_id"] for n in range(1, 6)]
            assert reg_ids == sorted(reg_ids)
            # A replay now returns the final answer; the stored order payload is gone.
            replay = await svc.client.post("/orders", json=_body(4), headers=SERVICE)
            assert replay.status_code == 200 and replay.json() == results[4]
            async with svc.booking.runtime.db.engine.connect() as conn:
                assert (
                    await conn.scalar(
                        select(func.count())
                        .select_from(orders)
                        .where(orders.c.payload.is_not(None))
                    )
                    == 0
                )
    finally:
        await link.down()
        await engine.dispose()


async def _attempted(engine: Any) -> bool:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(orders.c.attempts, orders.c.last_error).where(
                    orders.c.external_order_id == "W-OUT-1"
                )
            )
        ).one()
    return bool(row.attempts >= 1 and row.last_error)


async def test_a_hanging_coursedb_counts_as_unreachable(
    tmp_path: Path, pg_database: Callable[[], str], smtp_server: SmtpCapture
) -> None:
    url = pg_database()
    engine = await prepare_coursedb(url)
    course = await add_course(engine, "262-90002", seats=5)
    settings = {
        "database_url": pg_database(),
        "db_schema": "booking",
        "var_dir": tmp_path,
        "coursedb_timeout_seconds": 1.0,
        # The confirmation of a backlog order is mailed when it is finally booked.
        "notifications_enabled": True,
        "mail_sender_enabled": True,
        "smtp_host": smtp_server.host,
        "smtp_port": smtp_server.port,
        "mail_poll_seconds": 0.2,
    }
    try:
        async with website() as seen, running(url, **settings) as svc:
            # Someone holds the course row (a long office transaction) beyond the budget.
            async with engine.begin() as blocker:
                await blocker.execute(
                    select(cdb.courses.c.id).where(cdb.courses.c.id == course).with_for_update()
                )
                r = await svc.client.post("/orders", json=_body(7, "262-90002"), headers=SERVICE)
                assert r.status_code == 202 and r.json()["status"] == "pending"
                await asyncio.sleep(1.5)  # the worker's attempts time out as well
            await eventually(lambda: len(seen["confirmed"]) == 1, timeout=20)
            assert seen["confirmed"][0].lines[0].outcome == "booked"
            assert len(await registrations_of(engine, course)) == 1
            [mail] = await smtp_server.wait_for(1)
            assert mail.rcpt_tos == ("kundin7.wartend@example.org",)
            assert "W-OUT-7" in mail.message["Subject"]
    finally:
        await engine.dispose()


async def test_failed_order_is_visible_and_can_be_retried(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    direct = pg_database()
    engine = await prepare_coursedb(direct)
    course = await add_course(engine, "262-90003", seats=5)
    link = Link("127.0.0.1", 5432)
    await link.up()
    settings = {"database_url": pg_database(), "db_schema": "booking", "var_dir": tmp_path}
    try:
        async with website() as seen, running(link.url(direct), **settings) as svc:
            await link.down()
            body = _body(9, "262-90003")
            assert (await svc.client.post("/orders", json=body, headers=SERVICE)).status_code == 202
            # Meanwhile the same order id was entered in the coursedb by other means.
            async with engine.begin() as conn:
                now = func.now()
                await conn.execute(
                    insert(cdb.orders).values(
                        external_order_id="W-OUT-9",
                        received_at=now,
                        status="received",
                        payment_method="invoice",
                        payload_hash="0" * 64,
                        created_at=now,
                        updated_at=now,
                    )
                )
            await link.up()
            await eventually(lambda: len(seen["rejected"]) == 1, timeout=20)
            failed = seen["rejected"][0]
            assert failed.status == "failed" and "conflict" in (failed.detail or "")
            listed = (await svc.client.get("/orders?status=failed", headers=STAFF)).json()
            assert [x["external_order_id"] for x in listed] == ["W-OUT-9"]
            assert "conflict" in listed[0]["last_error"]
            got = (await svc.client.get("/orders/W-OUT-9", headers=SERVICE)).json()
            assert got["status"] == "failed"
            assert await registrations_of(engine, course) == []

            # The office removes its stray row and retries the order.
            async with engine.begin() as conn:
                await conn.execute(
                    update(cdb.orders)
                    .where(cdb.orders.c.external_order_id == "W-OUT-9")
                    .values(external_order_id="W-OUT-9-desk")
                )
            r = await svc.client.post("/orders/W-OUT-9/retry", headers=STAFF)
            assert r.status_code == 200 and r.json()["status"] == "pending"
            await eventually(lambda: len(seen["confirmed"]) == 1, timeout=20)
            assert (await svc.client.get("/orders/W-OUT-9", headers=SERVICE)).json()[
                "status"
            ] == "accepted"
            assert len(await registrations_of(engine, course)) == 1
            again = await svc.client.post("/orders/W-OUT-9/retry", headers=STAFF)
            assert again.status_code == 404
    finally:
        await link.down()
        await engine.dispose()


async def test_booking_database_down_is_503_and_nothing_booked(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    url = pg_database()
    engine = await prepare_coursedb(url)
    course = await add_course(engine, "262-90004", seats=5)
    link = Link("127.0.0.1", 5432)
    await link.up()
    own = link.url(pg_database())
    try:
        async with running(url, database_url=own, db_schema="booking", var_dir=tmp_path) as svc:
            await link.down()
            r = await svc.client.post("/orders", json=_body(11, "262-90004"), headers=SERVICE)
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "booking-unavailable"
            assert await registrations_of(engine, course) == []
            await link.up()
            r = await svc.client.post("/orders", json=_body(11, "262-90004"), headers=SERVICE)
            assert r.status_code == 200 and r.json()["status"] == "accepted"
    finally:
        await link.down()
        await engine.dispose()


async def test_a_dead_pooled_connection_costs_no_order(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    """Booking's own pool is not pinged before use (three round trips per checkout on asyncpg):
    after its database restarted, the order that meets a dead pooled connection is repeated
    on a fresh one instead of failing."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    coursedb = await prepare_coursedb(url)
    course = await add_course(coursedb, "262-90005", seats=5)
    link = Link("127.0.0.1", 5432)
    await link.up()
    settings = Settings(database_url=link.url(pg_database()), db_schema="booking", coursedb_url=url)
    assert settings.db_pool_pre_ping is False
    db = Database(settings.database_url or "", schema="booking", pre_ping=False)
    box = SecretBox([generate_key()])
    booker = Booker(coursedb, BankCipher(box))
    service = OrderService(db, booker, box, settings, outbox=None)
    try:
        await upgrade(db, MIGRATIONS)
        placed = await service.place(Order.model_validate(_body(21, "262-90005")), source="rpc")
        assert placed.result.status == "accepted"
        await link.down()  # the server restarts: every pooled connection is cut
        await link.up()
        placed = await service.place(Order.model_validate(_body(22, "262-90005")), source="rpc")
        assert placed.result.status == "accepted"
        again = await service.place(Order.model_validate(_body(22, "262-90005")), source="rpc")
        assert again.replayed and again.result == placed.result
        assert len(await registrations_of(coursedb, course)) == 2

        # Without the repetition the cut would have reached the caller:
        async with db.engine.connect() as conn:
            await conn.execute(select(1))
        await link.down()
        await link.up()
        with pytest.raises(DBAPIError) as exc:
            async with db.engine.connect() as conn:
                await conn.execute(select(1))
        assert exc.value.connection_invalidated
    finally:
        await db.dispose()
        await link.down()
        await coursedb.dispose()


async def test_what_counts_as_unreachable(pg_database: Callable[[], str]) -> None:
    """Real driver errors: gone/unreachable databases are outages, wrong SQL or data are not."""
    from booking_service.service import is_unreachable
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    url = pg_database()

    async def error_of(engine_url: str, sql: str = "SELECT 1") -> BaseException:
        engine = create_async_engine(engine_url, connect_args={"timeout": 2})
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql))
        except Exception as exc:
            return exc
        finally:
            await engine.dispose()
        raise AssertionError("no error")

    renamed = url.rsplit("/", 1)[0] + "/booking_test_renamed_away"
    assert is_unreachable(await error_of(renamed))  # 3D000: the database is not there
    assert is_unreachable(await error_of("postgresql+asyncpg://postgres@127.0.0.1:9/x"))
    assert not is_unreachable(await error_of(url, "SELECT * FROM no_such_table"))
    assert not is_unreachable(await error_of(url, "SELECT 1/0"))
