"""Value types shared by several contracts (addresses, money, people)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class Value(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Address(Value):
    street: NonEmpty
    postcode: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=10)]
    city: NonEmpty
    country: CountryCode = "DE"


class Money(Value):
    """An amount in a currency; decimal, never float."""

    amount: Annotated[Decimal, Field(max_digits=12, decimal_places=2)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "EUR"
