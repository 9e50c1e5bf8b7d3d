"""A realistic course-export mapping: a coursedb course row with sessions → a web course document.

The definition is written in YAML the way an operator would store it; it uses German date and
number formats and shows session times in Europe/Berlin although the source carries UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from mesh_common.mapping import MappingError, compile_mapping, dump_json, load_json, load_yaml

COURSE_EXPORT_YAML = """
name: course-export-web
version: 2
description: coursedb course (joined with sessions, location, lecturer) -> web course document
tables:
  status_label:
    open: Anmeldung möglich
    closed: Anmeldung geschlossen
    planned: in Vorbereitung
filter:
  op: and
  of:
    - {op: eq, field: publish, value: true}
    - {op: not_in, field: status, value: [cancelled, finished]}
    - {op: changed_since, field: updated_at}
fields:
  - {target: id, source: number, required: true}
  - target: title
    source: title
    required: true
    transform: [{op: trim}, {op: truncate, length: 60, ellipsis: "…"}]
  - {target: subtitle, source: subtitle, omit_if_null: true, transform: [{op: trim}]}
  - {target: semester, source: semester.name}
  - target: fee
    source: fee
    transform: [{op: number, places: 2, decimal_sep: ",", thousands_sep: "."}]
  - target: fee_rounded
    source: fee
    transform: [{op: number, places: 0, output: int}]
  - target: status
    source: status
    transform: [{op: lookup, table: status_label, on_missing: default, default: unbekannt}]
  - target: bookable
    cond:
      when:
        op: and
        of:
          - {op: eq, field: web_bookable, value: true}
          - {op: eq, field: status, value: open}
      then: {const: true}
      else: {const: false}
  - target: dates.first_day
    source: sessions.0.session_date
    transform: [{op: date, format: "%d.%m.%Y"}]
  - target: dates.last_day
    source: sessions.-1.session_date
    transform: [{op: date, format: "%d.%m.%Y"}]
  - target: dates.starts
    source: sessions.0.starts_at
    required: true
    transform: [{op: datetime, tz: Europe/Berlin, format: "%d.%m.%Y, %H:%M Uhr"}]
  - target: dates.registration_until
    source: registration_deadline
    transform: [{op: datetime, tz: Europe/Berlin, format: "%d.%m.%Y %H:%M"}]
  - target: place
    concat:
      parts: [location.name, location.street, location.city]
      separator: ", "
  - target: lecturer
    concat:
      parts: [lecturer.academic_title, lecturer.first_name, lecturer.last_name]
  - {target: kind, const: course}
"""


def course_row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "number": "252-10105",
        "title": "  Italienisch für Anfänger A1 - Konversation und Grammatik im Alltag, Teil 1  ",
        "subtitle": None,
        "semester": {"code": "252", "name": "Herbstsemester 2025"},
        "fee": Decimal("1234.5"),
        "status": "open",
        "publish": True,
        "web_bookable": True,
        "registration_deadline": "2025-09-30T21:59:00Z",
        "updated_at": datetime(2025, 9, 1, 8, 0, tzinfo=UTC),
        "location": {"name": "VHS-Haus", "street": "Rotteckring 12", "city": "Freiburg"},
        "lecturer": {"academic_title": None, "first_name": "Giulia", "last_name": "Rossi"},
        "sessions": [
            {"session_date": date(2025, 10, 6), "starts_at": "2025-10-06T16:30:00Z"},
            {"session_date": date(2025, 10, 13), "starts_at": "2025-10-13T16:30:00Z"},
            {"session_date": date(2025, 12, 15), "starts_at": "2025-12-15T17:30:00Z"},
        ],
    }
    row.update(over)
    return row


def test_course_row_to_web_document() -> None:
    mapping = compile_mapping(load_yaml(COURSE_EXPORT_YAML))
    res = mapping.apply(course_row())
    assert res.ok, res.errors
    assert res.record == {
        "id": "252-10105",
        "title": "Italienisch für Anfänger A1 - Konversation und Grammatik im…",
        "semester": "Herbstsemester 2025",
        "fee": "1.234,50",
        "fee_rounded": 1235,  # half-up, decimal arithmetic
        "status": "Anmeldung möglich",
        "bookable": True,
        "dates": {
            "first_day": "06.10.2025",
            "last_day": "15.12.2025",
            # 16:30 UTC is 18:30 in October (CEST) ...
            "starts": "06.10.2025, 18:30 Uhr",
            "registration_until": "30.09.2025 23:59",
        },
        "place": "VHS-Haus, Rotteckring 12, Freiburg",
        "lecturer": "Giulia Rossi",
        "kind": "course",
    }
    assert len(res.record["title"]) == 60


def test_winter_time_closed_course_and_subtitle() -> None:
    mapping = compile_mapping(load_yaml(COURSE_EXPORT_YAML))
    row = course_row(
        status="closed",
        subtitle=" Abendkurs ",
        sessions=[{"session_date": date(2026, 1, 12), "starts_at": "2026-01-12T17:30:00Z"}],
        lecturer={"academic_title": "Dr.", "first_name": "Eva", "last_name": "Klein"},
    )
    doc = mapping.apply(row).record
    assert doc is not None
    # ... and 17:30 UTC is 18:30 in January (CET).
    assert doc["dates"]["starts"] == "12.01.2026, 18:30 Uhr"
    assert doc["dates"]["first_day"] == doc["dates"]["last_day"] == "12.01.2026"
    assert (doc["status"], doc["bookable"], doc["subtitle"]) == (
        "Anmeldung geschlossen",
        False,
        "Abendkurs",
    )
    assert doc["lecturer"] == "Dr. Eva Klein"


def test_sync_batch_with_filter_marker_and_per_record_errors() -> None:
    mapping = compile_mapping(load_json(dump_json(load_yaml(COURSE_EXPORT_YAML))))
    marker = datetime(2025, 8, 1, tzinfo=UTC)
    rows = [
        course_row(),
        course_row(number="252-1", publish=False),
        course_row(number="252-2", status="cancelled"),
        course_row(number="252-3", updated_at=datetime(2025, 7, 1, tzinfo=UTC)),
        course_row(number="252-4", sessions=[], fee="n/a"),
    ]
    results = list(mapping.run(rows, since=marker))
    assert [r.skipped for r in results] == [False, True, True, True, False]
    assert results[0].ok
    assert results[4].errors == [
        MappingError("fee", "'n/a' is not a number"),
        MappingError("fee_rounded", "'n/a' is not a number"),
        MappingError("dates.starts", "required value is missing"),
    ]
