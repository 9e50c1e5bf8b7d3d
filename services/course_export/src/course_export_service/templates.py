"""SQL templates: the centre-editable queries that select what course-export publishes.

A template is one read-only ``SELECT`` over the coursedb's own tables. Before a template version
may become active it passes :func:`validate_template`:

1. **Static checks** (sqlglot, in the coursedb's dialect): exactly one statement; a query
   (``SELECT`` / ``WITH`` / ``UNION``), nothing that writes or changes state anywhere inside it
   (no ``INSERT``/``UPDATE``/``DELETE``/DDL/``SELECT INTO``/locking clauses); it reads only
   coursedb tables (and its own CTEs), never system catalogues; it calls no function from a
   deny-list (sleeping, file access, remote links); it uses only the documented variables.
2. **A trial run** inside a read-only transaction with a statement timeout, fetching a few
   rows, which must carry the kind's required columns.

Validation never changes data even if the static checks missed something: the trial runs in a
read-only transaction and is rolled back. The exporter later wraps an active template as a
subquery (``SELECT * FROM (<template>) AS t WHERE t.course_id ...``) for batching and for
incremental runs, so templates never handle paging themselves.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlglot
from coursedb import schema as coursedb_schema
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlglot import exp
from sqlglot.errors import ParseError


class TemplateKind(StrEnum):
    COURSES = "courses"
    SESSIONS = "sessions"
    LECTURERS = "lecturers"
    DISCOUNTS = "discounts"


REQUIRED_COLUMNS: Mapping[TemplateKind, frozenset[str]] = {
    TemplateKind.COURSES: frozenset(
        {
            "course_id",
            "number",
            "revision",
            "title",
            "fee",
            "status",
            "registration_mode",
            "web_bookable",
            "min_participants",
            "max_participants",
            "updated_at",
        }
    ),
    TemplateKind.SESSIONS: frozenset({"course_id", "session_date", "start_time", "end_time"}),
    TemplateKind.LECTURERS: frozenset({"course_id", "first_name", "last_name"}),
    TemplateKind.DISCOUNTS: frozenset({"course_id", "kind", "label"}),
}

# Variables a template may use; values are bound by the exporter at run time.
VARIABLES: Mapping[str, str] = {
    "today": "the current date in Europe/Berlin (e.g. hide courses that have ended)",
    "now": "the current instant (UTC)",
}

_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite", "mysql": "mysql", "mariadb": "mysql"}
_ALLOWED_TABLES = frozenset(coursedb_schema.metadata.tables)
_DENIED_FUNCTIONS = frozenset(
    {
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
        "lo_get",
        "dblink",
        "dblink_exec",
        "current_setting",
        "set_config",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "sleep",
        "benchmark",
        "load_file",
        "get_lock",
        "release_lock",
        "load_extension",
        "readfile",
        "writefile",
        "fts3_tokenizer",
        # side effects (sequences, transaction ids, notifications, locks)
        "nextval",
        "setval",
        "txid_current",
        "pg_current_xact_id",
        "pg_notify",
        # run SQL given as a string, which would bypass every check here
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
    }
)
# Whole families: PostgreSQL's server functions (pg_*: files, locks, backends, settings,
# catalogue lookups), large objects, dblink, SQLite's pragma table functions.
_DENIED_PREFIXES = ("pg_", "lo_", "dblink", "pragma_", "sqlite_")
# System catalogues: by schema, and by the names of the unqualified catalogue relations.
_CATALOGUE_SCHEMAS = frozenset(
    {"pg_catalog", "information_schema", "pg_toast", "mysql", "performance_schema", "sys"}
)
_CATALOGUE_PREFIXES = ("pg_", "sqlite_", "pragma_")
_WRITES = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Command,
    exp.Into,
    exp.Lock,
    exp.TruncateTable,
    exp.Pragma,
    exp.Set,
    exp.Use,
)


@dataclass
class TemplateReport:
    ok: bool
    errors: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def static_errors(sql: str, kind: TemplateKind, dialect: str) -> list[str]:
    """Problems sqlglot can see without touching the database."""
    read = _DIALECTS.get(dialect, dialect)
    try:
        statements = [s for s in sqlglot.parse(sql, read=read) if s is not None]
    except ParseError as exc:
        return [f"not valid SQL for {read}: {str(exc).splitlines()[0]}"]
    if len(statements) != 1:
        return [f"exactly one statement expected, found {len(statements)}"]
    tree = statements[0]
    errors: list[str] = []
    if not isinstance(tree, exp.Query):
        errors.append(f"a SELECT query is expected, found {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, _WRITES):
            errors.append(f"{node.key.upper()} is not allowed in a template (read-only)")
        if isinstance(node, exp.Select) and node.args.get("locks"):
            errors.append("locking clauses (FOR UPDATE/SHARE) are not allowed")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        name = table.name.lower()
        qualifier = (table.db or "").lower()
        if qualifier in _CATALOGUE_SCHEMAS or (
            name.startswith(_CATALOGUE_PREFIXES) and name not in _ALLOWED_TABLES
        ):
            errors.append(
                f"system catalogue {table.sql(dialect=read)} is outside the course database "
                "(only course-database tables may be read)"
            )
        elif isinstance(table.this, exp.Func):
            errors.append(f"table function {table.this.sql(dialect=read)} is not allowed")
        elif qualifier and qualifier not in {"public", "main"}:
            errors.append(f"table {table.sql(dialect=read)} is outside the course database")
        elif name not in _ALLOWED_TABLES and name not in ctes:
            errors.append(f"unknown table {name!r}: only course-database tables may be read")
    for func in tree.find_all(exp.Func):
        fname = (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()
        if fname in _DENIED_FUNCTIONS or fname.startswith(_DENIED_PREFIXES):
            errors.append(f"function {fname}() is not allowed in a template")
    for cast in tree.find_all(exp.Cast):
        # ::regclass, ::regproc ... look objects up in the system catalogues
        if cast.to.sql(dialect=read).lower().startswith("reg"):
            errors.append("casts to reg* types (catalogue lookups) are not allowed")
    for ph in tree.find_all(exp.Placeholder):
        if ph.name and ph.name not in VARIABLES:
            errors.append(
                f"unknown variable :{ph.name} (known: {', '.join(':' + v for v in VARIABLES)})"
            )
    if kind not in REQUIRED_COLUMNS:
        errors.append(f"unknown template kind {kind!r}")
    return sorted(set(errors), key=errors.index)


def bind_values(now: dt.datetime | None = None) -> dict[str, Any]:
    from zoneinfo import ZoneInfo

    now = now or dt.datetime.now(dt.UTC)
    return {"now": now, "today": now.astimezone(ZoneInfo("Europe/Berlin")).date()}


def template_params(sql: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The variable values a template uses (only those it names, as drivers reject extras)."""
    return {k: v for k, v in (values or bind_values()).items() if f":{k}" in sql}


async def trial_run(
    engine: AsyncEngine,
    sql: str,
    *,
    limit: int = 20,
    timeout_ms: int = 5000,
    values: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run ``sql`` read-only with a statement timeout; return column names and up to ``limit``
    rows. Always rolled back."""
    dialect = engine.dialect.name
    params = template_params(sql, values)
    async with engine.connect() as conn:
        if dialect == "postgresql":
            await conn.execute(text("SET TRANSACTION READ ONLY"))
            await conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
        elif dialect in ("mysql", "mariadb"):
            await conn.execute(text(f"SET SESSION max_statement_time = {timeout_ms / 1000:.3f}"))
            await conn.execute(text("SET SESSION TRANSACTION READ ONLY"))
            await conn.execute(text("START TRANSACTION READ ONLY"))
        elif dialect == "sqlite":
            await conn.execute(text("PRAGMA query_only = ON"))
            # SQLite has no statement timeout: abort from its progress handler at the deadline
            # (a runaway recursive CTE would otherwise spin in the driver thread for ever).
            deadline = time.monotonic() + timeout_ms / 1000
            driver: Any = (await conn.get_raw_connection()).driver_connection
            await driver.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            result = await conn.stream(text(sql), params)
            columns = list(result.keys())
            rows = [dict(r._mapping) for r in await result.fetchmany(limit)]
            await result.close()
        except Exception:
            if dialect == "sqlite" and time.monotonic() > deadline:
                raise TimeoutError(f"the query ran longer than {timeout_ms} ms") from None
            raise
        finally:
            await conn.rollback()
            if dialect == "sqlite":
                await driver.set_progress_handler(None, 0)
                await conn.execute(text("PRAGMA query_only = OFF"))
            elif dialect in ("mysql", "mariadb"):
                await conn.execute(text("SET SESSION TRANSACTION READ WRITE"))
                await conn.execute(text("SET SESSION max_statement_time = 0"))
            await conn.commit()
    return columns, rows


async def validate_template(
    engine: AsyncEngine,
    sql: str,
    kind: TemplateKind,
    *,
    preview_rows: int = 20,
    timeout_ms: int = 5000,
) -> TemplateReport:
    """Static checks, then a read-only trial run; ``ok`` only when both pass."""
    errors = static_errors(sql, kind, engine.dialect.name)
    if errors:
        return TemplateReport(ok=False, errors=errors)
    try:
        columns, rows = await trial_run(engine, sql, limit=preview_rows, timeout_ms=timeout_ms)
    except Exception as exc:
        message = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:300]
        return TemplateReport(ok=False, errors=[f"the query failed: {message}"])
    missing = sorted(REQUIRED_COLUMNS[kind] - {c.lower() for c in columns})
    if missing:
        return TemplateReport(
            ok=False,
            columns=columns,
            rows=rows,
            errors=[f"missing required column(s): {', '.join(missing)}"],
        )
    return TemplateReport(ok=True, columns=columns, rows=rows)
