"""Versioned SQL templates: propose, preview, activate, roll back.

Every change is a new version with author and time. A version becomes active only after
:func:`~course_export_service.templates.validate_template` passed against the live course
database; a failing one raises :class:`TemplateInvalid` (422 at the edge) and the active version
keeps running untouched. Business rules only; HTTP lives in ``api.py``.
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from typing import Any

from mesh_common.errors import Invalid, NotFound
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from course_export_service.default_templates import DEFAULT_TEMPLATES
from course_export_service.models import sql_templates
from course_export_service.templates import TemplateKind, TemplateReport, validate_template


class TemplateInvalid(Invalid):
    code, title = "template-invalid", "The SQL template was refused"


@dataclass(frozen=True)
class TemplateVersion:
    kind: TemplateKind
    version: int
    sql: str
    author: str
    created_at: dt.datetime
    active: bool
    comment: str | None


def _version(row: Any) -> TemplateVersion:
    return TemplateVersion(
        TemplateKind(row.kind),
        row.version,
        row.sql,
        row.author,
        row.created_at,
        row.active,
        row.comment,
    )


async def ensure_defaults(session: AsyncSession, *, now: dt.datetime) -> None:
    """Install the shipped templates as version 1 of every kind that has none."""
    present = set((await session.execute(select(sql_templates.c.kind).distinct())).scalars())
    for kind, sql in DEFAULT_TEMPLATES.items():
        if kind.value not in present:
            await session.execute(
                sql_templates.insert().values(
                    kind=kind.value,
                    version=1,
                    sql=sql.strip(),
                    author="system",
                    created_at=now,
                    comment="shipped default",
                    active=True,
                )
            )


async def active(session: AsyncSession, *, kind: TemplateKind) -> TemplateVersion:
    row = (
        await session.execute(
            select(sql_templates).where(
                sql_templates.c.kind == kind.value, sql_templates.c.active.is_(True)
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no active {kind.value} template", code="template-not-found")
    return _version(row)


async def versions(session: AsyncSession, *, kind: TemplateKind) -> list[TemplateVersion]:
    rows = (
        await session.execute(
            select(sql_templates)
            .where(sql_templates.c.kind == kind.value)
            .order_by(sql_templates.c.version.desc())
        )
    ).all()
    return [_version(r) for r in rows]


@dataclass(frozen=True)
class Preview:
    report: TemplateReport
    sql_diff: str  # unified diff against the active version
    columns_added: list[str]
    columns_removed: list[str]


async def preview(
    session: AsyncSession, coursedb: AsyncEngine, *, kind: TemplateKind, sql: str, rows: int = 20
) -> Preview:
    """What ``sql`` would export (first rows) and how it differs from the active version."""
    current = await active(session, kind=kind)
    report = await validate_template(coursedb, sql, kind, preview_rows=rows)
    old_report = await validate_template(coursedb, current.sql, kind, preview_rows=1)
    diff = "".join(
        difflib.unified_diff(
            current.sql.splitlines(keepends=True),
            sql.strip().splitlines(keepends=True),
            fromfile=f"{kind.value} v{current.version} (active)",
            tofile=f"{kind.value} proposed",
        )
    )
    new_cols, old_cols = set(report.columns), set(old_report.columns)
    return Preview(
        report,
        diff,
        sorted(new_cols - old_cols) if report.columns else [],
        sorted(old_cols - new_cols) if report.columns else [],
    )


async def propose(
    session: AsyncSession,
    coursedb: AsyncEngine,
    *,
    kind: TemplateKind,
    sql: str,
    author: str,
    comment: str | None,
    now: dt.datetime,
) -> TemplateVersion:
    """Validate ``sql`` and, if it passes, store it as the new active version."""
    report = await validate_template(coursedb, sql, kind, preview_rows=1)
    if not report.ok:
        raise TemplateInvalid("; ".join(report.errors), extra={"errors": report.errors})
    latest = (
        await session.execute(
            select(func.max(sql_templates.c.version)).where(sql_templates.c.kind == kind.value)
        )
    ).scalar() or 0
    await session.execute(
        update(sql_templates).where(sql_templates.c.kind == kind.value).values(active=False)
    )
    await session.execute(
        sql_templates.insert().values(
            kind=kind.value,
            version=latest + 1,
            sql=sql.strip(),
            author=author,
            created_at=now,
            comment=comment,
            active=True,
        )
    )
    return await active(session, kind=kind)


async def activate(
    session: AsyncSession, coursedb: AsyncEngine, *, kind: TemplateKind, version: int
) -> TemplateVersion:
    """Roll back (or forward) to a stored version, re-validated against today's database."""
    row = (
        await session.execute(
            select(sql_templates).where(
                sql_templates.c.kind == kind.value, sql_templates.c.version == version
            )
        )
    ).first()
    if row is None:
        raise NotFound(
            f"{kind.value} template v{version} does not exist", code="template-not-found"
        )
    report = await validate_template(coursedb, row.sql, kind, preview_rows=1)
    if not report.ok:
        raise TemplateInvalid("; ".join(report.errors), extra={"errors": report.errors})
    await session.execute(
        update(sql_templates).where(sql_templates.c.kind == kind.value).values(active=False)
    )
    await session.execute(
        update(sql_templates).where(sql_templates.c.id == row.id).values(active=True)
    )
    return await active(session, kind=kind)
