"""The exact JSON form of a mapped course document, without building pydantic models.

:func:`exact_document` takes what the mapping produced for one course and returns the dict that
``CourseDocument.model_validate(doc).model_dump(mode="json")`` would return (same values, same
key order), or None when it cannot vouch for that. It accepts only a strict subset of what the
contract accepts: exact types (``str``, ``int``, ``bool``, finite ``float``, ``dict``, ``list``),
the canonical text forms the mappings produce (ISO dates, times and datetimes, decimal amounts
with two places) whose pydantic form is known, and values within every constraint of the
contract. Anything else (a wrong type, a value out of range, a form pydantic would rewrite,
such as ``7.5`` for an amount or a naive datetime) returns None, and the caller validates that
document with pydantic as before, which reports the errors. So a bad value from a SQL template
is still caught, and reported by pydantic, never passed on.

It is tied to the contract it was written against: :data:`ENABLED` is False (and every call
returns None, so pydantic does all the work) unless the fingerprint of ``CourseDocument``'s
core schema is the one recorded here. ``tests/test_exact.py`` fails in that case, and holds the
function to pydantic's results (documents, bytes and rejections) on real and generated input.
This module must not do IO.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

from mesh_contracts.course_export import CourseDocument

# sha256 of CourseDocument.__pydantic_core_schema__ (ref ids removed); see contract_fingerprint.
CONTRACT_FINGERPRINT = "8864924a715d406e659c8e62c8a01452a1e972de44ada78df4306ddb45ce59a6"

_D = "[0-9]"
_HMS = f"(?:[01]{_D}|2[0-3]):[0-5]{_D}:[0-5]{_D}"
_FRACTION = rf"(?:\.(?!000000){_D}{{6}})?"  # pydantic drops a zero fraction: not ours to mimic
_DATE_RE = f"{_D}{{4}}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]{_D}|3[01])"
_OFFSET = rf"(?:[+-](?:[01]{_D}|2[0-3]):[0-5]{_D}|Z)"
_datetime_text = re.compile(f"{_DATE_RE}T{_HMS}{_FRACTION}{_OFFSET}").fullmatch
_date_text = re.compile(_DATE_RE).fullmatch
_time_text = re.compile(f"{_HMS}{_FRACTION}").fullmatch
# Decimal(max_digits=12, decimal_places=2) as pydantic writes it back: no exponent, no leading
# zero, two places, not negative (a negative amount goes the long way).
_amount_text = re.compile(rf"(?:0|[1-9]{_D}{{0,9}})\.{_D}{_D}").fullmatch
_currency_text = re.compile("[A-Z]{3}").fullmatch
_country_text = re.compile("[A-Z]{2}").fullmatch
_parse_datetime = datetime.fromisoformat
_parse_date = date.fromisoformat
_parse_time = time.fromisoformat
_isfinite = math.isfinite

_STATUS = frozenset({"planned", "open", "closed", "cancelled", "finished"})
_REGISTRATION = frozenset({"direct", "waiting_list", "provisional", "on_request"})
_MISSING: Any = object()


class _Reject(Exception):
    """The value is not one this module can vouch for: let pydantic decide."""


def contract_fingerprint() -> str:
    """sha256 of the contract's core schema, without the process-specific ref ids."""
    schema = re.sub(r":\d+'", "'", repr(CourseDocument.__pydantic_core_schema__))
    return hashlib.sha256(schema.encode()).hexdigest()


ENABLED = contract_fingerprint() == CONTRACT_FINGERPRINT


def _utf8(v: str) -> bool:
    """Whether ``v`` has no lone surrogate: a string with a length or whitespace constraint is
    checked by pydantic as UTF-8, which refuses them (an unconstrained one is not)."""
    if v.isascii():
        return True
    try:
        v.encode()
    except UnicodeEncodeError:
        return False
    return True


def _str(v: Any) -> str:
    if type(v) is not str:
        raise _Reject
    return v


def _opt_str(v: Any) -> str | None:
    if v is None or type(v) is str:
        return v
    raise _Reject


def _int(v: Any) -> int:
    if type(v) is not int:  # bool, float, Decimal, str: pydantic converts or refuses
        raise _Reject
    return v


# Texts already checked, and their pydantic form: a snapshot has few distinct session times
# (the 100,000 course bench: 740,000 sessions, 25,000 distinct start times). Bounded.
_seen_datetimes: dict[str, str] = {}
_seen_dates: dict[str, str] = {}
_SEEN_MAX = 100_000


def _remember(seen: dict[str, str], v: str, form: str) -> str:
    if len(seen) >= _SEEN_MAX:
        seen.clear()
    seen[v] = form
    return form


def _datetime(v: Any) -> str:
    """An aware ISO datetime text -> pydantic's form of it (UTC written as Z)."""
    if type(v) is not str:
        raise _Reject
    form = _seen_datetimes.get(v)
    if form is not None:
        return form
    if _datetime_text(v) is None:
        raise _Reject
    try:
        _parse_datetime(v)  # the day exists in that month and year
    except ValueError:
        raise _Reject from None
    return _remember(_seen_datetimes, v, v[:-6] + "Z" if v.endswith(("+00:00", "-00:00")) else v)


def _date(v: Any) -> str:
    if type(v) is date:
        return v.isoformat()
    if type(v) is not str:
        raise _Reject
    form = _seen_dates.get(v)
    if form is not None:
        return form
    if _date_text(v) is None:
        raise _Reject
    try:
        _parse_date(v)
    except ValueError:
        raise _Reject from None
    return _remember(_seen_dates, v, v)


def _time(v: Any) -> str:
    if type(v) is time:
        if v.tzinfo is not None:
            raise _Reject
        return v.isoformat()
    if type(v) is not str or _time_text(v) is None:
        raise _Reject
    return v


def _money(v: Any) -> dict[str, Any]:
    if type(v) is not dict:
        raise _Reject
    amount = v.get("amount")
    if type(amount) is not str or _amount_text(amount) is None:
        raise _Reject
    currency = v.get("currency", "EUR")
    if type(currency) is not str or _currency_text(currency) is None:
        raise _Reject
    return {"amount": amount, "currency": currency}


def _trimmed(v: Any, low: int, high: int) -> str:
    """A ``strip_whitespace`` string that needs no stripping (Python strips every character
    pydantic strips, and more), within its length bounds."""
    if type(v) is not str or v != v.strip() or not low <= len(v) <= high or not _utf8(v):
        raise _Reject
    return v


def _address(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if type(v) is not dict:
        raise _Reject
    country = v.get("country", "DE")
    if type(country) is not str or _country_text(country) is None:
        raise _Reject
    return {
        "street": _trimmed(v.get("street"), 1, 200),
        "postcode": _trimmed(v.get("postcode"), 3, 10),
        "city": _trimmed(v.get("city"), 1, 200),
        "country": country,
    }


def _location(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if type(v) is not dict:
        raise _Reject
    accessible = v.get("accessible")
    if accessible is not None and type(accessible) is not bool:
        raise _Reject
    return {
        "name": _str(v.get("name")),
        "address": _address(v.get("address")),
        "room": _opt_str(v.get("room")),
        "accessible": accessible,
    }


def _discount(v: Any) -> dict[str, Any]:
    if type(v) is not dict:
        raise _Reject
    percent = v.get("percent_off")
    if percent is not None and (
        type(percent) is not float or not _isfinite(percent) or not 0 < percent <= 100
    ):
        raise _Reject
    amount = v.get("amount_off")
    return {
        "kind": _str(v.get("kind")),
        "label": _str(v.get("label")),
        "percent_off": percent,
        "amount_off": None if amount is None else _money(amount),
    }


def _lecturer(v: Any) -> dict[str, Any]:
    if type(v) is not dict:
        raise _Reject
    return {"name": _str(v.get("name"))}


def _session(v: Any) -> dict[str, Any]:
    # Inlined (about seven sessions per course): texts checked before come from the memos,
    # everything else goes through the checks above.
    if type(v) is not dict:
        raise _Reject
    get = v.get
    day, start, end = get("date"), get("start"), get("end")
    starts, ends, room, note = get("starts_at"), get("ends_at"), get("room"), get("note")
    if (room is not None and type(room) is not str) or (note is not None and type(note) is not str):
        raise _Reject
    return {
        "date": (type(day) is str and _seen_dates.get(day)) or _date(day),
        "start": start.isoformat()
        if type(start) is time and start.tzinfo is None
        else _time(start),
        "end": end.isoformat() if type(end) is time and end.tzinfo is None else _time(end),
        "starts_at": (type(starts) is str and _seen_datetimes.get(starts)) or _datetime(starts),
        "ends_at": (type(ends) is str and _seen_datetimes.get(ends)) or _datetime(ends),
        "room": room,
        "note": note,
    }


def _list(v: Any, item: Any) -> list[Any]:
    if v is _MISSING:
        return []
    if type(v) is not list:
        raise _Reject
    return [item(x) for x in v]


def exact_document(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """``CourseDocument.model_validate(doc).model_dump(mode="json")`` without pydantic, with
    ``content_hash`` left empty (it is computed from this result); None when this module
    cannot vouch for the result (then validate with pydantic)."""
    if not ENABLED or type(doc) is not dict or "extra" in doc:
        return None
    get = doc.get
    try:
        number = get("number")
        if type(number) is not str or not 1 <= len(number) <= 20 or not _utf8(number):
            raise _Reject
        units = get("teaching_units")
        if units is not None and (type(units) is not float or not _isfinite(units)):
            raise _Reject
        status = get("status")
        if type(status) is not str or status not in _STATUS:
            raise _Reject
        mode = get("registration_mode")
        if type(mode) is not str or mode not in _REGISTRATION:
            raise _Reject
        deadline = get("registration_deadline")
        bookable = get("web_bookable")
        if type(bookable) is not bool:
            raise _Reject
        return {
            "number": number,
            "revision": _int(get("revision")),
            "content_hash": "",
            "title": _str(get("title")),
            "subtitle": _opt_str(get("subtitle")),
            "summary": _opt_str(get("summary")),
            "description": _opt_str(get("description")),
            "notes": _opt_str(get("notes")),
            "category_area": _opt_str(get("category_area")),
            "category": _opt_str(get("category")),
            "semester": _opt_str(get("semester")),
            "fee": _money(get("fee")),
            "discounts": _list(get("discounts", _MISSING), _discount),
            "teaching_units": units,
            "min_participants": _int(get("min_participants")),
            "max_participants": _int(get("max_participants")),
            "status": status,
            "registration_mode": mode,
            "registration_deadline": None if deadline is None else _datetime(deadline),
            "web_bookable": bookable,
            "location": _location(get("location")),
            "lecturers": _list(get("lecturers", _MISSING), _lecturer),
            "sessions": _list(get("sessions", _MISSING), _session),
            "updated_at": _datetime(get("updated_at")),
            "extra": {},
        }
    except _Reject:
        return None
