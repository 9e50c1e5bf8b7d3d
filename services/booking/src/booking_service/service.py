"""The booking service layer: LIVE booking, idempotency, the outage backlog and its worker.

``OrderService.place`` answers an order:

1. Its ``external_order_id`` is looked up in booking's own ``orders`` table: a known id with the
   same payload hash gets the stored answer again (nothing is booked twice); a different hash is
   :class:`~booking_service.booker.OrderConflict` (409).
2. If older orders are still waiting in the backlog, the new one queues behind them, so the
   backlog is booked in arrival order.
3. Otherwise it is booked LIVE (:class:`~booking_service.booker.Booker`) within
   ``coursedb_timeout_seconds``. If the course database cannot be reached (connection refused or
   lost, database gone or not accepting connections, timeout), the order is stored encrypted in
   the backlog and answered ``pending``.
4. The final answer is recorded in ``orders`` with one statement that also marks the
   order's notification mails due (:mod:`booking_service.mailing` prepares and queues them after
   the answer went out), so a replay returns it and nothing is mailed twice.

:class:`BacklogWorker` books pending orders one at a time, oldest first, with bounded
exponential backoff while the course database stays unreachable, and publishes
``booking.order_confirmed.v1`` / ``booking.order_rejected.v1`` through the outbox in the same
transaction that records the outcome. On PostgreSQL the head row is locked ``FOR UPDATE``, so
replicas never book two backlog orders out of order.

This module must not know about HTTP or the bus' RPC plumbing (only the outbox).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mesh_common.bus.outbox import Outbox
from mesh_common.db import Database
from mesh_common.errors import Conflict, DomainError, NotFound, Unavailable
from mesh_common.secrets import SecretBox
from mesh_contracts.booking import (
    Order,
    OrderConfirmed,
    OrderRejected,
    OrderResult,
    OrderStatus,
)
from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from booking_service.booker import Booker, OrderConflict
from booking_service.models import orders
from booking_service.notifications import Notifier
from booking_service.pgfast import PgPool
from booking_service.settings import Settings

log = logging.getLogger("booking.service")

T = TypeVar("T")

PAYLOAD_CONTEXT = "booking.orders.payload"
HASH_CONTEXT = "booking.order"


# PostgreSQL SQLSTATEs that mean "the database is not there right now" rather than "the booking
# is wrong": connection exceptions (08), too many connections (53300), the server shutting down
# or starting (57P01-57P03), the database missing (3D000, e.g. renamed during maintenance).
_UNREACHABLE_STATES = ("08", "53300", "57P01", "57P02", "57P03", "3D000")


# The order with this id (sorted first, wherever it is in the backlog) and the oldest order
# waiting in the backlog, in one query.
_LOOKUP = (
    select(
        orders.c.external_order_id,
        orders.c.payload_hash,
        orders.c.status,
        orders.c.result,
        orders.c.detail,
        orders.c.received_at,
    )
    .where(
        (orders.c.external_order_id == bindparam("external_id"))
        | (orders.c.status == OrderStatus.PENDING.value)
    )
    .order_by(
        case((orders.c.external_order_id == bindparam("external_id"), 0), else_=1), orders.c.id
    )
    .limit(2)
)
_INSERT = insert(orders)


def is_unreachable(exc: BaseException) -> bool:
    """Does ``exc`` mean the course database could not be reached (vs. a real error)?"""
    if isinstance(exc, TimeoutError | OSError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(state, str) and state.startswith(_UNREACHABLE_STATES)
    return False


async def _once_more_if_dead(op: Callable[[], Awaitable[T]]) -> T:
    """Run ``op`` (one unit of work on booking's database) and, when the pooled connection it
    got turns out dead (server restarted; the pool is not pinged), once more on a fresh one."""
    try:
        return await op()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return await op()


def canonical(order: Order) -> str:
    return json.dumps(
        order.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def payload_hash(box: SecretBox, order: Order | str) -> str:
    """A keyed hash (HMAC-SHA256) of the canonical order (or its :func:`canonical` text):
    compares payloads without making an IBAN inside them guessable from the hash."""
    text = order if isinstance(order, str) else canonical(order)
    return box.blind_index(text, context=HASH_CONTEXT)


def same_payload(box: SecretBox, stored: str, order: Order | str) -> bool:
    """Whether ``stored`` is this order's hash under any listed key: an order received before
    a key rotation is still recognised while the old key is listed (docs/operations.md)."""
    text = order if isinstance(order, str) else canonical(order)
    return stored in box.blind_indexes(text, context=HASH_CONTEXT)


def _epoch(value: dt.datetime) -> float:
    return value.timestamp()


def _instant(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC)


def pending_result(order_id: str, received_at: float, detail: str | None = None) -> OrderResult:
    return OrderResult(
        external_order_id=order_id,
        status=OrderStatus.PENDING,
        detail=detail
        or "the course database is not reachable; the order is stored and booked once it is back",
        received_at=_instant(received_at),
    )


@dataclass(frozen=True)
class Placed:
    result: OrderResult
    replayed: bool  # the same order was answered before


class OrderService:
    def __init__(
        self,
        db: Database,
        booker: Booker,
        box: SecretBox,
        settings: Settings,
        *,
        outbox: Outbox | None,
        notifier: Notifier | None = None,
        fast: PgPool | None = None,
    ) -> None:
        self.db = db
        # On PostgreSQL: the lookup and the record of each order on this asyncpg pool
        # (booking_service.pgfast); everything else goes through the engine.
        self.fast = fast
        self.booker = booker
        self.box = box
        self.settings = settings
        self.outbox = outbox
        self.notifier = notifier
        self.wake = asyncio.Event()  # set when an order joins the backlog
        self.mails_due = asyncio.Event()  # set when an order's mails are due
        self.observe: Callable[[str], None] = lambda status: None  # metrics hook
        self.notification_failed: Callable[[], None] = lambda: None  # metrics hook

    # ------------------------------------------------------------------ placing orders

    async def place(
        self, order: Order, *, source: str, owner_participant_id: int | None = None
    ) -> Placed:
        try:
            placed = await self._place(order, source, owner_participant_id)
        except DomainError:
            raise
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            # booking's own database is down: nothing was promised, the caller tries again
            # (a booking already made in the coursedb is found there by the retry).
            log.error("booking database unreachable: %s", type(exc).__name__)
            raise Unavailable(
                "the booking service cannot store orders right now; please retry",
                code="booking-unavailable",
            ) from None
        self.observe(placed.result.status.value)
        return placed

    async def _place(self, order: Order, source: str, owner_participant_id: int | None) -> Placed:
        text = canonical(order)
        digest = payload_hash(self.box, text)
        known, backlog = await self._lookup(order.external_order_id)
        if known is not None:
            return Placed(self._answer(known, digest, text), replayed=True)
        received = time.time()
        if backlog:
            return await self._enqueue(order, text, digest, received, source, owner_participant_id)
        try:
            async with asyncio.timeout(self.settings.coursedb_timeout_seconds):
                result = await self.booker.book(
                    order, payload_hash=digest, received_at=_instant(received)
                )
        except OrderConflict:
            raise
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            log.warning(
                "coursedb unreachable, order %s goes to the backlog: %s",
                order.external_order_id,
                type(exc).__name__,
            )
            return await self._enqueue(order, text, digest, received, source, owner_participant_id)
        return await self._record(
            order, text, digest, result, received, source, owner_participant_id
        )

    async def _lookup(self, external_id: str) -> tuple[Any, bool]:
        """The stored row for this id (if any) and whether any order waits in the backlog."""

        async def read() -> list[Any]:
            # A single read: no transaction needed (saves BEGIN/ROLLBACK round trips per order).
            if self.fast is not None:
                async with self.fast.connect() as fast:
                    return (await fast.execute(_LOOKUP, {"external_id": external_id})).all()
            async with self.db.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return list((await conn.execute(_LOOKUP, {"external_id": external_id})).all())

        rows = await _once_more_if_dead(read)
        known = next((r for r in rows if r.external_order_id == external_id), None)
        backlog = any(r.status == OrderStatus.PENDING for r in rows)
        return known, backlog

    def _answer(self, row: Any, digest: str, text: str) -> OrderResult:
        if row.payload_hash != digest and not same_payload(self.box, row.payload_hash, text):
            raise OrderConflict(
                f"order {row.external_order_id!r} was already received with other content"
            )
        return stored_result(row)

    async def _enqueue(
        self,
        order: Order,
        text: str,
        digest: str,
        received: float,
        source: str,
        owner: int | None,
    ) -> Placed:
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(orders).values(
                        external_order_id=order.external_order_id,
                        payload_hash=digest,
                        payload=self.box.encrypt(text, context=PAYLOAD_CONTEXT),
                        status=OrderStatus.PENDING.value,
                        source=source,
                        owner_participant_id=owner,
                        received_at=received,
                        attempts=0,
                        next_attempt_at=received,
                    )
                )
        except IntegrityError:
            return await self._replay(order.external_order_id, digest, text)
        self.wake.set()
        return Placed(pending_result(order.external_order_id, received), replayed=False)

    async def _record(
        self,
        order: Order,
        text: str,
        digest: str,
        result: OrderResult,
        received: float,
        source: str,
        owner: int | None,
    ) -> Placed:
        """Store the answer. When the order gets mails, the same row marks them due and keeps
        the order (encrypted) for them: :class:`NotificationWorker` prepares and queues them
        after the answer went out, so no accepted order loses its mails and the answer does
        not wait for PDFs."""
        now = time.time()
        notify = self.wants_mails(result)
        row = {
            "external_order_id": order.external_order_id,
            "payload_hash": digest,
            "payload": self.box.encrypt(text, context=PAYLOAD_CONTEXT) if notify else None,
            "status": result.status.value,
            "result": result.model_dump_json(),
            "detail": result.detail,
            "source": source,
            "owner_participant_id": owner,
            "coursedb_order_id": result.order_id,
            "received_at": received,
            "processed_at": now,
            "attempts": 1,
            "notify_at": now if notify else None,
            "notify_attempts": 0,
        }

        async def write() -> None:
            # One statement is atomic on its own: no BEGIN/COMMIT round trips.
            if self.fast is not None:
                async with self.fast.connect() as fast:
                    await fast.execute(_INSERT, row)
                return
            async with self.db.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(_INSERT, row)

        try:
            # A retry after a connection died at commit meets the row: IntegrityError, replay.
            await _once_more_if_dead(write)
        except IntegrityError:
            # The same order arrived twice at once; the first one recorded its answer.
            return await self._replay(order.external_order_id, digest, text)
        if notify:
            self.mails_due.set()
        return Placed(result, replayed=False)

    def wants_mails(self, result: OrderResult) -> bool:
        """Does this final result get notification mails (prepared later by the worker)?"""
        return self.notifier is not None and self.notifier.wanted(result)

    async def notify_again(self, external_id: str) -> list[str]:
        """Prepare and queue the mails of an accepted order once more (staff)."""
        result, row = await self.get(external_id)
        if result.status != OrderStatus.ACCEPTED or self.notifier is None:
            raise Conflict(
                "only accepted orders have notifications (and they must be enabled)",
                code="nothing-to-notify",
            )
        if row.notify_at is not None:
            raise Conflict(
                "the order's mails are still being prepared; they are sent without help",
                code="notification-pending",
            )
        mails = await self.notifier.prepare(None, result)
        async with self.db.engine.begin() as conn:
            ids = await self.notifier.enqueue(conn, mails)
            await conn.execute(update(orders).where(orders.c.id == row.id).values(last_error=None))
        return ids

    async def _replay(self, external_id: str, digest: str, text: str) -> Placed:
        known, _ = await self._lookup(external_id)
        if known is None:  # pragma: no cover - the unique violation says it exists
            raise RuntimeError("order vanished after a unique violation")
        return Placed(self._answer(known, digest, text), replayed=True)

    # ------------------------------------------------------------------ reading

    async def get(self, external_id: str) -> tuple[OrderResult, Any]:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(select(orders).where(orders.c.external_order_id == external_id))
            ).first()
        if row is None:
            raise NotFound(f"no order {external_id!r}", code="order-not-found")
        return stored_result(row), row

    async def list(self, *, status: str | None, limit: int, after_id: int | None) -> list[Any]:
        query = select(
            orders.c.id,
            orders.c.external_order_id,
            orders.c.status,
            orders.c.detail,
            orders.c.source,
            orders.c.received_at,
            orders.c.processed_at,
            orders.c.attempts,
            orders.c.next_attempt_at,
            orders.c.last_error,
            orders.c.coursedb_order_id,
            orders.c.notify_at,
        ).order_by(orders.c.id)
        if status is not None:
            query = query.where(orders.c.status == status)
        if after_id is not None:
            query = query.where(orders.c.id > after_id)
        async with self.db.engine.connect() as conn:
            return list((await conn.execute(query.limit(limit))).all())

    async def counts(self) -> dict[str, int]:
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))
            ).all()
        return {status: int(n) for status, n in rows}

    async def retry(self, external_id: str) -> OrderResult:
        """Put a failed order back into the backlog (staff, after fixing the cause)."""
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(orders)
                .where(
                    orders.c.external_order_id == external_id,
                    orders.c.status == OrderStatus.FAILED.value,
                )
                .values(
                    status=OrderStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=time.time(),
                    detail=None,
                )
            )
            if getattr(res, "rowcount", 0) == 0:
                raise NotFound(
                    f"no failed order {external_id!r} to retry", code="order-not-retryable"
                )
        self.wake.set()
        result, _ = await self.get(external_id)
        return result

    def order_of(self, row: Any) -> Order:
        """The stored order of a backlog row (decrypted)."""
        plain = self.box.decrypt(row.payload, context=PAYLOAD_CONTEXT)
        assert isinstance(plain, str)
        return Order.model_validate_json(plain)


def stored_result(row: Any) -> OrderResult:
    if row.result is not None:
        return OrderResult.model_validate_json(row.result)
    if row.status == OrderStatus.FAILED:
        return OrderResult(
            external_order_id=row.external_order_id,
            status=OrderStatus.FAILED,
            detail=row.detail,
            received_at=_instant(row.received_at),
        )
    return pending_result(row.external_order_id, row.received_at)


class BacklogWorker:
    """Books the backlog in arrival order; one order at a time."""

    def __init__(self, service: OrderService) -> None:
        self.service = service
        self.settings = service.settings
        self.processed = 0  # final outcomes recorded by this worker (for tests and metrics)
        self.observe: Callable[[float], None] = lambda pending: None  # metrics hook

    async def run(self) -> None:
        while True:
            try:
                delay = await self.drain()
                self.observe((await self.service.counts()).get(OrderStatus.PENDING.value, 0))
            except Exception:
                log.exception("backlog worker: unexpected error")
                delay = self.settings.backlog_backoff_max_seconds
            try:
                async with asyncio.timeout(delay):
                    await self.service.wake.wait()
            except TimeoutError:
                pass
            self.service.wake.clear()

    async def drain(self) -> float:
        """Process due backlog orders until the backlog is empty or its head must wait;
        return how long to sleep before looking again."""
        while True:
            wait = await self.step()
            if wait is not None:
                return wait

    async def step(self) -> float | None:
        """Try the oldest pending order. None: it was settled, look at the next one at once;
        a number: sleep that long (nothing pending, or the head is backing off)."""
        svc = self.service
        poll = self.settings.backlog_poll_seconds
        async with svc.db.engine.begin() as session:
            query = (
                select(orders)
                .where(orders.c.status == OrderStatus.PENDING.value)
                .order_by(orders.c.id)
                .limit(1)
            )
            if svc.db.is_postgres:
                query = query.with_for_update()
            row = (await session.execute(query)).first()
            if row is None:
                return poll
            now = time.time()
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                return min(poll, float(row.next_attempt_at) - now)
            order = svc.order_of(row)
            try:
                async with asyncio.timeout(self.settings.coursedb_timeout_seconds):
                    result = await svc.booker.book(
                        order,
                        payload_hash=row.payload_hash,
                        received_at=_instant(row.received_at),
                    )
            except OrderConflict as exc:
                await self._fail(session, row, order, f"conflict in the course database: {exc}")
                return None
            except Exception as exc:
                return await self._retry_later(session, row, order, exc, now)
            notify = svc.wants_mails(result)
            done = time.time()
            await session.execute(
                update(orders)
                .where(orders.c.id == row.id)
                .values(
                    status=result.status.value,
                    result=result.model_dump_json(),
                    detail=result.detail,
                    # The order stays (encrypted) until its mails are queued.
                    payload=row.payload if notify else None,
                    coursedb_order_id=result.order_id,
                    processed_at=done,
                    attempts=row.attempts + 1,
                    next_attempt_at=None,
                    last_error=None,
                    notify_at=done if notify else None,
                )
            )
            await self._announce(session, result)
        if notify:
            svc.mails_due.set()
        self.processed += 1
        log.info("backlog order %s booked: %s", row.external_order_id, result.status.value)
        return None

    async def _retry_later(
        self, session: AsyncConnection, row: Any, order: Order, exc: Exception, now: float
    ) -> float | None:
        attempts = row.attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:500]
        unreachable = is_unreachable(exc)
        too_old = now - row.received_at > self.settings.backlog_max_age_hours * 3600
        if (not unreachable and attempts >= self.settings.backlog_max_attempts) or too_old:
            log.error("backlog order %s failed for good: %s", row.external_order_id, error)
            why = "waited too long for the course database" if too_old else "could not be booked"
            await self._fail(session, row, order, f"{why}: {error}"[:500], attempts=attempts)
            return None
        if not unreachable:
            log.exception("backlog order %s: attempt %d failed", row.external_order_id, attempts)
        delay = min(
            self.settings.backlog_backoff_base_seconds * 2 ** (attempts - 1),
            self.settings.backlog_backoff_max_seconds,
        )
        await session.execute(
            update(orders)
            .where(orders.c.id == row.id)
            .values(attempts=attempts, next_attempt_at=now + delay, last_error=error)
        )
        return float(delay)

    async def _fail(
        self,
        session: AsyncConnection,
        row: Any,
        order: Order,
        detail: str,
        *,
        attempts: int | None = None,
    ) -> None:
        result = OrderResult(
            external_order_id=row.external_order_id,
            status=OrderStatus.FAILED,
            detail=detail,
            received_at=_instant(row.received_at),
            processed_at=dt.datetime.now(dt.UTC),
        )
        await session.execute(
            update(orders)
            .where(orders.c.id == row.id)
            .values(
                status=OrderStatus.FAILED.value,
                detail=detail,
                last_error=detail,
                attempts=attempts if attempts is not None else row.attempts + 1,
                next_attempt_at=None,
                processed_at=time.time(),
            )
        )
        await self._announce(session, result)

    async def _announce(self, session: AsyncConnection, result: OrderResult) -> None:
        outbox = self.service.outbox
        if outbox is None:
            return
        if result.status == OrderStatus.ACCEPTED:
            await outbox.add(session, OrderConfirmed(result=result))
        else:
            await outbox.add(session, OrderRejected(result=result))
