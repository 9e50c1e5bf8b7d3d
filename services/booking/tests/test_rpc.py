"""The website backend's view: ``booking.place_order`` / ``booking.get_order`` over the bus, on
the in-memory broker (embedded default, SQLite) and on RabbitMQ (PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mesh_common.app import process_broker
from mesh_common.bus import BusSettings, RemoteDomainError, RemoteInvalidRequest, create_bus
from mesh_contracts.booking import GetOrder, Order, OrderResult, PlaceOrder, RegistrationMode
from pydantic import BaseModel

from .conftest import (
    add_course,
    add_participant,
    order,
    person,
    prepare_coursedb,
    registrations_of,
    running,
    token,
)


class BrokenPlaceOrder(BaseModel):
    """What a buggy client might send: the right type, the wrong shape."""

    __message_type__: ClassVar[str] = "booking.place_order"
    order: dict[str, Any]


async def scenario(coursedb_url: str, amqp_url: str | None, **settings: Any) -> None:
    async with running(coursedb_url, amqp_url=amqp_url, **settings) as svc:
        course = await add_course(svc.coursedb, "262-40401", seats=2)
        me = await add_participant(svc.coursedb, "Erika", "Mustermann")
        web = create_bus(
            BusSettings(service="website", amqp_url=amqp_url, rpc_timeout=10.0),
            broker=None if amqp_url else process_broker(),
        )
        await web.start()
        try:
            body = Order.model_validate(order(f"W-RPC-{uuid.uuid4().hex[:6]}", ["262-40401"]))
            first = await web.call(PlaceOrder(order=body), OrderResult)
            assert first.status == "accepted" and first.lines[0].outcome == "booked"
            again = await web.call(PlaceOrder(order=body))  # reply model from the contract
            assert again == first
            assert len(await registrations_of(svc.coursedb, course)) == 1

            changed = body.model_copy(update={"mode": RegistrationMode.WAITING_LIST})
            # Specific codes arrive as RemoteDomainError with the code and HTTP status.
            with pytest.raises(RemoteDomainError) as conflict:
                await web.call(PlaceOrder(order=changed), OrderResult)
            assert (conflict.value.code, conflict.value.status) == ("order-conflict", 409)

            got = await web.call(GetOrder(external_order_id=body.external_order_id), OrderResult)
            assert got == first
            with pytest.raises(RemoteDomainError) as missing:
                await web.call(GetOrder(external_order_id="W-NOPE"), OrderResult)
            assert (missing.value.code, missing.value.status) == ("order-not-found", 404)

            with pytest.raises(RemoteInvalidRequest):
                await web.call(BrokenPlaceOrder(order={"items": []}), OrderResult)

            profile = Order.model_validate(
                order(courses=["262-40401"], people=[{"key": "me", "participant_id": me}])
            )
            with pytest.raises(RemoteDomainError) as forbidden:
                await web.call(PlaceOrder(order=profile), OrderResult)
            assert forbidden.value.status == 403
            assert forbidden.value.code == "participant-token-required"
            mine = await web.call(
                PlaceOrder(
                    order=profile,
                    participant_token=token("participant", participant_id=me),
                ),
                OrderResult,
            )
            assert mine.status == "accepted" and mine.participant_ids == {"me": me}

            full = Order.model_validate(
                order(courses=["262-40401"], people=[{"key": "x", "person": person("Xaver")}])
            )
            rejected = await web.call(PlaceOrder(order=full), OrderResult)
            assert rejected.status == "rejected" and rejected.lines[0].reason == "full"
        finally:
            await web.stop(grace=1)


async def test_rpc_on_the_embedded_default(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'coursedb.sqlite3'}"
    await (await prepare_coursedb(url)).dispose()
    await scenario(url, None, var_dir=tmp_path)


@pytest.mark.postgres
@pytest.mark.rabbitmq
async def test_rpc_over_rabbitmq_and_postgres(
    tmp_path: Path, pg_database: Callable[[], str], amqp_url: str
) -> None:
    url = pg_database()
    await (await prepare_coursedb(url)).dispose()
    await scenario(url, amqp_url, database_url=pg_database(), db_schema="booking", var_dir=tmp_path)
