"""Contracts owned by course-export: what the web platform's backend receives.

The backend keeps a copy of the published catalogue. It gets it two ways:

- **Full snapshots**: ``SnapshotBatch`` messages (same ``snapshot_id``, ``batch_no`` from 1)
  followed by one ``SnapshotCompleted`` naming how many batches and courses were sent. Once
  all batches arrived, every course the backend holds that was not in the snapshot has
  disappeared from publication and is to be removed. An incomplete snapshot (missing batches)
  must not be applied for deletions.
- **Changes** between snapshots: ``CourseChanged`` (created, updated, cancelled) and
  ``CourseWithdrawn`` (deleted, or no longer meant for publication).

Every course document carries ``content_hash`` (of the document itself) and ``revision`` (the
coursedb row version), so a consumer can ignore a stale or repeated document. Delivery is
at-least-once; applying the same message twice must be harmless.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field

from mesh_contracts.base import Command, Event
from mesh_contracts.common import Address, Money, Value

CourseStatus = Literal["planned", "open", "closed", "cancelled", "finished"]
RegistrationMode = Literal["direct", "waiting_list", "provisional", "on_request"]


class Discount(Value):
    kind: str
    label: str
    percent_off: Annotated[float, Field(gt=0, le=100)] | None = None
    amount_off: Money | None = None


class Session(Value):
    """One meeting of the course, in local time at the location (Europe/Berlin)."""

    date: dt.date
    start: dt.time
    end: dt.time
    starts_at: dt.datetime  # timezone-aware, for consumers that want instants
    ends_at: dt.datetime
    room: str | None = None
    note: str | None = None


class Location(Value):
    name: str
    address: Address | None = None
    room: str | None = None
    accessible: bool | None = None


class Lecturer(Value):
    name: str


class CourseDocument(Value):
    """The exported form of one course (the web page's data)."""

    number: Annotated[str, Field(min_length=1, max_length=20)]  # Kursnummer, the stable key
    revision: int
    content_hash: Annotated[str, Field(min_length=16, max_length=128)]
    title: str
    subtitle: str | None = None
    summary: str | None = None
    description: str | None = None
    notes: str | None = None
    category_area: str | None = None  # Fachbereich, e.g. "Sprachen"
    category: str | None = None  # e.g. "Spanisch"
    semester: str | None = None
    fee: Money
    discounts: list[Discount] = Field(default_factory=list)
    teaching_units: float | None = None
    min_participants: int
    max_participants: int
    status: CourseStatus
    registration_mode: RegistrationMode
    registration_deadline: dt.datetime | None = None
    web_bookable: bool
    location: Location | None = None  # None: an online course
    lecturers: list[Lecturer] = Field(default_factory=list)
    sessions: list[Session] = Field(default_factory=list)
    updated_at: dt.datetime
    # Fields a centre adds through its SQL template and mapping land here, untyped.
    extra: dict[str, object] = Field(default_factory=dict)


class SnapshotBatch(Event):
    __message_type__: ClassVar[str] = "course_export.snapshot_batch.v1"

    snapshot_id: str
    batch_no: Annotated[int, Field(ge=1)]
    courses: list[CourseDocument]


class SnapshotCompleted(Event):
    __message_type__: ClassVar[str] = "course_export.snapshot_completed.v1"

    snapshot_id: str
    batches: Annotated[int, Field(ge=0)]
    courses: Annotated[int, Field(ge=0)]
    failed: Annotated[int, Field(ge=0)] = 0  # rows that could not be exported (see execution)
    started_at: dt.datetime
    completed_at: dt.datetime


class CourseChanged(Event):
    __message_type__: ClassVar[str] = "course_export.course_changed.v1"

    change: Literal["created", "updated", "cancelled"]
    course: CourseDocument


class CourseWithdrawn(Event):
    """The course is no longer published: deleted in the coursedb or its publish flag cleared."""

    __message_type__: ClassVar[str] = "course_export.course_withdrawn.v1"

    number: str
    reason: Literal["deleted", "unpublished"]
    withdrawn_at: dt.datetime


class RunExport(Command):
    """Ask course-export for an export now or at ``run_at`` (the CMS admin's button).

    A future ``run_at`` (with a UTC offset; a naive time is refused as invalid) is stored as a
    scheduled export, listed and cancellable over course-export's REST API
    (``/scheduled-exports``) and fired once at that time; ``None`` or a past time runs now.
    """

    __message_type__: ClassVar[str] = "course_export.run_export.v1"

    mode: Literal["full", "changes"] = "full"
    run_at: AwareDatetime | None = None  # None = now; otherwise a scheduled "publish at"
    requested_by: str | None = None
    note: str | None = None
