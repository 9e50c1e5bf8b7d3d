"""Stored, versioned mapping definitions that tasks use by name.

:class:`MappingStore` keeps every saved version of every definition in ``mesh_mappings``.
Saving validates (the definition itself, and its source paths against a named source schema
when one is given), refuses a stale ``base_version`` (someone saved meanwhile), and adds version
*n + 1* unless the definition equals the latest one apart from its version number (saving or
importing the same definition twice does not create a version). Versions are immutable; the
latest is what tasks get from :meth:`MappingStore.compiled` (compiled once per version, cached).

Definitions are exchanged as JSON or YAML (:meth:`export_text` / :meth:`import_text`). This module
must not define HTTP routes and must not execute mappings beyond compiling them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from mesh_common.connectors.tables import ConnectorTables
from mesh_common.db import Database
from mesh_common.errors import Conflict, Invalid, NotFound
from mesh_common.mapping import (
    CompiledMapping,
    MappingDefinition,
    MappingValidationError,
    SourceSchema,
    check_sources,
    compile_mapping,
    dump_json,
    dump_yaml,
    fingerprint,
    load_json,
    load_mapping,
    load_yaml,
    to_dict,
)

Format = Literal["json", "yaml"]


@dataclass(frozen=True)
class StoredMapping:
    name: str
    version: int
    definition: MappingDefinition
    fingerprint: str
    source: str | None
    comment: str | None
    created_at: float
    created_by: str


@dataclass(frozen=True)
class SaveResult:
    mapping: StoredMapping
    created: bool  # False: the content equals the latest version, nothing was added


def _same(a: MappingDefinition, b: MappingDefinition) -> bool:
    """Equal apart from the version number (a changed description is a change)."""
    da, db = to_dict(a), to_dict(b)
    da.pop("version", None)
    db.pop("version", None)
    return da == db


class MappingStore:
    """One service's mapping definitions. ``sources`` names the source schemas a definition may
    be checked against on save (``{"participants": ParticipantRow}``)."""

    def __init__(
        self,
        db: Database,
        tables: ConnectorTables,
        *,
        sources: Mapping[str, SourceSchema | type[BaseModel] | Iterable[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.t = tables.mappings
        self.sources = {k: SourceSchema.of(v) for k, v in (sources or {}).items()}
        self.clock = clock
        self._compiled: dict[tuple[str, int], CompiledMapping] = {}

    def add_source(self, name: str, schema: SourceSchema | type[BaseModel] | Iterable[str]) -> None:
        self.sources[name] = SourceSchema.of(schema)

    def _schema(self, source: str) -> SourceSchema:
        schema = self.sources.get(source)
        if schema is None:
            known = ", ".join(sorted(self.sources)) or "none"
            raise Invalid(
                f"unknown source schema {source!r} (known: {known})", code="unknown-source"
            )
        return schema

    def validate(
        self, data: Mapping[str, Any] | MappingDefinition, *, source: str | None = None
    ) -> MappingDefinition:
        """The validated definition, or :class:`MappingValidationError` (422) with every
        problem located (``fields[2].source: unknown source field 'emial' ...``)."""
        defn = data if isinstance(data, MappingDefinition) else load_mapping(data)
        if source is not None:
            errors = check_sources(defn, self._schema(source))
            if errors:
                raise MappingValidationError(errors)
        return defn

    async def save(
        self,
        data: Mapping[str, Any] | MappingDefinition,
        *,
        source: str | None = None,
        base_version: int | None = None,
        comment: str | None = None,
        actor: str = "system",
    ) -> SaveResult:
        """Validate and store as the next version of ``definition.name``.

        ``base_version``: the version the author started from; a Conflict if another version
        was saved since (optimistic concurrency). The stored definition's ``version`` field is
        set to the version it was stored as."""
        defn = self.validate(data, source=source)
        fp = fingerprint(defn)
        for _attempt in range(3):  # two savers racing for one version number: retry
            latest = await self._latest(defn.name)
            if base_version is not None and (latest.version if latest else 0) != base_version:
                raise Conflict(
                    f"mapping {defn.name!r} is at version {latest.version if latest else 0}, "
                    f"not {base_version}: reload it and apply your change again",
                    code="mapping-version-conflict",
                )
            if latest is not None and _same(latest.definition, defn):
                return SaveResult(latest, created=False)
            version = (latest.version if latest else 0) + 1
            stored = defn.model_copy(update={"version": version})
            body = to_dict(defn)
            body["version"] = version
            try:
                async with self.db.engine.begin() as conn:
                    await conn.execute(
                        insert(self.t).values(
                            name=defn.name,
                            version=version,
                            definition=body,
                            fingerprint=fp,
                            source_fields={"source": source} if source else None,
                            comment=comment,
                            created_at=self.clock(),
                            created_by=actor,
                        )
                    )
            except IntegrityError:
                continue
            return SaveResult(
                StoredMapping(
                    name=defn.name,
                    version=version,
                    definition=stored,
                    fingerprint=fp,
                    source=source,
                    comment=comment,
                    created_at=self.clock(),
                    created_by=actor,
                ),
                created=True,
            )
        raise Conflict(f"mapping {defn.name!r} is being saved concurrently; try again")

    def _row(self, r: Any) -> StoredMapping:
        src = r.source_fields or {}
        return StoredMapping(
            name=r.name,
            version=r.version,
            definition=load_mapping(r.definition),
            fingerprint=r.fingerprint,
            source=src.get("source") if isinstance(src, dict) else None,
            comment=r.comment,
            created_at=r.created_at,
            created_by=r.created_by,
        )

    async def _latest(self, name: str) -> StoredMapping | None:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(self.t)
                    .where(self.t.c.name == name)
                    .order_by(self.t.c.version.desc())
                    .limit(1)
                )
            ).first()
        return self._row(row) if row is not None else None

    async def get(self, name: str, version: int | None = None) -> StoredMapping:
        if version is None:
            found = await self._latest(name)
        else:
            async with self.db.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(self.t).where(self.t.c.name == name, self.t.c.version == version)
                    )
                ).first()
            found = self._row(row) if row is not None else None
        if found is None:
            what = f"version {version} of mapping {name!r}" if version else f"mapping {name!r}"
            raise NotFound(f"no {what}", code="mapping-not-found")
        return found

    async def versions(self, name: str) -> list[StoredMapping]:
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(self.t).where(self.t.c.name == name).order_by(self.t.c.version)
                )
            ).all()
        if not rows:
            raise NotFound(f"no mapping {name!r}", code="mapping-not-found")
        return [self._row(r) for r in rows]

    async def latest_all(self) -> list[StoredMapping]:
        """The latest version of every mapping, by name."""
        newest = (
            select(self.t.c.name, func.max(self.t.c.version).label("v"))
            .group_by(self.t.c.name)
            .subquery()
        )
        query = (
            select(self.t)
            .join(newest, (self.t.c.name == newest.c.name) & (self.t.c.version == newest.c.v))
            .order_by(self.t.c.name)
        )
        async with self.db.engine.connect() as conn:
            return [self._row(r) for r in (await conn.execute(query)).all()]

    async def compiled(self, name: str, version: int | None = None) -> CompiledMapping:
        """The compiled mapping for a task (latest version unless pinned), cached per version."""
        stored = await self.get(name, version)
        key = (stored.name, stored.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = compile_mapping(stored.definition)
        return compiled

    async def ensure(
        self, data: Mapping[str, Any], *, source: str | None = None, actor: str = "system"
    ) -> StoredMapping:
        """Store ``data`` as version 1 unless a mapping of that name exists (service defaults
        seeded at startup; operators' later versions are never overwritten)."""
        defn = self.validate(data, source=source)
        existing = await self._latest(defn.name)
        if existing is not None:
            return existing
        return (await self.save(defn, source=source, actor=actor, comment="default")).mapping

    async def import_text(
        self,
        text: str | bytes,
        fmt: Format,
        *,
        source: str | None = None,
        base_version: int | None = None,
        actor: str = "system",
    ) -> SaveResult:
        defn = load_yaml(text) if fmt == "yaml" else load_json(text)
        return await self.save(
            defn, source=source, base_version=base_version, actor=actor, comment="imported"
        )

    async def export_text(self, name: str, fmt: Format, version: int | None = None) -> str:
        stored = await self.get(name, version)
        return dump_yaml(stored.definition) if fmt == "yaml" else dump_json(stored.definition)
