"""The AsyncAPI document of the AMQP messages: ``/asyncapi.json`` and a page at ``/asyncapi``.

Responsible for serving what :func:`mesh_contracts.asyncapi.build_document` generates from the
contracts, next to the merged OpenAPI document, so a team that integrates over RabbitMQ (the
website's backend) needs no code: the JSON for tools, and a self-contained HTML page for people
(channels, operations, messages with their headers and payload schemas). Both are public, like
``/openapi.json``. The page has no script at all and loads nothing from other origins (its one
stylesheet comes from here); a strict Content-Security-Policy enforces that. The document is
built once per app: the contracts cannot change while the process runs. This module must not
talk to the broker.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from mesh_common.bus.topology import Topology
from mesh_contracts.asyncapi import amqp_servers, build_document

from gateway_service.settings import GatewaySettings

JSON_PATH = "/asyncapi.json"
PAGE_PATH = "/asyncapi"
CSS_PATH = "/asyncapi/static/asyncapi.css"

# No script at all; styles and images only from this origin; no framing, no forms.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
SCHEMA_PREFIX = "#/components/schemas/"
_SCHEMA_REF = re.compile(r"&#34;#/components/schemas/([\w.\-]+)&#34;")

# CommonMark without raw HTML: docstrings are text, never markup.
_markdown = MarkdownIt("commonmark", {"html": False})


def document_for(settings: GatewaySettings) -> dict[str, Any]:
    """The AsyncAPI document as configured by ``settings.asyncapi``."""
    cfg = settings.asyncapi
    topology = Topology(prefix=cfg.prefix)
    return build_document(
        title=f"{settings.title}: messages",
        version=settings.version,
        servers=amqp_servers(
            production_host=cfg.production_host, local_host=cfg.local_host, vhost=cfg.vhost
        ),
        exchanges={"event": topology.events, "command": topology.commands, "rpc": topology.rpc},
        vhost=cfg.vhost,
        description=(
            f"The REST API is described at `/openapi.json` (`/docs`); this document at "
            f"`{JSON_PATH}` (`{PAGE_PATH}`)."
        ),
    )


def asyncapi_router(settings: GatewaySettings) -> APIRouter:
    """``GET /asyncapi.json``, ``GET /asyncapi`` and the page's stylesheet; all public."""
    document = document_for(settings)
    body = json.dumps(document, ensure_ascii=False).encode()
    page = render_page(document)
    router = APIRouter(include_in_schema=False)

    @router.get(JSON_PATH)
    async def asyncapi_json() -> Response:
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})

    @router.get(PAGE_PATH)
    async def asyncapi_page() -> HTMLResponse:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return HTMLResponse(page, headers=headers)

    @router.get(CSS_PATH)
    async def asyncapi_css() -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return Response(_css(), media_type="text/css; charset=utf-8", headers=headers)

    return router


def asyncapi_openapi_paths() -> dict[str, Any]:
    """The JSON endpoint, for the gateway's part of the merged OpenAPI document."""
    return {
        JSON_PATH: {
            "get": {
                "tags": ["gateway"],
                "summary": "AsyncAPI 3.0 document of the AMQP messages (page: /asyncapi)",
                "operationId": "gateway__asyncapi",
                "security": [],
                "responses": {"200": {"description": "The AsyncAPI document"}},
            }
        }
    }


# ------------------------------------------------------------------------------------ the page


@functools.cache
def _css() -> bytes:
    return (resources.files("gateway_service") / "static" / "asyncapi.css").read_bytes()


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("gateway_service", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["markdown"] = _markdown_filter
    env.filters["markdown_inline"] = _markdown_inline
    env.filters["schema_json"] = _schema_json
    return env


def _markdown_filter(text: str | None) -> Markup:
    return Markup(_markdown.render(text or ""))  # noqa: S704 - raw HTML is disabled above


def _markdown_inline(text: str | None) -> Markup:
    return Markup(_markdown.renderInline(text or ""))  # noqa: S704 - raw HTML is disabled above


def _schema_json(schema: Any) -> Markup:
    """Pretty JSON, escaped, with every schema reference turned into a link to its section."""
    escaped = str(escape(json.dumps(schema, indent=2, ensure_ascii=False)))
    linked = _SCHEMA_REF.sub(
        lambda m: f'<a href="#schema-{m.group(1)}">&#34;{SCHEMA_PREFIX}{m.group(1)}&#34;</a>',
        escaped,
    )
    return Markup(linked)  # noqa: S704 - built from escaped text; names match [\w.-]+


def render_page(document: Mapping[str, Any]) -> str:
    """The HTML page of an AsyncAPI document as :func:`build_document` shapes it."""
    return _environment().get_template("asyncapi.html").render(view=_view(document))


def _resolve(document: Mapping[str, Any], node: Any) -> Any:
    """Follow local ``$ref`` chains (``#/a/b``, JSON-pointer escaped)."""
    seen: set[str] = set()
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise ValueError(f"cannot resolve {ref!r}")
        seen.add(ref)
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _schema_name(node: Any) -> str | None:
    ref = node.get("$ref") if isinstance(node, Mapping) else None
    if isinstance(ref, str) and ref.startswith(SCHEMA_PREFIX):
        return ref[len(SCHEMA_PREFIX) :]
    return None


def _headers_rows(document: Mapping[str, Any], headers: Any) -> list[dict[str, Any]]:
    schema = _resolve(document, headers)
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        if "const" in prop:
            shape = f"= {json.dumps(prop['const'])}"
        elif "enum" in prop:
            shape = " | ".join(json.dumps(v) for v in prop["enum"])
        else:
            shape = str(prop.get("type", "any"))
        rows.append(
            {
                "name": name,
                "where": "AMQP property" if prop.get("x-amqp") == "property" else "header",
                "shape": shape,
                "required": name in required,
                "description": prop.get("description", ""),
            }
        )
    return rows


def _message_view(document: Mapping[str, Any], ref: Any) -> dict[str, Any]:
    message = _resolve(document, ref)
    payload = message.get("payload", {})
    return {
        "name": message.get("name", ""),
        "title": message.get("title", message.get("name", "")),
        "description": message.get("description") or message.get("summary"),
        "content_type": message.get("contentType", document.get("defaultContentType", "")),
        "headers": _headers_rows(document, message["headers"]) if "headers" in message else [],
        "payload_name": _schema_name(payload),
        "payload": _resolve(document, payload),
        "correlation": _resolve(document, message["correlationId"])["location"]
        if "correlationId" in message
        else None,
    }


def _view(document: Mapping[str, Any]) -> dict[str, Any]:
    info = document["info"]
    tags = {t["name"]: t.get("description") for t in info.get("tags", [])}
    services: dict[str, list[dict[str, Any]]] = {name: [] for name in tags}
    for op_id, operation in document.get("operations", {}).items():
        channel = _resolve(document, operation["channel"])
        binding = channel.get("bindings", {}).get("amqp", {})
        reply = operation.get("reply")
        view = {
            "id": op_id,
            "action": operation["action"],
            "title": operation.get("title", op_id),
            "summary": operation.get("summary"),
            "description": operation.get("description"),
            "address": channel.get("address"),
            "exchange": binding.get("exchange", {}).get("name"),
            "messages": [_message_view(document, ref) for ref in operation.get("messages", [])],
            "reply": None,
        }
        if reply is not None:
            reply_channel = _resolve(document, reply["channel"])
            view["reply"] = {
                "location": reply.get("address", {}).get("location"),
                "description": reply_channel.get("description"),
                "messages": [_message_view(document, ref) for ref in reply.get("messages", [])],
            }
        owner = next((t["name"] for t in operation.get("tags", [])), "other")
        services.setdefault(owner, []).append(view)
    return {
        "asyncapi": document["asyncapi"],
        "title": info["title"],
        "version": info["version"],
        "description": info.get("description"),
        "servers": [
            {
                "name": name,
                **server,
                "security": [
                    str(ref.get("$ref", ref.get("type", ""))).rsplit("/", 1)[-1]
                    for ref in server.get("security", [])
                ],
            }
            for name, server in document.get("servers", {}).items()
        ],
        "services": [
            {"name": name, "description": tags.get(name), "operations": ops}
            for name, ops in services.items()
            if ops
        ],
        "schemas": document.get("components", {}).get("schemas", {}),
    }
