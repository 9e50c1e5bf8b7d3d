"""The school-year change (``ablauf-schuljahrwechsel.md``) as an explicit, dry-runnable mode of
the sync: ``POST /schuljahrwechsel`` (task ``schulconnex-sync`` with ``mode=schuljahrwechsel``).

The practice guide asks no special API of a source system: a change is a regular sync of the new
learning period (here: the new semester of the course database) plus a decision, per Schulconnex
group of the old period, whether it is **continued** (same UUID, attributes updated) or **ended**
(deleted at once, or its ``laufzeit`` ended now and deleted after a while). This module plans
that decision, purely (no IO); :mod:`schulconnex_sync_service.sync` carries it out.

Requirement of the guide → here:

=====================================================  ========================================
"Personen ... weiterhin bei der Organisation ...        persons are matched and updated as in
nicht gelöscht ... gleiche UUID"                        every sync (steps 3-6); the change never
                                                        deletes a person
"Personen, die ... verlassen": Löschung                 a person deleted locally is deleted in
                                                        Schulconnex by step 9 (personenkontext
                                                        first, Löschzeitpunkt when in use)
``personenkontext.jahrgangsstufe`` aktualisieren        not held by the course database: never
                                                        sent, kept as Schulconnex has it (PUT of
                                                        the full record)
Gruppen, die fortbestehen: nicht löschen, nicht neu     ``continued``: the old course's group is
anlegen, UUID bleibt                                    re-linked to its successor course, then
                                                        updated by step 9 (same id)
``bezeichnung`` / ``laufzeit`` aktualisieren            the successor's title and sessions
                                                        (managed fields); ``jahrgangsstufen``
                                                        travel back unchanged
Gruppenzugehörigkeiten aktualisieren                    memberships of continued groups: kept for
                                                        persons who stay (natural key), created
                                                        for new ones, deleted for those who left
Beendete Gruppen: sofort löschen, oder ``laufzeit``     ``ended_groups``: ``delete`` (DELETE now)
beenden und nach einer Frist (z. B. 30 Tage) löschen    or ``expire`` (``laufzeit.bis`` = the old
                                                        course's end now, DELETE after
                                                        ``delete_after_days``, by a later run)
"kein automatischer Löschvorgang ... alle Gruppen       every linked group of the old period is
explizit aktualisieren oder löschen"                    in the plan, continued or ended
Optionen: Kurse fortführen immer / bei gleicher          ``continue_courses``: ``always``,
Lehrkraft; beendete Gruppen erst nach 30 Tagen löschen  ``same-lecturer`` (default), ``never``;
                                                        ``delete_after_days`` (default 30)
Dialog zwischen Abgleich und Schreiben: geplante         a real run needs ``plan``: the execution
Zuordnung bestätigen oder einzeln ändern; Löschfrist     id of a dry run whose plan (this
einzeln änderbar                                        module's hash) is still the same;
                                                        ``continuations`` and ``delete_after``
                                                        change pairs and periods per course
Fortführung und Neuanlage vor dem Löschen                order: persons, continued groups, new
                                                        groups and all memberships, then ended
                                                        groups, and only if nothing of the new
                                                        period failed
=====================================================  ========================================

Which course continues which: an explicit pair from ``continuations`` (old course number → new
course number, or ``null`` for "ended"), else the new-period course with the same number after
the semester prefix (``251-40401`` → ``252-40401``), else the one with the same (normalised)
title if exactly one has it; then ``continue_courses`` decides (``same-lecturer``: the same set
of lecturers). A new course continues at most one group. The overlap of participants is shown
for each pair (the guide's "Gruppenzusammensetzung"), for the person reviewing the plan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from schulconnex_sync_service.matching import normalise

ContinueCourses = Literal["always", "same-lecturer", "never"]
EndedGroups = Literal["expire", "delete"]
#: Course statuses of the new period selected by default (planned courses are new data too).
CHANGE_STATUSES = ("planned", "open", "closed")


class ChangeOptions(BaseModel):
    """The parameters of a school-year change (the request body, minus connection/dry run)."""

    from_semester: str = Field(min_length=1, max_length=8, description="the ending period")
    to_semester: str = Field(min_length=1, max_length=8, description="the new period")
    continue_courses: ContinueCourses = "same-lecturer"
    continuations: dict[str, str | None] = Field(
        default_factory=dict,
        description="old course number -> new course number (continue into it) or null (end)",
    )
    ended_groups: EndedGroups = "expire"
    delete_after_days: float = Field(default=30, ge=0, le=3650)
    delete_after: dict[str, float] = Field(
        default_factory=dict, description="old course number -> days until deletion (0: now)"
    )
    statuses: list[str] = Field(default_factory=lambda: list(CHANGE_STATUSES))
    participants: bool = True
    lecturers: bool = True

    @model_validator(mode="after")
    def _periods(self) -> ChangeOptions:
        if self.from_semester == self.to_semester:
            raise ValueError("from_semester and to_semester must differ")
        if any(d < 0 for d in self.delete_after.values()):
            raise ValueError("delete_after: days must not be negative")
        return self


@dataclass(frozen=True)
class PeriodCourse:
    """A course of one period, as far as the plan needs it."""

    key: str
    number: str
    title: str
    lecturers: frozenset[str] = frozenset()
    participants: frozenset[str] = frozenset()
    von: str | None = None
    bis: str | None = None

    @property
    def suffix(self) -> str:
        """The course number without the semester prefix: ``252-40401`` → ``40401``."""
        head, sep, tail = self.number.partition("-")
        return tail if sep else head


@dataclass
class Plan:
    from_semester: str
    to_semester: str
    continued: list[dict[str, Any]] = field(default_factory=list)
    ended: list[dict[str, Any]] = field(default_factory=list)
    new: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def digest(self) -> str:
        """What a person confirms: the pairs and the endings (not counts or timestamps)."""
        core = {
            "from": self.from_semester,
            "to": self.to_semester,
            "continued": sorted((c["old"], c["gruppe"], c["new"]) for c in self.continued),
            "ended": sorted(
                (e["old"], e["gruppe"], e["action"], e["delete_after_days"]) for e in self.ended
            ),
        }
        raw = json.dumps(core, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {
            "from_semester": self.from_semester,
            "to_semester": self.to_semester,
            "continued": self.continued,
            "ended": self.ended,
            "new": self.new,
            "notes": self.notes,
            "digest": self.digest(),
        }


def make_plan(
    options: ChangeOptions,
    old: Iterable[PeriodCourse],
    new: Iterable[PeriodCourse],
    groups: Mapping[str, str],
    *,
    new_linked: Iterable[str] = (),
) -> Plan:
    """Decide, for every Schulconnex group of an old-period course (``groups``: old course key
    → group id, only groups that are ours), whether it is continued by a new-period course or
    ended. ``new_linked``: new courses that have a group of their own already (they cannot
    take over another one)."""
    plan = Plan(options.from_semester, options.to_semester)
    new_list = sorted(new, key=lambda c: c.number)
    by_number = {c.number: c for c in new_list}
    by_suffix: dict[str, list[PeriodCourse]] = {}
    by_title: dict[str, list[PeriodCourse]] = {}
    for c in new_list:
        by_suffix.setdefault(c.suffix, []).append(c)
        by_title.setdefault(normalise(c.title), []).append(c)
    taken: set[str] = set(new_linked)
    for course in sorted(old, key=lambda c: c.number):
        gid = groups.get(course.key)
        if gid is None:
            continue  # no group of ours in Schulconnex: nothing to continue or end
        successor: PeriodCourse | None = None
        why = ""
        if course.number in options.continuations:
            wanted = options.continuations[course.number]
            if wanted is None:
                why = "ended by choice"
            elif wanted not in by_number:
                why = f"{wanted} is not a course of {options.to_semester} in the selection"
                plan.notes.append(f"{course.number}: {why}")
            else:
                successor, why = by_number[wanted], "chosen"
        elif options.continue_courses == "never":
            why = "courses are not continued (continue_courses=never)"
        else:
            same_number = [c for c in by_suffix.get(course.suffix, []) if c.key not in taken]
            same_title = [
                c for c in by_title.get(normalise(course.title), []) if c.key not in taken
            ]
            if len(same_number) == 1:
                successor, why = same_number[0], "same course number"
            elif len(same_title) == 1:
                successor, why = same_title[0], "same title"
            else:
                why = f"no course of {options.to_semester} continues it"
            if successor is not None and options.continue_courses == "same-lecturer":
                if successor.lecturers != course.lecturers:
                    why = f"{successor.number} has other lecturers (continue_courses=same-lecturer)"
                    successor = None
                else:
                    why += ", same lecturers"
        if successor is not None and successor.key in taken:
            why = f"{successor.number} continues another group already"
            successor = None
        if successor is not None:
            taken.add(successor.key)
            kept = len(course.participants & successor.participants)
            plan.continued.append(
                {
                    "old": course.key,
                    "old_number": course.number,
                    "old_title": course.title,
                    "gruppe": gid,
                    "new": successor.key,
                    "new_number": successor.number,
                    "new_title": successor.title,
                    "why": why,
                    "participants_staying": kept,
                    "participants_before": len(course.participants),
                    "participants_after": len(successor.participants),
                }
            )
            continue
        days = options.delete_after.get(course.number, options.delete_after_days)
        action = "delete" if options.ended_groups == "delete" or days == 0 else "expire"
        plan.ended.append(
            {
                "old": course.key,
                "old_number": course.number,
                "old_title": course.title,
                "gruppe": gid,
                "action": action,
                "delete_after_days": 0 if action == "delete" else days,
                "laufzeit_bis": course.bis,
                "why": why,
            }
        )
    continuing = {c["new"] for c in plan.continued}
    plan.new = [
        {"new": c.key, "new_number": c.number, "new_title": c.title}
        for c in new_list
        if c.key not in continuing and c.key not in set(new_linked)
    ]
    return plan


__all__ = [
    "CHANGE_STATUSES",
    "ChangeOptions",
    "PeriodCourse",
    "Plan",
    "make_plan",
]
