"""Sync markers per record and the link table between local records and external keys.

**Markers** (``mesh_sync_markers``) answer, per target system, tenant, entity and local record:
when was it last synced, when last successfully, with what status and remark, and the content
hash of what was last sent successfully. A failure or a skip updates the status and remark but
keeps the last success and its hash, so the record still counts as changed on the next run.

**Links** (``mesh_links``) map one local record to its keys in several systems / tenants (a
participant is contact 4711 in Brevo and person "P-88" in tenant "vhs-nord" of an accounting
system). A local record has at most one key per (system, tenant, entity) and an external key
belongs to at most one local record: :meth:`Links.link` re-links a local record whose external
key changed and refuses (Conflict) to give one external key to two local records.

Both accept ``conn=`` to write inside a caller's transaction (an import that writes records and
their markers atomically). This module must not know any particular system.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Table, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mesh_common.connectors.tables import ConnectorTables
from mesh_common.db import Database
from mesh_common.errors import Conflict, Invalid

MarkerStatus = Literal["ok", "failed", "skipped"]
MARKER_STATUSES: tuple[MarkerStatus, ...] = ("ok", "failed", "skipped")


@dataclass(frozen=True)
class Marker:
    system: str
    tenant: str
    entity: str
    local_key: str
    status: str
    last_sync_at: float
    last_success_at: float | None
    remark: str | None
    content_hash: str | None
    execution_id: str | None


@dataclass(frozen=True)
class MarkerUpdate:
    """One record's outcome for :meth:`SyncMarkers.mark_many`."""

    local_key: str
    status: MarkerStatus
    remark: str | None = None
    content_hash: str | None = None


@dataclass(frozen=True)
class Link:
    system: str
    tenant: str
    entity: str
    local_key: str
    external_key: str
    created_at: float
    updated_at: float


class _Store:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    @asynccontextmanager
    async def _tx(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
        else:
            async with self.db.engine.begin() as own:
                yield own


def _upsert(
    dialect: str, table: Table, rows: list[dict[str, Any]], keys: list[str], updates: list[str]
) -> Any:
    """INSERT .. ON CONFLICT (keys) DO UPDATE SET updates = excluded (PostgreSQL, SQLite)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg = postgresql.insert(table).values(rows)
        return pg.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys],
            set_={u: pg.excluded[u] for u in updates},
        )
    from sqlalchemy.dialects import sqlite

    stmt = sqlite.insert(table).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={u: stmt.excluded[u] for u in updates},
    )


class SyncMarkers(_Store):
    """Per-record sync state. Keys are strings (``str(participant_id)``)."""

    _KEYS = ("system", "tenant", "entity", "local_key")

    def __init__(
        self, db: Database, tables: ConnectorTables, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(db, clock)
        self.t = tables.markers

    async def mark(
        self,
        system: str,
        entity: str,
        local_key: str,
        status: MarkerStatus,
        *,
        tenant: str = "",
        remark: str | None = None,
        content_hash: str | None = None,
        execution_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> None:
        """Record one outcome. ``ok`` sets the last success (and the hash, if given)."""
        await self.mark_many(
            system,
            entity,
            [MarkerUpdate(str(local_key), status, remark, content_hash)],
            tenant=tenant,
            execution_id=execution_id,
            conn=conn,
        )

    async def mark_many(
        self,
        system: str,
        entity: str,
        updates: Iterable[MarkerUpdate],
        *,
        tenant: str = "",
        execution_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> None:
        now = self.clock()
        by_status: dict[str, list[dict[str, Any]]] = {}
        for u in updates:
            if u.status not in MARKER_STATUSES:
                raise Invalid(f"marker status must be one of {MARKER_STATUSES}, not {u.status!r}")
            row = {
                "system": system,
                "tenant": tenant,
                "entity": entity,
                "local_key": str(u.local_key),
                "status": u.status,
                "last_sync_at": now,
                "last_success_at": now if u.status == "ok" else None,
                "remark": u.remark[:2000] if u.remark else None,
                "content_hash": u.content_hash if u.status == "ok" else None,
                "execution_id": execution_id,
            }
            by_status.setdefault(u.status, []).append(row)
        async with self._tx(conn) as c:
            for status, rows in by_status.items():
                changing = ["status", "last_sync_at", "remark", "execution_id"]
                if status == "ok":
                    changing += ["last_success_at"]
                    if any(r["content_hash"] is not None for r in rows):
                        changing += ["content_hash"]
                await self._write(c, rows, changing)

    async def forget(
        self,
        system: str,
        entity: str,
        local_keys: Iterable[str],
        *,
        tenant: str = "",
        remark: str,
        execution_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> int:
        """Mark records as no longer synced (status ``skipped`` with ``remark``) and drop their
        content hash, so a record that comes back is sent again instead of counting as
        unchanged (e.g. after its remote copy was deleted). Returns how many markers changed."""
        keys = [str(k) for k in local_keys]
        changed = 0
        async with self._tx(conn) as c:
            for start in range(0, len(keys), 500):
                res = await c.execute(
                    update(self.t)
                    .where(
                        self.t.c.system == system,
                        self.t.c.tenant == tenant,
                        self.t.c.entity == entity,
                        self.t.c.local_key.in_(keys[start : start + 500]),
                    )
                    .values(
                        status="skipped",
                        content_hash=None,
                        remark=remark[:2000],
                        last_sync_at=self.clock(),
                        execution_id=execution_id,
                    )
                )
                changed += int(res.rowcount or 0)
        return changed

    async def _write(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], changing: list[str]
    ) -> None:
        dialect = conn.dialect.name
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            if dialect in ("postgresql", "sqlite"):
                await conn.execute(_upsert(dialect, self.t, chunk, list(self._KEYS), changing))
                continue
            for row in chunk:  # portable fallback (MariaDB): update, else insert
                where = and_(*(self.t.c[k] == row[k] for k in self._KEYS))
                res = await conn.execute(
                    update(self.t).where(where).values({k: row[k] for k in changing})
                )
                if res.rowcount == 0:
                    await conn.execute(insert(self.t).values(row))

    def _marker(self, r: Any) -> Marker:
        return Marker(**{k: r._mapping[k] for k in Marker.__dataclass_fields__})

    async def get(
        self, system: str, entity: str, local_key: str, *, tenant: str = ""
    ) -> Marker | None:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(self.t).where(
                        self.t.c.system == system,
                        self.t.c.tenant == tenant,
                        self.t.c.entity == entity,
                        self.t.c.local_key == str(local_key),
                    )
                )
            ).first()
        return self._marker(row) if row is not None else None

    async def hashes(self, system: str, entity: str, *, tenant: str = "") -> dict[str, str]:
        """``{local_key: content hash of the last successful sync}`` (records never synced
        successfully are absent)."""
        query = select(self.t.c.local_key, self.t.c.content_hash).where(
            self.t.c.system == system,
            self.t.c.tenant == tenant,
            self.t.c.entity == entity,
            self.t.c.content_hash.is_not(None),
        )
        async with self.db.engine.connect() as conn:
            return {k: h for k, h in (await conn.execute(query)).all()}

    async def find(
        self,
        *,
        system: str | None = None,
        tenant: str | None = None,
        entity: str | None = None,
        status: str | None = None,
        local_key: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Marker]:
        query = select(self.t)
        for col, value in (
            ("system", system),
            ("tenant", tenant),
            ("entity", entity),
            ("status", status),
            ("local_key", local_key),
        ):
            if value is not None:
                query = query.where(self.t.c[col] == value)
        query = query.order_by(self.t.c.last_sync_at.desc(), self.t.c.local_key)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit).offset(offset))).all()
        return [self._marker(r) for r in rows]

    async def counts(
        self, *, system: str | None = None, entity: str | None = None
    ) -> list[dict[str, Any]]:
        """``[{system, tenant, entity, status, count}]`` for an overview."""
        cols = [self.t.c.system, self.t.c.tenant, self.t.c.entity, self.t.c.status]
        query = select(*cols, func.count().label("count")).group_by(*cols).order_by(*cols)
        if system is not None:
            query = query.where(self.t.c.system == system)
        if entity is not None:
            query = query.where(self.t.c.entity == entity)
        async with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]


class Links(_Store):
    """Local record ↔ external keys in several systems / tenants."""

    def __init__(
        self, db: Database, tables: ConnectorTables, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(db, clock)
        self.t = tables.links

    def _scope(self, system: str, tenant: str, entity: str) -> Any:
        return and_(self.t.c.system == system, self.t.c.tenant == tenant, self.t.c.entity == entity)

    def _link(self, r: Any) -> Link:
        return Link(**{k: r._mapping[k] for k in Link.__dataclass_fields__})

    async def link(
        self,
        system: str,
        entity: str,
        local_key: str,
        external_key: str,
        *,
        tenant: str = "",
        conn: AsyncConnection | None = None,
    ) -> Link:
        """Link ``local_key`` to ``external_key`` (re-linking if it had another key)."""
        local_key, external_key = str(local_key), str(external_key)
        scope = self._scope(system, tenant, entity)
        now = self.clock()
        try:
            async with self._tx(conn) as c:
                owner = (
                    await c.execute(
                        select(self.t.c.local_key).where(
                            scope, self.t.c.external_key == external_key
                        )
                    )
                ).scalar_one_or_none()
                if owner is not None and owner != local_key:
                    raise Conflict(
                        f"{system}{'/' + tenant if tenant else ''} {entity} {external_key!r} "
                        f"is already linked to local record {owner!r}",
                        code="link-conflict",
                    )
                res = await c.execute(
                    update(self.t)
                    .where(scope, self.t.c.local_key == local_key)
                    .values(external_key=external_key, updated_at=now)
                )
                if res.rowcount == 0:
                    await c.execute(
                        insert(self.t).values(
                            system=system,
                            tenant=tenant,
                            entity=entity,
                            local_key=local_key,
                            external_key=external_key,
                            created_at=now,
                            updated_at=now,
                        )
                    )
        except IntegrityError:
            # A concurrent link of the same keys won the unique constraint.
            raise Conflict(
                f"{system} {entity} {external_key!r} or local record {local_key!r} was linked "
                "concurrently",
                code="link-conflict",
            ) from None
        return Link(system, tenant, entity, local_key, external_key, now, now)

    async def unlink(
        self,
        system: str,
        entity: str,
        local_key: str,
        *,
        tenant: str = "",
        conn: AsyncConnection | None = None,
    ) -> bool:
        async with self._tx(conn) as c:
            res = await c.execute(
                delete(self.t).where(
                    self._scope(system, tenant, entity), self.t.c.local_key == str(local_key)
                )
            )
        return bool(res.rowcount)

    async def lookup(
        self, system: str, entity: str, local_key: str, *, tenant: str = ""
    ) -> str | None:
        """The external key of ``local_key`` in (system, tenant), or None."""
        async with self.db.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(self.t.c.external_key).where(
                        self._scope(system, tenant, entity), self.t.c.local_key == str(local_key)
                    )
                )
            ).scalar_one_or_none()
        return str(value) if value is not None else None

    async def local_for(
        self, system: str, entity: str, external_key: str, *, tenant: str = ""
    ) -> str | None:
        """The local record linked to ``external_key`` in (system, tenant), or None."""
        async with self.db.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(self.t.c.local_key).where(
                        self._scope(system, tenant, entity),
                        self.t.c.external_key == str(external_key),
                    )
                )
            ).scalar_one_or_none()
        return str(value) if value is not None else None

    async def external_for(self, entity: str, local_key: str) -> list[Link]:
        """Every system / tenant key of one local record."""
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(self.t)
                    .where(self.t.c.entity == entity, self.t.c.local_key == str(local_key))
                    .order_by(self.t.c.system, self.t.c.tenant)
                )
            ).all()
        return [self._link(r) for r in rows]

    async def mapping(self, system: str, entity: str, *, tenant: str = "") -> dict[str, str]:
        """``{local_key: external_key}`` of one (system, tenant, entity), for a sync run."""
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(self.t.c.local_key, self.t.c.external_key).where(
                        self._scope(system, tenant, entity)
                    )
                )
            ).all()
        return {str(k): str(v) for k, v in rows}

    async def find(
        self,
        *,
        system: str | None = None,
        tenant: str | None = None,
        entity: str | None = None,
        local_key: str | None = None,
        external_key: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Link]:
        query = select(self.t)
        for col, value in (
            ("system", system),
            ("tenant", tenant),
            ("entity", entity),
            ("local_key", local_key),
            ("external_key", external_key),
        ):
            if value is not None:
                query = query.where(self.t.c[col] == value)
        query = query.order_by(self.t.c.id).limit(limit).offset(offset)
        async with self.db.engine.connect() as conn:
            return [self._link(r) for r in (await conn.execute(query)).all()]
