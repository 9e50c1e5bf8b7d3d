"""Helpers of the schulconnex-sync tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from coursedb import schema
from coursedb.engine import create_schema
from mesh_common.app import ServiceRuntime
from mesh_common.auth import mint_token
from pydantic import SecretStr
from schulconnex_sync_service.fake import FakeSchulconnex, FakeServer
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

SECRET = "s" * 40
SCOPE = "schulconnex.sync"


def token(*, roles: list[str] | None = None, scopes: list[str] | None = None) -> dict[str, str]:
    t = mint_token(
        subject="office", secret=SECRET, roles=roles or ["staff"], scopes=scopes or [SCOPE]
    )
    return {"Authorization": f"Bearer {t}"}


ALLOWED = token()


@dataclass
class Fake:
    fake: FakeSchulconnex
    server: FakeServer
    creds: dict[str, str]

    def env(self) -> dict[str, Any]:
        return {
            "schulconnex_base_url": self.server.base_url,
            "schulconnex_token_url": self.server.token_url,
            "schulconnex_client_id": self.creds["client_id"],
            "schulconnex_client_secret": SecretStr(self.creds["client_secret"]),
        }

    def persons_by_referrer(self) -> dict[str, dict[str, Any]]:
        return {p.get("referrer"): p for p in self.fake.persons.values() if p.get("referrer")}

    def kontexte_of(self, person_id: str) -> list[dict[str, Any]]:
        return [k for k in self.fake.kontexte.values() if k["_person"] == person_id]


# --------------------------------------------------------------------------- course database


@dataclass
class CourseDB:
    """A small course database written row by row (ids chosen by the database)."""

    engine: AsyncEngine
    semester_id: int = 0
    category_id: int = 0
    ids: dict[str, int] = field(default_factory=dict)

    async def setup(self) -> None:
        await create_schema(self.engine)
        async with self.engine.begin() as conn:
            self.semester_id = (
                await conn.execute(
                    insert(schema.semesters)
                    .values(
                        code="252",
                        name="Herbstsemester 2025",
                        starts_on=dt.date(2025, 8, 1),
                        ends_on=dt.date(2026, 1, 31),
                    )
                    .returning(schema.semesters.c.id)
                )
            ).scalar_one()
            parent = (
                await conn.execute(
                    insert(schema.categories)
                    .values(code="4", name="Sprachen")
                    .returning(schema.categories.c.id)
                )
            ).scalar_one()
            self.category_id = (
                await conn.execute(
                    insert(schema.categories)
                    .values(code="404", name="Spanisch", parent_id=parent)
                    .returning(schema.categories.c.id)
                )
            ).scalar_one()

    async def semester(self, code: str, name: str, starts: dt.date, ends: dt.date) -> int:
        async with self.engine.begin() as conn:
            return int(
                (
                    await conn.execute(
                        insert(schema.semesters)
                        .values(code=code, name=name, starts_on=starts, ends_on=ends)
                        .returning(schema.semesters.c.id)
                    )
                ).scalar_one()
            )

    async def course(
        self,
        number: str,
        title: str,
        *,
        status: str = "open",
        sessions: int = 2,
        semester_id: int | None = None,
        first: dt.date = dt.date(2025, 9, 1),
    ) -> int:
        async with self.engine.begin() as conn:
            cid = (
                await conn.execute(
                    insert(schema.courses)
                    .values(
                        number=number,
                        semester_id=semester_id or self.semester_id,
                        category_id=self.category_id,
                        title=title,
                        summary=f"{title}: Kurzbeschreibung",
                        fee=Decimal("80.00"),
                        max_participants=12,
                        status=status,
                    )
                    .returning(schema.courses.c.id)
                )
            ).scalar_one()
            for i in range(sessions):
                await conn.execute(
                    insert(schema.course_sessions).values(
                        course_id=cid,
                        session_date=first + dt.timedelta(days=7 * i),
                        start_time=dt.time(18, 0),
                        end_time=dt.time(19, 30),
                    )
                )
        self.ids[number] = cid
        return int(cid)

    async def participant(
        self,
        first: str,
        last: str,
        born: dt.date | None = None,
        *,
        email: str | None = None,
        salutation: str | None = None,
    ) -> int:
        async with self.engine.begin() as conn:
            return int(
                (
                    await conn.execute(
                        insert(schema.participants)
                        .values(
                            first_name=first,
                            last_name=last,
                            birth_date=born,
                            email=email,
                            salutation=salutation,
                        )
                        .returning(schema.participants.c.id)
                    )
                ).scalar_one()
            )

    async def lecturer(self, first: str, last: str, *, title: str | None = None) -> int:
        async with self.engine.begin() as conn:
            return int(
                (
                    await conn.execute(
                        insert(schema.lecturers)
                        .values(first_name=first, last_name=last, academic_title=title)
                        .returning(schema.lecturers.c.id)
                    )
                ).scalar_one()
            )

    async def register(self, course_id: int, participant_id: int, *, status: str = "booked") -> int:
        async with self.engine.begin() as conn:
            now = dt.datetime.now(dt.UTC)
            return int(
                (
                    await conn.execute(
                        insert(schema.registrations)
                        .values(
                            course_id=course_id,
                            participant_id=participant_id,
                            status=status,
                            registered_at=now,
                            cancelled_at=now if status == "cancelled" else None,
                            fee_charged=Decimal("80.00") if status == "booked" else None,
                        )
                        .returning(schema.registrations.c.id)
                    )
                ).scalar_one()
            )

    async def delete_course(self, course_id: int) -> None:
        """The course goes, with its registrations (sessions and lecturers cascade)."""
        async with self.engine.begin() as conn:
            r = schema.registrations
            await conn.execute(delete(r).where(r.c.course_id == course_id))
            cl = schema.course_lecturers
            await conn.execute(delete(cl).where(cl.c.course_id == course_id))
            await conn.execute(delete(schema.courses).where(schema.courses.c.id == course_id))

    async def delete_participant(self, participant_id: int) -> None:
        """The participant goes (erasure), with her registrations."""
        async with self.engine.begin() as conn:
            r = schema.registrations
            await conn.execute(delete(r).where(r.c.participant_id == participant_id))
            p = schema.participants
            await conn.execute(delete(p).where(p.c.id == participant_id))

    async def stop_teaching(self, course_id: int, lecturer_id: int) -> None:
        """The lecturer no longer teaches the course."""
        async with self.engine.begin() as conn:
            cl = schema.course_lecturers
            await conn.execute(
                delete(cl).where(cl.c.course_id == course_id, cl.c.lecturer_id == lecturer_id)
            )

    async def teach(self, course_id: int, lecturer_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(schema.course_lecturers).values(course_id=course_id, lecturer_id=lecturer_id)
            )


# --------------------------------------------------------------------------- the service


@dataclass
class Service:
    client: httpx.AsyncClient
    runtime: ServiceRuntime

    async def run(
        self, *, dry_run: bool = False, wait: float = 60.0, **selection: Any
    ) -> dict[str, Any]:
        """POST /sync and wait for the execution to end; returns the execution."""
        r = await self.client.post("/sync", json={**selection, "dry_run": dry_run}, headers=ALLOWED)
        assert r.status_code == 202, r.text
        return await self.finished(r.json()["execution_id"], wait)

    async def finished(self, execution_id: str, wait: float = 60.0) -> dict[str, Any]:
        await self.runtime.extras["task_runner"].wait(execution_id, within=wait)
        r = await self.client.get(f"/tasks/executions/{execution_id}", headers=ALLOWED)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def items(self, execution_id: str, **params: Any) -> list[dict[str, Any]]:
        r = await self.client.get(
            f"/tasks/executions/{execution_id}/items",
            headers=ALLOWED,
            params={"limit": 1000, **params},
        )
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def item_map(self, execution_id: str) -> dict[str, dict[str, Any]]:
        return {i["record_key"]: i for i in await self.items(execution_id)}

    async def report(self, execution_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/runs/{execution_id}", headers=ALLOWED)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def links(self, entity: str, tenant: str = "env") -> dict[str, str]:
        """The link table (local key -> Schulconnex id) of one entity."""
        from mesh_common.connectors.api import EXTRAS_KEY

        hub = self.runtime.extras[EXTRAS_KEY]
        return dict(await hub.links.mapping("schulconnex", entity, tenant=tenant))

    async def decide_all(self, kind: str, decision: str = "accept", *, run: bool = True) -> str:
        """Bulk-decide every pending confirmation of ``kind``; returns the started run's id."""
        r = await self.client.post(
            "/confirmations/bulk",
            headers=ALLOWED,
            params={"run": "true"} if run else None,
            json={"decision": decision, "kind": kind},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["execution_id"])

    async def confirmations(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.client.get("/confirmations", headers=ALLOWED, params=params)
        assert r.status_code == 200, r.text
        return r.json()["items"]  # type: ignore[no-any-return]


ServiceFactory = Callable[..., Awaitable[Service]]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.05)
