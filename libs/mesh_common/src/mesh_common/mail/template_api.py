"""HTTP API of a service's mail templates: read for staff, change for admins.

``template_router(store)`` lists templates, shows the active version with its sample data and
every version, creates versions (validated: 422 with every problem listed), activates a version
(validated again against the current parts), previews a stored version or an unsaved body with
the sample data or supplied data, and shows the audit trail. A service can add its own preview
output (e.g. the PDFs a booking mail carries) through ``preview_extras``. Business rules live in
:class:`~mesh_common.mail.templates.TemplateStore`; this module must not hold any.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from mesh_common.auth import Principal, require
from mesh_common.mail.models import Attachment
from mesh_common.mail.templates import (
    NAME_PATTERN,
    AuditEntry,
    Rendered,
    TemplateInfo,
    TemplateKind,
    TemplateSource,
    TemplateStore,
    TemplateVersion,
)

NameParam = Annotated[str, Path(pattern=NAME_PATTERN)]


@dataclass(frozen=True)
class PreviewInput:
    """What a preview hook gets: the template, what it rendered to and the data used."""

    name: str
    kind: TemplateKind
    rendered: Rendered
    context: dict[str, Any]


class PreviewExtras(BaseModel):
    """What a preview hook adds: files (e.g. PDFs the real mail would carry) and any data."""

    attachments: list[Attachment] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)


PreviewHook = Callable[[PreviewInput], Awaitable[PreviewExtras]]


class TemplateDetail(TemplateInfo):
    sample: dict[str, Any]
    active: TemplateVersion | None


class VersionCreate(TemplateSource):
    comment: Annotated[str, Field(max_length=2000)] | None = None
    activate: bool = False
    kind: TemplateKind | None = Field(None, description="only for a new name (default: mail)")
    description: Annotated[str, Field(max_length=2000)] | None = None


class PreviewRequest(BaseModel):
    version: int | None = Field(None, description="a stored version (default: the active one)")
    source: TemplateSource | None = Field(None, description="an unsaved body instead")
    context: dict[str, Any] | None = Field(None, description="data instead of the sample data")
    kind: TemplateKind | None = Field(None, description="for an unsaved new name")


class PreviewAttachment(BaseModel):
    filename: str
    content_type: str
    size: int
    data_base64: str


class PreviewOut(BaseModel):
    subject: str
    text: str
    html: str | None
    context: dict[str, Any]
    attachments: list[PreviewAttachment]
    extra: dict[str, Any]


def _default_store(request: Request) -> TemplateStore:
    runtime = getattr(request.app.state, "runtime", None)
    store = getattr(runtime, "extras", {}).get("mail_templates")
    if not isinstance(store, TemplateStore):
        raise RuntimeError("no TemplateStore: add template_hooks(store) to the startup hooks")
    return store


def template_router(
    store: TemplateStore | None = None,
    *,
    prefix: str = "/mail/templates",
    audit_path: str = "/mail/template-audit",
    read_role: str = "staff",
    write_role: str = "admin",
    preview_extras: PreviewHook | None = None,
) -> APIRouter:
    """The template API of one service (``store`` default: the one ``template_hooks`` bound)."""
    router = APIRouter(tags=["mail templates"], dependencies=[Depends(require(read_role))])
    writer = require(write_role)

    def get_store(request: Request) -> TemplateStore:
        return store if store is not None else _default_store(request)

    @router.get(prefix, response_model=list[TemplateInfo])
    async def list_templates(request: Request) -> list[TemplateInfo]:
        return await get_store(request).list_templates()

    @router.get(audit_path, response_model=list[AuditEntry])
    async def all_audit(
        request: Request,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> list[AuditEntry]:
        """Who created or activated which template version when, newest first."""
        return await get_store(request).audit(limit=limit, offset=offset)

    @router.get(prefix + "/{name}", response_model=TemplateDetail)
    async def get_template(name: NameParam, request: Request) -> TemplateDetail:
        """The template with its active version and the sample data it is validated with."""
        s = get_store(request)
        info = await s.info(name)
        active = await s.get(name) if info.active_version is not None else None
        return TemplateDetail(**info.model_dump(), sample=s.sample(name), active=active)

    @router.get(prefix + "/{name}/versions", response_model=list[TemplateVersion])
    async def list_versions(name: NameParam, request: Request) -> list[TemplateVersion]:
        return await get_store(request).versions(name)

    @router.get(prefix + "/{name}/versions/{version}", response_model=TemplateVersion)
    async def get_version(name: NameParam, version: int, request: Request) -> TemplateVersion:
        return await get_store(request).get(name, version)

    @router.post(prefix + "/{name}/versions", status_code=201, response_model=TemplateVersion)
    async def create_version(
        name: NameParam,
        body: VersionCreate,
        request: Request,
        principal: Principal = Depends(writer),
    ) -> TemplateVersion:
        """Store a new version after rendering it with the sample data (422 lists every
        problem: syntax errors with line, undefined variables, sandbox violations, limits)."""
        source = TemplateSource(
            subject=body.subject, text=body.text, html=body.html, layout=body.layout
        )
        return await get_store(request).create_version(
            name,
            source,
            author=principal.subject,
            comment=body.comment,
            activate=body.activate,
            kind=body.kind,
            description=body.description,
        )

    @router.post(prefix + "/{name}/versions/{version}/activate", response_model=TemplateVersion)
    async def activate_version(
        name: NameParam,
        version: int,
        request: Request,
        principal: Principal = Depends(writer),
    ) -> TemplateVersion:
        """Make a version the active one (also to roll back); validated again first."""
        return await get_store(request).activate(name, version, actor=principal.subject)

    @router.post(prefix + "/{name}/preview", response_model=PreviewOut)
    async def preview(name: NameParam, body: PreviewRequest, request: Request) -> PreviewOut:
        """Render without storing: a stored version (default active) or an unsaved ``source``,
        with the sample data or the given ``context``."""
        s = get_store(request)
        rendered, data = await s.preview(
            name, version=body.version, source=body.source, context=body.context, kind=body.kind
        )
        extras = PreviewExtras()
        if preview_extras is not None:
            known = await s.list_templates(name=name)
            kind = known[0].kind if known else body.kind or "mail"
            extras = await preview_extras(PreviewInput(name, kind, rendered, data))
        return PreviewOut(
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            context=data,
            attachments=[
                PreviewAttachment(
                    filename=a.filename,
                    content_type=a.content_type,
                    size=len(a.data),
                    data_base64=base64.b64encode(a.data).decode(),
                )
                for a in extras.attachments
            ],
            extra=extras.data,
        )

    @router.get(prefix + "/{name}/audit", response_model=list[AuditEntry])
    async def template_audit(
        name: NameParam,
        request: Request,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> list[AuditEntry]:
        return await get_store(request).audit(name, limit=limit, offset=offset)

    return router
