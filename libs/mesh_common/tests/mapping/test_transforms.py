"""Each value source and transform of the mapping language, applied through compile_mapping."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from mesh_common.mapping import MappingError, compile_mapping, load_mapping


def run(field: dict[str, Any], record: dict[str, Any], **defn: Any) -> Any:
    """Map ``record`` with a one-field definition; return the value or the errors."""
    m = compile_mapping(load_mapping({"name": "t", "fields": [{"target": "out", **field}], **defn}))
    res = m.apply(record)
    return res.record["out"] if res.ok and res.record is not None else res.errors


def test_rename_and_dotted_paths_into_dicts_and_lists() -> None:
    rec = {"a": {"b": [{"c": 1}, {"c": 2}]}, "name": "x"}
    assert run({"source": "name"}, rec) == "x"
    assert run({"source": "a.b.0.c"}, rec) == 1
    assert run({"source": "a.b.-1.c"}, rec) == 2
    assert run({"source": "a.b.5.c"}, rec) is None
    assert run({"source": "a.x.y"}, rec) is None
    assert run({"source": "name.sub"}, rec) is None


def test_nested_targets_and_field_order() -> None:
    m = compile_mapping(
        load_mapping(
            {
                "name": "t",
                "fields": [
                    {"target": "id", "source": "id"},
                    {"target": "loc.city", "source": "city"},
                    {"target": "loc.zip", "source": "zip"},
                ],
            }
        )
    )
    res = m.apply({"id": 7, "city": "Bonn", "zip": "53111"})
    assert res.record == {"id": 7, "loc": {"city": "Bonn", "zip": "53111"}}


def test_constants_including_null_and_structures() -> None:
    assert run({"const": "course"}, {}) == "course"
    assert run({"const": None}, {}) is None
    assert run({"const": {"k": [1, 2]}}, {}) == {"k": [1, 2]}


def test_string_transforms() -> None:
    rec = {"s": "  Hello World  "}
    assert run({"source": "s", "transform": [{"op": "trim"}]}, rec) == "Hello World"
    assert run({"source": "s", "transform": [{"op": "trim"}, {"op": "upper"}]}, rec) == (
        "HELLO WORLD"
    )
    assert run({"source": "s", "transform": [{"op": "lower"}, {"op": "trim"}]}, rec) == (
        "hello world"
    )
    tr = [{"op": "trim"}, {"op": "truncate", "length": 8, "ellipsis": "…"}]
    assert run({"source": "s", "transform": tr}, rec) == "Hello W…"
    assert run({"source": "s", "transform": tr}, {"s": "short"}) == "short"
    # Non-strings pass through string transforms untouched.
    assert run({"source": "n", "transform": [{"op": "upper"}]}, {"n": 3}) == 3


def test_default_transform() -> None:
    t = [{"op": "default", "value": "n/a"}]
    assert run({"source": "x", "transform": t}, {}) == "n/a"
    assert run({"source": "x", "transform": t}, {"x": ""}) == "n/a"
    assert run({"source": "x", "transform": t}, {"x": 0}) == 0


def test_lookup_inline_named_default_keep_error() -> None:
    table = {"1": "Anfänger", "2": "Fortgeschritten"}
    f = {"source": "lvl", "transform": [{"op": "lookup", "table": table}]}
    assert run(f, {"lvl": 1}) == "Anfänger"
    assert run(f, {"lvl": "2"}) == "Fortgeschritten"
    assert run(f, {"lvl": 9}) == [MappingError("out", "no lookup entry for 9")]
    dflt = {"op": "lookup", "table": table, "on_missing": "default", "default": "?"}
    assert run({"source": "lvl", "transform": [dflt]}, {"lvl": 9}) == "?"
    keep = {"op": "lookup", "table": table, "on_missing": "keep"}
    assert run({"source": "lvl", "transform": [keep]}, {"lvl": 9}) == 9
    named = {"op": "lookup", "table": "levels"}
    assert run({"source": "lvl", "transform": [named]}, {"lvl": 2}, tables={"levels": table}) == (
        "Fortgeschritten"
    )


def test_date_parse_and_format() -> None:
    de = {"op": "date", "format": "%d.%m.%Y"}
    assert run({"source": "d", "transform": [de]}, {"d": "2026-03-01"}) == "01.03.2026"
    assert run({"source": "d", "transform": [de]}, {"d": date(2026, 3, 1)}) == "01.03.2026"
    assert run({"source": "d", "transform": [de]}, {"d": "2026-03-01T23:00:00"}) == "01.03.2026"
    custom = {"op": "date", "parse": "%d/%m/%Y", "format": "iso"}
    assert run({"source": "d", "transform": [custom]}, {"d": "05/11/2026"}) == "2026-11-05"
    errs = run({"source": "d", "transform": [custom]}, {"d": "2026-11-05"})
    assert errs[0].field == "out" and "does not match date format" in errs[0].message
    assert run({"source": "d", "transform": [de]}, {}) is None


def test_datetime_timezone_conversion_europe_berlin() -> None:
    t = {"op": "datetime", "tz": "Europe/Berlin", "format": "%d.%m.%Y %H:%M"}
    # Winter (CET, +1) and summer (CEST, +2); naive inputs are UTC by default.
    assert run({"source": "t", "transform": [t]}, {"t": "2026-01-15T08:30:00"}) == (
        "15.01.2026 09:30"
    )
    assert run({"source": "t", "transform": [t]}, {"t": "2026-07-15T08:30:00Z"}) == (
        "15.07.2026 10:30"
    )
    aware = datetime(2026, 3, 29, 0, 59, tzinfo=UTC)  # one minute before DST starts
    assert run({"source": "t", "transform": [t]}, {"t": aware}) == "29.03.2026 01:59"
    assumed = {**t, "assume_tz": "Europe/Berlin", "tz": "UTC", "format": "iso"}
    assert run({"source": "t", "transform": [assumed]}, {"t": "2026-07-15T10:30"}) == (
        "2026-07-15T08:30:00+00:00"
    )
    errs = run({"source": "t", "transform": [t]}, {"t": 12})
    assert errs and "expected a datetime" in errs[0].message


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"places": 2}, 1.005, "1.01"),  # decimal half-up, not float's 1.00
        ({"places": 2, "rounding": "half_even"}, "2.345", "2.34"),
        ({"places": 0, "output": "int"}, "2.5", 3),
        ({"places": 1, "output": "float"}, 3.14159, 3.1),
        ({"places": 2, "output": "decimal"}, 7, Decimal("7.00")),
        ({"places": 2, "decimal_sep": ",", "thousands_sep": "."}, 1234567.891, "1.234.567,89"),
        ({}, "12.50", "12.50"),
    ],
)
def test_number_formatting(spec: dict[str, Any], value: Any, expected: Any) -> None:
    assert run({"source": "n", "transform": [{"op": "number", **spec}]}, {"n": value}) == expected


def test_number_rejects_non_numbers() -> None:
    errs = run({"source": "n", "transform": [{"op": "number"}]}, {"n": "abc"})
    assert errs == [MappingError("out", "'abc' is not a number")]


def test_concat_skips_empties_by_default() -> None:
    c = {"parts": ["first", "middle", "last"], "separator": " "}
    assert run({"concat": c}, {"first": "Ada", "middle": "", "last": "Lovelace"}) == "Ada Lovelace"
    keep = {**c, "skip_empty": False, "separator": "|"}
    assert run({"concat": keep}, {"first": "Ada", "last": "L"}) == "Ada||L"
    with_const = {"parts": [{"const": "Kurs"}, "nr"], "separator": " #"}
    assert run({"concat": with_const}, {"nr": 12}) == "Kurs #12"


def test_conditional_then_else() -> None:
    cond = {
        "when": {"op": "ge", "field": "seats_free", "value": 1},
        "then": {"const": "open"},
        "else": {"source": "waitlist_label"},
    }
    assert run({"cond": cond}, {"seats_free": 3}) == "open"
    assert run({"cond": cond}, {"seats_free": 0, "waitlist_label": "Warteliste"}) == "Warteliste"
    no_else = {"when": cond["when"], "then": {"const": "open"}}
    assert run({"cond": no_else}, {"seats_free": 0}) is None


def test_required_and_omit_if_null() -> None:
    assert run({"source": "x", "required": True}, {"x": ""}) == [
        MappingError("out", "required value is missing")
    ]
    m = compile_mapping(
        load_mapping(
            {
                "name": "t",
                "fields": [
                    {"target": "a", "source": "a", "omit_if_null": True},
                    {"target": "b", "source": "b"},
                ],
            }
        )
    )
    assert m.apply({}).record == {"b": None}


def test_errors_are_collected_per_record_not_raised() -> None:
    m = compile_mapping(
        load_mapping(
            {
                "name": "t",
                "fields": [
                    {"target": "id", "source": "id", "required": True},
                    {"target": "when", "source": "t", "transform": [{"op": "datetime"}]},
                    {"target": "price", "source": "p", "transform": [{"op": "number"}]},
                    {"target": "ok", "source": "ok"},
                ],
            }
        )
    )
    res = m.apply({"t": "yesterday", "p": "x", "ok": 1})
    assert not res.ok and res.record is None
    assert [e.field for e in res.errors] == ["id", "when", "price"]
    results = list(m.run([{"id": 1, "t": "2026-01-01T00:00:00", "p": 1}, {"id": 2, "t": "no"}]))
    assert [r.ok for r in results] == [True, False]


@pytest.mark.parametrize(
    "fmt",
    ["%d.%m.%Y", "%d.%m.%Y, %H:%M Uhr", "{x} %d%%", "%A, %d. %B %Y", "%Y-%m-%dT%H:%M:%S", "%y"],
)
def test_compiled_date_formats_match_strftime(fmt: str) -> None:
    # Common numeric patterns are compiled to a faster template; the text must equal strftime's.
    value = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    t = {"op": "datetime", "format": fmt}
    assert run({"source": "t", "transform": [t]}, {"t": value}) == value.strftime(fmt)
    d = {"op": "date", "format": fmt}
    assert run({"source": "t", "transform": [d]}, {"t": value.date()}) == value.date().strftime(fmt)


def test_error_messages_quote_values_briefly() -> None:
    long_text = "x" * 500
    errs = run({"source": "n", "transform": [{"op": "number"}]}, {"n": long_text})
    assert len(errs[0].message) < 80 and errs[0].message.endswith("is not a number")
    huge = run({"source": "n", "transform": [{"op": "number", "places": 2}]}, {"n": "1e40"})
    assert huge == [MappingError("out", "'1e40' is too large to round to 2 places")]
