"""Key rotation step 3: ``rekey_column`` re-encrypts every token not made with the first key,
in batches, leaves current tokens alone, and ``python -m <service> rekey`` runs it on a
service's own database (here: profile's connections, mail and nothing else)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mesh_common.db import Database, service_metadata
from mesh_common.rekey import RekeyTarget, rekey_column
from mesh_common.secrets import DecryptionError, SecretBox, generate_key
from sqlalchemy import Column, Integer, String, Table, Text, insert, select, text


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(request.getfixturevalue("sqlite_url"))
    else:
        database = Database(request.getfixturevalue("pg_url"), schema=f"rk_{uuid.uuid4().hex[:8]}")
    await database.ensure_schema()
    yield database
    if database.schema:
        async with database.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{database.schema}" CASCADE'))
    await database.dispose()


def _table() -> Table:
    return Table(
        "secrets_demo",
        service_metadata(),
        Column("id", Integer, primary_key=True),
        Column("owner", String(50), nullable=False),
        Column("token", Text, nullable=True),
    )


async def test_rekey_column_moves_every_token_to_the_first_key(db: Database) -> None:
    old, new = generate_key(), generate_key()
    table = _table()
    async with db.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        box_old, box_new = SecretBox([old]), SecretBox([new])
        rows = [
            {"id": i, "owner": f"o{i}", "token": box_old.encrypt(f"s{i}", context=f"demo|o{i}")}
            for i in range(1, 6)
        ]
        rows.append({"id": 6, "owner": "o6", "token": box_new.encrypt("s6", context="demo|o6")})
        rows.append({"id": 7, "owner": "o7", "token": None})
        await conn.execute(insert(table), rows)
    target = RekeyTarget("demo", table, "token", "id", lambda row: f"demo|{row.owner}")
    rotating = SecretBox([new, old])
    assert await rekey_column(db, target, rotating, dry_run=True) == {"checked": 6, "rekeyed": 5}
    assert await rekey_column(db, target, rotating, batch=2) == {"checked": 6, "rekeyed": 5}
    assert await rekey_column(db, target, rotating) == {"checked": 6, "rekeyed": 0}
    async with db.engine.connect() as conn:
        stored = {r.owner: r.token for r in await conn.execute(select(table))}
    only_new = SecretBox([new])
    for i in range(1, 7):
        assert only_new.decrypt(stored[f"o{i}"], context=f"demo|o{i}") == f"s{i}"
    with pytest.raises(DecryptionError):
        SecretBox([old]).decrypt(stored["o1"], context="demo|o1")


async def test_a_token_no_listed_key_opens_stops_the_pass(db: Database) -> None:
    table = _table()
    stranger = SecretBox([generate_key()])
    async with db.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await conn.execute(
            insert(table), [{"id": 1, "owner": "x", "token": stranger.encrypt("s", context="c")}]
        )
    target = RekeyTarget("demo", table, "token", "id", lambda row: "c")
    with pytest.raises(DecryptionError, match="not configured"):
        await rekey_column(db, target, SecretBox([generate_key()]), dry_run=True)


def test_service_rekey_command_on_its_own_database(tmp_path: Path) -> None:
    """``python -m profile_service rekey``: migrates nothing, opens the service's SQLite file
    made by a first start, and reports per encrypted column (JSON on stdout)."""
    old, new = generate_key(), generate_key()
    env = {
        **os.environ,
        "VAR_DIR": str(tmp_path),
        "MESH_SECRET_KEY": f"{new},{old}",
        "LOG_JSON": "false",
    }
    # A first start creates and migrates the database; the connection store is then filled
    # with a token under the old key, as before a rotation.
    script = f"""
import asyncio
from asgi_lifespan import LifespanManager
from profile_service.app import create_app
from profile_service.settings import Settings
from profile_service import models
from mesh_common.secrets import SecretBox
from sqlalchemy import insert
import time

async def main():
    app = create_app(Settings())
    async with LifespanManager(app):
        db = app.state.runtime.db
        box = SecretBox([{old!r}])
        async with db.engine.begin() as conn:
            await conn.execute(insert(models.connectors.connections).values(
                name="crm", kind="brevo", settings={{}}, secrets=box.encrypt(
                    {{"api_key": "k"}}, context="mesh_connections|brevo|crm"),
                secret_fields=["api_key"], updated_by="test",
                created_at=time.time(), updated_at=time.time()))

asyncio.run(main())
"""
    made = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr[-3000:]
    dry = subprocess.run(
        [sys.executable, "-m", "profile_service", "rekey", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    report = json.loads(dry.stdout.strip().splitlines()[-1])
    assert report["dry_run"] is True
    assert report["columns"]["connections.secrets"] == {"checked": 1, "rekeyed": 1}
    assert report["columns"]["mail.sealed_content"] == {"checked": 0, "rekeyed": 0}
    done = subprocess.run(
        [sys.executable, "-m", "profile_service", "rekey"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["columns"]["connections.secrets"] == {
        "checked": 1,
        "rekeyed": 1,
    }
    # Without the old key the token still opens now; a key that never made it fails loudly.
    env_new = {**env, "MESH_SECRET_KEY": new}
    again = subprocess.run(
        [sys.executable, "-m", "profile_service", "rekey", "--dry-run"],
        env=env_new,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["columns"]["connections.secrets"] == {
        "checked": 1,
        "rekeyed": 0,
    }
    wrong = subprocess.run(
        [sys.executable, "-m", "profile_service", "rekey"],
        env={**env, "MESH_SECRET_KEY": generate_key()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 2
    assert "not configured" in wrong.stderr
