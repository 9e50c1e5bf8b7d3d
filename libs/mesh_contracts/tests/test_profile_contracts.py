"""profile contracts: names, reply pairing, credentials never in a repr."""

from __future__ import annotations

import pytest
from mesh_contracts.base import all_contracts
from mesh_contracts.profile import (
    BankAccountList,
    CallerAuth,
    GetOrderHistory,
    GetProfile,
    ListBankAccounts,
    OrderHistory,
    Profile,
)
from pydantic import ValidationError


def test_profile_rpcs_are_registered_with_their_replies() -> None:
    names = {c.__message_type__ for c in all_contracts()}
    assert {"profile.get_profile", "profile.list_bank_accounts", "profile.get_order_history"} <= (
        names
    )
    assert GetProfile.__response_model__ is Profile
    assert ListBankAccounts.__response_model__ is BankAccountList
    assert GetOrderHistory.__response_model__ is OrderHistory


def test_credentials_stay_out_of_reprs_but_travel() -> None:
    request = ListBankAccounts(auth=CallerAuth(token="tok-123", delegation="del-456"))
    assert "tok-123" not in repr(request) and "del-456" not in str(request)
    again = ListBankAccounts.model_validate_json(request.model_dump_json())
    assert again.auth.token == "tok-123" and again.auth.delegation == "del-456"


@pytest.mark.parametrize(
    "bad",
    [{"token": ""}, {"token": "x" * 9000}, {"token": "t", "delegation": ""}, {}],
)
def test_caller_auth_bounds(bad: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        CallerAuth.model_validate(bad)


def test_history_paging_bounds() -> None:
    auth = CallerAuth(token="t")
    assert GetOrderHistory(auth=auth).limit == 50
    with pytest.raises(ValidationError):
        GetOrderHistory(auth=auth, limit=500)
