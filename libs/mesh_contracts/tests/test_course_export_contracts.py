"""course-export contracts: validation rules a website backend relies on."""

from __future__ import annotations

import datetime as dt

import pytest
from mesh_contracts.base import all_contracts
from mesh_contracts.course_export import (
    CourseChanged,
    CourseDocument,
    RunExport,
    SnapshotBatch,
    SnapshotCompleted,
)
from pydantic import ValidationError

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


def doc(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "number": "252-10105",
        "revision": 3,
        "content_hash": "a" * 64,
        "title": "Yoga am Morgen",
        "fee": {"amount": "89.00"},
        "min_participants": 6,
        "max_participants": 14,
        "status": "open",
        "registration_mode": "direct",
        "web_bookable": True,
        "updated_at": NOW.isoformat(),
    }
    base.update(over)
    return base


def test_course_document_round_trips_json() -> None:
    d = CourseDocument.model_validate(
        doc(
            sessions=[
                {
                    "date": "2027-02-01",
                    "start": "18:00",
                    "end": "19:30",
                    "starts_at": "2027-02-01T18:00:00+01:00",
                    "ends_at": "2027-02-01T19:30:00+01:00",
                }
            ]
        )
    )
    again = CourseDocument.model_validate_json(d.model_dump_json())
    assert again == d
    assert str(again.fee.amount) == "89.00" and again.fee.currency == "EUR"


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "deleted"},  # not a course status
        {"registration_mode": "lottery"},
        {"number": ""},
        {"fee": {"amount": "12.345"}},  # money has two decimals
        {"content_hash": "short"},
    ],
)
def test_course_document_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CourseDocument.model_validate(doc(**bad))


def test_snapshot_messages() -> None:
    batch = SnapshotBatch(
        snapshot_id="s1", batch_no=1, courses=[CourseDocument.model_validate(doc())]
    )
    done = SnapshotCompleted(
        snapshot_id="s1", batches=1, courses=1, started_at=NOW, completed_at=NOW
    )
    assert batch.__message_type__ == "course_export.snapshot_batch.v1"
    assert done.courses == len(batch.courses)
    with pytest.raises(ValidationError):
        SnapshotBatch(snapshot_id="s1", batch_no=0, courses=[])


def test_contracts_are_registered() -> None:
    names = {c.__message_type__ for c in all_contracts()}
    assert {
        "course_export.snapshot_batch.v1",
        "course_export.snapshot_completed.v1",
        "course_export.course_changed.v1",
        "course_export.course_withdrawn.v1",
        "course_export.run_export.v1",
    } <= names
    assert RunExport().mode == "full"
    assert CourseChanged.__message_type__.endswith(".v1")
