"""The centre's side of the sync: what the course database (coursedb) holds, as persons, groups
and memberships, and the imports back into it (seed steps 6 and 10).

Mapping (decided here, documented in docs/schulconnex-sync.md):

=========================  ====================================  ==============================
coursedb                   Schulconnex                           local key (= ``referrer``)
=========================  ====================================  ==============================
participant                person + personenkontext ``Lern``     ``participant:<id>``
lecturer                   person + personenkontext ``Lehr``     ``lecturer:<id>``
course                     gruppe, typ ``Kurs``                  ``course:<id>``
registration (booked,      gruppenzugehörigkeit, rollen          ``registration:<id>``
provisional)               ``[Lern]``
course_lecturers row       gruppenzugehörigkeit, rollen          ``course-lecturer:<c>:<l>``
                           ``[Lehr]``
=========================  ====================================  ==============================

Step 2 ("which groups?") is a :class:`Selection`: explicit course numbers, or a semester, and
whether participants and lecturers (the seed's "Lehrkräfte" group) are included. Persons and
groups are loaded for the **whole** database (so a Schulconnex person who is a participant of
an unselected course is recognised, not offered for import), but only the selection is created
or updated remotely.

This module reads and writes the coursedb through SQLAlchemy Core only (so ``updated_at`` and
``row_version`` stay maintained) and must not do HTTP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from coursedb import schema
from coursedb.schema import SEAT_HOLDING_STATUSES
from mesh_common.errors import Invalid
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

PARTICIPANT, LECTURER = "participant", "lecturer"
ROLE_OF = {PARTICIPANT: "Lern", LECTURER: "Lehr"}
ANREDE = {"ms": "Frau", "mr": "Herr"}
SALUTATION = {"frau": "ms", "herr": "mr"}

#: Course statuses selected when a run names neither courses nor a semester.
DEFAULT_STATUSES = ("open", "closed")


def parse_key(key: str | None) -> tuple[str, int] | None:
    """``("participant", 12)`` for ``"participant:12"``; None for anything that is not ours."""
    if not key:
        return None
    kind, sep, rest = key.partition(":")
    if (
        not sep
        or kind not in (PARTICIPANT, LECTURER, "course", "registration")
        or not rest.isdigit()
    ):
        return None
    return kind, int(rest)


def is_our_membership_key(key: str | None) -> bool:
    if not key:
        return False
    if key.startswith("registration:"):
        return key[13:].isdigit()
    parts = key.split(":")
    return len(parts) == 3 and parts[0] == "course-lecturer" and all(p.isdigit() for p in parts[1:])


@dataclass(frozen=True, slots=True)
class LocalPerson:
    key: str
    kind: str  # participant | lecturer
    row_id: int
    familienname: str
    vorname: str
    geburtsdatum: str | None  # ISO date
    titel: str | None = None
    anrede: str | None = None  # "Frau" / "Herr"
    email: str | None = None

    @property
    def rolle(self) -> str:
        return ROLE_OF[self.kind]

    def label(self) -> str:
        born = f", *{self.geburtsdatum}" if self.geburtsdatum else ""
        return f"{self.vorname} {self.familienname}{born} ({self.key})"


@dataclass(frozen=True, slots=True)
class LocalGroup:
    key: str
    course_id: int
    number: str
    title: str
    status: str
    thema: str | None
    summary: str | None
    von: str | None
    bis: str | None


@dataclass(frozen=True, slots=True)
class LocalMembership:
    key: str
    group_key: str
    person_key: str
    rollen: tuple[str, ...]
    active: bool  # False: cancelled registration (the membership must go)


@dataclass(frozen=True)
class Selection:
    """Seed step 2: the groups to synchronise (and with them their persons)."""

    courses: tuple[str, ...] = ()  # course numbers
    semester: str | None = None
    statuses: tuple[str, ...] = DEFAULT_STATUSES
    participants: bool = True
    lecturers: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Selection:
        courses = params.get("courses") or ()
        if isinstance(courses, str):
            courses = tuple(c.strip() for c in courses.split(",") if c.strip())
        if not isinstance(courses, list | tuple) or not all(isinstance(c, str) for c in courses):
            raise Invalid("courses must be a list of course numbers", code="invalid-selection")
        semester = params.get("semester")
        if semester is not None and not isinstance(semester, str):
            raise Invalid(
                "semester must be a semester code such as '252'", code="invalid-selection"
            )
        statuses = params.get("statuses") or DEFAULT_STATUSES
        allowed = {s.value for s in schema.CourseStatus}
        if not isinstance(statuses, list | tuple) or not set(statuses) <= allowed:
            raise Invalid(
                f"statuses must be a subset of {sorted(allowed)}", code="invalid-selection"
            )
        return cls(
            courses=tuple(courses),
            semester=semester,
            statuses=tuple(statuses),
            participants=bool(params.get("participants", True)),
            lecturers=bool(params.get("lecturers", True)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "courses": list(self.courses),
            "semester": self.semester,
            "statuses": list(self.statuses),
            "participants": self.participants,
            "lecturers": self.lecturers,
        }


@dataclass
class LocalData:
    persons: dict[str, LocalPerson]  # every participant and lecturer
    groups: dict[str, LocalGroup]  # the selected courses
    group_keys: set[str]  # every course key in the database
    memberships: dict[str, LocalMembership]  # of the selected courses, cancelled ones too
    scope_persons: set[str] = field(default_factory=set)


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


async def load_persons(conn: AsyncConnection) -> dict[str, LocalPerson]:
    """Every participant and lecturer (a dict lookup per record later, no per-record query)."""
    p, lect = schema.participants, schema.lecturers
    out: dict[str, LocalPerson] = {}
    rows = await conn.execute(
        select(
            p.c.id,
            p.c.first_name,
            p.c.last_name,
            p.c.birth_date,
            p.c.academic_title,
            p.c.salutation,
            p.c.email,
        )
    )
    for r in rows:
        key = f"participant:{r.id}"
        out[key] = LocalPerson(
            key,
            PARTICIPANT,
            r.id,
            r.last_name,
            r.first_name,
            _iso(r.birth_date),
            _clean(r.academic_title),
            ANREDE.get(r.salutation or ""),
            _clean(r.email),
        )
    rows = await conn.execute(
        select(
            lect.c.id,
            lect.c.first_name,
            lect.c.last_name,
            lect.c.academic_title,
            lect.c.salutation,
            lect.c.email,
        )
    )
    for r in rows:
        key = f"lecturer:{r.id}"
        out[key] = LocalPerson(
            key,
            LECTURER,
            r.id,
            r.last_name,
            r.first_name,
            None,
            _clean(r.academic_title),
            ANREDE.get(r.salutation or ""),
            _clean(r.email),
        )
    return out


async def _selected_course_ids(conn: AsyncConnection, selection: Selection) -> list[int]:
    c, s = schema.courses, schema.semesters
    query = select(c.c.id)
    if selection.courses:
        query = query.where(c.c.number.in_(selection.courses))
        ids = [r for (r,) in await conn.execute(query)]
        found = (
            {n for (n,) in await conn.execute(select(c.c.number).where(c.c.id.in_(ids)))}
            if ids
            else set()
        )
        missing = sorted(set(selection.courses) - found)
        if missing:
            raise Invalid(
                f"unknown course numbers: {', '.join(missing[:20])}", code="invalid-selection"
            )
        return ids
    query = query.where(c.c.status.in_(selection.statuses))
    if selection.semester is not None:
        sem = (await conn.execute(select(s.c.id).where(s.c.code == selection.semester))).scalar()
        if sem is None:
            raise Invalid(f"unknown semester {selection.semester!r}", code="invalid-selection")
        query = query.where(c.c.semester_id == sem)
    return [r for (r,) in await conn.execute(query.order_by(c.c.id))]


async def load(engine: AsyncEngine, selection: Selection) -> LocalData:
    """Everything the sync needs from the coursedb, in a handful of set-based queries."""
    c, cs, cat = schema.courses, schema.course_sessions, schema.categories
    reg, cl = schema.registrations, schema.course_lecturers
    async with engine.connect() as conn:
        persons = await load_persons(conn)
        ids = await _selected_course_ids(conn, selection)
        group_keys = {f"course:{i}" for (i,) in await conn.execute(select(c.c.id))}
        groups: dict[str, LocalGroup] = {}
        memberships: dict[str, LocalMembership] = {}
        scope: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            span = (
                select(
                    cs.c.course_id,
                    func.min(cs.c.session_date).label("von"),
                    func.max(cs.c.session_date).label("bis"),
                )
                .where(cs.c.course_id.in_(chunk))
                .group_by(cs.c.course_id)
                .subquery()
            )
            rows = await conn.execute(
                select(
                    c.c.id,
                    c.c.number,
                    c.c.title,
                    c.c.status,
                    c.c.summary,
                    cat.c.name,
                    span.c.von,
                    span.c.bis,
                )
                .join(cat, cat.c.id == c.c.category_id)
                .outerjoin(span, span.c.course_id == c.c.id)
                .where(c.c.id.in_(chunk))
            )
            for r in rows:
                key = f"course:{r.id}"
                groups[key] = LocalGroup(
                    key,
                    r.id,
                    r.number,
                    r.title,
                    r.status,
                    _clean(r.name),
                    _clean(r.summary),
                    _iso(r.von),
                    _iso(r.bis),
                )
            if selection.participants:
                for r in await conn.execute(
                    select(reg.c.id, reg.c.course_id, reg.c.participant_id, reg.c.status).where(
                        reg.c.course_id.in_(chunk)
                    )
                ):
                    pkey = f"participant:{r.participant_id}"
                    active = r.status in SEAT_HOLDING_STATUSES
                    memberships[f"registration:{r.id}"] = LocalMembership(
                        f"registration:{r.id}", f"course:{r.course_id}", pkey, ("Lern",), active
                    )
                    if active:
                        scope.add(pkey)
            if selection.lecturers:
                for r in await conn.execute(
                    select(cl.c.course_id, cl.c.lecturer_id).where(cl.c.course_id.in_(chunk))
                ):
                    pkey = f"lecturer:{r.lecturer_id}"
                    mkey = f"course-lecturer:{r.course_id}:{r.lecturer_id}"
                    memberships[mkey] = LocalMembership(
                        mkey, f"course:{r.course_id}", pkey, ("Lehr",), True
                    )
                    scope.add(pkey)
    return LocalData(persons, groups, group_keys, memberships, scope)


# --------------------------------------------------------------------------- imports (6, 10)


class ImportRefused(Exception):
    """The Schulconnex record lacks what a local record needs (seed: "wenn die Attribute ...
    ausreichen")."""


def _first_email(kontexte: Iterable[Mapping[str, Any]]) -> str | None:
    for k in kontexte:
        for e in k.get("erreichbarkeiten") or []:
            if e.get("typ") == "E-Mail" and e.get("kennung"):
                return str(e["kennung"])[:254]
    return None


def import_kind(person: Mapping[str, Any], kontexte: list[Mapping[str, Any]]) -> str:
    """Which local table a Schulconnex person belongs in, by the role of its kontexte."""
    roles = {k.get("rolle") for k in kontexte}
    if "Lehr" in roles:
        return LECTURER
    if "Lern" in roles:
        return PARTICIPANT
    raise ImportRefused(
        "only persons with a personenkontext of role Lern or Lehr can be imported "
        f"(roles: {', '.join(sorted(r for r in roles if r)) or 'none'})"
    )


async def import_person(
    conn: AsyncConnection, person: Mapping[str, Any], kontexte: list[Mapping[str, Any]]
) -> LocalPerson:
    """Seed step 6: create the participant or lecturer a confirmed Schulconnex person is."""
    kind = import_kind(person, kontexte)
    name = person.get("name") or {}
    first, last = (name.get("vorname") or "").strip(), (name.get("familienname") or "").strip()
    if not first or not last:
        raise ImportRefused("first and last name are required")
    if len(first) > 80 or len(last) > 80:
        raise ImportRefused("names longer than 80 characters do not fit the course database")
    anrede = [a.casefold() for a in name.get("anrede") or []]
    salutation = next((SALUTATION[a] for a in anrede if a in SALUTATION), None)
    titel = (name.get("titel") or "").strip() or None
    if titel and len(titel) > 20:
        titel = None  # the course database keeps short academic titles only
    email = _first_email(kontexte)
    values: dict[str, Any] = {
        "first_name": first,
        "last_name": last,
        "salutation": salutation,
        "academic_title": titel,
        "email": email,
    }
    born = (person.get("geburt") or {}).get("datum")
    if kind == PARTICIPANT:
        values["birth_date"] = dt.date.fromisoformat(born) if born else None
        values["country"] = "DE"
        table = schema.participants
    else:
        table = schema.lecturers
    row_id = (await conn.execute(insert(table).values(**values).returning(table.c.id))).scalar_one()
    return LocalPerson(
        f"{kind}:{row_id}",
        kind,
        int(row_id),
        last,
        first,
        born if kind == PARTICIPANT else None,
        titel,
        ANREDE.get(salutation or ""),
        email,
    )


async def import_group(
    conn: AsyncConnection, gruppe: Mapping[str, Any], *, category_code: str | None
) -> LocalGroup:
    """Seed step 10: a confirmed Schulconnex group becomes a course, ``planned`` and not
    published, fee 0, in the semester its ``laufzeit.von`` (else today) falls in."""
    if not category_code:
        raise ImportRefused(
            "no category for imported courses is configured (IMPORT_COURSE_CATEGORY)"
        )
    c, s, cat = schema.courses, schema.semesters, schema.categories
    category = (await conn.execute(select(cat.c.id).where(cat.c.code == category_code))).scalar()
    if category is None:
        raise ImportRefused(f"the configured category {category_code!r} does not exist")
    title = (gruppe.get("bezeichnung") or "").strip()
    if not title:
        raise ImportRefused("the group has no bezeichnung")
    laufzeit = gruppe.get("laufzeit") or {}
    day = dt.date.fromisoformat(laufzeit["von"]) if laufzeit.get("von") else dt.date.today()
    sem = (
        await conn.execute(select(s.c.id, s.c.code).where(s.c.starts_on <= day, s.c.ends_on >= day))
    ).first()
    if sem is None:
        raise ImportRefused(f"no semester covers {day.isoformat()}")
    taken = {
        n
        for (n,) in await conn.execute(select(c.c.number).where(c.c.number.like(f"{sem.code}-SC%")))
    }
    n = 1
    while f"{sem.code}-SC{n:03d}" in taken:
        n += 1
    number = f"{sem.code}-SC{n:03d}"
    summary = (gruppe.get("beschreibung") or "").strip() or None
    row_id = (
        await conn.execute(
            insert(c)
            .values(
                number=number,
                semester_id=sem.id,
                category_id=category,
                title=title[:200],
                summary=summary[:1000] if summary else None,
                fee=Decimal("0.00"),
                min_participants=0,
                max_participants=max(1, len(gruppe.get("_members", []) or [])),
                status="planned",
                registration_mode="on_request",
                publish=False,
                web_bookable=False,
            )
            .returning(c.c.id)
        )
    ).scalar_one()
    return LocalGroup(
        f"course:{row_id}",
        int(row_id),
        number,
        title[:200],
        "planned",
        None,
        summary,
        laufzeit.get("von"),
        laufzeit.get("bis"),
    )


async def import_membership(
    conn: AsyncConnection, *, course_id: int, person: LocalPerson, rollen: Iterable[str]
) -> str:
    """Seed step 10 for a membership: a participant becomes a desk registration (``booked``,
    nothing charged), a lecturer a course lecturer. Returns the new local key."""
    rollen = set(rollen)
    if person.kind == LECTURER:
        cl = schema.course_lecturers
        exists = (
            await conn.execute(
                select(cl.c.course_id).where(
                    cl.c.course_id == course_id, cl.c.lecturer_id == person.row_id
                )
            )
        ).first()
        if exists is None:
            await conn.execute(insert(cl).values(course_id=course_id, lecturer_id=person.row_id))
        return f"course-lecturer:{course_id}:{person.row_id}"
    if "Lern" not in rollen and "GMit" not in rollen:
        raise ImportRefused(f"a participant cannot hold the roles {sorted(rollen)} in a course")
    reg = schema.registrations
    active = (
        await conn.execute(
            select(reg.c.id).where(
                reg.c.course_id == course_id,
                reg.c.participant_id == person.row_id,
                reg.c.status != "cancelled",
            )
        )
    ).scalar()
    if active is not None:
        return f"registration:{active}"
    row_id = (
        await conn.execute(
            insert(reg)
            .values(
                course_id=course_id,
                participant_id=person.row_id,
                status="booked",
                registered_at=dt.datetime.now(dt.UTC),
                fee_charged=Decimal("0.00"),
            )
            .returning(reg.c.id)
        )
    ).scalar_one()
    return f"registration:{row_id}"


# --------------------------------------------------------------------------- periods (change)


async def load_period(
    engine: AsyncEngine, semester: str, statuses: Iterable[str] | None = None
) -> tuple[list[Any], dt.date]:
    """The courses of one semester (``statuses``: all when None) for the school-year change:
    number, title, lecturers, active participants, first and last session (else the semester's
    bounds). Returns ``(courses, the semester's last day)``; Invalid for an unknown semester."""
    from schulconnex_sync_service.schuljahr import PeriodCourse

    c, s, cs = schema.courses, schema.semesters, schema.course_sessions
    reg, cl = schema.registrations, schema.course_lecturers
    async with engine.connect() as conn:
        sem = (
            await conn.execute(
                select(s.c.id, s.c.starts_on, s.c.ends_on).where(s.c.code == semester)
            )
        ).first()
        if sem is None:
            raise Invalid(f"unknown semester {semester!r}", code="invalid-selection")
        query = select(c.c.id, c.c.number, c.c.title).where(c.c.semester_id == sem.id)
        if statuses is not None:
            query = query.where(c.c.status.in_(list(statuses)))
        rows = (await conn.execute(query.order_by(c.c.number))).all()
        ids = [r.id for r in rows]
        lecturers: dict[int, set[str]] = {}
        participants: dict[int, set[str]] = {}
        spans: dict[int, tuple[Any, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for r in await conn.execute(
                select(cl.c.course_id, cl.c.lecturer_id).where(cl.c.course_id.in_(chunk))
            ):
                lecturers.setdefault(r.course_id, set()).add(f"{LECTURER}:{r.lecturer_id}")
            for r in await conn.execute(
                select(reg.c.course_id, reg.c.participant_id).where(
                    reg.c.course_id.in_(chunk), reg.c.status.in_(list(SEAT_HOLDING_STATUSES))
                )
            ):
                participants.setdefault(r.course_id, set()).add(f"{PARTICIPANT}:{r.participant_id}")
            for r in await conn.execute(
                select(cs.c.course_id, func.min(cs.c.session_date), func.max(cs.c.session_date))
                .where(cs.c.course_id.in_(chunk))
                .group_by(cs.c.course_id)
            ):
                spans[r[0]] = (r[1], r[2])
    courses = [
        PeriodCourse(
            key=f"course:{r.id}",
            number=r.number,
            title=r.title,
            lecturers=frozenset(lecturers.get(r.id, ())),
            participants=frozenset(participants.get(r.id, ())),
            von=_iso(spans.get(r.id, (sem.starts_on, None))[0]),
            bis=_iso(spans.get(r.id, (None, sem.ends_on))[1]),
        )
        for r in rows
    ]
    return courses, sem.ends_on
