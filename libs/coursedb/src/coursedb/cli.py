"""The ``coursedb`` command: create, seed, count and drop the course database.

    coursedb init                      create the tables (idempotent)
    coursedb seed --courses N [--participants M] [--seed S] [--today YYYY-MM-DD] [--reset]
    coursedb stats                     row counts per table, course/registration status mix
    coursedb drop                      drop every coursedb table
    coursedb rekey [--dry-run]         re-encrypt IBANs with the first MESH_SECRET_KEY (rotation)

The database is ``--url``, else the environment variable ``COURSEDB_URL``, else the local SQLite
file ``./var/coursedb.sqlite3`` (its directory is created). This is the only place that reads
``COURSEDB_URL``. Output goes to stdout (results) and stderr (progress); the URL is printed
without its password, and no personal data is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from collections.abc import Sequence

from mesh_common.secrets import SecretsError
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from coursedb.banking import BankCipher, rekey_accounts
from coursedb.engine import DEFAULT_URL, create_engine, create_schema, drop_schema
from coursedb.schema import ALL_TABLES, courses, registrations
from coursedb.seed import SeedError, seed

ENV_URL = "COURSEDB_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coursedb",
        description="The centre's local course database (schema, demo data, statistics).",
    )
    parser.add_argument(
        "--url",
        help=f"SQLAlchemy async URL (default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="create the tables (idempotent)")
    seed_cmd = commands.add_parser("seed", help="fill an empty database with demo data")
    seed_cmd.add_argument("--courses", type=int, default=2000, help="number of courses")
    seed_cmd.add_argument(
        "--participants", type=int, default=None, help="number of participants (courses/2)"
    )
    seed_cmd.add_argument("--seed", type=int, default=1, help="random seed (same seed, same data)")
    seed_cmd.add_argument(
        "--today",
        type=dt.date.fromisoformat,
        default=None,
        help="reference date YYYY-MM-DD for past/running/upcoming courses (default: today)",
    )
    seed_cmd.add_argument("--reset", action="store_true", help="drop and recreate the tables")
    seed_cmd.add_argument("--batch-size", type=int, default=1000, help="courses per transaction")
    commands.add_parser("stats", help="row counts per table")
    commands.add_parser("drop", help="drop every coursedb table")
    rekey_cmd = commands.add_parser(
        "rekey",
        help="re-encrypt IBANs with the first MESH_SECRET_KEY and recompute their fingerprints "
        "(key rotation, step 3)",
    )
    rekey_cmd.add_argument("--dry-run", action="store_true", help="only count what would change")
    rekey_cmd.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    return parser


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _stats(engine: AsyncEngine) -> str:
    lines = []
    async with engine.connect() as conn:
        for table in ALL_TABLES:
            count = await conn.scalar(select(func.count()).select_from(table))
            lines.append(f"{table.name:<18} {count:>10,}")
        for table in (courses, registrations):
            result = await conn.execute(
                select(table.c.status, func.count())
                .group_by(table.c.status)
                .order_by(table.c.status)
            )
            mix = ", ".join(f"{status} {count:,}" for status, count in result)
            lines.append(f"{table.name} by status: {mix or '-'}")
    return "\n".join(lines)


async def _run(args: argparse.Namespace, url: str) -> int:
    engine = create_engine(url)
    try:
        if args.command == "init":
            await create_schema(engine)
            print(f"created the coursedb schema in {_safe(url)}")
        elif args.command == "drop":
            await drop_schema(engine)
            print(f"dropped the coursedb schema in {_safe(url)}")
        elif args.command == "stats":
            print(await _stats(engine))
        elif args.command == "rekey":
            cipher = BankCipher.from_env()
            done = await rekey_accounts(engine, cipher, batch=args.batch_size, dry_run=args.dry_run)
            verb = "would re-key" if args.dry_run else "re-keyed"
            print(f"bank accounts: {done['checked']:,} checked, {verb} {done['rekeyed']:,}")
        elif args.command == "seed":
            report = await seed(
                engine,
                courses=args.courses,
                participants=args.participants,
                seed=args.seed,
                today=args.today,
                reset=args.reset,
                batch_size=args.batch_size,
                progress=lambda message: print(message, file=sys.stderr, flush=True),
            )
            print(
                f"seeded {_safe(url)}: {report.rows:,} rows in {report.seconds:.1f} s "
                f"({report.rows_per_second:,.0f} rows/s)"
            )
            for name, count in report.counts.items():
                print(f"  {name:<18} {count:>10,}")
    finally:
        await engine.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coursedb`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    url = args.url or os.environ.get(ENV_URL) or DEFAULT_URL
    try:
        return asyncio.run(_run(args, url))
    except (SeedError, SecretsError) as error:
        print(f"coursedb: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
