"""Body limit and problem+json behaviour of the shared middleware, on a real ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from mesh_common.errors import Conflict, install_problem_handlers
from mesh_common.middleware import BodyLimitMiddleware, RequestContextMiddleware


def make_app(limit: int) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("order 42 exists with another payload", code="order-mismatch")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_middleware(BodyLimitMiddleware, max_bytes=limit)
    app.add_middleware(RequestContextMiddleware)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    )


async def test_body_within_limit_passes() -> None:
    async with client(make_app(1000)) as c:
        r = await c.post("/echo", content=b"x" * 1000)
    assert r.status_code == 200 and r.json() == {"size": 1000}


async def test_content_length_over_limit_is_413() -> None:
    async with client(make_app(1000)) as c:
        r = await c.post("/echo", content=b"x" * 1001)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "payload-too-large"


async def test_chunked_stream_over_limit_is_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 500

    async with client(make_app(1000)) as c:
        r = await c.post("/echo", content=chunks())
    assert r.status_code == 413


async def test_chunked_stream_over_limit_is_413_for_a_parsed_body() -> None:
    """FastAPI turns any error while reading a declared body into 400; still 413."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/items")
    async def items(item: dict[str, int]) -> dict[str, int]:
        return item

    app.add_middleware(BodyLimitMiddleware, max_bytes=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 500

    async with client(app) as c:
        r = await c.post("/items", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["code"] == "payload-too-large"


async def test_domain_error_maps_to_problem_with_code_and_request_id() -> None:
    async with client(make_app(1000)) as c:
        r = await c.get("/conflict", headers={"x-request-id": "req-0001-abcd"})
    body = r.json()
    assert r.status_code == 409
    assert body["code"] == "order-mismatch"
    assert body["type"].endswith("/order-mismatch")
    assert body["detail"] == "order 42 exists with another payload"
    assert body["request_id"] == "req-0001-abcd"


async def test_unexpected_error_is_500_problem_without_internals() -> None:
    async with client(make_app(1000)) as c:
        r = await c.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "secret internals" not in r.text
