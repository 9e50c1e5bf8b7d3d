"""Pending confirmations: the decisions the seed leaves to a person, stored between runs.

Life of one (``sc_confirmations``, one row per tenant and subject):

``pending``  a run found the question (person case 3 "which local person is this?", cases 4
             and 5 "import?", group and membership cases 2 and 3 "import?", a concurrent
             change that a 409 revealed: "overwrite theirs with ours?", or step 9's "delete
             this record of ours, whose local record is gone?"). Later runs refresh it
             (candidates, what Schulconnex holds) and do not act on the subject meanwhile.
``accepted`` / ``rejected``  a person decided (REST, singly or in bulk). Nothing happens yet:
             the next run applies the decision with fresh data (seed steps 5, 6, 9, 10), so a
             decision never acts on stale data.
``applied``  a run carried it out. ``obsolete``: the question no longer arises (the record was
             deleted, matched by a key meanwhile, ...).

A rejected match is remembered as "not this pair"; a rejected import as "do not ask again". A
rejected conflict keeps the Schulconnex values until the local record changes again. This
module must not do HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_common.db import Database
from mesh_common.errors import Conflict, Invalid, NotFound
from sqlalchemy import and_, func, insert, select, update

from schulconnex_sync_service.models import confirmations as table

PENDING, ACCEPTED, REJECTED, APPLIED, OBSOLETE = (
    "pending",
    "accepted",
    "rejected",
    "applied",
    "obsolete",
)
STATUSES = (PENDING, ACCEPTED, REJECTED, APPLIED, OBSOLETE)
KINDS = (
    "person-match",
    "person-import",
    "group-import",
    "membership-import",
    "conflict",
    "delete",
)


@dataclass
class Question:
    """What a run wants to ask (becomes or refreshes a pending confirmation)."""

    kind: str
    entity: str
    case_no: int
    subject: str
    reason: str
    remote_id: str | None = None
    local_key: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    remote: dict[str, Any] = field(default_factory=dict)
    remote_revision: str | None = None
    local_hash: str | None = None


def subject_of(kind: str, entity: str, ident: str) -> str:
    return f"{kind}:{entity}:{ident}"


class ConfirmationStore:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # ------------------------------------------------------------------ used by runs

    async def by_subject(self, tenant: str) -> dict[str, dict[str, Any]]:
        """Every confirmation of ``tenant`` that is not obsolete, by subject."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(table).where(table.c.tenant == tenant, table.c.status != OBSOLETE)
            )
            return {r.subject: dict(r._mapping) for r in rows}

    async def ask(self, tenant: str, questions: Iterable[Question], execution_id: str) -> int:
        """Create the new questions as pending, refresh the pending ones; a subject decided
        earlier (accepted/rejected) is left alone, an applied or obsolete one is asked again.
        Returns how many are pending now among ``questions``."""
        questions = list(questions)
        if not questions:
            return 0
        now = self.clock()
        subjects = [q.subject for q in questions]
        pending = 0
        async with self.db.engine.begin() as conn:
            existing: dict[str, Any] = {}
            for start in range(0, len(subjects), 500):
                chunk = subjects[start : start + 500]
                for r in await conn.execute(
                    select(table.c.subject, table.c.id, table.c.status).where(
                        table.c.tenant == tenant, table.c.subject.in_(chunk)
                    )
                ):
                    existing[r.subject] = r
            fresh = []
            for q in questions:
                values = {
                    "kind": q.kind,
                    "entity": q.entity,
                    "case_no": q.case_no,
                    "remote_id": q.remote_id,
                    "local_key": q.local_key,
                    "candidates": q.candidates,
                    "remote": q.remote,
                    "reason": q.reason,
                    "remote_revision": q.remote_revision,
                    "local_hash": q.local_hash,
                    "updated_at": now,
                    "execution_id": execution_id,
                }
                row = existing.get(q.subject)
                if row is None:
                    fresh.append(
                        {
                            **values,
                            "id": str(uuid.uuid4()),
                            "tenant": tenant,
                            "subject": q.subject,
                            "status": PENDING,
                            "created_at": now,
                        }
                    )
                    pending += 1
                elif row.status == PENDING:
                    await conn.execute(update(table).where(table.c.id == row.id).values(**values))
                    pending += 1
                elif row.status in (APPLIED, OBSOLETE):
                    await conn.execute(
                        update(table)
                        .where(table.c.id == row.id)
                        .values(
                            **values,
                            status=PENDING,
                            choice=None,
                            decided_at=None,
                            decided_by=None,
                            error=None,
                        )
                    )
                    pending += 1
            for start in range(0, len(fresh), 500):
                await conn.execute(insert(table), fresh[start : start + 500])
        return pending

    async def retire(
        self, tenant: str, *, kinds: Iterable[str], keep: set[str], execution_id: str
    ) -> int:
        """Pending questions of ``kinds`` that this run did not ask again are obsolete."""
        now = self.clock()
        async with self.db.engine.begin() as conn:
            rows = await conn.execute(
                select(table.c.id, table.c.subject).where(
                    table.c.tenant == tenant,
                    table.c.status == PENDING,
                    table.c.kind.in_(list(kinds)),
                )
            )
            gone = [r.id for r in rows if r.subject not in keep]
            for start in range(0, len(gone), 500):
                await conn.execute(
                    update(table)
                    .where(table.c.id.in_(gone[start : start + 500]))
                    .values(status=OBSOLETE, updated_at=now, execution_id=execution_id)
                )
        return len(gone)

    async def applied(self, ids: Iterable[str], execution_id: str) -> None:
        ids = list(ids)
        now = self.clock()
        async with self.db.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                await conn.execute(
                    update(table)
                    .where(table.c.id.in_(ids[start : start + 500]))
                    .values(
                        status=APPLIED,
                        updated_at=now,
                        applied_execution_id=execution_id,
                        error=None,
                    )
                )

    async def failed(self, confirmation_id: str, error: str) -> None:
        """Applying an accepted decision failed: it stays accepted (a later run tries again)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.id == confirmation_id)
                .values(error=error[:2000], updated_at=self.clock())
            )

    async def obsolete(self, ids: Iterable[str], execution_id: str) -> None:
        ids = list(ids)
        async with self.db.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                await conn.execute(
                    update(table)
                    .where(table.c.id.in_(ids[start : start + 500]))
                    .values(status=OBSOLETE, updated_at=self.clock(), execution_id=execution_id)
                )

    # ------------------------------------------------------------------ used by the API

    async def find(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        where = []
        if status is not None:
            where.append(table.c.status == status)
        if kind is not None:
            where.append(table.c.kind == kind)
        if tenant is not None:
            where.append(table.c.tenant == tenant)
        cond = and_(*where) if where else None
        query = select(table).order_by(table.c.created_at, table.c.id).limit(limit).offset(offset)
        count = select(func.count()).select_from(table)
        if cond is not None:
            query, count = query.where(cond), count.where(cond)
        async with self.db.engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
            total = int((await conn.execute(count)).scalar_one())
        return rows, total

    async def get(self, confirmation_id: str) -> dict[str, Any]:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id == confirmation_id))).first()
        if row is None:
            raise NotFound(f"no confirmation {confirmation_id!r}", code="confirmation-not-found")
        return dict(row._mapping)

    async def decide(
        self,
        decisions: Mapping[str, tuple[bool, str | None]],
        *,
        actor: str,
    ) -> list[dict[str, Any]]:
        """Accept or reject pending confirmations: ``{id: (accept, choice)}``. All or nothing:
        one unknown id, one that is not pending, or a missing/foreign choice refuses the lot."""
        if not decisions:
            raise Invalid("no confirmations given", code="nothing-to-decide")
        ids = list(decisions)
        now = self.clock()
        async with self.db.engine.begin() as conn:
            rows = {r.id: r for r in await conn.execute(select(table).where(table.c.id.in_(ids)))}
            unknown = [i for i in ids if i not in rows]
            if unknown:
                raise NotFound(
                    f"no confirmation {', '.join(unknown[:10])}", code="confirmation-not-found"
                )
            not_pending = [i for i in ids if rows[i].status != PENDING]
            if not_pending:
                raise Conflict(
                    f"{len(not_pending)} confirmation(s) are not pending any more (e.g. "
                    f"{not_pending[0]}: {rows[not_pending[0]].status})",
                    code="confirmation-not-pending",
                )
            updates: list[tuple[str, dict[str, Any]]] = []
            for cid, (accept, choice) in decisions.items():
                row = rows[cid]
                values: dict[str, Any] = {
                    "status": ACCEPTED if accept else REJECTED,
                    "decided_at": now,
                    "decided_by": actor,
                    "updated_at": now,
                    "choice": None,
                }
                if row.kind == "person-match" and accept:
                    keys = [c["local_key"] for c in row.candidates or []]
                    if choice is None and len(keys) == 1:
                        choice = keys[0]
                    if choice is None:
                        raise Invalid(
                            f"confirmation {cid} has {len(keys)} candidates: say which local "
                            "person it is ('choice')",
                            code="choice-required",
                        )
                    if choice not in keys:
                        raise Invalid(
                            f"{choice!r} is not a candidate of confirmation {cid}",
                            code="choice-not-a-candidate",
                        )
                    values["choice"] = choice
                elif choice is not None:
                    raise Invalid(
                        f"confirmation {cid} ({row.kind}) takes no choice", code="no-choice-here"
                    )
                updates.append((cid, values))
            for cid, values in updates:
                await conn.execute(
                    update(table)
                    .where(table.c.id == cid, table.c.status == PENDING)
                    .values(**values)
                )
            result = [
                dict(r._mapping)
                for r in await conn.execute(select(table).where(table.c.id.in_(ids)))
            ]
        return result

    async def pending_ids(
        self, *, kind: str | None = None, tenant: str | None = None, limit: int = 10_000
    ) -> list[str]:
        query = select(table.c.id).where(table.c.status == PENDING).limit(limit)
        if kind is not None:
            query = query.where(table.c.kind == kind)
        if tenant is not None:
            query = query.where(table.c.tenant == tenant)
        async with self.db.engine.connect() as conn:
            return [r for (r,) in await conn.execute(query)]
