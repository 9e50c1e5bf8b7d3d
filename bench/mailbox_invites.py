"""Benchmark: 1,000 room-mailbox invitations sent and their replies processed, end to end (issue 8).

    .venv/bin/python bench/mailbox_invites.py [--invitations 1000] [--mailboxes 10]

Target: everything in <= 60 s, from the MailboxProcessor run that sends the invitations to the
run that has applied every reply; the figure printed is messages/s (invitations + replies).

Real servers: Dovecot started from deploy/dovecot/dovecot.conf on free high ports
(``mesh_common.testing.dovecot``), with the aiosmtpd SMTP server in front of it (its own
process) delivering over LMTP; STARTTLS + AUTH for the technical user's SMTP sessions, IMAPS for
its reply folder. The service runs in this process, on SQLite with the in-memory bus (the
embedded default) or with ``--stack production`` on PostgreSQL + RabbitMQ (a throwaway database
and vhost), and is driven over its REST API. The room mailboxes are played by the
auto-accepting responder in another process (reads the invitations over IMAP, answers each
with an iTIP REPLY over SMTP), like Exchange resource mailboxes. Timed:

1. ``send``: a MailboxProcessor run sending every pending invitation over SMTP;
2. ``respond``: the room mailboxes read and answer them (the groupware's share of the time);
3. ``read``: a MailboxProcessor run reading every reply over IMAP, applying it by UID and
   SEQUENCE, and moving it to the processed folder.

Afterwards every invitation must be ``accepted`` and every reply sit in the processed folder.
Figures go to bench/results/mailbox_invites.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "b" * 40


PG = "postgresql://postgres@127.0.0.1:5432"
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@contextlib.asynccontextmanager
async def service_state(stack: str, tmp: Path) -> AsyncIterator[dict[str, Any]]:
    """Settings for the service's state: the embedded default (SQLite + in-memory bus) or the
    production stack (a throwaway PostgreSQL database and RabbitMQ vhost, removed after)."""
    if stack == "embedded":
        yield {"var_dir": tmp}
        return
    import asyncpg

    name = f"edumesh_bench_mi_{uuid.uuid4().hex[:8]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True)

    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    await asyncio.to_thread(ctl, "add_vhost", name)
    await asyncio.to_thread(ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield {
            "var_dir": tmp,
            "database_url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
            "amqp_url": AMQP.rstrip("/") + "/" + quote(name, safe=""),
        }
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(ctl, "delete_vhost", name)
        admin = await asyncpg.connect(f"{PG}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def measure(invitations: int, mailboxes: int, stack: str = "embedded") -> dict[str, Any]:
    if not os.environ.get("MESH_SECRET_KEY"):
        from mesh_common.secrets import generate_key

        os.environ["MESH_SECRET_KEY"] = generate_key()  # throwaway, never written anywhere
    from mailbox_invites_service.app import create_app
    from mailbox_invites_service.settings import Settings
    from mesh_common.auth import mint_token
    from mesh_common.testing.dovecot import DovecotServer, SmtpRelay, dovecot_binary
    from pydantic import SecretStr

    if dovecot_binary() is None:
        raise SystemExit("dovecot is not installed (dovecot-imapd dovecot-lmtpd)")
    admin = {
        "Authorization": "Bearer " + mint_token(subject="bench", secret=SECRET, roles=["admin"])
    }
    # The mail servers and the room mailboxes run in processes of their own, as they would
    # beside a real deployment; only the service runs in this one.
    with (
        tempfile.TemporaryDirectory() as tmp,
        DovecotServer() as dovecot,
        SmtpRelay(dovecot, process=True) as smtp,
    ):
        async with service_state(stack, Path(tmp)) as state:
            app = create_app(
                Settings(
                    **state,
                    mesh_jwt_secret=SecretStr(SECRET),
                    processor_interval_seconds=3600,
                    log_json=False,
                )
            )
            return await _timed(app, dovecot, smtp, invitations, mailboxes, stack, admin)


async def _timed(
    app: Any,
    dovecot: Any,
    smtp: Any,
    invitations: int,
    mailboxes: int,
    stack: str,
    admin: dict[str, str],
) -> dict[str, Any]:
    from asgi_lifespan import LifespanManager

    results: dict[str, Any] = {"invitations": invitations, "mailboxes": mailboxes}
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://mi", timeout=600
        ) as client,
    ):

        async def call(method: str, url: str, **kw: Any) -> Any:
            r = await client.request(method, url, headers=admin, **kw)
            if r.status_code >= 300:
                raise RuntimeError(f"{method} {url}: {r.status_code} {r.text}")
            return r.json()

        async def run_processor() -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            ex = await call("POST", "/tasks/mailbox-processor/run", json={})
            while True:
                body = await call("GET", f"/tasks/executions/{ex['execution_id']}")
                if body["status"] != "running":
                    break
                await asyncio.sleep(0.2)
            if body["status"] != "succeeded":
                raise RuntimeError(f"MailboxProcessor run ended {body['status']}: {body}")
            return time.perf_counter() - started, body

        # ---------------------------------------------------------- set-up (not timed)
        tech = dovecot.add_user("raumbuchung@vhs.bench.test")
        user = await call(
            "POST",
            "/technical-users",
            json={
                "name": "raumbuchung",
                "display_name": "Raumbuchung",
                "email": tech.address,
                "smtp": {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "starttls",
                    "username": tech.address,
                    "password": tech.password,
                },
                "imap": {
                    "host": "127.0.0.1",
                    "port": dovecot.imaps_port,
                    "security": "tls",
                    "username": tech.address,
                    "password": tech.password,
                },
                "tls_ca_pem": dovecot.ca_pem,
            },
        )
        check = await call("POST", f"/technical-users/{user['id']}/check")
        if not check["ok"]:
            raise RuntimeError(f"connection check failed: {check}")
        responders = []
        for m in range(mailboxes):
            room = dovecot.add_user(f"raum-{m}@rooms.bench.test")
            await call("PUT", f"/rooms/r-{m}", json={"name": f"Raum {m}"})
            await call(
                "POST",
                "/mailboxes",
                json={
                    "room_id": f"r-{m}",
                    "email": room.address,
                    "technical_user_id": user["id"],
                },
            )
            responders.append(
                {
                    "address": room.address,
                    "password": room.password,
                    "imap_port": dovecot.imap_port,
                    "smtp_port": smtp.port,
                }
            )
        base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        for i in range(invitations):
            starts = base + dt.timedelta(days=1 + i // 8, hours=8 + i % 8)
            await call(
                "PUT",
                f"/events/ev-{i}",
                json={
                    "room_id": f"r-{i % mailboxes}",
                    "title": f"Kurs {i}: Englisch für den Beruf",
                    "starts_at": starts.isoformat(),
                    "ends_at": (starts + dt.timedelta(minutes=90)).isoformat(),
                    "booked_by": "Fachbereich Sprachen",
                },
            )
        pending = await call("GET", "/invitations", params={"status": "pending", "limit": 1000})
        if len(pending) != min(invitations, 1000):
            raise RuntimeError(f"{len(pending)} invitations pending, expected {invitations}")

        groupware = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
            [sys.executable, __file__, "--respond"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert groupware.stdin is not None and groupware.stdout is not None
        groupware.stdin.write(json.dumps(responders) + "\n")
        groupware.stdin.flush()
        if groupware.stdout.readline().strip() != "ready":
            raise RuntimeError("responder process did not start")

        # ---------------------------------------------------------- timed
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        send_s, send_ex = await run_processor()
        t1 = time.perf_counter()
        groupware.stdin.write("go\n")
        groupware.stdin.flush()
        answer = await asyncio.to_thread(groupware.stdout.readline)
        respond_s = time.perf_counter() - t1
        read_s, read_ex = await run_processor()
        total_s = time.perf_counter() - t0
        service_cpu_s = time.process_time() - cpu0
        groupware.wait(timeout=30)

        # ---------------------------------------------------------- verified
        groupware_out = json.loads(answer)
        received = int(groupware_out["received"])
        counts: dict[str, int] = {}
        for box in await call("GET", "/mailboxes"):
            for status, n in box["invitations"].items():
                counts[status] = counts.get(status, 0) + n
        processed = len(dovecot.stored_messages(tech.address, "edumesh-processed"))
        left = len(dovecot.stored_messages(tech.address))
        if counts != {"accepted": invitations} or received != invitations:
            raise RuntimeError(f"not all accepted: {counts}, {received} received")
        if processed != invitations or left != 0:
            raise RuntimeError(f"replies: {processed} processed, {left} left in the inbox")

    messages = 2 * invitations  # each invitation and its reply
    results.update(
        {
            "seconds": round(total_s, 2),
            "send_seconds": round(send_s, 2),
            "respond_seconds": round(respond_s, 2),
            "read_seconds": round(read_s, 2),
            "messages": messages,
            "messages_per_s": round(messages / total_s, 1),
            # CPU seconds used in the timed part: by the service process (its share of the
            # machine is what a deployment has to provide), and by the simulated room mailboxes.
            "service_cpu_seconds": round(service_cpu_s, 2),
            "responder_cpu_seconds": groupware_out["cpu_seconds"],
            "load_average_1m": round(os.getloadavg()[0], 2),
            "invitations_per_s_sent": round(invitations / send_s, 1),
            "replies_per_s_processed": round(invitations / read_s, 1),
            "send_counts": send_ex["counts"],
            "read_counts": read_ex["counts"],
            "final_statuses": counts,
            "dovecot": "deploy/dovecot/dovecot.conf",
            "stack": (
                "PostgreSQL + RabbitMQ"
                if stack == "production"
                else "SQLite + in-memory bus (embedded default)"
            ),
        }
    )
    return results


def respond() -> int:
    """``--respond``: the room mailboxes (the groupware side) in a process of their own. Reads
    the mailboxes as JSON from stdin, says "ready", answers everything on "go", prints counts."""
    from mailbox_invites_service.responder import AutoAcceptResponder

    responders = [AutoAcceptResponder(**r) for r in json.loads(sys.stdin.readline())]
    print("ready", flush=True)
    sys.stdin.readline()

    async def all_of_them() -> int:
        answered = await asyncio.gather(*(r.process() for r in responders))
        return sum(len(a) for a in answered)

    cpu0 = time.process_time()
    received = asyncio.run(all_of_them())
    cpu = round(time.process_time() - cpu0, 2)
    print(json.dumps({"received": received, "cpu_seconds": cpu}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--invitations", type=int, default=1000)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument(
        "--stack",
        choices=["embedded", "production"],
        default="embedded",
        help="service state on SQLite + in-memory bus (default, as `make run`) or on "
        "PostgreSQL + RabbitMQ",
    )
    parser.add_argument("--respond", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.respond:
        return respond()
    r = asyncio.run(measure(args.invitations, args.mailboxes, args.stack))
    r["targets"] = {
        "end_to_end_seconds": {"target": "<= 60", "value": r["seconds"], "met": r["seconds"] <= 60},
        "messages_per_s": {
            "target": f">= {2 * args.invitations / 60:.1f}",
            "value": r["messages_per_s"],
            "met": r["messages_per_s"] >= 2 * args.invitations / 60,
        },
    }
    print(
        f"{r['invitations']:,} invitations to {r['mailboxes']} room mailboxes, sent and answered "
        f"end to end in {r['seconds']:.1f} s (target <= 60 s): {r['messages_per_s']:.1f} "
        f"messages/s\n"
        f"  send {r['send_seconds']:.1f} s ({r['invitations_per_s_sent']:.0f} invitations/s over "
        f"SMTP), room mailboxes answering {r['respond_seconds']:.1f} s, reading replies "
        f"{r['read_seconds']:.1f} s ({r['replies_per_s_processed']:.0f} replies/s over IMAP)\n"
        f"  CPU in the timed part: service {r['service_cpu_seconds']:.1f} s, room mailboxes "
        f"{r['responder_cpu_seconds']:.1f} s; machine load average {r['load_average_1m']}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "mailbox_invites.json"
    out.write_text(json.dumps(r, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {out}")
    return 0 if all(t["met"] for t in r["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
