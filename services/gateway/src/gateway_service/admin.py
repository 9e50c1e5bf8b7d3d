"""The ops dashboard at ``/admin``: a static page, and two read endpoints that fan out to services.

Responsible for serving the dashboard's HTML, JavaScript and CSS (public, with a strict
Content-Security-Policy: no inline script or style, nothing from other origins) and for
``GET /admin/api/tasks`` and ``GET /admin/api/executions``, which ask every upstream's task API
(``mesh_common.tasks.task_router``) in parallel with the caller's own token and merge the
answers. A service that is down, slow or has no task API is reported as such in the result; it
never fails the whole request. Everything that changes state (run now, retry failed, cancel,
pause) goes from the page through the ordinary proxy to ``/api/<service>/tasks/...``, so the
services check the caller's roles themselves. The gateway additionally requires the staff role
here. This module must not hold task logic or talk to databases.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from mesh_common.auth import Principal, require
from mesh_common.context import current_request_id
from mesh_common.errors import NotFound
from pydantic import BaseModel, Field

from gateway_service.headers import new_traceparent
from gateway_service.upstream import (
    ConnectFailed,
    PoolExhausted,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)

log = logging.getLogger("gateway.admin")

# Strict: scripts, styles, images and fetches only from this origin; no inline script or style,
# no plugins, no framing, no form submissions (the sign-in form is handled by script; should the
# script fail, the browser must not send the token as a query string).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# The only files served under /admin/static/; anything else is a 404.
ASSETS = {
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
STATIC = resources.files("gateway_service") / "static"

ExecutionStatus = Literal["running", "succeeded", "partially_succeeded", "failed", "cancelled"]
ServiceState = Literal["ok", "unreachable", "no-tasks", "forbidden", "error"]


class ServiceReport(BaseModel):
    """How one service answered: ``ok``, or why its tasks are missing from the result."""

    service: str
    status: ServiceState
    http: int | None = None
    code: str | None = None
    detail: str | None = None


class ServiceTasks(ServiceReport):
    # Each task as the service's GET /tasks returns it, plus ``last_execution`` (its newest
    # execution from GET /tasks/executions, or null).
    tasks: list[dict[str, Any]] = Field(default_factory=list)


class TasksOverview(BaseModel):
    generated_at: datetime
    services: list[ServiceTasks]


class ExecutionsPage(BaseModel):
    # Executions as the services return them plus ``service``, newest first.
    executions: list[dict[str, Any]]
    services: list[ServiceReport]


class _Failed(Exception):
    """One upstream call did not give the expected JSON; carries the report to show."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(report.get("detail"))
        self.report = report


@functools.cache
def _asset_bytes(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _static_response(name: str, media_type: str) -> Response:
    body = _asset_bytes(name)
    headers = dict(SECURITY_HEADERS)
    headers["Cache-Control"] = "no-cache"
    return Response(body, media_type=media_type, headers=headers)


class AdminApi:
    """The fan-out: one GET per upstream (and per task for its last execution), in parallel,
    each bounded by ``timeout`` seconds, on the proxy's connection pools."""

    def __init__(self, pools: Mapping[str, UpstreamPool], timeout: float) -> None:
        self.pools = pools
        self.timeout = timeout

    def _headers(self, request: Request, principal: Principal) -> list[tuple[str, str]]:
        headers = [
            ("accept", "application/json"),
            ("authorization", request.headers.get("authorization", "")),
            ("x-mesh-actor", principal.subject),
            ("traceparent", new_traceparent(None)),
        ]
        request_id = current_request_id()
        if request_id:
            headers.append(("x-request-id", request_id))
        return headers

    async def _get_json(self, service: str, target: str, headers: list[tuple[str, str]]) -> Any:
        """GET ``target`` from ``service``; the parsed JSON of a 200, else :class:`_Failed`."""
        pool = self.pools[service]
        try:
            async with asyncio.timeout(self.timeout):
                response = await pool.request(b"GET", target.encode(), headers)
                try:
                    status, body = response.status, await response.read()
                finally:
                    response.release()
        except ConnectFailed:
            raise _Failed(_unreachable("the service is unreachable")) from None
        except (UpstreamTimeout, TimeoutError):
            raise _Failed(_unreachable(f"no answer within {self.timeout:g} s")) from None
        except PoolExhausted:
            raise _Failed(_unreachable("the service has no free connection")) from None
        except (UpstreamError, OSError) as exc:
            raise _Failed(_unreachable(f"the connection failed ({type(exc).__name__})")) from None
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if status == 200 and data is not None:
            return data
        raise _Failed(_answer_report(status, data))

    async def tasks(self, request: Request, principal: Principal) -> TasksOverview:
        headers = self._headers(request, principal)
        names = sorted(self.pools)
        results = await asyncio.gather(*(self._service_tasks(n, headers) for n in names))
        return TasksOverview(generated_at=datetime.now(UTC), services=list(results))

    async def _service_tasks(self, service: str, headers: list[tuple[str, str]]) -> ServiceTasks:
        try:
            tasks = await self._get_json(service, "/tasks", headers)
            if not isinstance(tasks, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) for t in tasks
            ):
                raise _Failed(_invalid("GET /tasks did not return a list of tasks"))
            lasts = await asyncio.gather(
                *(
                    self._get_json(
                        service,
                        "/tasks/executions?" + urlencode({"task": t["name"], "limit": 1}),
                        headers,
                    )
                    for t in tasks
                ),
                return_exceptions=True,
            )
        except _Failed as failed:
            return ServiceTasks(service=service, **failed.report)
        for task, last in zip(tasks, lasts, strict=True):
            if isinstance(last, list) and last and isinstance(last[0], dict):
                task["last_execution"] = last[0]
            else:
                task["last_execution"] = None
                if isinstance(last, BaseException) and not isinstance(last, _Failed):
                    raise last
        return ServiceTasks(service=service, status="ok", tasks=tasks)

    async def executions(
        self,
        request: Request,
        principal: Principal,
        *,
        service: str | None,
        task: str | None,
        status: str | None,
        limit: int,
    ) -> ExecutionsPage:
        if service is not None and service not in self.pools:
            raise NotFound(f"no service named {service!r}", code="unknown-service")
        names = [service] if service is not None else sorted(self.pools)
        query: dict[str, Any] = {"limit": limit}
        if task:
            query["task"] = task
        if status:
            query["status"] = status
        target = "/tasks/executions?" + urlencode(query, quote_via=quote)
        headers = self._headers(request, principal)
        results = await asyncio.gather(
            *(self._get_json(n, target, headers) for n in names), return_exceptions=True
        )
        executions: list[dict[str, Any]] = []
        reports: list[ServiceReport] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, _Failed):
                reports.append(ServiceReport(service=name, **result.report))
            elif isinstance(result, BaseException):
                raise result
            elif not isinstance(result, list):
                reports.append(ServiceReport(service=name, **_invalid("not a list")))
            else:
                reports.append(ServiceReport(service=name, status="ok"))
                executions.extend({**e, "service": name} for e in result if isinstance(e, dict))
        executions.sort(key=_started, reverse=True)
        return ExecutionsPage(executions=executions[:limit], services=reports)


def _unreachable(detail: str) -> dict[str, Any]:
    return {"status": "unreachable", "detail": detail}


def _invalid(detail: str) -> dict[str, Any]:
    return {"status": "error", "code": "invalid-response", "detail": detail}


def _answer_report(status: int, data: Any) -> dict[str, Any]:
    """A non-200 (or unparsable) answer: keep the service's problem ``code`` and ``detail``."""
    problem = data if isinstance(data, dict) else {}
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    detail = problem.get("detail") if isinstance(problem.get("detail"), str) else None
    if status == 404 and code in (None, "not-found"):
        # No /tasks route: the service simply has no task API (yet).
        return {"status": "no-tasks", "http": 404, "detail": "this service has no task API"}
    if status in (401, 403):
        return {"status": "forbidden", "http": status, "code": code, "detail": detail}
    if status == 200:
        return {**_invalid("the answer was not JSON"), "http": 200}
    return {
        "status": "error",
        "http": status,
        "code": code,
        "detail": detail or f"the service answered HTTP {status}",
    }


def _started(execution: dict[str, Any]) -> float:
    value = execution.get("started_at")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return 0.0
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return 0.0


def admin_router(pools: Mapping[str, UpstreamPool], *, timeout: float) -> APIRouter:
    """``/admin`` (page and assets, public) and ``/admin/api/...`` (staff; token forwarded).

    The app must have ``install_auth`` called with the gateway's verifier."""
    api = AdminApi(pools, timeout)
    router = APIRouter(include_in_schema=False)
    staff = Depends(require("staff"))

    @router.get("/admin")
    @router.get("/admin/")
    async def page() -> Response:
        response = _static_response("index.html", "text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-store"
        return response

    @router.get("/admin/static/{name}")
    async def asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise NotFound(f"no dashboard asset {name!r}", code="not-found")
        return _static_response(name, media_type)

    @router.get("/admin/api/tasks", response_model=TasksOverview)
    async def tasks(request: Request, principal: Principal = staff) -> TasksOverview:
        return await api.tasks(request, principal)

    @router.get("/admin/api/executions", response_model=ExecutionsPage)
    async def executions(
        request: Request,
        principal: Principal = staff,
        service: str | None = None,
        task: str | None = Query(None, max_length=200),
        status: ExecutionStatus | None = None,
        limit: int = Query(50, ge=1, le=200),
    ) -> ExecutionsPage:
        return await api.executions(
            request, principal, service=service, task=task, status=status, limit=limit
        )

    return router


def admin_openapi_paths() -> dict[str, Any]:
    """The two data endpoints, for the gateway's part of the merged OpenAPI document."""

    def op(summary: str, op_id: str, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "get": {
                "tags": ["gateway"],
                "summary": summary,
                "operationId": op_id,
                "parameters": params,
                "security": [{"bearerAuth": []}],
                "responses": {
                    "200": {"description": "OK; unreachable services are listed, not fatal"},
                    "401": {"description": "token missing or invalid (problem+json)"},
                    "403": {"description": "role staff required (problem+json)"},
                },
            }
        }

    def q(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    return {
        "/admin/api/tasks": op(
            "Every service's tasks with their last execution (ops dashboard)",
            "gateway__admin_tasks",
            [],
        ),
        "/admin/api/executions": op(
            "Executions of every service's tasks, newest first (ops dashboard)",
            "gateway__admin_executions",
            [
                q("service", {"type": "string"}),
                q("task", {"type": "string"}),
                q(
                    "status",
                    {
                        "type": "string",
                        "enum": [
                            "running",
                            "succeeded",
                            "partially_succeeded",
                            "failed",
                            "cancelled",
                        ],
                    },
                ),
                q("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
            ],
        ),
    }
