"""A spec-faithful fake Schulconnex server for tests, benchmarks and ``make run``.

Never used by the production sync code (the client talks to whatever ``base_url`` says).
"""

from __future__ import annotations

from schulconnex_sync_service.fake.app import ApiError, FakeClient, FakeSchulconnex, Fault
from schulconnex_sync_service.fake.server import FakeServer, demo_fake

__all__ = ["ApiError", "FakeClient", "FakeSchulconnex", "FakeServer", "Fault", "demo_fake"]
