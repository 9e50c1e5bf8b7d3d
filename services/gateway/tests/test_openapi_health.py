"""The aggregated OpenAPI document, Swagger UI, and the gateway's own health endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from gateway_service.openapi import OpenApiAggregator, merge_openapi


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        refs = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return refs + [r for v in node.values() for r in all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def check_structure(doc: dict[str, Any]) -> None:
    """The parts of OpenAPI 3.1 a merge can break: refs, operation ids, tags, security."""
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    for ref in all_refs(doc):
        resolve(doc, ref)  # raises KeyError when dangling
    op_ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(op_ids) == len(set(op_ids)), "duplicate operationId"
    tag_names = {t["name"] for t in doc["tags"]}
    schemes = doc["components"]["securitySchemes"]
    for path, item in doc["paths"].items():
        assert path.startswith("/"), path
        for op in item.values():
            if isinstance(op, dict) and "responses" in op:
                assert set(op["tags"]) <= tag_names | {"gateway"}
                for requirement in op.get("security", []):
                    assert set(requirement) <= set(schemes)


async def test_aggregated_openapi(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    check_structure(doc)
    paths = doc["paths"]
    assert "/api/alpha/courses" in paths and "/api/beta/courses" in paths
    assert "/api/alpha/openapi.json" not in paths
    schemas = doc["components"]["schemas"]
    # Both upstreams define "Course": namespaced, no collision, refs point at their own copy.
    assert "alpha__Course" in schemas and "beta__Course" in schemas
    ok = paths["/api/beta/courses"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"] == "#/components/schemas/beta__Page"
    assert schemas["beta__Page"]["properties"]["items"]["items"]["$ref"] == (
        "#/components/schemas/beta__Course"
    )
    get_courses = paths["/api/alpha/courses"]["get"]
    assert get_courses["tags"] == ["alpha"]
    assert get_courses["operationId"] == "alpha__list_courses"
    assert get_courses["security"] == [{"bearerAuth": []}]
    assert paths["/api/alpha/public/info"]["get"]["security"] == []
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    tags = {t["name"]: t for t in doc["tags"]}
    assert tags["down"]["x-edumesh-status"] == "unavailable"
    assert doc["x-edumesh-upstreams"]["alpha"] == {"state": "ok"}
    assert doc["x-edumesh-upstreams"]["down"]["state"] == "unavailable"
    assert "/health/ready" in paths


async def test_swagger_ui(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        r = await client.get("/docs")
    assert r.status_code == 200
    assert "swagger-ui" in r.text and "/openapi.json" in r.text


async def test_health(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert live.headers["x-request-id"]
    assert ready.status_code == 503  # "down" is down
    report = ready.json()
    assert report["status"] == "degraded"
    assert report["upstreams"]["alpha"]["status"] == "up"
    assert report["upstreams"]["beta"]["status"] == "up"
    assert report["upstreams"]["down"]["status"] == "down"


def test_merge_namespaces_all_component_refs() -> None:
    upstream = {
        "info": {"title": "x", "version": "1"},
        "paths": {
            "/things/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "get": {
                    "operationId": "get_thing",
                    "security": [{"HTTPBearer": []}],
                    "responses": {"404": {"$ref": "#/components/responses/NotFound"}},
                },
            }
        },
        "components": {
            "schemas": {
                "Pet": {
                    "oneOf": [{"$ref": "#/components/schemas/Cat"}],
                    "discriminator": {
                        "propertyName": "kind",
                        "mapping": {"cat": "#/components/schemas/Cat"},
                    },
                },
                "Cat": {"type": "object"},
            },
            "parameters": {"Id": {"name": "id", "in": "path", "required": True}},
            "responses": {"NotFound": {"description": "nope"}},
            "securitySchemes": {"HTTPBearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    doc = merge_openapi(
        {"course-export": upstream, "gone": None},
        status={"course-export": {"state": "ok"}, "gone": {"state": "unavailable", "error": "x"}},
        title="t",
        version="1",
        is_public=lambda p: False,
    )
    check_structure(doc)
    item = doc["paths"]["/api/course-export/things/{id}"]
    assert item["parameters"][0]["$ref"] == "#/components/parameters/course_export__Id"
    assert item["get"]["security"] == [{"bearerAuth": []}]
    pet = doc["components"]["schemas"]["course_export__Pet"]
    assert pet["discriminator"]["mapping"]["cat"] == "#/components/schemas/course_export__Cat"
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth"}


async def test_aggregator_keeps_last_good_document_when_upstream_fails() -> None:
    calls = {"n": 0}

    async def fetch(name: str, base: str) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("gone")
        return {"info": {}, "paths": {"/a": {"get": {"responses": {}}}}}

    agg = OpenApiAggregator(
        {"svc": "http://x"},
        fetch,
        ttl=60,
        retry=0.0001,
        title="t",
        version="1",
        is_public=lambda p: False,
    )
    first = await agg.document()
    assert first["x-edumesh-upstreams"]["svc"] == {"state": "ok"}
    await agg.refresh(force=True)
    second = await agg.document()
    assert "/api/svc/a" in second["paths"]
    assert second["x-edumesh-upstreams"]["svc"]["state"] == "stale"


@pytest.mark.parametrize("retry_seconds", [60.0])
async def test_aggregator_is_cached(retry_seconds: float) -> None:
    calls = {"n": 0}

    async def fetch(name: str, base: str) -> dict[str, Any]:
        calls["n"] += 1
        return {"paths": {}}

    agg = OpenApiAggregator(
        {"a": "http://a", "b": "http://b"},
        fetch,
        ttl=60,
        retry=retry_seconds,
        title="t",
        version="1",
        is_public=lambda p: False,
    )
    await agg.document()
    await agg.document()
    assert calls["n"] == 2  # one fetch per upstream, then served from cache


async def test_a_service_not_up_at_warm_up_is_tried_again_within_a_second() -> None:
    """The gateway warms the merged document at start, often before the services listen. A
    service never fetched is retried after at most a second (not the retry interval), so the
    document shows every API shortly after the mesh is up; one seen before keeps its last copy
    and waits the full interval."""
    up = {"b": False}
    calls = {"a": 0, "b": 0}

    async def fetch(name: str, base: str) -> dict[str, Any]:
        calls[name] += 1
        if name == "b" and not up["b"]:
            raise ConnectionError("refused")
        return {"info": {}, "paths": {f"/{name}": {"get": {"responses": {}}}}}

    agg = OpenApiAggregator(
        {"a": "http://a", "b": "http://b"},
        fetch,
        ttl=60,
        retry=30,
        title="t",
        version="1",
        is_public=lambda p: False,
    )
    await agg.refresh(force=True)  # the warm-up
    first = await agg.document()
    assert first["x-edumesh-upstreams"]["b"]["state"] == "unavailable"
    up["b"] = True
    await asyncio.sleep(1.05)
    second = await agg.document()
    assert "/api/b/b" in second["paths"], second["x-edumesh-upstreams"]
    assert calls["b"] == 2
