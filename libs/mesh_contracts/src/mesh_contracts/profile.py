"""Contracts owned by the profile service: what the website's backend asks during registration.

The participant's address, contact data and bank accounts live only in the centre's course
database; the website reads them through these RPCs (and the same shapes over REST through the
gateway) and keeps no copy. Every request carries :class:`CallerAuth`: either the participant's
own access token, or the calling service's access token plus a delegation token for that
participant (see docs/auth.md, "Delegation"). The server verifies both exactly as over HTTP.

Errors come back as remote domain errors with stable codes: ``participant-not-found`` (404),
``token-*`` (401), ``delegation-*``/``forbidden``/``insufficient-scope`` (403).

A bank account is only ever shown masked (``DE** **** **** **** **30 00``); no contract carries a
full IBAN.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field

from mesh_contracts.base import RpcReply, RpcRequest
from mesh_contracts.common import CountryCode, Money, Value

Salutation = Literal["ms", "mr", "mx"]
RegistrationStatus = Literal["booked", "waiting_list", "provisional", "cancelled"]
OrderStatus = Literal["received", "processed", "failed", "cancelled"]
PaymentMethod = Literal["sepa", "invoice"]
CourseStatus = Literal["planned", "open", "closed", "cancelled", "finished"]


class CallerAuth(Value):
    """Who asks. ``token``: the participant's access token, or the calling service's own access
    token; ``delegation``: with a service token, the delegation token for the participant."""

    token: Annotated[str, Field(min_length=1, max_length=8192, repr=False)]
    delegation: Annotated[str | None, Field(min_length=1, max_length=8192, repr=False)] = None


# --------------------------------------------------------------------------- shared shapes


class PostalAddress(Value):
    """The participant's address; parts may be missing in the centre's data."""

    street: str | None = None
    postcode: str | None = None
    city: str | None = None
    country: CountryCode = "DE"


class ProfileData(Value):
    """A participant's personal and contact data (``version`` is the coursedb row version)."""

    id: int
    salutation: Salutation | None = None
    academic_title: str | None = None
    first_name: str
    last_name: str
    birth_date: dt.date | None = None
    address: PostalAddress
    email: str | None = None
    phone: str | None = None
    version: int
    updated_at: dt.datetime


class BankAccount(Value):
    """A stored bank account, IBAN masked (country and last four digits only)."""

    id: int
    iban_masked: str
    account_holder: str
    bic: str | None = None
    bank_name: str | None = None
    is_default: bool
    mandate_reference: str | None = None
    mandate_signed_on: dt.date | None = None


class CourseRef(Value):
    number: str  # Kursnummer
    title: str
    status: CourseStatus
    starts_on: dt.date | None = None  # first session
    ends_on: dt.date | None = None  # last session
    sessions: int = 0


class RegistrationEntry(Value):
    id: int
    course: CourseRef
    participant_name: str
    is_me: bool  # the registration is the participant's own (not a family member's)
    status: RegistrationStatus
    registered_at: dt.datetime
    cancelled_at: dt.datetime | None = None
    fee_charged: Money | None = None


class OrderEntry(Value):
    """One web order in the history. Payment details are shown to the buyer only."""

    order_id: str  # the web shop's order id
    received_at: dt.datetime
    processed_at: dt.datetime | None = None
    status: OrderStatus
    placed_by_me: bool
    payment_method: PaymentMethod | None = None
    bank_account_iban_masked: str | None = None
    total_amount: Money | None = None
    registrations: list[RegistrationEntry] = Field(default_factory=list)


# --------------------------------------------------------------------------- replies


class Profile(RpcReply):
    profile: ProfileData


class BankAccountList(RpcReply):
    accounts: list[BankAccount]


class OrderHistory(RpcReply):
    orders: list[OrderEntry]
    total: int
    limit: int
    offset: int


# --------------------------------------------------------------------------- requests


class _ParticipantRequest(RpcRequest):
    __abstract__: ClassVar[bool] = True

    auth: CallerAuth
    # Optional cross-check: the participant the caller believes it asks about. A mismatch with
    # the token's participant is refused (403) without saying whether that participant exists.
    participant_id: int | None = None


class GetProfile(_ParticipantRequest):
    """The participant's profile (address, contact data). Scope with a delegation:
    ``profile:read``."""

    __message_type__: ClassVar[str] = "profile.get_profile"
    __response_model__: ClassVar[type[BaseModel]] = Profile


class ListBankAccounts(_ParticipantRequest):
    """The participant's stored bank accounts for the payment chooser, masked, default first.
    Scope with a delegation: ``profile:read``."""

    __message_type__: ClassVar[str] = "profile.list_bank_accounts"
    __response_model__: ClassVar[type[BaseModel]] = BankAccountList


class GetOrderHistory(_ParticipantRequest):
    """The participant's orders, newest first. Scope with a delegation: ``profile:read``."""

    __message_type__: ClassVar[str] = "profile.get_order_history"
    __response_model__: ClassVar[type[BaseModel]] = OrderHistory

    limit: Annotated[int, Field(ge=1, le=200)] = 50
    offset: Annotated[int, Field(ge=0)] = 0
