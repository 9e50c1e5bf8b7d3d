"""Reference consumer: how a website backend applies course-export's messages.

Documented in docs/course-export.md and exercised end to end by the tests, so the contract is
proven, not just described. It keeps a replica of the published catalogue:

- ``SnapshotBatch``: upsert every course (keeping the newer ``revision``), remember its number
  under the snapshot.
- ``SnapshotCompleted``: once *all* announced batches of that snapshot have arrived (batches and
  completion travel on different queues, so their order is not guaranteed), delete every course
  not in the snapshot. A snapshot whose batches never all arrive deletes nothing.
- ``CourseChanged``: upsert unless the replica already holds a newer revision.
- ``CourseWithdrawn``: delete.
Every step is idempotent, as at-least-once delivery requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh_common.bus import HandlerRegistry, MessageContext
from mesh_contracts.course_export import (
    CourseChanged,
    CourseDocument,
    CourseWithdrawn,
    SnapshotBatch,
    SnapshotCompleted,
)


@dataclass
class _Snapshot:
    numbers: set[str] = field(default_factory=set)
    batches: set[int] = field(default_factory=set)
    expected_batches: int | None = None
    applied: bool = False


@dataclass
class CatalogueReplica:
    courses: dict[str, CourseDocument] = field(default_factory=dict)
    snapshots: dict[str, _Snapshot] = field(default_factory=dict)

    def _upsert(self, doc: CourseDocument) -> None:
        held = self.courses.get(doc.number)
        if held is None or doc.revision >= held.revision:
            self.courses[doc.number] = doc

    def apply_batch(self, msg: SnapshotBatch) -> None:
        snap = self.snapshots.setdefault(msg.snapshot_id, _Snapshot())
        for doc in msg.courses:
            self._upsert(doc)
            snap.numbers.add(doc.number)
        snap.batches.add(msg.batch_no)
        self._maybe_complete(msg.snapshot_id)

    def apply_completed(self, msg: SnapshotCompleted) -> None:
        snap = self.snapshots.setdefault(msg.snapshot_id, _Snapshot())
        snap.expected_batches = msg.batches
        self._maybe_complete(msg.snapshot_id)

    def _maybe_complete(self, snapshot_id: str) -> None:
        snap = self.snapshots[snapshot_id]
        if snap.applied or snap.expected_batches is None:
            return
        if snap.batches >= set(range(1, snap.expected_batches + 1)):
            for number in set(self.courses) - snap.numbers:
                del self.courses[number]
            snap.applied = True

    def apply_changed(self, msg: CourseChanged) -> None:
        self._upsert(msg.course)

    def apply_withdrawn(self, msg: CourseWithdrawn) -> None:
        self.courses.pop(msg.number, None)


def reference_handlers(replica: CatalogueReplica) -> HandlerRegistry:
    """Bus handlers that feed ``replica`` (register them on the consumer's bus)."""
    handlers = HandlerRegistry()

    @handlers.event(SnapshotBatch, name="apply_snapshot_batch")
    async def _batch(msg: SnapshotBatch, ctx: MessageContext) -> None:
        replica.apply_batch(msg)

    @handlers.event(SnapshotCompleted, name="apply_snapshot_completed")
    async def _completed(msg: SnapshotCompleted, ctx: MessageContext) -> None:
        replica.apply_completed(msg)

    @handlers.event(CourseChanged, name="apply_course_changed")
    async def _changed(msg: CourseChanged, ctx: MessageContext) -> None:
        replica.apply_changed(msg)

    @handlers.event(CourseWithdrawn, name="apply_course_withdrawn")
    async def _withdrawn(msg: CourseWithdrawn, ctx: MessageContext) -> None:
        replica.apply_withdrawn(msg)

    return handlers
