"""Notification mails of accepted orders, prepared after the answer went out.

Preparing an order's mails is the expensive part of a booking (the documents read back from the
coursedb, one or two reportlab PDFs, two rendered templates: tens of milliseconds of CPU), so it
is not done while the caller waits. Instead the statement that records an accepted order also
sets ``orders.notify_at`` and keeps the order (encrypted) in ``payload``: an order is never
recorded without its mails being due, and a replay finds the recorded answer and mails nothing.

:class:`NotificationWorker` (one per process, ``notify_concurrency`` orders at a time):

1. **claims** due orders by moving ``notify_at`` to the end of a lease (a compare-and-set on the
   value it read), so replicas never prepare the same order twice at once and an order a dead
   process had claimed is taken up again when its lease runs out (a process that shuts down
   hands its claims back at once);
2. **prepares** the mails (:meth:`Notifier.prepare`);
3. **queues** them in one transaction of booking's database that clears ``notify_at`` and the
   payload — only while its claim still holds, so an order's mails are queued at most once. The
   mail package's sender delivers them with retries.

Failures stay visible: the coursedb being unreachable is retried with bounded exponential
backoff (``notify_max_attempts``); anything else (a template that does not fit, a broken stored
address) or the last attempt ends with ``last_error`` "notification not sent: …" on the order,
the ``booking_notifications_failed_total`` counter and an error log line, and staff can send
the mails again (``POST /orders/{id}/notify``).

This module must not book anything.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update

from booking_service.models import orders
from booking_service.service import OrderService, is_unreachable, stored_result

log = logging.getLogger("booking.mailing")


class NotificationWorker:
    """Prepares and queues the mails of accepted orders whose ``notify_at`` is due."""

    def __init__(self, service: OrderService) -> None:
        self.service = service
        self.settings = service.settings
        self.queued = 0  # orders whose mails this worker queued (tests, metrics)
        self.observe: Callable[[float], None] = lambda due: None  # metrics hook

    async def run(self) -> None:
        wake = self.service.mails_due
        while True:
            wake.clear()  # before looking: a wake during the drain is not lost
            try:
                delay = await self.drain()
                self.observe(await self.due())
            except Exception:
                log.exception("notification worker: unexpected error")
                delay = self.settings.backlog_backoff_max_seconds
            try:
                async with asyncio.timeout(delay):
                    await wake.wait()
            except TimeoutError:
                pass

    async def drain(self) -> float:
        """Send every due order's mails; return how long to sleep before looking again."""
        while True:
            claimed, wait = await self.claim()
            if not claimed:
                return wait
            await asyncio.gather(*(self.send(row, lease) for row, lease in claimed))

    async def due(self) -> int:
        """How many orders' mails wait to be prepared (claimed ones included)."""
        async with self.service.db.engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(orders).where(orders.c.notify_at.is_not(None))
            )
        return int(count or 0)

    async def claim(self) -> tuple[list[tuple[Any, float]], float]:
        """Up to ``notify_concurrency`` due orders, each claimed with a lease; and, when none is
        due, how long until the next one is (at most the poll interval)."""
        svc, settings = self.service, self.settings
        poll = settings.backlog_poll_seconds
        now = time.time()
        async with svc.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = (
                await conn.execute(
                    select(orders)
                    .where(orders.c.notify_at.is_not(None))
                    .order_by(orders.c.notify_at)
                    .limit(settings.notify_concurrency)
                )
            ).all()
            claimed: list[tuple[Any, float]] = []
            for row in rows:
                if row.notify_at > now:
                    break
                # Unique per claim, so a compare-and-set never mistakes another's claim for ours.
                lease = now + settings.notify_lease_seconds + random.random() / 1000
                res = await conn.execute(
                    update(orders)
                    .where(orders.c.id == row.id, orders.c.notify_at == row.notify_at)
                    .values(notify_at=lease)
                )
                if getattr(res, "rowcount", 0) == 1:
                    claimed.append((row, lease))
        if claimed or not rows:
            return claimed, poll
        return [], max(0.0, min(poll, float(rows[0].notify_at) - now))

    async def send(self, row: Any, lease: float) -> None:
        """Prepare and queue one claimed order's mails (or record why they cannot be sent)."""
        svc = self.service
        attempts = row.notify_attempts + 1
        try:
            order = svc.order_of(row) if row.payload is not None else None
            result = stored_result(row)
            assert svc.notifier is not None  # orders get notify_at only with a notifier
            mails = await svc.notifier.prepare(order, result)
        except asyncio.CancelledError:
            # Shutting down: hand the order back now rather than when the lease runs out.
            await asyncio.shield(self._release(row, lease))
            raise
        except Exception as exc:
            await self._failed(row, lease, attempts, exc)
            return
        async with svc.db.engine.begin() as conn:
            res = await conn.execute(
                update(orders)
                .where(orders.c.id == row.id, orders.c.notify_at == lease)
                .values(notify_at=None, payload=None, notify_attempts=attempts, last_error=None)
            )
            if getattr(res, "rowcount", 0) != 1:
                # The lease ran out and another worker took the order over: it queues them.
                log.warning("mails of order %s: claim lost, not queued", row.external_order_id)
                return
            if mails:
                await svc.notifier.enqueue(conn, mails)
        self.queued += 1

    async def _release(self, row: Any, lease: float) -> None:
        try:
            async with self.service.db.engine.begin() as conn:
                await conn.execute(
                    update(orders)
                    .where(orders.c.id == row.id, orders.c.notify_at == lease)
                    .values(notify_at=time.time())
                )
        except Exception:  # the lease runs out instead
            log.warning("mails of order %s: claim not released", row.external_order_id)

    async def _failed(self, row: Any, lease: float, attempts: int, exc: Exception) -> None:
        settings, svc = self.settings, self.service
        reason = f"{type(exc).__name__}: {exc}"
        again = is_unreachable(exc) and attempts < settings.notify_max_attempts
        if again:
            delay = min(
                settings.backlog_backoff_base_seconds * 2 ** (attempts - 1),
                settings.backlog_backoff_max_seconds,
            )
            log.warning(
                "mails of order %s delayed (attempt %d): %s",
                row.external_order_id,
                attempts,
                type(exc).__name__,
            )
            values: dict[str, Any] = {
                "notify_at": time.time() + delay,
                "notify_attempts": attempts,
                "last_error": f"notification delayed: {reason}"[:500],
            }
        else:
            log.error(
                "mails of order %s could not be prepared",
                row.external_order_id,
                exc_info=exc,
            )
            values = {
                "notify_at": None,
                "payload": None,
                "notify_attempts": attempts,
                "last_error": f"notification not sent: {reason}"[:500],
            }
        async with svc.db.engine.begin() as conn:
            res = await conn.execute(
                update(orders)
                .where(orders.c.id == row.id, orders.c.notify_at == lease)
                .values(**values)
            )
        if not again and getattr(res, "rowcount", 0) == 1:
            svc.notification_failed()
