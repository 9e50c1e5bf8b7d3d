"""Booking an order into the course database: checks, seats under a lock, all or nothing.

:meth:`Booker.book` runs one coursedb transaction per order:

1. **Idempotency**: an order with the same ``external_order_id`` already in ``orders`` is not
   booked again; its result is rebuilt from its registrations (or it is a conflict when the
   payload hash differs).
2. **Lock**: the order's courses are read ``FOR UPDATE`` in id order (PostgreSQL, MariaDB; a
   fixed order, so two multi-course orders never deadlock). On SQLite the engine starts every
   transaction with ``BEGIN IMMEDIATE`` (SQLite ignores ``FOR UPDATE``), which takes the
   database's write lock. Seats are then counted from the registrations — there is no counter
   that could drift — and stay valid until the commit because every booking of those courses
   waits for the lock.
3. **Checks** per line (first failing one wins): course exists; not cancelled / finished; web
   bookable; open (not planned); registration not closed and deadline not passed; chosen mode
   allowed; participant exists; not already registered; discount offered; then seats. Payment
   checks (stored account of the payer, valid IBAN, mandate consent) apply to every line.
4. **All or nothing**: if any line is rejected, nothing is written (the transaction only read)
   and the other lines carry ``order_rejected``. Otherwise new participants, a new bank account
   (validated and encrypted by ``coursedb.banking``), the order and its registrations are written
   and committed together — on PostgreSQL with one statement (data-modifying CTEs) for an
   order's first line, so the course rows stay locked for as few round trips as possible.

This module must not know about the bus, HTTP or booking's own database; errors reaching the
caller are :class:`OrderConflict` and the driver's exceptions (the caller decides whether they
mean "unreachable").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from coursedb import schema as cdb
from coursedb.banking import (
    BankCipher,
    CheckedIBAN,
    InvalidIBAN,
    account_row,
    add_account,
    check_iban,
    mask,
)
from mesh_common.errors import Conflict
from mesh_contracts.booking import (
    LineResult,
    Order,
    OrderParticipant,
    OrderResult,
    OrderStatus,
    Outcome,
    Reason,
    RegistrationMode,
    SepaPayment,
)
from mesh_contracts.common import Money
from sqlalchemy import Integer, String, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

from booking_service.pgfast import PgConnection, PgPool

# A coursedb connection: SQLAlchemy's, or on PostgreSQL the lean asyncpg one of the order path
# (booking_service.pgfast), which runs the same statements and answers like it.
Conn = AsyncConnection | PgConnection

BERLIN = ZoneInfo("Europe/Berlin")
CENT = Decimal("0.01")

_MODE_ALLOWED: dict[str, frozenset[RegistrationMode]] = {
    cdb.RegistrationMode.DIRECT: frozenset(
        {RegistrationMode.DIRECT, RegistrationMode.WAITING_LIST}
    ),
    cdb.RegistrationMode.WAITING_LIST: frozenset(
        {RegistrationMode.DIRECT, RegistrationMode.WAITING_LIST}
    ),
    cdb.RegistrationMode.PROVISIONAL: frozenset({RegistrationMode.PROVISIONAL}),
    cdb.RegistrationMode.ON_REQUEST: frozenset({RegistrationMode.ON_REQUEST}),
}

_DETAIL: dict[Reason, str] = {
    Reason.COURSE_NOT_FOUND: "no course with this number",
    Reason.NOT_WEB_BOOKABLE: "the course cannot be booked online",
    Reason.NOT_OPEN: "the course is not open for registration yet",
    Reason.CANCELLED: "the course has been cancelled",
    Reason.FINISHED: "the course is over",
    Reason.REGISTRATION_CLOSED: "registration is closed",
    Reason.FULL: "no free seat",
    Reason.MODE_NOT_ALLOWED: "this registration mode is not offered for the course",
    Reason.DUPLICATE_REGISTRATION: "already registered for this course",
    Reason.PARTICIPANT_NOT_FOUND: "no stored participant with this id",
    Reason.DISCOUNT_NOT_AVAILABLE: "the course offers no such discount",
    Reason.BANK_ACCOUNT_NOT_FOUND: "no such bank account of the payer",
    Reason.INVALID_IBAN: "the IBAN is not valid",
    Reason.MANDATE_CONSENT_MISSING: "SEPA direct debit needs the mandate consent",
    Reason.ORDER_REJECTED: "not booked because another item of the order was rejected",
}


# Statements of the hot path, built once (per call only the parameters change).
_c = cdb.courses
_COURSES = (
    select(
        _c.c.id,
        _c.c.number,
        _c.c.title,
        _c.c.fee,
        _c.c.max_participants,
        _c.c.status,
        _c.c.registration_mode,
        _c.c.registration_deadline,
        _c.c.web_bookable,
    )
    .where(_c.c.number.in_(bindparam("numbers", expanding=True)))
    .order_by(_c.c.id)
)
_COURSES_LOCKED = _COURSES.with_for_update()
_r = cdb.registrations
_SEATS = (
    select(_r.c.course_id, _r.c.status, func.count())
    .where(
        _r.c.course_id.in_(bindparam("ids", expanding=True)),
        _r.c.status.in_(
            sorted({*cdb.SEAT_HOLDING_STATUSES, cdb.RegistrationStatus.WAITING_LIST.value})
        ),
    )
    .group_by(_r.c.course_id, _r.c.status)
)
_p = cdb.participants
_SAME_EMAIL = (
    select(_p.c.id, _p.c.email, _p.c.first_name, _p.c.last_name, _p.c.birth_date)
    .where(_p.c.email.in_(bindparam("emails", expanding=True)))
    .order_by(_p.c.id)
)
_INSERT_PARTICIPANT = insert(cdb.participants)
_INSERT_ORDER = insert(cdb.orders)
_INSERT_REGISTRATION = insert(cdb.registrations)


class OrderConflict(Conflict):
    """The external order id is known with a different payload."""

    code = "order-conflict"
    title = "Order id already used for a different order"


def money(amount: Decimal | None) -> Money | None:
    return None if amount is None else Money(amount=amount)


@dataclass
class _Line:
    index: int
    key: str
    course_number: str
    mode: RegistrationMode
    discount: str | None
    course: Any = None
    participant_id: int | None = None
    outcome: Outcome | None = None
    reason: Reason | None = None
    detail: str | None = None
    fee: Decimal | None = None
    discount_id: int | None = None
    position: int | None = None
    registration_id: int | None = None

    def reject(self, reason: Reason, detail: str | None = None) -> None:
        if self.reason is None:
            self.outcome, self.reason = Outcome.REJECTED, reason
            self.detail = detail or _DETAIL[reason]

    def result(self) -> LineResult:
        return LineResult(
            participant=self.key,
            course_number=self.course_number,
            outcome=self.outcome or Outcome.REJECTED,
            reason=self.reason,
            detail=self.detail,
            registration_id=self.registration_id,
            fee=money(self.fee),
            waiting_list_position=self.position,
        )


@dataclass
class _Account:
    """The SEPA account of an order (all None for an invoice)."""

    id: int | None = None
    masked: str | None = None
    reference: str | None = None


@dataclass
class _Plan:
    """Everything the write step needs once the checks passed."""

    lines: list[_Line]
    participant_ids: dict[str, int | None]  # key -> id (None: to create)
    new_people: dict[str, dict[str, Any]] = field(default_factory=dict)
    payer: str = ""
    bank_account: Any = None  # stored account row
    new_iban: str | None = None
    checked_iban: CheckedIBAN | None = None  # checked once (schwifty's parse is not cheap)


class Booker:
    """Books orders into the coursedb. One instance per service; safe for concurrent use.

    ``fast``: on PostgreSQL the booking transaction runs on this asyncpg pool
    (:mod:`booking_service.pgfast`) instead of the engine; same statements, a third of the CPU.

    ``lock=False`` and ``race_window`` exist for the race test only: the first skips the course
    row lock (so the test can show that it overbooks without it), the second pauses between
    counting seats and writing, which widens the window in which concurrent orders interleave.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        cipher: BankCipher,
        *,
        mandate_prefix: str = "VHS",
        lock: bool = True,
        race_window: float = 0.0,
        fast: PgPool | None = None,
        same_payload: Callable[[str, Order], bool] | None = None,
    ) -> None:
        self.engine = engine
        # (stored hash, order) -> whether the stored hash is this order's under an older key.
        self.same_payload = same_payload
        self.fast = fast
        self.cipher = cipher
        self.mandate_prefix = mandate_prefix
        self.lock = lock
        self.race_window = race_window

    async def book(
        self,
        order: Order,
        *,
        payload_hash: str,
        received_at: dt.datetime,
        now: dt.datetime | None = None,
    ) -> OrderResult:
        """Book ``order`` (idempotent by its external id). Raises :class:`OrderConflict`."""
        check_first = False
        for attempt in range(3):
            try:
                return await self._book_once(order, payload_hash, received_at, now, check_first)
            except IntegrityError:
                # The order is in the coursedb already (a concurrent or an earlier delivery whose
                # answer was not recorded), or someone registered the same person meanwhile:
                # re-run, looking for the order first; the checks then see the registration.
                if attempt == 2:
                    raise
                check_first = True
            except DBAPIError as exc:
                # A pooled connection that died with the server (restart, failover): the pool
                # has dropped it; one more try on a fresh connection. (Cheaper than pinging
                # every connection before use.)
                if not exc.connection_invalidated or attempt > 0:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _book_once(
        self,
        order: Order,
        payload_hash: str,
        received_at: dt.datetime,
        now: dt.datetime | None,
        check_first: bool,
    ) -> OrderResult:
        """One transaction. The usual order is new: it is checked and written straight away (the
        unique external id stops a second booking). Only when it would be rejected, or after a
        unique violation, is the coursedb asked whether it holds the order already."""
        begin = self.fast.begin if self.fast is not None else self.engine.begin
        async with begin() as conn:
            if check_first:
                known = await self._known(conn, order, payload_hash)
                if known is not None:
                    return known
            stamp = now or dt.datetime.now(dt.UTC)
            plan = await self._check(conn, order, stamp)
            result_lines = plan.lines
            if any(line.reason is not None for line in result_lines):
                if not check_first:
                    known = await self._known(conn, order, payload_hash)
                    if known is not None:
                        return known
                for line in result_lines:
                    line.registration_id, line.position = None, None
                    if line.reason is None:
                        line.reject(Reason.ORDER_REJECTED)
                    line.fee = None
                return OrderResult(
                    external_order_id=order.external_order_id,
                    status=OrderStatus.REJECTED,
                    lines=[line.result() for line in result_lines],
                    detail="nothing was booked",
                    payment_method=order.payment.method,
                    received_at=received_at,
                    processed_at=stamp,
                )
            if self.race_window:
                await asyncio.sleep(self.race_window)
            return await self._write(conn, order, plan, payload_hash, received_at, stamp)

    async def _known(self, conn: Conn, order: Order, payload_hash: str) -> OrderResult | None:
        """The result of this order if the coursedb holds it already; conflict if its payload
        differs."""
        existing = (
            await conn.execute(
                select(cdb.orders).where(cdb.orders.c.external_order_id == order.external_order_id)
            )
        ).first()
        if existing is None:
            return None
        if existing.payload_hash != payload_hash and not (
            self.same_payload is not None and self.same_payload(existing.payload_hash, order)
        ):
            raise OrderConflict(
                f"order {order.external_order_id!r} was already booked with other content"
            )
        return await rebuild(conn, existing._mapping, order)

    # ------------------------------------------------------------------ checks

    async def _check(self, conn: Conn, order: Order, now: dt.datetime) -> _Plan:
        lines = [
            _Line(
                index=i,
                key=item.participant,
                course_number=item.course_number,
                mode=item.mode or order.mode,
                discount=item.discount,
            )
            for i, item in enumerate(order.items)
        ]
        courses = await self._lock_courses(conn, {line.course_number for line in lines})
        by_number = {c.number: c for c in courses}
        ids = [c.id for c in courses]
        held, waiting = await _seat_counts(conn, ids)
        first_start = await _first_session_starts(
            conn, [c.id for c in courses if c.registration_deadline is None]
        )
        discounts = await _discounts(conn, ids) if any(line.discount for line in lines) else {}

        participants = {p.key: p for p in order.participants}
        ids_by_key = await _resolve_participants(conn, order.participants)
        plan = _Plan(lines=lines, participant_ids=ids_by_key, payer=order.payer_key)
        for p in order.participants:
            if p.person is not None and ids_by_key[p.key] is None:
                plan.new_people[p.key] = _person_row(p, now)
        known = {pid for pid in ids_by_key.values() if pid is not None}
        active = await _active_registrations(conn, known, ids)
        payment_reason = await self._check_payment(conn, order, plan, participants)

        taken: Counter[int] = Counter()
        queued: Counter[int] = Counter()
        for line in lines:
            course = by_number.get(line.course_number)
            line.course = course
            pid = ids_by_key.get(line.key)
            line.participant_id = pid
            stored = participants[line.key].participant_id is not None
            if course is None:
                line.reject(Reason.COURSE_NOT_FOUND)
                continue
            reason = _course_reason(course, first_start.get(course.id), now)
            if reason is not None:
                line.reject(reason)
                continue
            if line.mode not in _MODE_ALLOWED[course.registration_mode]:
                line.reject(
                    Reason.MODE_NOT_ALLOWED,
                    f"the course takes registrations as {course.registration_mode!r}",
                )
                continue
            if stored and pid is None:
                line.reject(Reason.PARTICIPANT_NOT_FOUND)
                continue
            if pid is not None and (pid, course.id) in active:
                line.reject(Reason.DUPLICATE_REGISTRATION)
                continue
            line.fee = course.fee
            if line.discount:
                found = discounts.get((course.id, line.discount))
                if found is None:
                    line.reject(Reason.DISCOUNT_NOT_AVAILABLE)
                    continue
                line.discount_id, line.fee = found.id, _discounted(course.fee, found)
            if payment_reason is not None:
                line.reject(payment_reason)
                continue
            free = course.max_participants - held.get(course.id, 0) - taken[course.id]
            if course.registration_mode == cdb.RegistrationMode.ON_REQUEST:
                line.outcome = Outcome.WAITING_LIST
            elif free > 0:
                provisional = course.registration_mode == cdb.RegistrationMode.PROVISIONAL
                line.outcome = Outcome.PROVISIONAL if provisional else Outcome.BOOKED
                taken[course.id] += 1
            elif (
                line.mode == RegistrationMode.WAITING_LIST
                and course.registration_mode == cdb.RegistrationMode.WAITING_LIST
            ):
                line.outcome = Outcome.WAITING_LIST
            else:
                line.reject(Reason.FULL)
                continue
            if line.outcome == Outcome.WAITING_LIST:
                queued[course.id] += 1
                line.position = waiting.get(course.id, 0) + queued[course.id]
                line.fee = None
        # A stored payer who books nothing (e.g. pays for a child) must exist too.
        line_keys = {line.key for line in lines}
        for key, p in participants.items():
            if p.participant_id is not None and ids_by_key[key] is None and key not in line_keys:
                for line in lines:
                    line.reject(Reason.PARTICIPANT_NOT_FOUND, f"stored participant {key!r} unknown")
        return plan

    async def _lock_courses(self, conn: Conn, numbers: Iterable[str]) -> Sequence[Any]:
        query = _COURSES_LOCKED if self.lock else _COURSES
        return (await conn.execute(query, {"numbers": sorted(numbers)})).all()

    async def _check_payment(
        self,
        conn: Conn,
        order: Order,
        plan: _Plan,
        participants: dict[str, OrderParticipant],
    ) -> Reason | None:
        payment = order.payment
        if not isinstance(payment, SepaPayment):
            return None
        if payment.new_account is not None:
            if not payment.new_account.mandate_consent:
                return Reason.MANDATE_CONSENT_MISSING
            try:
                plan.checked_iban = check_iban(payment.new_account.iban)
                plan.new_iban = plan.checked_iban.compact
            except InvalidIBAN:
                return Reason.INVALID_IBAN
            return None
        payer_id = plan.participant_ids.get(plan.payer)
        stored_payer = participants[plan.payer].participant_id is not None
        if payer_id is None or not stored_payer:
            return Reason.BANK_ACCOUNT_NOT_FOUND
        a = cdb.bank_accounts
        row = (
            await conn.execute(
                select(a.c.id, a.c.participant_id, a.c.iban_masked, a.c.mandate_reference).where(
                    a.c.id == payment.bank_account_id, a.c.participant_id == payer_id
                )
            )
        ).first()
        if row is None:
            return Reason.BANK_ACCOUNT_NOT_FOUND
        plan.bank_account = row
        return None

    # ------------------------------------------------------------------ write

    def _mandate_reference(self, payer_id: int) -> str:
        """A new SEPA mandate reference (max 35 characters, unique in bank_accounts)."""
        return f"{self.mandate_prefix}-{payer_id}-{secrets.token_hex(4).upper()}"

    async def _write(
        self,
        conn: Conn,
        order: Order,
        plan: _Plan,
        payload_hash: str,
        received_at: dt.datetime,
        now: dt.datetime,
    ) -> OrderResult:
        """Write the new participants, a new bank account, the order and its registrations.

        On PostgreSQL one statement writes them all (data-modifying CTEs): one round trip while
        the course rows are locked instead of one per row. Elsewhere one statement per row."""
        total = sum(
            (line.fee for line in plan.lines if line.fee is not None and _holds(line)),
            Decimal("0.00"),
        )
        order_row = {
            "external_order_id": order.external_order_id,
            "received_at": received_at,
            "processed_at": now,
            "status": cdb.OrderStatus.PROCESSED.value,
            "payment_method": order.payment.method,
            "total_amount": total,
            "payload_hash": payload_hash,
        }
        write = self._write_at_once if conn.dialect.name == "postgresql" else self._write_rows
        ids, order_id, account = await write(conn, order, plan, order_row, now)
        return OrderResult(
            external_order_id=order.external_order_id,
            status=OrderStatus.ACCEPTED,
            lines=[line.result() for line in plan.lines],
            order_id=order_id,
            participant_ids=ids,
            total=money(total),
            payment_method=order.payment.method,
            bank_account_id=account.id,
            iban_masked=account.masked,
            mandate_reference=account.reference,
            received_at=received_at,
            processed_at=now,
        )

    async def _settle_account(
        self, conn: Conn, order: Order, plan: _Plan, now: dt.datetime
    ) -> _Account | None:
        """The order's SEPA account when it is settled before the order is written: a stored
        account (given a mandate reference if it has none) or a stored payer's new account
        (``add_account``: a known IBAN is found, the default kept). None: the new account of a
        payer created with this order, written together with the payer."""
        payment = order.payment
        if not isinstance(payment, SepaPayment):
            return _Account()
        payer_id = plan.participant_ids[plan.payer]
        if plan.bank_account is not None:
            stored = plan.bank_account
            account = _Account(int(stored.id), stored.iban_masked, stored.mandate_reference)
        elif payer_id is None:
            return None
        else:
            assert payment.new_account is not None and plan.new_iban is not None
            account_id = await add_account(
                conn,
                self.cipher,
                participant_id=payer_id,
                account_holder=payment.new_account.account_holder,
                iban=plan.new_iban,
                bic=payment.new_account.bic,
                # Used for a new account; a known account keeps its own reference.
                mandate_reference=self._mandate_reference(payer_id),
                now=now,
            )
            a = cdb.bank_accounts
            row = (
                await conn.execute(
                    select(a.c.iban_masked, a.c.mandate_reference).where(a.c.id == account_id)
                )
            ).one()
            account = _Account(account_id, row.iban_masked, row.mandate_reference)
        if account.reference is None:
            assert payer_id is not None  # a stored account belongs to a stored payer
            account.reference = self._mandate_reference(payer_id)
            await conn.execute(
                update(cdb.bank_accounts)
                .where(cdb.bank_accounts.c.id == account.id)
                .values(mandate_reference=account.reference)
            )
        return account

    async def _write_rows(
        self,
        conn: Conn,
        order: Order,
        plan: _Plan,
        order_row: dict[str, Any],
        now: dt.datetime,
    ) -> tuple[dict[str, int], int, _Account]:
        """One statement per row (SQLite, MariaDB)."""
        account = await self._settle_account(conn, order, plan, now)
        ids: dict[str, int] = {}
        for key, pid in plan.participant_ids.items():
            if pid is None:
                res = await conn.execute(_INSERT_PARTICIPANT, plan.new_people[key])
                pid = int(res.inserted_primary_key[0])  # type: ignore[index]
            ids[key] = pid
        payer_id = ids[plan.payer]
        if account is None:
            # The payer was created just now: no account to find, one INSERT (the default).
            new_account = order.payment.new_account  # type: ignore[union-attr]
            assert new_account is not None and plan.new_iban is not None
            account = _Account(
                masked=mask(plan.new_iban), reference=self._mandate_reference(payer_id)
            )
            account.id = await add_account(
                conn,
                self.cipher,
                participant_id=payer_id,
                account_holder=new_account.account_holder,
                iban=plan.new_iban,
                bic=new_account.bic,
                mandate_reference=account.reference,
                now=now,
                new_owner=True,
            )
        res = await conn.execute(
            _INSERT_ORDER,
            {**order_row, "participant_id": payer_id, "bank_account_id": account.id},
        )
        order_id = int(res.inserted_primary_key[0])  # type: ignore[index]
        for line in plan.lines:
            line.participant_id = ids[line.key]
            await _insert_registration(conn, line, order_id, now)
        return ids, order_id, account

    async def _write_at_once(
        self,
        conn: Conn,
        order: Order,
        plan: _Plan,
        order_row: dict[str, Any],
        now: dt.datetime,
    ) -> tuple[dict[str, int], int, _Account]:
        """PostgreSQL: the new participants, a new payer's account, the order and its first
        registration in one statement (:func:`_write_statement`); further lines follow with one
        INSERT each, so registration ids stay in line order (``rebuild`` relies on it)."""
        account = await self._settle_account(conn, order, plan, now)
        new_keys = list(plan.new_people)

        def index(key: str) -> int | None:
            return new_keys.index(key) if key in plan.new_people else None

        line, *more = plan.lines
        assert line.outcome is not None and line.course is not None
        statement = _write_statement(
            len(new_keys), index(plan.payer), index(line.key), new_account=account is None
        )
        params: dict[str, Any] = {
            "payer_id": plan.participant_ids[plan.payer],
            "first_participant_id": plan.participant_ids[line.key],
            "bank_account_id": account.id if account is not None else None,
        }
        for i, key in enumerate(new_keys):
            params.update(_bind(f"p{i}", cdb.participants, plan.new_people[key]))
        params.update(_bind("o", cdb.orders, order_row))
        registration = {
            "course_id": line.course.id,
            "status": line.outcome.value,
            "registered_at": now,
            "fee_charged": line.fee,
            "discount_id": line.discount_id,
        }
        params.update(_bind("r", cdb.registrations, registration))
        if account is None:
            new_account = order.payment.new_account  # type: ignore[union-attr]
            assert new_account is not None and plan.checked_iban is not None
            row = account_row(
                self.cipher,
                participant_id=None,  # the payer inserted by the statement
                account_holder=new_account.account_holder,
                iban=plan.checked_iban,
                bic=new_account.bic,
                is_default=True,  # the first account of a new participant
                now=now,
            )
            del row["participant_id"], row["mandate_reference"]
            params.update(_bind("a", cdb.bank_accounts, row))
            # As _mandate_reference, with the payer's id known only inside the statement.
            params["reference_prefix"] = f"{self.mandate_prefix}-"
            params["reference_suffix"] = f"-{secrets.token_hex(4).upper()}"
        first = (await conn.execute(statement, params)).one()._mapping
        ids = {key: pid for key, pid in plan.participant_ids.items() if pid is not None}
        for i, key in enumerate(new_keys):
            ids[key] = int(first[f"participant_{i}"])
        if account is None:
            assert plan.new_iban is not None
            account = _Account(int(first["account_id"]), mask(plan.new_iban), first["reference"])
        order_id = int(first["order_id"])
        line.participant_id, line.registration_id = ids[line.key], int(first["id"])
        for line in more:
            line.participant_id = ids[line.key]
            await _insert_registration(conn, line, order_id, now)
        return ids, order_id, account


# ---------------------------------------------------------------------- rebuilding a result


async def rebuild(conn: Conn, row: Any, order: Order) -> OrderResult:
    """The result of an order already in the coursedb, from its registrations.

    Registrations are written in item order, so the n-th registration (by id) is the n-th item.
    Waiting-list positions are not known any more; a registration cancelled since shows as
    ``cancelled``.
    """
    r, c, a = cdb.registrations, cdb.courses, cdb.bank_accounts
    regs = (
        await conn.execute(
            select(r.c.id, r.c.participant_id, r.c.status, r.c.fee_charged, c.c.number)
            .join(c, c.c.id == r.c.course_id)
            .where(r.c.order_id == row["id"])
            .order_by(r.c.id)
        )
    ).all()
    lines: list[LineResult] = []
    ids: dict[str, int] = {}
    for item, reg in zip(order.items, regs, strict=False):
        ids.setdefault(item.participant, int(reg.participant_id))
        lines.append(
            LineResult(
                participant=item.participant,
                course_number=reg.number,
                outcome=Outcome(reg.status),
                registration_id=int(reg.id),
                fee=money(reg.fee_charged),
            )
        )
    masked = reference = None
    if row["bank_account_id"] is not None:
        account = (
            await conn.execute(
                select(a.c.iban_masked, a.c.mandate_reference).where(
                    a.c.id == row["bank_account_id"]
                )
            )
        ).first()
        if account is not None:
            masked, reference = account.iban_masked, account.mandate_reference
    failed = row["status"] == cdb.OrderStatus.FAILED
    return OrderResult(
        external_order_id=row["external_order_id"],
        status=OrderStatus.REJECTED if failed else OrderStatus.ACCEPTED,
        lines=lines,
        detail=row["status_detail"],
        order_id=int(row["id"]),
        participant_ids=ids,
        total=money(row["total_amount"]),
        payment_method=row["payment_method"],
        bank_account_id=row["bank_account_id"],
        iban_masked=masked,
        mandate_reference=reference,
        received_at=row["received_at"],
        processed_at=row["processed_at"],
    )


# ---------------------------------------------------------------------- queries and rules


async def _insert_registration(conn: Conn, line: _Line, order_id: int, now: dt.datetime) -> None:
    assert line.outcome is not None and line.course is not None
    res = await conn.execute(
        _INSERT_REGISTRATION,
        {
            "course_id": line.course.id,
            "participant_id": line.participant_id,
            "order_id": order_id,
            "status": line.outcome.value,
            "registered_at": now,
            "fee_charged": line.fee,
            "discount_id": line.discount_id,
        },
    )
    line.registration_id = int(res.inserted_primary_key[0])  # type: ignore[index]


# The columns each CTE of _write_statement binds (besides the ids it links): what the booker
# writes plus every column with a Python-side default (SQLAlchemy cannot fill those in for an
# INSERT inside a CTE). _bind refuses rows that do not match, so a new column fails loudly.
_WRITTEN: dict[str, tuple[str, ...]] = {
    "participants": (
        "salutation",
        "academic_title",
        "first_name",
        "last_name",
        "birth_date",
        "street",
        "postcode",
        "city",
        "country",
        "email",
        "phone",
        "created_at",
        "updated_at",
        "row_version",
    ),
    "orders": (
        "external_order_id",
        "received_at",
        "processed_at",
        "status",
        "payment_method",
        "total_amount",
        "payload_hash",
        "created_at",
        "updated_at",
        "row_version",
    ),
    "registrations": (
        "course_id",
        "status",
        "registered_at",
        "fee_charged",
        "discount_id",
        "created_at",
        "updated_at",
        "row_version",
    ),
    "bank_accounts": (
        "account_holder",
        "iban_ciphertext",
        "iban_fingerprint",
        "iban_masked",
        "bic",
        "bank_name",
        "mandate_signed_on",
        "is_default",
        "created_at",
        "updated_at",
        "row_version",
    ),
}


def _bind(prefix: str, table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``row`` (defaults completed) for the ``prefix`` CTE."""
    full = _complete(table, row)
    if set(full) != set(_WRITTEN[table.name]):
        raise AssertionError(f"{table.name}: written columns changed: {sorted(full)}")
    return {f"{prefix}_{name}": value for name, value in full.items()}


@functools.lru_cache(maxsize=64)
def _write_statement(
    new_people: int, payer: int | None, first: int | None, *, new_account: bool
) -> Any:
    """``WITH new_participant_0 AS (INSERT … RETURNING id), …, new_account AS (…), new_order AS
    (INSERT … RETURNING id) INSERT INTO registrations … RETURNING …``, built once per order
    shape (SQLAlchemy then reuses the compiled form; per order only the parameters change).

    ``payer`` / ``first``: the index of the payer / of the first line's participant among the
    new people, None for a stored participant (bound as ``payer_id`` /
    ``first_participant_id``). Rows of other CTEs are referenced by scalar subqueries; the
    foreign keys are checked at the end of the statement, when all rows exist."""
    p, a, o, r = cdb.participants, cdb.bank_accounts, cdb.orders, cdb.registrations

    def values(prefix: str, table: Table) -> dict[str, Any]:
        return {
            name: bindparam(f"{prefix}_{name}", type_=table.c[name].type)
            for name in _WRITTEN[table.name]
        }

    new = [
        insert(p).values(values(f"p{i}", p)).returning(p.c.id).cte(f"new_participant_{i}")
        for i in range(new_people)
    ]

    def participant(i: int | None, name: str) -> Any:
        if i is None:
            return bindparam(name, type_=Integer)
        return select(new[i].c.id).scalar_subquery()

    payer_id = participant(payer, "payer_id")
    returning: list[Any] = [r.c.id, r.c.order_id]
    returning += [
        select(cte.c.id).scalar_subquery().label(f"participant_{i}") for i, cte in enumerate(new)
    ]
    account_id: Any = bindparam("bank_account_id", type_=Integer)
    if new_account:
        reference = func.concat(
            bindparam("reference_prefix", type_=String),
            payer_id,
            bindparam("reference_suffix", type_=String),
        )
        account = (
            insert(a)
            .values({**values("a", a), "participant_id": payer_id, "mandate_reference": reference})
            .returning(a.c.id, a.c.mandate_reference)
            .cte("new_account")
        )
        account_id = select(account.c.id).scalar_subquery()
        returning += [
            account_id.label("account_id"),
            select(account.c.mandate_reference).scalar_subquery().label("reference"),
        ]
    new_order = (
        insert(o)
        .values({**values("o", o), "participant_id": payer_id, "bank_account_id": account_id})
        .returning(o.c.id)
        .cte("new_order")
    )
    registration = {
        **values("r", r),
        "participant_id": participant(first, "first_participant_id"),
        "order_id": select(new_order.c.id).scalar_subquery(),
    }
    return insert(r).values(registration).returning(*returning)


@functools.cache
def _defaults(table: Table) -> tuple[tuple[str, Any, bool], ...]:
    """The Python-side column defaults of ``table``: (name, value or function, is function)."""
    found = []
    for column in table.c:
        default = column.default
        if isinstance(default, ScalarElementColumnDefault):
            found.append((column.name, default.arg, False))
        elif isinstance(default, CallableColumnDefault):
            found.append((column.name, default.arg, True))
    return tuple(found)


def _complete(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the Python-side defaults of the columns it leaves out filled in, as
    SQLAlchemy does for a plain INSERT (it cannot for an INSERT inside a CTE)."""
    full = dict(row)
    for name, default, call in _defaults(table):
        if name not in full:
            full[name] = default(None) if call else default  # no context needed
    return full


def _holds(line: _Line) -> bool:
    return line.outcome in (Outcome.BOOKED, Outcome.PROVISIONAL)


def _course_reason(course: Any, first_start: dt.datetime | None, now: dt.datetime) -> Reason | None:
    status = course.status
    if status == cdb.CourseStatus.CANCELLED:
        return Reason.CANCELLED
    if status == cdb.CourseStatus.FINISHED:
        return Reason.FINISHED
    if not course.web_bookable:
        return Reason.NOT_WEB_BOOKABLE
    if status == cdb.CourseStatus.PLANNED:
        return Reason.NOT_OPEN
    if status == cdb.CourseStatus.CLOSED:
        return Reason.REGISTRATION_CLOSED
    deadline = course.registration_deadline or first_start
    if deadline is not None and now >= deadline:
        return Reason.REGISTRATION_CLOSED
    return None


def _discounted(fee: Decimal, discount: Any) -> Decimal:
    if discount.percent_off is not None:
        reduced = fee * (Decimal(100) - discount.percent_off) / Decimal(100)
    else:
        reduced = fee - discount.amount_off
    result: Decimal = max(Decimal("0.00"), reduced).quantize(CENT, ROUND_HALF_UP)
    return result


async def _seat_counts(
    conn: Conn, course_ids: Sequence[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Seat-holding registrations and waiting-list registrations per course."""
    if not course_ids:
        return {}, {}
    rows = (await conn.execute(_SEATS, {"ids": list(course_ids)})).all()
    held: Counter[int] = Counter()
    waiting: dict[int, int] = {}
    for course_id, status, count in rows:
        if status == cdb.RegistrationStatus.WAITING_LIST:
            waiting[course_id] = int(count)
        else:
            held[course_id] += int(count)
    return dict(held), waiting


async def _first_session_starts(conn: Conn, course_ids: Sequence[int]) -> dict[int, dt.datetime]:
    """When each course's first session starts (for courses without a registration deadline:
    registration is open until then)."""
    if not course_ids:
        return {}
    s = cdb.course_sessions
    rows = (
        await conn.execute(
            select(s.c.course_id, s.c.session_date, s.c.start_time)
            .where(s.c.course_id.in_(course_ids))
            .order_by(s.c.course_id, s.c.session_date, s.c.start_time)
        )
    ).all()
    first: dict[int, dt.datetime] = {}
    for course_id, day, start in rows:
        if course_id not in first:
            first[course_id] = dt.datetime.combine(day, start, BERLIN).astimezone(dt.UTC)
    return first


async def _discounts(conn: Conn, course_ids: Sequence[int]) -> dict[tuple[int, str], Any]:
    d = cdb.course_discounts
    rows = (await conn.execute(select(d).where(d.c.course_id.in_(course_ids)))).all()
    return {(row.course_id, row.kind): row for row in rows}


async def _active_registrations(
    conn: Conn, participant_ids: set[int], course_ids: Sequence[int]
) -> set[tuple[int, int]]:
    if not participant_ids or not course_ids:
        return set()
    r = cdb.registrations
    rows = (
        await conn.execute(
            select(r.c.participant_id, r.c.course_id).where(
                r.c.participant_id.in_(sorted(participant_ids)),
                r.c.course_id.in_(course_ids),
                r.c.status != cdb.RegistrationStatus.CANCELLED.value,
            )
        )
    ).all()
    return {(int(p), int(c)) for p, c in rows}


def _norm(value: str | None) -> str:
    return " ".join((value or "").split()).casefold()


async def _resolve_participants(
    conn: Conn, people: Sequence[OrderParticipant]
) -> dict[str, int | None]:
    """key -> coursedb participant id; None for a new person to create.

    Stored profiles must exist (else None, reported as ``participant_not_found``). A new person
    reuses an existing participant when e-mail (case-insensitive), first and last name
    (case- and space-insensitive) and birth date all match; without e-mail or birth date a new
    participant is always created (too little to tell two people apart).
    """
    p = cdb.participants
    found: dict[str, int | None] = {}
    stored = [x.participant_id for x in people if x.participant_id is not None]
    existing: set[int] = set()
    if stored:
        existing = {
            int(i) for (i,) in (await conn.execute(select(p.c.id).where(p.c.id.in_(stored)))).all()
        }
    candidates = [
        x for x in people if x.person is not None and x.person.email and x.person.birth_date
    ]
    matches: dict[str, list[Any]] = {}
    if candidates:
        emails = sorted({x.person.email.lower() for x in candidates if x.person and x.person.email})
        rows = (await conn.execute(_SAME_EMAIL, {"emails": emails})).all()
        for row in rows:
            matches.setdefault((row.email or "").lower(), []).append(row)
    for x in people:
        if x.participant_id is not None:
            found[x.key] = x.participant_id if x.participant_id in existing else None
            continue
        person = x.person
        assert person is not None
        found[x.key] = None
        if person.email and person.birth_date:
            for row in matches.get(person.email.lower(), []):
                if (
                    _norm(row.first_name) == _norm(person.first_name)
                    and _norm(row.last_name) == _norm(person.last_name)
                    and row.birth_date == person.birth_date
                ):
                    found[x.key] = int(row.id)
                    break
    return found


def _person_row(p: OrderParticipant, now: dt.datetime) -> dict[str, Any]:
    person = p.person
    assert person is not None
    address = person.address
    return {
        "salutation": person.salutation,
        "academic_title": person.academic_title,
        "first_name": person.first_name,
        "last_name": person.last_name,
        "birth_date": person.birth_date,
        "street": address.street if address else None,
        "postcode": address.postcode if address else None,
        "city": address.city if address else None,
        "country": address.country if address else "DE",
        "email": person.email.lower() if person.email else None,
        "phone": person.phone,
        "created_at": now,
        "updated_at": now,
        "row_version": 1,
    }


def stored_participant_ids(order: Order) -> set[int]:
    return {p.participant_id for p in order.participants if p.participant_id is not None}


def uses_stored_data(order: Order) -> bool:
    """True when the order books a stored profile or pays from a stored bank account."""
    payment = order.payment
    stored_account = isinstance(payment, SepaPayment) and payment.bank_account_id is not None
    return bool(stored_participant_ids(order)) or stored_account


__all__ = ["Booker", "OrderConflict", "rebuild", "stored_participant_ids", "uses_stored_data"]
