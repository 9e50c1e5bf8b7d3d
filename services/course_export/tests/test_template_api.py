"""The template maintenance API end to end: admin only, 422 keeps the active version, versions
carry author and time, preview shows rows and a diff, rollback works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from course_export_service.app import create_app
from course_export_service.settings import Settings
from coursedb.engine import create_engine
from coursedb.seed import seed
from mesh_common.auth import mint_token
from pydantic import SecretStr

SECRET = "s" * 40


def token(role: str, sub: str = "alice") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(subject=sub, secret=SECRET, roles=[role])}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    coursedb_url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    engine = create_engine(coursedb_url)
    await seed(engine, courses=20, seed=2)
    await engine.dispose()
    app = create_app(
        Settings(var_dir=tmp_path, coursedb_url=coursedb_url, mesh_jwt_secret=SecretStr(SECRET))
    )
    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://ce") as c,
    ):
        yield c


async def test_only_admins_may_touch_templates(client: httpx.AsyncClient) -> None:
    assert (await client.get("/templates")).status_code == 401
    assert (await client.get("/templates", headers=token("staff"))).status_code == 403
    r = await client.get("/templates", headers=token("admin"))
    assert r.status_code == 200
    body = r.json()
    assert {t["kind"] for t in body["templates"]} == {
        "courses",
        "sessions",
        "lecturers",
        "discounts",
    }
    assert all(t["version"] == 1 and t["author"] == "system" for t in body["templates"])
    assert "today" in body["variables"]


async def test_bad_template_is_422_and_active_version_keeps_running(
    client: httpx.AsyncClient,
) -> None:
    admin = token("admin")
    r = await client.post("/templates/courses", headers=admin, json={"sql": "DELETE FROM courses"})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "template-invalid"
    assert any("SELECT query is expected" in e for e in r.json()["errors"])
    active = (await client.get("/templates", headers=admin)).json()["templates"]
    assert next(t for t in active if t["kind"] == "courses")["version"] == 1


async def test_preview_propose_and_roll_back(client: httpx.AsyncClient) -> None:
    admin = token("admin", sub="ops-anna")
    current = next(
        t
        for t in (await client.get("/templates", headers=admin)).json()["templates"]
        if t["kind"] == "courses"
    )
    narrower = current["sql"].replace(
        "AND c.status <> 'finished'", "AND c.status IN ('open', 'planned')"
    )
    p = await client.post("/templates/courses/preview", headers=admin, json={"sql": narrower})
    assert p.status_code == 200
    preview = p.json()
    assert preview["ok"] and preview["rows"]
    assert all(row["status"] in ("open", "planned") for row in preview["rows"])
    assert "+WHERE c.publish = TRUE AND c.status IN ('open', 'planned')" in preview["sql_diff"]

    r = await client.post(
        "/templates/courses",
        headers=admin,
        json={"sql": narrower, "comment": "hide closed courses"},
    )
    assert r.status_code == 201
    assert r.json()["version"] == 2 and r.json()["author"] == "ops-anna" and r.json()["active"]

    versions = (await client.get("/templates/courses/versions", headers=admin)).json()
    assert [v["version"] for v in versions] == [2, 1]
    assert [v["active"] for v in versions] == [True, False]

    back = await client.post("/templates/courses/versions/1/activate", headers=admin)
    assert back.status_code == 200 and back.json()["version"] == 1
    missing = await client.post("/templates/courses/versions/9/activate", headers=admin)
    assert missing.status_code == 404 and missing.json()["code"] == "template-not-found"


async def test_unknown_kind_is_a_validation_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/templates/rooms/versions", headers=token("admin"))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
