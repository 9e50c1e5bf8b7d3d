"""Template rows -> mapping definitions -> validated course documents, on a seeded coursedb."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from course_export_service.default_templates import DEFAULT_TEMPLATES
from course_export_service.documents import (
    CHILD_KINDS,
    DocumentBuilder,
    fetch_page,
    fetch_rows,
)
from course_export_service.templates import TemplateKind, template_params
from coursedb import schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_contracts.course_export import CourseDocument
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def coursedb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    engine = create_engine(url)
    await seed(engine, courses=40, seed=4, reset=True)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_documents_validate_against_the_contract(
    coursedb: AsyncEngine, published_courses: Any
) -> None:
    ids = [r.id for r in await published_courses(coursedb)]
    outcomes = await DocumentBuilder().build_for(coursedb, DEFAULT_TEMPLATES, ids)
    assert len(outcomes) == len(ids) > 0
    assert all(o.errors == [] for o in outcomes), [o.errors for o in outcomes if o.errors][:3]
    docs = [CourseDocument.model_validate(o.built.document) for o in outcomes if o.built]
    with_sessions = [d for d in docs if d.sessions]
    assert with_sessions, "the seed has courses with sessions"
    s = with_sessions[0].sessions[0]
    # Local wall-clock time at the location, with the Berlin offset of that date (CET or CEST).
    assert s.starts_at.utcoffset() in (dt.timedelta(hours=1), dt.timedelta(hours=2))
    assert s.starts_at.time() == s.start and s.starts_at.date() == s.date
    assert any(d.lecturers for d in docs) and any(d.discounts for d in docs)
    assert all(len(o.built.hash) == 64 for o in outcomes if o.built)


async def test_same_data_same_hash_and_a_change_changes_it(
    coursedb: AsyncEngine, published_courses: Any
) -> None:
    ids = [r.id for r in await published_courses(coursedb)][:3]
    builder = DocumentBuilder()
    first = {
        o.course_id: o.built.hash
        for o in await builder.build_for(coursedb, DEFAULT_TEMPLATES, ids)
        if o.built
    }
    again = {
        o.course_id: o.built.hash
        for o in await builder.build_for(coursedb, DEFAULT_TEMPLATES, ids)
        if o.built
    }
    assert first == again
    async with coursedb.begin() as conn:
        await conn.execute(
            schema.courses.update()
            .where(schema.courses.c.id == ids[0])
            .values(title="Neu: Yoga am Abend")
        )
    changed = {
        o.course_id: o.built.hash
        for o in await builder.build_for(coursedb, DEFAULT_TEMPLATES, ids)
        if o.built
    }
    assert changed[ids[0]] != first[ids[0]]
    assert changed[ids[1]] == first[ids[1]]


async def test_one_broken_course_does_not_stop_the_others(
    coursedb: AsyncEngine, published_courses: Any
) -> None:
    ids = [r.id for r in await published_courses(coursedb)][:4]
    templates = dict(DEFAULT_TEMPLATES)
    # A centre's template that yields no fee for one course: that course fails, alone.
    templates[TemplateKind.COURSES] = DEFAULT_TEMPLATES[TemplateKind.COURSES].replace(
        "c.fee,", f"CASE WHEN c.id = {ids[1]} THEN NULL ELSE c.fee END AS fee,"
    )
    outcomes = {o.course_id: o for o in await DocumentBuilder().build_for(coursedb, templates, ids)}
    assert outcomes[ids[1]].built is None
    assert any("fee" in e for e in outcomes[ids[1]].errors)
    assert all(outcomes[i].built is not None for i in (ids[0], ids[2], ids[3]))


@pytest.mark.postgres
async def test_postgres_rows_straight_from_asyncpg_equal_sqlalchemy_rows(
    pg_url: str, published_courses: Any
) -> None:
    """On PostgreSQL the exporter reads asyncpg records directly; same values and types as the
    SQLAlchemy result rows, and the same documents and hashes."""
    engine = create_engine(pg_url)
    await seed(engine, courses=40, seed=4, reset=True)
    try:
        ids = [r.id for r in await published_courses(engine)]
        via_sqlalchemy: dict[TemplateKind, list[dict[str, Any]]] = {}
        for kind, sql in DEFAULT_TEMPLATES.items():
            query = text(
                f"SELECT * FROM ({sql}) AS t WHERE t.course_id IN :ids ORDER BY t.course_id"
            ).bindparams(bindparam("ids", expanding=True))
            async with engine.connect() as conn:
                result = await conn.execute(query, {**template_params(sql), "ids": ids})
                via_sqlalchemy[kind] = [dict(r._mapping) for r in result]
            fast = await fetch_rows(engine, sql, ids)
            assert fast and not isinstance(fast[0], dict)  # asyncpg's Record
            as_dicts = [dict(r.items()) for r in fast]
            assert as_dicts == via_sqlalchemy[kind], kind
            types = [{k: type(v) for k, v in r.items()} for r in as_dicts]
            assert types == [{k: type(v) for k, v in r.items()} for r in via_sqlalchemy[kind]]
        page = await fetch_page(engine, DEFAULT_TEMPLATES[TemplateKind.COURSES], after=0, limit=7)
        assert [dict(r.items()) for r in page] == via_sqlalchemy[TemplateKind.COURSES][:7]

        builder = DocumentBuilder()
        children: dict[TemplateKind, dict[int, list[Any]]] = {}
        for kind in CHILD_KINDS:
            grouped: dict[int, list[Any]] = {}
            for row in via_sqlalchemy[kind]:
                grouped.setdefault(int(row["course_id"]), []).append(row)
            children[kind] = grouped
        slow_docs = builder.build_all(via_sqlalchemy[TemplateKind.COURSES], children)
        fast_docs = await builder.build_for(engine, DEFAULT_TEMPLATES, ids)
        assert [(o.course_id, o.built.hash, o.built.document) for o in fast_docs if o.built] == [
            (o.course_id, o.built.hash, o.built.document) for o in slow_docs if o.built
        ]
        assert len(fast_docs) == len(ids)
    finally:
        await engine.dispose()
