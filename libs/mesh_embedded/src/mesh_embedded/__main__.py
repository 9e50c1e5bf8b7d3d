"""`python -m mesh_embedded` (what `make run` starts): the whole mesh in one process.

Creates ``var/``, seeds the demo course database on first start, starts local mail capture, every
service on its own port and the gateway in front, then prints where to go and a dev token. The dev
signing key is random per start unless ``MESH_JWT_SECRET`` is set; it is never written to disk.
Ctrl-C (or SIGTERM) stops everything gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from coursedb.engine import create_engine as create_coursedb_engine
from coursedb.seed import seed as seed_coursedb
from gateway_service.app import create_app as create_gateway
from gateway_service.settings import GatewaySettings
from mesh_common.auth import AuthSettings, mint_token
from mesh_common.logging import configure_logging
from mesh_common.runner import uvicorn_config
from mesh_common.secrets import ENV_VAR, generate_key
from mesh_common.testing.brevo_fake import FakeBrevo
from pydantic import SecretStr
from schulconnex_sync_service.fake.embedded import start_embedded_fake

from mesh_embedded.mailcapture import MailCapture
from mesh_embedded.registry import GATEWAY_PORT, SERVICES

log = logging.getLogger("mesh.embedded")


class _Server(uvicorn.Server):
    """One of several servers in this loop: the launcher, not each server, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _seed_if_missing(path: Path, courses: int) -> None:
    """Seed the demo course database once. Seeding goes to a temporary file that replaces the
    real one only when complete, so an interrupted first start never leaves a half-seeded
    database behind (it would be kept and never seeded again)."""
    if path.exists():  # noqa: ASYNC240 - startup, before serving
        return
    partial = path.with_name(path.name + ".partial")
    for leftover in path.parent.glob(partial.name + "*"):
        leftover.unlink()
    print(f"Seeding the demo course database ({courses} courses) into {path} ...", flush=True)
    engine = create_coursedb_engine(f"sqlite+aiosqlite:///{partial}")
    try:
        report = await seed_coursedb(engine, courses=courses, seed=1)
        print(f"  {report}", flush=True)
    finally:
        await engine.dispose()
    partial.replace(path)


def _dev_secret_key(var: Path) -> None:
    """Give the embedded default a data-encryption key (``MESH_SECRET_KEY``) if none is set.

    Like Rails' ``tmp/local_secret.txt``: a random key generated on first start into
    ``var/dev-secret.key`` (mode 0600, never committed, never printed), so demo data encrypted at
    rest (IBANs, connection credentials) stays readable across restarts. Production processes
    take the key from the environment only and refuse to start without it (ADR 0007).
    """
    if os.environ.get(ENV_VAR):
        return
    path = var / "dev-secret.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key())
    os.environ[ENV_VAR] = path.read_text().strip()


async def run(args: argparse.Namespace) -> None:
    var: Path = args.var_dir  # resolved and created by main(), before the loop starts
    _dev_secret_key(var)
    secret = os.environ.get("MESH_JWT_SECRET") or secrets.token_urlsafe(48)
    coursedb_path = var / "coursedb.sqlite3"
    coursedb_url = f"sqlite+aiosqlite:///{coursedb_path}"
    await _seed_if_missing(coursedb_path, args.courses)

    mail = MailCapture(var / "mail", port=args.smtp_port)
    mail.start()
    # A spec-validating fake Schulconnex server for schulconnex-sync (unless SCHULCONNEX_BASE_URL
    # names a real one); it sets SCHULCONNEX_* in the environment the service's settings read.
    schulconnex = await start_embedded_fake(args.host)
    servers: list[_Server] = []
    # A fake Brevo API (in memory) for the profile service's contact sync demo. Its key is
    # derived from the dev data key, so a stored connection keeps working across restarts.
    fake_key = hmac.new(os.environ[ENV_VAR].encode(), b"fake-brevo", "sha256").hexdigest()
    brevo = FakeBrevo([f"xkeysib-{fake_key}"])
    brevo_cfg = uvicorn_config(brevo.app, host=args.host, port=args.brevo_port, grace=1)
    servers.append(_Server(brevo_cfg))
    upstreams: dict[str, str] = {}
    for spec in SERVICES:
        settings = spec.settings_class()(
            environment="embedded",
            var_dir=var,
            port=spec.port + args.port_offset,
            coursedb_url=coursedb_url,
            mesh_jwt_secret=SecretStr(secret),
            amqp_url=None,
            log_json=False,
            # Services that send mail (settings with MailSettings) deliver to the local capture;
            # the others ignore these.
            smtp_host=mail.controller.hostname,
            smtp_port=mail.controller.port,
            smtp_security="none",
        )
        app = spec.create_app()(settings)
        port = spec.port + args.port_offset
        servers.append(_Server(uvicorn_config(app, host=args.host, port=port, grace=10)))
        upstreams[spec.name] = f"http://{args.host}:{port}"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(s.serve(), name=f"serve:{s.config.port}") for s in servers]
    await _wait_started(servers, tasks)

    gateway_settings = GatewaySettings(
        upstreams=upstreams,
        auth=AuthSettings(mode="hs256", hs256_secret=SecretStr(secret)),
    )
    gateway = _Server(
        uvicorn_config(
            create_gateway(gateway_settings),
            host=args.host,
            port=args.port,
            grace=10,
            behind_gateway=False,
        )
    )
    tasks.append(asyncio.create_task(gateway.serve(), name="serve:gateway"))
    await _wait_started([gateway], tasks)
    _banner(args, secret, var, mail, brevo_key=next(iter(brevo.api_keys)))

    if schulconnex is not None:
        print(f"  Schulconnex (fake, for schulconnex-sync)  {schulconnex.base_url}\n", flush=True)
    done = asyncio.create_task(stop.wait())
    await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
    print("\nStopping edumesh ...", flush=True)
    gateway.should_exit = True
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    mail.stop()
    if schulconnex is not None:
        await schulconnex.stop()
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
    if failed or not stop.is_set():
        raise SystemExit("a server stopped unexpectedly; see the log above")


async def _wait_started(servers: list[_Server], tasks: list[asyncio.Task[Any]]) -> None:
    while not all(s.started for s in servers):
        for t in tasks:
            if t.done():
                raise SystemExit(f"{t.get_name()} failed to start: {t.exception()!r}")
        await asyncio.sleep(0.05)


def _banner(
    args: argparse.Namespace, secret: str, var: Path, mail: MailCapture, *, brevo_key: str = ""
) -> None:
    token = mint_token(subject="dev-admin", secret=secret, roles=["admin"], ttl_seconds=8 * 3600)
    base = f"http://{args.host}:{args.port}"
    services = "\n".join(
        f"    {s.name:<17} {base}/api/{s.name}/"
        f"   (direct: http://{args.host}:{s.port + args.port_offset})"
        for s in SERVICES
    )
    print(
        f"""
edumesh is running (embedded default: SQLite, in-process bus, local mail capture)

  Gateway   {base}
  API docs  {base}/docs
  Ops       {base}/admin#token={token}
            (dashboard: every service's tasks and executions; the link signs you in as dev-admin)
  Portal    {base}/api/portal/public/login
            (customer pages; uploads are refused unless CLAMD_HOST names a clamd: docs/portal.md)
  Services
{services}
  Data      {var}  (course database, one SQLite file per service)
  Mail      {mail.url}  ->  {var / "mail"} (Maildir; open the .eml files in any mail client)
  Brevo     http://{args.host}:{args.brevo_port}  (fake Brevo API v3, in memory; api-key below)
            connect it: curl -X POST -H "Authorization: Bearer $TOKEN" \\
              -H 'content-type: application/json' {base}/api/profile/connections \\
              -d '{{"name": "brevo", "kind": "brevo", "settings": {{"base_url":
                   "http://{args.host}:{args.brevo_port}", "api_key": "{brevo_key}"}}}}'

  Dev token (role admin, valid 8 h; the signing key is random for this run):
    export TOKEN={token}
    curl -H "Authorization: Bearer $TOKEN" {base}/api/booking/health/about
  Mint others with: MESH_JWT_SECRET=<key> .venv/bin/mesh-token --sub alice --role staff
  (set MESH_JWT_SECRET yourself before `make run` to keep tokens valid across restarts)

Press Ctrl-C to stop.
""",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mesh_embedded", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("EDUMESH_HOST", "127.0.0.1"))
    env = os.environ.get
    parser.add_argument("--port", type=int, default=int(env("EDUMESH_PORT", GATEWAY_PORT)))
    parser.add_argument("--var-dir", default=os.environ.get("EDUMESH_VAR", "var"))
    parser.add_argument("--courses", type=int, default=int(os.environ.get("EDUMESH_COURSES", 2000)))
    # Services listen on 8101..8106 plus this offset (two meshes side by side, tests).
    parser.add_argument(
        "--port-offset", type=int, default=int(env("EDUMESH_SERVICE_PORT_OFFSET", 0))
    )
    parser.add_argument("--smtp-port", type=int, default=int(env("EDUMESH_SMTP_PORT", 8025)))
    parser.add_argument("--brevo-port", type=int, default=int(env("EDUMESH_BREVO_PORT", 8090)))
    args = parser.parse_args()
    args.var_dir = Path(args.var_dir).resolve()
    args.var_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"), json=False)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
