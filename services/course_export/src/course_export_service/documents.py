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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from mesh_common.mapping import CompiledMapping, MappingResult, compile_mapping, load_yaml
from mesh_contracts.course_export import CourseDocument
from pydantic import ValidationError
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from course_export_service.exact import exact_document
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


Query = Callable[[], Any]  # builds the SQLAlchemy statement (only when it is not cached)


async def _rows(
    source: Source, key: tuple[Any, ...], query: Query, params: Mapping[str, Any]
) -> list[Row]:
    if isinstance(source, AsyncEngine):
        async with source.connect() as conn:
            return await _rows(conn, key, query, params)
    if _is_asyncpg(source):
        return await _asyncpg_rows(source, key, query, params)
    result = await source.execute(query(), params)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


# asyncpg statements as SQLAlchemy compiled them: (SQL, parameter names in order) by the key
# of the statement (its kind, the template SQL, how many ids). A snapshot sends the same few
# statements for every page; building and compiling 200 bind parameters each time cost more
# than reading the rows. Bounded; entries are small.
_statements: dict[tuple[Any, ...], tuple[str, tuple[str, ...]]] = {}
_STATEMENTS_MAX = 512


async def _asyncpg_rows(
    conn: AsyncConnection, key: tuple[Any, ...], query: Query, params: Mapping[str, Any]
) -> list[Row]:
    """On PostgreSQL the rows come straight from asyncpg as its ``Record`` objects (read-only
    mappings with ``get``/``[]`` in C): a snapshot reads about ten child rows per course, and
    SQLAlchemy's tuple-then-Row-then-dict conversion cost more than mapping them. The statement
    is compiled by SQLAlchemy for this dialect exactly as ``execute`` would (once per ``key``),
    so the SQL and the parameter order are the same; the values are asyncpg's in both paths."""
    statement = _statements.get(key)
    if statement is None:
        compiled = query().compile(dialect=conn.dialect)
        statement = (compiled.string, tuple(compiled.positiontup or ()))
        if len(_statements) >= _STATEMENTS_MAX:
            _statements.clear()
        _statements[key] = statement
    sql, names = statement
    args = [params[name] for name in names]
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    records: list[Row] = await driver.fetch(sql, *args)
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

        def in_list() -> Any:
            ids = ", ".join(f":{name}" for name in names)
            return text(
                f"SELECT * FROM ({sql}) AS t WHERE t.course_id IN ({ids}) ORDER BY t.course_id"  # noqa: S608 - validated template
            )

        return await _rows(source, ("in", sql, len(names)), in_list, params)

    def expanding() -> Any:
        return text(
            f"SELECT * FROM ({sql}) AS t WHERE t.course_id IN :ids ORDER BY t.course_id"  # noqa: S608 - validated template
        ).bindparams(bindparam("ids", expanding=True))

    return await _rows(source, ("expanding", sql), expanding, {**params, "ids": list(course_ids)})


async def fetch_page(source: Source, sql: str, *, after: int, limit: int) -> list[Row]:
    """The next ``limit`` rows of the courses template after course id ``after`` (keyset)."""

    def page() -> Any:
        return text(
            f"SELECT * FROM ({sql}) AS t WHERE t.course_id > :after "  # noqa: S608 - validated template
            "ORDER BY t.course_id LIMIT :n"
        ).bindparams(bindparam("after"), bindparam("n"))

    return await _rows(
        source, ("page", sql), page, {**template_params(sql), "after": after, "n": limit}
    )


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


MapRow = Callable[[Row], MappingResult]


def encode_document(document: dict[str, Any], model: CourseDocument | None = None) -> bytes:
    """The JSON text of a document in the contract's JSON form, as pydantic writes it (orjson
    writes the same text for these values, and is faster). An integer beyond 64 bits (only the
    unhashed ``revision`` can get here with one) is left to pydantic, as before."""
    try:
        return orjson.dumps(document)
    except TypeError:
        if model is None:
            model = CourseDocument.model_validate(document)
        return model.model_dump_json().encode()


def _session_order(session: Mapping[str, Any]) -> tuple[str, str]:
    return (str(session.get("date")), str(session.get("start")))


def _lecturer_order(row: Row) -> Any:
    return row.get("sort_order") or 0


def _map_rows(kind: str, map_row: MapRow, rows: Iterable[Row], errors: list[str]) -> list[Any]:
    out = []
    for row in rows:
        result = map_row(row)
        record = result.record
        if record is not None and not result.errors:  # map() has no filter: never skipped
            out.append(record)
        else:
            errors.extend(f"{kind}.{e.field}: {e.message}" for e in result.errors)
    return out


class DocumentBuilder:
    def __init__(self, mappings: Mapping[TemplateKind, CompiledMapping] | None = None) -> None:
        self.mappings = dict(mappings or default_mappings())

    def _map_functions(self) -> tuple[MapRow, MapRow, MapRow, MapRow]:
        m = self.mappings
        return (
            m[TemplateKind.COURSES].map,
            m[TemplateKind.SESSIONS].map,
            m[TemplateKind.LECTURERS].map,
            m[TemplateKind.DISCOUNTS].map,
        )

    def build(
        self,
        course: Row,
        *,
        sessions: Iterable[Row] = (),
        lecturers: Iterable[Row] = (),
        discounts: Iterable[Row] = (),
    ) -> BuildOutcome:
        return self._build(self._map_functions(), course, sessions, lecturers, discounts)

    @staticmethod
    def _build(
        maps: tuple[MapRow, MapRow, MapRow, MapRow],
        course: Row,
        sessions: Iterable[Row],
        lecturers: Iterable[Row],
        discounts: Iterable[Row],
    ) -> BuildOutcome:
        map_course, map_session, map_lecturer, map_discount = maps
        course_id = int(course["course_id"])
        errors: list[str] = []
        mapped = map_course(course)
        doc = mapped.record  # a fresh dict per call: ours to extend
        if doc is None or mapped.errors:
            errors.extend(f"courses.{e.field}: {e.message}" for e in mapped.errors)
            return BuildOutcome(course_id, course.get("number"), None, errors)
        doc["sessions"] = sorted(
            _map_rows("sessions", map_session, sessions, errors), key=_session_order
        )
        ordered = sorted(lecturers, key=_lecturer_order)
        doc["lecturers"] = _map_rows("lecturers", map_lecturer, ordered, errors)
        doc["discounts"] = _map_rows("discounts", map_discount, discounts, errors)
        if errors:
            return BuildOutcome(course_id, doc.get("number"), None, errors)
        model: CourseDocument | None = None
        exact = exact_document(doc)
        if exact is None:
            # The long way, for anything the exact path cannot vouch for: the values come from
            # SQL templates a centre edits (any type, any length, any status text), and a course
            # that breaks the contract must be reported here, not sent.
            doc["content_hash"] = _PLACEHOLDER  # so the contract validates; replaced below
            try:
                model = CourseDocument.model_validate(doc)
            except ValidationError as exc:
                errors = [
                    f"document.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                ]
                return BuildOutcome(course_id, doc.get("number"), None, errors)
            exact = model.model_dump(mode="json")
        try:
            digest = content_hash(exact)
            exact["content_hash"] = digest
            if model is not None:
                model = model.model_copy(update={"content_hash": digest})  # shallow, no checks
            encoded = encode_document(exact, model)
        except (TypeError, ValueError) as exc:  # a lone surrogate: not JSON (nor UTF-8)
            return BuildOutcome(
                course_id, doc.get("number"), None, [f"document: not encodable as JSON: {exc}"]
            )
        number = exact["number"]
        built = Built(course_id, number, exact["revision"], exact, digest, model, encoded)
        return BuildOutcome(course_id, number, built, [])

    def build_all(self, courses: Iterable[Row], children: Children) -> list[BuildOutcome]:
        sessions = children[TemplateKind.SESSIONS]
        lecturers = children[TemplateKind.LECTURERS]
        discounts = children[TemplateKind.DISCOUNTS]
        maps, build = self._map_functions(), self._build
        out = []
        for row in courses:
            course_id = int(row["course_id"])
            out.append(
                build(
                    maps,
                    row,
                    sessions.get(course_id, ()),
                    lecturers.get(course_id, ()),
                    discounts.get(course_id, ()),
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
