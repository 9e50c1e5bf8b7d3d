"""``python -m schulconnex_sync_service.fake [--host H] [--port P] [--token-ttl S]``: one fake
Schulconnex server as its own process (benchmarks run it on a separate core this way).

The client credentials come from the environment (``FAKE_SCHULCONNEX_CLIENT_ID``,
``FAKE_SCHULCONNEX_CLIENT_SECRET``, optionally ``FAKE_SCHULCONNEX_USERNAME`` /
``FAKE_SCHULCONNEX_PASSWORD`` for the password grant); they are never printed. The first line
on stdout is ``READY <base url>`` once the server accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from schulconnex_sync_service.fake.app import FakeClient, FakeSchulconnex
from schulconnex_sync_service.fake.server import FakeServer


async def _main(args: argparse.Namespace) -> None:
    env = os.environ
    client_id = env.get("FAKE_SCHULCONNEX_CLIENT_ID")
    secret = env.get("FAKE_SCHULCONNEX_CLIENT_SECRET")
    if not client_id or not secret:
        raise SystemExit("set FAKE_SCHULCONNEX_CLIENT_ID and FAKE_SCHULCONNEX_CLIENT_SECRET")
    users = {}
    if env.get("FAKE_SCHULCONNEX_USERNAME") and env.get("FAKE_SCHULCONNEX_PASSWORD"):
        users[env["FAKE_SCHULCONNEX_USERNAME"]] = env["FAKE_SCHULCONNEX_PASSWORD"]
    fake = FakeSchulconnex(
        clients=[FakeClient(client_id, secret)],
        users=users,
        token_ttl=args.token_ttl,
        validate=not args.no_validate,
        validation=args.validation,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeServer(fake, host=args.host, port=args.port) as server:
        print(f"READY {server.base_url}", flush=True)
        await stop.wait()
    print(f"violations: {len(fake.violations)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m schulconnex_sync_service.fake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-ttl", type=float, default=300.0)
    parser.add_argument("--no-validate", action="store_true", help="skip OpenAPI validation")
    parser.add_argument(
        "--validation",
        choices=["compiled", "full", "both"],
        default="compiled",
        help="openapi-core validators compiled per operation (default), the full per-request "
        "openapi-core path, or both compared",
    )
    args = parser.parse_args()
    try:
        import uvloop  # what the services run on too (mesh_common.runner)
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))


if __name__ == "__main__":
    main()
