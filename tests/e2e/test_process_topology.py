"""The production topology without containers (``make up-local``): every service and the gateway
as its own process, started with the container command, on PostgreSQL and RabbitMQ.

Drives real flows through the gateway and AMQP across process boundaries and stops everything
with SIGTERM, checking every process exits cleanly.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from coursedb.access import update_row
from coursedb.engine import create_engine as create_coursedb_engine
from coursedb.schema import courses
from mesh_common.auth import mint_token
from mesh_common.bus import BusSettings, HandlerRegistry, MessageContext, create_bus
from mesh_common.secrets import generate_key
from mesh_contracts.course_export import CourseChanged
from mesh_embedded.mailcapture import MailCapture
from mesh_embedded.registry import SERVICES
from mesh_embedded.topology import Supervisor, Topology
from pydantic import SecretStr
from sqlalchemy import select

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(
    pg_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Supervisor]:
    tmp_path = tmp_path_factory.mktemp("topology")
    coursedb_url = pg_url.rsplit("/", 1)[0] + f"/edumesh_test_cdb_{uuid.uuid4().hex[:8]}"
    gateway_port = _free_port()
    topo = Topology(
        pg_url=pg_url,
        coursedb_url=coursedb_url,
        amqp_url=amqp_url,
        gateway_port=gateway_port,
        port_offset=_free_port() % 20000 + 20000 - 8100,
        secret_key=generate_key(),
        smtp_port=_free_port(),
        extra_env={"CHANGE_POLL_SECONDS": "1"},
    )
    sup = Supervisor(topo, log_dir=tmp_path / "logs", grace=20)
    # The compose file's "mail" container: a capturing SMTP server the services deliver to.
    mail = MailCapture(tmp_path / "mail", port=topo.smtp_port)
    mail.start()
    sup.maildir = tmp_path / "mail"  # type: ignore[attr-defined]
    try:
        await sup.start(seed_courses=60)
        yield sup
    finally:
        codes = await sup.stop()
        mail.stop()
        import asyncpg

        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            await admin.execute(
                f'DROP DATABASE IF EXISTS "{coursedb_url.rsplit("/", 1)[1]}" WITH (FORCE)'
            )
        finally:
            await admin.close()
    # Every process drained and exited by itself on SIGTERM, none had to be killed. (uvicorn
    # re-raises the captured SIGTERM after its graceful shutdown, hence -15 rather than 0.)
    assert len(codes) == len(SERVICES) + 1
    assert all(code in (0, -15) for code in codes.values()), codes
    for name in codes:
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert "Application shutdown complete" in log or name == "gateway", name


async def test_every_service_is_ready_behind_the_gateway_and_stops_cleanly(
    mesh: Supervisor,
) -> None:
    topo = mesh.topo
    token = mint_token(subject="ops", secret=topo.jwt_secret, roles=["admin"])
    async with httpx.AsyncClient(base_url=topo.gateway_url, timeout=10) as client:
        for spec in SERVICES:
            ready = await client.get(f"/api/{spec.name}/health/ready")
            assert ready.status_code == 200, (spec.name, ready.text)
            about = await client.get(
                f"/api/{spec.name}/health/about", headers={"Authorization": f"Bearer {token}"}
            )
            assert about.status_code == 200, (spec.name, about.text)
        spec_doc = (await client.get("/openapi.json")).json()
        assert any(p.startswith("/api/course-export/") for p in spec_doc["paths"])
    # Each process is a separate OS process running the container command.
    pids = {c.proc.pid for c in mesh.children if c.proc}
    assert len(pids) == len(SERVICES) + 1


async def test_a_course_change_in_the_coursedb_reaches_rabbitmq(mesh: Supervisor) -> None:
    topo = mesh.topo
    received: asyncio.Queue[CourseChanged] = asyncio.Queue()
    handlers = HandlerRegistry()

    @handlers.event(CourseChanged)
    async def on_changed(msg: CourseChanged, ctx: MessageContext) -> None:
        await received.put(msg)

    bus = create_bus(BusSettings(service="e2e-website", amqp_url=SecretStr(topo.amqp_url)))
    bus.include(handlers)
    await bus.start()
    engine = create_coursedb_engine(topo.coursedb_url)
    try:
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    select(courses.c.id, courses.c.number)
                    .where(courses.c.publish.is_(True), courses.c.status == "open")
                    .limit(1)
                )
            ).first()
            assert row is not None
            title = f"Neuer Titel {uuid.uuid4().hex[:6]}"
            await update_row(conn, courses, row.id, {"title": title})
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            msg = await asyncio.wait_for(received.get(), max(remaining, 0.1))
            if msg.course.number == row.number and msg.course.title == title:
                break
        # "created" when course-export had not yet sent this course before the change (its
        # first run may still be going on right after start-up); the kinds themselves are
        # course-export's own tests' business.
        assert msg.change in ("updated", "created")
    finally:
        await engine.dispose()
        await bus.stop()


async def test_a_web_order_is_booked_and_confirmed_by_mail(mesh: Supervisor) -> None:
    """Website backend → gateway → booking process → coursedb, and the confirmation mail through
    booking's mail queue and SMTP to the mail server."""
    import mailbox
    from email import message_from_bytes, policy

    from sqlalchemy import text, update

    topo = mesh.topo
    engine = create_coursedb_engine(topo.coursedb_url)
    try:
        async with engine.begin() as conn:
            bookable = (courses.c.status == "open") & courses.c.web_bookable.is_(True)
            number = (
                await conn.execute(select(courses.c.number).where(bookable).limit(1))
            ).scalar_one()
            await conn.execute(
                update(courses)
                .where(courses.c.number == number)
                .values(
                    max_participants=500,
                    registration_mode="direct",
                    registration_deadline=text("now() + interval '30 days'"),
                )
            )
    finally:
        await engine.dispose()
    order_id = f"WEB-{uuid.uuid4().hex[:10]}"
    order = {
        "external_order_id": order_id,
        "participants": [
            {
                "key": "p1",
                "person": {
                    "first_name": "Erika",
                    "last_name": "Mustermann",
                    "birth_date": "1985-04-12",
                    "email": "erika.mustermann@example.org",
                    "address": {
                        "street": "Kaiser-Joseph-Str. 1",
                        "postcode": "79098",
                        "city": "Freiburg",
                    },
                },
            }
        ],
        "items": [{"participant": "p1", "course_number": number}],
        "payment": {"method": "invoice"},
    }
    token = mint_token(subject="website", secret=topo.jwt_secret, roles=["service"])
    async with httpx.AsyncClient(base_url=topo.gateway_url, timeout=30) as client:
        r = await client.post(
            "/api/booking/orders", json=order, headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text
    assert [line["outcome"] for line in r.json()["lines"]] == ["booked"]

    box = mailbox.Maildir(mesh.maildir, create=False)  # type: ignore[attr-defined]
    deadline = asyncio.get_running_loop().time() + 60
    confirmation = None
    while confirmation is None:
        for key in box.keys():
            msg = message_from_bytes(box.get_bytes(key), policy=policy.default)
            if "erika.mustermann@example.org" in str(msg["To"]):
                confirmation = msg
        if confirmation is None:
            assert asyncio.get_running_loop().time() < deadline, "no confirmation mail"
            await asyncio.sleep(0.5)
    attachments = [part.get_filename() for part in confirmation.iter_attachments()]
    assert any(name and name.endswith(".pdf") for name in attachments), attachments
