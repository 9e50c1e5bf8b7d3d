"""Profile test rig: a small coursedb world written row by row, the app, tokens and delegations.

The world (per test, unique keys so PostgreSQL tests can share the session database):

- alice (the participant under test) with three accounts: ``acct_open`` (default; debited by
  order O1 whose course is still running), ``acct_history`` (only used by O2, a finished
  course) and ``acct_free`` (never used);
- bob, a family member with his own account; carol, unrelated;
- orders: O1 alice pays by SEPA for herself and bob; O2 alice, finished course; O3 alice's
  failed invoice order; O4 bob pays for himself and alice; O5 bob alone (not alice's business).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from coursedb.banking import BankCipher, add_account
from coursedb.engine import create_engine, create_schema
from coursedb.schema import (
    categories,
    course_sessions,
    courses,
    orders,
    participants,
    registrations,
    semesters,
)
from fastapi import FastAPI
from mesh_common.auth import mint_token
from mesh_common.auth.delegation import mint_delegation
from profile_service.app import create_app
from profile_service.settings import Settings
from pydantic import SecretStr
from schwifty import IBAN
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

SECRET = "profile-test-secret-0123456789abcdef!"
WEBSITE = "website-backend"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
TODAY = NOW.date()


def iban(account: int) -> str:
    """A valid German IBAN at a bank schwifty knows (Commerzbank, BLZ 370 400 44)."""
    return str(IBAN.generate("DE", bank_code="37040044", account_code=f"{account:010d}"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def participant_token(pid: int | str, **kw: Any) -> str:
    return mint_token(
        subject=f"user-{pid}", secret=SECRET, roles=["participant"], participant_id=str(pid), **kw
    )


def service_token(subject: str = WEBSITE) -> str:
    return mint_token(subject=subject, secret=SECRET, roles=["service"])


def staff_token(subject: str = "office-anna") -> str:
    return mint_token(subject=subject, secret=SECRET, roles=["staff"])


def delegation(
    pid: int, *, scopes: Iterable[str] = ("profile:read",), actor: str = WEBSITE, **kw: Any
) -> str:
    return mint_delegation(
        participant_id=str(pid), actor=actor, scopes=list(scopes), secret=SECRET, **kw
    )


def as_website(pid: int, **kw: Any) -> dict[str, str]:
    """Headers of the website backend acting for ``pid`` through a delegation."""
    return {**bearer(service_token()), "X-Delegation-Token": delegation(pid, **kw)}


@dataclass
class World:
    alice: int = 0
    bob: int = 0
    carol: int = 0
    acct_open: int = 0
    acct_history: int = 0
    acct_free: int = 0
    bob_acct: int = 0
    ibans: dict[int, str] = field(default_factory=dict)  # account id -> plaintext IBAN
    courses: dict[str, str] = field(default_factory=dict)  # label -> course number
    orders: dict[str, str] = field(default_factory=dict)  # label -> external order id


async def build_world(engine: AsyncEngine) -> World:
    await create_schema(engine)
    cipher = BankCipher.from_env()
    key = uuid.uuid4().hex
    w = World()
    async with engine.begin() as conn:

        async def add(table: Any, **values: Any) -> int:
            result = await conn.execute(insert(table).values(**values))
            return int(result.inserted_primary_key[0])

        sem = await add(
            semesters,
            code=key[:8],
            name="Testsemester",
            starts_on=TODAY - dt.timedelta(days=200),
            ends_on=TODAY + dt.timedelta(days=200),
        )
        area = await add(categories, code=key[:10], name="Sprachen")
        sub = await add(categories, code=key[10:20], name="Spanisch", parent_id=area)

        async def course(label: str, title: str, fee: str, status: str, start: int) -> int:
            number = f"T{key[:8]}-{label}"
            cid = await add(
                courses,
                number=number,
                semester_id=sem,
                category_id=sub,
                title=title,
                fee=Decimal(fee),
                min_participants=1,
                max_participants=12,
                status=status,
                registration_mode="direct",
                publish=True,
                web_bookable=status == "open",
            )
            for week in (0, 1, 2):
                await add(
                    course_sessions,
                    course_id=cid,
                    session_date=TODAY + dt.timedelta(days=start + 7 * week),
                    start_time=dt.time(18, 0),
                    end_time=dt.time(19, 30),
                )
            w.courses[label] = number
            return cid

        c_run = await course("run", "Spanisch A1 - Einstieg", "89.00", "open", 10)
        c_fam = await course("fam", "Yoga am Morgen", "120.00", "open", 12)
        c_done = await course("done", "Töpfern an der Scheibe", "49.00", "finished", -90)
        c_gift = await course("gift", "Excel für Einsteiger", "60.00", "open", 20)
        c_bob = await course("bob", "Stadtführung Freiburg", "8.00", "open", 5)

        def person(first: str, last: str) -> dict[str, Any]:
            return {
                "salutation": "ms",
                "first_name": first,
                "last_name": last,
                "street": "Rotteckring 12",
                "postcode": "79098",
                "city": "Freiburg im Breisgau",
                "country": "DE",
                "email": f"{first.lower()}.{key[:6]}@example.org",
                "phone": "0761 2017000",
            }

        w.alice = await add(participants, **person("Alice", "Adler"))
        w.bob = await add(participants, **person("Bob", "Adler"))
        w.carol = await add(participants, **person("Carol", "Clausen"))

        base = int(key[:6], 16) * 10
        for name, owner, n in (
            ("acct_open", w.alice, 1),
            ("acct_history", w.alice, 2),
            ("acct_free", w.alice, 3),
            ("bob_acct", w.bob, 4),
        ):
            plain = iban(base + n)
            account_id = await add_account(
                conn,
                cipher,
                participant_id=owner,
                account_holder="Alice Adler" if owner == w.alice else "Bob Adler",
                iban=plain,
                mandate_reference=f"M-{key[:12]}-{n}" if n in (1, 4) else None,
                mandate_signed_on=TODAY - dt.timedelta(days=100) if n in (1, 4) else None,
            )
            setattr(w, name, account_id)
            w.ibans[account_id] = plain

        async def order(
            label: str,
            buyer: int,
            hours_ago: int,
            payment: str,
            account: int | None,
            regs: list[tuple[int, int, str, str | None]],
            status: str = "processed",
        ) -> None:
            external = f"web-{key[:8]}-{label}"
            received = NOW - dt.timedelta(hours=hours_ago)
            total = sum((Decimal(f) for *_, f in regs if f is not None), Decimal("0"))
            oid = await add(
                orders,
                external_order_id=external,
                participant_id=buyer,
                received_at=received,
                processed_at=received + dt.timedelta(seconds=1) if status == "processed" else None,
                status=status,
                payment_method=payment,
                bank_account_id=account,
                total_amount=total if regs else None,
                payload_hash=hashlib.sha256(json.dumps([label, key]).encode()).hexdigest(),
            )
            for course_id, pid, reg_status, fee in regs:
                await add(
                    registrations,
                    course_id=course_id,
                    participant_id=pid,
                    order_id=oid,
                    status=reg_status,
                    registered_at=received,
                    cancelled_at=received + dt.timedelta(days=1)
                    if reg_status == "cancelled"
                    else None,
                    fee_charged=Decimal(fee) if fee is not None else None,
                )
            w.orders[label] = external

        await order(
            "O1",
            w.alice,
            5,
            "sepa",
            w.acct_open,
            [(c_run, w.alice, "booked", "89.00"), (c_fam, w.bob, "booked", "120.00")],
        )
        await order(
            "O2", w.alice, 2000, "sepa", w.acct_history, [(c_done, w.alice, "booked", "49.00")]
        )
        await order("O3", w.alice, 30, "invoice", None, [], status="failed")
        await order(
            "O4",
            w.bob,
            10,
            "sepa",
            w.bob_acct,
            [(c_gift, w.alice, "booked", "60.00"), (c_gift, w.bob, "waiting_list", None)],
        )
        await order("O5", w.bob, 1, "invoice", None, [(c_bob, w.bob, "booked", "8.00")])
    return w


@dataclass
class Rig:
    client: httpx.AsyncClient
    app: FastAPI
    engine: AsyncEngine
    world: World
    settings: Settings


def settings_for(backend: str, tmp_path: Path, pg: str | None, **over: Any) -> Settings:
    values: dict[str, Any] = {"var_dir": tmp_path, "mesh_jwt_secret": SecretStr(SECRET)}
    if backend == "postgres":
        assert pg is not None
        values.update(database_url=pg, db_schema=f"profile_{uuid.uuid4().hex[:8]}", coursedb_url=pg)
    else:
        values["coursedb_url"] = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    values.update(over)
    return Settings(**values)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    pg = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return request.param, pg


@pytest.fixture
async def rig(backend: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[Rig]:
    name, pg = backend
    settings = settings_for(name, tmp_path, pg)
    assert settings.coursedb_url is not None
    engine = create_engine(settings.coursedb_url)
    world = await build_world(engine)
    app = create_app(settings)
    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://profile"
            ) as client,
        ):
            yield Rig(client, app, engine, world, settings)
    finally:
        await engine.dispose()
