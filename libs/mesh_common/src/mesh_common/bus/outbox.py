"""Transactional outbox: messages written with the domain change, relayed with confirms.

``outbox_table(metadata)`` defines the table in the service's own ``MetaData`` (schema None; on
PostgreSQL the service schema comes from ``schema_translate_map``). ``Outbox.add(session_or_conn,
message)`` INSERTs the complete envelope (ids, request id, actor, trace context taken now) in
the caller's transaction. :class:`OutboxRelay` publishes pending rows in id order, pipelined,
with publisher confirms, and marks them sent. It wakes at once after an in-process commit (an
asyncio.Event poke) and otherwise polls; several replicas on PostgreSQL share the work through
``FOR UPDATE SKIP LOCKED`` (on SQLite run one relay). A row whose target is unroutable is
retried with backoff and, after ``max_attempts``, marked failed; a broker outage never consumes
a row's attempts, the relay just backs off and retries. Delivery is at-least-once: a crash
between publish and mark re-sends with the same message id, which the consumer's inbox drops.

This module must not create engines or read settings; it must not commit the caller's
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from mesh_common.bus.core import Bus, _current_message
from mesh_common.bus.envelope import Envelope, make_envelope
from mesh_common.bus.errors import Unroutable

log = logging.getLogger("mesh.bus.outbox")

OutboxKind = Literal["event", "command"]


def outbox_table(metadata: MetaData, name: str = "mesh_outbox") -> Table:
    """The outbox table of one service (timestamps are UNIX epoch seconds, portable)."""
    table = Table(
        name,
        metadata,
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        Column("message_id", String(64), nullable=False, unique=True),
        Column("kind", String(16), nullable=False),
        Column("type", String(200), nullable=False),
        Column("envelope", Text, nullable=False),  # JSON: Envelope.to_record()
        Column("body", Text, nullable=False),  # the JSON payload
        Column("created_at", Float(precision=53), nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt_at", Float(precision=53), nullable=True),
        Column("last_error", Text, nullable=True),
        Column("sent_at", Float(precision=53), nullable=True),
        Column("failed_at", Float(precision=53), nullable=True),
    )
    pending = (table.c.sent_at.is_(None)) & (table.c.failed_at.is_(None))
    Index(
        f"ix_{name}_pending",
        table.c.id,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    return table


Executor = AsyncSession | AsyncConnection


class Outbox:
    """Writes messages into the outbox table in the caller's transaction."""

    def __init__(self, table: Table, *, service: str) -> None:
        self.table = table
        self.service = service
        self._wakeup: asyncio.Event | None = None

    @property
    def wakeup(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    def poke(self) -> None:
        """Wake the in-process relay (called after a commit that added messages)."""
        self.wakeup.set()

    def envelope(
        self, message: BaseModel, *, kind: OutboxKind, headers: dict[str, Any] | None = None
    ) -> Envelope:
        return make_envelope(
            kind,
            message,
            app_id=self.service,
            causation_id=_current_message.get(),
            headers=headers,
        )

    async def add(
        self,
        conn: Executor,
        message: BaseModel,
        *,
        kind: OutboxKind = "event",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """INSERT ``message`` in ``conn``'s transaction; returns its message id.

        Nothing is published before the caller commits; after the commit the relay is poked.
        """
        env = self.envelope(message, kind=kind, headers=headers)
        await conn.execute(self.table.insert().values(**_row(env)))
        self._poke_after_commit(conn)
        return env.message_id

    async def add_encoded(
        self,
        conn: Executor,
        message_type: type[BaseModel],
        body: bytes,
        *,
        kind: OutboxKind = "event",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Like :meth:`add` for a message the caller has encoded already: ``body`` is its JSON,
        exactly what an instance of ``message_type`` encodes to (the caller vouches for that;
        for a large message assembled from parts that were encoded once, e.g. a batch)."""
        env = make_envelope(
            kind,
            message_type,
            app_id=self.service,
            causation_id=_current_message.get(),
            headers=headers,
            body=body,
        )
        await conn.execute(self.table.insert().values(**_row(env)))
        self._poke_after_commit(conn)
        return env.message_id

    async def add_many(
        self,
        conn: Executor,
        messages: Sequence[BaseModel],
        *,
        kind: OutboxKind = "event",
        headers: dict[str, Any] | None = None,
    ) -> list[str]:
        """Like :meth:`add` for several messages, in one statement (one round trip); the
        relay publishes them in this order. Returns their message ids."""
        if not messages:
            return []
        envelopes = [self.envelope(m, kind=kind, headers=headers) for m in messages]
        await conn.execute(self.table.insert(), [_row(env) for env in envelopes])
        self._poke_after_commit(conn)
        return [env.message_id for env in envelopes]

    async def add_command(
        self, conn: Executor, command: BaseModel, *, headers: dict[str, Any] | None = None
    ) -> str:
        return await self.add(conn, command, kind="command", headers=headers)

    def _poke_after_commit(self, conn: Executor) -> None:
        # One permanent listener per session/connection (flagged in its ``info``) and a
        # per-transaction "has outbox rows" flag, so long-lived sessions accumulate nothing.
        pending_key = ("mesh_outbox_pending", id(self))
        listening_key = ("mesh_outbox_listening", id(self))
        if isinstance(conn, AsyncSession):
            target: Any = conn.sync_session
            event_name = "after_commit"
        else:
            target = conn.sync_connection
            # Connection "commit" fires *before* the DBAPI commit; the relay re-checks shortly
            # after an empty poke-triggered read to cover that window.
            event_name = "commit"
        if target is None:
            return
        target.info[pending_key] = True
        if target.info.get(listening_key):
            return
        target.info[listening_key] = True

        def on_commit(owner: Any) -> None:
            if owner.info.pop(pending_key, False):
                self.poke()

        def on_rollback(owner: Any, *_: Any) -> None:
            owner.info.pop(pending_key, None)

        event.listen(target, event_name, on_commit)
        event.listen(
            target,
            "after_soft_rollback" if event_name == "after_commit" else "rollback",
            on_rollback,
        )


def _row(env: Envelope) -> dict[str, Any]:
    return {
        "message_id": env.message_id,
        "kind": env.kind,
        "type": env.type,
        "envelope": orjson.dumps(env.to_record()).decode(),
        "body": env.body.decode(),
        "created_at": env.timestamp,
        "attempts": 0,
    }


@dataclass(slots=True)
class Backlog:
    pending: int
    oldest_age: float  # seconds; 0 when nothing is pending
    failed: int


class OutboxRelay:
    """Background task publishing pending outbox rows through a bus."""

    def __init__(
        self,
        outbox: Outbox,
        bus: Bus,
        engine: AsyncEngine,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        max_attempts: int = 10,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.bus = bus
        self.engine = engine
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.relayed = 0
        self.failed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._skip_locked = engine.dialect.name == "postgresql"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self.run(), name="outbox-relay")
        return self._task

    async def stop(self) -> None:
        self._stopping = True
        self.outbox.poke()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Relay until stopped: drain, then wait for a poke or the poll interval."""
        delay = self.backoff_base
        wakeup = self.outbox.wakeup
        poked = False
        while not self._stopping:
            wakeup.clear()
            try:
                count = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbox relay: %s; retrying in %.1fs", self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_base
            if count >= self.batch_size:
                continue
            if count == 0 and poked:
                # A connection-level poke fires before the commit is visible: look once more.
                poked = False
                await asyncio.sleep(0.02)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self.poll_interval)
            poked = wakeup.is_set()

    # ------------------------------------------------------------------ one batch

    async def relay_once(self) -> int:
        """Publish one batch of due rows; returns how many rows it handled."""
        t = self.outbox.table
        now = time.time()
        query = (
            select(t.c.id, t.c.envelope, t.c.body, t.c.attempts)
            .where(
                t.c.sent_at.is_(None),
                t.c.failed_at.is_(None),
                or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now),
            )
            .order_by(t.c.id)
            .limit(self.batch_size)
        )
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(query)).all()
            if not rows:
                return 0
            envelopes = [
                Envelope.from_record(orjson.loads(row.envelope), row.body.encode()) for row in rows
            ]
            results = await self.bus.publish_envelopes(envelopes)
            sent: list[int] = []
            outage: BaseException | None = None
            for row, result in zip(rows, results, strict=True):
                if result is None:
                    sent.append(row.id)
                elif isinstance(result, Unroutable):
                    await self._row_failed(conn, row.id, row.attempts + 1, result, now)
                else:
                    outage = result  # broker trouble: the row keeps its attempts
            if sent:
                await conn.execute(update(t).where(t.c.id.in_(sent)).values(sent_at=now))
                self.relayed += len(sent)
        if outage is not None:
            raise outage
        return len(rows)

    async def _row_failed(
        self, conn: AsyncConnection, row_id: int, attempts: int, exc: BaseException, now: float
    ) -> None:
        t = self.outbox.table
        values: dict[str, Any] = {"attempts": attempts, "last_error": str(exc)[:1000]}
        if attempts >= self.max_attempts:
            values["failed_at"] = now
            self.failed += 1
            log.error("outbox row %s failed for good after %d attempts: %s", row_id, attempts, exc)
        else:
            values["next_attempt_at"] = now + min(
                self.backoff_base * 2 ** (attempts - 1), self.backoff_max
            )
        await conn.execute(update(t).where(t.c.id == row_id).values(**values))

    # ------------------------------------------------------------------ metrics

    async def backlog(self) -> Backlog:
        """Pending rows, age of the oldest pending row, failed rows (for metrics/health)."""
        t = self.outbox.table
        pending_filter = (t.c.sent_at.is_(None)) & (t.c.failed_at.is_(None))
        async with self.engine.connect() as conn:
            pending, oldest = (
                await conn.execute(
                    select(func.count(), func.min(t.c.created_at)).where(pending_filter)
                )
            ).one()
            failed = (
                await conn.execute(select(func.count()).where(t.c.failed_at.is_not(None)))
            ).scalar_one()
        age = max(time.time() - oldest, 0.0) if oldest is not None else 0.0
        return Backlog(pending=int(pending), oldest_age=age, failed=int(failed))

    async def purge_sent(self, older_than: float) -> int:
        """Delete rows sent more than ``older_than`` seconds ago; returns how many."""
        t = self.outbox.table
        async with self.engine.begin() as conn:
            result = await conn.execute(
                t.delete().where(t.c.sent_at.is_not(None), t.c.sent_at < time.time() - older_than)
            )
        return int(result.rowcount or 0)
