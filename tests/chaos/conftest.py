"""The chaos suite's world: the production topology under faults (``make chaos``).

booking and course-export run as their own processes (``mesh_embedded.topology.Supervisor``,
the container command) behind the gateway, on

- a **test-owned RabbitMQ node** (``RabbitNode``, port 5697) that the tests kill with -9;
- **PostgreSQL** reached through two TCP proxies (one for the services' own database, one for
  the coursedb) that the tests cut and take down;
- a **real SMTP server** (aiosmtpd, ``SmtpCapture``) that the tests stop and start.

Around them: the website backend (orders over RPC, course events through an inbox into
PostgreSQL) and the centre's staff (course edits in the coursedb). Every stream is counted into
``artifacts/chaos-report.json`` and printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from coursedb.engine import create_engine as create_coursedb_engine
from mesh_common.auth import mint_token
from mesh_common.secrets import generate_key
from mesh_common.testing import rabbit_node
from mesh_common.testing.servers import in_ci
from mesh_common.testing.smtp import SmtpCapture
from mesh_embedded.registry import SERVICES
from mesh_embedded.topology import Supervisor, Topology, prepare_databases
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .support import (
    REPORT_PATH,
    CatalogueSite,
    ChaosReport,
    PgLink,
    Website,
    exported_courses,
    limit_seats,
    make_bookable,
)

RABBIT_PORT = 5697
LIMITED_SEATS = 6
# Short timings so faults resolve within seconds (production defaults: docs/booking.md, mail.md).
MAIL_MAX_ATTEMPTS = 4
SERVICE_ENV = {
    "CHANGE_POLL_SECONDS": "2",
    "BACKLOG_POLL_SECONDS": "0.5",
    "BACKLOG_BACKOFF_BASE_SECONDS": "0.2",
    "BACKLOG_BACKOFF_MAX_SECONDS": "1",
    "COURSEDB_TIMEOUT_SECONDS": "3",
    "COURSEDB_CONNECT_TIMEOUT_SECONDS": "1",
    "MAIL_POLL_SECONDS": "0.3",
    "MAIL_BACKOFF_SECONDS": "0.4",
    "MAIL_BACKOFF_MAX_SECONDS": "1",
    "MAIL_MAX_ATTEMPTS": str(MAIL_MAX_ATTEMPTS),
    "MAIL_CLAIM_SECONDS": "8",
    # booking's deferred notifications: a claim whose outcome could not be recorded (its own
    # database was down) is taken up again after this lease (default 120 s).
    "NOTIFY_LEASE_SECONDS": "6",
    "SHUTDOWN_GRACE_SECONDS": "5",
}

_report = ChaosReport()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _report.streams:
        terminalreporter.section("chaos report (artifacts/chaos-report.json)")
        terminalreporter.write_line(_report.table())


@pytest.fixture(scope="session")
def chaos_report() -> ChaosReport:
    return _report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rabbit() -> Iterator[rabbit_node.RabbitNode]:
    if not rabbit_node.available():
        message = "rabbitmq-server is not installed; `make test` installs it"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    # Booted by ``mesh`` while it prepares the databases (a cold boot takes seconds).
    node = rabbit_node.RabbitNode(name="meshchaos", port=RABBIT_PORT, dist_port=20000 + RABBIT_PORT)
    try:
        yield node
    finally:
        node.cleanup()


@dataclass
class ChaosMesh:
    sup: Supervisor
    rabbit: rabbit_node.RabbitNode
    service_link: PgLink  # services ↔ their own database
    coursedb_link: PgLink  # services ↔ the coursedb
    smtp: SmtpCapture
    site: CatalogueSite
    website: Website
    servicedb: AsyncEngine  # direct (not through the proxies): the test's view
    coursedb: AsyncEngine
    courses: list[tuple[int, str]]  # (id, number) of exported courses the staff edit
    bookable: list[str]  # plenty of seats
    limited: str  # LIMITED_SEATS seats and a waiting list

    @property
    def gateway_url(self) -> str:
        return self.sup.topo.gateway_url

    def staff(self) -> dict[str, str]:
        token = mint_token(subject="chaos-desk", secret=self.sup.topo.jwt_secret, roles=["staff"])
        return {"Authorization": f"Bearer {token}"}

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.gateway_url, headers=self.staff(), timeout=10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(pg_url: str, rabbit: rabbit_node.RabbitNode) -> AsyncIterator[ChaosMesh]:
    # Own databases (created by prepare_databases, dropped afterwards), so no other test's
    # leftovers in the services' schemas meet this run and none of this run's meet theirs.
    base = pg_url.rsplit("/", 1)[0]
    suffix = uuid.uuid4().hex[:8]
    service_name, coursedb_name = f"edumesh_chaos_{suffix}", f"edumesh_chaos_cdb_{suffix}"
    service_url, coursedb_url = f"{base}/{service_name}", f"{base}/{coursedb_name}"
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(_drop_database, base, coursedb_name)
        stack.push_async_callback(_drop_database, base, service_name)
        service_link, coursedb_link = PgLink(), PgLink()
        for link in (service_link, coursedb_link):
            await link.up()
            stack.push_async_callback(link.close)
        smtp = SmtpCapture().start()
        stack.callback(smtp.stop)
        topo = Topology(
            pg_url=service_link.url(service_url),
            coursedb_url=coursedb_link.url(coursedb_url),
            amqp_url=rabbit.amqp_url,
            gateway_port=_free_port(),
            port_offset=_free_port() % 20000 + 20000 - 8100,
            secret_key=generate_key(),
            smtp_port=smtp.port,
            services=[s for s in SERVICES if s.name in ("booking", "course-export")],
            extra_env=dict(SERVICE_ENV),
        )
        booting = asyncio.create_task(asyncio.to_thread(rabbit.start))
        try:
            await prepare_databases(topo, seed_courses=60)
        finally:
            await booting
        servicedb = create_async_engine(service_url, pool_size=5)
        stack.push_async_callback(servicedb.dispose)
        coursedb = create_coursedb_engine(coursedb_url)
        stack.push_async_callback(coursedb.dispose)
        # The website's consumer declares its queue before course-export publishes anything.
        site = CatalogueSite(rabbit.amqp_url, service_url)
        await site.start()
        stack.push_async_callback(site.stop)
        website = Website(rabbit.amqp_url)
        await website.start()
        stack.push_async_callback(website.stop)
        # The processes' logs stay next to the report for the post-mortem of a failed run.
        log_dir = REPORT_PATH.parent / "chaos-logs"
        shutil.rmtree(log_dir, ignore_errors=True)
        sup = Supervisor(topo, log_dir=log_dir, grace=15)
        stack.push_async_callback(sup.stop)
        await sup.start(seed_courses=60)
        bookable = await make_bookable(coursedb)
        limited = bookable.pop()
        await limit_seats(coursedb, limited, LIMITED_SEATS)
        courses = await exported_courses(coursedb, 12)
        assert bookable and len(courses) >= 6, "the seeded coursedb has nothing to export or book"
        yield ChaosMesh(
            sup=sup,
            rabbit=rabbit,
            service_link=service_link,
            coursedb_link=coursedb_link,
            smtp=smtp,
            site=site,
            website=website,
            servicedb=servicedb,
            coursedb=coursedb,
            courses=courses,
            bookable=bookable,
            limited=limited,
        )


async def _drop_database(base: str, name: str) -> None:
    admin = await asyncpg.connect(base.replace("+asyncpg", "") + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
