"""The centre's decision on a provisional reservation (Vormerkung): confirm or decline.

Confirming turns a ``provisional`` registration into ``booked`` (it already holds its seat and
its fee); declining cancels it (``cancelled``, ``cancelled_at`` set), which frees the seat. The
registration row is locked while it changes. Repeating the same decision is harmless (the
current state is returned and the event sent again, at-least-once); the opposite decision on an
already decided registration is a 409.

The ``booking.reservation_decided.v1`` event goes through booking's outbox after the coursedb
commit (two databases cannot share a transaction; a repeat of the call re-sends it).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from coursedb import schema as cdb
from mesh_common.bus.outbox import Outbox
from mesh_common.db import Database
from mesh_common.errors import Conflict, NotFound
from mesh_contracts.booking import ReservationDecided
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

Decision = Literal["confirmed", "declined"]
_TARGET = {"confirmed": cdb.RegistrationStatus.BOOKED, "declined": cdb.RegistrationStatus.CANCELLED}


async def decide(
    coursedb: AsyncEngine,
    db: Database,
    outbox: Outbox | None,
    *,
    registration_id: int,
    decision: Decision,
    lock: bool = True,
) -> ReservationDecided:
    r, c, o = cdb.registrations, cdb.courses, cdb.orders
    target = _TARGET[decision]
    now = dt.datetime.now(dt.UTC)
    async with coursedb.begin() as conn:
        query = (
            select(r.c.id, r.c.status, r.c.participant_id, r.c.order_id, c.c.number)
            .join(c, c.c.id == r.c.course_id)
            .where(r.c.id == registration_id)
        )
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no registration {registration_id}", code="registration-not-found")
        if row.status != target:
            if row.status != cdb.RegistrationStatus.PROVISIONAL:
                raise Conflict(
                    f"registration {registration_id} is {row.status}, not provisional",
                    code="not-provisional",
                )
            values: dict[str, object] = {"status": target.value}
            if target == cdb.RegistrationStatus.CANCELLED:
                values["cancelled_at"] = now
            await conn.execute(update(r).where(r.c.id == registration_id).values(**values))
        external = None
        if row.order_id is not None:
            external = await conn.scalar(
                select(o.c.external_order_id).where(o.c.id == row.order_id)
            )
    event = ReservationDecided(
        registration_id=registration_id,
        external_order_id=external,
        course_number=row.number,
        participant_id=row.participant_id,
        decision=decision,
        decided_at=now,
    )
    if outbox is not None:
        async with db.unit_of_work() as session:
            await outbox.add(session, event)
    return event
