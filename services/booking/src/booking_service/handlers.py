"""Bus handlers of booking: the RPCs the website backend calls.

The bus is authenticated at the broker; the caller acts as the website backend (role
``service``). Stored profiles and bank accounts need the participant's own token
(``PlaceOrder.participant_token``), see :mod:`booking_service.access`.
"""

from __future__ import annotations

from mesh_common.app import ServiceRuntime
from mesh_common.bus import HandlerRegistry, MessageContext
from mesh_contracts.booking import GetOrder, OrderResult, PlaceOrder

from booking_service import access
from booking_service.context import booking_of


def build(holder: dict[str, ServiceRuntime]) -> HandlerRegistry:
    handlers = HandlerRegistry()

    @handlers.rpc()
    async def place_order(msg: PlaceOrder, ctx: MessageContext) -> OrderResult:
        """Book an order LIVE (or accept it as pending while the coursedb is unreachable).

        Idempotency key: ``order.external_order_id`` (same order → same result, one booking;
        other content → ``order-conflict``). Failure policy: RPC is never retried by the bus;
        domain errors (conflict, forbidden) are error replies, an invalid request is an
        ``invalid-request`` reply, and the caller may safely resend after a timeout.
        """
        booking = booking_of(holder["runtime"])
        acting = await access.verify_participant_token(booking.verifier, msg.participant_token)
        access.authorize(msg.order, acting=acting, staff=False)
        placed = await booking.orders.place(msg.order, source="rpc", owner_participant_id=acting)
        return placed.result

    @handlers.rpc()
    async def get_order(msg: GetOrder, ctx: MessageContext) -> OrderResult:
        """The current result of an order. Idempotency: a pure read. Failure policy:
        ``order-not-found`` for an unknown id."""
        booking = booking_of(holder["runtime"])
        result, _ = await booking.orders.get(msg.external_order_id)
        return result

    return handlers
