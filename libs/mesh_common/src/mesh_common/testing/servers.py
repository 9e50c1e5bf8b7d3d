"""Reachability of the real servers the tests use, with the CI "never skip" rule."""

from __future__ import annotations

import os
import socket

import pytest

PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MARIADB_HOST = os.environ.get("TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("TEST_MARIADB_PORT", "3306"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI) when a required server is not listening."""
    if tcp_open(host, port):
        return
    message = (
        f"{name} is not reachable at {host}:{port}; `make test` starts it "
        f"(scripts/ensure-services.sh)"
    )
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Path of executable ``name``; skip (locally) or fail (CI) when it is not installed.
    `make test` installs the Debian packages the tests use (scripts/ensure-packages.sh)."""
    import shutil

    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed; `make test` installs it (scripts/ensure-packages.sh)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
