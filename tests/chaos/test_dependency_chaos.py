"""Faults of the systems around the services, under a stream of work: the virus scanner (clamd)
stopped while files are uploaded to the portal; the Schulconnex server answering 503,
timing out after it applied a write, and being unavailable for a whole run; the mail server
(Dovecot: IMAP and the MTA's delivery target) stopped while room-mailbox invitations are sent
and replies wait to be read.

The services run in-process on SQLite here (their behaviour towards these dependencies does not
depend on the topology); the dependencies are real: clamd and Dovecot with the project's
configurations, the Schulconnex fake over real HTTP with its fault injection. Counted into the
chaos report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import threading
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
from mesh_common.testing.dovecot import DovecotServer, SmtpRelay, require_dovecot
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


# ------------------------------------------------------------------------------ Dovecot (IMAP)


async def test_imap_down_while_invitations_are_processed_bounded_visible_and_nothing_lost(
    tmp_path: Path, chaos_report: ChaosReport
) -> None:
    """mailbox-invites with Dovecot stopped in the middle of a MailboxProcessor run (after 30
    of 120 invitations reached the room mailboxes) while 40 replies wait in the technical user's
    inbox: the run says so (partially succeeded: sends refused by the MTA, the inbox not
    reachable), a run during the outage fails with the same reasons and counts one attempt per
    invitation, and once Dovecot is back every invitation goes out and every reply is applied."""
    require_dovecot()
    from mailbox_invites_service.app import create_app
    from mailbox_invites_service.responder import AutoAcceptResponder
    from mailbox_invites_service.settings import Settings

    scenario, fault = "imap-down", "Dovecot stopped mid-run with replies pending, started again"
    started = time.monotonic()
    admin, staff = bearer("admin"), bearer("staff")
    first, second, cut_after, rooms = 40, 120, 30, 4
    seen: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []

    with DovecotServer() as dovecot, SmtpRelay(dovecot) as relay:
        settings = Settings(
            var_dir=tmp_path, mesh_jwt_secret=SecretStr(SECRET), processor_interval_seconds=3600
        )
        app = create_app(settings)
        async with serve(app) as client:
            runner = app.state.runtime.extras["task_runner"]

            async def call(method: str, url: str, expect: int = 200, **kw: Any) -> Any:
                r = await client.request(method, url, **kw)
                assert r.status_code == expect, f"{method} {url}: {r.status_code} {r.text}"
                return r.json()

            async def run() -> dict[str, Any]:
                started = await call(
                    "POST", "/tasks/mailbox-processor/run", 202, json={}, headers=staff
                )
                ex = await runner.wait(started["execution_id"], within=60)
                items = await call(
                    "GET",
                    f"/tasks/executions/{ex['id']}/items",
                    params={"outcome": "failed", "limit": 1000},
                    headers=staff,
                )
                runs.append({"execution": ex, "failed": items})
                return ex

            async def statuses() -> Counter[str]:
                out: Counter[str] = Counter()
                for box in await call("GET", "/mailboxes", headers=staff):
                    out.update(box["invitations"])
                return out

            tech = dovecot.add_user("raumbuchung@vhs.chaos.test")
            user = await call(
                "POST",
                "/technical-users",
                201,
                headers=admin,
                json={
                    "name": "raumbuchung",
                    "display_name": "Raumbuchung",
                    "email": tech.address,
                    "smtp": {
                        "host": "127.0.0.1",
                        "port": relay.port,
                        "security": "starttls",
                        "username": tech.address,
                        "password": tech.password,
                    },
                    "imap": {
                        "host": "127.0.0.1",
                        "port": dovecot.imap_port,
                        "security": "starttls",
                        "username": tech.address,
                        "password": tech.password,
                    },
                    "tls_ca_pem": dovecot.ca_pem,
                    "timeout_seconds": 3,
                },
            )
            responders = []
            for m in range(rooms):
                room = dovecot.add_user(f"raum-{m}@rooms.chaos.test")
                await call("PUT", f"/rooms/r-{m}", headers=admin, json={"name": f"Raum {m}"})
                await call(
                    "POST",
                    "/mailboxes",
                    201,
                    headers=admin,
                    json={
                        "room_id": f"r-{m}",
                        "email": room.address,
                        "technical_user_id": user["id"],
                    },
                )
                responders.append(
                    AutoAcceptResponder(room.address, room.password, dovecot.imap_port, relay.port)
                )
            base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)

            async def book(numbers: range) -> None:
                for i in numbers:
                    starts = base + dt.timedelta(days=1 + i // 8, hours=8 + i % 8)
                    await call(
                        "PUT",
                        f"/events/ev-{i}",
                        headers=bearer("service"),
                        json={
                            "room_id": f"r-{i % rooms}",
                            "title": f"Kurs {i}",
                            "starts_at": starts.isoformat(),
                            "ends_at": (starts + dt.timedelta(minutes=90)).isoformat(),
                        },
                    )

            received: Counter[tuple[str, int]] = Counter()

            async def rooms_answer() -> int:
                got = [r for one in responders for r in await one.process()]
                received.update((r.uid, r.sequence) for r in got)
                return len(got)

            # 1. Before the fault: 40 invitations sent and answered; the 40 replies wait in
            #    the technical user's inbox (not read yet).
            await book(range(first))
            assert (await run())["status"] == "succeeded", runs[-1]
            assert await rooms_answer() == first
            await eventually(
                lambda: len(dovecot.stored_messages(tech.address)) == first, timeout=10
            )

            # 2. 120 more; Dovecot is stopped from inside the MTA once 30 of them were delivered
            #    (the rest of the run meets an MTA whose LMTP target is gone, then no IMAP).
            await book(range(first, first + second))
            deliver, lock = relay.handler._deliver, threading.Lock()
            delivered = [0]

            def deliver_then_cut(sender: str, recipients: list[str], content: bytes) -> None:
                deliver(sender, recipients, content)
                with lock:
                    delivered[0] += 1
                    if delivered[0] == cut_after:
                        dovecot.stop()

            relay.handler._deliver = deliver_then_cut  # type: ignore[method-assign]
            outage = time.monotonic()
            cut_run = await run()
            relay.handler._deliver = deliver  # type: ignore[method-assign]
            assert not dovecot.running
            seen["cut_run"] = cut_run["status"]
            during = await statuses()
            seen["statuses_after_cut_run"] = dict(during)

            # 3. A run during the outage: everything fails, visibly, one attempt each.
            down_run = await run()
            seen["down_run"] = down_run["status"]
            seen["down_run_error"] = down_run["error"]
            waiting = await call(
                "GET", "/invitations", params={"status": "pending", "limit": 1000}, headers=staff
            )
            seen["attempts_during_outage"] = dict(Counter(i["attempts"] for i in waiting))
            seen["last_errors"] = sorted({i["last_error"] for i in waiting})

            # 4. Dovecot back (same maildirs): the rest goes out, the waiting replies are read.
            await asyncio.to_thread(dovecot.start)
            seen["down_seconds"] = round(time.monotonic() - outage, 1)
            recovery = await run()
            seen["recovery_run"] = recovery["status"]
            assert await rooms_answer() >= second  # a duplicate delivery is answered too
            last = await run()
            seen["last_run"] = last["status"]
            final = await statuses()
            in_inbox = len(dovecot.stored_messages(tech.address))
            processed = len(dovecot.stored_messages(tech.address, "edumesh-processed"))
            ignored = len(dovecot.stored_messages(tech.address, "edumesh-ignored"))

    failed_items = [(r["execution"]["status"], i) for r in runs for i in r["failed"]]
    send_failures = [i for _, i in failed_items if i["record_key"].startswith("invitation:")]
    read_failures = [i for _, i in failed_items if i["record_key"].startswith("mailbox:")]
    total = first + second
    count = chaos_report.add(
        StreamCount(
            scenario=scenario,
            stream="room-mailbox invitations",
            fault=fault,
            sent=total,
            acknowledged=len(received),  # distinct (UID, SEQUENCE) delivered to a room mailbox
            lost=total - final["accepted"],
            duplicated=sum(n - 1 for n in received.values()),
            dead_lettered=final["error"],
            effects=final["accepted"],
            retries=len(send_failures) + len(read_failures),
            seconds=round(time.monotonic() - started, 1),
            notes={
                **seen,
                "replies_processed": processed,
                "mail_left_in_inbox": in_inbox,
                "mail_set_aside": ignored,
                "failed_sends": len(send_failures),
                "failed_inbox_reads": len(read_failures),
                "send_errors": dict(Counter(i["error"] for i in send_failures)),
            },
        )
    )
    # Visible: the cut run partially succeeded, the run during the outage failed; both name
    # the causes per item (the MTA's refusal, the unreachable IMAP server).
    assert cut_run["status"] == "partially_succeeded", runs[1]
    assert down_run["status"] == "failed" and down_run["error"], down_run
    imap_down = f"IMAP: cannot connect to 127.0.0.1:{dovecot.imap_port}: connection refused"
    for r in runs[1:3]:
        reads = [i for i in r["failed"] if i["record_key"].startswith("mailbox:")]
        assert [i["error"] for i in reads] == [imap_down], r["failed"][-3:]
        sends = [i for i in r["failed"] if i["record_key"].startswith("invitation:")]
        # The MTA answers 451 while its delivery target is gone (a session it drops as
        # Dovecot goes down can also fail a message: still an SMTP error, still one attempt).
        assert sends and all(i["error"].startswith("SMTP: ") for i in sends), sends[:2]
        assert any("451 4.3.0 local delivery failed" in i["error"] for i in sends), sends[:2]
    # Bounded: one attempt per invitation per run, nobody near the limit of 5, none in error.
    assert set(seen["attempts_during_outage"]) <= {1, 2}, seen
    assert during["sent"] >= cut_after and during["pending"] > 0, during
    # Recovered, nothing lost: every invitation accepted, every reply processed, the inbox empty.
    assert seen["recovery_run"] == "succeeded" and seen["last_run"] == "succeeded", runs[-2:]
    assert final == Counter({"accepted": total}), final
    assert count.lost == 0 and count.dead_lettered == 0, count
    assert in_inbox == 0 and ignored == 0 and processed == total + count.duplicated, count
