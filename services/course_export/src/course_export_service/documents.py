"""Course documents: template rows -> mapping definitions -> validated export contract.

The exporter reads the four active templates for a set of courses (:func:`fetch_rows` wraps each
template as a subquery, so templates never page or filter themselves), groups the child rows by
course, maps every row with the kind's mapping definition (``mappings/*.yaml`` ship as version 1)
and validates the assembled document against ``mesh_contracts.course_export.CourseDocument``.
One broken course yields a per-course error and never stops the others (partial success).

Per course the work is kept to: one call of each compiled mapping per row (generated Python,
see ``mesh_common.mapping``), one pydantic validation, one JSON-mode dump (hashed, and kept as
the document), one hash, one shallow copy carrying the hash. Validation stays although it is
the largest part: the rows are untrusted (see :meth:`DocumentBuilder.build`). On PostgreSQL the
rows are asyncpg's own records, not dicts (see :func:`_asyncpg_rows`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mesh_common.mapping import CompiledMapping, compile_mapping, load_yaml
from mesh_contracts.course_export import CourseDocument
from pydantic import ValidationError
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from course_export_service.state import Built, content_hash
from course_export_service.templates import TemplateKind, template_params

Row = Mapping[str, Any]
_PLACEHOLDER = "0" * 64


def default_mappings() -> dict[TemplateKind, CompiledMapping]:
    """The shipped mapping definitions, compiled (one per template kind)."""
    base = resources.files("course_export_service") / "mappings"
    return {
        kind: compile_mapping(load_yaml((base / f"{kind.value}.yaml").read_text()))
        for kind in TemplateKind
    }


Source = AsyncEngine | AsyncConnection  # a connection lets several reads share one checkout


async def _rows(source: Source, query: Any, params: Mapping[str, Any]) -> list[Row]:
    if isinstance(source, AsyncEngine):
        async with source.connect() as conn:
            return await _rows(conn, query, params)
    if _is_asyncpg(source):
        return await _asyncpg_rows(source, query, params)
    result = await source.execute(query, params)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


async def _asyncpg_rows(conn: AsyncConnection, query: Any, params: Mapping[str, Any]) -> list[Row]:
    """On PostgreSQL the rows come straight from asyncpg as its ``Record`` objects (read-only
    mappings with ``get``/``[]`` in C): a snapshot reads about ten child rows per course, and
    SQLAlchemy's tuple-then-Row-then-dict conversion cost more than mapping them. The statement
    is compiled by SQLAlchemy for this dialect exactly as ``execute`` would, so the SQL and the
    parameter order are the same; the values are asyncpg's in both paths."""
    compiled = query.compile(dialect=conn.dialect)
    args = [params[name] for name in compiled.positiontup or ()]
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    records: list[Row] = await driver.fetch(compiled.string, *args)
    return records


def _is_asyncpg(source: Source) -> bool:
    return source.dialect.name == "postgresql" and source.dialect.driver == "asyncpg"


async def fetch_rows(source: Source, sql: str, course_ids: Sequence[int]) -> list[Row]:
    """Rows of one template for the given courses (the template is wrapped, not edited)."""
    if not course_ids:
        return []
    params = template_params(sql)
    if _is_asyncpg(source):
        # The same statement SQLAlchemy sends for an expanding IN (``IN ($1, $2, ...)``): the
        # same plan, hence child rows in the same order within a course as before (templates
        # need not order them, and their order is part of the document).
        names = [f"ids_{i}" for i in range(1, len(course_ids) + 1)]
        params.update(zip(names, course_ids, strict=True))
        ids = ", ".join(f":{name}" for name in names)
        wrapped = text(
            f"SELECT * FROM ({sql}) AS t WHERE t.course_id IN ({ids}) ORDER BY t.course_id"  # noqa: S608 - validated template
        )
        return await _rows(source, wrapped, params)
    wrapped = text(
        f"SELECT * FROM ({sql}) AS t WHERE t.course_id IN :ids ORDER BY t.course_id"  # noqa: S608 - validated template
    ).bindparams(bindparam("ids", expanding=True))
    return await _rows(source, wrapped, {**params, "ids": list(course_ids)})


async def fetch_page(source: Source, sql: str, *, after: int, limit: int) -> list[Row]:
    """The next ``limit`` rows of the courses template after course id ``after`` (keyset)."""
    wrapped = text(
        f"SELECT * FROM ({sql}) AS t WHERE t.course_id > :after "  # noqa: S608 - validated template
        "ORDER BY t.course_id LIMIT :n"
    ).bindparams(bindparam("after"), bindparam("n"))
    return await _rows(source, wrapped, {**template_params(sql), "after": after, "n": limit})


Children = dict[TemplateKind, dict[int, list[Row]]]
CHILD_KINDS = (TemplateKind.SESSIONS, TemplateKind.LECTURERS, TemplateKind.DISCOUNTS)


async def fetch_children(
    source: Source, templates: Mapping[TemplateKind, str], course_ids: Sequence[int]
) -> Children:
    """Session, lecturer and discount rows of the given courses, grouped by course id."""
    if isinstance(source, AsyncEngine):
        async with source.connect() as conn:
            return await fetch_children(conn, templates, course_ids)
    children: Children = {}
    for kind in CHILD_KINDS:
        grouped: dict[int, list[Row]] = defaultdict(list)
        for row in await fetch_rows(source, templates[kind], course_ids):
            grouped[int(row["course_id"])].append(row)
        children[kind] = grouped
    return children


@dataclass(frozen=True)
class BuildOutcome:
    course_id: int
    number: str | None
    built: Built | None
    errors: list[str]


class DocumentBuilder:
    def __init__(self, mappings: Mapping[TemplateKind, CompiledMapping] | None = None) -> None:
        self.mappings = dict(mappings or default_mappings())

    def _map_all(self, kind: TemplateKind, rows: Iterable[Row], errors: list[str]) -> list[Any]:
        out = []
        mapping = self.mappings[kind]
        for row in rows:
            result = mapping.map(row)
            if result.ok and result.record is not None:
                out.append(result.record)
            else:
                errors.extend(f"{kind.value}.{e.field}: {e.message}" for e in result.errors)
        return out

    def build(
        self,
        course: Row,
        *,
        sessions: Iterable[Row] = (),
        lecturers: Iterable[Row] = (),
        discounts: Iterable[Row] = (),
    ) -> BuildOutcome:
        course_id = int(course["course_id"])
        errors: list[str] = []
        mapped = self.mappings[TemplateKind.COURSES].map(course)
        if not mapped.ok or mapped.record is None:
            errors.extend(f"courses.{e.field}: {e.message}" for e in mapped.errors)
            return BuildOutcome(course_id, course.get("number"), None, errors)
        doc = mapped.record  # a fresh dict per call: ours to extend
        doc["sessions"] = sorted(
            self._map_all(TemplateKind.SESSIONS, sessions, errors),
            key=lambda s: (str(s.get("date")), str(s.get("start"))),
        )
        ordered = sorted(lecturers, key=lambda r: r.get("sort_order") or 0)
        doc["lecturers"] = self._map_all(TemplateKind.LECTURERS, ordered, errors)
        doc["discounts"] = self._map_all(TemplateKind.DISCOUNTS, discounts, errors)
        if errors:
            return BuildOutcome(course_id, doc.get("number"), None, errors)
        doc["content_hash"] = _PLACEHOLDER  # so the contract validates; replaced below
        try:
            # Validated in full although the mappings fix the document's shape: the values come
            # from SQL templates a centre edits (any type, any length, any status text), and a
            # course that breaks the contract must be reported here, not sent.
            model = CourseDocument.model_validate(doc)
        except ValidationError as exc:
            errors = [f"document.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            return BuildOutcome(course_id, doc.get("number"), None, errors)
        valid = model.model_dump(mode="json")  # the one dump: hashed and kept as the document
        digest = content_hash(valid)
        valid["content_hash"] = digest
        model = model.model_copy(update={"content_hash": digest})  # shallow, no re-validation
        built = Built(course_id, model.number, model.revision, valid, digest, model)
        return BuildOutcome(course_id, model.number, built, [])

    def build_all(self, courses: Iterable[Row], children: Children) -> list[BuildOutcome]:
        sessions = children[TemplateKind.SESSIONS]
        lecturers = children[TemplateKind.LECTURERS]
        discounts = children[TemplateKind.DISCOUNTS]
        out = []
        for row in courses:
            course_id = int(row["course_id"])
            out.append(
                self.build(
                    row,
                    sessions=sessions.get(course_id, ()),
                    lecturers=lecturers.get(course_id, ()),
                    discounts=discounts.get(course_id, ()),
                )
            )
        return out

    async def build_for(
        self, engine: AsyncEngine, templates: Mapping[TemplateKind, str], course_ids: Sequence[int]
    ) -> list[BuildOutcome]:
        """Read the templates for ``course_ids`` and build every course (missing ones skipped:
        a course the courses template does not select is not published)."""
        async with engine.connect() as conn:  # one checkout for the four templates
            courses = await fetch_rows(conn, templates[TemplateKind.COURSES], course_ids)
            ids = [int(r["course_id"]) for r in courses]
            children = await fetch_children(conn, templates, ids)
        return self.build_all(courses, children)
