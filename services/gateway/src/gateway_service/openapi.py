"""One OpenAPI document for the whole mesh, merged from every upstream's /openapi.json.

Responsible for fetching the upstream documents (at startup, then cached for a TTL; an upstream
that is down is reported as unavailable and retried sooner, never fatal), and for merging them:
paths prefixed with ``/api/<service>``, component names namespaced as ``<service>__<Name>`` with
every ``$ref`` rewritten, operations tagged by service and secured by one bearer scheme (public
paths excepted). It must not change what the upstreams serve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger("gateway.openapi")

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
COMPONENT_SECTIONS = (
    "schemas",
    "responses",
    "parameters",
    "examples",
    "requestBodies",
    "headers",
    "links",
    "callbacks",
    "pathItems",
)
BEARER_SCHEME = "bearerAuth"
# Upstream paths that the gateway does not expose in the merged document: the per-service
# spec and docs are plumbing, the merged document replaces them.
HIDDEN_UPSTREAM_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def namespaced(service: str, name: str) -> str:
    return f"{service.replace('-', '_')}__{name}"


def _rewrite_refs(node: Any, service: str) -> Any:
    """Deep copy of ``node`` with local component refs pointing at the namespaced names."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                out[key] = _rewrite_ref(value, service)
            elif key == "mapping" and isinstance(value, dict):
                # discriminator mappings hold refs as plain strings
                out[key] = {
                    k: _rewrite_ref(v, service) if isinstance(v, str) else v
                    for k, v in value.items()
                }
            else:
                out[key] = _rewrite_refs(value, service)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, service) for v in node]
    return node


def _rewrite_ref(ref: str, service: str) -> str:
    prefix = "#/components/"
    if not ref.startswith(prefix):
        return ref
    section, _, name = ref[len(prefix) :].partition("/")
    if section not in COMPONENT_SECTIONS or not name:
        return ref
    return f"{prefix}{section}/{namespaced(service, name)}"


def merge_openapi(
    documents: Mapping[str, Mapping[str, Any] | None],
    *,
    status: Mapping[str, Mapping[str, Any]],
    title: str,
    version: str,
    is_public: Callable[[str], bool],
    own_paths: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge upstream documents (``None`` = unavailable) into one OpenAPI 3.1 document."""
    paths: dict[str, Any] = dict(own_paths or {})
    components: dict[str, dict[str, Any]] = {
        "securitySchemes": {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "edumesh access token (mesh-token in development)",
            }
        }
    }
    tags: list[dict[str, Any]] = []
    if own_paths:
        tags.append({"name": "gateway", "description": "The gateway's own endpoints"})
    for service in sorted(documents):
        doc = documents[service]
        info = status.get(service, {})
        if doc is None:
            tags.append(
                {
                    "name": service,
                    "description": f"unavailable: {info.get('error', 'no document')}",
                    "x-edumesh-status": "unavailable",
                }
            )
            continue
        doc_info = doc.get("info") or {}
        label = f"{doc_info.get('title', service)} {doc_info.get('version', '')}".strip()
        tags.append(
            {
                "name": service,
                "description": label,
                "x-edumesh-status": info.get("state", "ok"),
            }
        )
        for section, entries in (doc.get("components") or {}).items():
            if section not in COMPONENT_SECTIONS or not isinstance(entries, dict):
                continue  # upstream security schemes are replaced by the gateway's bearer
            target = components.setdefault(section, {})
            for name, value in entries.items():
                target[namespaced(service, name)] = _rewrite_refs(value, service)
        for path, item in (doc.get("paths") or {}).items():
            if path in HIDDEN_UPSTREAM_PATHS or not isinstance(item, dict):
                continue
            full = f"/api/{service}{path}"
            new_item = _rewrite_refs(item, service)
            for method, operation in new_item.items():
                if method not in HTTP_METHODS or not isinstance(operation, dict):
                    continue
                operation["tags"] = [service]
                if "operationId" in operation:
                    operation["operationId"] = namespaced(service, operation["operationId"])
                operation["security"] = [] if is_public(full) else [{BEARER_SCHEME: []}]
            paths[full] = new_item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "All edumesh services behind the gateway; each service is a tag.",
        },
        "paths": dict(sorted(paths.items())),
        "components": components,
        "tags": tags,
        "x-edumesh-upstreams": {k: dict(v) for k, v in sorted(status.items())},
    }


Fetch = Callable[[str, str], Awaitable[dict[str, Any]]]


class OpenApiAggregator:
    """Caches the merged document; refreshes after ``ttl`` (``retry`` when one was down)."""

    def __init__(
        self,
        upstreams: Mapping[str, str],
        fetch: Fetch,
        *,
        ttl: float,
        retry: float,
        title: str,
        version: str,
        is_public: Callable[[str], bool],
        own_paths: Callable[[], Mapping[str, Any]] | None = None,
    ):
        self._upstreams = dict(upstreams)
        self._fetch = fetch
        self._ttl = ttl
        self._retry = retry
        self._title = title
        self._version = version
        self._is_public = is_public
        self._own_paths = own_paths
        self._good: dict[str, dict[str, Any]] = {}
        self._document: dict[str, Any] | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def document(self) -> dict[str, Any]:
        if self._document is None or time.monotonic() >= self._expires:
            await self.refresh()
        assert self._document is not None
        return self._document

    async def refresh(self, *, force: bool = False) -> None:
        async with self._lock:
            if not force and self._document is not None and time.monotonic() < self._expires:
                return  # refreshed by a concurrent caller
            names = sorted(self._upstreams)
            results = await asyncio.gather(
                *(self._fetch(name, self._upstreams[name]) for name in names),
                return_exceptions=True,
            )
            documents: dict[str, dict[str, Any] | None] = {}
            status: dict[str, dict[str, Any]] = {}
            all_ok = True
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    all_ok = False
                    error = f"{type(result).__name__}: {result}".rstrip(": ")
                    log.warning("openapi of %s unavailable: %s", name, error)
                    if name in self._good:
                        # serve the last good copy rather than dropping the service's API
                        documents[name] = self._good[name]
                        status[name] = {"state": "stale", "error": error}
                    else:
                        documents[name] = None
                        status[name] = {"state": "unavailable", "error": error}
                else:
                    self._good[name] = result
                    documents[name] = result
                    status[name] = {"state": "ok"}
            self._document = merge_openapi(
                documents,
                status=status,
                title=self._title,
                version=self._version,
                is_public=self._is_public,
                own_paths=self._own_paths() if self._own_paths else None,
            )
            never_seen = any(s["state"] == "unavailable" for s in status.values())
            # A service whose API was never fetched (e.g. still starting when the gateway warmed
            # up) is tried again within a second, not after the full retry interval.
            wait = self._ttl if all_ok else min(self._retry, 1.0) if never_seen else self._retry
            self._expires = time.monotonic() + wait
