"""Benchmark: change latency of course-export under 100 course changes per second (issue 4).

    .venv/bin/python bench/course_export_latency.py [--rate 100] [--seconds 20]

Target: p95 <= 5 s from the commit of a course change in the PostgreSQL coursedb to the
``CourseChanged`` message arriving at a subscriber on RabbitMQ.

course-export runs as its own process (``python -m course_export_service``) in its default
PostgreSQL mode: the trigger-fed change log, LISTEN/NOTIFY waking the exporter, the interval
poll (60 s) only as fallback. The coursedb (5,000 seeded courses, reused like the full-export
bench's) gets a full export and one warm-up change first (the first change run compares every
course once); then a writer commits ``rate`` single-course changes per second, each in its own
transaction and each a new subtitle carrying a run id and its sequence number (never a no-op
against what an earlier run left in the reused coursedb), round-robin over the published
courses, while a raw aio-pika consumer records when each change arrives. A later change of the
same course also settles the earlier ones (the exporter sends the newest state). Figures go to
bench/results/course_export_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from course_export_full import (  # the sibling bench's helpers
    RESULTS,
    Service,
    ensure_coursedb,
    percentile,
    scratch,
)

COURSES = 5_000


async def measure(rate: float, seconds: float) -> dict[str, Any]:
    coursedb = await ensure_coursedb(COURSES)
    writer = await asyncpg.connect(coursedb.replace("+asyncpg", ""))
    # The courses the default templates publish.
    published = [
        (r["id"], r["number"])
        for r in await writer.fetch(
            "SELECT id, number FROM courses WHERE publish AND status <> 'finished' ORDER BY id"
        )
    ]
    numbers = dict(published)
    run = uuid.uuid4().hex[:8]
    async with scratch("ce_latency") as (database_url, amqp_url):
        service = Service(
            {"DATABASE_URL": database_url, "AMQP_URL": amqp_url, "COURSEDB_URL": coursedb}
        )
        await service.start()
        pending: dict[str, list[tuple[int, float]]] = defaultdict(list)
        latencies: dict[int, float] = {}
        arrived = asyncio.Event()
        conn = await aio_pika.connect_robust(amqp_url)
        try:
            full = await service.run_task("full-export", within=600)
            assert full["status"] == "succeeded", full

            channel = await conn.channel()
            await channel.set_qos(prefetch_count=500)
            queue = await channel.declare_queue("bench.latency", auto_delete=True)
            await queue.bind("mesh.events", "course_export.course_changed.v1")

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                now = time.time()
                course = orjson.loads(message.body)["course"]
                words = (course.get("subtitle") or "").split()
                if len(words) == 3 and words[:2] == ["lat", run]:
                    seq = int(words[2])
                    waiting = pending[course["number"]]
                    while waiting and waiting[0][0] <= seq:
                        done, committed = waiting.pop(0)
                        latencies[done] = now - committed
                arrived.set()
                await message.ack()

            await queue.consume(on_message)

            async def change(seq: int) -> None:
                course_id, number = published[seq % len(published)]
                await writer.execute(
                    "UPDATE courses SET subtitle = $1, updated_at = now() WHERE id = $2",
                    f"lat {run} {seq}",  # new in every run: the reused coursedb keeps the last
                    course_id,
                )
                pending[number].append((seq, time.time()))

            # Warm-up: the first change run compares every course once (baseline).
            await change(-1)
            async with asyncio.timeout(120):
                while -1 not in latencies:
                    await arrived.wait()
                    arrived.clear()
            latencies.clear()
            warmup_runs = len(await executions(service))

            total = int(rate * seconds)
            started = time.monotonic()
            for seq in range(total):
                delay = started + seq / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await change(seq)
            write_seconds = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    while len(latencies) < total:
                        await arrived.wait()
                        arrived.clear()
            runs = await executions(service)
        finally:
            await conn.close()
            await writer.close()
            await service.stop()
    values = list(latencies.values())
    if not values:
        raise RuntimeError("no change arrived")
    return {
        "courses_in_coursedb": COURSES,
        "published_courses": len(numbers),
        "changes": total,
        "arrived": len(values),
        "missing": total - len(values),
        "target_rate_per_s": rate,
        "achieved_rate_per_s": total / write_seconds,
        "p50_s": percentile(values, 0.50),
        "p95_s": percentile(values, 0.95),
        "p99_s": percentile(values, 0.99),
        "max_s": max(values),
        "change_runs_during_load": len(runs) - warmup_runs,
        "load_average_1m": os.getloadavg()[0],
    }


async def executions(service: Service) -> list[dict[str, Any]]:
    r = await service.client.get(
        "/tasks/executions",
        headers=service.headers("staff"),
        params={"task": "export-changes", "limit": 500},
    )
    r.raise_for_status()
    return list(r.json())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="course changes per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    r = asyncio.run(measure(args.rate, args.seconds))
    complete = r["missing"] == 0
    r["targets"] = {
        "change_latency_p95_s": {
            "target": "<= 5",
            "value": r["p95_s"],
            "met": r["p95_s"] <= 5 and complete,
        }
    }
    print(
        f"{r['changes']} course changes at {r['achieved_rate_per_s']:.0f}/s "
        f"(target rate {r['target_rate_per_s']:.0f}/s) -> {r['arrived']} arrived, "
        f"{r['missing']} missing, in {r['change_runs_during_load']} change runs\n"
        f"  commit -> message at the subscriber: p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s "
        f"(target <= 5 s), p99 {r['p99_s']:.2f} s, max {r['max_s']:.2f} s; "
        f"load average {r['load_average_1m']:.1f}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "course_export_latency.json"
    out.write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
