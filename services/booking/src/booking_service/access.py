"""Who may book with stored personal data (profiles, bank accounts).

An order with only new person data may come from any allowed caller (the website backend,
role ``service``; a participant; staff). An order that books a stored profile
(``participant_id``) or debits a stored bank account acts for that person, so it needs the
person's consent in the form of their own token:

- a caller with role ``staff`` (or ``admin``) may book for anyone (the front desk);
- a ``participant`` token (the REST caller's, or ``participant_token`` passed through by the
  website backend) authorises exactly its own ``participant_id``: every stored participant of
  the order must be that person, and a stored bank account must be paid by that person.

This module must not touch a database; it only decides and raises ``Forbidden``.
"""

from __future__ import annotations

from mesh_common.auth import Principal, TokenVerifier
from mesh_common.errors import Forbidden, Unauthorized
from mesh_contracts.booking import Order, SepaPayment

from booking_service.booker import stored_participant_ids, uses_stored_data


def participant_of(principal: Principal | None) -> int | None:
    """The coursedb participant id a principal acts as (role participant), else None."""
    if principal is None or not principal.has_role("participant"):
        return None
    raw = principal.participant_id
    if raw is None or not raw.isdigit():
        return None
    return int(raw)


async def verify_participant_token(verifier: TokenVerifier, token: str | None) -> int | None:
    """The participant id of a passed-through participant token (None if no token was given)."""
    if not token:
        return None
    try:
        principal = await verifier.verify(token)
    except Unauthorized as exc:
        raise Forbidden(
            f"the participant token is not valid: {exc.detail}", code="participant-token-invalid"
        ) from None
    acting = participant_of(principal)
    if acting is None:
        raise Forbidden(
            "the participant token names no participant", code="participant-token-invalid"
        )
    return acting


def authorize(order: Order, *, acting: int | None, staff: bool) -> None:
    """Raise ``Forbidden`` unless the caller may use the stored data the order refers to."""
    if staff or not uses_stored_data(order):
        return
    if acting is None:
        raise Forbidden(
            "booking a stored profile or bank account needs the participant's own token",
            code="participant-token-required",
        )
    others = stored_participant_ids(order) - {acting}
    if others:
        raise Forbidden(
            "a participant token authorises only its own profile", code="participant-mismatch"
        )
    payment = order.payment
    if isinstance(payment, SepaPayment) and payment.bank_account_id is not None:
        payer = next(p for p in order.participants if p.key == order.payer_key)
        if payer.participant_id != acting:
            raise Forbidden(
                "a stored bank account can only be used by its owner as payer",
                code="participant-mismatch",
            )
