"""HTTP API of the connector framework: connections, mapping definitions, sync state.

Routers a service mounts next to its own (they find the service's :class:`Connectors` through
``get_connectors``: ``app.state.connectors`` or the one :func:`connector_hooks` keeps in the
runtime). Reading needs ``staff``; changing connections or mappings, and testing a connection,
needs ``admin``. Secrets are accepted on write and never returned: a connection shows each
secret field as ``"set"`` or ``"not set"``. Errors are domain errors, i.e. problem+json. This
module must not hold business logic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from mesh_common.auth import Principal, require
from mesh_common.connectors.connections import (
    CheckResult,
    ConnectionStore,
    ConnectionView,
    KindRegistry,
    default_kinds,
)
from mesh_common.connectors.mappings import Format, MappingStore, StoredMapping
from mesh_common.connectors.notify import TaskNotifications
from mesh_common.connectors.sync import Link, Links, Marker, SyncMarkers
from mesh_common.connectors.tables import ConnectorTables
from mesh_common.db import Database
from mesh_common.errors import Invalid
from mesh_common.mapping import load_json, load_yaml, to_dict
from mesh_common.secrets import SecretBox

EXTRAS_KEY = "connectors"


@dataclass
class Connectors:
    """Everything of the connector framework one service holds."""

    tables: ConnectorTables
    connections: ConnectionStore
    mappings: MappingStore
    markers: SyncMarkers
    links: Links
    notifications: TaskNotifications


def build_connectors(
    db: Database,
    tables: ConnectorTables,
    *,
    kinds: KindRegistry = default_kinds,
    sources: Mapping[str, Any] | None = None,
    box: SecretBox | Callable[[], SecretBox] = SecretBox.from_env,
) -> Connectors:
    return Connectors(
        tables=tables,
        connections=ConnectionStore(db, tables, kinds=kinds, box=box),
        mappings=MappingStore(db, tables, sources=sources),
        markers=SyncMarkers(db, tables),
        links=Links(db, tables),
        notifications=TaskNotifications(db, tables),
    )


def connector_hooks(
    tables: ConnectorTables, **options: Any
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """``(on_startup, on_shutdown)`` for ``create_service_app``: builds :class:`Connectors` on the
    runtime's database (``options`` go to :func:`build_connectors`)."""

    async def start(runtime: Any) -> None:
        runtime.extras[EXTRAS_KEY] = build_connectors(runtime.db, tables, **options)

    async def stop(runtime: Any) -> None:
        runtime.extras.pop(EXTRAS_KEY, None)

    return start, stop


def get_connectors(request: Request) -> Connectors:
    found = getattr(request.app.state, "connectors", None)
    if found is None:
        runtime = getattr(request.app.state, "runtime", None)
        found = getattr(runtime, "extras", {}).get(EXTRAS_KEY)
    if not isinstance(found, Connectors):
        raise RuntimeError("no Connectors: add connector_hooks(...) to the service's startup hooks")
    return found


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


# --------------------------------------------------------------------------- connections


class TestOut(BaseModel):
    ok: bool
    message: str
    latency_ms: float
    tested_at: datetime | None = None

    @classmethod
    def of(cls, result: CheckResult, at: float | None = None) -> TestOut:
        return cls(
            ok=result.ok, message=result.message, latency_ms=result.latency_ms, tested_at=_ts(at)
        )


class ConnectionOut(BaseModel):
    name: str
    kind: str
    description: str
    settings: dict[str, Any] = Field(description="the non-secret settings")
    secrets: dict[str, Literal["set", "not set"]] = Field(
        description="each secret field, only whether it is set"
    )
    created_at: datetime
    updated_at: datetime
    updated_by: str
    last_test: TestOut | None

    @classmethod
    def of(cls, v: ConnectionView) -> ConnectionOut:
        return cls(
            name=v.name,
            kind=v.kind,
            description=v.description,
            settings=v.settings,
            secrets=v.secrets,
            created_at=_ts(v.created_at) or datetime.now(UTC),
            updated_at=_ts(v.updated_at) or datetime.now(UTC),
            updated_by=v.updated_by,
            last_test=TestOut.of(v.last_test, v.last_test_at) if v.last_test else None,
        )


class ConnectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["brevo"])
    kind: str = Field(min_length=1, max_length=50, examples=["brevo"])
    description: str = Field(default="", max_length=500)
    settings: dict[str, Any] = Field(
        default_factory=dict, examples=[{"base_url": "https://api.brevo.com", "api_key": "..."}]
    )


class ConnectionPatch(BaseModel):
    description: str | None = Field(default=None, max_length=500)
    settings: dict[str, Any] | None = Field(
        default=None,
        description="fields to change; a secret field set to null is cleared, left out is kept",
    )


class KindOut(BaseModel):
    kind: str
    description: str
    secret_fields: list[str]
    testable: bool
    settings_schema: dict[str, Any]


def connection_router(
    *,
    prefix: str = "/connections",
    get: Callable[[Request], Connectors] = get_connectors,
    read_role: str = "staff",
    write_role: str = "admin",
) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["connections"])
    Reader = Depends(require(read_role))
    Writer = Depends(require(write_role))

    @router.get("/kinds", response_model=list[KindOut], dependencies=[Reader])
    async def kinds(request: Request) -> list[KindOut]:
        """The connection kinds this service knows, with the JSON schema of their settings."""
        return [
            KindOut(
                kind=k.kind,
                description=k.description,
                secret_fields=list(k.secret_fields),
                testable=k.checker is not None,
                settings_schema=k.model.model_json_schema(),
            )
            for k in get(request).connections.kinds.all()
        ]

    @router.get("", response_model=list[ConnectionOut], dependencies=[Reader])
    async def list_connections(request: Request, kind: str | None = None) -> list[ConnectionOut]:
        return [ConnectionOut.of(v) for v in await get(request).connections.all(kind)]

    @router.get("/{name}", response_model=ConnectionOut, dependencies=[Reader])
    async def get_connection(name: str, request: Request) -> ConnectionOut:
        return ConnectionOut.of(await get(request).connections.get(name))

    @router.post("", response_model=ConnectionOut, status_code=201)
    async def create_connection(
        body: ConnectionCreate, request: Request, principal: Principal = Writer
    ) -> ConnectionOut:
        view = await get(request).connections.create(
            body.name,
            body.kind,
            body.settings,
            description=body.description,
            actor=principal.subject,
        )
        return ConnectionOut.of(view)

    @router.patch("/{name}", response_model=ConnectionOut)
    async def update_connection(
        name: str, body: ConnectionPatch, request: Request, principal: Principal = Writer
    ) -> ConnectionOut:
        view = await get(request).connections.update(
            name, body.settings, description=body.description, actor=principal.subject
        )
        return ConnectionOut.of(view)

    @router.delete("/{name}", status_code=204)
    async def delete_connection(
        name: str, request: Request, principal: Principal = Writer
    ) -> Response:
        await get(request).connections.delete(name, actor=principal.subject)
        return Response(status_code=204)

    @router.post("/{name}/test", response_model=TestOut, dependencies=[Writer])
    async def test_connection(name: str, request: Request) -> TestOut:
        """Try the connection with its stored settings (e.g. authenticate at Brevo); the
        outcome is also stored as the connection's ``last_test``."""
        result = await get(request).connections.test(name)
        return TestOut.of(result, datetime.now(UTC).timestamp())

    return router


# --------------------------------------------------------------------------- mappings


class MappingOut(BaseModel):
    name: str
    version: int
    fingerprint: str
    source: str | None
    comment: str | None
    created_at: datetime
    created_by: str
    definition: dict[str, Any] | None = None

    @classmethod
    def of(cls, m: StoredMapping, *, full: bool = True) -> MappingOut:
        return cls(
            name=m.name,
            version=m.version,
            fingerprint=m.fingerprint,
            source=m.source,
            comment=m.comment,
            created_at=_ts(m.created_at) or datetime.now(UTC),
            created_by=m.created_by,
            definition=to_dict(m.definition) if full else None,
        )


class SaveOut(BaseModel):
    created: bool = Field(description="false: identical to the latest version, nothing added")
    mapping: MappingOut


class SourceOut(BaseModel):
    name: str
    fields: list[str]


class ValidationOut(BaseModel):
    valid: bool
    errors: list[dict[str, str]]


class PreviewRequest(BaseModel):
    records: list[dict[str, Any]] = Field(max_length=1000)
    since: datetime | None = Field(default=None, description="marker for changed_since filters")
    version: int | None = None


class PreviewOut(BaseModel):
    record: dict[str, Any] | None
    skipped: bool
    errors: list[dict[str, str]]


_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
_TEXT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def _format_of(request: Request, fmt: Format | None) -> Format:
    if fmt is not None:
        return fmt
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in _YAML_TYPES:
        return "yaml"
    if ctype in ("application/json", ""):
        return "json"
    raise Invalid(
        f"send JSON or YAML (content type {ctype!r} is not a mapping format)",
        code="unsupported-media-type",
        status=415,
    )


def mapping_router(
    *,
    prefix: str = "/mappings",
    get: Callable[[Request], Connectors] = get_connectors,
    read_role: str = "staff",
    write_role: str = "admin",
) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["mappings"])
    Reader = Depends(require(read_role))
    Writer = Depends(require(write_role))

    @router.get("", response_model=list[MappingOut], dependencies=[Reader])
    async def list_mappings(request: Request) -> list[MappingOut]:
        """The latest version of every mapping definition (without the definitions)."""
        return [MappingOut.of(m, full=False) for m in await get(request).mappings.latest_all()]

    @router.get("/sources", response_model=list[SourceOut], dependencies=[Reader])
    async def list_sources(request: Request) -> list[SourceOut]:
        """Named source schemas a definition can be checked against on save (``?source=``)."""
        sources = get(request).mappings.sources
        return [SourceOut(name=n, fields=s.paths()) for n, s in sorted(sources.items())]

    @router.post(
        "",
        response_model=SaveOut,
        status_code=201,
        openapi_extra=_TEXT_BODY,
        responses={200: {"model": SaveOut, "description": "unchanged: no version added"}},
    )
    async def save_mapping(
        request: Request,
        response: Response,
        principal: Principal = Writer,
        format: Format | None = Query(None, description="default: from the Content-Type"),
        source: str | None = Query(None, description="check source fields against this schema"),
        base_version: int | None = Query(None, description="fail if the latest is not this"),
        comment: str | None = Query(None, max_length=500),
    ) -> SaveOut:
        """Save (or import) a definition as JSON or YAML; it becomes the next version."""
        fmt = _format_of(request, format)
        text = await request.body()
        defn = load_yaml(text) if fmt == "yaml" else load_json(text)
        result = await get(request).mappings.save(
            defn,
            source=source,
            base_version=base_version,
            comment=comment,
            actor=principal.subject,
        )
        if not result.created:
            response.status_code = 200
        return SaveOut(created=result.created, mapping=MappingOut.of(result.mapping))

    @router.post(
        "/validate", response_model=ValidationOut, openapi_extra=_TEXT_BODY, dependencies=[Reader]
    )
    async def validate_mapping(
        request: Request,
        format: Format | None = Query(None),
        source: str | None = Query(None),
    ) -> ValidationOut:
        """Check a definition without saving it (200 with ``valid`` and located errors)."""
        from mesh_common.mapping import MappingValidationError

        fmt = _format_of(request, format)
        text = await request.body()
        try:
            defn = load_yaml(text) if fmt == "yaml" else load_json(text)
            get(request).mappings.validate(defn, source=source)
        except MappingValidationError as exc:
            return ValidationOut(
                valid=False, errors=[{"loc": loc, "message": msg} for loc, msg in exc.errors]
            )
        return ValidationOut(valid=True, errors=[])

    @router.get("/{name}", response_model=MappingOut, dependencies=[Reader])
    async def get_mapping(
        name: str, request: Request, version: int | None = Query(None, ge=1)
    ) -> MappingOut:
        return MappingOut.of(await get(request).mappings.get(name, version))

    @router.get("/{name}/versions", response_model=list[MappingOut], dependencies=[Reader])
    async def list_versions(name: str, request: Request) -> list[MappingOut]:
        return [MappingOut.of(m, full=False) for m in await get(request).mappings.versions(name)]

    @router.get(
        "/{name}/export",
        dependencies=[Reader],
        response_class=Response,
        responses={
            200: {
                "content": {"application/yaml": {}, "application/json": {}},
                "description": "the definition as a file",
            }
        },
    )
    async def export_mapping(
        name: str,
        request: Request,
        format: Format = Query("yaml"),
        version: int | None = Query(None, ge=1),
    ) -> Response:
        store = get(request).mappings
        stored = await store.get(name, version)
        text = await store.export_text(name, format, stored.version)
        media = "application/yaml" if format == "yaml" else "application/json"
        filename = f"{name}.v{stored.version}.{'yaml' if format == 'yaml' else 'json'}"
        return Response(
            text,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @router.post("/{name}/preview", response_model=list[PreviewOut], dependencies=[Reader])
    async def preview(name: str, body: PreviewRequest, request: Request) -> list[PreviewOut]:
        """Apply the stored mapping to sample records and show the results (nothing is sent)."""
        compiled = await get(request).mappings.compiled(name, body.version)
        out = []
        for result in compiled.run(body.records, since=body.since):
            out.append(
                PreviewOut(
                    record=result.record,
                    skipped=result.skipped,
                    errors=[{"field": e.field, "message": e.message} for e in result.errors],
                )
            )
        return out

    return router


# --------------------------------------------------------------------------- sync state


class MarkerOut(BaseModel):
    system: str
    tenant: str
    entity: str
    local_key: str
    status: str
    last_sync_at: datetime
    last_success_at: datetime | None
    remark: str | None
    content_hash: str | None
    execution_id: str | None

    @classmethod
    def of(cls, m: Marker) -> MarkerOut:
        return cls(
            system=m.system,
            tenant=m.tenant,
            entity=m.entity,
            local_key=m.local_key,
            status=m.status,
            last_sync_at=_ts(m.last_sync_at) or datetime.now(UTC),
            last_success_at=_ts(m.last_success_at),
            remark=m.remark,
            content_hash=m.content_hash,
            execution_id=m.execution_id,
        )


class MarkerCount(BaseModel):
    system: str
    tenant: str
    entity: str
    status: str
    count: int


class LinkOut(BaseModel):
    system: str
    tenant: str
    entity: str
    local_key: str
    external_key: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, link: Link) -> LinkOut:
        return cls(
            system=link.system,
            tenant=link.tenant,
            entity=link.entity,
            local_key=link.local_key,
            external_key=link.external_key,
            created_at=_ts(link.created_at) or datetime.now(UTC),
            updated_at=_ts(link.updated_at) or datetime.now(UTC),
        )


def sync_router(
    *,
    prefix: str = "/sync",
    get: Callable[[Request], Connectors] = get_connectors,
    role: str = "staff",
) -> APIRouter:
    """Read-only views of sync markers and links, for ops (filter by status, find a record)."""
    router = APIRouter(prefix=prefix, tags=["sync"], dependencies=[Depends(require(role))])

    @router.get("/markers", response_model=list[MarkerOut])
    async def markers(
        request: Request,
        system: str | None = None,
        tenant: str | None = None,
        entity: str | None = None,
        status: Literal["ok", "failed", "skipped"] | None = None,
        local_key: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> list[MarkerOut]:
        found = await get(request).markers.find(
            system=system,
            tenant=tenant,
            entity=entity,
            status=status,
            local_key=local_key,
            limit=limit,
            offset=offset,
        )
        return [MarkerOut.of(m) for m in found]

    @router.get("/markers/summary", response_model=list[MarkerCount])
    async def summary(
        request: Request, system: str | None = None, entity: str | None = None
    ) -> list[MarkerCount]:
        rows = await get(request).markers.counts(system=system, entity=entity)
        return [MarkerCount(**r) for r in rows]

    @router.get("/links", response_model=list[LinkOut])
    async def links(
        request: Request,
        system: str | None = None,
        tenant: str | None = None,
        entity: str | None = None,
        local_key: str | None = None,
        external_key: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> list[LinkOut]:
        found = await get(request).links.find(
            system=system,
            tenant=tenant,
            entity=entity,
            local_key=local_key,
            external_key=external_key,
            limit=limit,
            offset=offset,
        )
        return [LinkOut.of(link) for link in found]

    return router


def connector_routers(**kw: Any) -> list[APIRouter]:
    """The three routers with default prefixes: /connections, /mappings, /sync."""
    sync_kw = {"get": kw.get("get", get_connectors), "role": kw.get("read_role", "staff")}
    return [connection_router(**kw), mapping_router(**kw), sync_router(**sync_kw)]


__all__ = [
    "Connectors",
    "build_connectors",
    "connection_router",
    "connector_hooks",
    "connector_routers",
    "get_connectors",
    "mapping_router",
    "sync_router",
]
