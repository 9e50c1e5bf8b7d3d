"""Developer CLI for service migrations.

    python -m mesh_common.db revision <service_package> -m "add orders"
    python -m mesh_common.db upgrade <service_package> [--url URL]

``revision`` autogenerates against a throwaway SQLite database brought to head, so the new
revision holds exactly the difference between the models and the existing migrations.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import tempfile
from pathlib import Path

from mesh_common.db.database import Database
from mesh_common.db.migrations import make_revision, upgrade


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mesh_common.db")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision")
    rev.add_argument("package")
    rev.add_argument("-m", "--message", required=True)
    up = sub.add_parser("upgrade")
    up.add_argument("package")
    up.add_argument("--url", help="database URL (default: the service's settings)")
    args = parser.parse_args()
    app_mod = importlib.import_module(f"{args.package}.app")
    script_location = Path(app_mod.MIGRATIONS)
    if args.cmd == "revision":
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(f"sqlite+aiosqlite:///{tmp}/rev.sqlite3")
            asyncio.run(make_revision(db, script_location, args.message))
    else:
        settings = importlib.import_module(f"{args.package}.settings").Settings()
        url = args.url or settings.database_url
        asyncio.run(upgrade(Database(url, schema=settings.db_schema), script_location))


if __name__ == "__main__":
    main()
