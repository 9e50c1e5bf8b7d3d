"""Schulconnex: full first sync of 10,000 persons against the fake server on localhost.

The course database (SQLite, built here) holds 250 open courses with one lecturer each and
9,750 participants registered in them: 10,000 persons. The fake Schulconnex server runs as its
own process (``python -m schulconnex_sync_service.fake``, validating every request and response
against the OpenAPI files with openapi-core) and starts empty, so the first sync creates every
person with its personenkontext (case 6), every course as a group (case 4) and every
membership (case 4): about 30,000 requests. The schulconnex-sync service runs in this process
on SQLite (task framework, item log, link table, markers: the real service, started with
``create_app``) and the run is started over its REST API. Target: <= 60 s for the run; the
requests/s are printed. The fake's violation count must be 0.

    .venv/bin/python bench/schulconnex_first_sync.py [--persons 10000] [--courses 250]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


async def build_coursedb(url: str, persons: int, courses: int) -> None:
    from coursedb import schema
    from coursedb.engine import create_engine, create_schema
    from sqlalchemy import insert

    engine = create_engine(url)
    await create_schema(engine)
    now = dt.datetime.now(dt.UTC)
    participants = persons - courses
    async with engine.begin() as conn:
        await conn.execute(
            insert(schema.semesters).values(
                id=1,
                code="252",
                name="Herbst 2025",
                starts_on=dt.date(2025, 8, 1),
                ends_on=dt.date(2026, 1, 31),
            )
        )
        await conn.execute(insert(schema.categories).values(id=1, code="4", name="Sprachen"))
        await conn.execute(
            insert(schema.courses),
            [
                {
                    "id": c,
                    "number": f"252-4{c:04d}",
                    "semester_id": 1,
                    "category_id": 1,
                    "title": f"Kurs {c}",
                    "fee": Decimal("80.00"),
                    "max_participants": 60,
                    "status": "open",
                }
                for c in range(1, courses + 1)
            ],
        )
        await conn.execute(
            insert(schema.course_sessions),
            [
                {
                    "course_id": c,
                    "session_date": dt.date(2025, 9, 1) + dt.timedelta(days=7 * i),
                    "start_time": dt.time(18),
                    "end_time": dt.time(19, 30),
                }
                for c in range(1, courses + 1)
                for i in range(2)
            ],
        )
        await conn.execute(
            insert(schema.lecturers),
            [
                {"id": i, "first_name": f"L{i}", "last_name": "Lehrkraft"}
                for i in range(1, courses + 1)
            ],
        )
        await conn.execute(
            insert(schema.course_lecturers),
            [{"course_id": c, "lecturer_id": c} for c in range(1, courses + 1)],
        )
        for start in range(1, participants + 1, 2000):
            ids = range(start, min(participants + 1, start + 2000))
            await conn.execute(
                insert(schema.participants),
                [
                    {
                        "id": i,
                        "first_name": f"Vorname{i}",
                        "last_name": f"Nachname{i % 997}",
                        "birth_date": dt.date(1950, 1, 1) + dt.timedelta(days=i % 20000),
                        "email": f"p{i}@example.org",
                    }
                    for i in ids
                ],
            )
            await conn.execute(
                insert(schema.registrations),
                [
                    {
                        "course_id": 1 + i % courses,
                        "participant_id": i,
                        "status": "booked",
                        "registered_at": now,
                        "fee_charged": Decimal("80.00"),
                    }
                    for i in ids
                ],
            )
    await engine.dispose()


def start_fake(creds: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "FAKE_SCHULCONNEX_CLIENT_ID": creds["client_id"],
        "FAKE_SCHULCONNEX_CLIENT_SECRET": creds["client_secret"],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "schulconnex_sync_service.fake", "--token-ttl", "3600"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the fake server did not start: {line!r}")
    return proc, line.split()[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux /proc), to see which side is busier."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from asgi_lifespan import LifespanManager
    from mesh_common.auth import mint_token
    from mesh_common.logging import configure_logging
    from pydantic import SecretStr
    from schulconnex_sync_service.app import create_app
    from schulconnex_sync_service.settings import Settings

    configure_logging("WARNING", json=False)
    tmp = Path(tempfile.mkdtemp(prefix="sc-bench-"))
    coursedb_url = f"sqlite+aiosqlite:///{tmp / 'coursedb.sqlite3'}"
    t0 = time.perf_counter()
    await build_coursedb(coursedb_url, args.persons, args.courses)
    print(
        f"course database: {args.persons:,} persons, {args.courses} courses "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    creds = {"client_id": "bench", "client_secret": secrets.token_urlsafe(24)}
    fake, base_url = start_fake(creds)
    jwt_secret = secrets.token_urlsafe(40)
    try:
        settings = Settings(
            var_dir=tmp,
            coursedb_url=coursedb_url,
            mesh_jwt_secret=SecretStr(jwt_secret),
            log_json=False,
            log_level="WARNING",
            schulconnex_base_url=base_url,
            schulconnex_token_url=base_url.removesuffix("/v1") + "/token",
            schulconnex_client_id=creds["client_id"],
            schulconnex_client_secret=SecretStr(creds["client_secret"]),
            schulconnex_max_concurrency=args.concurrency,
        )
        app = create_app(settings)
        token = mint_token(
            subject="bench", secret=jwt_secret, roles=["staff"], scopes=["schulconnex.sync"]
        )
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            LifespanManager(app, startup_timeout=60) as m,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=m.app), base_url="http://sc", timeout=30
            ) as client,
        ):
            runner = app.state.runtime.extras["task_runner"]
            started = time.perf_counter()
            r = await client.post("/sync", json={}, headers=headers)
            r.raise_for_status()
            execution_id = r.json()["execution_id"]
            execution = await runner.wait(execution_id, within=args.timeout)
            seconds = time.perf_counter() - started
            feedback = (await client.get(f"/runs/{execution_id}", headers=headers)).json()
        async with httpx.AsyncClient(base_url=base_url.removesuffix("/v1")) as plain:
            state = (await plain.get("/_fake/state")).json()
        fake_cpu = _cpu_seconds(fake.pid)
    finally:
        fake.terminate()
        fake.wait(timeout=30)
    requests = feedback["summary"]["client"]["requests"]
    totals = feedback["summary"]["totals"]
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_seconds_sync_process": round(own.ru_utime + own.ru_stime, 1),
        "cpu_seconds_fake_process": round(fake_cpu, 1),
        "persons": args.persons,
        "courses": args.courses,
        "concurrency": args.concurrency,
        "status": execution["status"],
        "seconds": round(seconds, 2),
        "requests": requests,
        "requests_per_s": round(requests / seconds, 1),
        "created": totals["created"],
        "failed": totals["failed"],
        "fake": {
            k: state[k]
            for k in ("persons", "personenkontexte", "gruppen", "gruppenzugehoerigkeiten")
        },
        "violations": len(state["violations"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--persons", type=int, default=10_000)
    parser.add_argument("--courses", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    os.environ.setdefault(
        "MESH_SECRET_KEY", __import__("mesh_common.secrets", fromlist=["x"]).generate_key()
    )
    import uvloop  # the event loop the services run on (mesh_common.runner)

    result = uvloop.run(run(args))
    ok = result["status"] == "succeeded" and result["violations"] == 0
    result["targets"] = {
        "first_sync_10k_persons_s": {
            "target": "<= 60",
            "value": result["seconds"],
            "met": ok and result["seconds"] <= 60,
        },
        "fake_openapi_violations": {
            "target": "== 0",
            "value": result["violations"],
            "met": result["violations"] == 0,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "schulconnex_first_sync.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "targets"}, indent=2))
    print(
        f"first sync of {result['persons']:,} persons: {result['seconds']} s, "
        f"{result['requests']:,} requests, {result['requests_per_s']} requests/s "
        f"(target <= 60 s; status {result['status']}, violations {result['violations']})"
    )


if __name__ == "__main__":
    main()
