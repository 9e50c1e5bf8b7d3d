"""Contracts owned by booking: web orders in, booking outcomes out.

The website's backend sends a complete order (``PlaceOrder``, RPC ``booking.place_order``) and
gets an :class:`OrderResult` at once:

- ``accepted``: every line is booked, on the waiting list or provisionally reserved;
- ``rejected``: nothing was booked; each line says why (``reason``, a :class:`Reason` code the
  website can translate and show). An order is **all or nothing**: if one line cannot be
  booked, no line is, and the lines that would have been fine carry ``order_rejected``;
- ``pending``: the course database is unreachable right now; the order is stored durably and
  booked later in arrival order. Its final outcome arrives as the event
  ``booking.order_confirmed.v1`` or ``booking.order_rejected.v1`` (and ``booking.get_order``
  answers it from then on);
- ``failed``: a pending order that could not be processed at all (see ``detail``); the centre
  sees it in its list of failed orders and can retry it.

The ``external_order_id`` is the idempotency key: sending the same order again returns the same
result and books nothing twice; the same id with a different order is refused as a conflict
(``RemoteConflict`` / HTTP 409, code ``order-conflict``).

A person is either new (``person``: name, contact, address; booking reuses an existing
participant with the same e-mail, name and birth date) or a stored profile (``participant_id``,
the coursedb participant id of a logged-in user). Referring to a stored profile needs that
participant's own token (``PlaceOrder.participant_token``) unless the caller is staff.

IBANs travel only inside ``NewBankAccount.iban`` (hidden from ``repr``); booking stores them
encrypted and never puts them into a result or event, only the masked form.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from mesh_contracts.base import Event, RpcReply, RpcRequest
from mesh_contracts.common import Address, Money, Value

OrderId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[\w.:/-]+$"),
]
Key = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20, pattern=r"^[\w-]+$")
]
CourseNumber = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=254, pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$"
    ),
]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=40, pattern=r"^[0-9+()/ .-]{3,40}$")
]
_BIC = re.compile(r"^[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?$")


class RegistrationMode(StrEnum):
    """What the person asked for. Allowed per course (``registration_mode``):

    - ``direct``: book now, or refuse when full. Allowed for ``direct`` and ``waiting_list``
      courses (on a waiting-list course it means "do not put me on the waiting list").
    - ``waiting_list``: book now, or join the waiting list when full. Allowed for ``direct``
      courses too, which have no waiting list: there it is the same as ``direct``.
    - ``provisional``: reserve a seat, binding once the centre confirms (``provisional``).
    - ``on_request``: ask; the centre decides (``on_request`` courses, always waiting list).
    """

    DIRECT = "direct"
    WAITING_LIST = "waiting_list"
    PROVISIONAL = "provisional"
    ON_REQUEST = "on_request"


class Reason(StrEnum):
    """Why a line was rejected (stable codes; the website maps them to its own texts)."""

    COURSE_NOT_FOUND = "course_not_found"
    NOT_WEB_BOOKABLE = "not_web_bookable"  # not offered for online booking
    NOT_OPEN = "not_open"  # still being planned
    CANCELLED = "cancelled"  # the course was called off
    FINISHED = "finished"
    REGISTRATION_CLOSED = "registration_closed"  # closed by the centre or deadline passed
    FULL = "full"
    MODE_NOT_ALLOWED = "mode_not_allowed"  # the chosen mode does not fit the course
    DUPLICATE_REGISTRATION = "duplicate_registration"  # already registered for this course
    PARTICIPANT_NOT_FOUND = "participant_not_found"  # no stored profile with that id
    DISCOUNT_NOT_AVAILABLE = "discount_not_available"
    BANK_ACCOUNT_NOT_FOUND = "bank_account_not_found"  # not an account of the payer
    INVALID_IBAN = "invalid_iban"
    MANDATE_CONSENT_MISSING = "mandate_consent_missing"
    ORDER_REJECTED = "order_rejected"  # this line was fine, another one was not


class Outcome(StrEnum):
    BOOKED = "booked"
    WAITING_LIST = "waiting_list"
    PROVISIONAL = "provisional"  # seat held; binding once the centre confirms
    REJECTED = "rejected"
    CANCELLED = "cancelled"  # booked once, cancelled since (only in results read back later)


class OrderStatus(StrEnum):
    ACCEPTED = "accepted"
    PENDING = "pending"  # stored; booked once the course database is reachable again
    REJECTED = "rejected"
    FAILED = "failed"  # a pending order that could not be processed; the centre looks at it


class PersonData(Value):
    """A person booking for the first time (or without logging in)."""

    salutation: Literal["ms", "mr", "mx"] | None = None
    academic_title: Annotated[str, StringConstraints(max_length=20)] | None = None
    first_name: Name
    last_name: Name
    birth_date: dt.date | None = None
    email: Email | None = None
    phone: Phone | None = None
    address: Address | None = None

    @field_validator("address")
    @classmethod
    def _fits(cls, value: Address | None) -> Address | None:
        # The course database's columns: street 120, city 80 characters.
        if value is not None and (len(value.street) > 120 or len(value.city) > 80):
            raise ValueError("street at most 120 and city at most 80 characters")
        return value

    @field_validator("birth_date")
    @classmethod
    def _plausible(cls, value: dt.date | None) -> dt.date | None:
        if value is not None and not dt.date(1900, 1, 1) <= value <= dt.date.today():
            raise ValueError("birth date must lie between 1900 and today")
        return value


class OrderParticipant(Value):
    """One person of the order: new ``person`` data or a stored ``participant_id``."""

    key: Key  # how the order's items refer to this person, e.g. "p1"
    participant_id: Annotated[int, Field(ge=1)] | None = None
    person: PersonData | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> OrderParticipant:
        if (self.participant_id is None) == (self.person is None):
            raise ValueError("give exactly one of participant_id and person")
        return self


class OrderItem(Value):
    """One registration: a person for a course."""

    participant: Key
    course_number: CourseNumber  # Kursnummer, e.g. "252-10105"
    mode: RegistrationMode | None = None  # default: the order's mode
    discount: Annotated[str, StringConstraints(max_length=16)] | None = None  # e.g. "student"


class NewBankAccount(Value):
    account_holder: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=70)
    ]
    iban: Annotated[str, Field(min_length=5, max_length=42, repr=False)]
    bic: str | None = None
    mandate_consent: bool  # the person agreed to the SEPA direct-debit mandate

    @field_validator("bic")
    @classmethod
    def _bic(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        compact = value.replace(" ", "").upper()
        if not _BIC.match(compact):
            raise ValueError("a BIC has 8 or 11 characters (bank, country, location, branch)")
        return compact


class SepaPayment(Value):
    """SEPA direct debit from a stored account of the payer or a new account."""

    method: Literal["sepa"] = "sepa"
    bank_account_id: Annotated[int, Field(ge=1)] | None = None
    new_account: NewBankAccount | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SepaPayment:
        if (self.bank_account_id is None) == (self.new_account is None):
            raise ValueError("give exactly one of bank_account_id and new_account")
        return self


class InvoicePayment(Value):
    method: Literal["invoice"] = "invoice"


class Order(Value):
    """A complete web order. The items are booked all or nothing."""

    external_order_id: OrderId  # the web shop's order id: the idempotency key
    participants: Annotated[list[OrderParticipant], Field(min_length=1, max_length=20)]
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=50)]
    mode: RegistrationMode = RegistrationMode.DIRECT
    payment: Annotated[SepaPayment | InvoicePayment, Field(discriminator="method")]
    payer: Key | None = None  # who pays (default: the first participant)
    note: Annotated[str, StringConstraints(max_length=500)] | None = None
    submitted_at: dt.datetime | None = None  # when the customer completed the order

    @model_validator(mode="after")
    def _consistent(self) -> Order:
        keys = [p.key for p in self.participants]
        if len(set(keys)) != len(keys):
            raise ValueError("participant keys must be unique")
        ids = [p.participant_id for p in self.participants if p.participant_id is not None]
        if len(set(ids)) != len(ids):
            raise ValueError("a stored participant may appear only once")
        unknown = sorted({i.participant for i in self.items} - set(keys))
        if unknown:
            raise ValueError(f"items refer to unknown participants: {', '.join(unknown)}")
        if self.payer is not None and self.payer not in keys:
            raise ValueError(f"payer {self.payer!r} is not a participant of the order")
        pairs = [(i.participant, i.course_number) for i in self.items]
        if len(set(pairs)) != len(pairs):
            raise ValueError("the same person appears twice for the same course")
        return self

    @property
    def payer_key(self) -> str:
        return self.payer or self.participants[0].key


class LineResult(Value):
    """The outcome of one item of the order."""

    participant: str  # the item's participant key
    course_number: str
    outcome: Outcome
    reason: Reason | None = None  # set when rejected
    detail: str | None = None  # a short English explanation, for logs and the back office
    registration_id: int | None = None
    fee: Money | None = None  # amount due (booked and provisional lines)
    waiting_list_position: int | None = None


class OrderResult(RpcReply):
    """What happened to an order (the RPC reply, the REST body and the events' payload)."""

    external_order_id: str
    status: OrderStatus
    lines: list[LineResult] = Field(default_factory=list)
    detail: str | None = None
    order_id: int | None = None  # the course database's order id once booked
    participant_ids: dict[str, int] = Field(default_factory=dict)  # key -> participant id
    total: Money | None = None
    payment_method: Literal["sepa", "invoice"] | None = None
    bank_account_id: int | None = None
    iban_masked: str | None = None  # e.g. "DE** **** **** **** **30 00"
    mandate_reference: str | None = None
    received_at: dt.datetime | None = None
    processed_at: dt.datetime | None = None


class PlaceOrder(RpcRequest):
    """Book an order now (idempotent by ``order.external_order_id``)."""

    __message_type__: ClassVar[str] = "booking.place_order"
    __response_model__: ClassVar[type[OrderResult]] = OrderResult

    order: Order
    # The logged-in participant's own access token, when the order books for a stored profile
    # (``participant_id``) or uses a stored bank account: proof that the person asked for it.
    participant_token: str | None = Field(default=None, max_length=8192, repr=False)


class GetOrder(RpcRequest):
    """The current result of an order (e.g. after ``pending``); ``RemoteNotFound`` if unknown."""

    __message_type__: ClassVar[str] = "booking.get_order"
    __response_model__: ClassVar[type[OrderResult]] = OrderResult

    external_order_id: OrderId


class OrderConfirmed(Event):
    """A pending order was booked (status ``accepted``)."""

    __message_type__: ClassVar[str] = "booking.order_confirmed.v1"

    result: OrderResult


class OrderRejected(Event):
    """A pending order could not be booked (status ``rejected`` or ``failed``)."""

    __message_type__: ClassVar[str] = "booking.order_rejected.v1"

    result: OrderResult


class ReservationDecided(Event):
    """The centre confirmed (now ``booked``) or declined (now ``cancelled``) a provisional
    reservation."""

    __message_type__: ClassVar[str] = "booking.reservation_decided.v1"

    registration_id: int
    external_order_id: str | None = None
    course_number: str
    participant_id: int
    decision: Literal["confirmed", "declined"]
    decided_at: dt.datetime
