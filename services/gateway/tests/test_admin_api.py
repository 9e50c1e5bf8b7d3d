"""The /admin dashboard's server side: the fan-out endpoints over real upstreams, auth at the edge,
and the page's security headers. The browser test is test_admin_browser.py."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from gateway_service.app import create_app
from gateway_service.settings import GatewaySettings
from mesh_common.auth import AuthSettings

from .conftest import CONTACTS, REJECTED, SECRET, AdminRig, make_odd_upstream

PROBLEM = "application/problem+json"


async def finished(client: httpx.AsyncClient, rig: AdminRig, execution_id: str) -> dict[str, Any]:
    """Poll the execution through the gateway's proxy until it is final."""
    for _ in range(200):
        r = await client.get(
            f"{rig.gateway}/api/demo/tasks/executions/{execution_id}", headers=rig.auth("staff")
        )
        assert r.status_code == 200, r.text
        if r.json()["status"] != "running":
            return dict(r.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"execution {execution_id} did not finish")


async def test_no_token_is_401_problem(admin_rig: AdminRig) -> None:
    async with httpx.AsyncClient() as client:
        for path in ("/admin/api/tasks", "/admin/api/executions"):
            r = await client.get(admin_rig.gateway + path)
            assert r.status_code == 401
            assert r.headers["content-type"].startswith(PROBLEM)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["code"] == "token-missing"
            assert r.json()["instance"] == path


async def test_forged_or_underprivileged_token_is_refused(admin_rig: AdminRig) -> None:
    async with httpx.AsyncClient() as client:
        forged = admin_rig.token("staff")[:-4] + "AAAA"
        r = await client.get(
            admin_rig.gateway + "/admin/api/tasks", headers={"Authorization": f"Bearer {forged}"}
        )
        assert r.status_code == 401
        assert r.json()["code"] == "token-bad-signature"
        r = await client.get(
            admin_rig.gateway + "/admin/api/tasks", headers=admin_rig.auth("participant")
        )
        assert r.status_code == 403
        assert r.headers["content-type"].startswith(PROBLEM)
        assert "staff" in r.json()["detail"]


async def test_overview_lists_tasks_and_reports_each_service(admin_rig: AdminRig) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.get(
            admin_rig.gateway + "/admin/api/tasks", headers=admin_rig.auth("staff")
        )
    assert r.status_code == 200, r.text
    services = {s["service"]: s for s in r.json()["services"]}
    assert sorted(services) == ["broken", "demo", "down", "plain"]

    demo = services["demo"]
    assert demo["status"] == "ok"
    tasks = {t["name"]: t for t in demo["tasks"]}
    assert sorted(tasks) == ["slow-import", "sync-contacts"]
    sync = tasks["sync-contacts"]
    assert sync["schedule"] == {"type": "interval", "value": "3600.0"}
    assert sync["kind"] == "contacts"
    assert sync["description"] == "Push contacts to the CRM."
    assert sync["next_run_at"] is not None
    assert tasks["slow-import"]["schedule"] is None
    assert "last_execution" in sync

    # A service that is down is reported, not a 500; so is one without a task API or a broken one.
    assert services["down"]["status"] == "unreachable"
    assert services["down"]["detail"] == "the service is unreachable"
    assert services["down"]["tasks"] == []
    assert services["plain"]["status"] == "no-tasks"
    assert services["broken"] == {
        "service": "broken",
        "status": "error",
        "http": 500,
        "code": "internal-error",
        "detail": "the task table is corrupt",
        "tasks": [],
    }


async def test_last_execution_and_executions_filters(admin_rig: AdminRig) -> None:
    staff = admin_rig.auth("admin")  # admin implies staff, at the gateway and at the service
    async with httpx.AsyncClient() as client:
        r = await client.post(
            admin_rig.gateway + "/api/demo/tasks/sync-contacts/run", headers=staff, json={}
        )
        assert r.status_code == 202, r.text
        execution = await finished(client, admin_rig, r.json()["execution_id"])
        assert execution["status"] == "partially_succeeded"
        assert execution["counts"]["processed"] == len(CONTACTS)

        overview = (await client.get(admin_rig.gateway + "/admin/api/tasks", headers=staff)).json()
        demo = next(s for s in overview["services"] if s["service"] == "demo")
        last = next(t for t in demo["tasks"] if t["name"] == "sync-contacts")["last_execution"]
        assert last["id"] == execution["id"]
        assert last["status"] == "partially_succeeded"

        r = await client.get(
            admin_rig.gateway + "/admin/api/executions",
            headers=staff,
            params={"service": "demo", "task": "sync-contacts", "status": "partially_succeeded"},
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["services"] == [
            {"service": "demo", "status": "ok", "http": None, "code": None, "detail": None}
        ]
        assert execution["id"] in [e["id"] for e in page["executions"]]
        assert {(e["service"], e["task"], e["status"]) for e in page["executions"]} == {
            ("demo", "sync-contacts", "partially_succeeded")
        }

        # Retry the failed record only; both executions are listed newest first.
        r = await client.post(
            admin_rig.gateway + f"/api/demo/tasks/executions/{execution['id']}/retry",
            headers=staff,
        )
        assert r.status_code == 202, r.text
        retry = await finished(client, admin_rig, r.json()["execution_id"])
        assert retry["status"] == "succeeded"
        items = (
            await client.get(
                admin_rig.gateway + f"/api/demo/tasks/executions/{retry['id']}/items",
                headers=staff,
            )
        ).json()
        assert [i["record_key"] for i in items] == [REJECTED]

        r = await client.get(admin_rig.gateway + "/admin/api/executions", headers=staff)
        page = r.json()
        ids = [e["id"] for e in page["executions"]]
        assert ids.index(retry["id"]) < ids.index(execution["id"])
        started = [e["started_at"] for e in page["executions"]]
        assert started == sorted(started, reverse=True)
        reports = {s["service"]: s["status"] for s in page["services"]}
        assert reports == {
            "broken": "error",
            "demo": "ok",
            "down": "unreachable",
            "plain": "no-tasks",
        }


async def test_executions_bad_filters_are_problems(admin_rig: AdminRig) -> None:
    staff = admin_rig.auth("staff")
    async with httpx.AsyncClient() as client:
        r = await client.get(
            admin_rig.gateway + "/admin/api/executions", headers=staff, params={"service": "nope"}
        )
        assert r.status_code == 404
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["code"] == "unknown-service"
        r = await client.get(
            admin_rig.gateway + "/admin/api/executions", headers=staff, params={"status": "done"}
        )
        assert r.status_code == 422
        assert r.headers["content-type"].startswith(PROBLEM)
        r = await client.get(
            admin_rig.gateway + "/admin/api/executions", headers=staff, params={"limit": 0}
        )
        assert r.status_code == 422
        # Only the selected service is asked: the unreachable one is not in the report.
        r = await client.get(
            admin_rig.gateway + "/admin/api/executions", headers=staff, params={"service": "down"}
        )
        assert r.status_code == 200
        assert r.json()["executions"] == []
        assert [s["service"] for s in r.json()["services"]] == ["down"]
        assert r.json()["services"][0]["status"] == "unreachable"


async def test_the_service_checks_roles_too(admin_rig: AdminRig) -> None:
    """The dashboard's actions go through the proxy: a participant cannot run a task."""
    async with httpx.AsyncClient() as client:
        r = await client.post(
            admin_rig.gateway + "/api/demo/tasks/sync-contacts/run",
            headers=admin_rig.auth("participant"),
            json={},
        )
    assert r.status_code == 403
    assert r.headers["content-type"].startswith(PROBLEM)


async def test_hanging_and_refusing_services_are_reported(admin_rig: AdminRig) -> None:
    hanging = admin_rig.thread.serve(make_odd_upstream("hanging"))
    refusing = admin_rig.thread.serve(make_odd_upstream("refusing"))
    settings = GatewaySettings(
        upstreams={"hanging": hanging, "refusing": refusing, "demo": admin_rig.demo},
        auth=AuthSettings(hs256_secret=SECRET),
        admin_timeout_seconds=0.5,
    )
    gateway = admin_rig.thread.serve(create_app(settings), proxy_headers=False)
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(gateway + "/admin/api/tasks", headers=admin_rig.auth("staff"))
    assert r.status_code == 200
    services = {s["service"]: s for s in r.json()["services"]}
    assert services["hanging"]["status"] == "unreachable"
    assert services["hanging"]["detail"] == "no answer within 0.5 s"
    assert services["refusing"]["status"] == "forbidden"
    assert (services["refusing"]["http"], services["refusing"]["code"]) == (403, "forbidden")
    assert services["refusing"]["detail"] == "not you"
    assert services["demo"]["status"] == "ok"


class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts.append(values)
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"{tag} {name}")
            if name in ("src", "href") and value and "//" in value:
                self.external.append(value)
        if tag == "style":
            self.inline.append("style element")


async def test_page_is_public_with_a_strict_csp(admin_rig: AdminRig) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.get(admin_rig.gateway + "/admin")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["connect-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"

        scan = _Scan()
        scan.feed(r.text)
        assert scan.scripts == [{"src": "/admin/static/admin.js", "defer": None}]
        assert scan.inline == []
        assert scan.external == []

        for name, kind in [
            ("admin.js", "text/javascript"),
            ("admin.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            r = await client.get(f"{admin_rig.gateway}/admin/static/{name}")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith(kind)
            assert r.headers["content-security-policy"] == csp
        js = (await client.get(admin_rig.gateway + "/admin/static/admin.js")).text
        assert "innerHTML" not in js
        assert "eval(" not in js

        for path in ("/admin/static/app.py", "/admin/static/..%2Fapp.py", "/admin/static/"):
            r = await client.get(admin_rig.gateway + path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith(PROBLEM)


@pytest.mark.parametrize("path", ["/admin/api/tasks", "/admin/api/executions"])
async def test_admin_endpoints_are_in_the_merged_openapi(admin_rig: AdminRig, path: str) -> None:
    async with httpx.AsyncClient() as client:
        doc = (await client.get(admin_rig.gateway + "/openapi.json")).json()
    operation = doc["paths"][path]["get"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert "401" in operation["responses"]
