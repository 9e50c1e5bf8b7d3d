"""booking contracts: what the website backend may send, and what it gets back."""

from __future__ import annotations

from typing import Any

import pytest
from mesh_contracts.base import all_contracts, naming_errors
from mesh_contracts.booking import (
    GetOrder,
    Order,
    OrderConfirmed,
    OrderRejected,
    OrderResult,
    PlaceOrder,
    Reason,
    ReservationDecided,
)
from pydantic import ValidationError

IBAN = "DE89370400440532013000"


def order(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "external_order_id": "W2026-000123",
        "participants": [
            {"key": "p1", "person": {"first_name": "Erika", "last_name": "Mustermann"}},
            {"key": "p2", "participant_id": 42},
        ],
        "items": [
            {"participant": "p1", "course_number": "262-40401"},
            {"participant": "p2", "course_number": "262-40401", "mode": "waiting_list"},
        ],
        "payment": {
            "method": "sepa",
            "new_account": {"account_holder": "Erika M", "iban": IBAN, "mandate_consent": True},
        },
    }
    base.update(over)
    return base


def test_booking_contracts_are_registered_and_named_right() -> None:
    mine = {c for c in all_contracts() if c.__module__ == "mesh_contracts.booking"}
    assert mine == {PlaceOrder, GetOrder, OrderConfirmed, OrderRejected, ReservationDecided}
    assert all(naming_errors(c) == [] for c in mine)
    assert PlaceOrder.__response_model__ is OrderResult


def test_order_round_trips_and_hides_the_iban_from_repr() -> None:
    o = Order.model_validate(order())
    assert Order.model_validate_json(o.model_dump_json()) == o
    assert IBAN in o.model_dump_json()  # it must travel ...
    assert IBAN not in repr(o) and IBAN not in repr(PlaceOrder(order=o))  # ... but not into logs
    token = PlaceOrder(order=o, participant_token="secret-token-value")
    assert "secret-token-value" not in repr(token)
    assert o.payer_key == "p1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"items": []}, "at least 1"),
        ({"participants": []}, "at least 1"),
        ({"external_order_id": "bad id!"}, "pattern"),
        ({"payer": "nobody"}, "not a participant"),
        ({"payment": {"method": "sepa"}}, "exactly one of bank_account_id and new_account"),
        ({"payment": {"method": "cash"}}, "does not match any of the expected tags"),
    ],
)
def test_malformed_orders_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Order.model_validate(order(**change))


def test_item_and_person_rules() -> None:
    o = order()
    o["items"].append({"participant": "p1", "course_number": "262-40401"})
    with pytest.raises(ValidationError, match="twice for the same course"):
        Order.model_validate(o)
    o = order()
    o["items"][0]["participant"] = "p9"
    with pytest.raises(ValidationError, match="unknown participants: p9"):
        Order.model_validate(o)
    o = order()
    o["participants"][0]["participant_id"] = 7
    with pytest.raises(ValidationError, match="exactly one of participant_id and person"):
        Order.model_validate(o)
    o = order()
    o["participants"][0]["person"]["email"] = "not an address"
    with pytest.raises(ValidationError, match="email"):
        Order.model_validate(o)
    o = order()
    o["participants"][0]["person"]["address"] = {
        "street": "x" * 121,
        "postcode": "79098",
        "city": "Freiburg",
    }
    with pytest.raises(ValidationError, match="street at most 120"):
        Order.model_validate(o)
    o = order()
    o["payment"]["new_account"]["bic"] = "cobadeff"
    assert Order.model_validate(o).payment.new_account.bic == "COBADEFF"  # type: ignore[union-attr]
    o["payment"]["new_account"]["bic"] = "NOTABIC!"
    with pytest.raises(ValidationError, match="BIC"):
        Order.model_validate(o)


def test_results_carry_reason_codes() -> None:
    r = OrderResult.model_validate(
        {
            "external_order_id": "W1",
            "status": "rejected",
            "lines": [
                {
                    "participant": "p1",
                    "course_number": "262-40401",
                    "outcome": "rejected",
                    "reason": "full",
                }
            ],
        }
    )
    assert r.lines[0].reason is Reason.FULL
    with pytest.raises(ValidationError):
        OrderResult.model_validate({"external_order_id": "W1", "status": "maybe"})
    assert {reason.value for reason in Reason} >= {
        "course_not_found",
        "not_web_bookable",
        "cancelled",
        "finished",
        "registration_closed",
        "full",
        "mode_not_allowed",
        "duplicate_registration",
        "invalid_iban",
    }
