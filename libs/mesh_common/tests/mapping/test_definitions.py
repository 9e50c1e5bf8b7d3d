"""Validation with located messages, and JSON/YAML import/export round trips."""

from __future__ import annotations

from typing import Any

import pytest
from mesh_common.errors import Invalid
from mesh_common.mapping import (
    MappingValidationError,
    dump_json,
    dump_yaml,
    fingerprint,
    load_json,
    load_mapping,
    load_yaml,
    to_dict,
)

GOOD: dict[str, Any] = {
    "name": "example",
    "version": 3,
    "tables": {"lvl": {"1": "A1", "2": "A2"}},
    "filter": {
        "op": "and",
        "of": [
            {"op": "in", "field": "status", "value": ["published"]},
            {"op": "changed_since", "field": "updated_at"},
        ],
    },
    "fields": [
        {"target": "id", "source": "id", "required": True},
        {"target": "kind", "const": None},
        {"target": "level", "source": "lvl", "transform": [{"op": "lookup", "table": "lvl"}]},
        {"target": "day", "source": "d", "transform": [{"op": "date", "format": "%d.%m.%Y"}]},
        {"target": "label", "concat": {"parts": ["a", {"const": "b"}], "separator": "-"}},
        {
            "target": "state",
            "cond": {
                "when": {"op": "eq", "field": "x", "value": 1},
                "then": {"const": "on"},
                "else": {"source": "y"},
            },
        },
    ],
}


def errors_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(MappingValidationError) as exc:
        load_mapping(data)
    return exc.value.errors


def with_fields(*fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "x", "fields": list(fields), **extra}


def test_unknown_date_directive_is_located() -> None:
    data = with_fields(
        {"target": "a", "source": "a"},
        {"target": "b", "source": "b"},
        {"target": "c", "source": "c"},
        {"target": "d", "source": "d", "transform": [{"op": "datetime", "format": "%d.%Q"}]},
    )
    assert errors_of(data) == [
        ("fields[3].transform[0].format", "unknown date format directive '%Q'")
    ]


def test_many_errors_reported_at_once_with_locations() -> None:
    data = with_fields(
        {"target": "a"},
        {"target": "b", "source": "x", "const": 1},
        {"target": "c", "source": "bad..path"},
        {"target": "d", "source": "d", "transform": [{"op": "eval", "code": "1+1"}]},
        {"target": "e", "source": "e", "transform": [{"op": "datetime", "tz": "Mars/Olympus"}]},
        {"target": "f", "source": "f", "transform": [{"op": "truncate", "length": 0}]},
        {"target": "g", "source": "g", "surprise": True},
        filter={"op": "or", "of": [{"op": "in", "field": "s", "value": "x"}]},
    )
    errs = dict(errors_of(data))
    assert "give exactly one of 'source', 'const', 'concat' or 'cond'" in errs["fields[0]"]
    assert "(got source, const)" in errs["fields[1]"]
    assert "invalid field path 'bad..path'" in errs["fields[2].source"]
    assert "'eval'" in errs["fields[3].transform[0]"]
    assert errs["fields[4].transform[0].tz"] == "unknown time zone 'Mars/Olympus'"
    assert "fields[5].transform[0].length" in errs
    assert errs["fields[6].surprise"] == "Extra inputs are not permitted"
    assert errs["filter.of[0]"] == "'in' needs a list as value"


def test_cross_field_errors() -> None:
    dup = with_fields({"target": "a", "source": "a"}, {"target": "a", "source": "b"})
    assert errors_of(dup) == [("fields[1].target", "duplicate target 'a' (also fields[0])")]
    nested = with_fields({"target": "a", "source": "a"}, {"target": "a.b", "source": "b"})
    assert errors_of(nested) == [("fields[1].target", "target 'a.b' is nested inside 'a'")]
    table = with_fields(
        {"target": "a", "source": "a", "transform": [{"op": "lookup", "table": "nope"}]}
    )
    assert errors_of(table) == [("fields[0].transform[0].table", "unknown table 'nope'")]
    assert errors_of({"name": "x", "fields": []})[0][0] == "fields"


def test_validation_error_is_a_domain_error_with_details() -> None:
    with pytest.raises(MappingValidationError) as exc:
        load_mapping(with_fields({"target": "a"}))
    err = exc.value
    assert isinstance(err, Invalid) and err.status == 422 and err.code == "invalid-mapping"
    assert err.extra["errors"][0]["loc"] == "fields[0]"
    assert str(err).startswith("fields[0]: give exactly one")


def test_json_round_trip() -> None:
    defn = load_mapping(GOOD)
    text = dump_json(defn)
    assert load_json(text) == defn
    assert to_dict(load_json(text)) == GOOD


def test_yaml_round_trip_keeps_dates_as_strings() -> None:
    defn = load_mapping(GOOD)
    text = dump_yaml(defn)
    assert "else:" in text and "const: null" in text
    assert load_yaml(text) == defn
    from_yaml = load_yaml("name: y\nfields:\n  - target: since\n    const: 2026-01-01\n")
    assert to_dict(from_yaml)["fields"][0]["const"] == "2026-01-01"
    assert load_json(dump_json(from_yaml)) == from_yaml


def test_bad_json_and_yaml_text() -> None:
    with pytest.raises(MappingValidationError, match="invalid JSON"):
        load_json("{nope")
    with pytest.raises(MappingValidationError, match="invalid YAML"):
        load_yaml("a: [1, 2")
    # YAML tags that would build Python objects are refused by the safe loader.
    with pytest.raises(MappingValidationError, match="invalid YAML"):
        load_yaml("!!python/object/apply:os.system ['true']")


def test_fingerprint_tracks_content_not_labels() -> None:
    base = load_mapping(GOOD)
    relabelled = load_mapping({**GOOD, "name": "other", "version": 9, "description": "x"})
    changed = load_mapping({**GOOD, "fields": GOOD["fields"][:-1]})
    assert fingerprint(base) == fingerprint(relabelled) == fingerprint(load_yaml(dump_yaml(base)))
    assert fingerprint(changed) != fingerprint(base)


def test_package_docstring_example_is_valid() -> None:
    import textwrap

    import mesh_common.mapping as mapping_pkg

    assert mapping_pkg.__doc__ is not None
    example = mapping_pkg.__doc__.split("::\n\n", 1)[1].split("\n\nUse it", 1)[0]
    defn = load_yaml(textwrap.dedent(example))
    assert defn.name == "course-export-web" and len(defn.fields) == 7
