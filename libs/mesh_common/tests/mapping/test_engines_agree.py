"""The generated-code engine against the interpreter (the reference): identical results and errors.

Hypothesis generates definitions over the whole language -- every transform with its options,
conditions nested with and/or/not, concat, cond, constants, lookups (inline and named), date and
number formats, required/omit_if_null, nested targets, filters -- and records full of awkward
values (None, "", whitespace, NaN, signalling NaN, infinities, naive and aware datetimes, lists
where strings are expected ...). For every record, ``apply``, ``map`` and ``matches`` of both
engines must return the same thing, compared by ``repr`` (so key order, types and Decimal
exponents count too), or raise the same exception with the same message. A second, exhaustive
test runs every single construct over a fixed corpus of values, so no construct depends on luck.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mesh_common.mapping import MappingValidationError, compile_mapping, load_mapping
from mesh_common.mapping.interpreter import interpret_mapping

# ----------------------------------------------------------------------------- values

TEXTS = [
    "",
    " ",
    "  Kurs A1 ",
    "open",
    "closed",
    "x",
    "Straße",
    "2026-03-01",
    "2026-03-01T10:30:00",
    "2026-03-29T01:59:00Z",
    "2026-10-25T02:30:00+02:00",
    "2026-03-01 10:30",
    "05/11/2026",
    "20261105",
    "01.03.2026 10:30",
    "12.5",
    "1234567.891",
    "-0",
    "1e3",
    "1,5",
    "NaN",
    "Infinity",
    "abc",
    "1",
    "True",
    "9" * 60,
]
INTERESTING: list[Any] = [
    None,
    0,
    1,
    -7,
    2.5,
    1.005,
    -0.0,
    float("nan"),
    float("inf"),
    True,
    False,
    Decimal("12.345"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("-Infinity"),
    Decimal("1E+30"),
    date(2026, 3, 1),
    datetime(2026, 3, 29, 0, 59),
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    time(10, 30),
]
# Hand-picked values more often than random ones: the edge cases are where engines differ.
scalars = st.one_of(
    st.sampled_from(TEXTS),
    st.sampled_from(INTERESTING),
    st.sampled_from(INTERESTING),
    st.sampled_from(INTERESTING),
    st.text(alphabet=string.printable + "äöüß€", max_size=8),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)),
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from(
            [None, UTC, ZoneInfo("Europe/Berlin"), timezone(timedelta(hours=-5, minutes=-30))]
        ),
    ),
)
values = st.one_of(
    scalars,
    scalars,
    st.lists(scalars, max_size=3),
    st.tuples(scalars),
    st.dictionaries(st.sampled_from(["a", "b", "name", "0"]), scalars, max_size=2),
    st.fixed_dictionaries({"a": st.lists(scalars, max_size=2)}),
)

KEYS = ["a", "b", "Straße", "lst", "obj"]
PATHS = [*KEYS, "nope", "obj.a", "obj.b", "obj.lst.0", "lst.0", "lst.-1", "lst.1.a", "a.0", "a.b.c"]
records = st.fixed_dictionaries(
    {"a": values, "b": values}, optional={"Straße": values, "lst": values, "obj": values}
)
markers = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)

# ----------------------------------------------------------------------------- definitions

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-100, max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(TEXTS),
    st.text(max_size=5),
)
json_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), json_scalars, max_size=2),
)
paths = st.sampled_from(PATHS)


def compare_leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(
            lambda op, f, v: {"op": op, "field": f, "value": v},
            st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "contains"]),
            paths,
            json_values,
        ),
        st.builds(
            lambda op, f, v: {"op": op, "field": f, "value": v},
            st.sampled_from(["in", "not_in"]),
            paths,
            st.lists(json_values, max_size=4),
        ),
        st.builds(
            lambda op, f: {"op": op, "field": f}, st.sampled_from(["exists", "missing"]), paths
        ),
        st.builds(lambda f: {"op": "changed_since", "field": f}, paths),
    )


conditions = st.recursive(
    compare_leaf(),
    lambda inner: st.one_of(
        st.builds(lambda of: {"op": "and", "of": of}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda of: {"op": "or", "of": of}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda of: {"op": "not", "of": of}, inner),
    ),
    max_leaves=5,
)

DATE_PARSES = ["iso", "%d/%m/%Y", "%Y%m%d"]
DATE_FORMATS = ["iso", "%d.%m.%Y", "%Y-%m-%d", "%A, %d. %B %Y", "Tag %d (%m) %%Y", "%y", "%H:%M"]
DATETIME_PARSES = ["iso", "%d.%m.%Y %H:%M", "%Y-%m-%d %H:%M"]
DATETIME_FORMATS = [
    "iso",
    "%d.%m.%Y, %H:%M Uhr",
    "%Y-%m-%dT%H:%M:%S",
    "%H%%",
    "%Z %z",
    "%d.%m.%Y %I %p",
    "%S",
]
ZONES = [None, "UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
tables = st.dictionaries(
    st.sampled_from([*TEXTS[:8], "1", "-7", "2.5", "True", "None", "nan", "2026-03-01"]),
    json_scalars,
)

transforms = st.one_of(
    st.sampled_from([{"op": "trim"}, {"op": "upper"}, {"op": "lower"}]),
    st.builds(
        lambda n, e: {"op": "truncate", "length": n, "ellipsis": e[: n - 1]},
        st.integers(1, 8),
        st.sampled_from(["", "…", "...", "'\""]),
    ),
    st.builds(lambda v: {"op": "default", "value": v}, json_values),
    st.builds(
        lambda t, m, d: {"op": "lookup", "table": t, "on_missing": m, "default": d},
        st.one_of(tables, st.just("named")),
        st.sampled_from(["default", "keep", "error"]),
        json_scalars,
    ),
    st.builds(
        lambda p, f: {"op": "date", "parse": p, "format": f},
        st.sampled_from(DATE_PARSES),
        st.sampled_from(DATE_FORMATS),
    ),
    st.builds(
        lambda p, f, tz, assume_tz: {
            "op": "datetime",
            "parse": p,
            "format": f,
            "tz": tz,
            "assume_tz": assume_tz,
        },
        st.sampled_from(DATETIME_PARSES),
        st.sampled_from(DATETIME_FORMATS),
        st.sampled_from(ZONES),
        st.sampled_from(["UTC", "Europe/Berlin"]),
    ),
    st.builds(
        lambda places, rounding, output, dsep, tsep: {
            "op": "number",
            "places": places,
            "rounding": rounding,
            "output": output,
            "decimal_sep": dsep,
            "thousands_sep": tsep,
        },
        st.one_of(st.none(), st.integers(0, 4)),
        st.sampled_from(["half_up", "half_even", "down", "up"]),
        st.sampled_from(["str", "float", "int", "decimal"]),
        st.sampled_from([".", ","]),
        st.sampled_from(["", ".", ",", " "]),
    ),
)

refs = st.one_of(
    st.builds(lambda p: {"source": p}, paths), st.builds(lambda c: {"const": c}, json_values)
)
value_specs = st.one_of(
    st.builds(lambda p: {"source": p}, paths),
    st.builds(lambda c: {"const": c}, json_values),
    st.builds(
        lambda parts, sep, skip: {"concat": {"parts": parts, "separator": sep, "skip_empty": skip}},
        st.lists(st.one_of(paths, refs), min_size=1, max_size=4),
        st.sampled_from([" ", ", ", "", "T", "'"]),
        st.booleans(),
    ),
    st.builds(
        lambda when, then, other: {"cond": {"when": when, "then": then, **other}},
        conditions,
        refs,
        st.one_of(st.just({}), st.builds(lambda r: {"else": r}, refs)),
    ),
)
TARGETS = ["t0", "t1", "t2", "grp.a", "grp.b", "deep.x.y", "Straße", "E-Mail"]


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    targets = draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=4, unique=True))
    fields = []
    for target in targets:
        field = {"target": target, **draw(value_specs)}
        field["transform"] = draw(st.lists(transforms, max_size=3))
        field["required"] = draw(st.booleans())
        field["omit_if_null"] = draw(st.booleans())
        fields.append(field)
    defn: dict[str, Any] = {"name": "prop", "tables": {"named": draw(tables)}, "fields": fields}
    if draw(st.booleans()):
        defn["filter"] = draw(conditions)
    return defn


# ----------------------------------------------------------------------------- comparison


def outcome(call: Callable[[], Any]) -> tuple[str, ...]:
    try:
        return ("returned", repr(call()))
    except Exception as exc:  # the same exception, with the same message, counts as the same
        return ("raised", type(exc).__name__, str(exc))


def assert_same(data: dict[str, Any], recs: list[dict[str, Any]], since: datetime | None) -> None:
    try:
        defn = load_mapping(data)
    except MappingValidationError:
        assume(False)  # e.g. a truncate ellipsis as long as the length: not a definition
        raise
    compiled, reference = compile_mapping(defn), interpret_mapping(defn)
    for rec in recs:
        for method in ("apply", "map", "matches"):
            got = outcome(lambda m=method: getattr(compiled, m)(rec, since))  # type: ignore[misc]
            want = outcome(lambda m=method: getattr(reference, m)(rec, since))  # type: ignore[misc]
            assert got == want, f"{method} differs for {rec!r}\n{compiled.source}"


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(definitions(), st.lists(records, min_size=1, max_size=4), markers)
def test_generated_code_matches_the_interpreter(
    data: dict[str, Any], recs: list[dict[str, Any]], since: datetime | None
) -> None:
    assert_same(data, recs, since)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(transforms, max_size=2),
    st.booleans(),
    st.booleans(),
    st.lists(values, min_size=1, max_size=5),
    st.sampled_from(["a", "a.0", "a.name", "grp.a"]),
)
def test_one_field_transform_chains_over_many_values(
    chain: list[dict[str, Any]], required: bool, omit: bool, vals: list[Any], target: str
) -> None:
    """Narrow but dense: one field, so nearly every drawn value meets every drawn transform."""
    data = {
        "name": "chain",
        "tables": {"named": {"1": "eins", "open": "offen", "2026-03-01": "d", "nan": "NaN"}},
        "fields": [
            {
                "target": target,
                "source": "a",
                "transform": chain,
                "required": required,
                "omit_if_null": omit,
            }
        ],
    }
    assert_same(data, [{"a": v} for v in vals], None)


# ----------------------------------------------------------------------------- every construct

CORPUS: list[Any] = [
    *TEXTS,
    None,
    0,
    1,
    -7,
    10**13,
    0.0,
    -0.0,
    1.005,
    2.5,
    float("nan"),
    float("inf"),
    True,
    False,
    Decimal("12.345"),
    Decimal("-0.5"),
    Decimal("1E+30"),
    Decimal("9" * 40),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    date(2026, 3, 1),
    date(1, 1, 1),
    datetime(2026, 3, 29, 0, 59),
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")),
    time(10, 30),
    ["a", "b"],
    [1],
    ("x",),
    [],
    {"a": 1},
    {"name": "n"},
]
CONSTRUCTS: list[dict[str, Any]] = [
    {"source": "v"},
    {"source": "v", "required": True},
    {"source": "v", "omit_if_null": True},
    {"source": "v.0"},
    {"source": "v.name"},
    {"const": {"k": [1, 2]}},
    {"const": None, "required": True},
    {"concat": {"parts": ["v", {"const": "-"}, "v"], "separator": " "}},
    {"concat": {"parts": ["v", "w"], "separator": "|", "skip_empty": False}},
    *(
        {"cond": {"when": {"op": op, "field": "v", "value": value}, "then": {"const": 1}}}
        for op in ("eq", "ne", "lt", "le", "gt", "ge", "contains")
        for value in (1, "m", 2.5, None, [1])
    ),
    *(
        {
            "cond": {
                "when": {"op": op, "field": "v", "value": ["open", 1, None, [1]]},
                "then": {"source": "v"},
                "else": {"const": "no"},
            }
        }
        for op in ("in", "not_in")
    ),
    *(
        {"cond": {"when": {"op": op, "field": "v"}, "then": {"const": True}}}
        for op in ("exists", "missing", "changed_since")
    ),
    {
        "cond": {
            "when": {
                "op": "or",
                "of": [
                    {"op": "not", "of": {"op": "exists", "field": "v"}},
                    {
                        "op": "and",
                        "of": [
                            {"op": "gt", "field": "v", "value": 0},
                            {"op": "lt", "field": "v", "value": 100},
                        ],
                    },
                ],
            },
            "then": {"const": "range"},
            "else": {"source": "v"},
        }
    },
    *(
        {"source": "v", "transform": [t]}
        for t in [
            {"op": "trim"},
            {"op": "upper"},
            {"op": "lower"},
            {"op": "truncate", "length": 3},
            {"op": "truncate", "length": 4, "ellipsis": "…"},
            {"op": "default", "value": "n/a"},
            {"op": "default", "value": [1]},
            {"op": "lookup", "table": {"open": "offen", "1": "eins", "True": "wahr"}},
            {"op": "lookup", "table": {"open": "offen"}, "on_missing": "keep"},
            {"op": "lookup", "table": "named", "on_missing": "default", "default": "?"},
            *({"op": "date", "parse": p, "format": f} for p in DATE_PARSES for f in DATE_FORMATS),
            *(
                {"op": "datetime", "parse": p, "format": f, "tz": tz, "assume_tz": "Europe/Berlin"}
                for p in DATETIME_PARSES
                for f in DATETIME_FORMATS
                for tz in ZONES
            ),
            *(
                {
                    "op": "number",
                    "places": places,
                    "output": output,
                    "rounding": rounding,
                    "decimal_sep": ",",
                    "thousands_sep": ".",
                }
                for places in (None, 0, 2)
                for output in ("str", "float", "int", "decimal")
                for rounding in ("half_up", "half_even", "down", "up")
            ),
            {"op": "number", "places": 2},
            {"op": "number", "places": 12},
        ]
    ),
]


@pytest.mark.parametrize("field", CONSTRUCTS, ids=lambda f: str(f)[:60])
def test_every_construct_over_a_corpus_of_values(field: dict[str, Any]) -> None:
    for required in (False, True):
        data = {
            "name": "construct",
            "tables": {"named": {"open": "offen"}},
            "fields": [
                {"target": "out.value", "required": required, **field},
                {"target": "plain", "source": "w"},
            ],
            "filter": {"op": "not", "of": {"op": "eq", "field": "skip", "value": True}},
        }
        if "required" in field:
            data["fields"][0]["required"] = field["required"]
        recs = [{"v": value, "w": other} for value in CORPUS for other in (None, "w", 3)]
        recs += [{"skip": True, "v": 1}, {}]
        assert_same(data, recs, datetime(2026, 3, 1, 12, 0))
        assert_same(data, recs[:12], None)
