"""HTTP API of booking (thin: auth, then the service layer).

- ``POST /orders`` (service, participant, staff): place an order; 200 with the result when it
  was booked or rejected, 202 when it waits in the backlog.
- ``GET /orders/{id}`` (service, staff; a participant for their own orders).
- ``GET /orders/{id}/documents/{registration-card|sepa-mandate}.pdf`` (same rule).
- ``GET /orders`` (staff): orders by status, e.g. ``?status=pending`` or ``failed``.
- ``GET /backlog`` (staff): how many orders wait / failed, and the oldest waiting one.
- ``POST /orders/{id}/retry`` (staff): put a failed order back into the backlog.
- ``POST /orders/{id}/notify`` (staff): queue an accepted order's mails again (409 while its
  mails are still being prepared).
- ``/mail/outbox`` (staff) and ``/mail/templates`` (staff reads and previews with the PDFs,
  admin edits): from ``mesh_common.mail``.
- ``POST /registrations/{id}/confirm`` / ``decline`` (staff): decide a provisional reservation.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from mesh_common.auth import Principal, require
from mesh_common.errors import NotFound
from mesh_contracts.booking import Order, OrderResult, OrderStatus, ReservationDecided
from pydantic import BaseModel

from booking_service import access, documents, reservations
from booking_service.context import Booking, from_request

router = APIRouter(tags=["booking"])
Caller = Annotated[Principal, Depends(require("service", "participant", "staff"))]
Staff = Annotated[Principal, Depends(require("staff"))]
BookingDep = Annotated[Booking, Depends(from_request)]


class OrderSummary(BaseModel):
    id: int
    external_order_id: str
    status: str
    detail: str | None
    source: str
    received_at: float
    processed_at: float | None
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    coursedb_order_id: int | None
    # Set while the order's mails wait to be prepared and queued (sent after the answer).
    notify_at: float | None = None


class BacklogOut(BaseModel):
    counts: dict[str, int]
    oldest_pending_age_seconds: float | None
    oldest_pending: str | None
    processed_by_worker: int


@router.post(
    "/orders",
    summary="Place an order (booked LIVE; 202 pending while the course database is down)",
    responses={202: {"model": OrderResult, "description": "accepted, pending"}},
)
async def place_order(
    order: Order,
    principal: Caller,
    booking: BookingDep,
    response: Response,
    x_participant_token: Annotated[str | None, Header()] = None,
) -> OrderResult:
    staff = principal.has_role("staff")
    acting = access.participant_of(principal)
    if acting is None and x_participant_token:
        acting = await access.verify_participant_token(booking.verifier, x_participant_token)
    access.authorize(order, acting=acting, staff=staff)
    placed = await booking.orders.place(order, source="rest", owner_participant_id=acting)
    if placed.result.status == OrderStatus.PENDING:
        response.status_code = 202
    return placed.result


async def _visible(booking: Booking, principal: Principal, external_id: str) -> OrderResult:
    result, row = await booking.orders.get(external_id)
    if principal.has_role("staff") or principal.has_role("service"):
        return result
    me = access.participant_of(principal)
    if me is not None and (row.owner_participant_id == me or me in result.participant_ids.values()):
        return result
    # Not the caller's order: answer as if it did not exist (no probing of order ids).
    raise NotFound(f"no order {external_id!r}", code="order-not-found")


@router.get("/orders/{external_order_id}", summary="The result of an order")
async def get_order(external_order_id: str, principal: Caller, booking: BookingDep) -> OrderResult:
    return await _visible(booking, principal, external_order_id)


@router.get(
    "/orders/{external_order_id}/documents/{kind}.pdf",
    summary="Registration card or SEPA mandate request of a booked order (PDF)",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
async def order_document(
    external_order_id: str,
    kind: Literal["registration-card", "sepa-mandate"],
    principal: Caller,
    booking: BookingDep,
) -> Response:
    result = await _visible(booking, principal, external_order_id)
    docs = await booking.documents(result)
    if docs is None:
        raise NotFound("the order was not booked, so it has no documents", code="no-documents")
    if kind == "sepa-mandate":
        if docs.mandate is None:
            raise NotFound("the order is not paid by SEPA direct debit", code="no-sepa-mandate")
        pdf = documents.sepa_mandate(docs)
    else:
        pdf = documents.registration_card(docs)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{kind}-{external_order_id}.pdf"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/orders", summary="Orders by status (staff), oldest first")
async def list_orders(
    _: Staff,
    booking: BookingDep,
    status: Annotated[Literal["pending", "accepted", "rejected", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after_id: Annotated[int | None, Query(ge=0)] = None,
) -> list[OrderSummary]:
    rows = await booking.orders.list(status=status, limit=limit, after_id=after_id)
    return [OrderSummary.model_validate(row._mapping) for row in rows]


@router.get("/backlog", summary="Backlog state (staff)")
async def backlog(_: Staff, booking: BookingDep) -> BacklogOut:
    counts = await booking.orders.counts()
    pending = await booking.orders.list(status="pending", limit=1, after_id=None)
    head: Any = pending[0] if pending else None
    return BacklogOut(
        counts=counts,
        oldest_pending_age_seconds=(time.time() - head.received_at) if head else None,
        oldest_pending=head.external_order_id if head else None,
        processed_by_worker=booking.worker.processed,
    )


@router.post("/orders/{external_order_id}/retry", summary="Retry a failed order (staff)")
async def retry_order(external_order_id: str, _: Staff, booking: BookingDep) -> OrderResult:
    return await booking.orders.retry(external_order_id)


class NotifiedOut(BaseModel):
    mail_ids: list[str]


@router.post(
    "/orders/{external_order_id}/notify",
    summary="Queue the confirmation and protocol mails of an accepted order again (staff)",
)
async def notify_again(external_order_id: str, _: Staff, booking: BookingDep) -> NotifiedOut:
    return NotifiedOut(mail_ids=await booking.orders.notify_again(external_order_id))


@router.post(
    "/registrations/{registration_id}/{action}",
    summary="Confirm or decline a provisional reservation (staff)",
)
async def decide_reservation(
    registration_id: int,
    action: Literal["confirm", "decline"],
    _: Staff,
    booking: BookingDep,
) -> ReservationDecided:
    return await reservations.decide(
        booking.coursedb,
        booking.runtime.db,
        booking.runtime.outbox,
        registration_id=registration_id,
        decision="confirmed" if action == "confirm" else "declined",
    )
