"""The demo data: consistent, realistic, deterministic, on SQLite, PostgreSQL and MariaDB."""

# German typography: course titles use the en dash (U+2013).
# ruff: noqa: RUF001

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from coursedb import catalogue
from coursedb.banking import BankCipher, mask
from coursedb.engine import create_engine, create_schema, drop_schema
from coursedb.iban import german_iban, iban_check_digits, iban_is_valid
from coursedb.schema import (
    ALL_TABLES,
    SEAT_HOLDING_STATUSES,
    bank_accounts,
    course_discounts,
    course_sessions,
    courses,
    orders,
    participants,
    registrations,
    rooms,
    semesters,
)
from coursedb.seed import SeedError, SeedReport, _Generator, insert_many, seed
from schwifty import IBAN
from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

# The arguments the shared dataset was seeded with (conftest.SEED_ARGS; test modules cannot
# import conftest under --import-mode=importlib).
SEED_ARGS: dict[str, Any] = {
    "courses": 150,
    "participants": 160,
    "seed": 11,
    "today": dt.date(2025, 10, 15),
}


async def _digest(engine: AsyncEngine) -> dict[str, str]:
    """A hash of every table's rows in primary-key order, values normalised across backends."""
    out = {}
    async with engine.connect() as conn:
        for table in ALL_TABLES:
            digest = hashlib.sha256()
            result = await conn.execute(select(table).order_by(*table.primary_key.columns))
            for row in result:
                # The IBAN ciphertext has a random nonce; its keyed fingerprint is deterministic.
                values = {k: v for k, v in row._mapping.items() if k != "iban_ciphertext"}
                digest.update(repr(tuple(values.values())).encode())
            out[table.name] = digest.hexdigest()
    return out


async def _rows(engine: AsyncEngine, stmt: Executable) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(stmt)]


async def test_counts_as_requested(
    seeded_engine: AsyncEngine, backend: str, seeded: Callable[[str], tuple[str, SeedReport]]
) -> None:
    _url, report = seeded(backend)
    assert report.counts["courses"] == SEED_ARGS["courses"], "conftest.SEED_ARGS changed?"
    async with seeded_engine.connect() as conn:
        counts: dict[str, int] = {
            table.name: await conn.scalar(select(func.count()).select_from(table)) or 0
            for table in ALL_TABLES
        }
    assert counts["courses"] == SEED_ARGS["courses"]
    assert counts["participants"] == SEED_ARGS["participants"]
    assert counts == {name: report.counts.get(name, 0) for name in counts}
    # Every course has sessions and a lecturer; most have registrations.
    assert counts["course_sessions"] >= counts["courses"]
    assert counts["course_lecturers"] >= counts["courses"]
    assert counts["registrations"] > 3 * counts["courses"]
    assert counts["semesters"] == 3  # previous, current, next


async def test_foreign_keys_hold(seeded_engine: AsyncEngine) -> None:
    """Every non-null foreign key value points at an existing row (checked, not assumed)."""
    async with seeded_engine.connect() as conn:
        for table in ALL_TABLES:
            for fk in table.foreign_keys:
                child = fk.parent
                parent_table = fk.column.table.alias("parent")  # categories refer to themselves
                parent = parent_table.c[fk.column.name]
                orphans = await conn.scalar(
                    select(func.count())
                    .select_from(table.outerjoin(parent_table, child == parent))
                    .where(child.is_not(None), parent.is_(None))
                )
                assert orphans == 0, f"{table.name}.{child.name} -> {fk.column.table.name}"


async def test_registrations_are_consistent(seeded_engine: AsyncEngine) -> None:
    # No course holds more seats than it has.
    seats = (
        select(registrations.c.course_id, func.count().label("taken"))
        .where(registrations.c.status.in_(sorted(SEAT_HOLDING_STATUSES)))
        .group_by(registrations.c.course_id)
        .subquery()
    )
    over = await _rows(
        seeded_engine,
        select(courses.c.number)
        .join(seats, seats.c.course_id == courses.c.id)
        .where(seats.c.taken > courses.c.max_participants),
    )
    assert over == []

    # A discount used by a registration belongs to that registration's course.
    foreign_discounts = await _rows(
        seeded_engine,
        select(registrations.c.id)
        .join(course_discounts, course_discounts.c.id == registrations.c.discount_id)
        .where(course_discounts.c.course_id != registrations.c.course_id),
    )
    assert foreign_discounts == []

    # An order's participant is the participant of each of its registrations; totals add up.
    mismatched = await _rows(
        seeded_engine,
        select(registrations.c.id)
        .join(orders, orders.c.id == registrations.c.order_id)
        .where(orders.c.participant_id != registrations.c.participant_id),
    )
    assert mismatched == []
    totals = (
        select(
            registrations.c.order_id,
            func.coalesce(func.sum(registrations.c.fee_charged), 0).label("fees"),
        )
        .where(registrations.c.order_id.is_not(None))
        .group_by(registrations.c.order_id)
        .subquery()
    )
    rows = await _rows(
        seeded_engine,
        select(orders.c.total_amount, totals.c.fees).join(totals, totals.c.order_id == orders.c.id),
    )
    assert rows and all(Decimal(total) == Decimal(str(fees)) for total, fees in rows)

    # Times are in order; bookings happen before the course starts and before "today".
    now = dt.datetime.combine(SEED_ARGS["today"], dt.time(), dt.UTC)
    async with seeded_engine.connect() as conn:
        result = await conn.execute(
            select(
                registrations.c.registered_at,
                registrations.c.cancelled_at,
                courses.c.created_at,
                courses.c.registration_deadline,
            ).join(courses, courses.c.id == registrations.c.course_id)
        )
        for registered, cancelled, created, deadline in result:
            assert created < registered <= now
            assert cancelled is None or registered <= cancelled <= now
            assert deadline is None or registered <= deadline

    # Sessions end after they start; rooms are big enough for the course.
    async with seeded_engine.connect() as conn:
        bad_sessions = await conn.scalar(
            select(func.count()).where(course_sessions.c.end_time <= course_sessions.c.start_time)
        )
        too_small = await conn.scalar(
            select(func.count())
            .select_from(courses.join(rooms, rooms.c.id == courses.c.room_id))
            .where(rooms.c.capacity < courses.c.max_participants)
        )
    assert bad_sessions == 0 and too_small == 0


async def test_course_numbers_and_texts_look_real(seeded_engine: AsyncEngine) -> None:
    rows = await _rows(
        seeded_engine,
        select(courses.c.number, semesters.c.code, courses.c.title, courses.c.fee).join(
            semesters, semesters.c.id == courses.c.semester_id
        ),
    )
    titles = set()
    for number, semester_code, title, fee in rows:
        assert re.fullmatch(r"\d{3}-[1-6]0[1-6]\d{2,}", number), number
        assert number.startswith(f"{semester_code}-")
        assert Decimal("8.00") <= fee <= Decimal("320.00")
        titles.add(title)
    language_titles = [t for t in titles if re.fullmatch(r"\w+ (A1|A2|B1|B2|C1) – .+", t)]
    assert language_titles, "no language course like 'Spanisch A1 – Einstieg'"
    fees = sorted(fee for *_, fee in rows)
    assert fees[len(fees) // 2] >= Decimal("49.00")  # typical courses, not only talks


async def test_statuses_and_modes_are_mixed(seeded_engine: AsyncEngine) -> None:
    async with seeded_engine.connect() as conn:
        course_statuses = set(await conn.scalars(select(courses.c.status).distinct()))
        modes = set(await conn.scalars(select(courses.c.registration_mode).distinct()))
        reg_statuses = set(await conn.scalars(select(registrations.c.status).distinct()))
        order_statuses = set(await conn.scalars(select(orders.c.status).distinct()))
        full = await conn.scalar(
            select(func.count()).select_from(
                select(courses.c.id)
                .join(registrations, registrations.c.course_id == courses.c.id)
                .where(
                    courses.c.status == "open",
                    registrations.c.status.in_(sorted(SEAT_HOLDING_STATUSES)),
                )
                .group_by(courses.c.id, courses.c.max_participants)
                .having(func.count() == courses.c.max_participants)
                .subquery()
            )
        )
        now = dt.datetime.combine(SEED_ARGS["today"], dt.time(), dt.UTC)
        deadline_passed = await conn.scalar(
            select(func.count())
            .select_from(courses.join(course_sessions, course_sessions.c.course_id == courses.c.id))
            .where(
                and_(
                    courses.c.status == "open",
                    courses.c.registration_deadline < now,
                    course_sessions.c.session_date > SEED_ARGS["today"],
                )
            )
        )
    assert course_statuses == {"planned", "open", "closed", "cancelled", "finished"}
    assert modes == {"direct", "waiting_list", "provisional", "on_request"}
    assert reg_statuses == {"booked", "waiting_list", "provisional", "cancelled"}
    assert {"processed", "cancelled"} <= order_statuses
    assert full and full > 0, "no full open course"
    assert deadline_passed and deadline_passed > 0, "no open course past its deadline"


async def test_ibans_are_stored_encrypted_valid_and_banks_real(seeded_engine: AsyncEngine) -> None:
    async with seeded_engine.connect() as conn:
        rows = [row._mapping for row in await conn.execute(select(bank_accounts))]
    assert len(rows) > SEED_ARGS["participants"] // 2
    cipher = BankCipher.from_env()
    for row in rows:
        iban = cipher.open(row)
        assert iban not in str(dict(row))  # no column holds the readable IBAN
        assert iban_is_valid(iban)
        parsed = IBAN(iban)  # schwifty: ISO 13616 check digits, German BBAN structure
        assert parsed.country_code == "DE" and len(iban) == 22
        assert parsed.bic is not None and str(parsed.bic) == row["bic"]
        assert row["iban_masked"] == mask(iban) and row["iban_masked"].endswith(
            iban[-4:-2] + " " + iban[-2:]
        )
        assert row["iban_fingerprint"] == cipher.fingerprint(iban)


def test_catalogue_banks_exist_in_the_bank_registry() -> None:
    for bank_code, bic, _name, _weight in catalogue.BANKS:
        parsed = IBAN(german_iban(bank_code, "0000123456"))
        assert str(parsed.bic) == bic, bank_code


def test_iban_check_digits_match_the_published_example() -> None:
    # The German example IBAN used in ISO 13616 / ECBS material.
    assert iban_check_digits("DE", "370400440532013000") == "89"
    assert german_iban("37040044", "532013000") == "DE89370400440532013000"
    assert iban_is_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_is_valid("DE88370400440532013000")
    assert not iban_is_valid("DE89370400440532013001")
    assert iban_is_valid("GB82WEST12345698765432")  # letters in the BBAN


async def test_same_seed_same_data_on_every_backend(
    backend: str,
    seeded_engine: AsyncEngine,
    database_url: Callable[[str, str], str],
    tmp_path: object,
) -> None:
    """Determinism: a second run with the same arguments reproduces every row, on any backend."""
    reference = create_engine(database_url("sqlite", f"determinism-{backend}"))
    other = create_engine(database_url("sqlite", f"other-seed-{backend}"))
    try:
        await seed(reference, reset=True, **SEED_ARGS)
        await seed(other, reset=True, **{**SEED_ARGS, "seed": 12})
        expected = await _digest(reference)
        assert await _digest(seeded_engine) == expected
        different = await _digest(other)
        assert different["courses"] != expected["courses"]
        assert different["participants"] != expected["participants"]
    finally:
        await reference.dispose()
        await other.dispose()


async def test_seed_refuses_a_database_with_courses(
    database_url: Callable[[str, str], str],
) -> None:
    engine = create_engine(database_url("sqlite", "refuse"))
    try:
        await seed(engine, courses=5, participants=10, today=dt.date(2025, 3, 1))
        with pytest.raises(SeedError):
            await seed(engine, courses=5, participants=10, today=dt.date(2025, 3, 1))
        report = await seed(engine, courses=7, participants=10, reset=True)
        assert report.counts["courses"] == 7
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(courses)) == 7
            assert await conn.scalar(select(func.count()).select_from(participants)) == 10
    finally:
        await engine.dispose()


async def test_bulk_insert_stores_what_core_insert_stores(scratch_engine: AsyncEngine) -> None:
    """``insert_many`` (the seed's fast path) and ``conn.execute(insert(), rows)`` agree."""
    generator = _Generator(
        cipher=BankCipher.from_env(),
        courses=40,
        participants=30,
        seed=5,
        today=dt.date(2026, 3, 2),
        batch_size=40,
    )
    batches = [
        generator.reference_rows(),
        *generator.participant_batches(),
        *generator.course_batches(),
    ]
    digests = []
    for fast in (True, False):
        await drop_schema(scratch_engine)
        await create_schema(scratch_engine)
        async with scratch_engine.begin() as conn:
            for rows in batches:
                for table in ALL_TABLES:
                    if rows.get(table):
                        if fast:
                            await insert_many(conn, table, rows[table])
                        else:
                            await conn.execute(table.insert(), rows[table])
        digests.append(await _digest(scratch_engine))
    assert digests[0] == digests[1]
    assert len(set(digests[0].values())) == len(ALL_TABLES)  # every table got rows
