"""The course database's schema: SQLAlchemy Core tables for SQLite, PostgreSQL and MariaDB.

The coursedb stands in for an adult-education centre's (Volkshochschule, VHS) local
course-management database, the system of record that products such as itm:MANAGER or KuferSQL
keep on premises. edumesh does not own it: course-export reads it, booking writes registrations
into it, profile reads and writes participants and their bank accounts.

Domain, in the centre's words:

- A **semester** (term, e.g. "252" = autumn 2025) groups the programme. Each **course** (Kurs,
  Veranstaltung) has a unique **course number** (Kursnummer, "252-10105": semester 252, category
  101, running number 05), belongs to a **category** (Fachbereich → subcategory, two levels), has a
  fee, optional **discounts** (Ermäßigungen), min/max participants, a **status**, a **registration
  mode** and takes place in a **location**/**room** on one or more **sessions** (Termine), taught by
  **lecturers** (Dozenten).
- **Participants** (Teilnehmer) register for courses. A **registration** (Anmeldung) has a status;
  at most one *active* (not cancelled) registration exists per participant and course. Web
  registrations arrive as **orders** (one order, several registrations). Participants keep **bank
  accounts** (SEPA direct debit). These are real personal data: IBANs and addresses are never
  logged.

Course status (``CourseStatus``):
  planned    being prepared; not bookable, normally not published yet.
  open       registration is possible (subject to seats, deadline and ``web_bookable``).
  closed     registration closed by the centre; the course still takes place.
  cancelled  abgesagt (too few registrations, lecturer ill, ...); registrations are cancelled.
  finished   all sessions are over.

Registration mode (``RegistrationMode``), how the booking service treats a web registration:
  direct        Direktbuchung: booked at once while a seat is free; refused when the course is full.
  waiting_list  booked at once while a seat is free; when full the registration is accepted with
                status ``waiting_list`` (first come, first served; the centre moves people up).
  provisional   Vormerkung: accepted with status ``provisional`` while a seat is free; it holds
                the seat but is binding only after the centre confirms it (status ``booked``),
                e.g. after a placement test or once the minimum number of participants is reached.
  on_request    Anmeldung auf Anfrage: nothing is booked automatically; every registration is
                accepted with status ``waiting_list`` (no seat held) and the centre decides.

Registration status (``RegistrationStatus``): ``booked`` and ``provisional`` hold a seat,
``waiting_list`` does not, ``cancelled`` is history. There is deliberately **no seat counter**
column anywhere: free seats are ``max_participants`` minus the seat-holding registrations,
computed under a lock by the booking service, so no counter can drift.

Portability rules kept here (and why):
- Every string has an explicit length (MariaDB needs it for VARCHAR and indexes).
- Enumerations are VARCHAR + a named CHECK constraint, not native enums (no ALTER TYPE dance on
  PostgreSQL, same behaviour everywhere).
- "Unique active registration" and "one default bank account" need a partial unique index,
  which MariaDB lacks. A stored generated column that is 1 for the rows that count and NULL
  otherwise, plus an ordinary unique constraint, gives the same guarantee on all three (NULLs
  never collide in a unique constraint).
- Money is ``ExactDecimal`` (NUMERIC, read back as ``Decimal`` on every backend). SQLite has no
  decimal type and stores a number: each value reads back exactly (quantised to its scale), but
  arithmetic inside SQL (``SUM``) is floating point there, so round such results.
- Timestamps are ``UTCDateTime``: timezone-aware UTC in Python on every backend, microseconds
  kept on MariaDB (``DATETIME(6)``) so change detection does not lose same-second updates.
- ``updated_at`` and ``row_version`` are maintained by the access layer: every Core ``UPDATE``
  through SQLAlchemy sets them (column ``onupdate``), see ``coursedb.access``. Raw SQL that
  bypasses SQLAlchemy must set them itself.

This module only declares structure. It must not open connections, read settings or hold data.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    Time,
    UniqueConstraint,
    literal_column,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator, TypeEngine


class CourseStatus(StrEnum):
    PLANNED = "planned"
    OPEN = "open"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    FINISHED = "finished"


class RegistrationMode(StrEnum):
    DIRECT = "direct"
    WAITING_LIST = "waiting_list"
    PROVISIONAL = "provisional"
    ON_REQUEST = "on_request"


class RegistrationStatus(StrEnum):
    BOOKED = "booked"
    WAITING_LIST = "waiting_list"
    PROVISIONAL = "provisional"
    CANCELLED = "cancelled"


#: Registration statuses that occupy a seat (counted against ``max_participants``).
SEAT_HOLDING_STATUSES: frozenset[str] = frozenset(
    {RegistrationStatus.BOOKED, RegistrationStatus.PROVISIONAL}
)


class OrderStatus(StrEnum):
    RECEIVED = "received"  # stored, not processed yet (e.g. arrived while the link was down)
    PROCESSED = "processed"  # its registrations are written
    FAILED = "failed"  # could not be booked (course full, not bookable, ...); see status_detail
    CANCELLED = "cancelled"


class PaymentMethod(StrEnum):
    SEPA = "sepa"  # SEPA direct debit from one of the participant's bank accounts
    INVOICE = "invoice"


class DiscountKind(StrEnum):
    STUDENT = "student"  # Schüler, Studierende, Auszubildende, Freiwilligendienst
    PENSIONER = "pensioner"  # Rentner/innen
    JOBSEEKER = "jobseeker"  # Arbeitsuchende, Bürgergeld
    DISABILITY = "disability"  # Schwerbehindertenausweis
    SOCIAL_PASS = "social_pass"  # noqa: S105 - städtischer Sozial-/Familienpass, no secret
    EARLY_BOOKING = "early_booking"  # Frühbucherrabatt


class Salutation(StrEnum):
    MS = "ms"  # Frau
    MR = "mr"  # Herr
    MX = "mx"  # neutral ("Guten Tag Vorname Nachname")


# --------------------------------------------------------------------------------------------
# Portable column types
# --------------------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An instant, always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite and MariaDB have no zone, so the value is stored as
    naive UTC and the zone is re-attached on read. Naive datetimes are refused on write because
    their meaning (local? UTC?) would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC datetime")
        value = value.astimezone(dt.UTC)
        if dialect.name != "postgresql":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC(p, s) that is a ``Decimal`` in Python on every backend.

    SQLite has no decimal type: the value is bound as text (stored with NUMERIC affinity) and read
    back quantised to the scale, which also avoids SQLAlchemy's float-conversion warning there.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self._precision = precision
        self._scale = scale
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(
                Numeric(precision=self._precision, scale=self._scale, asdecimal=False)
            )
        return dialect.type_descriptor(self.impl_instance)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return str(Decimal(value).quantize(self._quantum))
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, float):
            value = repr(value)  # shortest repr round-trips, so 49.9 stays 49.9, not 49.8999...
        return Decimal(value).quantize(self._quantum)


def Money() -> ExactDecimal:  # reads like a type in the column declarations
    """An amount in euros with cents."""
    return ExactDecimal(10, 2)


# --------------------------------------------------------------------------------------------
# Metadata and shared column groups
# --------------------------------------------------------------------------------------------

# Deterministic constraint names, unique per database (PostgreSQL index names are schema-wide)
# and under the 63/64-character limits, so migrations can address them later. Primary keys keep
# each backend's default name (MariaDB ignores a name there, with a warning).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# InnoDB for FKs and transactions; utf8mb4 so every German (and any other) name fits.
_MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_unicode_ci",
}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _audit_columns() -> list[Column[Any]]:
    """created_at / updated_at / row_version for rows that other systems sync or edit.

    ``updated_at`` is set on every SQLAlchemy UPDATE (``onupdate``) and is indexed, so "what
    changed since T" is an index range scan. ``row_version`` increments on every UPDATE: readers
    use it to drop duplicates when they re-read an overlap window, writers for optimistic
    concurrency (``coursedb.access.update_row(expected_version=...)``).
    """
    return [
        Column("created_at", UTCDateTime(), nullable=False, default=_utcnow),
        Column(
            "updated_at",
            UTCDateTime(),
            nullable=False,
            default=_utcnow,
            onupdate=_utcnow,
            index=True,
        ),
        Column(
            "row_version",
            Integer,
            nullable=False,
            default=1,
            server_default="1",
            # Rendered inline in the UPDATE's SET clause, so the increment is atomic.
            onupdate=literal_column("row_version") + 1,
        ),
    ]


def _one_of(column: str, values: type[StrEnum]) -> CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_valid")


# --------------------------------------------------------------------------------------------
# Programme structure
# --------------------------------------------------------------------------------------------

semesters = Table(
    "semesters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(8), nullable=False, unique=True),  # "252" = 2025, 2nd half
    Column("name", String(100), nullable=False),  # "Herbstsemester 2025"
    Column("starts_on", Date, nullable=False),
    Column("ends_on", Date, nullable=False),
    CheckConstraint("ends_on >= starts_on", name="dates_ordered"),
    **_MYSQL,
)

categories = Table(
    "categories",
    metadata,
    Column("id", Integer, primary_key=True),
    # NULL for a Fachbereich (programme area), the Fachbereich's id for a subcategory.
    Column("parent_id", ForeignKey("categories.id"), nullable=True, index=True),
    Column("code", String(10), nullable=False, unique=True),  # "1", "101"
    Column("name", String(120), nullable=False),
    Column("sort_order", SmallInteger, nullable=False, default=0),
    **_MYSQL,
)

locations = Table(
    "locations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(120), nullable=False),  # "Volkshochschulhaus am Rotteckring"
    Column("street", String(120), nullable=False),
    Column("postcode", String(10), nullable=False),
    Column("city", String(80), nullable=False),
    Column("accessible", Boolean, nullable=False, default=False),  # barrierefrei
    *_audit_columns(),
    **_MYSQL,
)

rooms = Table(
    "rooms",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("location_id", ForeignKey("locations.id"), nullable=False),
    Column("name", String(80), nullable=False),  # "Raum 1.04", "EDV-Raum 2", "Lehrküche"
    Column("capacity", SmallInteger, nullable=False),
    UniqueConstraint("location_id", "name"),  # also serves lookups by location
    CheckConstraint("capacity > 0", name="capacity_positive"),
    **_MYSQL,
)

lecturers = Table(
    "lecturers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("salutation", String(4), nullable=True),
    Column("academic_title", String(20), nullable=True),  # "Dr.", "Prof. Dr."
    Column("first_name", String(80), nullable=False),
    Column("last_name", String(80), nullable=False),
    Column("email", String(254), nullable=True),
    Column("phone", String(40), nullable=True),
    *_audit_columns(),
    Index(None, "last_name", "first_name"),
    _one_of("salutation", Salutation),
    **_MYSQL,
)

# --------------------------------------------------------------------------------------------
# Courses
# --------------------------------------------------------------------------------------------

courses = Table(
    "courses",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(20), nullable=False, unique=True),  # Kursnummer "252-10105"
    Column("semester_id", ForeignKey("semesters.id"), nullable=False),
    Column("category_id", ForeignKey("categories.id"), nullable=False, index=True),
    Column("title", String(200), nullable=False),
    Column("subtitle", String(200), nullable=True),
    Column("summary", String(1000), nullable=True),  # Kurztext: listings, teasers
    Column("description", Text, nullable=True),  # Langtext: the course page
    Column("notes", String(1000), nullable=True),  # Hinweise: what to bring, prerequisites
    Column("fee", Money(), nullable=False),  # full fee in EUR; discounts in course_discounts
    Column("teaching_units", ExactDecimal(6, 1), nullable=True),  # Unterrichtseinheiten à 45'
    Column("min_participants", SmallInteger, nullable=False, default=1),
    Column("max_participants", SmallInteger, nullable=False),
    Column("status", String(16), nullable=False, default=CourseStatus.PLANNED.value),
    Column("registration_mode", String(16), nullable=False, default=RegistrationMode.DIRECT.value),
    # Registrations are accepted until this instant (exclusive); NULL = until the course starts.
    Column("registration_deadline", UTCDateTime(), nullable=True),
    Column("publish", Boolean, nullable=False, default=False),  # meant for web publication
    Column("web_bookable", Boolean, nullable=False, default=False),  # bookable online
    # Default place; a session may override the room. NULL location = online course.
    Column("location_id", ForeignKey("locations.id"), nullable=True, index=True),
    Column("room_id", ForeignKey("rooms.id"), nullable=True, index=True),
    *_audit_columns(),
    Index(None, "semester_id", "status"),
    CheckConstraint("fee >= 0", name="fee_not_negative"),
    CheckConstraint("min_participants >= 0", name="min_not_negative"),
    CheckConstraint("max_participants >= 1", name="max_positive"),
    CheckConstraint("max_participants >= min_participants", name="min_le_max"),
    # Online bookability only makes sense for a course that is on the website at all.
    CheckConstraint("publish OR NOT web_bookable", name="bookable_needs_publish"),
    _one_of("status", CourseStatus),
    _one_of("registration_mode", RegistrationMode),
    **_MYSQL,
)

course_discounts = Table(
    "course_discounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("course_id", ForeignKey("courses.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("label", String(120), nullable=False),  # "ermäßigt für Schüler/innen, Studierende"
    # Exactly one of: a percentage off the fee, or an amount in EUR off the fee.
    Column("percent_off", ExactDecimal(5, 2), nullable=True),
    Column("amount_off", Money(), nullable=True),
    UniqueConstraint("course_id", "kind"),
    CheckConstraint("(percent_off IS NULL) <> (amount_off IS NULL)", name="percent_xor_amount"),
    CheckConstraint("percent_off > 0 AND percent_off <= 100", name="percent_range"),
    CheckConstraint("amount_off > 0", name="amount_positive"),
    _one_of("kind", DiscountKind),
    **_MYSQL,
)

course_sessions = Table(
    "course_sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("course_id", ForeignKey("courses.id", ondelete="CASCADE"), nullable=False),
    Column("session_date", Date, nullable=False),
    Column("start_time", Time, nullable=False),  # local time at the location (Europe/Berlin)
    Column("end_time", Time, nullable=False),
    Column("room_id", ForeignKey("rooms.id"), nullable=True, index=True),
    Column("note", String(200), nullable=True),  # "fällt aus", "Exkursion, Treffpunkt ..."
    UniqueConstraint("course_id", "session_date", "start_time"),  # also the course's index
    Index(None, "session_date"),
    CheckConstraint("end_time > start_time", name="times_ordered"),
    **_MYSQL,
)

course_lecturers = Table(
    "course_lecturers",
    metadata,
    Column("course_id", ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True),
    Column("lecturer_id", ForeignKey("lecturers.id"), primary_key=True, index=True),
    Column("sort_order", SmallInteger, nullable=False, default=0),
    **_MYSQL,
)

# --------------------------------------------------------------------------------------------
# Participants, bank accounts, orders, registrations
# --------------------------------------------------------------------------------------------

participants = Table(
    "participants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("salutation", String(4), nullable=True),
    Column("academic_title", String(20), nullable=True),
    Column("first_name", String(80), nullable=False),
    Column("last_name", String(80), nullable=False),
    Column("birth_date", Date, nullable=True),
    Column("street", String(120), nullable=True),  # street and house number
    Column("postcode", String(10), nullable=True),
    Column("city", String(80), nullable=True),
    Column("country", String(2), nullable=False, default="DE"),  # ISO 3166-1 alpha-2
    # Not unique: families share an address, and the centre's data predates the web portal.
    Column("email", String(254), nullable=True, index=True),
    Column("phone", String(40), nullable=True),
    *_audit_columns(),
    Index(None, "last_name", "first_name"),
    _one_of("salutation", Salutation),
    **_MYSQL,
)

bank_accounts = Table(
    "bank_accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("participant_id", ForeignKey("participants.id", ondelete="CASCADE"), nullable=False),
    Column("account_holder", String(70), nullable=False),  # SEPA limit: 70 characters
    # The IBAN is personal banking data: stored only encrypted (AES-GCM, key from the
    # environment; see coursedb.banking). ``iban_fingerprint`` is a keyed HMAC for equality and
    # uniqueness; ``iban_masked`` is the display form with only the last four digits readable.
    Column("iban_ciphertext", Text, nullable=False),
    Column("iban_fingerprint", String(64), nullable=False, index=True),
    Column("iban_masked", String(42), nullable=False),
    Column("bic", String(11), nullable=True),
    Column("bank_name", String(100), nullable=True),
    Column("mandate_reference", String(35), nullable=True, unique=True),  # SEPA limit: 35
    Column("mandate_signed_on", Date, nullable=True),
    Column("is_default", Boolean, nullable=False, default=False),
    # 1 for the default account, NULL otherwise: with the unique constraint below, at most one
    # default account per participant (a portable partial unique index).
    Column(
        "default_marker", SmallInteger, Computed("CASE WHEN is_default THEN 1 END", persisted=True)
    ),
    *_audit_columns(),
    UniqueConstraint("participant_id", "iban_fingerprint"),
    UniqueConstraint("participant_id", "default_marker"),
    CheckConstraint(
        "mandate_signed_on IS NULL OR mandate_reference IS NOT NULL", name="mandate_has_ref"
    ),
    **_MYSQL,
)

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    # The web shop's order id: the idempotency key for booking an order exactly once.
    Column("external_order_id", String(64), nullable=False, unique=True),
    # The buyer; NULL while an order is only received and not yet matched to a participant.
    Column("participant_id", ForeignKey("participants.id"), nullable=True, index=True),
    Column("received_at", UTCDateTime(), nullable=False, index=True),
    Column("processed_at", UTCDateTime(), nullable=True),
    Column("status", String(16), nullable=False, default=OrderStatus.RECEIVED.value),
    Column("status_detail", String(500), nullable=True),  # why it failed, for the office
    Column("payment_method", String(16), nullable=False),
    Column("bank_account_id", ForeignKey("bank_accounts.id"), nullable=True, index=True),
    Column("total_amount", Money(), nullable=True),
    # SHA-256 (hex) of the canonical order payload: a re-delivery with the same external id but
    # a different payload is a conflict, not a duplicate.
    Column("payload_hash", String(64), nullable=False),
    *_audit_columns(),
    Index(None, "status", "received_at"),
    CheckConstraint(
        "payment_method <> 'sepa' OR bank_account_id IS NOT NULL OR status <> 'processed'",
        name="sepa_has_account",
    ),
    _one_of("status", OrderStatus),
    _one_of("payment_method", PaymentMethod),
    **_MYSQL,
)

registrations = Table(
    "registrations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("course_id", ForeignKey("courses.id"), nullable=False),
    # Indexed by the unique constraint below, which starts with participant_id.
    Column("participant_id", ForeignKey("participants.id"), nullable=False),
    Column("order_id", ForeignKey("orders.id"), nullable=True, index=True),  # NULL: at the desk
    Column("status", String(16), nullable=False),
    Column("registered_at", UTCDateTime(), nullable=False),
    Column("cancelled_at", UTCDateTime(), nullable=True),
    # Amount due for this registration (fee after discount); NULL while nothing is charged
    # (waiting list, request, cancelled free of charge).
    Column("fee_charged", Money(), nullable=True),
    Column(
        "discount_id",
        ForeignKey("course_discounts.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    # 1 while the registration is active, NULL once cancelled: with the unique constraint
    # below, at most one active registration per participant and course, while any number of
    # cancelled ones may stay as history (a portable partial unique index).
    Column(
        "active_marker",
        SmallInteger,
        Computed("CASE WHEN status <> 'cancelled' THEN 1 END", persisted=True),
    ),
    *_audit_columns(),
    UniqueConstraint("participant_id", "course_id", "active_marker"),
    # Seat counting and waiting-list order read registrations of one course by status.
    Index(None, "course_id", "status", "registered_at"),
    CheckConstraint("fee_charged >= 0", name="fee_not_negative"),
    CheckConstraint("status <> 'booked' OR fee_charged IS NOT NULL", name="booked_has_fee"),
    CheckConstraint(
        "(status = 'cancelled') = (cancelled_at IS NOT NULL)", name="cancelled_has_time"
    ),
    _one_of("status", RegistrationStatus),
    **_MYSQL,
)

#: Tables in dependency order (parents first); handy for seeding, counting and copying.
ALL_TABLES: tuple[Table, ...] = tuple(metadata.sorted_tables)
