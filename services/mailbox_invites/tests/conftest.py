"""Fixtures of the mailbox-invites tests: the real mail servers, the app, API helpers.

``dovecot``: one Dovecot per test session, started from deploy/dovecot/dovecot.conf on free high
ports (``require_dovecot``: skipped locally, a failure under CI when the binary is missing).
``smtp``: the SMTP server in front of it (aiosmtpd → LMTP), per test, so a test may stop it.
``svc``: the service on a fresh SQLite file with the in-memory bus; ``Api`` wraps its client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from mailbox_invites_service.app import create_app
from mailbox_invites_service.responder import AutoAcceptResponder
from mailbox_invites_service.settings import Settings
from mesh_common.app import ServiceRuntime
from mesh_common.auth import mint_token
from mesh_common.testing.dovecot import DovecotServer, MailAccount, SmtpRelay, require_dovecot
from pydantic import SecretStr

SECRET = "m" * 40
BERLIN = dt.timezone(dt.timedelta(hours=1))


def _auth(roles: list[str], subject: str) -> dict[str, str]:
    token = mint_token(subject=subject, secret=SECRET, roles=roles)
    return {"Authorization": f"Bearer {token}"}


ADMIN = _auth(["admin"], "admin-1")
STAFF = _auth(["staff"], "staff-1")
BOOKING = _auth(["service"], "room-booking")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    require_dovecot()
    with DovecotServer() as server:
        yield server


@pytest.fixture
def smtp(dovecot: DovecotServer) -> Iterator[SmtpRelay]:
    with SmtpRelay(dovecot) as relay:
        yield relay


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: ServiceRuntime

    async def call(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] = ADMIN,
        expect: int = 200,
        **kw: Any,
    ) -> Any:
        r = await self.client.request(method, url, headers=headers, **kw)
        assert r.status_code == expect, f"{method} {url}: {r.status_code} {r.text}"
        if r.headers.get("content-type", "").startswith(
            ("application/json", "application/problem")
        ):
            return r.json()
        return r.text

    async def run_processor(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Run the MailboxProcessor now (as staff would) and wait for the execution."""
        started = await self.call(
            "POST",
            "/tasks/mailbox-processor/run",
            headers=STAFF,
            json={"dry_run": dry_run},
            expect=202,
        )
        execution_id = started["execution_id"]
        for _ in range(1200):
            ex = await self.call("GET", f"/tasks/executions/{execution_id}", headers=STAFF)
            if ex["status"] != "running":
                return ex
            await asyncio.sleep(0.05)
        raise AssertionError("MailboxProcessor run did not finish")

    async def items(self, execution_id: str) -> list[dict[str, Any]]:
        return await self.call(
            "GET",
            f"/tasks/executions/{execution_id}/items",
            headers=STAFF,
            params={"limit": 1000},
        )

    async def invitation(self, inv_id: int) -> dict[str, Any]:
        return await self.call("GET", f"/invitations/{inv_id}", headers=STAFF)

    async def log(self, inv_id: int) -> list[dict[str, Any]]:
        return await self.call("GET", f"/invitations/{inv_id}/log", headers=STAFF)

    async def put_event(self, event_id: str, **fields: Any) -> dict[str, Any]:
        body = {
            "room_id": "r-101",
            "title": "Spanisch A1",
            "starts_at": future(days=7, hour=18).isoformat(),
            "ends_at": future(days=7, hour=19, minute=30).isoformat(),
        }
        body.update(fields)
        return await self.call("PUT", f"/events/{event_id}", headers=BOOKING, json=body)

    async def event_invitation(self, event_id: str) -> dict[str, Any]:
        ev = await self.call("GET", f"/events/{event_id}", headers=STAFF)
        assert len(ev["invitations"]) == 1, ev
        return await self.invitation(ev["invitations"][0]["id"])


def future(*, days: int, hour: int, minute: int = 0) -> dt.datetime:
    """A wall-clock time in Berlin ``days`` from now (with its real offset)."""
    from zoneinfo import ZoneInfo

    day = dt.date.today() + dt.timedelta(days=days)
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo("Europe/Berlin"))


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "var_dir": tmp_path,
        "mesh_jwt_secret": SecretStr(SECRET),
        # Runs are started by the tests; the schedule must not race them.
        "processor_interval_seconds": 3600,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Api]:
    app = create_app(make_settings(tmp_path))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://mi"
        ) as client,
    ):
        yield Api(client, app.state.runtime)


@dataclass
class Mailboxes:
    """One technical user and one room mailbox on the test Dovecot, configured in the service."""

    tech: MailAccount
    room: MailAccount
    user_id: int
    mailbox_id: int
    responder: AutoAcceptResponder


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def technical_user_body(
    dovecot: DovecotServer, smtp: SmtpRelay, tech: MailAccount, **overrides: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique("raumbot"),
        "display_name": "Raumbuchung VHS",
        "email": tech.address,
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "starttls",
            "username": tech.address,
            "password": tech.password,
        },
        "imap": {
            "host": "127.0.0.1",
            "port": dovecot.imaps_port,
            "security": "tls",
            "username": tech.address,
            "password": tech.password,
        },
        "tls_ca_pem": dovecot.ca_pem,
        "timeout_seconds": 5,
    }
    body.update(overrides)
    return body


async def configure(
    api: Api,
    dovecot: DovecotServer,
    smtp: SmtpRelay,
    *,
    room_id: str = "r-101",
    include_blocks: bool = False,
) -> Mailboxes:
    tech = dovecot.add_user(f"{unique('tech')}@vhs.example.test")
    room = dovecot.add_user(f"{unique('raum')}@rooms.example.test")
    user = await api.call(
        "POST", "/technical-users", json=technical_user_body(dovecot, smtp, tech), expect=201
    )
    await api.call("PUT", f"/rooms/{room_id}", json={"name": "Raum 101 (Seminarraum)"})
    mailbox = await api.call(
        "POST",
        "/mailboxes",
        json={
            "room_id": room_id,
            "email": room.address,
            "technical_user_id": user["id"],
            "include_blocks": include_blocks,
        },
        expect=201,
    )
    responder = AutoAcceptResponder(
        address=room.address,
        password=room.password,
        imap_port=dovecot.imap_port,
        smtp_port=smtp.port,
    )
    return Mailboxes(tech, room, user["id"], mailbox["id"], responder)
