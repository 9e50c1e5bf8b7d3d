"""Editable templates cannot escape their sandbox: mail templates (Jinja2, booking and portal)
and the SQL templates of course-export.

Mail: every escape (Python internals, globals of helper objects, private attributes, mutation,
format-string tricks, includes of files, resource bombs) is a 422 problem+json on store (admin)
and on preview (staff), and nothing is stored: the template's versions and audit trail are the
same afterwards. SQL: templates that write, run more than one statement, copy files, call
functions with side effects, or read system catalogues are a 422 problem+json naming the reason
(and a failed preview), the active template stays, and the course database is unchanged.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from .conftest import Mesh, assert_problem

MAIL_ESCAPES = {
    "class mro": "{{ ''.__class__.__mro__ }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__ }}",
    "joiner globals os": "{{ joiner.__init__.__globals__.os.popen('id').read() }}",
    "namespace globals": "{{ namespace.__init__.__globals__ }}",
    "lipsum globals": "{{ lipsum.__globals__['os'] }}",
    "range self": "{{ range.__self__ }}",
    "attr filter": "{{ ''|attr('__class__') }}",
    "attr built name": "{{ ''|attr('_' ~ '_class_' ~ '_') }}",
    "private attribute": "{{ cycler._private }}",
    "template reference": "{{ self._TemplateReference__context }}",
    "format string": "{{ '{0.__class__.__mro__}'.format('') }}",
    "percent format": "{{ '%(a)s' % {'a': ''.__class__} }}",
    "list mutation": "{% set l = [1] %}{{ l.append(2) }}",
    "dict mutation": "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "undefined config": "{{ config }}",
    "undefined request": "{{ request.environ }}",
    "include a file": '{% include "/etc/passwd" %}',
    "import os": "{% import 'os' as os %}{{ os }}",
    "huge range": "{% for i in range(10**9) %}x{% endfor %}",
    "nested loops": "{% for a in range(9000) %}{% for b in range(9000) %}{% endfor %}{% endfor %}",
    "string bomb": "{{ 'x' * 100000000 }}",
    "concat bomb": "{% set s = 'x' * 900000 %}{{ s ~ s ~ s }}",
    "join bomb": "{{ ('x' * 1000)|center(999999999) }}",
    "power bomb": "{{ 2 ** 99999999 }}",
    "recursive macro": "{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}",
    "wordwrap width": "{{ 'a b'|wordwrap(99999999) }}",
}


def _mail_template(mesh: Mesh, service: str) -> str:
    r = httpx.get(f"{mesh.url}/api/{service}/mail/templates", headers=mesh.headers("staff"))
    assert r.status_code == 200, r.text
    names = [t["name"] for t in r.json() if t.get("kind", "mail") == "mail"]
    assert names, r.json()
    return str(names[0])


def _state(mesh: Mesh, service: str, name: str) -> tuple[Any, Any]:
    admin = mesh.headers("admin")
    base = f"{mesh.url}/api/{service}/mail"
    versions = httpx.get(f"{base}/templates/{name}/versions", headers=admin)
    audit = httpx.get(f"{base}/template-audit", headers=admin, params={"limit": 1000})
    assert versions.status_code == audit.status_code == 200
    return versions.json(), audit.json()


@pytest.mark.parametrize("service", ["booking", "portal"])
def test_mail_template_escapes_are_refused_and_nothing_is_stored(mesh: Mesh, service: str) -> None:
    name = _mail_template(mesh, service)
    before = _state(mesh, service, name)
    base = f"{mesh.url}/api/{service}/mail/templates/{name}"
    failures = []
    slowest = 0.0
    with httpx.Client(timeout=60) as client:
        for what, payload in MAIL_ESCAPES.items():
            for field in ("text", "subject"):
                source = {"subject": "Hallo", "text": "Hallo", field: payload}
                started = time.monotonic()
                stored = client.post(
                    f"{base}/versions",
                    json={**source, "activate": True, "comment": "sec"},
                    headers=mesh.headers("admin"),
                )
                preview = client.post(
                    f"{base}/preview", json={"source": source}, headers=mesh.headers("staff")
                )
                slowest = max(slowest, time.monotonic() - started)
                for kind, r in (("store", stored), ("preview", preview)):
                    try:
                        assert_problem(r, 422)
                    except AssertionError as exc:
                        failures.append(f"{what} ({field}, {kind}): {exc}")
                    if "root:" in r.text or "<class" in r.text or "uid=" in r.text:
                        failures.append(f"{what} ({field}, {kind}) leaked: {r.text[:200]}")
    assert not failures, "\n".join(failures)
    assert _state(mesh, service, name) == before
    assert slowest < 30, f"a refused template took {slowest:.1f}s"


def test_html_body_escapes_too(mesh: Mesh) -> None:
    name = _mail_template(mesh, "booking")
    r = httpx.post(
        f"{mesh.url}/api/booking/mail/templates/{name}/preview",
        json={
            "source": {
                "subject": "x",
                "text": "x",
                "html": "<p>{{ cycler.__init__.__globals__ }}</p>",
            }
        },
        headers=mesh.headers("staff"),
    )
    assert_problem(r, 422)


def test_preview_context_cannot_smuggle_objects(mesh: Mesh) -> None:
    """Caller-given preview data is JSON: strings stay strings, markup is escaped in HTML."""
    name = _mail_template(mesh, "booking")
    r = httpx.post(
        f"{mesh.url}/api/booking/mail/templates/{name}/preview",
        json={
            "source": {"subject": "{{ x }}", "text": "{{ x }}", "html": "<p>{{ x }}</p>"},
            "context": {"x": "<script>alert(1)</script>{{ 7*7 }}"},
        },
        headers=mesh.headers("staff"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"].strip() == "<script>alert(1)</script>{{ 7*7 }}"  # not evaluated
    assert "<script>" not in body["html"] and "&lt;script&gt;" in body["html"]


# --------------------------------------------------------------------------- SQL templates

SQL_REFUSED = {
    "insert": ("INSERT INTO courses (id) VALUES (999999)", "INSERT"),
    "update": ("UPDATE courses SET title = 'x'", "UPDATE"),
    "delete": ("DELETE FROM courses", "DELETE"),
    "drop": ("DROP TABLE courses", "DROP"),
    "create": ("CREATE TABLE evil (x int)", "CREATE"),
    "alter": ("ALTER TABLE courses ADD COLUMN evil int", "ALTER"),
    "merge": (
        "MERGE INTO courses c USING courses s ON c.id = s.id "
        "WHEN MATCHED THEN UPDATE SET title = 'x'",
        "",
    ),
    "two statements": ("SELECT * FROM courses; DELETE FROM courses", "one statement"),
    "select into": ("SELECT * INTO evil FROM courses", "INTO"),
    "cte delete": ("WITH d AS (DELETE FROM courses RETURNING *) SELECT * FROM d", "DELETE"),
    "copy": ("COPY courses TO '/tmp/edumesh-evil.csv'", "COPY"),
    "for update": ("SELECT * FROM courses FOR UPDATE", "FOR UPDATE"),
    "pg_sleep": ("SELECT c.*, pg_sleep(10) AS s FROM courses c", "pg_sleep"),
    "set_config": ("SELECT c.*, set_config('role', 'x', false) AS s FROM courses c", "set_config"),
    "lo_import": ("SELECT c.*, lo_import('/etc/passwd') AS s FROM courses c", "lo_import"),
    "pg_read_file": ("SELECT c.*, pg_read_file('/etc/passwd') AS s FROM courses c", "pg_read_file"),
    "query_to_xml": (
        "SELECT c.*, query_to_xml('select * from pg_shadow', true, true, '') AS s FROM courses c",
        "query_to_xml",
    ),
    "nextval": ("SELECT c.*, nextval('x') AS s FROM courses c", "nextval"),
    "load_extension": (
        "SELECT c.*, load_extension('/tmp/x.so') AS s FROM courses c",
        "load_extension",
    ),
    "pg_catalog": ("SELECT * FROM pg_catalog.pg_class", "system catalogue"),
    "pg_shadow": ("SELECT usename, passwd FROM pg_shadow", "system catalogue"),
    "pg_authid subquery": (
        "SELECT c.*, (SELECT rolpassword FROM pg_authid LIMIT 1) AS s FROM courses c",
        "system catalogue",
    ),
    "information_schema": ("SELECT * FROM information_schema.tables", "system catalogue"),
    "sqlite_master": ("SELECT * FROM sqlite_master", "system catalogue"),
    "sqlite_schema in a join": (
        "SELECT c.* FROM courses c JOIN sqlite_schema s ON s.name = c.title",
        "system catalogue",
    ),
    "pragma function": ("SELECT * FROM pragma_table_info('courses')", "not allowed"),
    "regclass cast": ("SELECT c.*, 'pg_shadow'::regclass AS s FROM courses c", "reg"),
    "attach": ("ATTACH DATABASE '/tmp/edumesh-evil.db' AS evil", ""),
    "pragma": ("PRAGMA writable_schema = ON", ""),
    "vacuum into": ("VACUUM INTO '/tmp/edumesh-evil.db'", ""),
    "other database": ("SELECT * FROM evil.courses", "outside the course database"),
}


def _coursedb_fingerprint(mesh: Mesh) -> list[tuple[object, ...]]:
    return mesh.coursedb(
        "SELECT (SELECT count(*) FROM courses), (SELECT max(updated_at) FROM courses), "
        "(SELECT count(*) FROM sqlite_master)"
    )


def test_sql_templates_that_write_or_read_catalogues_are_refused(mesh: Mesh) -> None:
    admin = mesh.headers("admin")
    api = f"{mesh.url}/api/course-export/templates"
    versions_before = httpx.get(f"{api}/courses/versions", headers=admin).json()
    active_before = httpx.get(api, headers=admin).json()
    db_before = _coursedb_fingerprint(mesh)
    failures = []
    with httpx.Client(timeout=60) as client:
        for what, (sql, reason) in SQL_REFUSED.items():
            stored = client.post(f"{api}/courses", json={"sql": sql}, headers=admin)
            try:
                body = assert_problem(stored, 422)
                if reason.lower() not in str(body.get("detail", "")).lower():
                    failures.append(f"{what}: reason {reason!r} not in {body.get('detail')!r}")
            except AssertionError as exc:
                failures.append(f"{what} (store): {exc}")
            preview = client.post(f"{api}/courses/preview", json={"sql": sql}, headers=admin)
            if preview.status_code != 200 or preview.json()["ok"] is not False:
                failures.append(f"{what} (preview): {preview.status_code} {preview.text[:200]}")
            elif preview.json()["rows"]:
                failures.append(f"{what} (preview) returned rows: {preview.text[:200]}")
    assert not failures, "\n".join(failures)
    assert httpx.get(f"{api}/courses/versions", headers=admin).json() == versions_before
    assert httpx.get(api, headers=admin).json() == active_before
    assert _coursedb_fingerprint(mesh) == db_before


def test_runaway_sql_template_is_stopped(mesh: Mesh) -> None:
    """SQLite has no statement timeout; the trial run stops a runaway query itself."""
    sql = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
        "SELECT count(*) AS course_id FROM r"
    )
    started = time.monotonic()
    r = httpx.post(
        f"{mesh.url}/api/course-export/templates/courses/preview",
        json={"sql": sql},
        headers=mesh.headers("admin"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is False and "longer than" in " ".join(r.json()["errors"])
    assert time.monotonic() - started < 25


def test_sql_templates_are_admin_only(mesh: Mesh) -> None:
    r = httpx.post(
        f"{mesh.url}/api/course-export/templates/courses/preview",
        json={"sql": "SELECT * FROM courses"},
        headers=mesh.headers("staff"),
    )
    assert_problem(r, 403)
