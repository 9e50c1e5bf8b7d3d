"""Connections: typed settings, secrets encrypted at rest and never shown or logged, partial
updates, test-connection checkers against real servers (fake Brevo, aiosmtpd, an OAuth token
endpoint), and the REST API with its roles. SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from base64 import b64encode
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from mesh_common.connectors import BrevoSettings, ConnectionStore, SchulconnexSettings
from mesh_common.errors import Conflict, Invalid, NotFound, Unavailable
from mesh_common.secrets import SecretBox, SecretKeyMissing, generate_key
from mesh_common.testing.brevo_fake import FakeBrevo, free_port, serve_asgi, serve_fake_brevo
from pydantic import SecretStr
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .connectors_support import Backend, api_fixture, auth, backend_fixture  # noqa: F401

KEY = "xkeysib-test-0123456789abcdef"


async def test_create_stores_secrets_encrypted_and_shows_only_set(backend: Backend) -> None:
    store = backend.hub.connections
    view = await store.create(
        "brevo", "brevo", {"base_url": "https://api.brevo.com/", "api_key": KEY}, actor="alice"
    )
    assert view.secrets == {"api_key": "set"}
    assert view.settings["base_url"] == "https://api.brevo.com"  # normalised
    assert "api_key" not in view.settings
    assert view.updated_by == "alice"
    async with backend.db.engine.connect() as conn:
        row = (await conn.execute(select(backend.tables.connections))).one()
    # At rest: no plaintext anywhere in the row, only a token.
    assert KEY not in repr(tuple(row))
    assert row.secrets.startswith("v1.")
    assert row.secret_fields == ["api_key"]
    resolved = await store.resolve("brevo", kind="brevo")
    assert isinstance(resolved, BrevoSettings)
    assert isinstance(resolved.api_key, SecretStr)
    assert resolved.api_key.get_secret_value() == KEY
    assert KEY not in repr(resolved)


async def test_token_is_bound_to_its_connection(backend: Backend) -> None:
    store = backend.hub.connections
    await store.create("a", "brevo", {"api_key": KEY})
    await store.create("b", "brevo", {"api_key": "another-key-9876"})
    t = backend.tables.connections
    async with backend.db.engine.begin() as conn:
        token_a = (await conn.execute(select(t.c.secrets).where(t.c.name == "a"))).scalar_one()
        await conn.execute(update(t).where(t.c.name == "b").values(secrets=token_a))
    with pytest.raises(Unavailable) as err:
        await store.resolve("b")
    assert err.value.code == "connection-secrets-unreadable"
    assert KEY not in str(err.value)


async def test_partial_update_keeps_replaces_and_clears_secrets(backend: Backend) -> None:
    store = backend.hub.connections
    await store.create(
        "mail", "smtp", {"host": "smtp.example", "username": "vhs", "password": "s3cret-pw"}
    )
    view = await store.update("mail", {"port": 2525})
    assert view.settings["port"] == 2525
    assert view.secrets == {"password": "set"}
    assert (await store.resolve("mail")).password.get_secret_value() == "s3cret-pw"
    await store.update("mail", {"password": "n3w-password"})
    assert (await store.resolve("mail")).password.get_secret_value() == "n3w-password"
    view = await store.update("mail", {"password": None, "username": None})
    assert view.secrets == {"password": "not set"}
    assert (await store.resolve("mail")).password is None


async def test_invalid_settings_are_located_and_never_echo_values(backend: Backend) -> None:
    store = backend.hub.connections
    with pytest.raises(Invalid) as err:
        await store.create(
            "sc",
            "schulconnex",
            {"base_url": "ftp://x", "client_id": "c", "client_secret": 12345678, "bogus": 1},
        )
    locs = {e["loc"] for e in err.value.extra["errors"]}
    assert locs == {
        "settings.base_url",
        "settings.token_url",
        "settings.client_secret",
        "settings.bogus",
    }
    assert "12345678" not in str(err.value.extra) + err.value.detail
    with pytest.raises(Invalid, match="unknown connection kind 'ldap'"):
        await store.create("x", "ldap", {})
    with pytest.raises(Invalid, match="connection names"):
        await store.create("Bad Name", "brevo", {"api_key": KEY})
    await store.create("ok", "brevo", {"api_key": KEY})
    with pytest.raises(Conflict):
        await store.create("ok", "brevo", {"api_key": KEY})
    with pytest.raises(Invalid, match="expected 'smtp'"):
        await store.resolve("ok", kind="smtp")
    await store.delete("ok")
    with pytest.raises(NotFound):
        await store.get("ok")


async def test_missing_key_and_rotated_key_give_clear_errors(backend: Backend) -> None:
    def no_key() -> SecretBox:
        raise SecretKeyMissing("MESH_SECRET_KEY is not set")

    keyless = ConnectionStore(backend.db, backend.tables, box=no_key)
    with pytest.raises(Unavailable) as err:
        await keyless.create("brevo", "brevo", {"api_key": KEY})
    assert err.value.code == "secret-key-missing"
    old_key = generate_key()
    old = ConnectionStore(backend.db, backend.tables, box=SecretBox([old_key]))
    await old.create("brevo", "brevo", {"api_key": KEY})
    # Rotation: the new key first, the old one still listed → re-encrypt, then drop the old one.
    both = ConnectionStore(backend.db, backend.tables, box=SecretBox([generate_key(), old_key]))
    assert await both.rotate_keys() == 1
    assert (await both.resolve("brevo")).api_key.get_secret_value() == KEY
    with pytest.raises(Unavailable, match="cannot be decrypted"):
        await old.resolve("brevo")


async def test_secrets_never_reach_the_log(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = backend.hub.connections
    await store.create("brevo", "brevo", {"base_url": "http://127.0.0.1:9", "api_key": KEY})
    await store.update("brevo", {"api_key": KEY + "-2"})
    result = await store.test("brevo")  # refused connection: an error message is logged
    assert not result.ok
    assert KEY not in caplog.text
    assert "connection tested" in caplog.text


async def test_brevo_check_against_the_fake(backend: Backend) -> None:
    fake = FakeBrevo([KEY])
    store = backend.hub.connections
    async with serve_fake_brevo(fake) as url:
        await store.create("good", "brevo", {"base_url": url, "api_key": KEY})
        await store.create("bad", "brevo", {"base_url": url, "api_key": "xkeysib-wrong"})
        good = await store.test("good")
        bad = await store.test("bad")
    assert good.ok, good.message
    assert fake.account_email in good.message
    assert good.latency_ms > 0
    assert not bad.ok
    assert "unauthorized" in bad.message and "Key not found" in bad.message
    stored = await store.get("bad")
    assert stored.last_test is not None and stored.last_test.ok is False


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def test_smtp_check_against_aiosmtpd(backend: Backend) -> None:
    port = free_port()
    controller = Controller(_Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        store = backend.hub.connections
        await store.create("smtp", "smtp", {"host": "127.0.0.1", "port": port, "security": "none"})
        ok = await store.test("smtp")
    finally:
        controller.stop()
    assert ok.ok, ok.message
    assert f"127.0.0.1:{port}" in ok.message
    closed = free_port()
    await store.create("dead", "smtp", {"host": "127.0.0.1", "port": closed, "security": "none"})
    dead = await store.test("dead")
    assert not dead.ok and dead.message


async def test_imap_check_reports_an_unreachable_server(backend: Backend) -> None:
    store = backend.hub.connections
    await store.create(
        "inbox",
        "imap",
        {"host": "127.0.0.1", "port": free_port(), "tls": False, "username": "u", "password": "p"},
    )
    result = await store.test("inbox")
    assert not result.ok and result.message


async def test_schulconnex_check_gets_a_token(backend: Backend) -> None:
    seen: list[tuple[str | None, str]] = []

    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        seen.append((request.headers.get("authorization"), str(form.get("grant_type"))))
        if (
            request.headers.get("authorization")
            != "Basic " + b64encode(b"edumesh:c-secret").decode()
        ):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse({"access_token": "t", "token_type": "Bearer", "expires_in": 300})

    app = Starlette(routes=[Route("/token", token, methods=["POST"])])
    store = backend.hub.connections
    async with serve_asgi(app) as url:
        settings = {"base_url": url, "token_url": f"{url}/token", "client_id": "edumesh"}
        await store.create("sc", "schulconnex", {**settings, "client_secret": "c-secret"})
        await store.create("sc-bad", "schulconnex", {**settings, "client_secret": "wrong"})
        ok = await store.test("sc")
        bad = await store.test("sc-bad")
    assert ok.ok and "expires in 300" in ok.message
    assert not bad.ok and "HTTP 401" in bad.message
    assert {g for _, g in seen} == {"client_credentials"}
    assert isinstance(await store.resolve("sc"), SchulconnexSettings)


async def test_rest_api_roles_and_secret_masking(api: httpx.AsyncClient) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    body = {"name": "brevo", "kind": "brevo", "settings": {"api_key": KEY, "base_url": closed}}
    denied = await api.post("/connections", json=body, headers=auth("staff"))
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("application/problem+json")
    assert (await api.get("/connections")).status_code == 401
    created = await api.post("/connections", json=body, headers=auth("admin", subject="ops"))
    assert created.status_code == 201, created.text
    assert KEY not in created.text
    assert created.json()["secrets"] == {"api_key": "set"}
    assert created.json()["updated_by"] == "ops"
    listed = await api.get("/connections", headers=auth("staff"))
    assert [c["name"] for c in listed.json()] == ["brevo"]
    assert KEY not in listed.text
    patched = await api.patch(
        "/connections/brevo",
        json={"description": "Newsletter", "settings": {"rate_limit_per_second": 20}},
        headers=auth("admin"),
    )
    assert patched.status_code == 200
    assert patched.json()["settings"]["rate_limit_per_second"] == 20
    assert patched.json()["secrets"] == {"api_key": "set"}
    bad = await api.post(
        "/connections",
        json={"name": "x", "kind": "brevo", "settings": {"base_url": "nope"}},
        headers=auth("admin"),
    )
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid-connection-settings"
    assert {e["loc"] for e in bad.json()["errors"]} == {"settings.base_url", "settings.api_key"}
    kinds = (await api.get("/connections/kinds", headers=auth("staff"))).json()
    brevo = next(k for k in kinds if k["kind"] == "brevo")
    assert brevo["secret_fields"] == ["api_key"] and brevo["testable"] is True
    assert (await api.post("/connections/brevo/test", headers=auth("staff"))).status_code == 403
    tested = await api.post("/connections/brevo/test", headers=auth("admin"))
    assert tested.status_code == 200 and tested.json()["ok"] is False  # nothing listens there
    assert (await api.delete("/connections/brevo", headers=auth("admin"))).status_code == 204
    gone = await api.get("/connections/brevo", headers=auth("staff"))
    assert gone.status_code == 404 and gone.json()["code"] == "connection-not-found"
