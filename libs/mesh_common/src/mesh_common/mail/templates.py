"""Editable mail templates: named, versioned, validated before use, audited.

A template is a **mail** (subject, text body, optional HTML body, optional layout) or a **part**
(text and optional HTML, no subject) such as a signature or a layout, which mails use by name:
``{% include "signature" %}`` anywhere, or ``layout: "frame"`` to wrap the whole body (the layout
prints it with ``{{ content }}``). Every change is a new version with author and time; exactly
one version of a name is active. A version is stored and activated only after it rendered
cleanly with the sample data (see :mod:`mesh_common.mail.rendering` for the sandbox); a part is
also tried inside every active mail, so a broken signature cannot break a confirmation mail.
Defaults come from the service's code and are seeded as version 1 of names that have none.
Who created or activated which version when is kept in an audit trail.

Usage (in the service)::

    store = TemplateStore(template_tables(metadata), defaults={
        "booking-confirmation": TemplateDefault(
            subject="Ihre Anmeldung: {{ course.title }}",
            text="Hallo {{ name }}, ...\\n{% include 'signature' %}",
            sample={"name": "Erika Muster", "course": {"title": "Spanisch A1"}},
        ),
        "signature": TemplateDefault(kind="part", text="-- \\nIhre VHS", html="<p>Ihre VHS</p>"),
    })
    rendered = await store.render("booking-confirmation", {"name": ..., "course": ...})
    await enqueue(session, mail_tables, rendered.mail(to=email, category="booking-confirmation"))

This module owns the business rules; HTTP lives in :mod:`mesh_common.mail.template_api`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NoReturn

from markupsafe import Markup
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mesh_common.db import Database
from mesh_common.errors import Conflict, Invalid, NotFound
from mesh_common.mail.models import OutgoingMail
from mesh_common.mail.rendering import Renderer, RenderLimits, TemplateProblem
from mesh_common.mail.tables import TemplateTables

TemplateKind = Literal["mail", "part"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
MAX_SOURCE_CHARS = 200_000
SYSTEM_AUTHOR = "system"

# Shown in place of the body when a layout part is validated or previewed on its own.
SAMPLE_CONTENT_TEXT = "[the mail's text goes here]"
SAMPLE_CONTENT_HTML = "<p>[the mail's HTML goes here]</p>"

Source = Annotated[str, Field(max_length=MAX_SOURCE_CHARS)]
TemplateName = Annotated[str, Field(pattern=NAME_PATTERN)]


class TemplateInvalid(Invalid):
    code, title = "template-invalid", "The template was refused"


class TemplateSource(BaseModel):
    """The editable content of one version. Parts have no subject and no layout."""

    subject: Annotated[str, Field(max_length=2000)] | None = None
    text: Source
    html: Source | None = None
    layout: TemplateName | None = None


class TemplateDefault(TemplateSource):
    """A template as shipped in the service's code, with the sample data it is checked with."""

    kind: TemplateKind = "mail"
    description: str | None = None
    sample: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> TemplateDefault:
        _check_shape(self.kind, self)
        return self


class Rendered(BaseModel):
    """A rendered mail template, ready to become an :class:`OutgoingMail`."""

    subject: str
    text: str
    html: str | None

    def mail(self, **fields: Any) -> OutgoingMail:
        """An :class:`OutgoingMail` of this subject and bodies plus ``fields`` (to, category...)."""
        return OutgoingMail(subject=self.subject, text=self.text, html=self.html, **fields)


class TemplateVersion(BaseModel):
    name: str
    kind: TemplateKind
    version: int
    subject: str | None
    text: str
    html: str | None
    layout: str | None
    comment: str | None
    author: str
    created_at: datetime
    active: bool


class TemplateInfo(BaseModel):
    name: str
    kind: TemplateKind
    description: str | None
    active_version: int | None
    latest_version: int
    has_default: bool
    updated_at: datetime


class AuditEntry(BaseModel):
    name: str
    version: int | None
    action: Literal["seeded", "created", "activated"]
    actor: str
    at: datetime
    detail: dict[str, Any] | None


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _check_shape(kind: TemplateKind, source: TemplateSource) -> None:
    if kind == "mail" and not (source.subject and source.subject.strip()):
        raise ValueError("a mail template needs a subject")
    if kind == "part" and (source.subject is not None or source.layout is not None):
        raise ValueError("a part has no subject and no layout")


PartSources = dict[str, tuple[str, str | None]]


class TemplateStore:
    """Versioned, validated mail templates of one service (see the module docstring).

    ``defaults`` are the templates shipped in code with their sample data; ``default_sample``
    is the sample for names created later through the API; ``filters``/``globals`` extend the
    template language (e.g. a German date filter). ``allow_new=False`` limits the API to the
    names in ``defaults``.
    """

    def __init__(
        self,
        tables: TemplateTables,
        defaults: Mapping[str, TemplateDefault] | None = None,
        *,
        default_sample: Mapping[str, Any] | None = None,
        filters: Mapping[str, Callable[..., Any]] | None = None,
        globals: Mapping[str, Any] | None = None,
        limits: RenderLimits | None = None,
        allow_new: bool = True,
        db: Database | None = None,
    ) -> None:
        self.tables = tables
        self.defaults = dict(defaults or {})
        self.default_sample = dict(default_sample or {})
        self.allow_new = allow_new
        self.renderer = Renderer(limits, filters=filters, globals=globals)
        self._db = db

    # ------------------------------------------------------------------ wiring

    def bind(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("TemplateStore is not bound: add template_hooks(store) at startup")
        return self._db

    def sample(self, name: str) -> dict[str, Any]:
        default = self.defaults.get(name)
        return dict(default.sample if default is not None else self.default_sample)

    # ------------------------------------------------------------------ rendering (no IO)

    def render_source(
        self,
        name: str,
        kind: TemplateKind,
        source: TemplateSource,
        context: Mapping[str, Any],
        parts: PartSources,
    ) -> tuple[Rendered | None, list[TemplateProblem]]:
        """Render ``source`` with ``parts`` in effect; returns the result or every problem."""
        problems: list[TemplateProblem] = []
        r = self.renderer
        if kind == "part":
            text_ctx = {"content": SAMPLE_CONTENT_TEXT, **context}
            html_ctx = {"content": Markup(SAMPLE_CONTENT_HTML), **context}  # noqa: S704 - constant
            text, p1 = r.render_field("text", name, "text", source.text, text_ctx, parts)
            html, p2 = (
                r.render_field("html", name, "html", source.html, html_ctx, parts)
                if source.html is not None
                else (None, None)
            )
            problems += [p for p in (p1, p2) if p is not None]
            if problems or text is None:
                return None, problems
            return Rendered(subject="", text=text, html=html), []

        subject, p0 = r.render_field("text", name, "subject", source.subject or "", context, parts)
        text, p1 = r.render_field("text", name, "text", source.text, context, parts)
        html, p2 = (
            r.render_field("html", name, "html", source.html, context, parts)
            if source.html is not None
            else (None, None)
        )
        problems += [p for p in (p0, p1, p2) if p is not None]
        if subject is not None and not subject.strip():
            problems.append(
                TemplateProblem(
                    template=name,
                    field="subject",
                    line=None,
                    kind="error",
                    message="the subject renders empty",
                )
            )
        if source.layout is not None and not problems:
            layout = parts.get(source.layout)
            if layout is None:
                problems.append(
                    TemplateProblem(
                        template=name,
                        field="layout",
                        line=None,
                        kind="missing-part",
                        message=f"there is no part named {source.layout!r}",
                    )
                )
            else:
                text, p1 = r.render_field(
                    "text", source.layout, "text", layout[0], {**context, "content": text}, parts
                )
                if html is not None and layout[1] is not None:
                    html, p2 = r.render_field(
                        "html",
                        source.layout,
                        "html",
                        layout[1],
                        # The body was rendered with autoescape: it is HTML, not data.
                        {**context, "content": Markup(html)},  # noqa: S704
                        parts,
                    )
                else:
                    p2 = None
                problems += [p.model_copy(update={"via": name}) for p in (p1, p2) if p is not None]
        if problems or subject is None or text is None:
            return None, problems
        return Rendered(subject=" ".join(subject.split()), text=text, html=html), []

    def _validate(
        self,
        name: str,
        kind: TemplateKind,
        source: TemplateSource,
        parts: PartSources,
        mails: Mapping[str, TemplateSource],
    ) -> list[TemplateProblem]:
        """Problems of ``source`` with its sample; for a part also those of every active mail
        rendered with this part in place."""
        _, problems = self.render_source(name, kind, source, self.sample(name), parts)
        if kind == "part":
            trial = {**parts, name: (source.text, source.html)}
            for mail_name, mail_source in sorted(mails.items()):
                _, found = self.render_source(
                    mail_name, "mail", mail_source, self.sample(mail_name), trial
                )
                problems += [p if p.via else p.model_copy(update={"via": mail_name}) for p in found]
        return problems

    @staticmethod
    def _raise(name: str, problems: list[TemplateProblem]) -> NoReturn:
        summary = "; ".join(p.describe() for p in problems[:5])
        raise TemplateInvalid(
            f"{name}: {summary}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
            extra={"errors": [p.model_dump() for p in problems]},
        )

    # ------------------------------------------------------------------ database reads

    async def _active(self, session: AsyncSession) -> tuple[PartSources, dict[str, TemplateSource]]:
        """Every active part and active mail source."""
        t, v = self.tables.templates, self.tables.versions
        rows = (
            await session.execute(
                select(
                    t.c.name, t.c.kind, v.c.subject, v.c.text_body, v.c.html_body, v.c.layout
                ).select_from(
                    t.join(v, and_(v.c.name == t.c.name, v.c.version == t.c.active_version))
                )
            )
        ).all()
        parts: PartSources = {}
        mails: dict[str, TemplateSource] = {}
        for r in rows:
            if r.kind == "part":
                parts[r.name] = (r.text_body, r.html_body)
            else:
                mails[r.name] = TemplateSource.model_construct(
                    subject=r.subject, text=r.text_body, html=r.html_body, layout=r.layout
                )
        return parts, mails

    async def _template_row(self, session: AsyncSession, name: str) -> Any:
        t = self.tables.templates
        return (await session.execute(select(t).where(t.c.name == name))).first()

    async def _version_row(self, session: AsyncSession, name: str, version: int) -> Any:
        v = self.tables.versions
        row = (
            await session.execute(select(v).where(v.c.name == name, v.c.version == version))
        ).first()
        if row is None:
            raise NotFound(f"template {name!r} has no version {version}", code="template-not-found")
        return row

    @staticmethod
    def _version(row: Any, kind: TemplateKind, active_version: int | None) -> TemplateVersion:
        return TemplateVersion(
            name=row.name,
            kind=kind,
            version=row.version,
            subject=row.subject,
            text=row.text_body,
            html=row.html_body,
            layout=row.layout,
            comment=row.comment,
            author=row.author,
            created_at=_ts(row.created_at),
            active=row.version == active_version,
        )

    async def list_templates(self, *, name: str | None = None) -> list[TemplateInfo]:
        t, v = self.tables.templates, self.tables.versions
        latest = (
            select(v.c.name, func.max(v.c.version).label("latest")).group_by(v.c.name).subquery()
        )
        query = (
            select(t, latest.c.latest)
            .select_from(t.outerjoin(latest, latest.c.name == t.c.name))
            .order_by(t.c.name)
        )
        if name is not None:
            query = query.where(t.c.name == name)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            TemplateInfo(
                name=r.name,
                kind=r.kind,
                description=r.description,
                active_version=r.active_version,
                latest_version=r.latest or 0,
                has_default=r.name in self.defaults,
                updated_at=_ts(r.updated_at),
            )
            for r in rows
        ]

    async def info(self, name: str) -> TemplateInfo:
        found = await self.list_templates(name=name)
        if not found:
            raise NotFound(f"no template named {name!r}", code="template-not-found")
        return found[0]

    async def get(self, name: str, version: int | None = None) -> TemplateVersion:
        """The active version of ``name`` (or the given one)."""
        async with self.db.sessionmaker() as session:
            info = await self._template_row(session, name)
            if info is None:
                raise NotFound(f"no template named {name!r}", code="template-not-found")
            wanted = version if version is not None else info.active_version
            if wanted is None:
                raise NotFound(f"template {name!r} has no active version", code="template-inactive")
            row = await self._version_row(session, name, wanted)
            return self._version(row, info.kind, info.active_version)

    async def versions(self, name: str) -> list[TemplateVersion]:
        v = self.tables.versions
        async with self.db.sessionmaker() as session:
            info = await self._template_row(session, name)
            if info is None:
                raise NotFound(f"no template named {name!r}", code="template-not-found")
            rows = (
                await session.execute(
                    select(v).where(v.c.name == name).order_by(v.c.version.desc())
                )
            ).all()
        return [self._version(r, info.kind, info.active_version) for r in rows]

    async def audit(
        self, name: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[AuditEntry]:
        a = self.tables.audit
        query = select(a).order_by(a.c.at.desc(), a.c.id.desc()).limit(limit).offset(offset)
        if name is not None:
            query = query.where(a.c.name == name)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AuditEntry(
                name=r.name,
                version=r.version,
                action=r.action,
                actor=r.actor,
                at=_ts(r.at),
                detail=r.detail,
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ rendering with the DB

    async def render(
        self, name: str, context: Mapping[str, Any], *, session: AsyncSession | None = None
    ) -> Rendered:
        """Render the active version of mail template ``name`` with ``context``.

        Raises ``NotFound`` for an unknown or inactive name and :class:`TemplateInvalid` (422)
        when the data does not fit the template (e.g. a variable it needs is missing).
        """
        if session is None:
            async with self.db.sessionmaker() as own:
                return await self.render(name, context, session=own)
        parts, mails = await self._active(session)
        return await self._render_active(session, parts, mails, name, context)

    async def render_many(self, names: Sequence[str], context: Mapping[str, Any]) -> list[Rendered]:
        """:meth:`render` for several mail templates with the same data (e.g. a confirmation
        and a protocol), reading the active versions once; same errors."""
        async with self.db.sessionmaker() as session:
            parts, mails = await self._active(session)
            return [
                await self._render_active(session, parts, mails, name, context) for name in names
            ]

    async def _render_active(
        self,
        session: AsyncSession,
        parts: PartSources,
        mails: Mapping[str, TemplateSource],
        name: str,
        context: Mapping[str, Any],
    ) -> Rendered:
        source = mails.get(name)
        if source is None:
            info = await self._template_row(session, name)
            if info is None:
                raise NotFound(f"no template named {name!r}", code="template-not-found")
            if info.kind == "part":
                raise Invalid(f"{name!r} is a part; only mail templates render", code="not-a-mail")
            raise NotFound(f"template {name!r} has no active version", code="template-inactive")
        rendered, problems = self.render_source(name, "mail", source, context, parts)
        if rendered is None:
            self._raise(name, problems)
        return rendered

    async def preview(
        self,
        name: str,
        *,
        version: int | None = None,
        source: TemplateSource | None = None,
        context: Mapping[str, Any] | None = None,
        kind: TemplateKind | None = None,
    ) -> tuple[Rendered, dict[str, Any]]:
        """Render a stored version (default: the active one) or an unsaved ``source`` with the
        sample data or ``context``; returns the result and the data used. Stores nothing."""
        async with self.db.sessionmaker() as session:
            parts, _ = await self._active(session)
            info = await self._template_row(session, name)
            the_kind: TemplateKind = (
                info.kind if info is not None else kind or self._default_kind(name)
            )
            if source is None:
                if info is None:
                    raise NotFound(f"no template named {name!r}", code="template-not-found")
                wanted = version if version is not None else info.active_version
                if wanted is None:
                    raise NotFound(
                        f"template {name!r} has no active version", code="template-inactive"
                    )
                row = await self._version_row(session, name, wanted)
                source = TemplateSource.model_construct(
                    subject=row.subject, text=row.text_body, html=row.html_body, layout=row.layout
                )
        self._check_source(name, the_kind, source)
        data = dict(context) if context is not None else self.sample(name)
        rendered, problems = self.render_source(name, the_kind, source, data, parts)
        if rendered is None:
            self._raise(name, problems)
        return rendered, data

    def _default_kind(self, name: str) -> TemplateKind:
        default = self.defaults.get(name)
        return default.kind if default is not None else "mail"

    @staticmethod
    def _check_source(name: str, kind: TemplateKind, source: TemplateSource) -> None:
        try:
            _check_shape(kind, source)
        except ValueError as exc:
            raise TemplateInvalid(
                f"{name}: {exc}",
                extra={
                    "errors": [
                        TemplateProblem(
                            template=name,
                            field="subject",
                            line=None,
                            kind="error",
                            message=str(exc),
                        ).model_dump()
                    ]
                },
            ) from None

    # ------------------------------------------------------------------ changes

    async def ensure_defaults(self) -> list[str]:
        """Seed each default as version 1 of a name that has none; returns the names seeded.

        The defaults are validated together first: an invalid default is a bug in the service
        and stops its startup with the problems listed.
        """
        parts: PartSources = {
            n: (d.text, d.html) for n, d in self.defaults.items() if d.kind == "part"
        }
        mails = {n: d for n, d in self.defaults.items() if d.kind == "mail"}
        problems: list[TemplateProblem] = []
        for name, default in self.defaults.items():
            problems += self._validate(name, default.kind, default, parts, mails)
        if problems:
            raise ValueError(
                "invalid default mail templates: " + "; ".join(p.describe() for p in problems)
            )
        t = self.tables.templates
        async with self.db.sessionmaker() as session:
            present = set((await session.execute(select(t.c.name))).scalars())
        seeded: list[str] = []
        for name, default in self.defaults.items():
            if name in present:
                continue
            try:
                async with self.db.unit_of_work() as session:
                    now = time.time()
                    await session.execute(
                        t.insert().values(
                            name=name,
                            kind=default.kind,
                            description=default.description,
                            active_version=1,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    await self._insert_version(
                        session, name, 1, default, SYSTEM_AUTHOR, "default from code", now
                    )
                    await self._audit(session, name, 1, "seeded", SYSTEM_AUTHOR, now, None)
            except IntegrityError:
                continue  # another replica seeded it at the same moment
            seeded.append(name)
        return seeded

    async def _insert_version(
        self,
        session: AsyncSession,
        name: str,
        version: int,
        source: TemplateSource,
        author: str,
        comment: str | None,
        now: float,
    ) -> None:
        await session.execute(
            self.tables.versions.insert().values(
                name=name,
                version=version,
                subject=source.subject,
                text_body=source.text,
                html_body=source.html,
                layout=source.layout,
                comment=comment,
                author=author,
                created_at=now,
            )
        )

    async def _audit(
        self,
        session: AsyncSession,
        name: str,
        version: int | None,
        action: str,
        actor: str,
        now: float,
        detail: dict[str, Any] | None,
    ) -> None:
        await session.execute(
            self.tables.audit.insert().values(
                name=name, version=version, action=action, actor=actor, at=now, detail=detail
            )
        )

    async def create_version(
        self,
        name: str,
        source: TemplateSource,
        *,
        author: str,
        comment: str | None = None,
        activate: bool = False,
        kind: TemplateKind | None = None,
        description: str | None = None,
    ) -> TemplateVersion:
        """Validate ``source`` and store it as the next version of ``name`` (active if asked).

        A new name needs ``allow_new`` (its kind defaults to mail). Raises
        :class:`TemplateInvalid` (422) listing every problem; nothing is stored then.
        """
        t = self.tables.templates
        try:
            async with self.db.unit_of_work() as session:
                info = await self._template_row(session, name)
                if info is None:
                    if name not in self.defaults and not self.allow_new:
                        raise NotFound(
                            f"no template named {name!r} (new names are not allowed here)",
                            code="template-not-found",
                        )
                    the_kind: TemplateKind = kind or self._default_kind(name)
                elif kind is not None and kind != info.kind:
                    raise Invalid(
                        f"{name!r} is a {info.kind} template, not a {kind}", code="kind-mismatch"
                    )
                else:
                    the_kind = info.kind
                self._check_source(name, the_kind, source)
                parts, mails = await self._active(session)
                problems = self._validate(name, the_kind, source, parts, mails)
                if problems:
                    self._raise(name, problems)
                now = time.time()
                if info is None:
                    await session.execute(
                        t.insert().values(
                            name=name,
                            kind=the_kind,
                            description=description,
                            active_version=None,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                latest = (
                    await session.execute(
                        select(func.max(self.tables.versions.c.version)).where(
                            self.tables.versions.c.name == name
                        )
                    )
                ).scalar() or 0
                version = int(latest) + 1
                await self._insert_version(session, name, version, source, author, comment, now)
                await self._audit(
                    session, name, version, "created", author, now, {"comment": comment}
                )
                values: dict[str, Any] = {"updated_at": now}
                if description is not None:
                    values["description"] = description
                if activate:
                    values["active_version"] = version
                    await self._audit(
                        session,
                        name,
                        version,
                        "activated",
                        author,
                        now,
                        {"previous": info.active_version if info is not None else None},
                    )
                await session.execute(update(t).where(t.c.name == name).values(**values))
        except IntegrityError:
            raise Conflict(
                f"template {name!r} was changed at the same time; try again",
                code="template-conflict",
            ) from None
        return await self.get(name, version)

    async def activate(self, name: str, version: int, *, actor: str) -> TemplateVersion:
        """Make ``version`` the active one after validating it against the current parts (and,
        for a part, every active mail). Activating the active version changes nothing."""
        t = self.tables.templates
        async with self.db.unit_of_work() as session:
            info = await self._template_row(session, name)
            if info is None:
                raise NotFound(f"no template named {name!r}", code="template-not-found")
            row = await self._version_row(session, name, version)
            if info.active_version == version:
                return self._version(row, info.kind, version)
            source = TemplateSource.model_construct(
                subject=row.subject, text=row.text_body, html=row.html_body, layout=row.layout
            )
            parts, mails = await self._active(session)
            problems = self._validate(name, info.kind, source, parts, mails)
            if problems:
                self._raise(name, problems)
            now = time.time()
            result = await session.execute(
                update(t)
                .where(t.c.name == name, _same(t.c.active_version, info.active_version))
                .values(active_version=version, updated_at=now)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise Conflict(
                    f"template {name!r} was activated by someone else at the same time",
                    code="template-conflict",
                )
            await self._audit(
                session, name, version, "activated", actor, now, {"previous": info.active_version}
            )
        return await self.get(name, version)


def _same(column: Any, value: int | None) -> Any:
    return column.is_(None) if value is None else column == value
