"""Shared helpers of the booking tests: a small real coursedb, the service app, tokens, orders.

Every coursedb here is real: a SQLite file, or a throwaway PostgreSQL database created for the
test (``pg_database``) and dropped afterwards. Tests build exactly the courses they need
(``add_course``), so each check can fail for one reason only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from booking_service.app import create_app
from booking_service.context import Booking, booking_of
from booking_service.settings import Settings
from coursedb import schema as cdb
from coursedb.engine import create_engine, create_schema
from fastapi import FastAPI
from mesh_common.auth import mint_token
from mesh_common.testing.servers import PG_ADMIN_URL, require_server
from pydantic import SecretStr
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

SECRET = "booking-test-secret-" + "x" * 24
VALID_IBAN = "DE89370400440532013000"  # the standard German test IBAN (Commerzbank)
FUTURE = dt.date.today() + dt.timedelta(days=60)


def headers(role: str, *, sub: str = "alice", participant_id: int | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + token(role, sub=sub, participant_id=participant_id)}


def token(role: str, *, sub: str = "alice", participant_id: int | None = None) -> str:
    return mint_token(
        subject=sub,
        secret=SECRET,
        roles=[role],
        participant_id=str(participant_id) if participant_id is not None else None,
    )


SERVICE = {"Authorization": "Bearer " + mint_token(subject="web", secret=SECRET, roles=["service"])}
STAFF = {"Authorization": "Bearer " + mint_token(subject="desk", secret=SECRET, roles=["staff"])}


# ---------------------------------------------------------------------- coursedb fixtures


async def prepare_coursedb(url: str) -> AsyncEngine:
    """Create the coursedb tables and the reference rows every course needs."""
    engine = create_engine(url)
    await create_schema(engine)
    async with engine.begin() as conn:
        if await conn.scalar(select(func.count()).select_from(cdb.semesters)):
            return engine
        now = dt.datetime.now(dt.UTC)
        await conn.execute(
            insert(cdb.semesters).values(
                id=1,
                code="262",
                name="Herbstsemester 2026",
                starts_on=dt.date.today() - dt.timedelta(days=30),
                ends_on=dt.date.today() + dt.timedelta(days=200),
            )
        )
        await conn.execute(insert(cdb.categories).values(id=1, code="4", name="Sprachen"))
        await conn.execute(
            insert(cdb.locations).values(
                id=1,
                name="Volkshochschulhaus am Rotteckring",
                street="Rotteckring 12",
                postcode="79098",
                city="Freiburg",
                accessible=True,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(cdb.rooms).values(id=1, location_id=1, name="Raum 1.04", capacity=30)
        )
    return engine


async def add_course(
    engine: AsyncEngine,
    number: str,
    *,
    seats: int = 10,
    mode: str = "direct",
    status: str = "open",
    web_bookable: bool = True,
    fee: str = "129.00",
    deadline: dt.datetime | None = None,
    first_session: dt.datetime | None = None,
    sessions: int = 3,
    title: str = "Spanisch A1 \u2013 Einstieg",
    discounts: dict[str, str] | None = None,
) -> int:
    """A course with ``sessions`` weekly sessions from ``first_session`` (default: in 60 days,
    18:00 Berlin time)."""
    now = dt.datetime.now(dt.UTC)
    start = first_session or dt.datetime.combine(FUTURE, dt.time(18, 0))
    async with engine.begin() as conn:
        res = await conn.execute(
            insert(cdb.courses).values(
                number=number,
                semester_id=1,
                category_id=1,
                title=title,
                fee=Decimal(fee),
                min_participants=1,
                max_participants=seats,
                status=status,
                registration_mode=mode,
                registration_deadline=deadline,
                publish=True,
                web_bookable=web_bookable,
                location_id=1,
                room_id=1,
                created_at=now,
                updated_at=now,
            )
        )
        course_id = int(res.inserted_primary_key[0])
        for n in range(sessions):
            day = start + dt.timedelta(days=7 * n)
            await conn.execute(
                insert(cdb.course_sessions).values(
                    course_id=course_id,
                    session_date=day.date(),
                    start_time=day.time(),
                    end_time=(day + dt.timedelta(minutes=90)).time(),
                )
            )
        for kind, off in (discounts or {}).items():
            await conn.execute(
                insert(cdb.course_discounts).values(
                    course_id=course_id, kind=kind, label=f"ermäßigt ({kind})", percent_off=off
                )
            )
    return course_id


async def add_participant(
    engine: AsyncEngine,
    first: str = "Erika",
    last: str = "Mustermann",
    *,
    email: str | None = "erika@example.org",
    birth: dt.date | None = dt.date(1964, 8, 12),
) -> int:
    now = dt.datetime.now(dt.UTC)
    async with engine.begin() as conn:
        res = await conn.execute(
            insert(cdb.participants).values(
                salutation="ms",
                first_name=first,
                last_name=last,
                birth_date=birth,
                street="Heidestraße 17",
                postcode="79098",
                city="Freiburg",
                email=email,
                created_at=now,
                updated_at=now,
            )
        )
        return int(res.inserted_primary_key[0])


async def counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows of every table booking may write (to prove that nothing was written)."""
    out: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in (cdb.orders, cdb.registrations, cdb.participants, cdb.bank_accounts):
            out[table.name] = int(await conn.scalar(select(func.count()).select_from(table)) or 0)
    return out


async def registrations_of(engine: AsyncEngine, course_id: int) -> list[Any]:
    r = cdb.registrations
    async with engine.connect() as conn:
        return list(
            (await conn.execute(select(r).where(r.c.course_id == course_id).order_by(r.c.id))).all()
        )


# ---------------------------------------------------------------------- orders


def person(first: str = "Max", last: str = "Muster", **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "salutation": "mr",
        "first_name": first,
        "last_name": last,
        "birth_date": "1980-02-03",
        "email": f"{first.lower()}.{last.lower()}@example.org",
        "address": {"street": "Kaiser-Joseph-Straße 1", "postcode": "79098", "city": "Freiburg"},
    }
    data.update(over)
    return data


def order(
    order_id: str | None = None,
    courses: list[str] | tuple[str, ...] = ("262-40401",),
    *,
    people: list[dict[str, Any]] | None = None,
    mode: str = "direct",
    payment: dict[str, Any] | None = None,
    items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An order as the website sends it: by default one new person for the given courses."""
    participants = people or [{"key": "p1", "person": person()}]
    return {
        "external_order_id": order_id or f"W-{uuid.uuid4().hex[:12]}",
        "participants": participants,
        "items": items
        or [{"participant": participants[0]["key"], "course_number": c} for c in courses],
        "mode": mode,
        "payment": payment or {"method": "invoice"},
    }


def sepa_new(iban: str = VALID_IBAN, consent: bool = True) -> dict[str, Any]:
    return {
        "method": "sepa",
        "new_account": {
            "account_holder": "Max Muster",
            "iban": iban,
            "bic": "COBADEFFXXX",
            "mandate_consent": consent,
        },
    }


# ---------------------------------------------------------------------- the service


@dataclass
class Running:
    app: FastAPI
    client: httpx.AsyncClient
    booking: Booking

    @property
    def coursedb(self) -> AsyncEngine:
        return self.booking.coursedb


@asynccontextmanager
async def running(coursedb_url: str, **settings: Any) -> AsyncIterator[Running]:
    values: dict[str, Any] = {
        "coursedb_url": coursedb_url,
        "mesh_jwt_secret": SecretStr(SECRET),
        "environment": "test",
        "backlog_poll_seconds": 0.2,
        "backlog_backoff_base_seconds": 0.1,
        "backlog_backoff_max_seconds": 0.5,
        "coursedb_timeout_seconds": 5.0,
        "coursedb_connect_timeout_seconds": 1.0,
        "shutdown_grace_seconds": 2.0,
        "notifications_enabled": False,
        "mail_sender_enabled": False,
    }
    values.update(settings)
    app = create_app(Settings(**values))
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://booking"
        ) as client,
    ):
        yield Running(app, client, booking_of(app.state.runtime))


Eventually = Callable[..., Awaitable[None]]


async def eventually(
    predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05
) -> None:
    end = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------- databases


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def pg_database() -> Iterator[Callable[[], str]]:
    """Factory of throwaway PostgreSQL databases (asyncpg URLs), dropped after the test."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    made: list[str] = []

    def make() -> str:
        name = f"booking_test_{uuid.uuid4().hex[:10]}"
        _psql(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"

    yield make
    for name in made:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: Callable[[], str]
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(coursedb URL, service settings) on SQLite files or on PostgreSQL (coursedb database +
    booking's schema in a second database)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
        extra: dict[str, Any] = {"var_dir": tmp_path}
    else:
        url = pg_database()
        extra = {"database_url": pg_database(), "db_schema": "booking", "var_dir": tmp_path}
    engine = await prepare_coursedb(url)
    await engine.dispose()
    yield url, extra


# ---------------------------------------------------------------------- network


class Link:
    """A TCP forwarder standing in for the network between booking and the database server.

    ``down()`` stops listening and cuts every open connection (new connections are refused, as
    with a dead link or a stopped server); ``up()`` listens on the same port again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def url(self, database_url: str) -> str:
        from sqlalchemy.engine import make_url

        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
