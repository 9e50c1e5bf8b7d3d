"""The fake Schulconnex server of ``make run`` (the embedded launcher starts it).

Unless ``SCHULCONNEX_BASE_URL`` is already set (then the sync talks to that server and no fake
is started), a fake server is started on a free port with random client credentials, and the
``SCHULCONNEX_*`` variables are set in this process's environment, where the schulconnex-sync
service reads them when its settings are built. The credentials exist only in memory; they
are never written or printed.
"""

from __future__ import annotations

import os

from schulconnex_sync_service.fake.server import FakeServer, demo_fake


async def start_embedded_fake(host: str = "127.0.0.1") -> FakeServer | None:
    if os.environ.get("SCHULCONNEX_BASE_URL"):
        return None
    fake, creds = demo_fake()
    server = await FakeServer(fake, host=host).start()
    os.environ["SCHULCONNEX_BASE_URL"] = server.base_url
    os.environ["SCHULCONNEX_TOKEN_URL"] = server.token_url
    os.environ["SCHULCONNEX_CLIENT_ID"] = creds["client_id"]
    os.environ["SCHULCONNEX_CLIENT_SECRET"] = creds["client_secret"]
    return server
