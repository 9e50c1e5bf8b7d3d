"""Contract naming rules hold for every message model, and the checker itself catches violations."""

from __future__ import annotations

from typing import ClassVar

import pytest
from mesh_contracts.base import Command, Event, RpcRequest, all_contracts, naming_errors


def test_every_contract_follows_naming_rules() -> None:
    errors = [e for cls in all_contracts() for e in naming_errors(cls)]
    assert not errors, "\n".join(errors)


def test_message_types_are_unique() -> None:
    names = [c.__message_type__ for c in all_contracts()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("base", "name", "ok"),
    [
        (Event, "booking.booking_confirmed.v1", True),
        (Event, "booking.booking_confirmed", False),
        (Command, "booking.book_order.v2", True),
        (RpcRequest, "booking.get_order", True),
        (Event, "profile.booking_confirmed.v1", False),  # not its owner
        (Event, "Booking.Confirmed.v1", False),
    ],
)
def test_naming_checker(base: type, name: str, ok: bool) -> None:
    cls = type(
        "Probe",
        (base,),
        {
            "__message_type__": name,
            "__module__": "mesh_contracts.booking",
            "__annotations__": {"__message_type__": ClassVar[str]},
        },
    )
    assert (naming_errors(cls) == []) is ok
