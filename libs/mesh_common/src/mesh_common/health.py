"""Liveness and readiness endpoints.

``/health/live`` answers 200 while the process runs. ``/health/ready`` runs the registered checks
(database, bus, ...) and answers 503 problem+json naming the failing ones. Checks must be cheap and
bounded: each gets a timeout so a hung dependency cannot hang the probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mesh_common.errors import problem

Check = Callable[[], Awaitable[object]]


class HealthChecks:
    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    async def run(self) -> dict[str, str]:
        async def one(name: str, check: Check) -> tuple[str, str]:
            try:
                await asyncio.wait_for(check(), self.timeout)
                return name, "ok"
            except Exception as exc:
                return name, f"failed: {type(exc).__name__}: {exc}"[:300]

        results = await asyncio.gather(*(one(n, c) for n, c in self._checks.items()))
        return dict(results)


def health_router() -> APIRouter:
    router = APIRouter(prefix="/health", tags=["health"])

    @router.get("/about", summary="Which service and version answer here")
    async def about(request: Request) -> dict[str, str]:
        settings = request.app.state.runtime.settings
        return {
            "service": settings.service_name,
            "version": request.app.version,
            "environment": settings.environment,
        }

    @router.get("/live", summary="Liveness probe")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness probe", response_model=None)
    async def ready(request: Request) -> JSONResponse | dict[str, object]:
        checks: HealthChecks = request.app.state.runtime.health
        if getattr(request.app.state, "draining", False):
            return problem(503, code="draining", detail="shutting down")
        results = await checks.run()
        if all(v == "ok" for v in results.values()):
            return {"status": "ok", "checks": results}
        return problem(
            503, code="not-ready", detail="dependency check failed", extra={"checks": results}
        )

    return router
