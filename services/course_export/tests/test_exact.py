"""The exact path (``exact.py``) gives pydantic's documents, or stands aside.

For every mapped document, generated or built from a seeded course database: when pydantic
rejects it, the exact path returns None (so pydantic reports the errors); when the exact path
returns a document, it is pydantic's JSON form of it, value for value and byte for byte. The
batch body assembled from those documents is what pydantic writes for the ``SnapshotBatch``.
"""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from course_export_service import exact
from course_export_service.documents import encode_document
from course_export_service.exact import contract_fingerprint, exact_document
from course_export_service.exporter import _batch_body
from course_export_service.state import Built, content_hash
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mesh_contracts.course_export import CourseDocument, SnapshotBatch
from pydantic import ValidationError

PLACEHOLDER = "0" * 64


def pydantic_form(doc: dict[str, Any]) -> CourseDocument | None:
    try:
        return CourseDocument.model_validate({**doc, "content_hash": PLACEHOLDER})
    except ValidationError:
        return None


def check(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The property: None if pydantic rejects; else None or exactly pydantic's form."""
    got = exact_document(copy.deepcopy(doc))
    model = pydantic_form(doc)
    if model is None:
        assert got is None, f"accepted what pydantic rejects: {doc!r}"
        return None
    if got is None:
        return None
    want = model.model_dump(mode="json")
    got["content_hash"] = want["content_hash"]
    assert got == want
    try:
        pydantic_text = model.model_dump_json().encode()
    except ValueError:  # a lone surrogate: no JSON text either way, so build() reports it
        with pytest.raises(ValueError):  # pydantic's PydanticSerializationError
            encode_document(got)
        with pytest.raises(TypeError):
            content_hash(got)
        return got
    assert encode_document(got) == pydantic_text  # same key order, same JSON text
    assert hash_or_error(got) == hash_or_error(want)
    return got


def hash_or_error(doc: dict[str, Any]) -> str:
    try:
        return content_hash(doc)
    except TypeError as exc:  # an integer beyond 64 bits: build() reports the course
        return f"error: {exc}"


def test_the_exact_path_is_on_for_the_contract_it_was_written_for() -> None:
    """If this fails, CourseDocument (or pydantic) changed: check ``exact.py`` against the new
    contract, extend its checks and the strategies below, then record the new fingerprint."""
    assert contract_fingerprint() == exact.CONTRACT_FINGERPRINT
    assert exact.ENABLED


# ----------------------------------------------------------------------------- strategies

BERLIN = ZoneInfo("Europe/Berlin")
ZONES = [
    dt.UTC,
    dt.timezone(dt.timedelta(hours=2)),
    dt.timezone(dt.timedelta(hours=-9, minutes=-30)),
    BERLIN,
]
texts = st.text(max_size=12) | st.sampled_from(["Yoga", " Yoga", "Yoga ", "\u00a0x", "x\x1c", ""])
aware = st.datetimes(
    min_value=dt.datetime(1, 1, 2),
    max_value=dt.datetime(9999, 12, 30),
    timezones=st.sampled_from(ZONES),
)
datetime_texts = aware.map(dt.datetime.isoformat) | st.sampled_from(
    [
        "2026-03-01T10:00:00+01:00",
        "2026-03-01T10:00:00+00:00",
        "2026-03-01T10:00:00-00:00",
        "2026-03-01T10:00:00Z",
        "2026-03-01T10:00:00.000000+01:00",
        "2026-03-01T10:00:00.500000+00:00",
        "2026-03-01T10:00:00.5+00:00",
        "2026-03-01T10:00:00",
        "2026-03-01T24:00:00+01:00",
        "2026-03-01T10:00:60+01:00",
        "2026-03-01T10:00:00+01:60",
        "2026-03-01T10:00:00+24:00",
        "2026-03-01T10:00:00+23:59",
        "2026-03-01 10:00:00+01:00",
        "2026-02-29T10:00:00+01:00",
        "2024-02-29T10:00:00+01:00",
        "0000-01-01T10:00:00+01:00",
        "1850-03-01T10:00:00+00:53:28",
        "\u0662026-03-01T10:00:00+01:00",
    ]
)
date_texts = st.dates().map(dt.date.isoformat) | st.sampled_from(
    [
        "2026-02-29",
        "2024-02-29",
        "2026-13-01",
        "2026-3-1",
        "20260301",
        "0000-01-01",
        "2026-03-01T00:00",
    ]
)
time_texts = st.times().map(dt.time.isoformat) | st.sampled_from(
    ["10:00", "10:00:00.000000", "10:00:00.5", "24:00:00", "10:00:00Z", "10:00:00+01:00"]
)
amounts = st.decimals(
    min_value=-(10**11), max_value=10**11, places=2, allow_nan=False, allow_infinity=False
).map(lambda d: format(d, "f")) | st.sampled_from(
    [
        "12.50",
        "0.00",
        "-0.00",
        "007.50",
        "12.5",
        "1E+2",
        "12345678901.00",
        "1234567890.00",
        " 1.00",
        "1.005",
    ]
)
money = st.fixed_dictionaries(
    {"amount": amounts},
    optional={"currency": st.sampled_from(["EUR", "USD", "eur", "EURO", "€UR"])},
)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 100.0, 100.5, 1e16, 40.0]
)
session = st.fixed_dictionaries(
    {
        "date": date_texts | st.dates(),
        "start": st.times() | time_texts | st.times(timezones=st.just(dt.UTC)),
        "end": st.times() | time_texts,
        "starts_at": datetime_texts,
        "ends_at": datetime_texts,
    },
    optional={"room": st.none() | texts, "note": st.none() | texts},
)
address = st.fixed_dictionaries(
    {"street": texts, "postcode": texts, "city": texts},
    optional={"country": st.sampled_from(["DE", "AT", "de", "DEU", "D\n"])},
)
location = st.fixed_dictionaries(
    {"name": texts},
    optional={
        "address": st.none() | address,
        "room": st.none() | texts,
        "accessible": st.none() | st.booleans(),
    },
)
discount = st.fixed_dictionaries(
    {"kind": texts, "label": texts},
    optional={"percent_off": st.none() | floats, "amount_off": st.none() | money},
)
STATUSES = ["planned", "open", "closed", "cancelled", "finished", "Open", "bogus"]
MODES = ["direct", "waiting_list", "provisional", "on_request", "telepathy"]
documents = st.fixed_dictionaries(
    {
        "number": st.text(max_size=22),
        "revision": st.integers(),
        "title": texts,
        "fee": money,
        "min_participants": st.integers(),
        "max_participants": st.integers(),
        "status": st.sampled_from(STATUSES),
        "registration_mode": st.sampled_from(MODES),
        "web_bookable": st.booleans(),
        "updated_at": datetime_texts,
    },
    optional={
        **{k: st.none() | texts for k in ("subtitle", "summary", "description", "notes")},
        **{k: st.none() | texts for k in ("category_area", "category", "semester")},
        "teaching_units": st.none() | floats,
        "registration_deadline": st.none() | datetime_texts,
        "location": st.none() | location,
        "lecturers": st.lists(st.fixed_dictionaries({"name": texts}), max_size=3),
        "sessions": st.lists(session, max_size=3),
        "discounts": st.lists(discount, max_size=3),
        "not_in_the_contract": texts,
        "content_hash": texts,
    },
)
# Values of the wrong kind, or of the right kind in a form pydantic rewrites or refuses.
WEIRD: list[Any] = [
    None, "", " ", "x" * 21, "a\ud800b", 0, 1, -1, 2**70, True, False, 1.5, 0.0, float("nan"),
    float("inf"), Decimal("12.50"), Decimal("12.5"), "12.50", "5", "open", "direct", "EUR", "DE",
    dt.date(2026, 3, 1), dt.datetime(2026, 3, 1, 10, 0), dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC),
    dt.time(10, 0), dt.time(10, 0, 0, 5), dt.time(10, 0, tzinfo=dt.UTC), "2026-03-01",
    "2026-03-01T10:00:00+01:00", "10:00:00", [], {}, [{}], ("t",), {"amount": "1.00"},
    {"name": "x"}, [{"name": "x"}], b"bytes", {"extra": 1},
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(documents)
    for _ in range(draw(st.integers(0, 2))):
        slots: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    slots.append((node, k))
                    walk(v)
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    slots.append((node, i))
                    walk(v)

        walk(doc)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.booleans()) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = copy.deepcopy(draw(st.sampled_from(WEIRD)))
    if draw(st.booleans()) and draw(st.booleans()):
        doc["extra"] = {"centre": draw(texts)}
    return doc


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_generated_documents_agree_with_pydantic(doc: dict[str, Any]) -> None:
    got = check(doc)
    event("exact" if got is not None else "long way")


# Documents as the shipped mappings produce them (ISO texts, two-place amounts, trimmed
# names), with arbitrary text and numbers: these should take the exact path.
plain = st.text(min_size=1, max_size=12).filter(lambda t: t == t.strip())
fixed_zones = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=1)), dt.timezone(dt.timedelta(hours=2))]
)
canonical_datetimes = st.datetimes(
    min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 30), timezones=fixed_zones
).map(dt.datetime.isoformat)
canonical_money = st.fixed_dictionaries(
    {
        "amount": st.decimals(min_value=0, max_value=10**9, places=2).map(lambda d: format(d, "f")),
        "currency": st.just("EUR"),
    }
)
canonical = st.fixed_dictionaries(
    {
        "number": st.text(min_size=1, max_size=20),
        "revision": st.integers(-(2**63), 2**63 - 1),
        "title": st.text(max_size=20),
        "fee": canonical_money,
        "min_participants": st.integers(0, 10**6),
        "max_participants": st.integers(0, 10**6),
        "status": st.sampled_from(STATUSES[:5]),
        "registration_mode": st.sampled_from(MODES[:4]),
        "web_bookable": st.booleans(),
        "updated_at": canonical_datetimes,
        "teaching_units": st.none() | st.floats(allow_nan=False, allow_infinity=False),
        "registration_deadline": st.none() | canonical_datetimes,
        "location": st.none()
        | st.fixed_dictionaries(
            {
                "name": st.text(max_size=12),
                "address": st.fixed_dictionaries(
                    {
                        "street": plain,
                        "postcode": st.from_regex(r"\A[0-9]{3,10}\Z"),
                        "city": plain,
                    }
                ),
                "accessible": st.booleans(),
            }
        ),
        "sessions": st.lists(
            st.fixed_dictionaries(
                {
                    "date": st.dates().map(dt.date.isoformat),
                    "start": st.times(),
                    "end": st.times(),
                    "starts_at": canonical_datetimes,
                    "ends_at": canonical_datetimes,
                    "room": st.none() | st.text(max_size=8),
                }
            ),
            max_size=4,
        ),
        "lecturers": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12)}), max_size=2),
        "discounts": st.lists(
            st.fixed_dictionaries(
                {
                    "kind": st.text(max_size=8),
                    "label": st.text(max_size=8),
                    "percent_off": st.none()
                    | st.floats(min_value=0.01, max_value=100, allow_nan=False),
                    "amount_off": st.none() | canonical_money,
                }
            ),
            max_size=2,
        ),
    }
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canonical)
def test_documents_in_the_mappings_form_take_the_exact_path(doc: dict[str, Any]) -> None:
    got = check(doc)
    event("exact" if got is not None else "long way")


def valid_document() -> dict[str, Any]:
    return {
        "number": "261-10001",
        "revision": 3,
        "title": "Spanisch A1",
        "subtitle": None,
        "fee": {"amount": "89.00", "currency": "EUR"},
        "teaching_units": 24.0,
        "min_participants": 6,
        "max_participants": 14,
        "status": "open",
        "registration_mode": "direct",
        "registration_deadline": "2026-03-01T23:59:00+01:00",
        "web_bookable": True,
        "location": {
            "name": "VHS Mitte",
            "address": {"street": "Hauptstr. 1", "postcode": "10115", "city": "Berlin"},
            "room": "2.01",
            "accessible": True,
        },
        "sessions": [
            {
                "date": "2026-03-02",
                "start": dt.time(18, 0),
                "end": dt.time(19, 30),
                "starts_at": "2026-03-02T18:00:00+01:00",
                "ends_at": "2026-03-02T19:30:00+01:00",
                "room": None,
                "note": None,
            }
        ],
        "lecturers": [{"name": "Dr. Ana García"}],
        "discounts": [
            {"kind": "reduced", "label": "ermäßigt", "percent_off": 50.0, "amount_off": None}
        ],
        "updated_at": "2026-02-27T09:15:02.123456+00:00",
    }


def test_a_typical_document_takes_the_exact_path_and_matches() -> None:
    got = check(valid_document())
    assert got is not None
    assert got["updated_at"] == "2026-02-27T09:15:02.123456Z"  # pydantic writes UTC as Z
    assert got["sessions"][0]["start"] == "18:00:00"
    assert got["location"]["address"]["country"] == "DE" and got["extra"] == {}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("number",), "x" * 21),  # longer than the contract allows
        (("status",), "bogus"),
        (("registration_mode",), "telepathy"),
        (("min_participants",), "5"),  # pydantic converts it: the long way does that
        (("web_bookable",), 1),
        (("fee", "amount"), "12345678901.00"),  # more than 12 digits
        (("fee", "amount"), "7.5"),  # pydantic writes "7.5": not the mappings' form
        (("fee", "currency"), "eur"),
        (("location", "address", "postcode"), " 1015"),  # stripped by pydantic
        (("location", "address", "postcode"), "10"),
        (("sessions", 0, "starts_at"), "2026-02-30T18:00:00+01:00"),
        (("sessions", 0, "start"), dt.time(18, 0, tzinfo=dt.UTC)),
        (("discounts", 0, "percent_off"), 150.0),
        (("teaching_units",), float("nan")),
        (("updated_at",), "2026-02-27T09:15:02"),  # naive
    ],
)
def test_values_the_exact_path_cannot_vouch_for_go_the_long_way(
    path: tuple[Any, ...], value: Any
) -> None:
    doc = valid_document()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert exact_document(doc) is None
    check(doc)


def test_memoised_texts_are_checked_once_and_stay_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact, "_SEEN_MAX", 3)
    monkeypatch.setattr(exact, "_seen_datetimes", {})
    monkeypatch.setattr(exact, "_seen_dates", {})
    for day in range(1, 9):
        doc = valid_document()
        doc["sessions"][0]["date"] = f"2026-03-{day:02d}"
        doc["sessions"][0]["starts_at"] = f"2026-03-{day:02d}T18:00:00+00:00"
        got = check(doc)
        assert got is not None and got["sessions"][0]["starts_at"].endswith("18:00:00Z")
        assert len(exact._seen_datetimes) <= 3 and len(exact._seen_dates) <= 3
    bad = valid_document()
    bad["sessions"][0]["starts_at"] = "2026-02-30T18:00:00+01:00"
    assert exact_document(bad) is None and exact_document(bad) is None  # never memoised


def test_disabled_for_another_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact, "ENABLED", False)
    assert exact_document(valid_document()) is None


def test_batch_body_is_what_pydantic_writes() -> None:
    docs = []
    for i, doc in enumerate([valid_document(), {**valid_document(), "number": "261-10002"}]):
        got = exact_document(doc)
        assert got is not None
        got["content_hash"] = content_hash(got)
        docs.append(Built(i, got["number"], got["revision"], got, got["content_hash"]))
    body = _batch_body("snap-1", 7, docs)
    batch = SnapshotBatch(
        snapshot_id="snap-1",
        batch_no=7,
        courses=[CourseDocument.model_validate(b.document) for b in docs],
    )
    assert body == batch.model_dump_json().encode()
    assert SnapshotBatch.model_validate_json(body) == batch
