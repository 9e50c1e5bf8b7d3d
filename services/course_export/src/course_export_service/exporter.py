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

import asyncio
import contextlib
import datetime as dt
import gc
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import orjson
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
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from course_export_service import template_service
from course_export_service.documents import (
    BuildOutcome,
    Children,
    DocumentBuilder,
    Row,
    encode_document,
    fetch_children,
    fetch_page,
)
from course_export_service.state import Built, ExportState
from course_export_service.templates import TemplateKind

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


@dataclass
class _Page:
    courses: list[Row]
    children: Children


_PageQueue = asyncio.Queue[_Page | Exception | None]
_BUILD_SLICE = 25  # courses built between two yields to the event loop (a few milliseconds)


# Allocations (net) between two young-generation collections of the cyclic GC during a full
# snapshot; CPython's default is 700. A snapshot keeps a few pages of short-lived objects alive
# at a time, so with 700 the collector ran about once per 25 courses (about 7 % of the
# snapshot's CPU in alternating in-process runs); at 10,000 it runs a handful of times per
# 20,000 courses. Memory is still freed by reference counting as before; only garbage cycles
# wait a little longer.
_GEN0_THRESHOLD = 10_000


@contextlib.contextmanager
def _fewer_young_collections() -> Iterator[None]:
    """Raise the young-generation threshold for the snapshot, and put it back afterwards
    (unless someone else changed it meanwhile). Process-wide while it lasts."""
    before = gc.get_threshold()
    during = (max(before[0], _GEN0_THRESHOLD), *before[1:])
    gc.set_threshold(*during)
    try:
        yield
    finally:
        if gc.get_threshold() == during:
            gc.set_threshold(*before)


def _model(built: Built) -> CourseDocument:
    return built.model if built.model is not None else CourseDocument.model_validate(built.document)


def _batch_body(snapshot_id: str | None, batch_no: int, built: Sequence[Built]) -> bytes:
    """The JSON of ``SnapshotBatch(snapshot_id, batch_no, courses)``, assembled from the
    documents' JSON as built (each encoded once, from the contract's JSON form, so nothing is
    validated or converted again): byte for byte what pydantic writes for the batch
    (``tests/test_exact.py``)."""
    assert snapshot_id is not None
    head = orjson.dumps({"snapshot_id": snapshot_id, "batch_no": batch_no})
    courses = b",".join(
        b.encoded if b.encoded is not None else encode_document(dict(b.document), b.model)
        for b in built
    )
    return b"".join((head[:-1], b',"courses":[', courses, b"]}"))


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

    async def _existing(self, course_ids: Sequence[int]) -> set[int]:
        if not course_ids:
            return set()
        courses = coursedb_schema.courses
        async with self.coursedb.connect() as conn:
            found = await conn.execute(select(courses.c.id).where(courses.c.id.in_(course_ids)))
            return set(found.scalars())

    async def _pages(self, templates: dict[TemplateKind, str], out: _PageQueue) -> None:
        """Producer: read the courses template in keyset pages, with their child rows; then
        None, or the error that stopped it."""
        after = 0
        courses = templates[TemplateKind.COURSES]
        try:
            while True:
                async with self.coursedb.connect() as conn:  # one checkout per page
                    rows = await fetch_page(conn, courses, after=after, limit=self.batch_size)
                    if not rows:
                        break
                    ids = [int(r["course_id"]) for r in rows]
                    children = await fetch_children(conn, templates, ids)
                after = ids[-1]
                await out.put(_Page(rows, children))
        except Exception as exc:
            await out.put(exc)
            return
        await out.put(None)

    async def _write_page(
        self,
        outcomes: list[BuildOutcome],
        batch_no: int,
        counts: ExportCounts,
        report: Reporter,
    ) -> None:
        """Report a built page's failures, then (if anything built) record what is sent and
        put the ``SnapshotBatch`` into the outbox in one transaction, then report the rest."""
        for o in outcomes:
            if o.built is None:
                counts.failed_outcome(o)
                await report(
                    o.number or f"id:{o.course_id}", "snapshot", "failed", "; ".join(o.errors)
                )
        built = [o.built for o in outcomes if o.built is not None]
        if not built:
            return
        async with self.runtime.db.unit_of_work() as session:
            await ExportState(session).record_sent(built, at=dt.datetime.now(dt.UTC))
            await self.outbox.add_encoded(
                session, SnapshotBatch, _batch_body(counts.snapshot_id, batch_no, built)
            )
        counts.exported += len(built)
        for b in built:
            await report(b.number, "snapshot", "ok", None)

    async def _build_page(self, page: _Page) -> list[BuildOutcome]:
        """Build a page in slices, yielding to the event loop between them: building is plain
        CPU work, and without the yields the reader and the writer (waiting on their databases)
        would advance one round trip per page instead of working while it is built."""
        outcomes: list[BuildOutcome] = []
        courses = page.courses
        for start in range(0, len(courses), _BUILD_SLICE):
            outcomes += self.builder.build_all(courses[start : start + _BUILD_SLICE], page.children)
            await asyncio.sleep(0)
        return outcomes

    async def full_snapshot(self, report: Reporter = _no_report) -> ExportCounts:
        templates = await self._templates()
        counts = ExportCounts(snapshot_id=new_id())
        started = dt.datetime.now(dt.UTC)
        seen: set[int] = set()
        batch_no = 0
        # Three stages overlap: the next page is read (the coursedb works) and the previous
        # page is written (course-export's database works) while this one is built (Python
        # maps). At most one write is in flight, so batches reach the outbox in order; the
        # small queue bounds what is held in memory.
        pages: _PageQueue = asyncio.Queue(maxsize=2)
        reader = asyncio.create_task(self._pages(templates, pages), name="snapshot-reader")
        writing: asyncio.Task[None] | None = None
        with _fewer_young_collections():
            try:
                while (page := await pages.get()) is not None:
                    if isinstance(page, Exception):
                        raise page
                    outcomes = await self._build_page(page)
                    seen.update(o.course_id for o in outcomes)
                    if any(o.built is not None for o in outcomes):
                        batch_no += 1
                    if writing is not None:
                        await writing  # raises what stopped it (a database error, a cancel)
                    writing = asyncio.create_task(
                        self._write_page(outcomes, batch_no, counts, report), name="snapshot-writer"
                    )
                if writing is not None:
                    await writing
            finally:
                for task in (writing, reader):
                    if task is not None and not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
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
            # Asked about, but the template does not select it: deleted or no longer published.
            missing = [i for i in chunk if i not in selected]
            now = dt.datetime.now(dt.UTC)
            async with self.runtime.db.unit_of_work() as session:
                state = ExportState(session)
                known = await state.known([*(b.course_id for b in built), *missing])
                part = await state.partition(built, known)
                changes: list[CourseChanged | CourseWithdrawn] = []
                for b in part.changed:
                    doc = _model(b)
                    previous = known.get(b.course_id)
                    change = (
                        "cancelled"
                        if doc.status == "cancelled"
                        else "updated"
                        if previous is not None and previous.published
                        else "created"
                    )
                    changes.append(CourseChanged(change=change, course=doc))
                vanished = [i for i in missing if i in known and known[i].published]
                still_there = await self._existing(vanished)  # else deleted
                numbers = {i: known[i].number for i in vanished}
                changes += [
                    CourseWithdrawn(
                        number=numbers[i],
                        reason="unpublished" if i in still_there else "deleted",
                        withdrawn_at=now,
                    )
                    for i in vanished
                ]
                # One statement for all of them: a change run sends hundreds at busy times.
                await self.outbox.add_many(session, changes)
                await state.record_sent(part.changed, at=now)
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
