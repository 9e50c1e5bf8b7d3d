"""The gateway serves the AsyncAPI document (``/asyncapi.json``) and its page (``/asyncapi``)
beside the OpenAPI docs: public, valid AsyncAPI 3.0.0, configured by ``GATEWAY_ASYNCAPI__*``,
and a page that runs no script and loads nothing from elsewhere."""

from __future__ import annotations

import json
import sys
import types
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jsonschema
import pytest
from gateway_service import asyncapi as gateway_asyncapi
from gateway_service.app import create_app
from gateway_service.settings import AsyncApiSettings, GatewaySettings
from mesh_common.auth import AuthSettings
from mesh_common.bus import envelope, topology
from mesh_contracts import Event, all_contracts
from mesh_contracts import asyncapi as contracts_asyncapi

from .conftest import SECRET

SCHEMA_FILE = (
    Path(__file__).resolve().parents[3]
    / "libs/mesh_contracts/tests/data/asyncapi-3.0.0-without-id.schema.json"
)


@cache
def official_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


class PageParser(HTMLParser):
    """Collects what the CSP and the page's links depend on."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.urls: list[tuple[str, str]] = []
        self.inline_styles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("href", "src") and value is not None:
                self.urls.append((tag, value))
            if name == "style" or name.startswith("on"):
                self.inline_styles += 1


def app_client(settings: GatewaySettings) -> httpx.AsyncClient:
    app = create_app(settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_asyncapi_json_is_public_valid_and_complete(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        r = await client.get("/asyncapi.json")  # no token
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == f"{rig.settings.title}: messages"
    assert doc["info"]["version"] == rig.settings.version
    errors = [e.message for e in official_validator().iter_errors(doc)]
    assert errors == []
    default = topology.Topology()
    for cls in all_contracts():
        channel = doc["channels"][cls.__message_type__]
        exchange = channel["bindings"]["amqp"]["exchange"]
        kind = contracts_asyncapi.kind_of(cls)
        assert exchange["name"] == default.exchange_for(kind)
        assert exchange["vhost"] == AsyncApiSettings().vhost
    assert doc["servers"]["production"]["host"] == AsyncApiSettings().production_host


async def test_asyncapi_page_is_self_contained(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        r = await client.get("/asyncapi")
        css = await client.get(gateway_asyncapi.CSS_PATH)
        icon = await client.get("/admin/static/favicon.svg")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    page = PageParser()
    page.feed(r.text)
    assert "script" not in page.tags and "style" not in page.tags and "iframe" not in page.tags
    assert page.inline_styles == 0
    # Every URL is this origin's; every in-page link has its target.
    for _, url in page.urls:
        assert url.startswith(("/", "#")) and not url.startswith("//"), url
        if url.startswith("#"):
            assert url[1:] in page.ids, f"dangling link {url}"
    assert ("link", gateway_asyncapi.CSS_PATH) in page.urls
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert icon.status_code == 200
    # Every contract has its operation section and its payload schema on the page.
    for cls in all_contracts():
        kind = contracts_asyncapi.kind_of(cls)
        action = "send" if kind == "event" else "receive"
        assert f"op-{action}_{cls.__message_type__.replace('.', '_')}" in page.ids
        assert f"<code>{cls.__message_type__}</code>" in r.text
    assert "schema-PlaceOrder" in page.ids and "schema-mesh.RpcError" in page.ids


async def test_openapi_lists_the_asyncapi_document(rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        doc = (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/asyncapi.json"]["get"]
    assert operation["security"] == [] and operation["tags"] == ["gateway"]


def test_mirrored_names_match_the_bus() -> None:
    """mesh_contracts cannot import mesh_common; its copies of the bus' names must not drift."""
    for name in dir(envelope):
        if name.startswith("H_"):
            assert getattr(contracts_asyncapi, name) == getattr(envelope, name), name
    assert contracts_asyncapi.TRACE_HEADERS == envelope.TRACE_HEADERS
    assert contracts_asyncapi.CONTENT_TYPE == envelope.CONTENT_TYPE
    assert contracts_asyncapi.EVENTS_EXCHANGE == topology.EVENTS
    assert contracts_asyncapi.COMMANDS_EXCHANGE == topology.COMMANDS
    assert contracts_asyncapi.RPC_EXCHANGE == topology.RPC
    # The headers schemas describe every bus header a message of that kind can carry.
    doc = contracts_asyncapi.build_document(title="t", version="1", servers={})
    schemas = doc["components"]["schemas"]
    command = schemas["mesh.headers.command"]["properties"]
    rpc = schemas["mesh.headers.rpc"]["properties"]
    reply = schemas["mesh.headers.reply"]["properties"]
    for header in (envelope.H_KIND, envelope.H_REQUEST_ID, envelope.H_ACTOR, envelope.H_CAUSATION):
        assert header in command and header in rpc
    for header in (envelope.H_ATTEMPT, envelope.H_ERROR, envelope.H_ERROR_TYPE):
        assert header in command
    assert envelope.H_DEADLINE in rpc and envelope.H_STATUS in reply


async def test_settings_configure_servers_vhost_and_prefix(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAMS", "{}")
    monkeypatch.setenv("GATEWAY_AUTH__HS256_SECRET", SECRET)
    monkeypatch.setenv("GATEWAY_ASYNCAPI__PRODUCTION_HOST", "mq.example.org:5671")
    monkeypatch.setenv("GATEWAY_ASYNCAPI__VHOST", "centre")
    monkeypatch.setenv("GATEWAY_ASYNCAPI__PREFIX", "staging.")
    settings = GatewaySettings()
    async with app_client(settings) as client:
        doc = (await client.get("/asyncapi.json")).json()
        page = (await client.get("/asyncapi")).text
    production = doc["servers"]["production"]
    assert (production["host"], production["protocol"], production["pathname"]) == (
        "mq.example.org:5671",
        "amqps",
        "/centre",
    )
    exchange = doc["channels"]["booking.place_order"]["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["vhost"]) == ("staging.mesh.rpc", "centre")
    assert official_validator().is_valid(doc)
    assert "mq.example.org:5671" in page and "staging.mesh.events" in page
    with pytest.raises(ValueError, match="extra"):
        AsyncApiSettings(production_hots="typo:5671")  # type: ignore[call-arg]


def test_page_escapes_what_contracts_say() -> None:
    """Docstrings are text: markup in them is shown, never executed."""
    module = types.ModuleType("mesh_contracts.evil", "Owner <img src=x onerror=alert(2)>.")
    sys.modules[module.__name__] = module
    try:

        class Pwned(Event):
            """Hello <script>alert(1)</script> and [a link](javascript:alert(3))."""

            __message_type__: ClassVar[str] = "evil.pwned.v1"
            note: str = "</pre><script>alert(4)</script>"

        Pwned.__module__ = module.__name__
        doc = contracts_asyncapi.build_document(
            title="<b>t</b>", version="1", servers={}, contracts=[Pwned]
        )
    finally:
        del sys.modules[module.__name__]
    html = gateway_asyncapi.render_page(doc)
    page = PageParser()
    page.feed(html)
    assert "script" not in page.tags and "img" not in page.tags and "b" not in page.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "javascript:" not in html.replace("javascript:alert(3)", "")  # not as a link
    assert all(not url.startswith("javascript:") for _, url in page.urls)
    assert page.inline_styles == 0


def test_page_lists_replies_and_headers() -> None:
    settings = GatewaySettings(upstreams={}, auth=AuthSettings(hs256_secret=SECRET))
    doc: dict[str, Any] = gateway_asyncapi.document_for(settings)
    html = gateway_asyncapi.render_page(doc)
    page = PageParser()
    page.feed(html)
    section = html.split('id="op-receive_booking_place_order"', 1)[1].split("</article>", 1)[0]
    assert "Reply" in section and "$message.header#/reply_to" in section
    assert "<code>OrderResult</code>" in section and "<code>RpcError</code>" in section
    assert "<code>x-deadline</code>" in section and "<code>x-mesh-status</code>" in section
    # Schema references inside the pretty-printed JSON link to their sections.
    assert 'href="#schema-Order"' in section and "schema-Order" in page.ids
