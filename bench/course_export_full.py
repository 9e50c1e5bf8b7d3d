"""Benchmark: full export of 100,000 courses from PostgreSQL to RabbitMQ (issue 4).

    .venv/bin/python bench/course_export_full.py [--courses 100000]

Targets: the whole snapshot (every batch and the completion message confirmed by RabbitMQ) in
<= 20 s, and peak RSS of the course-export process < 300 MB.

The course database is seeded once (``coursedb.seed``, fixed seed and date) into the dedicated
PostgreSQL database ``edumesh_bench_coursedb_<n>`` and reused while the coursedb schema is the
same (a fingerprint of the schema and seed parameters is kept as the database's comment; a
mismatch or an interrupted seed reseeds). The bench publishes every course, finished ones too:
it activates a courses template without the ``publish``/``status`` filter (through the
template API's validation, as a centre would).

course-export runs as its own process (``python -m course_export_service``) with a throwaway
PostgreSQL service database and a throwaway RabbitMQ vhost; the bench starts the
``full-export`` task over REST and times it until the ``SnapshotCompleted`` outbox row is
confirmed by the broker. Afterwards it drains the snapshot from a queue bound beforehand and
checks that every course arrived. In the same run it measures the raw confirmed-publish rate of
RabbitMQ (aio-pika, pipelined, persistent messages to a quorum queue) for the same payload: the
snapshot's batch messages as the exporter sent them, and one message per course. Figures go to
bench/results/course_export_full.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG = "postgresql://postgres@127.0.0.1:5432"
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SEED, TODAY = 11, dt.date(2026, 3, 1)


def _ensure_secret_key() -> None:
    # coursedb.seed encrypts IBANs; a throwaway key (never written anywhere) is enough here.
    if not os.environ.get("MESH_SECRET_KEY"):
        from mesh_common.secrets import generate_key

        os.environ["MESH_SECRET_KEY"] = generate_key()


def _fingerprint(courses: int) -> str:
    from coursedb import schema

    parts = [f"courses={courses} seed={SEED} today={TODAY}"]
    for table in sorted(schema.metadata.tables.values(), key=lambda t: t.name):
        parts += [f"{table.name}.{c.name}:{c.type}" for c in table.columns]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


async def ensure_coursedb(courses: int) -> str:
    """The URL of a PostgreSQL coursedb holding ``courses`` seeded courses (seeded if needed)."""
    name = f"edumesh_bench_coursedb_{courses}"
    want = f"edumesh bench coursedb {_fingerprint(courses)}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        comment = await admin.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            name,
        )
        if comment == want:
            print(f"reusing seeded coursedb {name}", flush=True)
            return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    _ensure_secret_key()
    from coursedb.engine import create_engine
    from coursedb.seed import seed

    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    engine = create_engine(url)
    print(f"seeding {courses} courses into {name} (once; reused afterwards)", flush=True)
    report = await seed(
        engine,
        courses=courses,
        seed=SEED,
        today=TODAY,
        progress=lambda m: (
            print("  " + m, file=sys.stderr, flush=True)
            if "courses" in m and m.split()[1].split("/")[0].endswith("0000")
            else None
        ),
    )
    await engine.dispose()
    print(f"seeded in {report.seconds:.0f} s ({report.rows} rows)", flush=True)
    conn = await asyncpg.connect(f"{PG}/{name}")
    try:
        await conn.execute("ANALYZE")  # planner statistics for the freshly loaded tables
    finally:
        await conn.close()
    admin = await asyncpg.connect(f"{PG}/postgres")
    try:
        # Only a complete seed gets the fingerprint, so an interrupted one is redone.
        await admin.execute(f"COMMENT ON DATABASE \"{name}\" IS '{want}'")
    finally:
        await admin.close()
    return url


# ------------------------------------------------------------------------ shared helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (all processes, all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True)


@contextlib.asynccontextmanager
async def scratch(tag: str) -> AsyncIterator[tuple[str, str]]:
    """A throwaway PostgreSQL database (service state) and RabbitMQ vhost, removed afterwards."""
    name = f"edumesh_bench_{tag}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    await asyncio.to_thread(rabbitmqctl, "add_vhost", name)
    await asyncio.to_thread(rabbitmqctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield (
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
            AMQP.rstrip("/") + "/" + quote(name, safe=""),
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(rabbitmqctl, "delete_vhost", name)
        admin = await asyncpg.connect(f"{PG}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Service:
    """course-export as its own process (``python -m course_export_service``)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.secret = secrets.token_urlsafe(48)  # only in this process and the child's env
        self.port = free_port()
        self.env = {
            **os.environ,
            "MESH_JWT_SECRET": self.secret,
            "PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def headers(self, *roles: str) -> dict[str, str]:
        from mesh_common.auth import mint_token

        token = mint_token(subject="bench", secret=self.secret, roles=list(roles))
        return {"Authorization": f"Bearer {token}"}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "course_export_service", env=self.env, cwd=ROOT
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"course-export exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.client.get("/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.25)
        raise RuntimeError("course-export did not become ready in 120 s")

    def cpu_seconds(self) -> float:
        """User + system CPU time the service process has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("VmHWM not found")

    async def stop(self) -> None:
        await self.client.aclose()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def run_task(self, name: str, *, within: float) -> dict[str, Any]:
        r = await self.client.post(f"/tasks/{name}/run", headers=self.headers("staff"), json={})
        r.raise_for_status()
        execution_id = r.json()["execution_id"]
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            r = await self.client.get(
                f"/tasks/executions/{execution_id}", headers=self.headers("staff")
            )
            body: dict[str, Any] = r.json()
            if body["status"] != "running":
                return body
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{name} did not finish within {within} s")


def all_courses_templates() -> dict[str, str]:
    """The shipped templates without their publication filter: every course is exported."""
    from course_export_service.default_templates import DEFAULT_TEMPLATES

    return {
        k.value: sql.split("WHERE c.publish")[0].strip() for k, sql in DEFAULT_TEMPLATES.items()
    }


# ------------------------------------------------------------------------ raw publish rate


async def raw_publish_rate(amqp_url: str, body: bytes, count: int, window: int) -> float:
    """Messages/s of pipelined, confirmed, persistent publishes of ``body`` to a quorum queue."""
    conn = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange("bench.raw", aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(
            "bench.raw.q", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, "#")

        def message(i: int) -> aio_pika.Message:
            return aio_pika.Message(
                body,
                message_id=str(i),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )

        started = time.perf_counter()
        for start in range(0, count, window):
            await asyncio.gather(
                *(
                    exchange.publish(message(i), "bench.raw", mandatory=True)
                    for i in range(start, min(start + window, count))
                )
            )
        elapsed = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        return count / elapsed
    finally:
        await conn.close()


async def sample_payloads(coursedb_url: str, batch_size: int) -> tuple[bytes, bytes]:
    """A snapshot batch body of ``batch_size`` real courses, and one course's body."""
    from course_export_service.documents import DocumentBuilder, fetch_children, fetch_page
    from course_export_service.templates import TemplateKind
    from coursedb.engine import create_engine
    from mesh_contracts.course_export import CourseDocument, SnapshotBatch

    engine = create_engine(coursedb_url)
    templates = {TemplateKind(k): v for k, v in all_courses_templates().items()}
    rows = await fetch_page(engine, templates[TemplateKind.COURSES], after=0, limit=batch_size)
    children = await fetch_children(engine, templates, [r["course_id"] for r in rows])
    await engine.dispose()
    built = [o.built for o in DocumentBuilder().build_all(rows, children) if o.built]
    docs = [CourseDocument.model_validate(b.document) for b in built]
    batch = SnapshotBatch(snapshot_id=uuid.uuid4().hex, batch_no=1, courses=docs)
    return batch.model_dump_json().encode(), docs[0].model_dump_json().encode()


# ------------------------------------------------------------------------ the benchmark


async def drain_snapshot(amqp_url: str, queue_name: str) -> tuple[int, int, dict[str, Any] | None]:
    """(batches, courses, completion) read from the verification queue."""
    conn = await aio_pika.connect_robust(amqp_url)
    batches = courses = 0
    completed: dict[str, Any] | None = None
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=50)
        queue = await channel.get_queue(queue_name)
        while True:
            message = await queue.get(no_ack=True, fail=False, timeout=10)
            if message is None:
                break
            data = orjson.loads(message.body)
            if message.type == "course_export.snapshot_completed.v1":
                completed = data
            else:
                batches += 1
                courses += len(data["courses"])
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
    return batches, courses, completed


async def measure(courses: int) -> dict[str, Any]:
    coursedb = await ensure_coursedb(courses)
    results: dict[str, Any] = {"courses_in_coursedb": courses}
    async with scratch("ce_full") as (database_url, amqp_url):
        batch_size = 200
        batch_body, course_body = await sample_payloads(coursedb, batch_size)
        n_batches = -(-courses // batch_size)
        raw_batches_per_s = await raw_publish_rate(amqp_url, batch_body, n_batches, window=16)
        raw_msgs_per_s = await raw_publish_rate(amqp_url, course_body, 20_000, window=500)
        results.update(
            raw_batch_bytes=len(batch_body),
            raw_course_bytes=len(course_body),
            raw_batches_per_s=raw_batches_per_s,
            raw_courses_per_s_as_batches=raw_batches_per_s * batch_size,
            raw_messages_per_s_one_per_course=raw_msgs_per_s,
        )
        print(
            f"raw RabbitMQ confirmed publish: {raw_batches_per_s:,.0f} batch msgs/s "
            f"({len(batch_body) / 1024:.0f} KiB each = {raw_batches_per_s * batch_size:,.0f} "
            f"courses/s); {raw_msgs_per_s:,.0f} msgs/s one course each",
            flush=True,
        )
        service = Service(
            {
                "DATABASE_URL": database_url,
                "AMQP_URL": amqp_url,
                "COURSEDB_URL": coursedb,
                "CHANGE_DETECTION": "polling",
                "CHANGE_POLL_SECONDS": "86400",
                "FULL_EXPORT_CRON": "0 3 1 1 *",
            }
        )
        await service.start()
        try:
            admin = service.headers("admin")
            for kind, sql in all_courses_templates().items():
                r = await service.client.post(
                    f"/templates/{kind}", headers=admin, json={"sql": sql, "comment": "bench"}
                )
                r.raise_for_status()
            # Verification queue, bound before the export, read after the timing.
            conn = await aio_pika.connect_robust(amqp_url)
            channel = await conn.channel()
            verify = await channel.declare_queue("bench.verify", durable=True)
            for key in ("course_export.snapshot_batch.v1", "course_export.snapshot_completed.v1"):
                await verify.bind("mesh.events", key)
            await conn.close()

            outbox = await asyncpg.connect(database_url.replace("+asyncpg", ""))
            cpu_before, load_before = service.cpu_seconds(), os.getloadavg()[0]
            machine_before = machine_cpu()
            started = time.time()
            execution = await service.run_task("full-export", within=1800)
            task_done = time.time()
            while True:
                sent_at = await outbox.fetchval(
                    "SELECT sent_at FROM course_export.mesh_outbox "
                    "WHERE type = 'course_export.snapshot_completed.v1'"
                )
                if sent_at is not None:
                    break
                await asyncio.sleep(0.05)
            await outbox.close()
            elapsed = sent_at - started
            results["peak_rss_mb"] = service.peak_rss_mb()
            results["service_cpu_seconds"] = service.cpu_seconds() - cpu_before
            results["load_average_1m"] = [load_before, os.getloadavg()[0]]
            machine_after = machine_cpu()
            # Everything the machine did meanwhile: course-export, PostgreSQL, RabbitMQ, the
            # bench itself and whatever else runs on the shared machine.
            results["machine_busy_cpu_seconds"] = machine_after[0] - machine_before[0]
            results["machine_busy_fraction"] = results["machine_busy_cpu_seconds"] / (
                machine_after[1] - machine_before[1]
            )
        finally:
            await service.stop()
        exported = execution["counts"]["succeeded"]
        batches, received, completed = await drain_snapshot(amqp_url, "bench.verify")
    results.update(
        execution_status=execution["status"],
        execution_counts=execution["counts"],
        exported=exported,
        seconds=elapsed,
        task_seconds=task_done - started,
        courses_per_s=exported / elapsed,
        received_batches=batches,
        received_courses=received,
        completion_courses=(completed or {}).get("courses"),
    )
    results["ratio_to_raw_batches"] = (
        results["courses_per_s"] / results["raw_courses_per_s_as_batches"]
    )
    results["ratio_to_raw_per_course_msgs"] = (
        results["courses_per_s"] / results["raw_messages_per_s_one_per_course"]
    )
    if received != exported or results["completion_courses"] != exported:
        raise RuntimeError(f"snapshot incomplete: {received} received, {exported} exported")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--courses", type=int, default=100_000)
    args = parser.parse_args()
    r = asyncio.run(measure(args.courses))
    r["targets"] = {
        "full_export_seconds": {
            "target": "<= 20",
            "value": r["seconds"],
            "met": r["seconds"] <= 20,
        },
        "peak_rss_mb": {
            "target": "< 300",
            "value": r["peak_rss_mb"],
            "met": r["peak_rss_mb"] < 300,
        },
    }
    print(
        f"full export of {r['exported']:,} courses PostgreSQL -> RabbitMQ: {r['seconds']:.1f} s "
        f"(target <= 20 s), {r['courses_per_s']:,.0f} courses/s; task done after "
        f"{r['task_seconds']:.1f} s\n"
        f"  ratio to raw confirmed publish of the same batches: "
        f"{r['ratio_to_raw_batches']:.2f} (raw {r['raw_courses_per_s_as_batches']:,.0f} "
        f"courses/s); to one raw message per course: {r['ratio_to_raw_per_course_msgs']:.2f} "
        f"(raw {r['raw_messages_per_s_one_per_course']:,.0f} msgs/s)\n"
        f"  peak RSS of course-export: {r['peak_rss_mb']:.0f} MB (target < 300 MB); "
        f"received {r['received_courses']:,} courses in {r['received_batches']} batches\n"
        f"  course-export used {r['service_cpu_seconds']:.0f} CPU s "
        f"({1000 * r['service_cpu_seconds'] / r['exported']:.2f} ms per course); machine load "
        f"average {r['load_average_1m'][0]:.1f} -> {r['load_average_1m'][1]:.1f} on "
        f"{os.cpu_count()} cores, {r['machine_busy_cpu_seconds']:.0f} CPU s busy in all "
        f"({100 * r['machine_busy_fraction']:.0f} % of the machine)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "course_export_full.json"
    out.write_text(json.dumps(r, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
