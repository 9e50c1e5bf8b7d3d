"""The website backend's RPCs during registration, on the in-memory broker (SQLite coursedb) and
over a real RabbitMQ (PostgreSQL coursedb): the same authorisation as REST, typed remote errors
with stable codes, masked IBANs only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from asgi_lifespan import LifespanManager
from coursedb.banking import mask
from coursedb.engine import create_engine
from mesh_common.app import process_broker
from mesh_common.bus import Bus, BusSettings, create_bus
from mesh_common.bus.errors import (
    RemoteInvalidRequest,
)
from mesh_common.errors import DomainError
from mesh_contracts.base import RpcRequest
from mesh_contracts.profile import (
    BankAccountList,
    CallerAuth,
    GetOrderHistory,
    GetProfile,
    ListBankAccounts,
    OrderHistory,
    Profile,
)
from profile_service.app import create_app
from profile_service.audit import AuditLog

from .conftest import (
    WEBSITE,
    World,
    build_world,
    delegation,
    participant_token,
    service_token,
    settings_for,
)
from .test_bank_accounts import leaks


@asynccontextmanager
async def mesh(
    settings_over: dict[str, Any], backend: str, tmp_path: Path, pg: str | None
) -> AsyncIterator[tuple[Bus, World, AuditLog]]:
    settings = settings_for(backend, tmp_path, pg, **settings_over)
    assert settings.coursedb_url is not None
    engine = create_engine(settings.coursedb_url)
    world = await build_world(engine)
    await engine.dispose()
    amqp = settings_over.get("amqp_url")
    app = create_app(settings)
    website = create_bus(
        BusSettings(service="website", amqp_url=amqp), broker=None if amqp else process_broker()
    )
    async with LifespanManager(app):
        await website.start()
        try:
            yield website, world, app.state.runtime.extras["profile"].audit
        finally:
            await website.stop()


def website_auth(pid: int, **kw: Any) -> CallerAuth:
    return CallerAuth(token=service_token(), delegation=delegation(pid, **kw))


class GetProfileWithoutAuth(RpcRequest):
    """What a client with an outdated contract would send."""

    __message_type__: ClassVar[str] = "profile.get_profile"
    participant_id: int


async def scenario(bus: Bus, w: World, audit: AuditLog) -> None:
    replies: list[str] = []

    # The payment chooser: masked accounts, default first.
    listed = await bus.call(ListBankAccounts(auth=website_auth(w.alice), participant_id=w.alice))
    assert isinstance(listed, BankAccountList)
    replies.append(listed.model_dump_json())
    assert [a.id for a in listed.accounts] == [w.acct_open, w.acct_free, w.acct_history]
    assert listed.accounts[0].is_default
    assert [a.iban_masked for a in listed.accounts] == [
        mask(w.ibans[a.id]) for a in listed.accounts
    ]

    own = await bus.call(GetProfile(auth=CallerAuth(token=participant_token(w.bob))))
    assert isinstance(own, Profile) and own.profile.id == w.bob
    replies.append(own.model_dump_json())

    history = await bus.call(
        GetOrderHistory(auth=website_auth(w.alice, jti="rpc-jti"), limit=2), OrderHistory
    )
    assert history.total == 4 and len(history.orders) == 2
    assert history.orders[0].order_id == w.orders["O1"]
    assert history.orders[0].registrations[0].course.number == w.courses["run"]
    replies.append(history.model_dump_json())
    assert leaks("\n".join(replies), w) == []

    async def refused(request: Any) -> DomainError:
        with pytest.raises(DomainError) as info:
            await bus.call(request, timeout=10)
        return info.value

    no_delegation = await refused(ListBankAccounts(auth=CallerAuth(token=service_token())))
    # A RemoteDomainError keeps the code and status, so the HTTP edge renders the same problem.
    assert (no_delegation.code, no_delegation.status) == ("delegation-required", 403)

    expired = website_auth(w.alice, now=time.time() - 600, ttl_seconds=60)
    assert (await refused(ListBankAccounts(auth=expired))).code == "delegation-expired"

    other_client = website_auth(w.alice, actor="another-client")
    assert (await refused(GetProfile(auth=other_client))).code == "delegation-actor-mismatch"

    # The delegation is for alice; asking about bob (or a made-up id) is refused alike.
    for claimed in (w.bob, 987654321):
        wrong = await refused(ListBankAccounts(auth=website_auth(w.alice), participant_id=claimed))
        assert (wrong.code, wrong.status) == ("participant-mismatch", 403)

    forged = CallerAuth(token=service_token()[:-4] + "AAAA", delegation=delegation(w.alice))
    bad_token = await refused(GetProfile(auth=forged))
    assert (bad_token.code, bad_token.status) == ("token-bad-signature", 401)

    ghost = await refused(GetProfile(auth=CallerAuth(token=participant_token(987654321))))
    assert (ghost.code, ghost.status) == ("participant-not-found", 404)

    with pytest.raises(RemoteInvalidRequest):
        await bus.call(GetProfileWithoutAuth(participant_id=w.alice), timeout=10)

    entries = await audit.entries(participant_id=w.alice, actor=WEBSITE, limit=10, before_id=None)
    assert [(e.action, e.channel, e.via) for e in entries] == [
        ("orders.read", "rpc", "delegation"),
        ("bank_accounts.read", "rpc", "delegation"),
    ]
    assert entries[0].delegation_jti == "rpc-jti"


async def test_rpc_on_memory_broker(tmp_path: Path) -> None:
    async with mesh({}, "sqlite", tmp_path, None) as (bus, world, audit):
        await scenario(bus, world, audit)


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_rpc_over_rabbitmq_on_postgres(tmp_path: Path, pg_url: str, amqp_url: str) -> None:
    async with mesh({"amqp_url": amqp_url}, "postgres", tmp_path, pg_url) as (bus, world, audit):
        await scenario(bus, world, audit)
