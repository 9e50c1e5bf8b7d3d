"""Record filters: comparisons, membership, changed_since against a run marker, and/or/not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mesh_common.mapping import MappingError, compile_mapping, load_mapping


def mapping(flt: dict[str, Any]) -> Any:
    return compile_mapping(
        load_mapping({"name": "f", "filter": flt, "fields": [{"target": "id", "source": "id"}]})
    )


def test_comparisons() -> None:
    rec = {"n": 5, "s": "published", "tags": ["a", "b"]}
    cases = {
        ("eq", "s", "published"): True,
        ("ne", "s", "published"): False,
        ("lt", "n", 5): False,
        ("le", "n", 5): True,
        ("gt", "n", 4): True,
        ("ge", "n", 6): False,
        ("contains", "tags", "b"): True,
        ("contains", "s", "pub"): True,
        ("exists", "n", None): True,
        ("missing", "n", None): False,
        ("missing", "nope", None): True,
        ("gt", "nope", 1): False,  # absent values never satisfy an ordering
    }
    for (op, field, value), expected in cases.items():
        assert mapping({"op": op, "field": field, "value": value}).matches(rec) is expected, op


def test_in_and_not_in() -> None:
    m = mapping({"op": "in", "field": "status", "value": ["published", "full"]})
    assert m.matches({"status": "full"})
    assert not m.matches({"status": "draft"})
    assert mapping({"op": "not_in", "field": "status", "value": ["draft"]}).matches({"status": "x"})


def test_and_or_not_nesting() -> None:
    m = mapping(
        {
            "op": "and",
            "of": [
                {"op": "eq", "field": "status", "value": "published"},
                {
                    "op": "or",
                    "of": [
                        {"op": "gt", "field": "seats", "value": 0},
                        {"op": "not", "of": {"op": "missing", "field": "waitlist"}},
                    ],
                },
            ],
        }
    )
    assert m.matches({"status": "published", "seats": 2})
    assert m.matches({"status": "published", "seats": 0, "waitlist": True})
    assert not m.matches({"status": "published", "seats": 0})
    assert not m.matches({"status": "draft", "seats": 5})


def test_changed_since_marker() -> None:
    m = mapping({"op": "changed_since", "field": "meta.updated_at"})
    marker = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    newer = {"id": 1, "meta": {"updated_at": "2026-05-01T12:00:01+00:00"}}
    older = {"id": 2, "meta": {"updated_at": marker - timedelta(days=1)}}
    assert m.matches(newer, since=marker)
    assert not m.matches(older, since=marker)
    # The first run has no marker: everything goes.
    assert m.matches(older, since=None)
    # Naive values and markers are UTC; a +02:00 local time equal to the marker is not "changed".
    assert not m.matches({"meta": {"updated_at": "2026-05-01T14:00:00+02:00"}}, since=marker)
    assert m.matches({"meta": {"updated_at": "2026-05-01T12:30:00"}}, since=marker)
    results = list(m.run([newer, older], since=marker))
    assert [(r.skipped, r.record) for r in results] == [(False, {"id": 1}), (True, None)]


def test_filter_on_bad_data_is_a_record_error() -> None:
    m = mapping({"op": "changed_since", "field": "updated_at"})
    res = m.apply({"id": 1, "updated_at": "last tuesday"}, since=datetime(2026, 1, 1))
    assert not res.ok and not res.skipped
    assert res.errors == [
        MappingError("filter", "updated_at: 'last tuesday' is not an ISO date/time")
    ]
    cmp = mapping({"op": "gt", "field": "n", "value": 3})
    assert cmp.apply({"n": "x"}).errors[0].field == "filter"
