"""The school-year change's plan (schuljahr.make_plan) as a pure function: which group of the
old period is continued by which course of the new one, and which ends how."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from schulconnex_sync_service.schuljahr import ChangeOptions, PeriodCourse, make_plan


def course(key: int, number: str, title: str, *lecturers: int, people: int = 0) -> PeriodCourse:
    return PeriodCourse(
        key=f"course:{key}",
        number=number,
        title=title,
        lecturers=frozenset(f"lecturer:{x}" for x in lecturers),
        participants=frozenset(f"participant:{x}" for x in range(people)),
        bis="2025-07-01",
    )


OLD = [
    course(1, "251-100", "Spanisch A1", 7, people=10),
    course(2, "251-200", "Yoga", 7),
    course(3, "251-300", "Aquarell", 8),
    course(4, "251-400", "Ohne Gruppe", 8),  # never synchronised: not in the plan
]
NEW = [
    course(11, "252-100", "Spanisch A2", 7, people=8),  # same number, same lecturer
    course(12, "252-201", "Yoga", 9),  # same title, other lecturer
    course(13, "252-999", "Neu", 8),
]
GROUPS = {"course:1": "g1", "course:2": "g2", "course:3": "g3"}


def options(**kw: object) -> ChangeOptions:
    return ChangeOptions.model_validate({"from_semester": "251", "to_semester": "252", **kw})


def test_same_lecturer_default() -> None:
    plan = make_plan(options(), OLD, NEW, GROUPS)
    assert [(c["old"], c["new"]) for c in plan.continued] == [("course:1", "course:11")]
    assert plan.continued[0]["participants_staying"] == 8
    ended = {e["old"]: e for e in plan.ended}
    assert set(ended) == {"course:2", "course:3"}
    assert "other lecturers" in ended["course:2"]["why"]
    assert (ended["course:3"]["action"], ended["course:3"]["delete_after_days"]) == ("expire", 30)
    assert {n["new"] for n in plan.new} == {"course:12", "course:13"}


def test_always_never_choices_and_periods() -> None:
    always = make_plan(options(continue_courses="always"), OLD, NEW, GROUPS)
    assert {(c["old"], c["new"]) for c in always.continued} == {
        ("course:1", "course:11"),
        ("course:2", "course:12"),  # by title
    }
    never = make_plan(options(continue_courses="never"), OLD, NEW, GROUPS)
    assert never.continued == [] and len(never.ended) == 3
    chosen = make_plan(
        options(
            continuations={"251-300": "252-999", "251-100": None},
            ended_groups="delete",
            delete_after={"251-200": 5},
        ),
        OLD,
        NEW,
        GROUPS,
    )
    assert [(c["old"], c["new"], c["why"]) for c in chosen.continued] == [
        ("course:3", "course:13", "chosen")
    ]
    assert {e["old"]: e["action"] for e in chosen.ended} == {
        "course:1": "delete",
        "course:2": "delete",
    }
    # A new course with a group of its own already cannot take over another one.
    taken = make_plan(options(), OLD, NEW, GROUPS, new_linked=["course:11"])
    assert taken.continued == [] and "course:11" not in {n["new"] for n in taken.new}
    # The digest changes with what a person confirms, not with counts.
    assert make_plan(options(), OLD, NEW, GROUPS).digest() == plan_digest()
    assert always.digest() != plan_digest()


def plan_digest() -> str:
    return make_plan(options(), OLD, NEW, GROUPS).digest()


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError):
        options(to_semester="251")
    with pytest.raises(ValidationError):
        options(delete_after={"251-100": -1})
    with pytest.raises(ValidationError):
        options(continue_courses="sometimes")
