"""No overbooking under concurrency: 50 orders at once for a 10-seat course.

With the course row lock (PostgreSQL ``SELECT ... FOR UPDATE``; SQLite ``BEGIN IMMEDIATE``)
exactly 10 are booked and 40 wait. The control run switches the lock off (a test-only switch)
and must overbook, which shows the test can fail. Both runs pause between counting seats and
writing (``race_window``), so concurrent orders really do interleave.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import (
    SERVICE,
    add_course,
    order,
    person,
    prepare_coursedb,
    registrations_of,
    running,
)

ORDERS, SEATS = 50, 10


async def _race(client: httpx.AsyncClient, number: str) -> tuple[Counter[str], list[int]]:
    """Place the orders at once; the outcomes and the waiting-list positions handed out."""
    bodies = [
        order(
            f"W-RACE-{number}-{i:03d}",
            courses=[number],
            mode="waiting_list",
            people=[{"key": "p", "person": person(f"Racer{i}", "Schnell")}],
        )
        for i in range(ORDERS)
    ]
    responses = await asyncio.gather(
        *(client.post("/orders", json=b, headers=SERVICE) for b in bodies)
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    lines = [r.json()["lines"][0] for r in responses]
    positions = sorted(x["waiting_list_position"] for x in lines if x["waiting_list_position"])
    return Counter(x["outcome"] for x in lines), positions


@pytest.mark.postgres
async def test_fifty_orders_ten_seats_on_postgres(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    url = pg_database()
    await (await prepare_coursedb(url)).dispose()
    settings = {
        "database_url": pg_database(),
        "db_schema": "booking",
        "var_dir": tmp_path,
        "coursedb_pool_size": 60,
        "coursedb_timeout_seconds": 30.0,
    }
    async with running(url, **settings) as svc:
        svc.booking.booker.race_window = 0.02
        locked = await add_course(svc.coursedb, "262-80001", seats=SEATS, mode="waiting_list")
        outcomes, positions = await _race(svc.client, "262-80001")
        assert outcomes == {"booked": SEATS, "waiting_list": ORDERS - SEATS}
        assert positions == list(range(1, ORDERS - SEATS + 1))
        regs = await registrations_of(svc.coursedb, locked)
        assert Counter(r.status for r in regs) == {"booked": SEATS, "waiting_list": ORDERS - SEATS}

        # Control: the same race without the lock overbooks.
        svc.booking.booker.lock = False
        unlocked = await add_course(svc.coursedb, "262-80002", seats=SEATS, mode="waiting_list")
        control, _ = await _race(svc.client, "262-80002")
        booked = sum(
            1 for r in await registrations_of(svc.coursedb, unlocked) if r.status == "booked"
        )
        assert control["booked"] == booked
        assert booked > SEATS, f"without the lock {booked} were booked; expected overbooking"


async def test_fifty_orders_ten_seats_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    async with running(url, var_dir=tmp_path, coursedb_timeout_seconds=60.0) as svc:
        svc.booking.booker.race_window = 0.005
        course = await add_course(svc.coursedb, "262-80001", seats=SEATS, mode="waiting_list")
        outcomes, positions = await _race(svc.client, "262-80001")
        assert outcomes == {"booked": SEATS, "waiting_list": ORDERS - SEATS}
        assert positions == list(range(1, ORDERS - SEATS + 1))
        regs = await registrations_of(svc.coursedb, course)
        assert Counter(r.status for r in regs) == {"booked": SEATS, "waiting_list": ORDERS - SEATS}
