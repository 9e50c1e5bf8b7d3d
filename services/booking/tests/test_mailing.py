"""Mails prepared after the answer (``booking_service.mailing``): recorded as due with the order,
queued exactly once even with several workers at once or a claim that ran out, delayed (not
lost) while the coursedb is unreachable. Real databases (SQLite files, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from booking_service.mailing import NotificationWorker
from booking_service.models import mail, orders
from sqlalchemy import func, select, update

from .conftest import (
    SERVICE,
    Link,
    Running,
    add_course,
    order,
    person,
    prepare_coursedb,
    running,
)

MAILS = {
    "notifications_enabled": True,
    "mail_sender_enabled": False,  # the queue is checked, not the SMTP delivery
    "centre_email": "anmeldung@vhs-test.example",
}


async def mails_of(svc: Running, external_id: str) -> list[str]:
    async with svc.booking.runtime.db.engine.connect() as conn:
        rows = await conn.execute(
            select(mail.queue.c.category).where(mail.queue.c.ref == external_id)
        )
        return sorted(r.category for r in rows)


async def order_row(svc: Running, external_id: str) -> Any:
    async with svc.booking.runtime.db.engine.connect() as conn:
        return (
            await conn.execute(select(orders).where(orders.c.external_order_id == external_id))
        ).one()


async def stop_own_worker(svc: Running) -> None:
    task = svc.booking.extras["mailer_task"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def place(svc: Running, n: int, course: str) -> str:
    body = order(f"W-DEF-{n}", [course], people=[{"key": "p1", "person": person(f"Anna{n}")}])
    r = await svc.client.post("/orders", json=body, headers=SERVICE)
    assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
    return str(body["external_order_id"])


async def test_mails_are_due_with_the_answer_and_queued_once_by_racing_workers(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path, **MAILS) as svc:
        await add_course(svc.coursedb, "262-50001", seats=20)
        await stop_own_worker(svc)
        ids = [await place(svc, n, "262-50001") for n in range(5)]
        rejected = order("W-DEF-X", ["262-99999"])  # no such course: no mails
        assert (await svc.client.post("/orders", json=rejected, headers=SERVICE)).json()[
            "status"
        ] == "rejected"
        for external_id in ids:
            row = await order_row(svc, external_id)
            # Recorded with the answer: due, with the order kept (encrypted) for the mails.
            assert row.notify_at is not None and row.payload is not None
            assert "Anna" not in row.payload
            assert await mails_of(svc, external_id) == []
        assert (await order_row(svc, "W-DEF-X")).notify_at is None

        workers = [NotificationWorker(svc.booking.orders) for _ in range(3)]
        await asyncio.gather(*(w.drain() for w in workers))
        assert sum(w.queued for w in workers) == 5
        for external_id in ids:
            assert await mails_of(svc, external_id) == ["booking-confirmation", "booking-protocol"]
            row = await order_row(svc, external_id)
            assert (row.notify_at, row.payload, row.last_error) == (None, None, None)
        assert await workers[0].due() == 0
        # Nothing is due any more: another round queues nothing.
        await workers[1].drain()
        async with svc.booking.runtime.db.engine.connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(mail.queue))
        assert total == 10


async def test_a_claim_that_ran_out_is_taken_over_and_the_first_worker_queues_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path, **MAILS) as svc:
        await add_course(svc.coursedb, "262-50002", seats=5)
        await stop_own_worker(svc)
        external_id = await place(svc, 1, "262-50002")
        slow, other = NotificationWorker(svc.booking.orders), NotificationWorker(svc.booking.orders)
        [(row, lease)], _ = await slow.claim()
        assert (await other.claim())[0] == []  # claimed: nobody else takes it
        # The slow worker's process dies or stalls past its lease.
        async with svc.booking.runtime.db.engine.begin() as conn:
            await conn.execute(
                update(orders).where(orders.c.id == row.id).values(notify_at=time.time() - 1)
            )
        await other.drain()
        assert other.queued == 1
        await slow.send(row, lease)  # finishes late: its claim is gone
        assert slow.queued == 0
        assert await mails_of(svc, external_id) == ["booking-confirmation", "booking-protocol"]


async def test_a_worker_that_shuts_down_hands_its_claim_back(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path, **MAILS) as svc:
        await add_course(svc.coursedb, "262-50004", seats=5)
        await stop_own_worker(svc)
        external_id = await place(svc, 4, "262-50004")
        notifier = svc.booking.orders.notifier
        assert notifier is not None
        started, never = asyncio.Event(), asyncio.Event()
        prepare = notifier.prepare

        async def stuck(*args: Any) -> Any:
            started.set()
            await never.wait()

        notifier.prepare = stuck
        leaving = NotificationWorker(svc.booking.orders)
        task = asyncio.create_task(leaving.drain())
        await started.wait()
        assert (await order_row(svc, external_id)).notify_at > time.time() + 60  # claimed
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert (await order_row(svc, external_id)).notify_at <= time.time()  # handed back
        notifier.prepare = prepare
        successor = NotificationWorker(svc.booking.orders)
        await successor.drain()
        assert successor.queued == 1
        assert await mails_of(svc, external_id) == ["booking-confirmation", "booking-protocol"]


async def test_mails_wait_while_the_coursedb_is_unreachable(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    direct = pg_database()
    engine = await prepare_coursedb(direct)
    await add_course(engine, "262-50003", seats=5)
    link = Link("127.0.0.1", 5432)
    await link.up()
    settings = {
        "database_url": pg_database(),
        "db_schema": "booking",
        "var_dir": tmp_path,
        "backlog_backoff_base_seconds": 0.2,
        **MAILS,
    }
    try:
        async with running(link.url(direct), **settings) as svc:
            await stop_own_worker(svc)
            external_id = await place(svc, 3, "262-50003")
            await link.down()  # the documents cannot be read back now
            worker = NotificationWorker(svc.booking.orders)
            await worker.drain()
            row = await order_row(svc, external_id)
            assert row.notify_attempts == 1 and row.notify_at > time.time()
            assert row.last_error.startswith("notification delayed:")
            assert row.payload is not None
            assert await mails_of(svc, external_id) == []

            await link.up()
            await asyncio.sleep(max(0.0, row.notify_at - time.time()))
            await worker.drain()
            assert worker.queued == 1
            row = await order_row(svc, external_id)
            assert (row.notify_at, row.last_error, row.notify_attempts) == (None, None, 2)
            assert await mails_of(svc, external_id) == ["booking-confirmation", "booking-protocol"]
            metrics = (await svc.client.get("/metrics")).text
            assert "booking_notifications_failed_total 0.0" in metrics
    finally:
        await link.down()
        await engine.dispose()
