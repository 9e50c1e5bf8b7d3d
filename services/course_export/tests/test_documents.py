"""Template rows -> mapping definitions -> validated course documents, on a seeded coursedb."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from course_export_service.default_templates import DEFAULT_TEMPLATES
from course_export_service.documents import DocumentBuilder
from course_export_service.templates import TemplateKind
from coursedb import schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_contracts.course_export import CourseDocument
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
