"""Inbox: per-handler deduplication by message id, in the consumer's own transaction.

``inbox_table(metadata)`` defines the table in the service's ``MetaData`` (schema None).
``record(conn, table, handler=..., message_id=...)`` INSERTs ``(handler, message_id)`` and
returns False when that pair is already there: a duplicate delivery. Because the row is written
in the same transaction as the handler's effect, the effect and the "seen" mark commit or roll
back together (a failed attempt leaves no mark, so the retry runs the effect again).
:meth:`Inbox.idempotent` wraps a handler so it runs in such a transaction and gets the session.

This module must not create engines or publish messages.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Column, Float, MetaData, String, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from mesh_common.bus.core import MessageContext

M = TypeVar("M")
R = TypeVar("R")

Executor = AsyncSession | AsyncConnection


def inbox_table(metadata: MetaData, name: str = "mesh_inbox") -> Table:
    """The inbox table of one service: one row per (handler queue, message id) processed."""
    return Table(
        name,
        metadata,
        Column("handler", String(200), primary_key=True),
        Column("message_id", String(64), primary_key=True),
        Column("processed_at", Float(precision=53), nullable=False),
    )


def _dialect(conn: Executor) -> str:
    if isinstance(conn, AsyncConnection):
        return conn.dialect.name
    return conn.get_bind().dialect.name


async def record(conn: Executor, table: Table, *, handler: str, message_id: str) -> bool:
    """Mark ``message_id`` as processed by ``handler`` in ``conn``'s transaction.

    Returns True the first time, False for a duplicate. On PostgreSQL a concurrent duplicate
    waits for the first transaction and then sees the conflict, so exactly one effect commits.
    """
    values = {"handler": handler, "message_id": message_id, "processed_at": time.time()}
    dialect = _dialect(conn)
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(values).on_conflict_do_nothing()
    else:
        # Other dialects: a savepoint keeps the caller's transaction usable after the conflict.
        try:
            async with conn.begin_nested():
                await conn.execute(table.insert().values(values))
        except IntegrityError:
            return False
        return True
    result = await conn.execute(stmt)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


class Inbox:
    """Runs handlers idempotently: effect + inbox mark in one transaction."""

    def __init__(self, table: Table, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.table = table
        self.sessionmaker = sessionmaker
        self.duplicates = 0

    def idempotent(
        self, fn: Callable[[M, MessageContext, AsyncSession], Awaitable[R]]
    ) -> Callable[[M, MessageContext], Awaitable[R | None]]:
        """Wrap ``async def h(msg, ctx, session)`` into a bus handler ``h(msg, ctx)``.

        The wrapper opens a session and transaction, records ``(ctx.queue, ctx.message_id)``,
        skips the handler (returns None) for a duplicate, and commits the handler's work
        together with the mark; an exception rolls both back and the bus retries.
        """

        @functools.wraps(fn)
        async def handler(message: M, ctx: MessageContext) -> R | None:
            async with self.sessionmaker() as session, session.begin():
                first = await record(
                    session, self.table, handler=ctx.queue, message_id=ctx.message_id
                )
                if not first:
                    self.duplicates += 1
                    return None
                ctx.extras["session"] = session
                return await fn(message, ctx, session)

        return handler

    async def purge(self, older_than: float) -> int:
        """Delete marks of messages processed more than ``older_than`` seconds ago; returns how
        many. A duplicate that arrives after its mark is gone runs again, so keep marks longer
        than any redelivery or DLQ replay can take (see ``INBOX_RETENTION_DAYS``)."""
        t = self.table
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                t.delete().where(t.c.processed_at < time.time() - older_than)
            )
        return int(getattr(result, "rowcount", 0) or 0)
