"""Schema, constraints, portable types and the access layer, on SQLite, PostgreSQL and MariaDB."""

# German typography: course titles use the en dash (U+2013).
# ruff: noqa: RUF001

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from coursedb.access import RowNotFoundError, StaleRowError, touch, update_row
from coursedb.banking import BankCipher
from coursedb.engine import create_engine, create_schema, drop_schema, sqlite_file
from coursedb.schema import (
    bank_accounts,
    categories,
    courses,
    locations,
    metadata,
    participants,
    registrations,
    rooms,
    semesters,
)
from mesh_common.secrets import SecretBox, generate_key
from sqlalchemy import inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T0 = dt.datetime(2025, 9, 1, 8, 0, tzinfo=dt.UTC)


async def _table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def _base(conn: AsyncConnection) -> dict[str, int]:
    """The smallest valid programme: one semester, category, place, course and participant."""
    await conn.execute(
        semesters.insert(),
        [
            {
                "id": 1,
                "code": "252",
                "name": "Herbstsemester 2025/26",
                "starts_on": dt.date(2025, 8, 1),
                "ends_on": dt.date(2026, 1, 31),
            }
        ],
    )
    await conn.execute(
        categories.insert(),
        [
            {"id": 1, "parent_id": None, "code": "4", "name": "Sprachen"},
            {"id": 2, "parent_id": 1, "code": "404", "name": "Spanisch"},
        ],
    )
    await conn.execute(
        locations.insert(),
        [
            {
                "id": 1,
                "name": "Volkshochschulhaus",
                "street": "Rotteckring 12",
                "postcode": "79098",
                "city": "Freiburg im Breisgau",
            }
        ],
    )
    await conn.execute(
        rooms.insert(), [{"id": 1, "location_id": 1, "name": "Raum 1.01", "capacity": 16}]
    )
    await conn.execute(courses.insert(), [_course(1, "252-40401")])
    await conn.execute(
        participants.insert(),
        [{"id": 1, "first_name": "Jürgen", "last_name": "Weiß", "salutation": "mr"}],
    )
    return {"course": 1, "participant": 1}


def _course(course_id: int, number: str, **overrides: Any) -> dict[str, Any]:
    row = {
        "id": course_id,
        "number": number,
        "semester_id": 1,
        "category_id": 2,
        "title": "Spanisch A1 – Einstieg",
        "fee": Decimal("124.50"),
        "min_participants": 6,
        "max_participants": 12,
        "status": "open",
        "registration_mode": "direct",
        "publish": True,
        "web_bookable": True,
        "location_id": 1,
        "room_id": 1,
        "created_at": T0,
        "updated_at": T0,
    }
    row.update(overrides)
    return row


def _registration(reg_id: int, status: str = "booked", **overrides: Any) -> dict[str, Any]:
    row = {
        "id": reg_id,
        "course_id": 1,
        "participant_id": 1,
        "status": status,
        "registered_at": T0,
        "cancelled_at": T0 if status == "cancelled" else None,
        "fee_charged": Decimal("124.50") if status == "booked" else None,
        "created_at": T0,
        "updated_at": T0,
    }
    row.update(overrides)
    return row


async def _rejected(engine: AsyncEngine, table: Any, row: dict[str, Any]) -> DBAPIError:
    """Insert ``row`` in its own transaction, which must fail; return the error."""
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(table.insert(), [row])
    return caught.value


async def test_schema_creates_and_drops(scratch_engine: AsyncEngine) -> None:
    await drop_schema(scratch_engine)
    assert not set(metadata.tables) & await _table_names(scratch_engine)

    await create_schema(scratch_engine)
    await create_schema(scratch_engine)  # idempotent
    assert set(metadata.tables) <= await _table_names(scratch_engine)

    await drop_schema(scratch_engine)
    assert not set(metadata.tables) & await _table_names(scratch_engine)


async def test_constraints_reject_bad_rows(scratch_engine: AsyncEngine) -> None:
    await drop_schema(scratch_engine)
    await create_schema(scratch_engine)
    async with scratch_engine.begin() as conn:
        await _base(conn)

    # Duplicate course number.
    error = await _rejected(scratch_engine, courses, _course(2, "252-40401"))
    assert isinstance(error, IntegrityError)

    # At most one active registration per participant and course ...
    async with scratch_engine.begin() as conn:
        await conn.execute(registrations.insert(), [_registration(1, "booked")])
    for status in ("booked", "waiting_list", "provisional"):
        error = await _rejected(scratch_engine, registrations, _registration(2, status))
        assert isinstance(error, IntegrityError), status
    # ... while cancelled ones stay as history, any number of them.
    async with scratch_engine.begin() as conn:
        await conn.execute(
            registrations.insert(), [_registration(3, "cancelled"), _registration(4, "cancelled")]
        )
        cancelled = list(
            await conn.scalars(
                select(registrations.c.id)
                .where(registrations.c.status == "cancelled")
                .order_by(registrations.c.id)
            )
        )
    assert cancelled == [3, 4]
    # Cancelling the active one frees the slot for a new registration.
    async with scratch_engine.begin() as conn:
        await update_row(
            conn, registrations, 1, {"status": "cancelled", "cancelled_at": T0}, expected_version=1
        )
        await conn.execute(registrations.insert(), [_registration(5, "waiting_list")])

    # CHECK constraints (enforced by all three, MariaDB since 10.2).
    for bad in (
        _course(3, "252-40402", status="sold_out"),
        _course(4, "252-40403", min_participants=10, max_participants=8),
        _course(5, "252-40404", fee=Decimal("-1.00")),
        _course(6, "252-40405", publish=False, web_bookable=True),
        _course(7, "252-40406", registration_mode="first_come"),
    ):
        await _rejected(scratch_engine, courses, bad)
    await _rejected(scratch_engine, registrations, _registration(6, "booked", course_id=999))
    await _rejected(scratch_engine, registrations, _registration(7, "booked", fee_charged=None))

    # One default bank account per participant; one row per participant and IBAN (by its
    # keyed fingerprint, since the IBAN itself is stored only encrypted).
    cipher = BankCipher(SecretBox([generate_key()]))
    account = {
        "participant_id": 1,
        "account_holder": "Jürgen Weiß",
        **cipher.seal("DE89370400440532013000"),
        "is_default": True,
        "created_at": T0,
        "updated_at": T0,
    }
    second = {**account, "id": 2, **cipher.seal("DE02120300000000202051"), "is_default": False}
    async with scratch_engine.begin() as conn:
        await conn.execute(bank_accounts.insert(), [{**account, "id": 1}])
        await conn.execute(bank_accounts.insert(), [second])
    third = {**account, "id": 3, **cipher.seal("DE02100100100006820101")}
    error = await _rejected(scratch_engine, bank_accounts, third)
    assert isinstance(error, IntegrityError)
    same_iban = {**second, "id": 4, **cipher.seal("DE02 1203 0000 0000 2020 51")}
    error = await _rejected(scratch_engine, bank_accounts, same_iban)
    assert isinstance(error, IntegrityError)


async def test_updated_at_and_row_version_follow_every_update(
    scratch_engine: AsyncEngine,
) -> None:
    await drop_schema(scratch_engine)
    await create_schema(scratch_engine)
    async with scratch_engine.begin() as conn:
        await _base(conn)

    async def state() -> tuple[dt.datetime, int, str]:
        async with scratch_engine.connect() as conn:
            row = (
                await conn.execute(
                    select(courses.c.updated_at, courses.c.row_version, courses.c.title).where(
                        courses.c.id == 1
                    )
                )
            ).one()
        return row.updated_at, row.row_version, row.title

    updated0, version0, _ = await state()
    assert (updated0, version0) == (T0, 1)

    async with scratch_engine.begin() as conn:
        version = await update_row(conn, courses, 1, {"title": "Spanisch A1 – Neu"})
    updated1, version1, title = await state()
    assert (version, version1, title) == (2, 2, "Spanisch A1 – Neu")
    assert updated1 > updated0 and updated1.tzinfo is not None

    # A plain Core UPDATE (no helper) maintains both as well, through the columns' onupdate.
    async with scratch_engine.begin() as conn:
        await conn.execute(courses.update().where(courses.c.id == 1).values(status="closed"))
    updated2, version2, _ = await state()
    assert version2 == 3 and updated2 >= updated1

    async with scratch_engine.begin() as conn:
        assert await touch(conn, courses, 1, expected_version=3) == 4
    with pytest.raises(StaleRowError) as stale:
        async with scratch_engine.begin() as conn:
            await update_row(conn, courses, 1, {"status": "open"}, expected_version=3)
    assert (stale.value.expected, stale.value.actual) == (3, 4)
    with pytest.raises(RowNotFoundError):
        async with scratch_engine.begin() as conn:
            await update_row(conn, courses, 999, {"status": "open"})
    with pytest.raises(ValueError, match="managed"):
        async with scratch_engine.begin() as conn:
            await update_row(conn, courses, 1, {"row_version": 1})
    assert (await state())[1] == 4


async def test_types_round_trip_identically(scratch_engine: AsyncEngine) -> None:
    await drop_schema(scratch_engine)
    await create_schema(scratch_engine)
    deadline = dt.datetime(2025, 9, 30, 21, 59, 0, 123456, tzinfo=dt.UTC)
    async with scratch_engine.begin() as conn:
        await _base(conn)
        await conn.execute(
            courses.insert(),
            [_course(2, "252-40402", fee=Decimal("49.9"), registration_deadline=deadline)],
        )
    async with scratch_engine.connect() as conn:
        row = (await conn.execute(select(courses).where(courses.c.id == 2))).one()
    assert row.fee == Decimal("49.90") and isinstance(row.fee, Decimal)
    assert str(row.fee) == "49.90"
    assert row.registration_deadline == deadline  # microseconds kept, zone UTC
    assert row.registration_deadline.utcoffset() == dt.timedelta(0)
    assert row.publish is True and row.web_bookable is True

    # A naive datetime would be a guess about its zone: refused before it reaches the database.
    with pytest.raises(Exception, match="naive"):
        async with scratch_engine.begin() as conn:
            await conn.execute(
                courses.update().where(courses.c.id == 2).values(created_at=dt.datetime(2025, 1, 1))
            )


async def test_sqlite_engine_enforces_foreign_keys_and_uses_wal(sqlite_file_url: str) -> None:
    engine = create_engine(sqlite_file_url)
    try:
        path = sqlite_file(sqlite_file_url)
        assert path is not None and path.parent.is_dir()  # the directory was created
        await create_schema(engine)
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    rooms.insert(), [{"location_id": 42, "name": "Nirgendwo", "capacity": 5}]
                )
    finally:
        await engine.dispose()
