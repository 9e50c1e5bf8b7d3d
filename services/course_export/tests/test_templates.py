"""SQL template validation on all three course databases: good templates pass with a preview,
anything that writes, escapes the course database, sleeps or lacks columns is refused with a
clear message, and the trial run cannot change data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from course_export_service.default_templates import DEFAULT_TEMPLATES
from course_export_service.templates import (
    TemplateKind,
    static_errors,
    trial_run,
    validate_template,
)
from coursedb import schema
from coursedb.engine import create_engine
from coursedb.seed import seed
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
async def coursedb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}"
    elif request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = request.getfixturevalue("mariadb_url")
    engine = create_engine(url)
    await seed(engine, courses=40, seed=11, reset=True)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", list(TemplateKind))
async def test_default_templates_validate_with_preview(
    coursedb: AsyncEngine, kind: TemplateKind
) -> None:
    report = await validate_template(coursedb, DEFAULT_TEMPLATES[kind], kind, preview_rows=5)
    assert report.ok, report.errors
    assert 0 < len(report.rows) <= 5
    assert "course_id" in report.columns


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DELETE FROM courses", "SELECT query is expected"),
        ("SELECT 1 AS course_id; DROP TABLE courses", "exactly one statement"),
        ("SELECT id AS course_id FROM courses FOR UPDATE", "locking clauses"),
        ("SELECT * FROM pg_catalog.pg_user", "outside the course database"),
        ("SELECT * FROM information_schema.tables", "outside the course database"),
        ("SELECT name FROM sqlite_master", "only course-database tables"),
        ("SELECT pg_sleep(10) AS course_id FROM courses", "pg_sleep() is not allowed"),
        (
            "SELECT id AS course_id FROM courses WHERE updated_at > :since",
            "unknown variable :since",
        ),
        ("SELEC id FROM courses", "not valid SQL"),
        ("WITH x AS (DELETE FROM courses RETURNING id) SELECT * FROM x", "DELETE is not allowed"),
    ],
)
def test_static_checks_refuse_with_clear_messages(sql: str, expected: str) -> None:
    errors = static_errors(sql, TemplateKind.COURSES, "postgresql")
    assert any(expected in e for e in errors), errors


def test_ctes_and_variables_are_allowed() -> None:
    sql = (
        "WITH open_courses AS (SELECT * FROM courses WHERE status = 'open') "
        "SELECT id AS course_id FROM open_courses WHERE updated_at < :now"
    )
    assert static_errors(sql, TemplateKind.COURSES, "sqlite") == []


async def test_missing_columns_and_runtime_errors_are_reported(coursedb: AsyncEngine) -> None:
    report = await validate_template(
        coursedb, "SELECT id AS course_id, title FROM courses", TemplateKind.COURSES
    )
    assert not report.ok
    assert "missing required column(s)" in report.errors[0] and "number" in report.errors[0]
    broken = await validate_template(
        coursedb, "SELECT no_such_column FROM courses", TemplateKind.COURSES
    )
    assert not broken.ok and broken.errors[0].startswith("the query failed")


async def test_trial_run_is_read_only(coursedb: AsyncEngine) -> None:
    """Even SQL that slipped past the static checks cannot write during the trial."""
    async with coursedb.connect() as conn:
        before = (await conn.execute(select(func.count()).select_from(schema.courses))).scalar()
    with pytest.raises(Exception):
        await trial_run(coursedb, "DELETE FROM courses")
    async with coursedb.connect() as conn:
        after = (await conn.execute(select(func.count()).select_from(schema.courses))).scalar()
    assert after == before


@pytest.mark.postgres
async def test_statement_timeout_stops_a_slow_template(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        with pytest.raises(Exception, match=r"statement timeout|canceling statement"):
            await trial_run(engine, "SELECT pg_sleep(5)", timeout_ms=200)
    finally:
        await engine.dispose()
