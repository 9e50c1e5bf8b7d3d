"""Faults of the systems around the services, under a stream of work: the virus scanner (clamd)
stopped while files are uploaded to the portal, and the Schulconnex server answering 503,
timing out after it applied a write, and being unavailable for a whole run.

The services run in-process on SQLite here (their behaviour towards these dependencies does not
depend on the topology); the dependencies are real: clamd with the project's configuration,
the Schulconnex fake over real HTTP with its fault injection. Counted into the chaos report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from coursedb import schema as cdb
from coursedb.engine import create_engine, create_schema
from mesh_common.auth import mint_token
from mesh_common.testing.clamd import ClamdServer, eicar, require_clamd
from mesh_common.testing.smtp import SmtpCapture
from pydantic import SecretStr
from sqlalchemy import insert

from .support import ChaosReport, StreamCount, eventually

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SECRET = "chaos-dependencies-" + "k" * 32


def bearer(*roles: str, scopes: list[str] | None = None) -> dict[str, str]:
    token = mint_token(subject="chaos", secret=SECRET, roles=list(roles), scopes=scopes or [])
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://svc", timeout=60
        ) as client,
    ):
        yield client


# ------------------------------------------------------------------------------ clamd


async def test_clamd_stopped_while_files_are_uploaded_fails_closed_and_resumes(
    tmp_path: Path, smtp_server: SmtpCapture, chaos_report: ChaosReport
) -> None:
    require_clamd()
    from portal_service.app import create_app
    from portal_service.settings import Settings

    scenario, fault = "clamd-down", "clamd stopped during an upload stream, started again"
    started = time.monotonic()
    staff = bearer("staff")
    # 30 uploads, one in six carrying the EICAR test signature.
    files = {
        f"datei-{n:02d}.bin": (
            os.urandom(2000) + eicar() + os.urandom(100) if n % 6 == 5 else os.urandom(20_000 + n)
        )
        for n in range(30)
    }
    infected = {name for n, name in enumerate(files) if n % 6 == 5}
    outcome: dict[str, str] = {}
    refusals: Counter[str] = Counter()
    seen: dict[str, Any] = {}

    with ClamdServer(base_dir=tmp_path / "clamd") as clamd:
        settings = Settings(
            var_dir=tmp_path,
            mesh_jwt_secret=SecretStr(SECRET),
            smtp_host=smtp_server.host,
            smtp_port=smtp_server.port,
            portal_public_url="https://portal.example/api/portal/public",
            clamd_host=clamd.host,
            clamd_port=clamd.port,
            clamd_connect_timeout_seconds=1.0,
        )
        async with serve(create_app(settings)) as client:
            registered = await client.post(
                "/jobs",
                json={
                    "project_no": "CHAOS-1",
                    "client": {"client_no": "K-CH", "name": "Kunde", "email": "k@kunde.example"},
                },
                headers=bearer("service"),
            )
            assert registered.status_code == 201, registered.text
            job_id = registered.json()["job_id"]
            queue: asyncio.Queue[str] = asyncio.Queue()
            for name in files:
                queue.put_nowait(name)

            async def uploader() -> None:
                while not queue.empty():
                    name = queue.get_nowait()
                    for _ in range(60):  # bounded: a refused upload is sent again later
                        r = await client.post(
                            f"/jobs/{job_id}/folders/incoming/files",
                            files={"files": (name, files[name], "application/octet-stream")},
                            headers=staff,
                        )
                        if r.status_code == 503:
                            assert r.headers["content-type"] == "application/problem+json"
                            refusals[r.json()["code"]] += 1
                            await asyncio.sleep(0.2)
                            continue
                        assert r.status_code in (201, 422), r.text
                        outcome[name] = "stored" if r.status_code == 201 else r.json()["code"]
                        break
                    else:
                        raise AssertionError(f"{name}: never accepted")

            async def scanner_outage() -> None:
                await eventually(lambda: len(outcome) >= 8, timeout=60, interval=0.02)
                await asyncio.to_thread(clamd.stop)
                t0 = time.monotonic()
                await eventually(lambda: sum(refusals.values()) >= 3, timeout=30, interval=0.05)
                state = (await client.get("/scanner", headers=staff)).json()
                seen["scanner_while_down"] = {k: state[k] for k in ("configured", "reachable")}
                seen["stored_before_restart"] = sum(v == "stored" for v in outcome.values())
                await asyncio.sleep(0.5)
                await asyncio.to_thread(clamd.start)
                seen["down_seconds"] = round(time.monotonic() - t0, 1)

            await asyncio.gather(scanner_outage(), *(uploader() for _ in range(3)))
            job = (await client.get(f"/jobs/{job_id}", headers=staff)).json()
            state = (await client.get("/scanner", headers=staff)).json()

    stored = job["files"]
    by_hash = Counter(f["sha256"] for f in stored)
    clean = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    acked = {name for name, v in outcome.items() if v == "stored"}
    count = chaos_report.add(
        StreamCount(
            scenario=scenario,
            stream="portal uploads",
            fault=fault,
            sent=len(files),
            acknowledged=len(outcome),
            lost=sum(1 for name in acked if by_hash[clean[name]] != 1),
            duplicated=sum(n - 1 for n in by_hash.values() if n > 1),
            dead_lettered=0,
            effects=len(stored),
            retries=sum(refusals.values()),
            seconds=round(time.monotonic() - started, 1),
            notes={
                "refused_while_scanner_down": dict(refusals),
                "virus_found": sum(v == "virus-found" for v in outcome.values()),
                "scanner_after": {k: state[k] for k in ("configured", "reachable")},
                **seen,
            },
        )
    )
    # Fail closed: while clamd was away every upload was refused (503 scanner-unavailable,
    # visible at /scanner) and nothing unscanned was stored; afterwards the refused uploads went
    # through, each stored exactly once, and no infected file ever was.
    assert refusals and set(refusals) == {"scanner-unavailable"}, refusals
    assert seen["scanner_while_down"] == {"configured": True, "reachable": False}, seen
    assert state["reachable"] is True
    assert acked == set(files) - infected, outcome
    assert {outcome[name] for name in infected} == {"virus-found"}
    assert count.lost == 0 and count.duplicated == 0, count
    assert {f["sha256"] for f in stored} == {clean[name] for name in acked}
    assert not any(clean[name] in by_hash for name in infected)


# ------------------------------------------------------------------------------ Schulconnex


async def _coursedb_with_participants(url: str, n: int) -> tuple[Any, int]:
    engine = create_engine(url)
    await create_schema(engine)
    async with engine.begin() as conn:
        semester = (
            await conn.execute(
                insert(cdb.semesters)
                .values(
                    code="252",
                    name="Herbstsemester 2025",
                    starts_on=dt.date(2025, 8, 1),
                    ends_on=dt.date(2026, 1, 31),
                )
                .returning(cdb.semesters.c.id)
            )
        ).scalar_one()
        category = (
            await conn.execute(
                insert(cdb.categories)
                .values(code="4", name="Sprachen")
                .returning(cdb.categories.c.id)
            )
        ).scalar_one()
        course = (
            await conn.execute(
                insert(cdb.courses)
                .values(
                    number="252-40401",
                    semester_id=semester,
                    category_id=category,
                    title="Spanisch A1",
                    summary="Spanisch A1: Kurzbeschreibung",
                    fee=Decimal("80.00"),
                    max_participants=40,
                    status="open",
                )
                .returning(cdb.courses.c.id)
            )
        ).scalar_one()
        await conn.execute(
            insert(cdb.course_sessions).values(
                course_id=course,
                session_date=dt.date(2025, 9, 1),
                start_time=dt.time(18, 0),
                end_time=dt.time(19, 30),
            )
        )
    await add_participants(engine, course, 0, n)
    return engine, int(course)


async def add_participants(engine: Any, course: int, first: int, n: int) -> None:
    now = dt.datetime.now(dt.UTC)
    async with engine.begin() as conn:
        for i in range(first, first + n):
            pid = (
                await conn.execute(
                    insert(cdb.participants)
                    .values(
                        first_name=f"Chaos{i}",
                        last_name="Schulconnex",
                        birth_date=dt.date(1990, 1, 1) + dt.timedelta(days=i),
                    )
                    .returning(cdb.participants.c.id)
                )
            ).scalar_one()
            await conn.execute(
                insert(cdb.registrations).values(
                    course_id=course,
                    participant_id=pid,
                    status="booked",
                    registered_at=now,
                    fee_charged=Decimal("80.00"),
                )
            )


async def test_schulconnex_503_timeouts_and_outage_retry_bounded_and_recover(
    tmp_path: Path, chaos_report: ChaosReport
) -> None:
    from schulconnex_sync_service.app import create_app
    from schulconnex_sync_service.fake import FakeServer, demo_fake
    from schulconnex_sync_service.settings import Settings

    scenario = "schulconnex-faults"
    fault = "503 bursts, timeouts after the write was applied, a run against a dead server"
    started = time.monotonic()
    sync = bearer("staff", scopes=["schulconnex.sync"])
    fake, creds = demo_fake()
    engine, course = await _coursedb_with_participants(
        f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}", 16
    )
    runs: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}
    try:
        async with FakeServer(fake) as server:
            settings = Settings(
                var_dir=tmp_path,
                coursedb_url=str(engine.url),
                mesh_jwt_secret=SecretStr(SECRET),
                log_json=False,
                schulconnex_base_url=server.base_url,
                schulconnex_token_url=server.token_url,
                schulconnex_client_id=creds["client_id"],
                schulconnex_client_secret=SecretStr(creds["client_secret"]),
                schulconnex_timeout_seconds=1.0,
                schulconnex_max_retries=4,
            )
            app = create_app(settings, tick_seconds=0.2, lease_seconds=5.0)
            async with serve(app) as client:
                runner = app.state.runtime.extras["task_runner"]

                async def run(retry_of: str | None = None) -> dict[str, Any]:
                    if retry_of is None:
                        r = await client.post("/sync", json={"dry_run": False}, headers=sync)
                    else:
                        r = await client.post(f"/tasks/executions/{retry_of}/retry", headers=sync)
                    assert r.status_code == 202, r.text
                    execution_id = r.json()["execution_id"]
                    await runner.wait(execution_id, within=90)
                    base = f"/tasks/executions/{execution_id}"
                    ex = (await client.get(base, headers=sync)).json()
                    report = (await client.get(f"/runs/{execution_id}", headers=sync)).json()
                    failed = await client.get(
                        f"{base}/items", params={"outcome": "failed", "limit": 100}, headers=sync
                    )
                    runs.append({"execution": ex, "report": report, "failed": failed.json()})
                    return ex

                # 1. Flaky server: 503 bursts on writes and reads (retried), and two creations
                #    that time out on the client while the server is still applying them. Their
                #    outcome is unknown when the client looks: they fail visibly, per record.
                fake.add_fault(status=503, count=5, method="POST", path_prefix="/v1/personen")
                fake.add_fault(
                    status=None, delay=1.6, count=2, method="POST", path_prefix="/v1/personen"
                )
                fake.add_fault(status=503, count=3, method="GET", path_prefix="/v1/personen")
                first = await run()
                unknown = [i for i in runs[-1]["failed"] if i["action"] == "person.create"]
                seen["flaky_run"] = first["status"]
                seen["flaky_run_unknown_outcome"] = [i["error"] for i in unknown]
                assert first["status"] == "partially_succeeded", first
                assert len(unknown) == 2, runs[-1]["failed"]
                assert all("may have created" in i["error"] for i in unknown), unknown
                # The server did create them (after the client gave up): retrying the failed
                # records finds them by referrer instead of creating them twice.
                await eventually(lambda: len(fake.persons) >= 16, timeout=10)
                retried = await run(retry_of=first["id"])
                seen["retry_failed_run"] = retried["status"]
                assert retried["status"] == "succeeded", runs[-1]["failed"]

                # 2. New participants, and a server that answers nothing but 503: each record
                #    is retried a bounded number of times, then marked failed with the reason.
                await add_participants(engine, course, 16, 8)
                fake.clear_faults()
                fake.add_fault(status=503, count=None, method="POST", path_prefix="/v1/personen")
                dead = await run()
                refused = [i for i in runs[-1]["failed"] if i["action"] == "person.create"]
                seen["dead_server_run"] = dead["status"]
                seen["dead_server_errors"] = sorted({i["error"] for i in refused})[:2]
                assert dead["status"] in ("failed", "partially_succeeded"), dead
                assert len(refused) == 8 and all("503" in i["error"] for i in refused), refused

                # 3. The server is back: retrying the failed records syncs exactly those.
                fake.clear_faults()
                last = await run(retry_of=dead["id"])
                seen["recovery_run"] = last["status"]
                assert last["status"] == "succeeded" and last["counts"]["failed"] == 0, last
    finally:
        await engine.dispose()

    by_referrer = Counter(p.get("referrer") for p in fake.persons.values() if p.get("referrer"))
    ours = {k: v for k, v in by_referrer.items() if k and k.startswith("participant:")}
    retries = sum(
        int(((r["report"].get("summary") or {}).get("client") or {}).get("retries", 0))
        for r in runs
    )
    count = chaos_report.add(
        StreamCount(
            scenario=scenario,
            stream="schulconnex person writes",
            fault=fault,
            sent=24,
            acknowledged=len(ours),
            lost=24 - len(ours),
            duplicated=sum(n - 1 for n in ours.values()),
            dead_lettered=last["counts"]["failed"],
            effects=sum(ours.values()),
            retries=retries,
            seconds=round(time.monotonic() - started, 1),
            notes={
                **seen,
                "faults_answered": {k: v for k, v in fake.counts.items() if k.startswith("fault")},
            },
        )
    )
    assert count.lost == 0 and count.duplicated == 0, count
    assert count.retries >= 8, count  # the bursts were retried, not skipped
    assert not fake.violations, fake.violations[:3]
