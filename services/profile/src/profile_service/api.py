"""HTTP API of the profile service. Thin: authorise, call the service layer, audit, shape.

``/me/...`` is the participant's own profile (participant token, or a service token plus a
delegation in ``X-Delegation-Token``); ``/participants/{id}/...`` and ``/audit`` are read-only
for staff. Every response carries ``Cache-Control: no-store`` (personal data must not sit in a
cache). Errors are problem+json with the codes listed in docs/profile.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from coursedb.banking import BankCipher
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from mesh_common.app import ServiceRuntime
from mesh_common.auth import Principal, PrincipalDep, require
from mesh_common.auth.delegation import DELEGATION_HEADER
from mesh_contracts.profile import BankAccount, OrderHistory, ProfileData
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from profile_service import service
from profile_service.access import MAX_ID, READ, WRITE, Access, Authorizer
from profile_service.audit import AuditEntry, AuditLog
from profile_service.validation import FieldError, ProfileInvalid


@dataclass
class ProfileParts:
    """What the endpoints and RPC handlers share; built at start-up (``app.py``).

    ``coursedb`` reads; ``writer`` changes. On SQLite the writer begins its transactions
    ``IMMEDIATE`` (taking the write lock first): a read-then-write transaction that began
    deferred would fail with "database is locked" instead of waiting when another writer
    committed in between. On a server database both are the same engine.
    """

    coursedb: AsyncEngine
    writer: AsyncEngine
    cipher: BankCipher
    authorizer: Authorizer
    audit: AuditLog


def parts_of(runtime: ServiceRuntime) -> ProfileParts:
    parts: ProfileParts = runtime.extras["profile"]
    return parts


def _parts(request: Request) -> ProfileParts:
    return parts_of(request.app.state.runtime)


async def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


DelegationToken = Annotated[
    str | None,
    Header(
        alias=DELEGATION_HEADER,
        description="Service clients only: a delegation token for the participant "
        "(JWT, typ delegation+jwt, act.sub = the client's subject, at most 5 minutes).",
    ),
]


async def _read_access(
    request: Request, principal: PrincipalDep, delegation: DelegationToken = None
) -> Access:
    return await _parts(request).authorizer.participant_access(
        principal, delegation, scope=READ, channel="http"
    )


async def _write_access(
    request: Request, principal: PrincipalDep, delegation: DelegationToken = None
) -> Access:
    return await _parts(request).authorizer.participant_access(
        principal, delegation, scope=WRITE, channel="http"
    )


Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0)]
AccountId = Annotated[int, Path(ge=1, le=MAX_ID)]
ParticipantId = Annotated[int, Path(ge=1, le=MAX_ID)]

ReadAccess = Annotated[Access, Depends(_read_access)]
WriteAccess = Annotated[Access, Depends(_write_access)]
Staff = Annotated[Principal, Depends(require("staff"))]

me_router = APIRouter(prefix="/me", tags=["profile"], dependencies=[Depends(_no_store)])
staff_router = APIRouter(tags=["staff"], dependencies=[Depends(_no_store)])


# ------------------------------------------------------------------------------ models


class AddressPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    street: Annotated[str | None, Field(max_length=120)] = None
    postcode: Annotated[str | None, Field(max_length=10)] = None
    city: Annotated[str | None, Field(max_length=80)] = None
    country: Annotated[str | None, Field(max_length=2, description="ISO 3166-1 alpha-2")] = None


class ProfilePatch(BaseModel):
    """JSON merge patch (RFC 7396) of the editable fields: a field left out stays, ``null``
    clears it. Names, birth date and salutation are corrected by the centre."""

    model_config = ConfigDict(extra="forbid")

    address: AddressPatch | None = None
    email: Annotated[str | None, Field(max_length=254)] = None
    phone: Annotated[str | None, Field(max_length=40)] = None

    def changes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "address" in self.model_fields_set:
            if self.address is None:
                out.update(street=None, postcode=None, city=None)
            else:
                for name in self.address.model_fields_set:
                    out[name] = getattr(self.address, name)
        for name in ("email", "phone"):
            if name in self.model_fields_set:
                out[name] = getattr(self, name)
        if "country" in out and out["country"] is None:
            raise ProfileInvalid(
                [FieldError("address.country", "country-invalid", "the country cannot be removed")]
            )
        return out


class BankAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_holder: Annotated[str, Field(min_length=1, max_length=70)]
    iban: Annotated[str, Field(min_length=1, max_length=64, repr=False, description="Spaces ok")]
    bic: Annotated[str | None, Field(max_length=16)] = None
    make_default: bool = False


class BankAccounts(BaseModel):
    accounts: list[BankAccount]


# ------------------------------------------------------------------------------ helpers

_ETAG = re.compile(r'^"(\d{1,12})"$')


def etag(profile: ProfileData) -> str:
    return f'"{profile.version}"'


def if_match_versions(value: str | None) -> frozenset[int] | None:
    """The row versions ``If-Match`` accepts; None for ``*``. Weak tags never match (RFC 9110
    section 13.1.1 uses the strong comparison)."""
    if value is None:
        raise service.PreconditionRequired(
            "send If-Match with the ETag of GET /me, so a concurrent change is not overwritten"
        )
    if value.strip() == "*":
        return None
    found = (_ETAG.match(part.strip()) for part in value.split(","))
    return frozenset(int(m.group(1)) for m in found if m is not None)


def _location(request: Request, path: str) -> str:
    # Behind the gateway the public prefix is /api/profile (x-forwarded-prefix).
    prefix = request.headers.get("x-forwarded-prefix", "")
    return prefix.rstrip("/") + path if prefix.startswith("/") else path


# ------------------------------------------------------------------------------ /me


@me_router.get("", summary="My profile (address, contact data); ETag = row version")
async def get_me(request: Request, response: Response, access: ReadAccess) -> ProfileData:
    parts = _parts(request)
    profile = await service.get_profile(parts.coursedb, access.participant_id)
    await parts.audit.before_read(access, "profile.read")
    response.headers["ETag"] = etag(profile)
    return profile


@me_router.patch(
    "",
    summary="Change address / contact data (If-Match required: 412 when stale, 428 when absent)",
    responses={412: {"description": "stale If-Match"}, 428: {"description": "no If-Match"}},
)
async def patch_me(
    request: Request,
    response: Response,
    body: ProfilePatch,
    access: WriteAccess,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> ProfileData:
    parts = _parts(request)
    versions = if_match_versions(if_match)
    profile, changed = await service.update_profile(
        parts.writer, access.participant_id, body.changes(), if_match=versions
    )
    if changed:
        await parts.audit.after_change(access, "profile.update", {"fields": changed})
    response.headers["ETag"] = etag(profile)
    return profile


@me_router.get("/bank-accounts", summary="My bank accounts (IBAN masked), default first")
async def my_accounts(request: Request, access: ReadAccess) -> BankAccounts:
    parts = _parts(request)
    accounts = await service.list_accounts(parts.coursedb, access.participant_id)
    await parts.audit.before_read(access, "bank_accounts.read")
    return BankAccounts(accounts=accounts)


@me_router.get("/bank-accounts/{account_id}", summary="One of my bank accounts (IBAN masked)")
async def my_account(request: Request, account_id: AccountId, access: ReadAccess) -> BankAccount:
    parts = _parts(request)
    account = await service.get_account(parts.coursedb, access.participant_id, account_id)
    await parts.audit.before_read(access, "bank_accounts.read", {"bank_account_id": account_id})
    return account


@me_router.post(
    "/bank-accounts",
    status_code=201,
    summary="Store a bank account (IBAN validated and encrypted; 200 if already stored)",
    responses={200: {"description": "the same IBAN was already stored"}},
)
async def add_account(
    request: Request, response: Response, body: BankAccountIn, access: WriteAccess
) -> BankAccount:
    parts = _parts(request)
    added = await service.add_bank_account(
        parts.writer,
        parts.cipher,
        access.participant_id,
        account_holder=body.account_holder,
        iban=body.iban,
        bic=body.bic,
        make_default=body.make_default,
    )
    if added.created or body.make_default:
        await parts.audit.after_change(
            access,
            "bank_account.add",
            {"bank_account_id": added.account.id, "created": added.created},
        )
    if not added.created:
        response.status_code = 200
    response.headers["Location"] = _location(request, f"/me/bank-accounts/{added.account.id}")
    return added.account


@me_router.put("/bank-accounts/{account_id}/default", summary="Make this my default account")
async def make_default(request: Request, account_id: AccountId, access: WriteAccess) -> BankAccount:
    parts = _parts(request)
    account = await service.make_default(parts.writer, access.participant_id, account_id)
    await parts.audit.after_change(access, "bank_account.default", {"bank_account_id": account_id})
    return account


@me_router.delete(
    "/bank-accounts/{account_id}",
    status_code=204,
    summary="Remove a bank account (409 while an order or mandate still needs it)",
    responses={409: {"description": "bank-account-in-use or bank-account-retained"}},
)
async def delete_account(request: Request, account_id: AccountId, access: WriteAccess) -> Response:
    parts = _parts(request)
    successor = await service.delete_account(parts.writer, access.participant_id, account_id)
    await parts.audit.after_change(
        access, "bank_account.delete", {"bank_account_id": account_id, "new_default": successor}
    )
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


@me_router.get("/orders", summary="My order history, newest first")
async def my_orders(
    request: Request, access: ReadAccess, limit: Limit = 50, offset: Offset = 0
) -> OrderHistory:
    parts = _parts(request)
    history = await service.order_history(
        parts.coursedb, access.participant_id, limit=limit, offset=offset
    )
    await parts.audit.before_read(access, "orders.read")
    return history


# ------------------------------------------------------------------------------ staff (read-only)


def _staff_access(principal: Principal, participant_id: int) -> Access:
    return Access(participant_id, principal.subject, "staff", "http")


@staff_router.get("/participants/{participant_id}", summary="A participant's profile (audited)")
async def staff_profile(
    request: Request, response: Response, participant_id: ParticipantId, principal: Staff
) -> ProfileData:
    parts = _parts(request)
    await parts.audit.before_read(_staff_access(principal, participant_id), "staff.profile.read")
    profile = await service.get_profile(parts.coursedb, participant_id)
    response.headers["ETag"] = etag(profile)
    return profile


@staff_router.get(
    "/participants/{participant_id}/bank-accounts",
    summary="A participant's bank accounts, IBAN masked (audited)",
)
async def staff_accounts(
    request: Request, participant_id: ParticipantId, principal: Staff
) -> BankAccounts:
    parts = _parts(request)
    access = _staff_access(principal, participant_id)
    await parts.audit.before_read(access, "staff.bank_accounts.read")
    return BankAccounts(accounts=await service.list_accounts(parts.coursedb, participant_id))


@staff_router.get(
    "/participants/{participant_id}/orders", summary="A participant's order history (audited)"
)
async def staff_orders(
    request: Request,
    participant_id: ParticipantId,
    principal: Staff,
    limit: Limit = 50,
    offset: Offset = 0,
) -> OrderHistory:
    parts = _parts(request)
    await parts.audit.before_read(_staff_access(principal, participant_id), "staff.orders.read")
    return await service.order_history(parts.coursedb, participant_id, limit=limit, offset=offset)


@staff_router.get("/audit", summary="Who read or changed whose profile, newest first")
async def audit_entries(
    request: Request,
    _: Staff,
    participant_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 100,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> list[AuditEntry]:
    return await _parts(request).audit.entries(
        participant_id=participant_id, actor=actor, limit=limit, before_id=before_id
    )
