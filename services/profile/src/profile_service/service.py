"""Profile business rules on the centre's course database (coursedb).

Reads and changes a participant's address, contact data and bank accounts, and reads the order
history that the booking service wrote. Every function takes the participant id it was granted
(``access.py`` decided that) and never touches another participant's rows: a bank account or
order of someone else is reported exactly like one that does not exist.

IBANs: accounts are written only through :func:`coursedb.banking.add_account` (schwifty
validation, AES-GCM ciphertext, keyed fingerprint, masked form). This module never decrypts an
IBAN and never returns one: every shape here carries ``iban_masked`` only.

Business rules only; HTTP lives in ``api.py``, RPC in ``handlers.py``. Domain errors, never
HTTP exceptions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from coursedb.access import StaleRowError, update_row
from coursedb.banking import BankCipher, InvalidIBAN, add_account, check_iban, set_default
from coursedb.schema import (
    bank_accounts,
    course_sessions,
    courses,
    orders,
    participants,
    registrations,
)
from mesh_common.errors import Conflict, DomainError, Invalid, NotFound
from mesh_contracts.common import Money
from mesh_contracts.profile import (
    BankAccount,
    CourseRef,
    OrderEntry,
    OrderHistory,
    PostalAddress,
    ProfileData,
    RegistrationEntry,
)
from schwifty import BIC
from schwifty.exceptions import SchwiftyException
from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from profile_service.access import ParticipantNotFound
from profile_service.validation import normalise_changes

#: Columns a participant may change (address and contact data). Names, birth date and
#: salutation are the centre's to correct.
EDITABLE = ("street", "postcode", "city", "country", "email", "phone")


class BankAccountNotFound(NotFound):
    code, title = "bank-account-not-found", "Bank account not found"


class IbanInvalid(Invalid):
    code, title = "iban-invalid", "The IBAN is not valid"


class BicInvalid(Invalid):
    code, title = "bic-invalid", "The BIC is not valid"


class BankAccountInUse(Conflict):
    code, title = "bank-account-in-use", "The bank account is in use"


class BankAccountRetained(Conflict):
    code, title = "bank-account-retained", "The bank account must be kept"


class PreconditionFailed(DomainError):
    status, code, title = 412, "precondition-failed", "Precondition failed"


class PreconditionRequired(DomainError):
    status, code, title = 428, "precondition-required", "Precondition required"


# ------------------------------------------------------------------------------ profile


def _profile(row: RowMapping) -> ProfileData:
    return ProfileData(
        id=row["id"],
        salutation=row["salutation"],
        academic_title=row["academic_title"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        birth_date=row["birth_date"],
        address=PostalAddress(
            street=row["street"],
            postcode=row["postcode"],
            city=row["city"],
            country=row["country"] or "DE",
        ),
        email=row["email"],
        phone=row["phone"],
        version=row["row_version"],
        updated_at=row["updated_at"],
    )


async def _participant_row(conn: AsyncConnection, participant_id: int) -> RowMapping:
    row = (
        await conn.execute(select(participants).where(participants.c.id == participant_id))
    ).first()
    if row is None:
        raise ParticipantNotFound("no participant profile for this account")
    return row._mapping


async def get_profile(engine: AsyncEngine, participant_id: int) -> ProfileData:
    async with engine.connect() as conn:
        return _profile(await _participant_row(conn, participant_id))


async def update_profile(
    engine: AsyncEngine,
    participant_id: int,
    changes: dict[str, Any],
    *,
    if_match: frozenset[int] | None,
) -> tuple[ProfileData, list[str]]:
    """Apply validated ``changes`` (coursedb columns, None clears) if the participant's row is
    at one of the ``if_match`` versions (None: any version, ``If-Match: *``).

    The version check and the update are one compare-and-set, so two concurrent editors cannot
    both win. Returns the new profile and the names of the fields that actually changed.
    """
    unknown = set(changes) - set(EDITABLE)
    if unknown:  # the API models forbid them; a guard against a future caller
        raise Invalid(f"fields cannot be changed here: {sorted(unknown)}")
    async with engine.begin() as conn:
        current = await _participant_row(conn, participant_id)
        version = int(current["row_version"])
        if if_match is not None and version not in if_match:
            raise PreconditionFailed(
                "the profile was changed meanwhile; fetch it again and re-apply your change",
                extra={"current_version": version},
            )
        values = normalise_changes(dict(current), changes)
        changed = sorted(k for k, v in values.items() if current[k] != v)
        if changed:
            try:
                await update_row(
                    conn,
                    participants,
                    participant_id,
                    {k: values[k] for k in changed},
                    expected_version=version,
                )
            except StaleRowError as exc:
                raise PreconditionFailed(
                    "the profile was changed meanwhile; fetch it again and re-apply your change",
                    extra={"current_version": exc.actual},
                ) from None
        return _profile(await _participant_row(conn, participant_id)), changed


# ------------------------------------------------------------------------------ bank accounts


def _account(row: RowMapping) -> BankAccount:
    return BankAccount(
        id=row["id"],
        iban_masked=row["iban_masked"],
        account_holder=row["account_holder"],
        bic=row["bic"],
        bank_name=row["bank_name"],
        is_default=bool(row["is_default"]),
        mandate_reference=row["mandate_reference"],
        mandate_signed_on=row["mandate_signed_on"],
    )


_ACCOUNT_COLUMNS = (
    bank_accounts.c.id,
    bank_accounts.c.iban_masked,
    bank_accounts.c.account_holder,
    bank_accounts.c.bic,
    bank_accounts.c.bank_name,
    bank_accounts.c.is_default,
    bank_accounts.c.mandate_reference,
    bank_accounts.c.mandate_signed_on,
)


async def list_accounts(engine: AsyncEngine, participant_id: int) -> list[BankAccount]:
    """The participant's accounts, default first, then newest first."""
    async with engine.connect() as conn:
        await _participant_row(conn, participant_id)
        rows = (
            await conn.execute(
                select(*_ACCOUNT_COLUMNS)
                .where(bank_accounts.c.participant_id == participant_id)
                .order_by(bank_accounts.c.is_default.desc(), bank_accounts.c.id.desc())
            )
        ).all()
    return [_account(r._mapping) for r in rows]


async def _own_account(
    conn: AsyncConnection, participant_id: int, account_id: int, *, lock: bool = False
) -> RowMapping:
    query = select(*_ACCOUNT_COLUMNS).where(
        bank_accounts.c.id == account_id,
        bank_accounts.c.participant_id == participant_id,
    )
    if lock:
        # PostgreSQL/MariaDB: an order being inserted that references this account holds a key
        # share lock on it, so this waits for that order and then sees it.
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise BankAccountNotFound(f"no bank account {account_id} in this profile")
    return row._mapping


async def get_account(engine: AsyncEngine, participant_id: int, account_id: int) -> BankAccount:
    async with engine.connect() as conn:
        return _account(await _own_account(conn, participant_id, account_id))


def _checked_bic(bic: str | None) -> str | None:
    if bic is None or not bic.strip():
        return None
    try:
        return str(BIC(bic.strip().upper()))
    except SchwiftyException:
        raise BicInvalid(
            "not a valid BIC (8 or 11 characters: bank, country, location[, branch])"
        ) from None


@dataclass(frozen=True, slots=True)
class AddedAccount:
    account: BankAccount
    created: bool


async def add_bank_account(
    engine: AsyncEngine,
    cipher: BankCipher,
    participant_id: int,
    *,
    account_holder: str,
    iban: str,
    bic: str | None,
    make_default: bool,
) -> AddedAccount:
    """Store an account (IBAN validated, only its ciphertext, fingerprint and masked form are
    written). The same IBAN again returns the stored account (``created`` False)."""
    try:
        check_iban(iban)
    except InvalidIBAN as exc:
        # The message names the kind of error (checksum, length, country...), never the digits.
        raise IbanInvalid(str(exc)) from None
    checked_bic = _checked_bic(bic)
    holder = " ".join(account_holder.split())
    if not holder:
        raise Invalid("the account holder is required", code="account-holder-invalid")
    for attempt in (1, 2):
        try:
            return await _add(
                engine, cipher, participant_id, holder, iban, checked_bic, make_default
            )
        except IntegrityError:
            # A concurrent add of the same IBAN or a concurrent default change won the unique
            # constraint; a second attempt sees the committed row. Bounded: one retry.
            if attempt == 2:
                raise Conflict(
                    "the bank accounts were changed concurrently; try again",
                    code="bank-account-conflict",
                ) from None
    raise AssertionError("unreachable")


async def _add(
    engine: AsyncEngine,
    cipher: BankCipher,
    participant_id: int,
    holder: str,
    iban: str,
    bic: str | None,
    make_default: bool,
) -> AddedAccount:
    async with engine.begin() as conn:
        await _participant_row(conn, participant_id)
        before = await conn.scalar(
            select(func.count())
            .select_from(bank_accounts)
            .where(bank_accounts.c.participant_id == participant_id)
        )
        account_id = await add_account(
            conn,
            cipher,
            participant_id=participant_id,
            account_holder=holder,
            iban=iban,
            bic=bic,
            make_default=make_default,
        )
        after = await conn.scalar(
            select(func.count())
            .select_from(bank_accounts)
            .where(bank_accounts.c.participant_id == participant_id)
        )
        row = await _own_account(conn, participant_id, account_id)
    return AddedAccount(_account(row), created=after != before)


async def make_default(engine: AsyncEngine, participant_id: int, account_id: int) -> BankAccount:
    async with engine.begin() as conn:
        await _own_account(conn, participant_id, account_id)
        await set_default(conn, participant_id, account_id)
        return _account(await _own_account(conn, participant_id, account_id))


#: Course states in which a booked registration may still be charged.
_RUNNING = ("planned", "open", "closed")


async def account_usage(conn: AsyncConnection, account_id: int) -> str | None:
    """``"open"`` when an order that may still be debited uses the account (received and not
    yet booked, or booked with an active registration in a course that is not over),
    ``"history"`` when only finished orders reference it, None when nothing does."""
    referencing = orders.c.bank_account_id == account_id
    open_order = exists(
        select(orders.c.id).where(
            referencing,
            or_(
                orders.c.status == "received",
                and_(
                    orders.c.status == "processed",
                    exists(
                        select(registrations.c.id)
                        .join(courses, courses.c.id == registrations.c.course_id)
                        .where(
                            registrations.c.order_id == orders.c.id,
                            registrations.c.status != "cancelled",
                            courses.c.status.in_(_RUNNING),
                        )
                    ),
                ),
            ),
        )
    )
    if await conn.scalar(select(open_order)):
        return "open"
    if await conn.scalar(select(exists(select(orders.c.id).where(referencing)))):
        return "history"
    return None


async def delete_account(engine: AsyncEngine, participant_id: int, account_id: int) -> int | None:
    """Delete an account the participant no longer wants; 409 while an order or its SEPA
    mandate still needs it. Returns the id of the account that became the default, if any."""
    try:
        return await _delete(engine, participant_id, account_id)
    except IntegrityError:
        # An order referencing the account committed between the check and the delete.
        raise BankAccountInUse(
            "an order started using this bank account meanwhile",
            extra={"bank_account_id": account_id},
        ) from None


async def _delete(engine: AsyncEngine, participant_id: int, account_id: int) -> int | None:
    async with engine.begin() as conn:
        row = await _own_account(conn, participant_id, account_id, lock=True)
        usage = await account_usage(conn, account_id)
        if usage == "open":
            raise BankAccountInUse(
                "an open order (and its SEPA mandate) still debits this account; it can be "
                "removed once the order is settled",
                extra={"bank_account_id": account_id},
            )
        if usage == "history":
            raise BankAccountRetained(
                "past payments were collected from this account; the centre must keep it with "
                "those records",
                extra={"bank_account_id": account_id},
            )
        await conn.execute(delete(bank_accounts).where(bank_accounts.c.id == account_id))
        if not row["is_default"]:
            return None
        successor = await conn.scalar(
            select(bank_accounts.c.id)
            .where(bank_accounts.c.participant_id == participant_id)
            .order_by(bank_accounts.c.id.desc())
            .limit(1)
        )
        if successor is not None:
            await set_default(conn, participant_id, int(successor))
        return int(successor) if successor is not None else None


# ------------------------------------------------------------------------------ order history


def _money(value: Decimal | None) -> Money | None:
    return Money(amount=value) if value is not None else None


async def order_history(
    engine: AsyncEngine, participant_id: int, *, limit: int, offset: int
) -> OrderHistory:
    """Orders the participant placed or is registered in, newest first, with their
    registrations. In an order someone else placed, only the participant's own registrations
    are shown and no payment details (they are the buyer's)."""
    mine = or_(
        orders.c.participant_id == participant_id,
        orders.c.id.in_(
            select(registrations.c.order_id).where(
                registrations.c.participant_id == participant_id,
                registrations.c.order_id.is_not(None),
            )
        ),
    )
    async with engine.connect() as conn:
        await _participant_row(conn, participant_id)
        total = int(await conn.scalar(select(func.count()).select_from(orders).where(mine)) or 0)
        order_rows = (
            await conn.execute(
                select(
                    orders.c.id,
                    orders.c.external_order_id,
                    orders.c.participant_id,
                    orders.c.received_at,
                    orders.c.processed_at,
                    orders.c.status,
                    orders.c.payment_method,
                    orders.c.total_amount,
                    bank_accounts.c.iban_masked,
                )
                .select_from(
                    orders.outerjoin(bank_accounts, bank_accounts.c.id == orders.c.bank_account_id)
                )
                .where(mine)
                .order_by(orders.c.received_at.desc(), orders.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
        ).all()
        regs = await _registrations(conn, [r.id for r in order_rows])
    entries = []
    for o in order_rows:
        buyer = o.participant_id == participant_id
        shown = [
            _registration(r, participant_id)
            for r in regs.get(o.id, [])
            if buyer or r["participant_id"] == participant_id
        ]
        entries.append(
            OrderEntry(
                order_id=o.external_order_id,
                received_at=o.received_at,
                processed_at=o.processed_at,
                status=o.status,
                placed_by_me=buyer,
                payment_method=o.payment_method if buyer else None,
                bank_account_iban_masked=o.iban_masked if buyer else None,
                total_amount=_money(o.total_amount) if buyer else None,
                registrations=shown,
            )
        )
    return OrderHistory(orders=entries, total=total, limit=limit, offset=offset)


async def _registrations(
    conn: AsyncConnection, order_ids: Sequence[int]
) -> dict[int, list[RowMapping]]:
    if not order_ids:
        return {}
    dates = (
        select(
            course_sessions.c.course_id,
            func.min(course_sessions.c.session_date).label("starts_on"),
            func.max(course_sessions.c.session_date).label("ends_on"),
            func.count().label("sessions"),
        )
        .group_by(course_sessions.c.course_id)
        .subquery()
    )
    rows = (
        await conn.execute(
            select(
                registrations.c.id,
                registrations.c.order_id,
                registrations.c.participant_id,
                registrations.c.status,
                registrations.c.registered_at,
                registrations.c.cancelled_at,
                registrations.c.fee_charged,
                courses.c.number,
                courses.c.title,
                courses.c.status.label("course_status"),
                dates.c.starts_on,
                dates.c.ends_on,
                dates.c.sessions,
                participants.c.first_name,
                participants.c.last_name,
            )
            .select_from(
                registrations.join(courses, courses.c.id == registrations.c.course_id)
                .join(participants, participants.c.id == registrations.c.participant_id)
                .outerjoin(dates, dates.c.course_id == courses.c.id)
            )
            .where(registrations.c.order_id.in_(order_ids))
            .order_by(registrations.c.order_id, registrations.c.id)
        )
    ).all()
    grouped: dict[int, list[RowMapping]] = {}
    for r in rows:
        grouped.setdefault(r.order_id, []).append(r._mapping)
    return grouped


def _as_date(value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))  # SQLite aggregates return ISO text


def _registration(r: RowMapping, participant_id: int) -> RegistrationEntry:
    return RegistrationEntry(
        id=r["id"],
        course=CourseRef(
            number=r["number"],
            title=r["title"],
            status=r["course_status"],
            starts_on=_as_date(r["starts_on"]),
            ends_on=_as_date(r["ends_on"]),
            sessions=int(r["sessions"] or 0),
        ),
        participant_name=f"{r['first_name']} {r['last_name']}",
        is_me=r["participant_id"] == participant_id,
        status=r["status"],
        registered_at=r["registered_at"],
        cancelled_at=r["cancelled_at"],
        fee_charged=_money(r["fee_charged"]),
    )
