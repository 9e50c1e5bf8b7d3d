"""The exporter: full snapshots and change exports, published through the outbox.

A **full snapshot** walks the active courses template in course-id order (keyset pagination over
the template as a subquery, so the catalogue is never held in memory), builds each batch of
documents and, per batch and in one transaction, records what was sent and writes a
``SnapshotBatch`` to the outbox; then ``SnapshotCompleted``. Courses published before but absent
now are marked withdrawn (the backend drops them when the snapshot completes).

A **change export** builds the given courses and sends ``CourseChanged`` only for documents whose
content hash differs from what was last sent; courses that vanished from the template (deleted or
unpublished) get ``CourseWithdrawn``.

One broken course is counted and reported, never fatal. Scheduling and the execution log are the
task framework's job; this module must not sleep or schedule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from coursedb import schema as coursedb_schema
from mesh_common.app import ServiceRuntime
from mesh_common.context import new_id
from mesh_contracts.course_export import (
    CourseChanged,
    CourseDocument,
    CourseWithdrawn,
    SnapshotBatch,
    SnapshotCompleted,
)
from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from course_export_service import template_service
from course_export_service.documents import BuildOutcome, DocumentBuilder
from course_export_service.state import ExportState
from course_export_service.templates import TemplateKind, template_params

# Called once per course with (course number or id, action, outcome, error): the task's item log.
Reporter = Callable[[str, str, str, str | None], Awaitable[None]]


async def _no_report(key: str, action: str, outcome: str, error: str | None) -> None:
    return None


@dataclass
class ExportCounts:
    exported: int = 0
    unchanged: int = 0
    withdrawn: int = 0
    failed: int = 0
    errors: dict[str, list[str]] = field(default_factory=dict)  # course number/id -> errors
    snapshot_id: str | None = None

    def failed_outcome(self, outcome: BuildOutcome) -> None:
        self.failed += 1
        self.errors[outcome.number or f"id:{outcome.course_id}"] = outcome.errors


class Exporter:
    def __init__(
        self,
        runtime: ServiceRuntime,
        coursedb: AsyncEngine,
        *,
        builder: DocumentBuilder | None = None,
        batch_size: int = 200,
    ) -> None:
        assert runtime.outbox is not None, "course-export declares mesh_outbox"
        self.runtime = runtime
        self.outbox = runtime.outbox
        self.coursedb = coursedb
        self.builder = builder or DocumentBuilder()
        self.batch_size = batch_size

    async def _templates(self) -> dict[TemplateKind, str]:
        async with self.runtime.db.unit_of_work() as session:
            return {k: (await template_service.active(session, kind=k)).sql for k in TemplateKind}

    async def _next_ids(self, courses_sql: str, after: int) -> list[int]:
        params = template_params(courses_sql)
        query = text(
            f"SELECT t.course_id FROM ({courses_sql}) AS t "  # noqa: S608 - validated template
            "WHERE t.course_id > :after ORDER BY t.course_id LIMIT :n"
        ).bindparams(bindparam("after"), bindparam("n"))
        async with self.coursedb.connect() as conn:
            result = await conn.execute(query, {**params, "after": after, "n": self.batch_size})
            return [int(x) for x in result.scalars()]

    async def _existing(self, course_ids: Sequence[int]) -> set[int]:
        if not course_ids:
            return set()
        courses = coursedb_schema.courses
        async with self.coursedb.connect() as conn:
            found = await conn.execute(select(courses.c.id).where(courses.c.id.in_(course_ids)))
            return set(found.scalars())

    async def full_snapshot(self, report: Reporter = _no_report) -> ExportCounts:
        templates = await self._templates()
        counts = ExportCounts(snapshot_id=new_id())
        started = dt.datetime.now(dt.UTC)
        seen: set[int] = set()
        after, batch_no = 0, 0
        while ids := await self._next_ids(templates[TemplateKind.COURSES], after):
            after = ids[-1]
            outcomes = await self.builder.build_for(self.coursedb, templates, ids)
            built = [o.built for o in outcomes if o.built is not None]
            for o in outcomes:
                if o.built is None:
                    counts.failed_outcome(o)
                    await report(
                        o.number or f"id:{o.course_id}", "snapshot", "failed", "; ".join(o.errors)
                    )
            seen.update(ids)
            if not built:
                continue
            batch_no += 1
            async with self.runtime.db.unit_of_work() as session:
                await ExportState(session).record_sent(built, at=dt.datetime.now(dt.UTC))
                await self.outbox.add(
                    session,
                    SnapshotBatch(
                        snapshot_id=counts.snapshot_id,
                        batch_no=batch_no,
                        courses=[CourseDocument.model_validate(b.document) for b in built],
                    ),
                )
            counts.exported += len(built)
            for b in built:
                await report(b.number, "snapshot", "ok", None)
        async with self.runtime.db.unit_of_work() as session:
            state = ExportState(session)
            gone = await state.published_ids() - seen
            now = dt.datetime.now(dt.UTC)
            await state.record_withdrawn(gone, at=now)
            await self.outbox.add(
                session,
                SnapshotCompleted(
                    snapshot_id=counts.snapshot_id,
                    batches=batch_no,
                    courses=counts.exported,
                    failed=counts.failed,
                    started_at=started,
                    completed_at=now,
                ),
            )
        counts.withdrawn = len(gone)
        return counts

    async def export_changes(
        self, course_ids: Sequence[int], report: Reporter = _no_report
    ) -> ExportCounts:
        templates = await self._templates()
        counts = ExportCounts()
        ids = sorted(set(course_ids))
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            outcomes = await self.builder.build_for(self.coursedb, templates, chunk)
            for o in outcomes:
                if o.built is None:
                    counts.failed_outcome(o)
                    await report(
                        o.number or f"id:{o.course_id}", "change", "failed", "; ".join(o.errors)
                    )
            built = [o.built for o in outcomes if o.built is not None]
            selected = {o.course_id for o in outcomes}
            now = dt.datetime.now(dt.UTC)
            async with self.runtime.db.unit_of_work() as session:
                state = ExportState(session)
                published = await state.published_ids()
                part = await state.partition(built)
                for b in part.changed:
                    doc = CourseDocument.model_validate(b.document)
                    change = (
                        "cancelled"
                        if doc.status == "cancelled"
                        else "updated"
                        if b.course_id in published
                        else "created"
                    )
                    await self.outbox.add(session, CourseChanged(change=change, course=doc))
                await state.record_sent(part.changed, at=now)
                # Asked about, published before, but no longer selected by the template.
                vanished = [i for i in chunk if i not in selected and i in published]
                numbers = await state.numbers(vanished)
                for course_id in vanished:
                    await self.outbox.add(
                        session,
                        CourseWithdrawn(
                            number=numbers[course_id], reason="unpublished", withdrawn_at=now
                        ),
                    )
                await state.record_withdrawn(vanished, at=now)
            counts.exported += len(part.changed)
            counts.unchanged += len(part.unchanged)
            counts.withdrawn += len(vanished)
            for b in part.changed:
                await report(b.number, "change", "ok", None)
            for b in part.unchanged:
                await report(b.number, "change", "unchanged", None)
            for course_id in vanished:
                await report(numbers[course_id], "withdraw", "ok", None)
        return counts
