"""Address and contact validation (no IO): maintained data decides, values are never echoed."""

from __future__ import annotations

from typing import Any

import pytest
from profile_service.validation import ProfileInvalid, normalise_changes

HOME: dict[str, Any] = {"country": "DE", "postcode": "79098", "street": "Rotteckring 12"}


@pytest.mark.parametrize(
    ("country", "postcode", "stored"),
    [
        ("DE", "79098", "79098"),
        ("at", "1010", "1010"),
        ("NL", "1234 ab", "1234 AB"),
        ("GB", "ec1y 8sy", "EC1Y 8SY"),
        ("PL", "00-950", "00-950"),
        ("IE", "A65 F4E2", "A65 F4E2"),
    ],
)
def test_postcodes_per_country(country: str, postcode: str, stored: str) -> None:
    out = normalise_changes(HOME, {"country": country, "postcode": postcode})
    assert out == {"country": country.upper(), "postcode": stored}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"postcode": "7909"}, "address.postcode"),  # DE has five digits
        ({"postcode": "790981"}, "address.postcode"),
        ({"country": "AT"}, "address.postcode"),  # the stored 79098 is no Austrian postcode
        ({"country": "ZZ"}, "address.country"),
        ({"country": "DEU"}, "address.country"),
        ({"email": "alice@"}, "email"),
        ({"email": "alice example.org"}, "email"),
        ({"phone": "0761"}, "phone"),
        ({"phone": "call me"}, "phone"),
    ],
)
def test_invalid_values(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ProfileInvalid) as info:
        normalise_changes(HOME, changes)
    assert [e.field for e in info.value.errors] == [field]
    assert info.value.status == 422
    for value in changes.values():
        if len(value) <= 3:
            continue  # a country code may be named ("not a postcode of AT")
        assert value not in info.value.detail
        assert value not in str(info.value.extra)


def test_contact_normalisation() -> None:
    out = normalise_changes(
        HOME,
        {"email": "  Anna.Berg@Posteo.DE ", "phone": "0761 / 201-7000", "street": "  a   b "},
    )
    assert out == {"email": "Anna.Berg@posteo.de", "phone": "+49 761 2017000", "street": "a b"}
    # A foreign number keeps its own country; an empty string clears.
    out = normalise_changes(HOME, {"phone": "+33 1 42 68 53 00", "email": "  "})
    assert out == {"phone": "+33 1 42 68 53 00", "email": None}


def test_unrelated_legacy_values_do_not_block_an_edit() -> None:
    legacy = {**HOME, "postcode": "D-79098"}  # as typed years ago at the desk
    assert normalise_changes(legacy, {"phone": "0761 2017000"}) == {"phone": "+49 761 2017000"}
    with pytest.raises(ProfileInvalid):
        normalise_changes(legacy, {"country": "DE"})
