"""The synchronisation as the seed's eleven steps, run as one execution of the task framework.

============  ==============================================================================
Step          Here
============  ==============================================================================
1 trigger     the task run itself (``POST /tasks/schulconnex-sync/run``, or ``/sync``)
2 groups      :class:`~schulconnex_sync_service.local.Selection` from the run parameters
3 persons     ``GET /personen`` (own persons, ``sichtfreigabe=nein``) → :meth:`SyncRun.run`
4 match       :func:`~schulconnex_sync_service.matching.match_persons` (six cases)
5 write       :meth:`SyncRun._person` (PUT with revision / POST person + personenkontext)
6 import      :meth:`SyncRun._import_person` for accepted cases 4 and 5
7 groups      ``GET /gruppen`` (groups with their memberships)
8 match       :func:`~schulconnex_sync_service.matching.match_groups` and
              :func:`~schulconnex_sync_service.matching.match_memberships` (four cases each)
9 write       :meth:`SyncRun._group`, :meth:`SyncRun._memberships` (PUT/POST/DELETE);
              "Löschen": :meth:`SyncRun._deletion` for what is ours and gone locally
              (memberships, groups, then persons: personenkontext first)
10 import     :meth:`SyncRun._import_group`, :meth:`SyncRun._import_membership`
11 feedback   :class:`Report`: counts per entity, case and outcome, stored in ``sc_runs`` and
              shown by ``GET /runs/{execution_id}``; the per-record log is the execution's items;
              mailed by :mod:`schulconnex_sync_service.notify` when configured
--            the school-year change (:mod:`schulconnex_sync_service.schuljahr`) between 8 and
              9: :meth:`SyncRun._plan_change`, :meth:`SyncRun._end_groups`
============  ==============================================================================

Principles: every record is one item (``ctx.item``) with its case, action and outcome; a dry
run computes everything and writes nothing but those items (planned actions are ``skipped``
with ``detail.planned``); an update is a PUT of the full record with its current revision;
on 409 the record is read again and diffed again: a change of fields we do not manage is kept
and our change applied on top, a change of fields we manage becomes a confirmation, never an
overwrite. A POST whose outcome is unknown is followed by a lookup by referrer, never repeated
blindly. Per-record failures are failed items (retryable with "retry failed only"); a server
that stays unavailable for many records in a row aborts the run instead of failing thousands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_common.connectors import Connectors, MarkerUpdate
from mesh_common.tasks import TaskCancelled, TaskContext
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schulconnex_sync_service import local as localdb
from schulconnex_sync_service import records
from schulconnex_sync_service.client import SchulconnexClient
from schulconnex_sync_service.confirmations import (
    ACCEPTED,
    APPLIED,
    PENDING,
    REJECTED,
    ConfirmationStore,
    Question,
    subject_of,
)
from schulconnex_sync_service.errors import (
    AmbiguousWrite,
    AuthError,
    BadRequest,
    NotFoundError,
    SchulconnexError,
    StaleRevision,
    Unavailable,
)
from schulconnex_sync_service.local import (
    ImportRefused,
    LocalData,
    LocalPerson,
    Selection,
    is_our_membership_key,
)
from schulconnex_sync_service.matching import (
    GONE,
    GroupDecision,
    PersonDecision,
    PersonDecisions,
    RemotePerson,
    match_groups,
    match_memberships,
    match_persons,
)
from schulconnex_sync_service.models import runs as runs_table
from schulconnex_sync_service.models import transitions as transitions_table
from schulconnex_sync_service.schuljahr import ChangeOptions, Plan, make_plan

log = logging.getLogger("schulconnex.sync")

SYSTEM = "schulconnex"
E_PERSON, E_KONTEXT, E_GRUPPE, E_MEMBER = (
    "person",
    "personenkontext",
    "gruppe",
    "gruppenzugehoerigkeit",
)
ENTITY_LABEL = {E_PERSON: "persons", E_GRUPPE: "groups", E_MEMBER: "memberships"}
Json = dict[str, Any]
#: Dry run: the personenkontext a real run would create (memberships then show as planned).
PLANNED = "<planned>"
#: The report's "case" of a deletion (seed step 9 "Löschen"; not one of the seed's cases).
CASE_GONE = "gone"


class RunAborted(Exception):
    """The run cannot go on (credentials refused, server unavailable for many records)."""


# --------------------------------------------------------------------------- feedback


@dataclass
class Report:
    """Seed step 11: counts per entity, case and outcome, and per action."""

    cases: dict[str, Counter[str]] = field(
        default_factory=lambda: {label: Counter() for label in ENTITY_LABEL.values()}
    )
    actions: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, entity: str, case: int | str, action: str, outcome: str) -> None:
        label = ENTITY_LABEL.get(entity, entity)
        self.cases.setdefault(label, Counter())[f"{case}|{outcome}"] += 1
        self.actions[f"{action}|{outcome}"] += 1

    def as_dict(self) -> Json:
        per_case: Json = {}
        for label, counter in self.cases.items():
            table: dict[str, dict[str, int]] = {}
            for key, n in sorted(counter.items()):
                case, outcome = key.split("|")
                table.setdefault(f"case {case}", {})[outcome] = n
            per_case[label] = table
        per_action: dict[str, dict[str, int]] = {}
        for key, n in sorted(self.actions.items()):
            action, outcome = key.split("|")
            per_action.setdefault(action, {})[outcome] = n

        def total(verb: str, outcome: str = "ok") -> int:
            return sum(
                n
                for k, n in self.actions.items()
                if k.split("|")[0].endswith("." + verb) and k.split("|")[1] == outcome
            )

        return {
            "cases": per_case,
            "actions": per_action,
            "totals": {
                "created": total("create"),
                "updated": total("update"),
                "linked": total("link"),
                "deleted": total("delete"),
                "deletions_pending": sum(
                    n
                    for k, n in self.actions.items()
                    if k.split("|")[0].endswith(".confirm-delete")
                ),
                "imported": total("import"),
                "unchanged": sum(n for k, n in self.actions.items() if k.endswith("|unchanged")),
                "confirmations_pending": sum(
                    n for k, n in self.actions.items() if ".confirm" in k.split("|")[0]
                ),
                "failed": sum(n for k, n in self.actions.items() if k.endswith("|failed")),
                "planned": sum(
                    n
                    for k, n in self.actions.items()
                    if k.endswith("|skipped") and ".confirm" not in k and ".wait" not in k
                ),
            },
            "notes": self.notes[:50],
        }


# --------------------------------------------------------------------------- the run


@dataclass
class SyncDeps:
    client: SchulconnexClient
    coursedb: AsyncEngine
    connectors: Connectors
    confirmations: ConfirmationStore
    tenant: str
    vertrauensstufe: str = "Unbe"
    group_import_types: tuple[str, ...] = ("Kurs", "Sonstig")
    import_course_category: str | None = None
    width: int = 16  # records in flight at once (the client bounds the requests)
    abort_after_unavailable: int = 25
    # Seed step 9 "Löschen": what this centre created in Schulconnex and no longer has is
    # deleted after a person confirmed it ("confirm"), at once ("auto"), or never ("off").
    delete_mode: str = "confirm"
    # A personenkontext already used by services cannot be deleted directly (400/13): its
    # Löschzeitpunkt is set this many days ahead (at least a few minutes).
    kontext_deletion_days: float = 0.0


class _Outcome(Exception):
    """Internal: carries a per-record outcome out of nested helpers."""

    def __init__(self, outcome: str, action: str, error: str | None = None, **detail: Any) -> None:
        super().__init__(error or action)
        self.outcome = outcome
        self.action = action
        self.error = error
        self.detail = detail


class SyncRun:
    def __init__(self, ctx: TaskContext, deps: SyncDeps) -> None:
        self.ctx = ctx
        self.deps = deps
        self.client = deps.client
        self.links = deps.connectors.links
        self.dry = ctx.dry_run
        self.report = Report()
        self.questions: list[Question] = []
        self.asked: set[str] = set()
        self.applied_confirmations: list[str] = []
        self.obsolete_confirmations: list[str] = []
        self.markers: dict[str, list[MarkerUpdate]] = {}
        self.link_map: dict[str, dict[str, str]] = {}  # entity -> local key -> remote id
        self.pending_links: list[tuple[str, str, str]] = []
        self.pending_unlinks: list[tuple[str, str]] = []
        self.gone_persons: list[tuple[str, Json]] = []  # (local key, Personendatensatz)
        # The school-year change (schuljahr.py): the plan, what it changes, and the
        # transitions of earlier changes (old course key -> row of sc_group_transitions).
        self.plan: Plan | None = None
        self.transitions: dict[str, dict[str, Any]] = {}
        self.transition_rows: list[dict[str, Any]] = []
        self.continued_gids: set[str] = set()
        self.kontext_of_person: dict[str, str] = {}  # local person key -> kontext id
        self._unavailable_in_a_row = 0
        self.failed_persons: set[str] = set()
        self.confirmed: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ plumbing

    async def item(
        self,
        entity: str,
        key: str,
        case: int | str,
        action: str,
        outcome: str,
        error: str | None = None,
        *,
        local_key: str | None = None,
        content_hash: str | None = None,
        **detail: Any,
    ) -> None:
        full_action = f"{entity}.{action}"
        self.report.add(entity, case, full_action, outcome)
        if outcome == "failed" and entity == E_PERSON and local_key is not None:
            self.failed_persons.add(local_key)
        info = {"case": case, **{k: v for k, v in detail.items() if v is not None}}
        if self.dry:
            info["dry_run"] = True
        await self.ctx.item(key, full_action[:50], outcome, error, info)  # type: ignore[arg-type]
        if local_key is not None and not self.dry:
            status = {"ok": "ok", "unchanged": "ok", "failed": "failed"}.get(outcome, "skipped")
            remark = error or f"case {case}: {full_action} {outcome}"
            self.markers.setdefault(entity, []).append(
                MarkerUpdate(local_key, status, remark[:500], content_hash)  # type: ignore[arg-type]
            )

    async def _pool(self, items: Iterable[Any], fn: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``fn`` over ``items`` with at most ``width`` at a time; cancellable between
        records."""
        iterator = iter(items)

        async def worker() -> None:
            for entry in iterator:
                self.ctx.check_cancelled()
                await fn(entry)

        width = max(1, self.deps.width)
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(width):
                    tg.create_task(worker())
        except BaseExceptionGroup as group:
            # One worker's abort (or cancel) ends the pool; pass on that one exception.
            for exc in group.exceptions:
                if isinstance(exc, RunAborted | TaskCancelled):
                    raise exc from None
            for exc in group.exceptions[1:]:
                log.error("sync worker failed too", exc_info=exc)
            raise group.exceptions[0] from None

    def _note_success(self) -> None:
        self._unavailable_in_a_row = 0

    def _failure(self, exc: Exception) -> str:
        """The item error text; raises RunAborted when going on makes no sense."""
        if isinstance(exc, AuthError):
            raise RunAborted(f"Schulconnex refused our credentials: {exc.short()}") from exc
        if isinstance(exc, Unavailable):
            self._unavailable_in_a_row += 1
            if self._unavailable_in_a_row >= self.deps.abort_after_unavailable:
                raise RunAborted(
                    f"Schulconnex stayed unavailable for {self._unavailable_in_a_row} records in "
                    f"a row (last: {exc.short()}); run aborted"
                ) from exc
        if isinstance(exc, SchulconnexError):
            return exc.short()
        if isinstance(exc, ImportRefused):
            return f"import refused: {exc}"
        return f"{type(exc).__name__}: {exc}"

    def _link(self, entity: str, local_key: str, remote_id: str) -> None:
        current = self.link_map.setdefault(entity, {})
        if current.get(local_key) == remote_id:
            return
        current[local_key] = remote_id
        if not self.dry:
            self.pending_links.append((entity, local_key, remote_id))

    def _unlink(self, entity: str, local_key: str) -> None:
        """Forget a link (the Schulconnex record was deleted, or is not ours any more)."""
        self.link_map.setdefault(entity, {}).pop(local_key, None)
        if not self.dry:
            self.pending_unlinks.append((entity, local_key))

    async def _flush_unlinks(self) -> None:
        if self.dry or not self.pending_unlinks:
            return
        batch, self.pending_unlinks = self.pending_unlinks, []
        table = self.deps.connectors.tables.links
        by_entity: dict[str, list[str]] = {}
        for entity, local_key in batch:
            by_entity.setdefault(entity, []).append(local_key)
        async with self.deps.confirmations.db.engine.begin() as conn:
            for entity, keys in by_entity.items():
                for start in range(0, len(keys), 400):
                    await conn.execute(
                        delete(table).where(
                            table.c.system == SYSTEM,
                            table.c.tenant == self.deps.tenant,
                            table.c.entity == entity,
                            table.c.local_key.in_(keys[start : start + 400]),
                        )
                    )

    async def _flush_links(self) -> None:
        """Write the new links, a few hundred per statement.

        The connector framework's ``Links.link`` costs three statements per link; a first
        sync makes tens of thousands. This writes the framework's table with the same rules,
        set-based: a local record has one Schulconnex id per entity and tenant, and a
        Schulconnex id belongs to one local record, so a new link replaces the rows of both its
        local key and its external key. Unlinks go first (a key is never both in one run)."""
        await self._flush_unlinks()
        if self.dry or not self.pending_links:
            return
        batch, self.pending_links = self.pending_links, []
        table = self.deps.connectors.tables.links
        tenant = self.deps.tenant
        latest: dict[tuple[str, str], str] = {}
        owner: dict[tuple[str, str], str] = {}
        for entity, local_key, remote_id in batch:
            # The last word counts, for a local key and for a Schulconnex id alike.
            previous = owner.get((entity, remote_id))
            if previous is not None and previous != local_key:
                latest.pop((entity, previous), None)
            latest[(entity, local_key)] = remote_id
            owner[(entity, remote_id)] = local_key
        by_entity: dict[str, list[tuple[str, str]]] = {}
        for (entity, local_key), remote_id in latest.items():
            by_entity.setdefault(entity, []).append((local_key, remote_id))
        now = time.time()
        async with self.deps.confirmations.db.engine.begin() as conn:
            for entity, pairs in by_entity.items():
                for start in range(0, len(pairs), 400):
                    chunk = pairs[start : start + 400]
                    scope = and_(
                        table.c.system == SYSTEM, table.c.tenant == tenant, table.c.entity == entity
                    )
                    await conn.execute(
                        delete(table).where(
                            scope,
                            or_(
                                table.c.local_key.in_([lk for lk, _ in chunk]),
                                table.c.external_key.in_([ext for _, ext in chunk]),
                            ),
                        )
                    )
                    await conn.execute(
                        insert(table),
                        [
                            {
                                "system": SYSTEM,
                                "tenant": tenant,
                                "entity": entity,
                                "local_key": lk,
                                "external_key": ext,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for lk, ext in chunk
                        ],
                    )

    async def _flush_markers(self) -> None:
        """Record every local record's outcome in the framework's sync markers.

        Same rules as ``SyncMarkers.mark_many`` (``ok`` sets the last success and the content
        hash; a failure or skip keeps the previous ones), written as one compiled upsert per
        outcome kind executed for all rows at once; ``mark_many`` renders a multi-row VALUES
        clause per 500 rows, which takes longer than the whole sync of those records."""
        if not self.markers:
            return
        table = self.deps.connectors.tables.markers
        now = time.time()
        dialect = self.deps.confirmations.db.engine.dialect.name
        from sqlalchemy.dialects import postgresql, sqlite

        upsert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        rows: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for entity, updates in self.markers.items():
            for u in updates:
                ok = u.status == "ok"
                rows[ok].append(
                    {
                        "system": SYSTEM,
                        "tenant": self.deps.tenant,
                        "entity": entity,
                        "local_key": u.local_key,
                        "status": u.status,
                        "last_sync_at": now,
                        "last_success_at": now if ok else None,
                        "remark": u.remark,
                        "content_hash": u.content_hash if ok else None,
                        "execution_id": self.ctx.execution_id,
                    }
                )
        self.markers = {}
        keys = [table.c.system, table.c.tenant, table.c.entity, table.c.local_key]
        async with self.deps.confirmations.db.engine.begin() as conn:
            for ok, batch in rows.items():
                if not batch:
                    continue
                stmt = upsert(table)
                changing = ["status", "last_sync_at", "remark", "execution_id"]
                if ok:
                    changing += ["last_success_at", "content_hash"]
                stmt = stmt.on_conflict_do_update(
                    index_elements=keys, set_={c: stmt.excluded[c] for c in changing}
                )
                for start in range(0, len(batch), 2000):
                    await conn.execute(stmt, batch[start : start + 2000])

    def ask(self, q: Question) -> None:
        self.asked.add(q.subject)
        if not self.dry:
            self.questions.append(q)

    # ------------------------------------------------------------------ the eleven steps

    async def run(
        self,
        selection: Selection,
        *,
        change: ChangeOptions | None = None,
        plan_id: str | None = None,
    ) -> Json:
        """The eleven steps for ``selection``; with ``change`` the school-year change
        (ablauf-schuljahrwechsel.md, see schuljahr.py): ``selection`` is the new period, the old
        period's groups are continued or ended between steps 8 and 9, and a real run needs
        ``plan_id``, a dry run whose plan is still the same."""
        started = time.time()
        deps = self.deps
        self.selection = selection
        await self._start_report(selection, started)
        try:
            # Step 2: the selection (and all local persons for matching).
            data = await localdb.load(deps.coursedb, selection)
            self.transitions = await self._load_transitions()
            self._drop_transitioned(data)
            self.confirmed = await deps.confirmations.by_subject(deps.tenant)
            for entity in (E_PERSON, E_KONTEXT, E_GRUPPE, E_MEMBER):
                self.link_map[entity] = await self.links.mapping(SYSTEM, entity, tenant=deps.tenant)
            # Step 3: the tenant's persons with their personenkontexte.
            remote = await self.client.list_personen(sichtfreigabe="nein")
            # Steps 4-6.
            await self._persons(data, remote)
            await self._flush_links()
            # Step 7: the tenant's groups with their memberships.
            gruppen = await self.client.list_gruppen()
            if change is not None:
                # School-year change: which old groups are continued (re-linked to their
                # successor, so step 9 updates them) and which end.
                await self._plan_change(change, plan_id, gruppen)
            # Steps 8-10 (with the deletions of step 9: memberships, then groups).
            await self._groups(data, gruppen)
            if change is not None:
                # Ended groups last: nothing is deleted before the new period exists.
                await self._end_groups(gruppen)
            # Step 9 for persons: after the memberships (a personenkontext in use by a
            # membership cannot be deleted directly) and after everything new exists.
            await self._pool(self.gone_persons, lambda g: self._gone_person(g[0], g[1]))
            # Groups of earlier changes whose deletion is due.
            await self._due_deletions()
            await self._flush_links()
        except RunAborted as exc:
            self.report.notes.append(str(exc))
            await self._finish(started, "failed", str(exc))
            raise
        except TaskCancelled:
            await self._finish(started, "cancelled", "cancelled on request")
            raise
        except BaseException as exc:
            await self._finish(started, "failed", f"{type(exc).__name__}: {exc}")
            raise
        await self._finish(started, "finished", None)
        return self.report.as_dict()

    async def _start_report(self, selection: Selection, started: float) -> None:
        async with self.deps.confirmations.db.engine.begin() as conn:
            await conn.execute(
                insert(runs_table).values(
                    execution_id=self.ctx.execution_id,
                    tenant=self.deps.tenant,
                    dry_run=self.dry,
                    started_at=started,
                    status="running",
                    selection=selection.as_dict(),
                    summary={},
                )
            )

    async def _finish(self, started: float, status: str, message: str | None) -> None:
        """Step 11 and the bookkeeping: links, markers, confirmations, the stored feedback."""
        deps = self.deps
        try:
            await self._flush_links()
            await self._flush_transitions()
            if not self.dry:
                execution_id = self.ctx.execution_id
                await deps.confirmations.ask(deps.tenant, self.questions, execution_id)
                if status == "finished" and self.ctx.only_keys is None:
                    await deps.confirmations.retire(
                        deps.tenant,
                        kinds=(
                            "person-match",
                            "person-import",
                            "group-import",
                            "membership-import",
                            "delete",
                        ),
                        keep=self.asked,
                        execution_id=execution_id,
                    )
                await deps.confirmations.applied(self.applied_confirmations, execution_id)
                await deps.confirmations.obsolete(self.obsolete_confirmations, execution_id)
                await self._flush_markers()
        finally:
            summary = self.report.as_dict()
            summary["client"] = {
                "requests": self.client.stats.requests,
                "retries": self.client.stats.retries,
                "token_fetches": self.client.stats.token_fetches,
                "token_renewals_after_401": self.client.stats.token_refreshes_after_401,
            }
            summary["seconds"] = round(time.time() - started, 3)
            if self.plan is not None:
                summary["schuljahrwechsel"] = self.plan.as_dict()
            async with deps.confirmations.db.engine.begin() as conn:
                await conn.execute(
                    update(runs_table)
                    .where(runs_table.c.execution_id == self.ctx.execution_id)
                    .values(
                        finished_at=time.time(), status=status, summary=summary, message=message
                    )
                )
            log.info(
                "schulconnex sync %s",
                status,
                extra={"execution_id": self.ctx.execution_id, "totals": summary["totals"]},
            )

    # ------------------------------------------------------------------ persons (3-6)

    def _person_decisions(self) -> PersonDecisions:
        d = PersonDecisions()
        for row in self.confirmed.values():
            if row["entity"] != E_PERSON:
                continue
            if row["kind"] == "person-match":
                if row["status"] == ACCEPTED and row["choice"]:
                    d.accepted_matches[row["remote_id"]] = row["choice"]
                elif row["status"] == REJECTED:
                    for c in row["candidates"] or []:
                        d.rejected_pairs.add((row["remote_id"], c["local_key"]))
            elif row["kind"] == "person-import":
                if row["status"] == ACCEPTED:
                    d.accepted_imports.add(row["remote_id"])
                elif row["status"] == REJECTED:
                    d.rejected_imports.add(row["remote_id"])
        return d

    async def _persons(self, data: LocalData, remote: list[Json]) -> None:
        by_id = {d["person"]["id"]: d for d in remote}
        decisions = self._person_decisions()
        plan = match_persons(
            data.persons,
            (RemotePerson.of(d) for d in remote),
            self.link_map[E_PERSON],
            data.scope_persons,
            decisions,
        )
        imports: list[PersonDecision] = []
        self.gone_persons = [(key, by_id[rid]) for key, rid in plan.gone]

        async def handle(dec: PersonDecision) -> None:
            if dec.case in (1, 2, 3) and dec.local_key is not None:
                await self._matched_person(
                    dec, data.persons[dec.local_key], by_id[dec.remote_id or ""]
                )
            elif dec.case == 3:
                await self._ask_match(dec, data, by_id[dec.remote_id or ""])
            elif dec.case in (4, 5):
                if dec.remote_id in decisions.accepted_imports:
                    imports.append(dec)
                elif dec.remote_id in decisions.rejected_imports:
                    self.report.add(E_PERSON, dec.case, "person.import-rejected", "skipped")
                else:
                    await self._ask_import(dec, by_id[dec.remote_id or ""])
            elif dec.case == 6:
                await self._create_person(data.persons[dec.local_key or ""])
            elif dec.case == 0:
                key = dec.local_key or ""
                if self.ctx.wanted(key):
                    await self.item(
                        E_PERSON, key, 3, "wait", "skipped", None, local_key=key, note=dec.note
                    )

        await self._pool(plan.decisions, handle)
        # Step 6: import what a person confirmed (cases 4 and 5).
        await self._pool(imports, lambda dec: self._import_person(dec, by_id[dec.remote_id]))

    async def _matched_person(self, dec: PersonDecision, lp: LocalPerson, datensatz: Json) -> None:
        key = lp.key
        rid = datensatz["person"]["id"]
        if not dec.in_scope:
            # Recognised but not selected: remember the match, write nothing remotely.
            if self.link_map[E_PERSON].get(key) != rid:
                if self.ctx.wanted(key):
                    self._link(E_PERSON, key, rid)
                    await self.item(
                        E_PERSON,
                        key,
                        dec.case,
                        "link",
                        "skipped" if self.dry else "ok",
                        remote_id=rid,
                        via=dec.via,
                        planned="link" if self.dry else None,
                        note="not in the selection: linked only",
                    )
            else:
                self.report.add(E_PERSON, dec.case, "person.out-of-selection", "unchanged")
            return
        if not self.ctx.wanted(key):
            return
        subject = subject_of("person-match", E_PERSON, rid)
        confirmation = self.confirmed.get(subject)
        earlier = self.confirmed.get(subject_of("person-import", E_PERSON, rid))
        if earlier is not None and earlier["status"] == ACCEPTED and not self.dry:
            # Imported by a run whose remaining steps failed: it is linked now, so done.
            self.applied_confirmations.append(earlier["id"])
        try:
            outcome, action, detail = await self._sync_person(lp, datensatz, dec.case)
            if dec.case == 3 and confirmation is not None and not self.dry:
                self.applied_confirmations.append(confirmation["id"])
            self._note_success()
            await self.item(
                E_PERSON,
                key,
                dec.case,
                action,
                outcome,
                local_key=key,
                content_hash=records.content_hash(records.person_fields(lp)),
                remote_id=rid,
                via=dec.via,
                **detail,
            )
        except _Outcome as o:
            await self.item(
                E_PERSON,
                key,
                dec.case,
                o.action,
                o.outcome,
                o.error,
                local_key=key,
                remote_id=rid,
                via=dec.via,
                **o.detail,
            )
        except (SchulconnexError, ImportRefused) as exc:
            await self.item(
                E_PERSON,
                key,
                dec.case,
                "update",
                "failed",
                self._failure(exc),
                local_key=key,
                remote_id=rid,
                via=dec.via,
            )

    async def _sync_person(
        self, lp: LocalPerson, datensatz: Json, case: int
    ) -> tuple[str, str, Json]:
        """Step 5 for one matched person: link, PUT the person if it differs, ensure our
        personenkontext (POST or PUT). Returns (outcome, action, detail)."""
        person = datensatz["person"]
        rid = person["id"]
        desired = records.person_fields(lp)
        changed = records.diff(person, desired)
        detail: Json = {"fields": changed or None}
        newly_linked = self.link_map[E_PERSON].get(lp.key) != rid
        self._link(E_PERSON, lp.key, rid)
        person_result: str | None = None
        if changed:
            if self._conflict_blocks(E_PERSON, rid, records.content_hash(desired), detail):
                raise _Outcome("skipped", "conflict", None, **detail)
            if self.dry:
                person_result = "update"
            else:
                person_result = await self._put(
                    E_PERSON,
                    rid,
                    person,
                    desired,
                    put=lambda body: self.client.update_person(rid, body),
                    fetch=lambda: self._fetch_person(rid),
                    local_key=lp.key,
                )
        kontext_result = await self._ensure_kontext(
            lp, rid, datensatz.get("personenkontexte") or []
        )
        detail["kontext"] = kontext_result
        if "conflict" in (person_result, kontext_result):
            return "skipped", "conflict", detail
        wrote = person_result in ("updated", "update") or kontext_result in (
            "created",
            "create",
            "updated",
            "update",
        )
        if self.dry:
            if wrote or newly_linked:
                planned = "update" if wrote else "link"
                return "skipped", planned, {**detail, "planned": planned}
            return "unchanged", "check", detail
        if wrote:
            return "ok", "update", detail
        return ("ok", "link", detail) if newly_linked else ("unchanged", "check", detail)

    async def _fetch_person(self, rid: str) -> Json:
        return (await self.client.get_person(rid))["person"]  # type: ignore[no-any-return]

    async def _ensure_kontext(self, lp: LocalPerson, rid: str, kontexte: list[Json]) -> str | None:
        kontext = records.find_kontext(
            kontexte, lp, self.link_map[E_KONTEXT].get(lp.key), orgid=None
        )
        if kontext is None:
            if self.dry:
                self.kontext_of_person[lp.key] = PLANNED
                return "create"
            created = await self._create_kontext(lp, rid)
            self.kontext_of_person[lp.key] = created["id"]
            return "created"
        self.kontext_of_person[lp.key] = kontext["id"]
        self._link(E_KONTEXT, lp.key, kontext["id"])
        desired = records.kontext_fields(lp)
        if not records.diff(kontext, desired):
            return "unchanged"
        if self.dry:
            return "update"
        kid = kontext["id"]
        return await self._put(
            E_KONTEXT,
            kid,
            {k: v for k, v in kontext.items() if k != "beziehungen"},
            desired,
            put=lambda body: self.client.update_personenkontext(
                kid, {k: v for k, v in body.items() if k != "beziehungen"}
            ),
            fetch=lambda: self._fetch_kontext(kid),
            local_key=lp.key,
        )

    async def _fetch_kontext(self, kid: str) -> Json:
        datensatz = await self.client.get_personenkontext(kid)
        return datensatz["personenkontexte"][0]  # type: ignore[no-any-return]

    async def _put(
        self,
        entity: str,
        remote_id: str,
        base: Json,
        desired: records.Fields,
        *,
        put: Callable[[Json], Awaitable[Json]],
        fetch: Callable[[], Awaitable[Json]],
        local_key: str,
    ) -> str:
        """PUT the full record with its revision; on 409 read it again and diff again.

        Returns "updated", "unchanged" (someone made the same change) or "conflict" (a third
        party changed a field we manage: a confirmation, no overwrite)."""
        try:
            await put(records.merged(base, desired))
            return "updated"
        except StaleRevision:
            pass
        fresh = await fetch()
        if not records.diff(fresh, desired):
            return "unchanged"
        theirs = {p: records.get_path(fresh, p) for p in desired}
        before = {p: records.get_path(base, p) for p in desired}
        if theirs == before:
            # Only fields we do not manage changed: keep them, apply ours on top, once.
            try:
                await put(records.merged(fresh, desired))
                return "updated"
            except StaleRevision:
                raise _Outcome(
                    "failed",
                    "update",
                    "the record changed again while we retried (409 twice); retry later",
                ) from None
        changed = [".".join(p) for p in desired if theirs[p] != before[p]]
        self.ask(
            Question(
                kind="conflict",
                entity=entity,
                case_no=1,
                subject=subject_of("conflict", entity, remote_id),
                reason=(
                    "changed in Schulconnex while we were updating it (HTTP 409); fields: "
                    + ", ".join(changed)
                ),
                remote_id=remote_id,
                local_key=local_key,
                remote={
                    "fields": {
                        ".".join(p): {"schulconnex": theirs[p], "local": desired[p]}
                        for p in desired
                        if theirs[p] != desired[p]
                    },
                    "revision": fresh.get("revision"),
                },
                remote_revision=fresh.get("revision"),
                local_hash=records.content_hash(desired),
            )
        )
        return "conflict"

    def _conflict_blocks(self, entity: str, remote_id: str, local_hash: str, detail: Json) -> bool:
        """A pending conflict holds the record back; a rejected one keeps Schulconnex's values
        while the local record is unchanged; an accepted one lets the update through."""
        row = self.confirmed.get(subject_of("conflict", entity, remote_id))
        if row is None:
            return False
        if row["status"] == PENDING:
            self.asked.add(row["subject"])
            detail["note"] = "waiting for a decision on a conflicting change"
            return True
        if row["status"] == REJECTED and row["local_hash"] == local_hash:
            detail["note"] = "conflict decided: Schulconnex's values are kept"
            return True
        if row["status"] == ACCEPTED and not self.dry:
            self.applied_confirmations.append(row["id"])
        elif row["status"] == REJECTED and not self.dry:
            self.obsolete_confirmations.append(row["id"])  # the local record changed since
        return False

    async def _create_person(self, lp: LocalPerson) -> None:
        """Case 6: POST /personen, then POST /personen/{id}/personenkontexte."""
        key = lp.key
        if not self.ctx.wanted(key):
            return
        desired = records.person_fields(lp)
        if self.dry:
            self.kontext_of_person[key] = PLANNED
            await self.item(E_PERSON, key, 6, "create", "skipped", local_key=key, planned="create")
            return
        try:
            person = await self._post_person(lp)
            self._link(E_PERSON, key, person["id"])
            created = await self._create_kontext(lp, person["id"])
            self.kontext_of_person[key] = created["id"]
            self._note_success()
            await self.item(
                E_PERSON,
                key,
                6,
                "create",
                "ok",
                local_key=key,
                content_hash=records.content_hash(desired),
                remote_id=person["id"],
            )
        except (SchulconnexError, ImportRefused) as exc:
            await self.item(E_PERSON, key, 6, "create", "failed", self._failure(exc), local_key=key)

    async def _post_person(self, lp: LocalPerson) -> Json:
        try:
            return await self.client.create_person(
                records.new_person(lp, vertrauensstufe=self.deps.vertrauensstufe)
            )
        except AmbiguousWrite:
            # Did it arrive? Look for our referrer (the filter is "contains": compare exactly).
            found = [
                d["person"]
                for d in await self.client.list_personen(referrer=lp.key)
                if d["person"].get("referrer") == lp.key
            ]
            if len(found) == 1:
                return found[0]  # type: ignore[no-any-return]
            raise

    async def _create_kontext(self, lp: LocalPerson, person_id: str) -> Json:
        try:
            kontext = await self.client.create_personenkontext(person_id, records.new_kontext(lp))
        except (AmbiguousWrite, StaleRevision):
            # Unknown outcome, or 409: a kontext with our role exists already. Find it.
            kontexte = await self.client.list_personenkontexte_of(person_id)
            found = records.find_kontext(kontexte, lp, None, None)
            if found is None:
                raise
            kontext = dict(found)
        self._link(E_KONTEXT, lp.key, kontext["id"])
        return kontext

    async def _ask_match(self, dec: PersonDecision, data: LocalData, datensatz: Json) -> None:
        rid = dec.remote_id or ""
        key = f"schulconnex:person:{rid}"
        if not self.ctx.wanted(key):
            return
        candidates = [
            {
                "local_key": k,
                "label": data.persons[k].label(),
                "in_selection": k in data.scope_persons,
            }
            for k in dec.candidates
        ]
        self.ask(
            Question(
                kind="person-match",
                entity=E_PERSON,
                case_no=3,
                subject=subject_of("person-match", E_PERSON, rid),
                reason="the attributes present agree, but some are missing or the match is not "
                "unique: which local person is it?",
                remote_id=rid,
                candidates=candidates,
                remote=records.summary_of_person(datensatz),
                remote_revision=datensatz["person"].get("revision"),
            )
        )
        await self.item(
            E_PERSON,
            key,
            3,
            "confirm-match",
            "skipped",
            remote_id=rid,
            candidates=[c["local_key"] for c in candidates],
        )

    async def _ask_import(self, dec: PersonDecision, datensatz: Json) -> None:
        rid = dec.remote_id or ""
        key = f"schulconnex:person:{rid}"
        if not self.ctx.wanted(key):
            return
        self.ask(
            Question(
                kind="person-import",
                entity=E_PERSON,
                case_no=dec.case,
                subject=subject_of("person-import", E_PERSON, rid),
                reason=(
                    "it carries one of our keys, which does not exist here (restored backup?)"
                    if dec.case == 4
                    else "no local person matches it"
                )
                + ": import it into the course database?",
                remote_id=rid,
                remote=records.summary_of_person(datensatz),
                remote_revision=datensatz["person"].get("revision"),
            )
        )
        await self.item(
            E_PERSON,
            key,
            dec.case,
            "confirm-import",
            "skipped",
            remote_id=rid,
            note=dec.note or None,
        )

    async def _import_person(self, dec: PersonDecision, datensatz: Json) -> None:
        """Step 6: create the local record, link it, and put our referrer on the Schulconnex
        person and its personenkontext (so later runs find it by key even without the link)."""
        rid = dec.remote_id or ""
        key = f"schulconnex:person:{rid}"
        if not self.ctx.wanted(key):
            return
        confirmation = self.confirmed.get(subject_of("person-import", E_PERSON, rid))
        kontexte = datensatz.get("personenkontexte") or []
        if self.dry:
            try:
                kind = localdb.import_kind(datensatz["person"], kontexte)
            except ImportRefused as exc:
                await self.item(
                    E_PERSON,
                    key,
                    dec.case,
                    "import",
                    "failed",
                    f"import refused: {exc}",
                    remote_id=rid,
                )
                return
            await self.item(
                E_PERSON,
                key,
                dec.case,
                "import",
                "skipped",
                remote_id=rid,
                planned="import",
                import_as=kind,
            )
            return
        try:
            async with self.deps.coursedb.begin() as conn:
                lp = await localdb.import_person(conn, datensatz["person"], kontexte)
            self._link(E_PERSON, lp.key, rid)
            _, _, detail = await self._sync_person(lp, datensatz, dec.case)
            if confirmation is not None:
                self.applied_confirmations.append(confirmation["id"])
            self._note_success()
            await self.item(
                E_PERSON,
                key,
                dec.case,
                "import",
                "ok",
                remote_id=rid,
                imported_as=lp.key,
                fields=detail.get("fields"),
            )
        except (SchulconnexError, ImportRefused, _Outcome) as exc:
            error = (exc.error or str(exc)) if isinstance(exc, _Outcome) else self._failure(exc)
            if confirmation is not None:
                await self.deps.confirmations.failed(confirmation["id"], error)
            await self.item(E_PERSON, key, dec.case, "import", "failed", error, remote_id=rid)

    # ------------------------------------------------------------------ groups (7-10)

    async def _groups(self, data: LocalData, gruppen: list[Json]) -> None:
        by_id = {d["gruppe"]["id"]: d for d in gruppen}
        accepted: set[str] = set()
        rejected: set[str] = set()
        for row in self.confirmed.values():
            if row["kind"] == "group-import":
                (
                    accepted
                    if row["status"] == ACCEPTED
                    else rejected
                    if row["status"] == REJECTED
                    else set()
                ).add(row["remote_id"])
        decisions, _stale = match_groups(
            data.groups,
            data.group_keys,
            (d["gruppe"] for d in gruppen),
            self.link_map[E_GRUPPE],
            self.deps.group_import_types,
            rejected,
        )
        imports: list[GroupDecision] = []
        gone: list[GroupDecision] = []
        # Computed once for every group's membership matching (not once per group).
        self._members_of: dict[str, list[localdb.LocalMembership]] = {}
        for m in data.memberships.values():
            self._members_of.setdefault(m.group_key, []).append(m)
        self._member_of_remote = {ext: key for key, ext in self.link_map[E_MEMBER].items()}
        self._person_of_kontext = {kt: pk for pk, kt in self.kontext_of_person.items()}
        # Groups other groups refer to (referenzgruppen): deleting one needs a person's word.
        self._referenced: dict[str, list[str]] = {}
        for d in gruppen:
            for ref in d["gruppe"].get("referenzgruppen") or []:
                self._referenced.setdefault(str(ref.get("grupid")), []).append(d["gruppe"]["id"])
        member_jobs: list[tuple[str, str | None, list[Json]]] = []  # (group key, gid, remote zs)

        async def handle(dec: GroupDecision) -> None:
            if dec.case == 1 and dec.local_key is not None:
                datensatz = by_id[dec.remote_id or ""]
                if not dec.in_scope:
                    if self.link_map[E_GRUPPE].get(dec.local_key) != dec.remote_id:
                        self._link(E_GRUPPE, dec.local_key, dec.remote_id or "")
                    self.report.add(E_GRUPPE, 1, "gruppe.out-of-selection", "unchanged")
                    return
                gid = await self._group(dec, data.groups[dec.local_key], datensatz["gruppe"])
                member_jobs.append(
                    (dec.local_key, gid, datensatz.get("gruppenzugehoerigkeiten") or [])
                )
            elif dec.case == 4 and dec.local_key is not None:
                gid = await self._create_group(data.groups[dec.local_key])
                member_jobs.append((dec.local_key, gid, []))
            elif dec.case == GONE and dec.local_key is not None:
                gone.append(dec)
            elif dec.case in (2, 3):
                if not dec.in_scope:
                    self.report.add(E_GRUPPE, dec.case, "gruppe.not-importable", "skipped")
                elif dec.remote_id in accepted:
                    imports.append(dec)
                elif dec.remote_id in rejected:
                    self.report.add(E_GRUPPE, dec.case, "gruppe.import-rejected", "skipped")
                else:
                    await self._ask_group_import(dec, by_id[dec.remote_id or ""])

        await self._pool(decisions, handle)
        # Memberships of every selected group (step 8 second half, step 9).
        await self._pool(member_jobs, lambda job: self._memberships(data, job[0], job[1], job[2]))
        # Step 9 "Löschen": groups whose course was deleted here (after everything new exists).
        await self._pool(gone, lambda dec: self._gone_group(dec, by_id[dec.remote_id]))
        # Step 10: import accepted groups (with the memberships of known persons).
        await self._pool(imports, lambda dec: self._import_group(dec, by_id[dec.remote_id]))

    async def _group(self, dec: GroupDecision, lg: localdb.LocalGroup, gruppe: Json) -> str | None:
        key = lg.key
        gid = str(gruppe["id"])
        newly_linked = self.link_map[E_GRUPPE].get(key) != gid
        self._link(E_GRUPPE, key, gid)
        if not self.ctx.wanted(key):
            return gid
        desired = records.group_fields(lg)
        changed = records.diff(gruppe, desired)
        detail: Json = {"remote_id": gid, "via": dec.via, "fields": changed or None}
        chash = records.content_hash(desired)
        try:
            if not changed:
                outcome, action = (
                    ("ok", "link") if newly_linked and not self.dry else ("unchanged", "check")
                )
                if self.dry and newly_linked:
                    outcome, action, detail["planned"] = "skipped", "link", "link"
            elif self._conflict_blocks(E_GRUPPE, gid, chash, detail):
                outcome, action = "skipped", "conflict"
            elif self.dry:
                outcome, action, detail["planned"] = "skipped", "update", "update"
            else:
                result = await self._put(
                    E_GRUPPE,
                    gid,
                    gruppe,
                    desired,
                    put=lambda body: self.client.update_gruppe(gid, body),
                    fetch=lambda: self._fetch_gruppe(gid),
                    local_key=key,
                )
                outcome, action = {
                    "updated": ("ok", "update"),
                    "unchanged": ("unchanged", "check"),
                    "conflict": ("skipped", "conflict"),
                }[result]
            self._note_success()
            await self.item(
                E_GRUPPE, key, 1, action, outcome, local_key=key, content_hash=chash, **detail
            )
        except _Outcome as o:
            await self.item(E_GRUPPE, key, 1, o.action, o.outcome, o.error, local_key=key, **detail)
        except SchulconnexError as exc:
            await self.item(
                E_GRUPPE, key, 1, "update", "failed", self._failure(exc), local_key=key, **detail
            )
        return gid

    async def _fetch_gruppe(self, gid: str) -> Json:
        return (await self.client.get_gruppe(gid))["gruppe"]  # type: ignore[no-any-return]

    async def _create_group(self, lg: localdb.LocalGroup) -> str | None:
        key = lg.key
        if self.dry:
            if self.ctx.wanted(key):
                await self.item(
                    E_GRUPPE, key, 4, "create", "skipped", local_key=key, planned="create"
                )
            return None
        if not self.ctx.wanted(key):
            return None
        try:
            try:
                created = await self.client.create_gruppe(records.new_group(lg))
            except AmbiguousWrite:
                found = [
                    d["gruppe"]
                    for d in await self.client.list_gruppen(referrer=key)
                    if d["gruppe"].get("referrer") == key
                ]
                if len(found) != 1:
                    raise
                created = found[0]
            self._link(E_GRUPPE, key, created["id"])
            self._note_success()
            await self.item(
                E_GRUPPE,
                key,
                4,
                "create",
                "ok",
                local_key=key,
                content_hash=records.content_hash(records.group_fields(lg)),
                remote_id=created["id"],
            )
            return created["id"]  # type: ignore[no-any-return]
        except SchulconnexError as exc:
            await self.item(E_GRUPPE, key, 4, "create", "failed", self._failure(exc), local_key=key)
            return None

    async def _ask_group_import(self, dec: GroupDecision, datensatz: Json) -> None:
        gid = dec.remote_id or ""
        key = f"schulconnex:gruppe:{gid}"
        if not self.ctx.wanted(key):
            return
        gruppe = datensatz["gruppe"]
        self.ask(
            Question(
                kind="group-import",
                entity=E_GRUPPE,
                case_no=dec.case,
                subject=subject_of("group-import", E_GRUPPE, gid),
                reason=(
                    "it carries one of our course keys, which does not exist here"
                    if dec.case == 2
                    else "no course matches it (created in Schulconnex or by another system)"
                )
                + ": import it as a course?",
                remote_id=gid,
                remote=records.summary_of_group(
                    gruppe, len(datensatz.get("gruppenzugehoerigkeiten") or [])
                ),
                remote_revision=gruppe.get("revision"),
            )
        )
        await self.item(
            E_GRUPPE,
            key,
            dec.case,
            "confirm-import",
            "skipped",
            remote_id=gid,
            note=dec.note or None,
        )

    async def _import_group(self, dec: GroupDecision, datensatz: Json) -> None:
        gid = dec.remote_id or ""
        key = f"schulconnex:gruppe:{gid}"
        if not self.ctx.wanted(key):
            return
        confirmation = self.confirmed.get(subject_of("group-import", E_GRUPPE, gid))
        gruppe = datensatz["gruppe"]
        members = datensatz.get("gruppenzugehoerigkeiten") or []
        if self.dry:
            await self.item(
                E_GRUPPE, key, dec.case, "import", "skipped", remote_id=gid, planned="import"
            )
            return
        try:
            person_of_kontext = {kt: pk for pk, kt in self.link_map[E_KONTEXT].items()}
            async with self.deps.coursedb.begin() as conn:
                lg = await localdb.import_group(
                    conn,
                    {**gruppe, "_members": members},
                    category_code=self.deps.import_course_category,
                )
                imported_members: list[tuple[str, str]] = []
                persons = await localdb.load_persons(conn) if members else {}
                for z in members:
                    pk = person_of_kontext.get(z.get("ktid", ""))
                    if pk is None or pk not in persons:
                        continue  # its person is not known here: stays in Schulconnex only
                    mkey = await localdb.import_membership(
                        conn,
                        course_id=lg.course_id,
                        person=persons[pk],
                        rollen=z.get("rollen") or [],
                    )
                    imported_members.append((mkey, z["id"]))
            self._link(E_GRUPPE, lg.key, gid)
            for mkey, zid in imported_members:
                self._link(E_MEMBER, mkey, zid)
            # Our key on the Schulconnex group, so later runs find it by referrer too.
            if gruppe.get("referrer") != lg.key:
                await self._put(
                    E_GRUPPE,
                    gid,
                    gruppe,
                    {("referrer",): lg.key},
                    put=lambda body: self.client.update_gruppe(gid, body),
                    fetch=lambda: self._fetch_gruppe(gid),
                    local_key=lg.key,
                )
            if confirmation is not None:
                self.applied_confirmations.append(confirmation["id"])
            self._note_success()
            await self.item(
                E_GRUPPE,
                key,
                dec.case,
                "import",
                "ok",
                remote_id=gid,
                imported_as=lg.key,
                course_number=lg.number,
                memberships=len(imported_members),
            )
        except (SchulconnexError, ImportRefused, _Outcome) as exc:
            error = (exc.error or str(exc)) if isinstance(exc, _Outcome) else self._failure(exc)
            if confirmation is not None:
                await self.deps.confirmations.failed(confirmation["id"], error)
            await self.item(E_GRUPPE, key, dec.case, "import", "failed", error, remote_id=gid)

    # ------------------------------------------------------------------ memberships (8-10)

    async def _memberships(
        self, data: LocalData, group_key: str, gid: str | None, remote: list[Json]
    ) -> None:
        local_members = self._members_of.get(group_key, [])
        if gid is None:
            # The group could not be created (or a dry run): its memberships cannot be either.
            for m in local_members:
                if m.active and self.ctx.wanted(m.key):
                    if self.dry:
                        await self.item(
                            E_MEMBER,
                            m.key,
                            4,
                            "create",
                            "skipped",
                            local_key=m.key,
                            planned="create",
                        )
                    else:
                        await self.item(
                            E_MEMBER,
                            m.key,
                            4,
                            "create",
                            "failed",
                            "its group does not exist in Schulconnex (see the group's record)",
                            local_key=m.key,
                        )
            return
        decisions = match_memberships(
            group_key,
            local_members,
            remote,
            self.link_map[E_MEMBER],
            self.kontext_of_person,
            local_of_remote=self._member_of_remote,
            person_of_kontext=self._person_of_kontext,
            loaded_kinds=self._loaded_member_kinds(),
        )
        by_id = {z["id"]: z for z in remote}
        by_key = {m.key: m for m in local_members}
        for dec in decisions:
            self.ctx.check_cancelled()
            if dec.case == 1 and dec.local_key is not None:
                await self._membership(dec, by_key[dec.local_key], gid, by_id[dec.remote_id or ""])
            elif dec.case == 4 and dec.local_key is not None:
                await self._create_membership(by_key[dec.local_key], gid)
            elif dec.case == GONE and dec.local_key is not None:
                await self._gone_membership(
                    dec.local_key, gid, group_key, by_id[dec.remote_id or ""]
                )
            elif dec.case in (2, 3):
                await self._membership_question(dec, gid, by_id[dec.remote_id or ""], group_key)

    async def _membership(self, dec: Any, lm: localdb.LocalMembership, gid: str, z: Json) -> None:
        key = lm.key
        zid = z["id"]
        if not self.ctx.wanted(key):
            return
        newly_linked = self.link_map[E_MEMBER].get(key) != zid
        if lm.active:
            self._link(E_MEMBER, key, zid)
        ktid = self.kontext_of_person.get(lm.person_key) or z.get("ktid")
        detail: Json = {"remote_id": zid, "via": dec.via}
        try:
            if not lm.active:
                # The registration was cancelled: the membership goes (one DELETE per record),
                # but only one that is ours: found by our link or our referrer. One another
                # system created for the same person (natural key) is left alone.
                if dec.via == "natural-key" or self.deps.delete_mode == "off":
                    note = (
                        "the registration was cancelled, but this membership was created by "
                        "another system: not ours to delete"
                        if dec.via == "natural-key"
                        else "deleting in Schulconnex is switched off (SYNC_DELETE_MODE=off)"
                    )
                    await self.item(
                        E_MEMBER, key, 1, "delete", "skipped", local_key=key, note=note, **detail
                    )
                    return
                if self.dry:
                    await self.item(
                        E_MEMBER,
                        key,
                        1,
                        "delete",
                        "skipped",
                        local_key=key,
                        planned="delete",
                        **detail,
                    )
                    return
                await self._delete_membership(zid, z)
                self.link_map[E_MEMBER].pop(key, None)
                if not newly_linked:
                    await self.links.unlink(SYSTEM, E_MEMBER, key, tenant=self.deps.tenant)
                await self.item(E_MEMBER, key, 1, "delete", "ok", local_key=key, **detail)
                return
            desired = records.membership_fields(lm, str(ktid))
            changed = records.diff(z, desired)
            detail["fields"] = changed or None
            chash = records.content_hash(desired)
            if not changed:
                if newly_linked:
                    outcome, action = ("skipped", "link") if self.dry else ("ok", "link")
                else:
                    outcome, action = "unchanged", "check"
            elif self._conflict_blocks(E_MEMBER, zid, chash, detail):
                outcome, action = "skipped", "conflict"
            elif self.dry:
                outcome, action, detail["planned"] = "skipped", "update", "update"
            else:
                result = await self._put(
                    E_MEMBER,
                    zid,
                    z,
                    desired,
                    put=lambda body: self.client.update_gruppenzugehoerigkeit(zid, body),
                    fetch=lambda: self._fetch_membership(zid),
                    local_key=key,
                )
                outcome, action = {
                    "updated": ("ok", "update"),
                    "unchanged": ("unchanged", "check"),
                    "conflict": ("skipped", "conflict"),
                }[result]
            self._note_success()
            await self.item(
                E_MEMBER, key, 1, action, outcome, local_key=key, content_hash=chash, **detail
            )
        except _Outcome as o:
            await self.item(E_MEMBER, key, 1, o.action, o.outcome, o.error, local_key=key, **detail)
        except SchulconnexError as exc:
            await self.item(
                E_MEMBER, key, 1, "update", "failed", self._failure(exc), local_key=key, **detail
            )

    async def _fetch_membership(self, zid: str) -> Json:
        return (await self.client.get_gruppenzugehoerigkeit(zid))["gruppenzugehoerigkeiten"][0]  # type: ignore[no-any-return]

    async def _delete_membership(self, zid: str, z: Json) -> None:
        try:
            await self.client.delete_gruppenzugehoerigkeit(zid, z["revision"])
        except NotFoundError:
            return  # gone already
        except StaleRevision:
            fresh = await self._fetch_membership(zid)
            if fresh.get("ktid") != z.get("ktid") or fresh.get("rollen") != z.get("rollen"):
                raise _Outcome(
                    "failed",
                    "delete",
                    "the membership was changed in Schulconnex meanwhile; not deleted (retry "
                    "to re-evaluate)",
                ) from None
            await self.client.delete_gruppenzugehoerigkeit(zid, fresh["revision"])

    async def _create_membership(self, lm: localdb.LocalMembership, gid: str) -> None:
        key = lm.key
        if not self.ctx.wanted(key):
            return
        ktid = self.kontext_of_person.get(lm.person_key)
        if ktid is None and lm.person_key in self.failed_persons:
            # Failed with its person: retried together with it ("retry failed only").
            await self.item(
                E_MEMBER,
                key,
                4,
                "create",
                "failed",
                f"its person {lm.person_key} could not be synchronised in this run",
                local_key=key,
            )
            return
        if ktid is None:
            await self.item(
                E_MEMBER,
                key,
                4,
                "create",
                "skipped",
                "its person is not in Schulconnex yet (pending confirmation or failed)",
                local_key=key,
                person=lm.person_key,
            )
            return
        if self.dry or ktid == PLANNED:
            await self.item(E_MEMBER, key, 4, "create", "skipped", local_key=key, planned="create")
            return
        desired = records.membership_fields(lm, ktid)
        try:
            try:
                created = await self.client.create_gruppenzugehoerigkeit(
                    gid, records.new_membership(lm, ktid)
                )
            except AmbiguousWrite:
                found = [
                    z
                    for z in await self.client.list_gruppenzugehoerigkeiten_of(gid, referrer=key)
                    if z.get("referrer") == key
                ]
                if len(found) != 1:
                    raise
                created = found[0]
            self._link(E_MEMBER, key, created["id"])
            self._note_success()
            await self.item(
                E_MEMBER,
                key,
                4,
                "create",
                "ok",
                local_key=key,
                content_hash=records.content_hash(desired),
                remote_id=created["id"],
            )
        except SchulconnexError as exc:
            await self.item(E_MEMBER, key, 4, "create", "failed", self._failure(exc), local_key=key)

    async def _membership_question(self, dec: Any, gid: str, z: Json, group_key: str) -> None:
        zid = z["id"]
        key = f"schulconnex:gruppenzugehoerigkeit:{zid}"
        if not self.ctx.wanted(key):
            return
        subject = subject_of("membership-import", E_MEMBER, zid)
        row = self.confirmed.get(subject)
        # Whose kontext is it? Persons of this run, then every linked one.
        known = {**self.link_map[E_KONTEXT], **self.kontext_of_person}
        person_of_kontext = {kt: pk for pk, kt in known.items()}
        person_key = person_of_kontext.get(z.get("ktid", ""))
        if person_key is None:
            self.report.add(E_MEMBER, dec.case, "gruppenzugehoerigkeit.not-importable", "skipped")
            return
        if row is not None and row["status"] == REJECTED:
            self.report.add(E_MEMBER, dec.case, "gruppenzugehoerigkeit.import-rejected", "skipped")
            return
        if row is not None and row["status"] == ACCEPTED:
            await self._import_membership(dec, z, group_key, person_key, row)
            return
        self.ask(
            Question(
                kind="membership-import",
                entity=E_MEMBER,
                case_no=dec.case,
                subject=subject,
                reason=(
                    "it carries one of our keys, which does not exist here"
                    if dec.case == 2
                    else "no registration or course lecturer matches it"
                )
                + (
                    ": import it as a registration?"
                    if person_key.startswith("participant")
                    else ": import it as a course lecturer?"
                ),
                remote_id=zid,
                local_key=person_key,
                remote={
                    "gruppe": gid,
                    "group_key": group_key,
                    "person": person_key,
                    "rollen": z.get("rollen"),
                    "referrer": z.get("referrer"),
                },
                remote_revision=z.get("revision"),
            )
        )
        await self.item(
            E_MEMBER, key, dec.case, "confirm-import", "skipped", remote_id=zid, person=person_key
        )

    async def _import_membership(
        self, dec: Any, z: Json, group_key: str, person_key: str, row: Mapping[str, Any]
    ) -> None:
        zid = z["id"]
        key = f"schulconnex:gruppenzugehoerigkeit:{zid}"
        if self.dry:
            await self.item(
                E_MEMBER, key, dec.case, "import", "skipped", remote_id=zid, planned="import"
            )
            return
        try:
            async with self.deps.coursedb.begin() as conn:
                persons = await localdb.load_persons(conn)
                person = persons.get(person_key)
                if person is None:
                    raise ImportRefused(f"{person_key} does not exist any more")
                course_id = int(group_key.split(":")[1])
                mkey = await localdb.import_membership(
                    conn, course_id=course_id, person=person, rollen=z.get("rollen") or []
                )
            self._link(E_MEMBER, mkey, zid)
            if z.get("referrer") != mkey:
                await self._put(
                    E_MEMBER,
                    zid,
                    z,
                    {("referrer",): mkey},
                    put=lambda body: self.client.update_gruppenzugehoerigkeit(zid, body),
                    fetch=lambda: self._fetch_membership(zid),
                    local_key=mkey,
                )
            self.applied_confirmations.append(row["id"])
            await self.item(
                E_MEMBER, key, dec.case, "import", "ok", remote_id=zid, imported_as=mkey
            )
        except (SchulconnexError, ImportRefused, _Outcome) as exc:
            error = (exc.error or str(exc)) if isinstance(exc, _Outcome) else self._failure(exc)
            await self.deps.confirmations.failed(row["id"], error)
            await self.item(E_MEMBER, key, dec.case, "import", "failed", error, remote_id=zid)

    # ------------------------------------------------------------------ deletions (step 9)

    def _loaded_member_kinds(self) -> tuple[str, ...]:
        """Which kinds of local membership this run loaded (only those can be missing)."""
        selection = getattr(self, "selection", None) or Selection()
        kinds = []
        if selection.participants:
            kinds.append("registration")
        if selection.lecturers:
            kinds.append("course-lecturer")
        return tuple(kinds)

    def _our_membership(self, z: Mapping[str, Any]) -> bool:
        """A membership this centre manages: linked, or carrying one of our keys."""
        return z.get("id") in self._member_of_remote or is_our_membership_key(z.get("referrer"))

    async def _deletion(
        self,
        entity: str,
        key: str,
        rid: str,
        *,
        reason: str,
        remote: Json,
        perform: Callable[[], Awaitable[tuple[str, Json]]],
        revision: str | None = None,
        blocked: str | None = None,
        in_progress: bool = False,
    ) -> None:
        """Seed step 9 "Löschen" for one record that is ours and gone locally.

        ``SYNC_DELETE_MODE``: ``confirm`` asks a person first (confirmation kind ``delete``;
        the next run after an accept deletes, with fresh data), ``auto`` deletes at once,
        ``off`` only reports. A ``blocked`` deletion (it would take records of other systems
        along) is always asked, and a rejected one is kept. ``in_progress``: a deletion decided
        earlier is being finished (a person's Löschzeitpunkt is set): no new question."""
        if not self.ctx.wanted(key):
            return
        detail: Json = {"remote_id": rid, "via": "link", "note": None}
        if self.deps.delete_mode == "off":
            detail["note"] = "deleting in Schulconnex is switched off (SYNC_DELETE_MODE=off)"
            await self.item(entity, key, CASE_GONE, "delete", "skipped", local_key=key, **detail)
            return
        subject = subject_of("delete", entity, rid)
        row = self.confirmed.get(subject)
        if row is not None and row["status"] == REJECTED:
            detail["note"] = "kept: the deletion was rejected"
            await self.item(entity, key, CASE_GONE, "delete", "skipped", local_key=key, **detail)
            return
        accepted = row is not None and row["status"] == ACCEPTED
        ask = not in_progress and not accepted
        if ask and (self.deps.delete_mode == "confirm" or blocked is not None):
            self.ask(
                Question(
                    kind="delete",
                    entity=entity,
                    case_no=0,
                    subject=subject,
                    reason=reason + (f" Note: {blocked}." if blocked else ""),
                    remote_id=rid,
                    local_key=key,
                    remote=remote,
                    remote_revision=revision,
                )
            )
            await self.item(
                entity,
                key,
                CASE_GONE,
                "confirm-delete",
                "skipped",
                local_key=key,
                blocked=blocked,
                **detail,
            )
            return
        if self.dry:
            detail["planned"] = "delete"
            await self.item(entity, key, CASE_GONE, "delete", "skipped", local_key=key, **detail)
            return
        try:
            outcome, extra = await perform()
        except _Outcome as o:
            await self.item(
                entity, key, CASE_GONE, "delete", o.outcome, o.error, local_key=key, **detail
            )
            return
        except SchulconnexError as exc:
            await self.item(
                entity,
                key,
                CASE_GONE,
                "delete",
                "failed",
                self._failure(exc),
                local_key=key,
                **detail,
            )
            return
        if accepted and row is not None:
            # Not deleted after all (changed meanwhile): the question is void, asked anew if
            # it still arises.
            done = (
                self.obsolete_confirmations if outcome == "skipped" else self.applied_confirmations
            )
            done.append(row["id"])
        self._note_success()
        await self.item(
            entity, key, CASE_GONE, "delete", outcome, local_key=key, **{**detail, **extra}
        )

    async def _delete_checked(
        self,
        record: Json,
        *,
        owned: Callable[[Json], bool],
        fetch: Callable[[], Awaitable[Json]],
        delete: Callable[[str], Awaitable[None]],
        revision_of: Callable[[Json], str] = lambda r: str(r["revision"]),
    ) -> str:
        """DELETE with the revision we read; on 409 read the record again and decide again
        (is it still ours?), then delete with the fresh revision, once. Returns ``deleted``,
        ``gone`` (404: someone was faster) or ``kept`` (no longer ours: not deleted)."""
        try:
            await delete(revision_of(record))
            return "deleted"
        except NotFoundError:
            return "gone"
        except StaleRevision:
            pass
        try:
            fresh = await fetch()
        except NotFoundError:
            return "gone"
        if not owned(fresh):
            return "kept"
        try:
            await delete(revision_of(fresh))
            return "deleted"
        except NotFoundError:
            return "gone"
        except StaleRevision:
            raise _Outcome(
                "failed",
                "delete",
                "the record changed again while we deleted it (409 twice); retry later",
            ) from None

    # groups

    async def _gone_group(self, dec: GroupDecision, datensatz: Json) -> None:
        key = dec.local_key or ""
        gruppe = datensatz["gruppe"]
        gid = str(gruppe["id"])
        members = datensatz.get("gruppenzugehoerigkeiten") or []
        foreign = [z for z in members if not self._our_membership(z)]
        referenced = self._referenced.get(gid, [])
        blockers = []
        if foreign:
            blockers.append(f"{len(foreign)} of its memberships belong to other systems")
        if referenced:
            blockers.append(f"{len(referenced)} other group(s) refer to it (referenzgruppen)")
        remote = {
            **records.summary_of_group(gruppe, len(members)),
            "foreign_memberships": len(foreign),
            "referenced_by": referenced,
        }
        accepted = (self.confirmed.get(subject_of("delete", E_GRUPPE, gid)) or {}).get(
            "status"
        ) == ACCEPTED
        await self._deletion(
            E_GRUPPE,
            key,
            gid,
            reason=(
                f"the course {key} no longer exists here: delete its group "
                f"{gruppe.get('bezeichnung')!r} in Schulconnex (with its {len(members)} "
                "memberships)?"
            ),
            remote=remote,
            revision=gruppe.get("revision"),
            blocked="; ".join(blockers) or None,
            perform=lambda: self._delete_group(key, datensatz, accepted),
        )

    async def _delete_group(self, key: str, datensatz: Json, accepted: bool) -> tuple[str, Json]:
        gid = str(datensatz["gruppe"]["id"])

        theirs = False

        def owned(fresh: Json) -> bool:
            # Still ours, and (unless a person accepted it) still nothing of others inside.
            nonlocal theirs
            if fresh["gruppe"].get("referrer") != key:
                theirs = True
                return False
            return accepted or not any(
                not self._our_membership(z) for z in fresh.get("gruppenzugehoerigkeiten") or []
            )

        result = await self._delete_checked(
            datensatz,
            owned=owned,
            fetch=lambda: self.client.get_gruppe(gid),
            delete=lambda rev: self.client.delete_gruppe(gid, rev),
            revision_of=lambda d: str(d["gruppe"]["revision"]),
        )
        if result == "kept" and theirs:
            self._unlink(E_GRUPPE, key)
            return "skipped", {"note": "its referrer changed in Schulconnex: not ours any more"}
        if result == "kept":
            return "skipped", {
                "note": "memberships of other systems were added meanwhile: not deleted; the "
                "next run asks again"
            }
        # Deleting a group deletes its memberships (api-qs.yaml): their links go too.
        self._unlink(E_GRUPPE, key)
        for z in datensatz.get("gruppenzugehoerigkeiten") or []:
            member_key = self._member_of_remote.get(z["id"])
            if member_key is not None:
                self._unlink(E_MEMBER, member_key)
        if result == "gone":
            return "unchanged", {"note": "already deleted in Schulconnex"}
        return "ok", {}

    # memberships

    async def _gone_membership(self, key: str, gid: str, group_key: str, z: Json) -> None:
        zid = str(z["id"])

        async def perform() -> tuple[str, Json]:
            result = await self._delete_checked(
                z,
                owned=lambda fresh: fresh.get("referrer") == key,
                fetch=lambda: self._fetch_membership(zid),
                delete=lambda rev: self.client.delete_gruppenzugehoerigkeit(zid, rev),
            )
            self._unlink(E_MEMBER, key)
            if result == "kept":
                return "skipped", {"note": "its referrer changed in Schulconnex: not ours any more"}
            if result == "gone":
                return "unchanged", {"note": "already deleted in Schulconnex"}
            return "ok", {}

        await self._deletion(
            E_MEMBER,
            key,
            zid,
            reason=f"{key} no longer exists in {group_key} here: delete the membership in "
            "Schulconnex?",
            remote={
                "gruppe": gid,
                "group_key": group_key,
                "ktid": z.get("ktid"),
                "rollen": z.get("rollen"),
                "referrer": z.get("referrer"),
            },
            revision=z.get("revision"),
            # In a school-year change the reviewed plan decided the continued groups' members.
            in_progress=gid in self.continued_gids,
            perform=perform,
        )

    # persons (ablauf-löschen.md: all personenkontexte first, then the person)

    def _our_kontexte(self, key: str, kontexte: list[Json]) -> tuple[list[Json], list[Json]]:
        linked = self.link_map[E_KONTEXT].get(key)
        ours: list[Json] = []
        others: list[Json] = []
        for k in kontexte:
            mine = k.get("id") == linked or str(k.get("referrer") or "").startswith(key + "/")
            (ours if mine else others).append(k)
        return ours, others

    def _deletion_time(self) -> str:
        """The Löschzeitpunkt we set: ``KONTEXT_DELETION_DAYS`` ahead, never in the past when it
        arrives (ablauf-löschen.md: "darf nicht in der Vergangenheit liegen")."""
        import datetime as dt

        ahead = max(self.deps.kontext_deletion_days * 86400.0, 300.0)
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ahead)
        return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    async def _gone_person(self, key: str, datensatz: Json) -> None:
        person = datensatz["person"]
        rid = str(person["id"])
        ours, _ = self._our_kontexte(key, datensatz.get("personenkontexte") or [])
        row = self.confirmed.get(subject_of("delete", E_PERSON, rid))
        in_progress = (row is not None and row["status"] == APPLIED) or any(
            (k.get("loeschung") or {}).get("zeitpunkt") for k in ours
        )
        name = person.get("name") or {}
        await self._deletion(
            E_PERSON,
            key,
            rid,
            reason=(
                f"{key} no longer exists here: delete {name.get('vorname')} "
                f"{name.get('familienname')} in Schulconnex (our personenkontext first, then the "
                "person if it has no other)?"
            ),
            remote=records.summary_of_person(datensatz),
            revision=person.get("revision"),
            in_progress=in_progress,
            perform=lambda: self._delete_person(key, datensatz),
        )

    async def _delete_person(self, key: str, datensatz: Json) -> tuple[str, Json]:
        rid = str(datensatz["person"]["id"])
        ours, others = self._our_kontexte(key, datensatz.get("personenkontexte") or [])
        scheduled: list[str] = []
        newly_scheduled = deleted = 0
        for k in ours:
            when = (k.get("loeschung") or {}).get("zeitpunkt")
            if when:
                scheduled.append(str(when))
                continue
            result, when = await self._delete_kontext(key, k)
            if result == "scheduled":
                scheduled.append(str(when))
                newly_scheduled += 1
            elif result in ("deleted", "gone"):
                deleted += 1
            else:  # kept: not ours any more
                others.append(k)
        if scheduled:
            # Schulconnex deletes it then; a later run deletes the person (ablauf-löschen.md).
            return ("ok" if newly_scheduled else "unchanged"), {
                "scheduled": min(scheduled),
                "note": "personenkontext in use by services: Löschzeitpunkt "
                f"{min(scheduled)} set; the person follows once Schulconnex deleted it",
            }
        if ours:
            self._unlink(E_KONTEXT, key)
        if others:
            return ("ok" if deleted else "unchanged"), {
                "deleted": "personenkontext" if deleted else None,
                "note": "the person keeps personenkontexte of other roles or organisations: "
                "only ours was deleted",
            }

        theirs = False

        def owned(fresh: Json) -> bool:
            nonlocal theirs
            theirs = fresh["person"].get("referrer") != key
            return not theirs and not fresh.get("personenkontexte")

        try:
            result = await self._delete_checked(
                datensatz,
                owned=owned,
                fetch=lambda: self.client.get_person(rid),
                delete=lambda rev: self.client.delete_person(rid, rev),
                revision_of=lambda d: str(d["person"]["revision"]),
            )
        except BadRequest as exc:
            if exc.subcode != "12":
                raise
            result = "kept"  # 400/12: someone gave it a personenkontext meanwhile
        if result == "kept" and theirs:
            self._unlink(E_PERSON, key)
            return "skipped", {"note": "its referrer changed in Schulconnex: not ours any more"}
        if result == "kept":
            return "skipped", {
                "note": "it got a new personenkontext meanwhile: not deleted; the next run "
                "decides again"
            }
        self._unlink(E_PERSON, key)
        return (
            ("ok", {"deleted": "person"})
            if result == "deleted"
            else (
                "unchanged",
                {"note": "already deleted in Schulconnex"},
            )
        )

    async def _delete_kontext(self, key: str, kontext: Json) -> tuple[str, str | None]:
        """DELETE our personenkontext; if services already use it (400/13) set its
        Löschzeitpunkt instead (ablauf-löschen.md). Returns (deleted|gone|kept|scheduled,
        the Löschzeitpunkt)."""
        kid = str(kontext["id"])

        def ours(k: Json) -> bool:
            return bool(
                k.get("id") == self.link_map[E_KONTEXT].get(key)
                or str(k.get("referrer") or "").startswith(key + "/")
            )

        try:
            return (
                await self._delete_checked(
                    kontext,
                    owned=ours,
                    fetch=lambda: self._fetch_kontext(kid),
                    delete=lambda rev: self.client.delete_personenkontext(kid, rev),
                ),
                None,
            )
        except BadRequest as exc:
            if exc.subcode != "13":
                raise
        when = self._deletion_time()
        current = kontext
        for attempt in range(2):
            if attempt:
                try:
                    current = await self._fetch_kontext(kid)
                except NotFoundError:
                    return "gone", None
                if not ours(current):
                    return "kept", None
            existing = (current.get("loeschung") or {}).get("zeitpunkt")
            if existing:
                return "scheduled", str(existing)
            body = records.merged(
                {k: v for k, v in current.items() if k != "beziehungen"},
                {("loeschung",): {"zeitpunkt": when}},
            )
            try:
                await self.client.update_personenkontext(kid, body)
                return "scheduled", when
            except StaleRevision:
                continue
        raise _Outcome(
            "failed",
            "delete",
            "the personenkontext changed again while we set its Löschzeitpunkt (409 twice); "
            "retry later",
        )

    # ------------------------------------------------------------------ school-year change

    async def _load_transitions(self) -> dict[str, dict[str, Any]]:
        t = transitions_table
        async with self.deps.confirmations.db.engine.connect() as conn:
            rows = await conn.execute(select(t).where(t.c.tenant == self.deps.tenant))
            return {r.local_key: dict(r._mapping) for r in rows}

    def _drop_transitioned(self, data: LocalData) -> None:
        """A course whose group was handed to its successor or ended by a school-year change
        is not synchronised as itself any more (it would get a new group otherwise)."""
        for key in [k for k in data.groups if k in self.transitions]:
            del data.groups[key]
            row = self.transitions[key]
            self.report.add(E_GRUPPE, "change", f"gruppe.{row['kind']}-earlier", "unchanged")

    def _transition(self, key: str, **values: Any) -> None:
        now = time.time()
        row = {
            "tenant": self.deps.tenant,
            "local_key": key,
            "execution_id": self.ctx.execution_id,
            "updated_at": now,
            "created_at": self.transitions.get(key, {}).get("created_at", now),
            "successor": None,
            "delete_at": None,
            "note": None,
            **{k: v for k, v in self.transitions.get(key, {}).items() if k not in values},
            **values,
        }
        self.transitions[key] = row
        if not self.dry:
            self.transition_rows.append(row)

    async def _flush_transitions(self) -> None:
        if self.dry or not self.transition_rows:
            return
        rows, self.transition_rows = self.transition_rows, []
        latest = {r["local_key"]: r for r in rows}
        t = transitions_table
        async with self.deps.confirmations.db.engine.begin() as conn:
            keys = list(latest)
            for start in range(0, len(keys), 400):
                await conn.execute(
                    delete(t).where(
                        t.c.tenant == self.deps.tenant,
                        t.c.local_key.in_(keys[start : start + 400]),
                    )
                )
            await conn.execute(insert(t), list(latest.values()))

    async def _check_plan(self, plan_id: str | None, digest: str) -> None:
        """The guide's dialog: a real change applies only a plan a person has seen (a dry run)
        and that is still the same now."""
        if not plan_id:
            raise RunAborted(
                "a school-year change needs a reviewed plan: run it with dry_run=true first and "
                "pass that run's execution id as 'plan'"
            )
        async with self.deps.confirmations.db.engine.connect() as conn:
            row = (
                await conn.execute(select(runs_table).where(runs_table.c.execution_id == plan_id))
            ).first()
        if row is None or not row.dry_run or row.tenant != self.deps.tenant:
            raise RunAborted(f"{plan_id} is not a dry run of this connection's school-year change")
        reviewed = ((row.summary or {}).get("schuljahrwechsel") or {}).get("digest")
        if reviewed != digest:
            raise RunAborted(
                f"the plan changed since it was reviewed in {plan_id} (other groups continued "
                "or ended now): review the new plan (dry run) and confirm that one"
            )

    async def _plan_change(
        self, change: ChangeOptions, plan_id: str | None, gruppen: list[Json]
    ) -> None:
        coursedb = self.deps.coursedb
        old, old_end = await localdb.load_period(coursedb, change.from_semester)
        new, _ = await localdb.load_period(coursedb, change.to_semester, change.statuses)
        by_gid = {d["gruppe"]["id"]: d["gruppe"] for d in gruppen}
        links = self.link_map[E_GRUPPE]
        ours: dict[str, str] = {}
        for course in old:
            gid = links.get(course.key)
            if (
                gid in by_gid
                and by_gid[gid].get("referrer") == course.key
                and course.key not in self.transitions
            ):
                ours[course.key] = str(gid)
        new_linked = [c.key for c in new if links.get(c.key) in by_gid]
        plan = make_plan(change, old, new, ours, new_linked=new_linked)
        self.plan = plan
        self._old_end = old_end.isoformat()
        if not self.dry:
            await self._check_plan(plan_id, plan.digest())
        for c in plan.continued:
            # Same UUID: the old course's group is its successor's from now on; step 9 then
            # updates bezeichnung, laufzeit and the memberships (ablauf-schuljahrwechsel.md).
            links.pop(c["old"], None)
            self._link(E_GRUPPE, c["new"], c["gruppe"])
            self.continued_gids.add(c["gruppe"])
            self._transition(
                c["old"],
                kind="continued",
                status="continued",
                remote_id=c["gruppe"],
                successor=c["new"],
                from_semester=change.from_semester,
                to_semester=change.to_semester,
                note=c["why"],
            )
            await self.item(
                E_GRUPPE,
                c["old"],
                "change",
                "continue",
                "skipped" if self.dry else "ok",
                local_key=c["old"],
                remote_id=c["gruppe"],
                successor=c["new"],
                why=c["why"],
                planned="continue" if self.dry else None,
            )

    async def _end_groups(self, gruppen: list[Json]) -> None:
        assert self.plan is not None
        by_gid = {d["gruppe"]["id"]: d for d in gruppen}
        failed = self.ctx.counts["failed"]
        plan = self.plan

        async def end(e: Json) -> None:
            key = e["old"]
            if not self.ctx.wanted(key):
                return
            detail: Json = {"remote_id": e["gruppe"], "why": e["why"], "ending": e["action"]}
            if failed and not self.dry:
                await self.item(
                    E_GRUPPE,
                    key,
                    "change",
                    "end",
                    "skipped",
                    local_key=key,
                    note=f"postponed: {failed} records of {plan.to_semester} failed, and no "
                    "group ends before the new period exists; run the change again",
                    **detail,
                )
                return
            datensatz = by_gid.get(e["gruppe"])
            if datensatz is None:
                self._transition(
                    key,
                    kind="ended",
                    status="deleted",
                    remote_id=e["gruppe"],
                    from_semester=plan.from_semester,
                    to_semester=plan.to_semester,
                    note="already gone",
                )
                return
            await self._end_group(key, e, datensatz, detail)

        await self._pool(plan.ended, end)

    async def _end_group(self, key: str, e: Json, datensatz: Json, detail: Json) -> None:
        assert self.plan is not None
        gruppe = datensatz["gruppe"]
        gid = str(gruppe["id"])
        days = float(e["delete_after_days"])
        off = self.deps.delete_mode == "off"
        if self.dry:
            detail["planned"] = "delete" if e["action"] == "delete" else f"end, delete in {days:g}d"
            await self.item(E_GRUPPE, key, "change", "end", "skipped", local_key=key, **detail)
            return
        try:
            if e["action"] == "delete" and not off:
                result = await self._delete_checked(
                    datensatz,
                    owned=lambda fresh: fresh["gruppe"].get("referrer") == key,
                    fetch=lambda: self.client.get_gruppe(gid),
                    delete=lambda rev: self.client.delete_gruppe(gid, rev),
                    revision_of=lambda d: str(d["gruppe"]["revision"]),
                )
                status = {"deleted": "deleted", "gone": "deleted", "kept": "kept"}[result]
                self._forget_group(key, datensatz)
                note = "not ours any more: kept" if result == "kept" else None
                self._transition(
                    key,
                    kind="ended",
                    status=status,
                    remote_id=gid,
                    from_semester=self.plan.from_semester,
                    to_semester=self.plan.to_semester,
                    note=note,
                )
                outcome = "ok" if result == "deleted" else "skipped" if note else "unchanged"
                await self.item(
                    E_GRUPPE, key, "change", "delete", outcome, local_key=key, note=note, **detail
                )
                return
            # End its laufzeit now (connected services learn the group ended) and delete it
            # after the period the plan gives.
            end = e.get("laufzeit_bis") or self._old_end
            laufzeit = {
                k: v for k, v in (gruppe.get("laufzeit") or {}).items() if k != "bislernperiode"
            }
            if laufzeit.get("von") and str(laufzeit["von"]) > end:
                laufzeit["von"] = end
            laufzeit["bis"] = end
            result = "unchanged"
            if gruppe.get("laufzeit") != laufzeit:
                result = await self._put(
                    E_GRUPPE,
                    gid,
                    gruppe,
                    {("laufzeit",): laufzeit},
                    put=lambda body: self.client.update_gruppe(gid, body),
                    fetch=lambda: self._fetch_gruppe(gid),
                    local_key=key,
                )
            delete_at = time.time() + days * 86400.0
            self._transition(
                key,
                kind="ended",
                status="scheduled",
                remote_id=gid,
                from_semester=self.plan.from_semester,
                to_semester=self.plan.to_semester,
                delete_at=delete_at,
                note=f"laufzeit ends {end}",
            )
            await self.item(
                E_GRUPPE,
                key,
                "change",
                "end",
                "skipped" if result == "conflict" else "ok",
                local_key=key,
                laufzeit_bis=end,
                delete_at=_iso_time(delete_at),
                deletion="off (SYNC_DELETE_MODE=off)" if off else None,
                **detail,
            )
        except _Outcome as o:
            await self.item(E_GRUPPE, key, "change", o.action, o.outcome, o.error, local_key=key)
        except SchulconnexError as exc:
            await self.item(
                E_GRUPPE, key, "change", "end", "failed", self._failure(exc), local_key=key
            )

    def _forget_group(self, key: str, datensatz: Json) -> None:
        self._unlink(E_GRUPPE, key)
        member_of_remote = getattr(self, "_member_of_remote", {})
        for z in datensatz.get("gruppenzugehoerigkeiten") or []:
            member_key = member_of_remote.get(z["id"])
            if member_key is not None:
                self._unlink(E_MEMBER, member_key)

    async def _due_deletions(self) -> None:
        """Ended groups of earlier school-year changes whose deletion is due: deleted with the
        current revision if still ours (re-read and decided again on 409)."""
        now = time.time()
        due = [
            r
            for r in self.transitions.values()
            if r["status"] == "scheduled" and r["delete_at"] is not None and r["delete_at"] <= now
        ]

        async def run_one(row: dict[str, Any]) -> None:
            key, gid = row["local_key"], str(row["remote_id"])
            if not self.ctx.wanted(key):
                return
            detail: Json = {"remote_id": gid, "scheduled_by": row["execution_id"]}
            if self.deps.delete_mode == "off":
                await self.item(
                    E_GRUPPE,
                    key,
                    "change",
                    "delete",
                    "skipped",
                    local_key=key,
                    note="deleting in Schulconnex is switched off (SYNC_DELETE_MODE=off)",
                    **detail,
                )
                return
            if self.dry:
                await self.item(
                    E_GRUPPE,
                    key,
                    "change",
                    "delete",
                    "skipped",
                    local_key=key,
                    planned="delete",
                    **detail,
                )
                return
            try:
                try:
                    datensatz = await self.client.get_gruppe(gid)
                except NotFoundError:
                    result = "gone"
                    datensatz = {"gruppe": {"id": gid}, "gruppenzugehoerigkeiten": []}
                else:
                    if datensatz["gruppe"].get("referrer") != key:
                        result = "kept"
                    else:
                        result = await self._delete_checked(
                            datensatz,
                            owned=lambda fresh: fresh["gruppe"].get("referrer") == key,
                            fetch=lambda: self.client.get_gruppe(gid),
                            delete=lambda rev: self.client.delete_gruppe(gid, rev),
                            revision_of=lambda d: str(d["gruppe"]["revision"]),
                        )
            except _Outcome as o:
                await self.item(E_GRUPPE, key, "change", "delete", o.outcome, o.error, **detail)
                return
            except SchulconnexError as exc:
                await self.item(
                    E_GRUPPE,
                    key,
                    "change",
                    "delete",
                    "failed",
                    self._failure(exc),
                    local_key=key,
                    **detail,
                )
                return
            self._forget_group(key, datensatz)
            note = {"gone": "already deleted", "kept": "not ours any more: kept"}.get(result)
            self._transition(key, status="kept" if result == "kept" else "deleted", note=note)
            self._note_success()
            await self.item(
                E_GRUPPE,
                key,
                "change",
                "delete",
                "ok" if result == "deleted" else "unchanged",
                local_key=key,
                note=note,
                **detail,
            )

        await self._pool(due, run_one)


def _iso_time(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(microsecond=0).isoformat()
