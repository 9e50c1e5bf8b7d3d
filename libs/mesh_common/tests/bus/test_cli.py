"""The ``mesh-bus`` DLQ command against real RabbitMQ."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
from mesh_common.bus import DeadLetter, MessageContext
from mesh_common.bus.cli import run
from pydantic import BaseModel


class Charge(BaseModel):
    __message_type__: ClassVar[str] = "billing.charge.v1"
    cents: int


@pytest.mark.parametrize("backend", ["amqp"], indirect=True)
async def test_dlq_list_count_replay(backend, eventually) -> None:
    accept = False
    charged: list[int] = []
    consumer = backend.bus("billing")

    @consumer.command()
    async def charge(msg: Charge, ctx: MessageContext) -> None:
        if not accept:
            raise DeadLetter("card declined")
        charged.append(msg.cents)

    producer = backend.bus("booking")
    await consumer.start()
    await producer.start()
    for cents in (100, 200):
        await producer.send(Charge(cents=cents))
    env = {"AMQP_URL": backend.amqp_url}
    prefix = ["--prefix", backend.prefix]

    async def cli(*argv: str) -> str:
        out = io.StringIO()
        assert await run([*prefix, *argv], env, out) == 0
        return out.getvalue()

    async def two_dead() -> bool:
        return (await cli("dlq", "count", "billing.charge")).strip() == "2"

    await eventually(two_dead)
    lines = [
        orjson.loads(line) for line in (await cli("dlq", "list", "billing.charge")).splitlines()
    ]
    assert sorted(r["payload"]["cents"] for r in lines) == [100, 200]
    assert all(r["error"] == "rejected: DeadLetter: card declined" for r in lines)
    accept = True
    assert (await cli("dlq", "replay", "billing.charge.dlq", "--limit", "1")).startswith(
        "replayed 1 message(s)"
    )
    await eventually(lambda: len(charged) == 1)
    assert "replayed 1" in await cli("dlq", "replay", "billing.charge")
    await eventually(lambda: sorted(charged) == [100, 200])
    assert (await cli("dlq", "count", "billing.charge")).strip() == "0"


def test_console_script_needs_amqp_url() -> None:
    script = Path(sys.executable).with_name("mesh-bus")
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL"}
    done = subprocess.run(
        [str(script), "dlq", "list", "x.y"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "set AMQP_URL" in done.stderr
