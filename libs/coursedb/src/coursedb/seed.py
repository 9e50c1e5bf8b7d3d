"""Realistic German demo data for the course database, deterministic and streamed in batches.

``seed(engine, courses=N, participants=M, seed=S, today=D)`` fills an empty coursedb with a
Volkshochschule's programme in Freiburg im Breisgau: semesters of history up to the next semester,
courses per Fachbereich with sessions, lecturers and discounts, participants with valid German
IBANs, web orders and registrations in every status. Courses before ``today`` are finished (or
cancelled), courses around it open, closed, full or past their registration deadline, the next
semester partly still planned.

The same ``seed``, sizes and ``today`` give the same rows (ids included) on every backend: all
randomness comes from one ``random.Random`` and one seeded ``Faker('de_DE')``, consumed in a
fixed order, and ids are assigned here rather than by the database.

Scale: rows are generated per batch of courses and written with executemany (one transaction per
batch); only the current batch and a few arrays about participants (their default bank account)
are in memory, so 100k courses need no more memory than 1k.

It must not be used on a database with data in it (``reset=True`` drops and recreates the
schema), must not read settings, and must not log personal data.
"""

# German typography: titles use the en dash (U+2013), as in "Spanisch A1 - Einstieg".
# ruff: noqa: RUF001

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import time
import unicodedata
from array import array
from bisect import bisect
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coursedb import catalogue as cat
from coursedb import schema
from coursedb.banking import BankCipher
from coursedb.engine import create_schema, drop_schema
from coursedb.iban import german_iban
from coursedb.schema import (
    ALL_TABLES,
    CourseStatus,
    OrderStatus,
    PaymentMethod,
    RegistrationMode,
    RegistrationStatus,
    bank_accounts,
    categories,
    course_discounts,
    course_lecturers,
    course_sessions,
    courses,
    lecturers,
    locations,
    orders,
    participants,
    registrations,
    rooms,
    semesters,
)

if TYPE_CHECKING:
    from faker import Faker

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC

#: Courses per semester in the generated history (a large VHS); N courses span N/3500 semesters.
COURSES_PER_SEMESTER = 3500
PARTICIPANT_BATCH = 5000

Rows = dict[Table, list[dict[str, Any]]]
Progress = Callable[[str], None]

_CENT = Decimal("0.01")
_HALF = Decimal("0.5")
_HOLIDAYS = ((12, 22), (1, 6))  # no sessions between 22 Dec and 6 Jan
_EVENING = (dt.time(17, 30), dt.time(18, 0), dt.time(18, 30), dt.time(19, 0), dt.time(19, 30))
_MORNING = (dt.time(9, 0), dt.time(9, 30), dt.time(10, 0))
_SUBTITLES = (
    "Für Einsteigerinnen und Einsteiger",
    "Für Fortgeschrittene",
    "Mit Vorkenntnissen",
    "Auch für Seniorinnen und Senioren geeignet",
    "In kleiner Gruppe",
)
_LEVEL_WEIGHTS = (("A1", 35), ("A2", 25), ("B1", 20), ("B2", 13), ("C1", 7))
_MODE_WEIGHTS = (
    (RegistrationMode.DIRECT, 50),
    (RegistrationMode.WAITING_LIST, 30),
    (RegistrationMode.PROVISIONAL, 10),
    (RegistrationMode.ON_REQUEST, 10),
)
_DISCOUNT_VALUES = {
    "student": (20, 25, 50),
    "pensioner": (10, 15),
    "jobseeker": (25, 50),
    "disability": (25, 50),
    "social_pass": (50, 75),
    "early_booking": (5, 10),
}
_ASCII = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", " ": "", "'": ""}
)


class SeedError(RuntimeError):
    """The database cannot be seeded as asked (e.g. it already holds courses)."""


@dataclass
class SeedReport:
    """What a seed run wrote and how long it took."""

    counts: dict[str, int]
    seconds: float

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


async def seed(
    engine: AsyncEngine,
    *,
    courses: int,
    participants: int | None = None,
    seed: int = 1,
    today: dt.date | None = None,
    reset: bool = False,
    batch_size: int = 1000,
    progress: Progress | None = None,
    bank_cipher: BankCipher | None = None,
) -> SeedReport:
    """Fill the coursedb behind ``engine`` with ``courses`` courses and ``participants`` people.

    Bank accounts are stored with the IBAN encrypted by ``bank_cipher`` (default:
    ``BankCipher.from_env()``, i.e. ``MESH_SECRET_KEY``), see :mod:`coursedb.banking`.
    ``participants`` defaults to ``max(100, courses // 2)``; ``today`` (default: the current UTC
    date) anchors which courses are past, running and upcoming. ``reset`` drops and recreates the
    schema first; otherwise the schema is created if missing and must hold no courses.
    """
    if courses < 1:
        raise ValueError("courses must be at least 1")
    if participants is not None and participants < 1:
        raise ValueError("participants must be at least 1")
    report = progress or (lambda _message: None)
    started = time.perf_counter()

    if reset:
        await drop_schema(engine)
    await create_schema(engine)
    async with engine.connect() as conn:
        existing = await conn.scalar(select(func.count()).select_from(schema.courses))
    if existing:
        raise SeedError(f"the coursedb already holds {existing} courses; seed with reset=True")

    generator = _Generator(
        cipher=bank_cipher or BankCipher.from_env(),
        courses=courses,
        participants=participants if participants is not None else max(100, courses // 2),
        seed=seed,
        today=today or dt.datetime.now(UTC).date(),
        batch_size=batch_size,
    )
    counts: Counter[str] = Counter()
    sqlite = engine.dialect.name == "sqlite"

    # One connection for the whole load, one transaction per batch.
    async with engine.connect() as conn:
        if sqlite:
            # A bulk load need not survive a power cut (it would be re-run), so SQLite skips
            # its fsyncs meanwhile (measured: 10-20% of the write time). Restored below.
            await _sqlite_pragma(conn, "synchronous = OFF")

        async def write(rows: Rows) -> None:
            async with conn.begin():
                for table in ALL_TABLES:  # parents before children
                    batch = rows.get(table)
                    if batch:
                        await insert_many(conn, table, batch)
                        counts[table.name] += len(batch)

        try:
            await write(generator.reference_rows())
            report(
                f"reference data: {generator.n_semesters} semesters, "
                f"{len(generator.subs)} subcategories, {counts['rooms']} rooms, "
                f"{counts['lecturers']} lecturers"
            )
            for rows in generator.participant_batches():
                await write(rows)
                report(f"participants {counts['participants']}/{generator.n_participants}")
            for rows in generator.course_batches():
                await write(rows)
                elapsed = time.perf_counter() - started
                report(
                    f"courses {counts['courses']}/{courses}  "
                    f"({sum(counts.values()) / elapsed:,.0f} rows/s overall)"
                )
            if engine.dialect.name == "postgresql":
                async with conn.begin():
                    await _advance_sequences(conn)
        finally:
            if sqlite:
                await _sqlite_pragma(conn, "synchronous = NORMAL")

    return SeedReport(counts=dict(counts), seconds=time.perf_counter() - started)


async def _sqlite_pragma(conn: AsyncConnection, pragma: str) -> None:
    # Straight to the driver: SQLAlchemy would open a transaction first, and SQLite refuses
    # to change the safety level inside one.
    raw = await conn.get_raw_connection()
    await raw.driver_connection.execute(f"PRAGMA {pragma}")  # type: ignore[union-attr]


async def _advance_sequences(conn: AsyncConnection) -> None:
    """Ids were assigned by the seed, so PostgreSQL's serial sequences still stand at 1."""
    for table in ALL_TABLES:
        if "id" in table.c and table.c.id.primary_key:
            # Table names come from our own metadata, never from input.
            await conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "  # noqa: S608
                    f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false)"
                )
            )


async def insert_many(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """executemany of ``rows`` (dicts with the same keys) into ``table``, for bulk loads.

    Stores exactly what ``conn.execute(table.insert(), rows)`` would: the INSERT is compiled by
    SQLAlchemy for the connection's dialect, and every value passes through its column type's own
    bind processor (UTC conversion, decimal handling, SQLite's date formats). What is skipped is
    SQLAlchemy's generic per-row parameter bookkeeping, which at these volumes costs more than
    SQLite's own work (measured on a 10k-course seed: about 40% less CPU for the writes on
    SQLite, about 20% less time on PostgreSQL and MariaDB). Python-side column defaults are not
    applied, so the rows must give those columns (checked). A test compares both paths.
    """
    dialect = conn.dialect
    names = list(rows[0])
    missing = [
        column.name
        for column in table.c
        if column.name not in rows[0] and column.computed is None and column.default is not None
    ]
    if missing:
        raise ValueError(f"{table.name}: rows must give the defaulted columns {missing}")
    compiled = table.insert().compile(dialect=dialect, column_keys=names)
    order = list(compiled.positiontup or ())
    if sorted(order) != sorted(names):  # a named paramstyle: let SQLAlchemy bind by name
        await conn.execute(table.insert(), rows)
        return
    processors = [
        (index, processor)
        for index, name in enumerate(order)
        if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
    ]
    values = itemgetter(*order)
    params: list[tuple[Any, ...]] = []
    for row in rows:
        record = list(values(row)) if len(order) > 1 else [values(row)]
        for index, processor in processors:
            record[index] = processor(record[index])
        params.append(tuple(record))
    await conn.exec_driver_sql(compiled.string, params)


# --------------------------------------------------------------------------------------------
# Generation (pure Python, no I/O)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Semester:
    id: int
    code: str
    name: str
    starts_on: dt.date
    ends_on: dt.date
    teach_start: dt.date  # first possible session
    teach_end: dt.date  # last possible session
    is_next: bool  # the programme after the current one: partly still being planned


@dataclass(frozen=True, slots=True)
class _Room:
    id: int
    location_id: int
    kind: str
    capacity: int


@dataclass(slots=True)
class _Order:
    row: dict[str, Any]
    semester_id: int
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (course no., reg)


@dataclass(slots=True)
class _Batch:
    """Rows of one batch of courses, and the web orders they produced."""

    rows: Rows = field(default_factory=lambda: {table: [] for table in ALL_TABLES})
    orders: list[_Order] = field(default_factory=list)
    baskets: dict[int, _Order] = field(default_factory=dict)  # participant -> latest order


def _semester_key(day: dt.date) -> tuple[int, int]:
    """(year, half) of the semester containing ``day``; January belongs to the autumn before."""
    if 2 <= day.month <= 7:
        return day.year, 1
    if day.month >= 8:
        return day.year, 2
    return day.year - 1, 2


def _shift(key: tuple[int, int], by: int) -> tuple[int, int]:
    index = key[0] * 2 + (key[1] - 1) + by
    return index // 2, index % 2 + 1


def _utc(day: dt.date, at: dt.time) -> dt.datetime:
    return dt.datetime.combine(day, at, BERLIN).astimezone(UTC)


def _in_holidays(day: dt.date) -> bool:
    (m1, d1), (m2, d2) = _HOLIDAYS
    return (day.month, day.day) >= (m1, d1) or (day.month, day.day) <= (m2, d2)


def _ascii(name: str) -> str:
    name = name.translate(_ASCII)
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def _money(value: float) -> Decimal:
    """Round a fee to 50 cents, as centres print them (89,00 / 124,50)."""
    halves = (Decimal(str(value)) / _HALF).quantize(Decimal(1), ROUND_HALF_UP)
    return (halves * _HALF).quantize(_CENT)


class _Generator:
    """Produces the rows, batch by batch, from one random stream."""

    def __init__(
        self,
        *,
        cipher: BankCipher,
        courses: int,
        participants: int,
        seed: int,
        today: dt.date,
        batch_size: int,
    ) -> None:
        self.cipher = cipher
        self.n_courses = courses
        self.n_participants = participants
        self.batch_size = max(1, batch_size)
        self.today = today
        # Everything generated lies before the start of "today" (UTC), so a change-detection
        # cursor taken after seeding never sees seeded rows as new.
        self.now = dt.datetime.combine(today, dt.time(0, 0), UTC)
        self.rng = random.Random(seed)
        from faker import Faker  # slow to import: only when data is generated

        self.fake: Faker = Faker("de_DE")
        self.fake.seed_instance(seed)
        self._next_id: Counter[str] = Counter()

        self.n_semesters = max(3, math.ceil(courses / COURSES_PER_SEMESTER))
        current = _semester_key(today)
        self.semesters = [
            self._semester(i + 1, _shift(current, i - (self.n_semesters - 2)))
            for i in range(self.n_semesters)
        ]
        self.history_start = dt.datetime.combine(self.semesters[0].starts_on, dt.time(), UTC)

        self.fbs = {fb.code: fb for fb in cat.FACHBEREICHE}
        self.subs = [sub for fb in cat.FACHBEREICHE for sub in fb.subcategories]
        self._sub_cum = list(accumulate(sub.weight for sub in self.subs))
        self.category_id: dict[str, int] = {}
        self.rooms_by_kind: dict[str, list[_Room]] = {}
        self.meeting_point_id = 0
        self.lecturers_by_sub: dict[str, list[int]] = {sub.code: [] for sub in self.subs}
        self._bank_cum = list(accumulate(bank[3] for bank in cat.BANKS))
        self._mode_cum = list(accumulate(w for _, w in _MODE_WEIGHTS))
        self._level_cum = list(accumulate(w for _, w in _LEVEL_WEIGHTS))
        # Per participant (index = id): the default bank account's id, 0 = none.
        self.default_account = array("l", [0]) * (participants + 1)
        self._regulars = max(1, participants // 10)  # the ten percent who book most

    # -- helpers ---------------------------------------------------------------------------

    def _id(self, table: Table) -> int:
        self._next_id[table.name] += 1
        return self._next_id[table.name]

    def _between(self, start: dt.datetime, end: dt.datetime) -> dt.datetime:
        span = (end - start).total_seconds()
        return start + dt.timedelta(seconds=int(self.rng.random() * max(span, 0)))

    def _pick(self, cumulative: Sequence[float]) -> int:
        return bisect(cumulative, self.rng.random() * cumulative[-1])

    def _edited(self, created: dt.datetime, until: dt.datetime) -> tuple[dt.datetime, int]:
        """(updated_at, row_version) for a row created at ``created`` and edited some times."""
        until = min(until, self.now)
        if until <= created or self.rng.random() < 0.4:
            return created, 1
        return self._between(created, until), self.rng.randint(2, 6)

    def _semester(self, row_id: int, key: tuple[int, int]) -> _Semester:
        year, half = key
        code = f"{year % 100:02d}{half}"
        if half == 1:
            return _Semester(
                row_id,
                code,
                f"Frühjahrssemester {year}",
                dt.date(year, 2, 1),
                dt.date(year, 7, 31),
                dt.date(year, 2, 16),
                dt.date(year, 7, 20),
                row_id == self.n_semesters,
            )
        return _Semester(
            row_id,
            code,
            f"Herbstsemester {year}/{(year + 1) % 100:02d}",
            dt.date(year, 8, 1),
            dt.date(year + 1, 1, 31),
            dt.date(year, 9, 15),
            dt.date(year + 1, 1, 25),
            row_id == self.n_semesters,
        )

    def _person(self) -> tuple[str | None, str, str]:
        """(salutation, first name, last name)."""
        roll = self.rng.random()
        if roll < 0.52:
            return "ms", self.fake.first_name_female(), self.fake.last_name()
        if roll < 0.98:
            return "mr", self.fake.first_name_male(), self.fake.last_name()
        return "mx", self.fake.first_name(), self.fake.last_name()

    def _email(self, first: str, last: str, n: int) -> str:
        local = f"{_ascii(first)}.{_ascii(last)}"
        if self.rng.random() < 0.5:
            local += str(n % 100)
        return f"{local}@{self.rng.choice(cat.EMAIL_DOMAINS)}"

    def _phone(self) -> str | None:
        roll = self.rng.random()
        if roll < 0.45:
            return f"{cat.CITY_PHONE_PREFIX} {self.rng.randint(200000, 9999999)}"
        if roll < 0.9:
            return f"{self.rng.choice(cat.MOBILE_PREFIXES)} {self.rng.randint(1000000, 99999999)}"
        return None

    # -- reference data: semesters, categories, places, lecturers --------------------------

    def reference_rows(self) -> Rows:
        rows: Rows = {table: [] for table in ALL_TABLES}
        for sem in self.semesters:
            rows[semesters].append(
                {
                    "id": sem.id,
                    "code": sem.code,
                    "name": sem.name,
                    "starts_on": sem.starts_on,
                    "ends_on": sem.ends_on,
                }
            )
        for order, fb in enumerate(cat.FACHBEREICHE, start=1):
            fb_id = self._id(categories)
            self.category_id[fb.code] = fb_id
            rows[categories].append(
                {
                    "id": fb_id,
                    "parent_id": None,
                    "code": fb.code,
                    "name": fb.name,
                    "sort_order": order,
                }
            )
            for sub_order, sub in enumerate(fb.subcategories, start=1):
                sub_id = self._id(categories)
                self.category_id[sub.code] = sub_id
                rows[categories].append(
                    {
                        "id": sub_id,
                        "parent_id": fb_id,
                        "code": sub.code,
                        "name": sub.name,
                        "sort_order": sub_order,
                    }
                )

        created = self.history_start - dt.timedelta(days=365)
        for place in cat.PLACES:
            location_id = self._id(locations)
            rows[locations].append(
                {
                    "id": location_id,
                    "name": place.name,
                    "street": place.street,
                    "postcode": place.postcode,
                    "city": cat.CITY,
                    "accessible": place.accessible,
                    "created_at": created,
                    "updated_at": created,
                    "row_version": 1,
                }
            )
            if not place.rooms:
                self.meeting_point_id = location_id
            for name, kind, capacity in place.rooms:
                room = _Room(self._id(rooms), location_id, kind, capacity)
                self.rooms_by_kind.setdefault(kind, []).append(room)
                rows[rooms].append(
                    {
                        "id": room.id,
                        "location_id": location_id,
                        "name": name,
                        "capacity": capacity,
                    }
                )

        rows[lecturers] = self._lecturers()
        return rows

    def _lecturers(self) -> list[dict[str, Any]]:
        count = max(2 * len(self.subs), self.n_courses // 30)
        sub_cum = self._sub_cum
        out = []
        for i in range(count):
            lecturer_id = self._id(lecturers)
            # Two per subcategory first, so every subcategory can be taught.
            sub = self.subs[i // 2] if i < 2 * len(self.subs) else self.subs[self._pick(sub_cum)]
            self.lecturers_by_sub[sub.code].append(lecturer_id)
            salutation, first, last = self._person()
            created = self._between(
                self.history_start - dt.timedelta(days=5 * 365),
                self.history_start - dt.timedelta(days=120),
            )
            updated, version = self._edited(created, self.now)
            out.append(
                {
                    "id": lecturer_id,
                    "salutation": salutation,
                    "academic_title": "Dr." if self.rng.random() < 0.1 else None,
                    "first_name": first,
                    "last_name": last,
                    "email": self._email(first, last, lecturer_id),
                    "phone": self._phone(),
                    "created_at": created,
                    "updated_at": updated,
                    "row_version": version,
                }
            )
        return out

    # -- participants and bank accounts ----------------------------------------------------

    def participant_batches(self) -> Iterator[Rows]:
        rng, fake = self.rng, self.fake
        oldest = self.today.year - 88
        for start in range(1, self.n_participants + 1, PARTICIPANT_BATCH):
            people: list[dict[str, Any]] = []
            accounts: list[dict[str, Any]] = []
            for pid in range(start, min(start + PARTICIPANT_BATCH, self.n_participants + 1)):
                salutation, first, last = self._person()
                if rng.random() < 0.75:
                    street = f"{rng.choice(cat.CITY_STREETS)} {rng.randint(1, 120)}"
                    postcode, city = rng.choice(cat.CITY_POSTCODES), cat.CITY
                else:
                    street, postcode, city = fake.street_address(), fake.postcode(), fake.city()
                # Before the first course of the history opens for registration.
                created = self._between(
                    self.history_start - dt.timedelta(days=4 * 365),
                    self.history_start - dt.timedelta(days=120),
                )
                updated, version = self._edited(created, self.now)
                birth = dt.date(
                    rng.randint(oldest, self.today.year - 17),
                    rng.randint(1, 12),
                    rng.randint(1, 28),
                )
                people.append(
                    {
                        "id": pid,
                        "salutation": salutation,
                        "academic_title": "Dr." if rng.random() < 0.04 else None,
                        "first_name": first,
                        "last_name": last,
                        "birth_date": birth,
                        "street": street,
                        "postcode": postcode,
                        "city": city,
                        "country": "DE",
                        "email": self._email(first, last, pid) if rng.random() < 0.88 else None,
                        "phone": self._phone(),
                        "created_at": created,
                        "updated_at": updated,
                        "row_version": version,
                    }
                )
                roll = rng.random()
                n_accounts = 2 if roll < 0.08 else 1 if roll < 0.7 else 0
                ibans: list[str] = []
                for n in range(n_accounts):
                    blz, bic, bank_name, _ = cat.BANKS[self._pick(self._bank_cum)]
                    iban = german_iban(blz, f"{rng.randrange(10**6, 10**10):010d}")
                    if iban in ibans:
                        continue
                    ibans.append(iban)
                    account_id = self._id(bank_accounts)
                    is_default = n == 0
                    if is_default:
                        self.default_account[pid] = account_id
                    holder = (
                        f"{first} {last}"
                        if is_default or rng.random() < 0.5
                        else (f"{fake.first_name()} {last}")
                    )
                    mandate = rng.random() < (0.85 if is_default else 0.3)
                    accounts.append(
                        {
                            "id": account_id,
                            "participant_id": pid,
                            "account_holder": holder,
                            **self.cipher.seal(iban),
                            "bic": bic,
                            "bank_name": bank_name,
                            "mandate_reference": f"VHS-{pid:08d}-{n + 1}" if mandate else None,
                            "mandate_signed_on": created.date() if mandate else None,
                            "is_default": is_default,
                            "created_at": created,
                            "updated_at": created,
                            "row_version": 1,
                        }
                    )
            yield {participants: people, bank_accounts: accounts}

    def _participant(self) -> int:
        # Regulars (the first tenth) book far more often than the rest, as in a real centre.
        if self.rng.random() < 0.3:
            return self.rng.randint(1, self._regulars)
        return self.rng.randint(1, self.n_participants)

    def _distinct_participants(self, k: int) -> list[int]:
        k = min(k, self.n_participants)
        chosen: dict[int, None] = {}  # ordered, so the result does not depend on hashing
        while len(chosen) < k:
            chosen[self._participant()] = None
        return list(chosen)

    # -- courses and everything hanging off them --------------------------------------------

    def course_batches(self) -> Iterator[Rows]:
        per_semester, extra = divmod(self.n_courses, self.n_semesters)
        for index, sem in enumerate(self.semesters):
            # The newest semesters get the remainder: a growing programme.
            count = per_semester + (1 if index >= self.n_semesters - extra else 0)
            sequence: Counter[str] = Counter()
            done = 0
            while done < count:
                size = min(self.batch_size, count - done)
                batch = _Batch()
                for _ in range(size):
                    self._course(sem, sequence, batch)
                self._finish_orders(batch)
                done += size
                yield batch.rows

    def _title(self, sub: cat.Subcategory) -> tuple[str, str | None]:
        rng = self.rng
        if sub.titles == ("{lang}",):
            if sub.code == "406":
                language = rng.choice(cat.OTHER_LANGUAGES)
            else:
                language = sub.name.split()[0]
            level = _LEVEL_WEIGHTS[self._pick(self._level_cum)][0]
            variant = rng.choice(cat.LANGUAGE_LEVELS[level])
            return f"{language} {level} – {variant}", f"Niveau {level} (GER)"
        title = rng.choice(sub.titles)
        return title, rng.choice(_SUBTITLES) if rng.random() < 0.3 else None

    def _sessions(
        self, sem: _Semester, sub: cat.Subcategory, title: str
    ) -> tuple[list[dt.date], dt.time, int]:
        rng = self.rng
        minutes = rng.choice(sub.minutes)
        wanted = rng.randint(*sub.sessions)
        if minutes >= 300:
            weekday, start = (
                (5 if rng.random() < 0.8 else 6),
                rng.choice((dt.time(9, 30), dt.time(10, 0))),
            )
        elif "Morgen" in title or "Vormittag" in title or rng.random() < 0.18:
            weekday, start = rng.randint(0, 4), rng.choice(_MORNING)
        else:
            weekday = rng.randint(0, 4)
            start = rng.choice(_EVENING[:3] if minutes > 120 else _EVENING)
        teaching_days = (sem.teach_end - sem.teach_start).days
        latest_first = max(0, teaching_days - 7 * (wanted - 1))
        day = sem.teach_start + dt.timedelta(days=rng.randint(0, min(latest_first, 240)))
        day += dt.timedelta(days=(weekday - day.weekday()) % 7)
        dates: list[dt.date] = []
        while len(dates) < wanted and day <= sem.teach_end:
            if not _in_holidays(day):
                dates.append(day)
            day += dt.timedelta(days=7)
        if not dates:  # the weekday fell just past the end: take the last teaching day
            dates.append(sem.teach_end)
        return dates, start, minutes

    def _room(self, sub: cat.Subcategory, wanted: int) -> tuple[int | None, int | None, int]:
        """(location id, room id, max participants) for a course of ``sub``."""
        if not sub.room_kinds:
            return self.meeting_point_id, None, wanted
        candidates = [r for kind in sub.room_kinds for r in self.rooms_by_kind.get(kind, ())]
        fitting = [r for r in candidates if r.capacity >= wanted]
        if fitting:
            room = self.rng.choice(fitting)
            return room.location_id, room.id, wanted
        room = max(candidates, key=lambda r: r.capacity)
        return room.location_id, room.id, room.capacity

    def _course(self, sem: _Semester, sequence: Counter[str], batch: _Batch) -> None:
        rng, rows = self.rng, batch.rows
        sub = self.subs[self._pick(self._sub_cum)]
        fb = self.fbs[sub.code[0]]
        course_id = self._id(courses)
        sequence[sub.code] += 1
        seq = sequence[sub.code]
        number = f"{sem.code}-{sub.code}{seq:02d}"  # 3 digits once past 99: still unique

        title, subtitle = self._title(sub)
        dates, start, minutes = self._sessions(sem, sub, title)
        end = (dt.datetime.combine(dt.date.min, start) + dt.timedelta(minutes=minutes)).time()
        units = Decimal(len(dates) * minutes / 45).quantize(Decimal("0.1"), ROUND_HALF_UP)
        rate = rng.uniform(*sub.rate)
        fee = _money(min(max(float(units) * rate, sub.fee_floor), sub.fee_cap))

        online = sub.code[0] in "45" and rng.random() < 0.07
        wanted_max = rng.randint(*sub.max_participants)
        if online:
            location_id, room_id, max_p = None, None, wanted_max
            subtitle = "Online-Kurs – die Zugangsdaten erhalten Sie per E-Mail"
        else:
            location_id, room_id, max_p = self._room(sub, wanted_max)
        min_p = min(sub.min_participants, max_p)

        first_start = _utc(dates[0], start)
        last_end = _utc(dates[-1], end)
        created = min(
            _utc(sem.starts_on - dt.timedelta(days=rng.randint(40, 100)), dt.time(9, 0))
            + dt.timedelta(seconds=rng.randint(0, 8 * 3600)),
            self.now - dt.timedelta(days=rng.randint(1, 30)),
        )

        status = self._status(sem, dates)
        mode = _MODE_WEIGHTS[self._pick(self._mode_cum)][0]
        deadline = None
        if rng.random() < 0.5:
            deadline = _utc(dates[0] - dt.timedelta(days=rng.randint(0, 7)), dt.time(23, 59))
        if (
            status == CourseStatus.OPEN
            and first_start > self.now
            and not sem.is_next
            and rng.random() < 0.1
        ):
            # Registration closed early although the course is still ahead (places reserved
            # for a partner, Bildungsurlaub paperwork ...): "Anmeldeschluss abgelaufen".
            deadline = max(
                created + dt.timedelta(hours=1), self.now - dt.timedelta(days=rng.randint(1, 10))
            )
        publish = status != CourseStatus.PLANNED and rng.random() < 0.95
        web_bookable = publish and rng.random() < 0.88
        updated, version = self._edited(created, last_end + dt.timedelta(days=14))

        rows[courses].append(
            {
                "id": course_id,
                "number": number,
                "semester_id": sem.id,
                "category_id": self.category_id[sub.code],
                "title": title,
                "subtitle": subtitle,
                "summary": rng.choice(fb.summaries).format(title=title),
                "description": self._description(fb, title, len(dates), units, min_p),
                "notes": (rng.choice(sub.notes) or None) if sub.notes else None,
                "fee": fee,
                "teaching_units": units,
                "min_participants": min_p,
                "max_participants": max_p,
                "status": status.value,
                "registration_mode": mode.value,
                "registration_deadline": deadline,
                "publish": publish,
                "web_bookable": web_bookable,
                "location_id": location_id,
                "room_id": room_id,
                "created_at": created,
                "updated_at": updated,
                "row_version": version,
            }
        )
        for day in dates:
            rows[course_sessions].append(
                {
                    "id": self._id(course_sessions),
                    "course_id": course_id,
                    "session_date": day,
                    "start_time": start,
                    "end_time": end,
                    "room_id": room_id,
                    "note": None,
                }
            )
        pool = self.lecturers_by_sub[sub.code]
        for order, lecturer_id in enumerate(rng.sample(pool, 2 if rng.random() < 0.1 else 1)):
            rows[course_lecturers].append(
                {
                    "course_id": course_id,
                    "lecturer_id": lecturer_id,
                    "sort_order": order,
                }
            )
        discounts = self._discounts(course_id, fee, rows)

        window_end = min(first_start, deadline or first_start, self.now)
        course = _CourseFacts(
            id=course_id,
            number=number,
            semester_id=sem.id,
            status=status,
            mode=mode,
            fee=fee,
            discounts=discounts,
            min_p=min_p,
            max_p=max_p,
            web_bookable=web_bookable,
            future=first_start > self.now,
            window=(created + dt.timedelta(days=1), window_end),
            cancel_before=min(first_start, self.now),
        )
        self._registrations(course, batch)

    def _status(self, sem: _Semester, dates: list[dt.date]) -> CourseStatus:
        roll = self.rng.random()
        if dates[-1] < self.today:
            return CourseStatus.FINISHED if roll < 0.88 else CourseStatus.CANCELLED
        if dates[0] <= self.today:  # running
            if roll < 0.4:
                return CourseStatus.OPEN
            return CourseStatus.CLOSED if roll < 0.96 else CourseStatus.CANCELLED
        if sem.is_next and roll < 0.35:
            return CourseStatus.PLANNED
        if roll < 0.9:
            return CourseStatus.OPEN
        return CourseStatus.CLOSED if roll < 0.93 else CourseStatus.CANCELLED

    def _description(
        self, fb: cat.Fachbereich, title: str, sessions: int, units: Decimal, min_p: int
    ) -> str:
        rng = self.rng
        units_text = f"{units:.1f}".replace(".", ",").removesuffix(",0")
        parts = [
            rng.choice(fb.summaries).format(title=title),
            *rng.sample(fb.sentences, 2),
            f"Der Kurs umfasst {sessions} Termin{'e' if sessions > 1 else ''} "
            f"({units_text} Unterrichtseinheiten) und findet ab {min_p} Teilnehmenden statt.",
        ]
        return " ".join(parts)

    def _discounts(
        self, course_id: int, fee: Decimal, rows: Rows
    ) -> list[tuple[int, Decimal, Decimal | None, Decimal | None]]:
        """Insert the course's discounts; return (id, discounted fee, percent, amount)."""
        out: list[tuple[int, Decimal, Decimal | None, Decimal | None]] = []
        if fee < 20:  # talks and guided tours cost too little to discount
            return out
        for kind, label, how, probability in cat.DISCOUNTS:
            if self.rng.random() >= probability:
                continue
            value = Decimal(self.rng.choice(_DISCOUNT_VALUES[kind]))
            discount_id = self._id(course_discounts)
            if how == "percent":
                percent, amount = value.quantize(_CENT), None
                reduced = (fee * (100 - value) / 100).quantize(_CENT, ROUND_HALF_UP)
            else:
                percent, amount = None, value.quantize(_CENT)
                reduced = max(fee - value, Decimal(0)).quantize(_CENT)
            rows[course_discounts].append(
                {
                    "id": discount_id,
                    "course_id": course_id,
                    "kind": kind,
                    "label": label,
                    "percent_off": percent,
                    "amount_off": amount,
                }
            )
            out.append((discount_id, reduced, percent, amount))
        return out

    def _registrations(self, c: _CourseFacts, batch: _Batch) -> None:
        rng, rows = self.rng, batch.rows
        start, end = c.window
        if c.status == CourseStatus.PLANNED or end <= start:
            return
        seats = waiting = history = 0
        if c.status == CourseStatus.CANCELLED:
            seats = rng.randint(0, max(0, c.min_p - 1))
        elif c.status == CourseStatus.FINISHED:
            seats = rng.randint(c.min_p, c.max_p)
        else:
            fill = rng.random() * 1.35
            seats = c.max_p if fill >= 1 else round(fill * c.max_p)
            if c.status == CourseStatus.CLOSED:
                seats = max(seats, c.min_p)
            if seats == c.max_p and c.mode == RegistrationMode.WAITING_LIST:
                waiting = rng.randint(1, 5)
            if c.mode == RegistrationMode.ON_REQUEST and c.future:
                waiting = rng.randint(0, 4)  # requests the centre has not decided yet
                seats //= 2
        if c.status != CourseStatus.CANCELLED:
            history = rng.choice((0, 0, 0, 1, 1, 2))

        people = self._distinct_participants(seats + waiting + history)
        entries: list[list[Any]] = []  # [registered_at, participant, order | None, cancelled?]
        cancelled_slots = set(rng.sample(range(len(people)), min(history, len(people))))
        for i, pid in enumerate(people):
            at = self._between(start, end)
            order = None
            if c.web_bookable and rng.random() < 0.7:
                order, at = self._order_for(pid, at, c, batch)
            entries.append([at, pid, order, i in cancelled_slots])
        # Someone who cancelled sometimes registers again later (at the desk): both rows stay.
        for entry in entries:
            if entry[3] and rng.random() < 0.2:
                later = [e for e in entries if not e[3] and e[2] is None and e[0] > entry[0]]
                if later:
                    rng.choice(later)[1] = entry[1]
                    break
        entries.sort(key=lambda e: (e[0], e[1]))

        seat_count = 0
        cancel_time = (
            self._between(max(e[0] for e in entries), c.cancel_before) if entries else None
        )
        for at, pid, order, history_cancel in entries:
            fee: Decimal | None = None
            discount_id = None
            cancelled_at = None
            version = 1
            if c.status == CourseStatus.CANCELLED:
                status = RegistrationStatus.CANCELLED
                cancelled_at = cancel_time
            elif history_cancel:
                status = RegistrationStatus.CANCELLED
                cancelled_at = min(
                    at + dt.timedelta(hours=rng.randint(1, 240)), max(at, c.cancel_before)
                )
            elif seat_count < seats:
                seat_count += 1
                provisional = c.mode == RegistrationMode.PROVISIONAL and c.future
                status = (
                    RegistrationStatus.PROVISIONAL
                    if provisional and rng.random() < 0.6
                    else RegistrationStatus.BOOKED
                )
                fee = c.fee
                if c.discounts and rng.random() < 0.25:
                    discount_id, fee, _, _ = rng.choice(c.discounts)
            else:
                status = RegistrationStatus.WAITING_LIST
            if cancelled_at is not None:
                version = 2
            row = {
                "id": self._id(registrations),
                "course_id": c.id,
                "participant_id": pid,
                "order_id": order.row["id"] if order else None,
                "status": status.value,
                "registered_at": at,
                "cancelled_at": cancelled_at,
                "fee_charged": fee,
                "discount_id": discount_id,
                "created_at": at,
                "updated_at": cancelled_at or at,
                "row_version": version,
            }
            rows[registrations].append(row)
            if order is not None:
                order.items.append((c.number, row))

        # Orders that never became registrations: refused because full, or still pending.
        if c.web_bookable and c.future and c.status == CourseStatus.OPEN:
            if seat_count >= c.max_p and c.mode == RegistrationMode.DIRECT and rng.random() < 0.3:
                self._lone_order(c, OrderStatus.FAILED, self._between(start, end), rows)
            if rng.random() < 0.02:
                pending_at = self.now - dt.timedelta(minutes=rng.randint(2, 90))
                self._lone_order(c, OrderStatus.RECEIVED, pending_at, rows)

    def _order_for(
        self, pid: int, at: dt.datetime, c: _CourseFacts, batch: _Batch
    ) -> tuple[_Order, dt.datetime]:
        """The web order a registration belongs to: the participant's basket or a new one."""
        basket = batch.baskets.get(pid)
        if (
            basket is not None
            and basket.semester_id == c.semester_id
            and c.window[0] <= basket.row["received_at"] <= c.window[1]
            and self.rng.random() < 0.35
        ):
            return basket, basket.row["received_at"]
        order = _Order(self._order_row(pid, at, OrderStatus.PROCESSED), c.semester_id)
        batch.orders.append(order)
        batch.baskets[pid] = order
        return order, at

    def _order_row(self, pid: int, at: dt.datetime, status: OrderStatus) -> dict[str, Any]:
        rng = self.rng
        order_id = self._id(orders)
        account = self.default_account[pid]
        sepa = account and rng.random() < 0.75
        if status == OrderStatus.RECEIVED:
            processed = None
        elif rng.random() < 0.03:  # arrived while the link was down: booked later
            processed = min(at + dt.timedelta(minutes=rng.randint(10, 360)), self.now)
        else:
            processed = min(at + dt.timedelta(seconds=rng.randint(1, 8)), self.now)
        return {
            "id": order_id,
            "external_order_id": f"W{at.year}-{order_id:08d}",
            "participant_id": pid,
            "received_at": at,
            "processed_at": processed,
            "status": status.value,
            "status_detail": None,
            "payment_method": (PaymentMethod.SEPA if sepa else PaymentMethod.INVOICE).value,
            "bank_account_id": account if sepa else None,
            "total_amount": None,
            "payload_hash": "",
            "created_at": at,
            "updated_at": processed or at,
            "row_version": 1,
        }

    def _lone_order(
        self, c: _CourseFacts, status: OrderStatus, at: dt.datetime, rows: Rows
    ) -> None:
        row = self._order_row(self._participant(), at, status)
        row["status_detail"] = (
            "Kurs ausgebucht – keine Plätze frei"
            if status == OrderStatus.FAILED
            else "Verbuchung ausstehend"
        )
        row["payload_hash"] = _payload_hash(row, [(c.number, None)])
        rows[orders].append(row)

    def _finish_orders(self, batch: _Batch) -> None:
        """Totals, final status and payload hash, once all registrations of the batch exist."""
        for order in batch.orders:
            row = order.row
            regs = [reg for _, reg in order.items]
            row["total_amount"] = sum(
                (reg["fee_charged"] for reg in regs if reg["fee_charged"] is not None),
                Decimal("0.00"),
            )
            if regs and all(reg["status"] == RegistrationStatus.CANCELLED for reg in regs):
                if self.rng.random() < 0.5:
                    row["status"] = OrderStatus.CANCELLED.value
                    row["updated_at"] = max(reg["cancelled_at"] for reg in regs)
                    row["row_version"] = 2
            row["payload_hash"] = _payload_hash(
                row, [(number, reg["fee_charged"]) for number, reg in order.items]
            )
            batch.rows[orders].append(row)


@dataclass(frozen=True, slots=True)
class _CourseFacts:
    """What registration generation needs to know about a course."""

    id: int
    number: str
    semester_id: int
    status: CourseStatus
    mode: RegistrationMode
    fee: Decimal
    discounts: list[tuple[int, Decimal, Decimal | None, Decimal | None]]
    min_p: int
    max_p: int
    web_bookable: bool
    future: bool
    window: tuple[dt.datetime, dt.datetime]  # when registrations can have happened
    cancel_before: dt.datetime


def _payload_hash(order: dict[str, Any], items: list[tuple[str, Decimal | None]]) -> str:
    """SHA-256 of the order as the web shop would have sent it (canonical JSON)."""
    payload = {
        "external_order_id": order["external_order_id"],
        "participant_id": order["participant_id"],
        "payment_method": order["payment_method"],
        "items": [
            {"course": number, "fee": str(fee) if fee is not None else None}
            for number, fee in items
        ],
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
