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


def _courses_template(**replace: str) -> dict[TemplateKind, str]:
    sql = DEFAULT_TEMPLATES[TemplateKind.COURSES]
    for old, new in replace.items():
        assert old in sql, old
        sql = sql.replace(old, new, 1)
    return {**DEFAULT_TEMPLATES, TemplateKind.COURSES: sql}


async def test_values_that_break_the_contract_are_reported_per_course(
    coursedb: AsyncEngine, published_courses: Any
) -> None:
    """Values the mappings pass through but the contract refuses, as a centre's template might
    produce them: each breaks only its own course, with the contract's error."""
    ids = [r.id for r in await published_courses(coursedb)][:6]
    long_number, bad_mode, big_fee, bad_postcode = ids[1:5]
    templates = _courses_template(
        **{
            "c.number,": f"CASE WHEN c.id = {long_number} THEN 'A-number-far-too-long-1' "
            "ELSE c.number END AS number,",
            "c.registration_mode,": f"CASE WHEN c.id = {bad_mode} THEN 'telepathy' "
            "ELSE c.registration_mode END AS registration_mode,",
            "c.fee,": f"CASE WHEN c.id = {big_fee} THEN 12345678901.5 ELSE c.fee END AS fee,",
            "l.postcode AS location_postcode": f"CASE WHEN c.id = {bad_postcode} THEN 'AB' "
            "ELSE l.postcode END AS location_postcode",
        }
    )
    outcomes = {o.course_id: o for o in await DocumentBuilder().build_for(coursedb, templates, ids)}
    assert set(outcomes) == set(ids)
    for course_id, field in [
        (long_number, "document.number"),
        (bad_mode, "document.registration_mode"),
        (big_fee, "document.fee.amount"),
        (bad_postcode, "document.location"),
    ]:
        outcome = outcomes[course_id]
        assert outcome.built is None, course_id
        assert outcome.errors and all(e.startswith("document.") for e in outcome.errors)
        assert any(e.startswith(field) for e in outcome.errors), outcome.errors
    assert all(outcomes[i].built is not None for i in (ids[0], ids[5]))


async def test_values_pydantic_converts_give_the_same_documents(
    coursedb: AsyncEngine, published_courses: Any
) -> None:
    """A template that returns numbers as text: the exact path stands aside, pydantic converts
    them as it always did, and the documents and hashes are those of the shipped template."""
    ids = [r.id for r in await published_courses(coursedb)][:8]
    texty = _courses_template(
        **{"c.min_participants,": "CAST(c.min_participants AS VARCHAR(10)) AS min_participants,"}
    )
    builder = DocumentBuilder()
    plain = await builder.build_for(coursedb, DEFAULT_TEMPLATES, ids)
    converted = await builder.build_for(coursedb, texty, ids)
    assert all(o.built is not None for o in plain + converted)
    assert [(o.built.hash, o.built.document, o.built.encoded) for o in converted if o.built] == [
        (o.built.hash, o.built.document, o.built.encoded) for o in plain if o.built
    ]
    assert all(o.built.model is not None for o in converted if o.built)  # the long way


async def test_exact_path_and_pydantic_build_identical_documents(
    coursedb: AsyncEngine, published_courses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact path gives what pydantic gives (document, hash and JSON text). On PostgreSQL
    every seeded course takes it; SQLite returns booleans as 0/1 and times as text with a zero
    fraction, which pydantic converts: those courses go the long way."""
    from course_export_service import exact

    ids = [r.id for r in await published_courses(coursedb)]
    builder = DocumentBuilder()
    fast = await builder.build_for(coursedb, DEFAULT_TEMPLATES, ids)
    assert fast and all(o.built is not None for o in fast)
    if coursedb.dialect.name == "postgresql":
        assert all(o.built.model is None for o in fast if o.built)
    monkeypatch.setattr(exact, "ENABLED", False)
    slow = await builder.build_for(coursedb, DEFAULT_TEMPLATES, ids)
    assert all(o.built is not None and o.built.model is not None for o in slow)
    assert [(o.built.hash, o.built.document, o.built.encoded) for o in fast if o.built] == [
        (o.built.hash, o.built.document, o.built.encoded) for o in slow if o.built
    ]
    assert [o.built.encoded for o in slow if o.built] == [
        o.built.model.model_dump_json().encode() for o in slow if o.built and o.built.model
    ]


def test_a_document_that_is_not_json_is_reported_not_raised() -> None:
    """A lone surrogate passes pydantic's unconstrained strings but is no JSON: the course
    fails with that error; the others are not affected."""
    row = {
        "course_id": 1,
        "number": "261-1",
        "revision": 1,
        "title": "Yoga \ud800",
        "fee": "10.00",
        "status": "open",
        "registration_mode": "direct",
        "web_bookable": True,
        "min_participants": 1,
        "max_participants": 9,
        "updated_at": dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
    }
    builder = DocumentBuilder()
    broken = builder.build(row)
    assert broken.built is None and broken.errors[0].startswith("document: not encodable")
    fine = builder.build({**row, "title": "Yoga"})
    assert fine.built is not None and fine.built.encoded is not None


async def test_statements_are_reused_per_template_and_size_only(
    coursedb: AsyncEngine, published_courses: Any
) -> None:
    """On PostgreSQL the compiled statement is cached by template SQL and number of ids: a
    different template or size gets its own statement, never another one's."""
    from course_export_service import documents

    ids = [r.id for r in await published_courses(coursedb)][:4]
    shipped = DEFAULT_TEMPLATES[TemplateKind.LECTURERS]
    narrow = "SELECT cl.course_id, cl.sort_order FROM course_lecturers cl"
    first = await fetch_rows(coursedb, shipped, ids[:3])
    other = await fetch_rows(coursedb, narrow, ids[:3])
    bigger = await fetch_rows(coursedb, narrow, ids)
    again = await fetch_rows(coursedb, shipped, ids[:3])
    assert first and {"first_name", "last_name"} <= set(dict(first[0]))
    assert [set(dict(r)) for r in other] == [{"course_id", "sort_order"}] * len(other)
    assert {r["course_id"] for r in bigger} >= {r["course_id"] for r in other}
    assert [dict(r) for r in again] == [dict(r) for r in first]
    if coursedb.dialect.name == "postgresql":
        keys = set(documents._statements)
        assert {("in", shipped, 3), ("in", narrow, 3), ("in", narrow, 4)} <= keys
