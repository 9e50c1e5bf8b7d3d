"""Housekeeping of a service built by ``create_service_app``: relayed outbox rows and inbox marks
past their retention are deleted; pending outbox rows and recent marks stay."""

from __future__ import annotations

import time
from pathlib import Path

from asgi_lifespan import LifespanManager
from mesh_common.app import ServiceRuntime, create_service_app, housekeep
from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata
from mesh_common.settings import ServiceSettings
from sqlalchemy import func, insert, select


def _outbox_row(n: int, *, sent_at: float | None, created_at: float) -> dict[str, object]:
    return {
        "message_id": f"m{n}",
        "kind": "event",
        "type": "test.thing_happened.v1",
        "envelope": "{}",
        "body": "{}",
        "created_at": created_at,
        "attempts": 0,
        "sent_at": sent_at,
    }


async def test_old_sent_outbox_rows_and_old_inbox_marks_are_deleted(tmp_path: Path) -> None:
    metadata = service_metadata()
    outbox, inbox = outbox_table(metadata), inbox_table(metadata)
    settings = ServiceSettings(
        service_name="housekeeping-test",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'hk.sqlite3'}",
        outbox_retention_hours=1,
        inbox_retention_days=1,
    )
    app = create_service_app(
        settings, title="hk", description="housekeeping test", metadata=metadata
    )
    now = time.time()
    async with LifespanManager(app):
        runtime: ServiceRuntime = app.state.runtime
        # The relay must not publish our fake rows: stop it, keep it for its purge.
        assert runtime.outbox_relay is not None
        await runtime.outbox_relay.stop()
        async with runtime.db.engine.begin() as conn:
            await conn.execute(
                insert(outbox),
                [
                    _outbox_row(1, sent_at=now - 7200, created_at=now - 7300),  # old, sent: goes
                    _outbox_row(2, sent_at=now - 60, created_at=now - 70),  # recent: stays
                    _outbox_row(3, sent_at=None, created_at=now - 9000),  # pending: stays
                ],
            )
            await conn.execute(
                insert(inbox),
                [
                    {"handler": "q", "message_id": "old", "processed_at": now - 2 * 86400},
                    {"handler": "q", "message_id": "new", "processed_at": now - 3600},
                ],
            )
        assert await housekeep(runtime) == {"outbox": 1, "inbox": 1}
        async with runtime.db.engine.connect() as conn:
            left = set((await conn.execute(select(outbox.c.message_id))).scalars())
            marks = set((await conn.execute(select(inbox.c.message_id))).scalars())
            assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 2
        assert left == {"m2", "m3"}
        assert marks == {"new"}
        assert await housekeep(runtime) == {"outbox": 0, "inbox": 0}
