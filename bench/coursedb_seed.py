"""Benchmark: seeding the course database (coursedb) with N courses, per backend.

    .venv/bin/python bench/coursedb_seed.py                      # 20k courses, SQLite + PostgreSQL
    .venv/bin/python bench/coursedb_seed.py --courses 100000 --backends sqlite
    .venv/bin/python bench/coursedb_seed.py --backends sqlite,postgresql,mariadb --json out.json

Each backend runs in a child process of its own, so its peak RSS (``resource.getrusage``) is its
own. SQLite writes to a temporary file; PostgreSQL and MariaDB get a throwaway database that is
dropped afterwards. Prints figures only (rows, seconds, rows/s, courses/s, peak RSS, database
size); it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MARIADB_HOST = os.environ.get("TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("TEST_MARIADB_PORT", "3306"))


async def _admin(backend: str, sql: str) -> None:
    if backend == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    else:
        import asyncmy

        conn = await asyncmy.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root")
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql)
        finally:
            conn.close()


async def _size(engine: Any, backend: str, database: str) -> int | None:
    from sqlalchemy import text

    async with engine.connect() as conn:
        if backend == "postgresql":
            return int(await conn.scalar(text(f"SELECT pg_database_size('{database}')")))
    # MariaDB's information_schema sizes lag behind (InnoDB statistics): not reported.
    return None


def _files_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("coursedb.sqlite3*"))


async def _child(backend: str, courses: int, participants: int | None, seed: int) -> dict[str, Any]:
    from coursedb.engine import create_engine
    from coursedb.seed import seed as run_seed

    name = f"coursedb_bench_{uuid.uuid4().hex[:8]}"
    tmp = tempfile.TemporaryDirectory(prefix="coursedb-bench-")
    if backend == "sqlite":
        path = Path(tmp.name) / "coursedb.sqlite3"
        url = f"sqlite+aiosqlite:///{path}"
    elif backend == "postgresql":
        await _admin(backend, f'CREATE DATABASE "{name}"')
        from sqlalchemy.engine import make_url

        admin = make_url(PG_ADMIN_URL)
        url = admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    else:
        await _admin(backend, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        url = f"mysql+asyncmy://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}?charset=utf8mb4"

    engine = create_engine(url)
    try:
        report = await run_seed(
            engine,
            courses=courses,
            participants=participants,
            seed=seed,
            progress=lambda message: print(f"  [{backend}] {message}", file=sys.stderr),
        )
        size = await _size(engine, backend, name)
    finally:
        await engine.dispose()
        if backend == "sqlite":
            size = _files_size(Path(tmp.name))
            tmp.cleanup()
        elif backend == "postgresql":
            await _admin(backend, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await _admin(backend, f"DROP DATABASE IF EXISTS `{name}`")

    return {
        "backend": backend,
        "courses": courses,
        "rows": report.rows,
        "seconds": round(report.seconds, 2),
        "rows_per_s": round(report.rows_per_second),
        "courses_per_s": round(courses / report.seconds),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "db_size_mib": round(size / 2**20, 1) if size else None,
        "counts": report.counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--courses", type=int, default=20_000)
    parser.add_argument("--participants", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = asyncio.run(_child(args.child, args.courses, args.participants, args.seed))
        print(json.dumps(result))
        return 0

    results = []
    for backend in args.backends.split(","):
        command = [sys.executable, __file__, "--child", backend, "--courses", str(args.courses)]
        command += ["--seed", str(args.seed)]
        if args.participants is not None:
            command += ["--participants", str(args.participants)]
        # The child's progress goes straight to stderr; its figures come back as JSON on stdout.
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            print(f"{backend}: failed (exit {done.returncode})", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"coursedb seed benchmark: {args.courses:,} courses (seed {args.seed})")
    header = f"{'backend':<11} {'rows':>10} {'seconds':>8} {'rows/s':>9} {'courses/s':>9}"
    print(header + f" {'peak RSS MiB':>12} {'DB MiB':>7}")
    for r in results:
        print(
            f"{r['backend']:<11} {r['rows']:>10,} {r['seconds']:>8.1f} {r['rows_per_s']:>9,} "
            f"{r['courses_per_s']:>9,} {r['peak_rss_mib']:>12.1f} "
            f"{r['db_size_mib'] if r['db_size_mib'] is not None else '-':>7}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if len(results) == len(args.backends.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
