"""The lean PostgreSQL path of the order (``booking_service.pgfast``) on a real server.

It runs booking's SQLAlchemy Core statements straight on asyncpg, so it must read and write
exactly what the engine reads and writes (values embedded in statements, ``IN`` lists, Python
column defaults, required parameters) and its driver errors must mean what the engine's mean:
a duplicate is an ``IntegrityError``, a lost or unreachable server is "unreachable", a bad
statement is not. An interrupted transaction must not keep its row locks, and an order that
meets dead pooled connections (the server restarted) is still booked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from booking_service.app import MIGRATIONS
from booking_service.booker import _COURSES, _COURSES_LOCKED, _SEATS, Booker
from booking_service.pgfast import PgPool
from booking_service.service import OrderService, is_unreachable
from booking_service.settings import Settings
from coursedb import schema as cdb
from coursedb.banking import BankCipher
from mesh_common.db import Database
from mesh_common.db.migrations import upgrade
from mesh_common.secrets import SecretBox, generate_key
from mesh_contracts.booking import Order
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from .conftest import Link, add_course, order, person, prepare_coursedb, registrations_of

pytestmark = pytest.mark.postgres


def _person(last: str) -> dict[str, object]:
    return {
        "first_name": "Fast",
        "last_name": last,
        "birth_date": dt.date(1990, 1, 1),
        "email": f"{last.lower()}@example.org",
        "country": "DE",
    }


async def test_statements_read_and_write_like_the_engine(pg_database: Callable[[], str]) -> None:
    engine = await prepare_coursedb(pg_database())
    fast = PgPool.for_engine(engine, max_size=2)
    assert fast is not None
    try:
        a = await add_course(engine, "262-70001", seats=3)
        b = await add_course(engine, "262-70002", seats=4)
        numbers = {"numbers": ["262-70002", "262-70001", "262-79999"]}
        async with engine.connect() as conn:
            expected = [tuple(r) for r in (await conn.execute(_COURSES, numbers)).all()]
        async with fast.connect() as conn:
            rows = (await conn.execute(_COURSES, numbers)).all()
            assert [tuple(r) for r in rows] == expected and [r.id for r in rows] == [a, b]
            assert rows[0]._mapping["number"] == "262-70001"
            # A value embedded in the statement: the second statement of the same shape reuses
            # the compiled one, with its own value.
            for course in (a, b):
                query = select(cdb.courses.c.number).where(cdb.courses.c.id == course)
                assert (await conn.execute(query)).scalar() == f"262-7000{1 if course == a else 2}"
            others = select(cdb.courses.c.id).where(cdb.courses.c.number.not_in(["262-70001"]))
            assert (await conn.execute(others)).scalars() == [b]
            nothing = select(cdb.courses.c.id).where(cdb.courses.c.id.in_([]))
            assert (await conn.execute(nothing)).all() == []
            with pytest.raises(sa_exc.InvalidRequestError, match="numbers"):
                await conn.execute(_COURSES, {})
            assert (await conn.execute(_SEATS, {"ids": [a, b]})).all() == []

            # Python-side defaults of a plain INSERT, the implicit primary key, onupdate.
            res = await conn.execute(insert(cdb.participants), _person("Default"))
            [pid] = res.inserted_primary_key or ()
            await conn.execute(
                update(cdb.participants).where(cdb.participants.c.id == pid).values(city="Lahr")
            )
        p = cdb.participants
        async with engine.connect() as conn:
            row = (await conn.execute(select(p).where(p.c.id == pid))).one()
        assert row.created_at.tzinfo is not None and row.updated_at >= row.created_at
        assert (row.row_version, row.city, row.last_name) == (2, "Lahr", "Default")
    finally:
        await fast.close()
        await engine.dispose()


async def test_driver_errors_mean_what_the_engine_s_mean(pg_database: Callable[[], str]) -> None:
    url = pg_database()
    engine = await prepare_coursedb(url)
    fast = PgPool.for_engine(engine, max_size=2)
    assert fast is not None
    p = cdb.participants
    try:
        async with fast.begin() as conn:
            await conn.execute(insert(p), {**_person("Unique"), "id": 999_001})
        with pytest.raises(sa_exc.IntegrityError):
            async with fast.begin() as conn:
                await conn.execute(insert(p), {**_person("Unique"), "id": 999_001})
        with pytest.raises(sa_exc.DBAPIError) as bad:
            async with fast.connect() as conn:
                await conn.execute(text("SELECT * FROM no_such_table"))
        assert not is_unreachable(bad.value)

        # An exception rolls the transaction back; the connection is used again afterwards.
        with pytest.raises(RuntimeError):
            async with fast.begin() as conn:
                await conn.execute(insert(p), _person("Rolledback"))
                raise RuntimeError("stop")
        async with fast.connect() as conn:
            gone = select(p.c.id).where(p.c.last_name == "Rolledback")
            assert (await conn.execute(gone)).all() == []

        # Interrupted while waiting for a lock: the connection is closed, so the lock it held
        # on the other course is released at once (not when the pool reuses the connection).
        held = await add_course(engine, "262-70011")
        waited = await add_course(engine, "262-70012")
        async with engine.begin() as blocker:
            await blocker.execute(_COURSES_LOCKED, {"numbers": ["262-70012"]})
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5), fast.begin() as conn:
                    await conn.execute(_COURSES_LOCKED, {"numbers": ["262-70011"]})
                    await conn.execute(_COURSES_LOCKED, {"numbers": ["262-70012"]})
        async with engine.begin() as conn:
            nowait = select(cdb.courses.c.id).where(cdb.courses.c.id == held)
            assert (await conn.execute(nowait.with_for_update(nowait=True))).scalar() == held
        async with fast.begin() as conn:
            assert len((await conn.execute(_COURSES_LOCKED, {"numbers": ["262-70012"]})).all())
        assert waited

        # Unreachable: a database that is not there, a port nobody listens on.
        for missing in (
            url.rsplit("/", 1)[0] + "/booking_test_gone",
            "postgresql+asyncpg://x@127.0.0.1:9/x",
        ):
            other = create_async_engine(missing)
            pool = PgPool.for_engine(other, max_size=1, connect_timeout=2)
            assert pool is not None
            with pytest.raises(sa_exc.DBAPIError) as down:
                async with pool.connect() as conn:
                    await conn.execute(select(1))
            assert is_unreachable(down.value), down.value
            await pool.close()
            await other.dispose()
    finally:
        await fast.close()
        await engine.dispose()


async def test_dead_pooled_connections_cost_no_order(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    """Both databases restart (every pooled connection is cut): the next order is booked on
    fresh connections, and its replay is answered from the record."""
    coursedb_link, own_link = Link("127.0.0.1", 5432), Link("127.0.0.1", 5432)
    await coursedb_link.up()
    await own_link.up()
    direct = pg_database()
    coursedb = await prepare_coursedb(direct)
    course = await add_course(coursedb, "262-70021", seats=5)
    settings = Settings(
        database_url=own_link.url(pg_database()), db_schema="booking", coursedb_url=direct
    )
    db = Database(settings.database_url or "", schema="booking", pre_ping=False)
    linked = create_async_engine(coursedb_link.url(direct))
    box = SecretBox([generate_key()])
    booker = Booker(linked, BankCipher(box), fast=PgPool.for_engine(linked, max_size=4))
    service = OrderService(
        db, booker, box, settings, outbox=None, fast=PgPool.for_engine(db.engine, max_size=4)
    )
    assert booker.fast is not None and service.fast is not None

    def body(n: int) -> Order:
        people = [{"key": "p", "person": person(f"Neustart{n}", "Schnell")}]
        return Order.model_validate(order(f"W-FAST-{n}", courses=["262-70021"], people=people))

    try:
        await upgrade(db, MIGRATIONS)
        assert (await service.place(body(1), source="rpc")).result.status == "accepted"
        for link in (coursedb_link, own_link):
            await link.down()
            await link.up()
        placed = await service.place(body(2), source="rpc")
        assert placed.result.status == "accepted" and not placed.replayed
        again = await service.place(body(2), source="rpc")
        assert again.replayed and again.result == placed.result
        assert len(await registrations_of(coursedb, course)) == 2
    finally:
        await service.fast.close()
        await booker.fast.close()
        await db.dispose()
        await linked.dispose()
        await coursedb.dispose()
        await coursedb_link.down()
        await own_link.down()


async def test_a_connection_killed_mid_transaction_is_unreachable_not_a_crash(
    pg_database: Callable[[], str],
) -> None:
    """The server drops the connection while a transaction is open on it (the chaos suite's
    cut): asyncpg closes it and detaches the pooled proxy at once. Whatever the next call on it
    is, the caller gets "unreachable" (a SQLAlchemy error with ``connection_invalidated``),
    never an InterfaceError about a released connection, and the pool goes on working."""
    engine = await prepare_coursedb(pg_database())
    fast = PgPool.for_engine(engine, max_size=2)
    assert fast is not None
    try:
        for _ in range(3):  # the error may surface at the statement, the rollback or release
            with pytest.raises(sa_exc.DBAPIError) as cut:
                async with fast.begin() as conn:
                    pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
                    async with engine.connect() as admin:
                        await admin.execute(text(f"SELECT pg_terminate_backend({int(pid)})"))
                    await asyncio.sleep(0.05)
                    await conn.execute(select(cdb.courses.c.id).limit(1))
            assert is_unreachable(cut.value), repr(cut.value)
            assert cut.value.connection_invalidated, repr(cut.value)
        async with fast.connect() as conn:
            assert (await conn.execute(select(1))).scalar() == 1
    finally:
        await fast.close()
        await engine.dispose()
