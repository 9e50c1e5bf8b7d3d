"""Run one service (or the gateway) as its own uvicorn process: the production entrypoint.

Every container and every process of ``make up-local`` starts through :func:`serve`, so the
embedded launcher, the process topology and the images share one code path. Settings come from
the environment here, at process start, and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn

from mesh_common.logging import configure_logging


def uvicorn_config(
    app: Any, *, host: str, port: int, grace: float, behind_gateway: bool = True
) -> uvicorn.Config:
    """Server config for one app. Services trust X-Forwarded-* from the gateway on loopback;
    the gateway itself (``behind_gateway=False``) trusts nobody's and sets them itself."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # our JSON logging, configured once per process
        access_log=False,  # the request-context middleware logs access lines
        timeout_graceful_shutdown=int(grace),
        proxy_headers=behind_gateway,
        forwarded_allow_ips="127.0.0.1" if behind_gateway else None,
    )


def serve(create_app: Callable[[Any], Any], settings: Any) -> None:
    """Build the app from ``settings`` and serve it until SIGTERM/SIGINT (graceful)."""
    configure_logging(settings.log_level, json=settings.log_json)
    app = create_app(settings)
    config = uvicorn_config(
        app, host=settings.host, port=settings.port, grace=settings.shutdown_grace_seconds
    )
    _use_uvloop()
    asyncio.run(uvicorn.Server(config).serve())


def _use_uvloop() -> None:
    """Serve on uvloop, as the uvicorn config names it: ``asyncio.run`` would otherwise start
    the default loop (uvicorn applies ``loop=`` only in its own ``run``). Its cheaper wake-ups
    matter on hot paths made of many short round trips (booking: docs/booking.md)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it where it exists
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


RekeyTargets = Callable[[Any], list[Any]]  # settings -> list[mesh_common.rekey.RekeyTarget]


def main(
    create_app: Callable[[Any], Any],
    settings_factory: Callable[[], Any],
    *,
    rekey_targets: RekeyTargets | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m <service>``: serve (no arguments), or an operator command.

    ``rekey [--dry-run] [--batch-size N]``: step 3 of a ``MESH_SECRET_KEY`` rotation
    (docs/operations.md) for the service's encrypted columns, on its own database (settings from
    the environment, as for serving). Prints one JSON line of counts per column; exit status 2
    when a token opens with none of the listed keys.
    """
    parser = argparse.ArgumentParser(prog="python -m <service>")
    commands = parser.add_subparsers(dest="command")
    rekey = commands.add_parser(
        "rekey", help="re-encrypt stored secrets with the first MESH_SECRET_KEY (key rotation)"
    )
    rekey.add_argument("--dry-run", action="store_true", help="only count what would change")
    rekey.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    args = parser.parse_args(argv)
    settings = settings_factory()
    if args.command is None:
        serve(create_app, settings)
        return 0
    configure_logging(settings.log_level, json=settings.log_json)
    return asyncio.run(_rekey(settings, rekey_targets, dry_run=args.dry_run, batch=args.batch_size))


async def _rekey(
    settings: Any, rekey_targets: RekeyTargets | None, *, dry_run: bool, batch: int
) -> int:
    from mesh_common.db import Database
    from mesh_common.rekey import rekey_all
    from mesh_common.secrets import SecretBox, SecretsError

    targets = rekey_targets(settings) if rekey_targets is not None else []
    if not targets:
        print(json.dumps({"service": settings.service_name, "encrypted_columns": 0}))
        return 0
    db = Database(settings.database_url, schema=settings.db_schema)
    try:
        done = await rekey_all(db, targets, SecretBox.from_env(), batch=batch, dry_run=dry_run)
    except SecretsError as exc:
        print(f"rekey: {exc}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    print(json.dumps({"service": settings.service_name, "dry_run": dry_run, "columns": done}))
    return 0
