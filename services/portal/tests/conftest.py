"""The portal test rig: the real service app (SQLite, or PostgreSQL where a test asks) with a
real clamd (the project's config and EICAR signature), a real SMTP server, and helpers that act
like a customer's browser (forms with CSRF tokens, cookies) and like staff (mesh JWT)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from mesh_common.app import ServiceRuntime
from mesh_common.auth import mint_token
from mesh_common.tasks.wiring import EXTRAS_KEY as TASKS_KEY
from mesh_common.testing.clamd import ClamdServer, clamd_server  # noqa: F401 - fixture
from mesh_common.testing.smtp import CapturedMail, SmtpCapture
from portal_service.app import create_app
from portal_service.core import Portal, portal_of
from portal_service.settings import Settings
from pydantic import SecretStr

SECRET = "portal-test-secret-0123456789abcdefghij"
STAFF = {"Authorization": "Bearer " + mint_token(subject="ops", secret=SECRET, roles=["staff"])}
ADMIN = {"Authorization": "Bearer " + mint_token(subject="ada", secret=SECRET, roles=["admin"])}
SERVICE = {
    "Authorization": "Bearer " + mint_token(subject="ptworkflow", secret=SECRET, roles=["service"])
}
PASSWORD = "Blue-Ocean-42!"
# Cheap Argon2 for tests (the hashing itself is argon2-cffi's; only the cost differs).
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost_kib": 8192, "parallelism": 1}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LINK = re.compile(r"(https?://\S+/activate\?token=[A-Za-z0-9_-]+)")


class Clock:
    """Real time plus an offset the test moves forward (token expiry, reminders, purges)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Rig:
    app: FastAPI
    client: httpx.AsyncClient
    smtp: SmtpCapture
    clock: Clock
    settings: Settings
    tmp: Path
    browsers: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def runtime(self) -> ServiceRuntime:
        runtime: ServiceRuntime = self.app.state.runtime
        return runtime

    @property
    def portal(self) -> Portal:
        return portal_of(self.runtime)

    def browser(self) -> httpx.AsyncClient:
        """Another customer's browser (own cookie jar) on the same app."""
        browser = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://portal.test"
        )
        self.browsers.append(browser)
        return browser

    async def register(self, project_no: str, client: dict[str, Any], **job: Any) -> Any:
        body = {"project_no": project_no, "client": client, **job}
        r = await self.client.post("/jobs", json=body, headers=SERVICE)
        assert r.status_code == 201, r.text
        return r.json()

    async def mails_to(self, address: str, count: int = 1) -> list[EmailMessage]:
        for _ in range(500):
            found = self.smtp.to(address)
            if len(found) >= count:
                return [m.message for m in found]
            await _sleep(0.02)
        raise AssertionError(
            f"expected {count} mail(s) to {address}, got {[m.rcpt_tos for m in self.smtp.messages]}"
        )

    async def run_task(self, name: str, **params: Any) -> dict[str, Any]:
        runner = self.runtime.extras[TASKS_KEY]
        execution_id = await runner.run_now(name, params=params)
        return dict(await runner.wait(execution_id, within=30))

    async def items(self, execution_id: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/tasks/executions/{execution_id}/items", headers=STAFF)
        assert r.status_code == 200, r.text
        return list(r.json())


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def activation_link(message: EmailMessage) -> str:
    match = _LINK.search(text_of(message))
    assert match, text_of(message)
    return match.group(1)


def path_of(link: str) -> str:
    """The part of an absolute portal link the app sees (PORTAL_PUBLIC_URL ends in /public)."""
    return "/public" + link.split("/public", 1)[1]


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, html[:500]
    return match.group(1)


async def set_password(
    browser: httpx.AsyncClient, link: str, password: str = PASSWORD, confirm: str | None = None
) -> httpx.Response:
    page = await browser.get(path_of(link))
    token = link.split("token=", 1)[1]
    # The hidden field of the form equals the CSRF cookie (double submit); an invalid link's
    # page has no form, so take the cookie.
    csrf = csrf_of(page.text) if page.status_code == 200 else browser.cookies["portal_csrf"]
    return await browser.post(
        "/public/activate",
        data={
            "csrf": csrf,
            "token": token,
            "password": password,
            "password_confirm": password if confirm is None else confirm,
        },
    )


async def login(
    browser: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> httpx.Response:
    page = await browser.get("/public/login")
    return await browser.post(
        "/public/login",
        data={"csrf": csrf_of(page.text), "username": username, "password": password},
    )


def multipart(
    files: list[tuple[str, bytes]], *, csrf: str | None = None, field: str = "files"
) -> tuple[bytes, str]:
    """A multipart/form-data body built by hand (names are sent exactly as given, including
    ``../`` and absolute paths, which httpx would not always keep)."""
    boundary = "----portaltest7MA4YWxkTrZu0gW"
    out = bytearray()
    if csrf is not None:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n'.encode()
        out += csrf.encode() + b"\r\n"
    for name, data in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def make_settings(tmp: Path, smtp: SmtpCapture, clamd: ClamdServer | None, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "var_dir": tmp,
        "mesh_jwt_secret": SecretStr(SECRET),
        "smtp_host": smtp.host,
        "smtp_port": smtp.port,
        "mail_poll_seconds": 0.2,
        "mail_backoff_seconds": 0.2,
        "portal_public_url": "https://portal.example/api/portal/public",
        "portal_pull_interval_seconds": 3600,
        "portal_reminder_interval_seconds": 3600,
        "portal_maintenance_interval_seconds": 3600,
        "portal_internal_mail_to": ["intake@agentur.example"],
        "portal_upload_max_bytes": 4 * 1024 * 1024,
    }
    if clamd is not None:
        values.update(clamd_host=clamd.host, clamd_port=clamd.port)
    values.update(kw)
    return Settings(**values)


RigFactory = Callable[..., Any]


@pytest.fixture
async def rig_factory(
    tmp_path: Path, smtp_server: SmtpCapture
) -> AsyncIterator[Callable[..., Any]]:
    """``await make(clamd=..., **settings)`` -> a started :class:`Rig` (stopped afterwards)."""
    managers: list[Any] = []
    clients: list[httpx.AsyncClient] = []
    rigs: list[Rig] = []

    async def make(
        clamd: ClamdServer | None,
        *,
        clock: Clock | None = None,
        passwords: dict[str, int] | None = None,
        **kw: Any,
    ) -> Rig:
        clock = clock or Clock()
        settings = make_settings(tmp_path, smtp_server, clamd, **kw)
        app = create_app(settings, clock=clock, passwords=passwords or CHEAP_ARGON2)
        manager = LifespanManager(app, startup_timeout=60, shutdown_timeout=60)
        await manager.__aenter__()
        managers.append(manager)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://portal.test"
        )
        clients.append(client)
        rig = Rig(app, client, smtp_server, clock, settings, tmp_path)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for browser in rig.browsers:
            await browser.aclose()
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def rig(rig_factory: Any, clamd_server: ClamdServer) -> Rig:  # noqa: F811
    rig: Rig = await rig_factory(clamd_server)
    return rig


@pytest.fixture(params=["sqlite", "postgres"])
async def any_rig(
    request: pytest.FixtureRequest,
    rig_factory: Any,
    clamd_server: ClamdServer,  # noqa: F811
) -> Rig:
    """The rig on SQLite and on PostgreSQL (a fresh schema in the session's test database)."""
    if request.param == "sqlite":
        rig: Rig = await rig_factory(clamd_server)
        return rig
    pg_url = request.getfixturevalue("pg_url")
    schema = "portal_" + secrets.token_hex(4)
    rig = await rig_factory(clamd_server, database_url=pg_url, db_schema=schema)
    return rig


def client_data(no: str = "K-100", **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "client_no": no,
        "name": f"Kunde {no}",
        "email": f"{no.lower()}@kunde.example",
    }
    data.update(kw)
    return data


async def activated_customer(
    rig: Rig,
    project_no: str = "P-1",
    client_no: str = "K-100",
    *,
    recipient: str | None = None,
    **client_kw: Any,
) -> tuple[httpx.AsyncClient, dict[str, Any], str]:
    """A registered job whose automatically created account was activated; returns the signed-in
    browser, the registration and the user name."""
    registered = await rig.register(project_no, client_data(client_no, **client_kw))
    address = recipient or client_kw.get("email", f"{client_no.lower()}@kunde.example")
    (mail,) = await rig.mails_to(address)
    browser = rig.browser()
    r = await set_password(browser, activation_link(mail))
    assert r.status_code == 303, r.text
    username = re.search(r"Benutzername: (\S+)", text_of(mail))
    assert username
    return browser, registered, username.group(1)


async def job_page_csrf(browser: httpx.AsyncClient, job_id: str) -> str:
    page = await browser.get(f"/public/jobs/{job_id}")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


async def upload(
    browser: httpx.AsyncClient,
    job_id: str,
    files: list[tuple[str, bytes]],
    *,
    folder: str = "incoming",
    csrf: str | None = None,
    header: bool = True,
) -> httpx.Response:
    token = csrf or await job_page_csrf(browser, job_id)
    body, ctype = multipart(files, csrf=None if header else token)
    headers = {"content-type": ctype, "accept": "application/json"}
    if header:
        headers["x-csrf-token"] = token
    return await browser.post(
        f"/public/jobs/{job_id}/folders/{folder}/files", content=body, headers=headers
    )


__all__ = ["CapturedMail"]
