"""Gateway test rig: real upstream FastAPI apps and the gateway, served by uvicorn over HTTP.

All servers run in one background thread with its own event loop, started once per test
session, so tests talk to them exactly as clients do (real sockets, real streaming) and the
upstreams' progress counters can be read from the test while a transfer is in flight.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from gateway_service.app import create_app
from gateway_service.settings import GatewaySettings
from mesh_common.app import create_service_app
from mesh_common.auth import AuthSettings, mint_token
from mesh_common.bus.memory import MemoryBroker
from mesh_common.db import service_metadata
from mesh_common.settings import ServiceSettings
from mesh_common.tasks import (
    Interval,
    TaskContext,
    TaskRegistry,
    task_hooks,
    task_router,
    task_tables,
)
from mesh_common.testing.serving import ServerThread
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel, SecretStr

SECRET = "gateway-test-secret-0123456789abcdef!"
CHUNK = 64 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Progress:
    """Byte counters the upstreams update while streaming, read by the tests."""

    produced: int = 0
    received: int = 0
    max_lag: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)


class Course(BaseModel):
    id: int
    title: str


class Page(BaseModel):
    items: list[Course]
    total: int


def make_upstream(name: str, progress: Progress) -> FastAPI:
    app = FastAPI(title=f"{name} service", version="1.2.3")

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/courses", response_model=Page, operation_id="list_courses")
    async def courses() -> Page:
        return Page(items=[Course(id=1, title=f"{name} course")], total=1)

    @app.post("/courses", response_model=Course, status_code=201)
    async def create_course(course: Course) -> Course:
        return course

    @app.api_route(
        "/echo/{rest:path}",
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
        include_in_schema=False,
    )
    async def echo(request: Request, rest: str) -> JSONResponse:
        body = await request.body()
        return JSONResponse(
            {
                "service": name,
                "method": request.method,
                "path": request.url.path,
                "raw_path": request.scope.get("raw_path", b"").decode(),
                "query": request.url.query,
                "client_port": request.client.port if request.client else None,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_len": len(body),
            },
            headers={"x-mesh-internal-secret": "leak", "set-cookie": "sid=abc; Path=/"},
        )

    @app.head("/public/info", include_in_schema=False)
    @app.get("/public/info")
    async def public_info() -> dict[str, str]:
        return {"public": "yes"}

    @app.get("/big")
    async def big(size: int, request: Request) -> StreamingResponse:
        progress.produced = 0

        async def generate() -> AsyncIterator[bytes]:
            block = b"x" * CHUNK
            left = size
            sent = 0
            while left > 0:
                piece = block[: min(CHUNK, left)]
                left -= len(piece)
                progress.produced += len(piece)
                sent += 1
                # uvicorn's send() silently drops data after a disconnect, so the generator
                # itself notices when the gateway hangs up.
                if sent % 16 == 0 and await request.is_disconnected():
                    return
                yield piece

        return StreamingResponse(generate(), media_type="application/octet-stream")

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, Any]:
        progress.received = 0
        digest = hashlib.sha256()
        async for chunk in request.stream():
            progress.received += len(chunk)
            digest.update(chunk)
        return {"bytes": progress.received, "sha256": digest.hexdigest()}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(3)
        return {"late": "yes"}

    @app.get("/gzip")
    async def gzipped() -> Response:
        # Already-compressed bytes: the gateway must pass them through untouched.
        return Response(
            gzip.compress(b'{"zipped": true}'),
            media_type="application/json",
            headers={"content-encoding": "gzip"},
        )

    return app


@dataclass
class Rig:
    gateway: str
    alpha: str
    beta: str
    down: str
    progress: Progress
    settings: GatewaySettings
    thread: ServerThread

    def token(self, **kw: Any) -> str:
        kw.setdefault("subject", "alice")
        return mint_token(secret=SECRET, **kw)

    def auth(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(**kw)}


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    thread = ServerThread(loop=uvloop.new_event_loop())  # uvloop, as in production
    progress = Progress()
    try:
        alpha = thread.serve(make_upstream("alpha", progress))
        beta = thread.serve(make_upstream("beta", progress))
        down = f"http://127.0.0.1:{free_port()}"  # nothing listens here
        settings = GatewaySettings(
            upstreams={"alpha": alpha, "beta": beta, "down": down},
            auth=AuthSettings(hs256_secret=SECRET),
            max_body_bytes=1024 * 1024,
            max_body_bytes_by_service={"beta": 8 * 1024 * 1024},
            public_paths=["/api/*/health/live", "/api/alpha/public/*"],
            read_timeout_seconds=1.0,
            connect_timeout_seconds=1.0,
            health_timeout_seconds=0.5,
        )
        gateway = thread.serve(create_app(settings), proxy_headers=False)
        yield Rig(gateway, alpha, beta, down, progress, settings, thread)
    finally:
        thread.stop()


@dataclass
class TracedGateway:
    url: str
    exporter: InMemorySpanExporter


@pytest.fixture(scope="session")
def traced_gateway(rig: Rig) -> TracedGateway:
    """A second gateway on the same upstreams: 64 MiB body limit and a real tracer provider."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = rig.settings.model_copy(update={"max_body_bytes": 64 * 1024 * 1024})
    url = rig.thread.serve(create_app(settings, tracer_provider=provider), proxy_headers=False)
    return TracedGateway(url, exporter)


# -- the /admin dashboard rig ---------------------------------------------------------------------
# A real service with tasks (create_service_app + TaskRegistry + task_router on SQLite and its own
# in-memory broker), a service without a task API, one whose task API fails, one that hangs, and
# an address where nothing listens; a gateway in front of them.

CONTACTS = [f"contact-{n}" for n in range(1, 7)]
REJECTED = "contact-4"  # fails on ordinary runs, succeeds when retried alone


def make_tasks_service(var_dir: Path) -> FastAPI:
    registry = TaskRegistry()

    @registry.task("sync-contacts", schedule=Interval(3600), kind="contacts")
    async def sync_contacts(ctx: TaskContext) -> None:
        """Push contacts to the CRM."""
        for n, key in enumerate(CONTACTS, start=1):
            if not ctx.wanted(key):
                continue
            ctx.check_cancelled()
            if key == REJECTED and ctx.only_keys is None:
                await ctx.item(key, "update", "failed", error="CRM rejected the e-mail address")
            elif n == len(CONTACTS):
                await ctx.item(key, "update", "unchanged")
            else:
                detail = {"email": [None, f"{key}@example.org"]} if ctx.dry_run else None
                await ctx.item(key, "create" if n % 2 else "update", "ok", detail=detail)

    @registry.task("slow-import")
    async def slow_import(ctx: TaskContext) -> None:
        """Imports one row every 50 ms until cancelled (at most 2000)."""
        for n in range(1, 2001):
            ctx.check_cancelled()
            await ctx.item(f"row-{n}", "import", "ok")
            if n % 5 == 0:
                await ctx.flush()
            await asyncio.sleep(0.05)

    metadata = service_metadata()
    tables = task_tables(metadata)
    start, stop = task_hooks(registry, tables, tick_seconds=0.2, lease_seconds=5.0)
    settings = ServiceSettings(
        service_name="demo",
        environment="test",
        var_dir=var_dir,
        mesh_jwt_secret=SecretStr(SECRET),
        log_json=False,
    )
    return create_service_app(
        settings,
        title="demo service",
        description="A service with two tasks, for the dashboard tests.",
        routers=[task_router()],
        metadata=metadata,
        on_startup=[start],
        on_shutdown=[stop],
        broker=MemoryBroker(),
    )


def make_odd_upstream(kind: str) -> FastAPI:
    """``broken``: GET /tasks... answers 500 problem+json; ``hanging``: after 3 s;
    ``refusing``: 403 problem+json at once."""
    app = FastAPI()

    @app.get("/tasks")
    @app.get("/tasks/{rest:path}")
    async def tasks() -> JSONResponse:
        if kind == "hanging":
            await asyncio.sleep(3)
        if kind == "refusing":
            return JSONResponse(
                {"title": "Forbidden", "status": 403, "code": "forbidden", "detail": "not you"},
                status_code=403,
                media_type="application/problem+json",
            )
        return JSONResponse(
            {
                "title": "Internal Server Error",
                "status": 500,
                "code": "internal-error",
                "detail": "the task table is corrupt",
            },
            status_code=500,
            media_type="application/problem+json",
        )

    return app


@dataclass
class AdminRig:
    gateway: str
    demo: str
    thread: ServerThread
    settings: GatewaySettings

    def token(self, *roles: str, subject: str = "ops") -> str:
        return mint_token(subject=subject, secret=SECRET, roles=roles)

    def auth(self, *roles: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(*roles)}


@pytest.fixture(scope="session")
def admin_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminRig]:
    thread = ServerThread(loop=uvloop.new_event_loop())  # uvloop, as in production
    try:
        demo = thread.serve(make_tasks_service(tmp_path_factory.mktemp("demo")))
        settings = GatewaySettings(
            upstreams={
                "demo": demo,
                "plain": thread.serve(make_upstream("plain", Progress())),
                "broken": thread.serve(make_odd_upstream("broken")),
                "down": f"http://127.0.0.1:{free_port()}",  # nothing listens here
            },
            auth=AuthSettings(hs256_secret=SECRET),
            connect_timeout_seconds=1.0,
            admin_timeout_seconds=2.0,
        )
        gateway = thread.serve(create_app(settings), proxy_headers=False)
        yield AdminRig(gateway, demo, thread, settings)
    finally:
        thread.stop()
