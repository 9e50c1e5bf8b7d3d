"""pytest plugin (registered by the repository's root conftest): fixtures for real servers.

- ``pg_url``: a throwaway PostgreSQL database per test session (asyncpg URL), dropped afterwards.
- ``mariadb_url``: the same on MariaDB (asyncmy URL).
- ``amqp_url``: a throwaway RabbitMQ vhost per test session, deleted afterwards.
- ``sqlite_url``: a fresh SQLite file per test.
- ``smtp_server``: a capturing SMTP server (aiosmtpd) on a free port per test
  (:mod:`mesh_common.testing.smtp`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from mesh_common.secrets import generate_key
from mesh_common.testing.servers import (
    AMQP_URL,
    MARIADB_HOST,
    MARIADB_PORT,
    PG_ADMIN_URL,
    in_ci,
    require_server,
)
from mesh_common.testing.smtp import smtp_server  # noqa: F401 - registers the fixture


def pytest_configure(config: pytest.Config) -> None:
    # Code under test encrypts personal data with MESH_SECRET_KEY; tests get a fresh random key
    # per session (never a fixed one in a file), unless the caller set one.
    os.environ.setdefault("MESH_SECRET_KEY", generate_key())


def _run_psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"edumesh_test_{uuid.uuid4().hex[:10]}"
    _run_psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _run_psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    require_server("MariaDB", MARIADB_HOST, MARIADB_PORT)
    name = f"edumesh_test_{uuid.uuid4().hex[:10]}"
    mysql = shutil.which("mariadb") or shutil.which("mysql") or "mysql"
    base = [mysql, "-uroot", "-h", MARIADB_HOST, "-P", str(MARIADB_PORT), "-e"]
    subprocess.run([*base, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"], check=True)
    try:
        yield f"mysql+asyncmy://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}?charset=utf8mb4"
    finally:
        subprocess.run([*base, f"DROP DATABASE IF EXISTS `{name}`"], check=False)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    vhost = f"edumesh-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield AMQP_URL.rstrip("/") + "/" + quote(vhost, safe="")
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite3'}"


# Under CI nothing may be skipped silently: any skip (a missing server, a missing tool, a stray
# ``pytest.skip``) turns the run red, listed by name.
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and _skipped and exitstatus == 0:
        session.exitstatus = 1
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"CI=true: {len(_skipped)} test(s) skipped, which CI forbids:", red=True
            )
            for nodeid in _skipped:
                reporter.write_line(f"  {nodeid}", red=True)
