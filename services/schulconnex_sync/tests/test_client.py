"""The Schulconnex client against the fake server over real HTTP: the operations, revisions and
error bodies, OAuth2 (both grants, renewal before and after expiry), bounded retries with
backoff and Retry-After, AmbiguousWrite for POSTs, bounded concurrency, and no secret anywhere.
The fake validates every request the client sends (the ``fake`` fixture fails on a violation)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from schulconnex_sync_service.client import ClientConfig, SchulconnexClient
from schulconnex_sync_service.errors import (
    AmbiguousWrite,
    AuthError,
    BadRequest,
    NotFoundError,
    StaleRevision,
    Unavailable,
)

from .support import Fake

PERSON = {
    "referrer": "participant:1",
    "name": {"familienname": "Muster", "vorname": "Max"},
    "vertrauensstufe": "Unbe",
    "auskunftssperre": "Nein",
}


def config(fake: Fake, **kw: Any) -> ClientConfig:
    base: dict[str, Any] = {
        "base_url": fake.server.base_url,
        "token_url": fake.server.token_url,
        "client_id": fake.creds["client_id"],
        "client_secret": SecretStr(fake.creds["client_secret"]),
        "timeout_seconds": 5.0,
        "max_retries": 4,
        "backoff_base_seconds": 0.01,
    }
    base.update(kw)
    return ClientConfig(**base)


class Sleeps:
    """Records the client's waits (and waits for real only a little)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(min(seconds, 0.01))


@pytest.fixture
async def client(fake: Fake) -> AsyncIterator[SchulconnexClient]:
    async with SchulconnexClient(config(fake)) as c:
        yield c


async def test_operations_revisions_and_errors(fake: Fake, client: SchulconnexClient) -> None:
    p = await client.create_person(PERSON)
    assert p["revision"] == "1" and p["referrer"] == "participant:1"
    k = await client.create_personenkontext(
        p["id"], {"rolle": "Lern", "referrer": "participant:1/Lern"}
    )
    assert (await client.list_personenkontexte_of(p["id"], rolle="Lern"))[0]["id"] == k["id"]
    assert (await client.get_personenkontext(k["id"]))["person"]["id"] == p["id"]
    full = (await client.get_person(p["id"]))["person"]
    updated = await client.update_person(
        p["id"], {**full, "name": {**full["name"], "vorname": "Moritz"}}
    )
    assert updated["revision"] == "2"
    with pytest.raises(StaleRevision) as stale:
        await client.update_person(p["id"], full)  # revision 1 is stale now
    e = stale.value
    assert (e.status, e.code, e.subcode) == (409, "409", "00")
    assert e.titel == "Konflikt mit dem aktuellen Zustand der Ressource." and e.beschreibung
    assert e.short().startswith("HTTP 409/00 Konflikt")
    with pytest.raises(ValueError, match="revision"):
        await client.update_person(p["id"], {k2: v for k2, v in full.items() if k2 != "revision"})
    with pytest.raises(NotFoundError) as missing:
        await client.get_person("no-such-id")
    assert missing.value.subcode == "01"
    with pytest.raises(BadRequest) as bad:  # the server's rule: a person with kontexte stays
        await client.delete_person(p["id"], "2")
    assert bad.value.subcode == "12"
    kontext = (await client.get_personenkontext(k["id"]))["personenkontexte"][0]
    await client.update_personenkontext(
        k["id"], {**kontext, "erreichbarkeiten": [{"typ": "E-Mail", "kennung": "m@example.org"}]}
    )
    await client.delete_personenkontext(k["id"], "2")
    await client.delete_person(p["id"], "2")
    assert fake.fake.persons == {}

    g = await client.create_gruppe(
        {"bezeichnung": "Englisch 6b", "typ": "Kurs", "faecher": [{"kennung": "EN"}]}
    )
    p2 = await client.create_person(PERSON)
    k2 = await client.create_personenkontext(p2["id"], {"rolle": "Lern"})
    z = await client.create_gruppenzugehoerigkeit(
        g["id"], {"ktid": k2["id"], "rollen": ["Lern"], "referrer": "registration:1"}
    )
    z = await client.update_gruppenzugehoerigkeit(z["id"], {**z, "rollen": ["Lern", "GMit"]})
    assert (await client.get_gruppenzugehoerigkeit(z["id"]))["gruppenzugehoerigkeiten"][0][
        "rollen"
    ] == ["Lern", "GMit"]
    assert len(await client.list_gruppenzugehoerigkeiten_of(g["id"], rollen=["Lern", "GMit"])) == 1
    assert await client.list_gruppen(faecher=["EN", "DE"]) == []  # comma-separated: all of
    assert len(await client.list_gruppen(faecher=["EN"], referrer=None)) == 1
    assert len(await client.list_gruppenzugehoerigkeiten(referrer="registration")) == 1
    gruppe = (await client.get_gruppe(g["id"]))["gruppe"]
    await client.update_gruppe(g["id"], {**gruppe, "bezeichnung": "Englisch 7b"})
    await client.delete_gruppenzugehoerigkeit(z["id"], z["revision"])
    await client.delete_gruppe(g["id"], "2")
    assert fake.fake.gruppen == {}
    assert len(await client.list_personen(familienname="muster", sichtfreigabe="nein")) == 1
    assert len(await client.list_personenkontexte(rolle="Lern")) == 1


async def test_429_retry_after_is_honoured_and_holds_back_other_requests(fake: Fake) -> None:
    sleeps = Sleeps()
    fake.fake.add_fault(status=429, count=1, retry_after="2", path_prefix="/v1/personen")
    async with SchulconnexClient(config(fake), sleep=sleeps) as c:
        assert await c.list_personen() == []
        assert c.stats.retries == 1
    assert sleeps.delays and sleeps.delays[0] == pytest.approx(2.0, abs=0.05)
    assert fake.fake.counts["fault:429"] == 1


async def test_503_burst_backs_off_exponentially_and_gives_up_bounded(fake: Fake) -> None:
    sleeps = Sleeps()
    fake.fake.add_fault(status=503, count=3, method="GET")
    cfg = config(fake, backoff_base_seconds=0.5, backoff_max_seconds=1.5, max_retries=4)
    async with SchulconnexClient(cfg, sleep=sleeps, jitter=lambda: 1.0) as c:
        assert await c.list_gruppen() == []
        assert sleeps.delays == [0.5, 1.0, 1.5]  # doubled, capped
        fake.fake.add_fault(status=503, count=None, method="GET")
        with pytest.raises(Unavailable) as gave_up:
            await c.list_gruppen()
    assert gave_up.value.status == 503 and gave_up.value.retryable
    assert fake.fake.counts["fault:503"] == 3 + 5  # 1 + max_retries attempts, then no more


async def test_a_post_is_not_repeated_when_its_outcome_is_unknown(fake: Fake) -> None:
    sleeps = Sleeps()
    fault = fake.fake.add_fault(status=500, count=1, method="POST", path_prefix="/v1/personen")
    async with SchulconnexClient(config(fake), sleep=sleeps) as c:
        with pytest.raises(AmbiguousWrite):
            await c.create_person(PERSON)
        assert fault.hits == 1 and sleeps.delays == []
        fake.fake.add_fault(status=503, count=2, method="POST", path_prefix="/v1/personen")
        assert (await c.create_person(PERSON))["revision"] == "1"  # 503: not processed, retried
    assert len(fake.fake.persons) == 1


async def test_timeouts_are_retried_for_reads_and_ambiguous_for_writes(fake: Fake) -> None:
    fake.fake.add_fault(delay=1.0, count=1, method="GET", path_prefix="/v1/gruppen")
    async with SchulconnexClient(config(fake, timeout_seconds=0.3), sleep=Sleeps()) as c:
        assert await c.list_gruppen() == []
        assert c.stats.retries == 1
        fake.fake.add_fault(delay=1.0, count=1, method="POST", path_prefix="/v1/gruppen")
        with pytest.raises(AmbiguousWrite):
            await c.create_gruppe({"bezeichnung": "X", "typ": "Kurs"})


async def test_an_unreachable_server_is_unavailable_after_bounded_retries(fake: Fake) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    sleeps = Sleeps()
    cfg = config(fake, base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    async with SchulconnexClient(cfg, sleep=sleeps) as c:
        with pytest.raises(Unavailable):
            await c.list_personen()
    assert len(sleeps.delays) == 2


async def test_concurrency_is_bounded(fake: Fake) -> None:
    inner = fake.fake.app
    state = {"now": 0, "max": 0}

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            try:
                await inner(scope, receive, send)
            finally:
                state["now"] -= 1
        else:
            await inner(scope, receive, send)

    fake.server._server.config.app = counting  # type: ignore[union-attr]
    fake.server._server.config.loaded_app = counting  # type: ignore[union-attr]
    fake.fake.add_fault(delay=0.05, count=None, method="GET")
    async with SchulconnexClient(config(fake, max_concurrency=3)) as c:
        await asyncio.gather(*(c.list_gruppen() for _ in range(15)))
    assert state["max"] == 3


async def test_token_renewed_before_expiry_and_after_a_401(fake: Fake) -> None:
    fake.fake.token_ttl = 31  # with 30 s leeway: due for renewal after one second
    async with SchulconnexClient(config(fake)) as c:
        await c.list_personen()
        fake.fake.token_ttl = 300  # the next token lives long
        await asyncio.sleep(1.2)
        await c.list_personen()
        assert c.stats.token_fetches == 2 and fake.fake.counts["status:401"] == 0
        await c.list_personen()
        fake.fake.expire_tokens()  # the server revokes earlier than announced
        await c.list_personen()
        assert c.stats.token_refreshes_after_401 == 1 and fake.fake.counts["status:401"] == 1
        assert fake.fake.counts["grant:client_credentials"] == 3


async def test_password_grant_uses_the_refresh_token(fake: Fake) -> None:
    fake.fake.token_ttl = 31
    cfg = config(
        fake,
        grant_type="password",
        username=fake.creds["username"],
        password=SecretStr(fake.creds["password"]),
    )
    async with SchulconnexClient(cfg) as c:
        await c.list_personen()
        await asyncio.sleep(1.2)
        await c.list_personen()
    assert fake.fake.counts["grant:password"] == 1 and fake.fake.counts["grant:refresh_token"] == 1
    with pytest.raises(ValueError, match="password grant"):
        config(fake, grant_type="password")


async def test_refused_credentials_are_an_auth_error_without_retries(fake: Fake) -> None:
    sleeps = Sleeps()
    async with SchulconnexClient(config(fake, client_secret=SecretStr("wrong")), sleep=sleeps) as c:
        with pytest.raises(AuthError) as refused:
            await c.list_personen()
    assert "invalid_client" in str(refused.value) and sleeps.delays == []
    # A token the server keeps refusing ends too (bounded renewals, no endless loop).
    fake.fake.token_ttl = -1
    async with SchulconnexClient(config(fake), sleep=sleeps) as c:
        with pytest.raises(AuthError):
            await c.list_personen()
    assert fake.fake.counts["status:401"] == 4


async def test_no_secret_in_repr_errors_or_logs(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = config(
        fake,
        grant_type="password",
        username=fake.creds["username"],
        password=SecretStr(fake.creds["password"]),
    )
    async with SchulconnexClient(cfg) as c:
        await c.create_person(PERSON)
        with pytest.raises(NotFoundError) as missing:
            await c.get_person("x")
        token = c._http.token["access_token"]
        text = " ".join(
            [repr(c), repr(cfg), str(missing.value), str(missing.value.as_dict()), caplog.text]
        )
    for secret in (fake.creds["client_secret"], fake.creds["password"], token):
        assert secret not in text
