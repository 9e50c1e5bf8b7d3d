"""``make up-local``: the production topology without containers.

Runs the gateway and each service as its **own process**, started with exactly the command its
container runs (``python -m <package>``, see :func:`service_command`), on PostgreSQL (one schema
per service, the coursedb in its own database) and RabbitMQ (its own vhost). This is what
docker-compose and Kubernetes run, minus the containers, so the e2e tests and ops rehearsals use
the real process boundaries, real network hops and real broker.

The supervisor only starts, watches and stops processes:

- configuration goes to each child through environment variables (the same names compose and
  Kubernetes set), never through files;
- it waits until every child answers ``/health/ready``;
- SIGINT/SIGTERM sends SIGTERM to every child and waits up to the grace period (children drain
  in-flight requests and handlers), then kills stragglers;
- if a child dies, everything is stopped and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from mesh_embedded.registry import GATEWAY_PORT, SERVICES, ServiceSpec

GATEWAY_PACKAGE = "gateway_service"


def service_command(package: str) -> list[str]:
    """The container command of a service image (deploy/Dockerfile's CMD, compose, k8s)."""
    return ["python", "-m", package]


def gateway_command(port: int, host: str = "0.0.0.0") -> list[str]:
    return [*service_command(GATEWAY_PACKAGE), "--host", host, "--port", str(port)]


@dataclass
class Topology:
    """Where everything runs; defaults match the machine's local PostgreSQL and RabbitMQ."""

    pg_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/edumesh"
    coursedb_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/edumesh_coursedb"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/edumesh"
    host: str = "127.0.0.1"
    gateway_port: int = GATEWAY_PORT
    port_offset: int = 1000  # services on 9101..9106 so `make run` can run beside it
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    secret_key: str | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    extra_env: dict[str, str] = field(default_factory=dict)
    services: Sequence[ServiceSpec] = SERVICES

    def port(self, spec: ServiceSpec) -> int:
        return spec.port + self.port_offset

    def service_env(self, spec: ServiceSpec) -> dict[str, str]:
        env = {
            "ENVIRONMENT": "production",
            "HOST": self.host,
            "PORT": str(self.port(spec)),
            "DATABASE_URL": self.pg_url,
            "COURSEDB_URL": self.coursedb_url,
            "AMQP_URL": self.amqp_url,
            "MESH_JWT_SECRET": self.jwt_secret,
            "SMTP_HOST": self.smtp_host,
            "SMTP_PORT": str(self.smtp_port),
            "LOG_JSON": "true",
        }
        if self.secret_key:
            env["MESH_SECRET_KEY"] = self.secret_key
        return {**env, **self.extra_env}

    def gateway_env(self) -> dict[str, str]:
        import json

        upstreams = {s.name: f"http://{self.host}:{self.port(s)}" for s in self.services}
        return {
            "GATEWAY_UPSTREAMS": json.dumps(upstreams),
            "GATEWAY_AUTH__MODE": "hs256",
            "GATEWAY_AUTH__HS256_SECRET": self.jwt_secret,
            **{k: v for k, v in self.extra_env.items() if k.startswith(("OTEL_", "GATEWAY_"))},
        }

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    proc: asyncio.subprocess.Process | None = None


class Supervisor:
    """Starts every process of a :class:`Topology`, waits for readiness, stops them gracefully."""

    def __init__(self, topo: Topology, *, log_dir: Path, grace: float = 25.0) -> None:
        self.topo = topo
        self.log_dir = log_dir
        self.grace = grace
        self.children: list[_Child] = []

    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
        return {k: v for k, v in os.environ.items() if k in keep or k.startswith("OTEL_")}

    def plan(self) -> list[_Child]:
        topo = self.topo
        children = [
            _Child(
                name=spec.name,
                argv=service_command(spec.package),
                env={**self._base_env(), **topo.service_env(spec)},
                ready_url=f"http://{topo.host}:{topo.port(spec)}/health/ready",
            )
            for spec in topo.services
        ]
        children.append(
            _Child(
                name="gateway",
                argv=gateway_command(topo.gateway_port, topo.host),
                env={**self._base_env(), **topo.gateway_env()},
                ready_url=f"{topo.gateway_url}/health/live",
            )
        )
        return children

    async def start(self, *, ready_within: float = 90.0, seed_courses: int = 2000) -> None:
        await prepare_databases(self.topo, seed_courses=seed_courses)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children = self.plan()
        for child in self.children:
            await self._spawn(child)
        await self.wait_ready(ready_within)

    async def _spawn(self, child: _Child) -> None:
        # The child inherits the log file; it is appended to, never truncated, across restarts.
        log = self.log_dir / f"{child.name}.log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            argv = [sys.executable, *child.argv[1:]] if child.argv[0] == "python" else child.argv
            child.proc = await asyncio.create_subprocess_exec(
                *argv, env=child.env, stdout=fd, stderr=fd, start_new_session=True
            )
        finally:
            os.close(fd)

    async def wait_ready(self, ready_within: float) -> None:
        deadline = asyncio.get_running_loop().time() + ready_within
        pending = {c.name: c for c in self.children}
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending:
                for name, child in list(pending.items()):
                    self.check_alive(child)
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(child.ready_url)).status_code == 200:
                            del pending[name]
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"not ready after {ready_within:.0f} s: {', '.join(pending)} "
                        f"(logs in {self.log_dir})"
                    )
                await asyncio.sleep(0.2)

    def check_alive(self, child: _Child) -> None:
        if child.proc is not None and child.proc.returncode is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.proc.returncode} "
                f"(log: {self.log_dir / (child.name + '.log')})"
            )

    def child(self, name: str) -> _Child:
        return next(c for c in self.children if c.name == name)

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM everyone (gateway first, so no new requests arrive), wait, then SIGKILL."""
        order = [c for c in self.children if c.name == "gateway"] + [
            c for c in self.children if c.name != "gateway"
        ]
        for child in order:
            if child.proc and child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for child in order:
            if child.proc is None:
                continue
            try:
                codes[child.name] = await asyncio.wait_for(child.proc.wait(), self.grace)
            except TimeoutError:
                child.proc.kill()
                codes[child.name] = await child.proc.wait()
        return codes

    async def restart(self, name: str, *, ready_within: float = 60.0) -> int | None:
        """Rolling restart of one child: SIGTERM, wait for it to drain and exit, start again."""
        child = self.child(name)
        assert child.proc is not None
        child.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(child.proc.wait(), self.grace)
        except TimeoutError:
            child.proc.kill()
            code = await child.proc.wait()
        await self._spawn(child)
        saved, self.children = self.children, [child]
        try:
            await self.wait_ready(ready_within)
        finally:
            self.children = saved
        return code


async def prepare_databases(topo: Topology, *, seed_courses: int = 2000) -> None:
    """Create the mesh's PostgreSQL databases and RabbitMQ vhost if missing; seed the coursedb
    once (an empty coursedb is seeded with demo data, an existing one is left alone)."""
    import asyncpg
    from coursedb.engine import create_engine as create_coursedb_engine
    from coursedb.schema import courses
    from coursedb.seed import seed
    from sqlalchemy import func, select
    from sqlalchemy.exc import DBAPIError

    for url in (topo.pg_url, topo.coursedb_url):
        parts = urlsplit(url.replace("+asyncpg", ""))
        dbname = parts.path.lstrip("/")
        admin = urlunsplit(parts._replace(path="/postgres"))
        conn = await asyncpg.connect(admin)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", dbname)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            await conn.close()
    await _ensure_vhost(topo.amqp_url)
    engine = create_coursedb_engine(topo.coursedb_url)
    try:
        try:
            async with engine.connect() as conn:
                count = await conn.scalar(select(func.count()).select_from(courses))
        except DBAPIError:
            count = 0
        if not count:
            await seed(engine, courses=seed_courses, seed=1, reset=True)
    finally:
        await engine.dispose()


async def _ensure_vhost(amqp_url: str) -> None:
    """Create the vhost through RabbitMQ's CLI when it is missing (the default vhost needs
    nothing). ``rabbitmqctl`` is how the machine administers its broker; in Kubernetes and
    compose the broker's own definitions create it."""
    vhost = urlsplit(amqp_url).path.lstrip("/") or "/"
    if vhost == "/":
        return
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        "add_vhost",
        vhost,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode not in (0, 70) and b"already exists" not in err:  # 70: exists (old CLIs)
        raise RuntimeError(f"rabbitmqctl add_vhost {vhost} failed: {err.decode().strip()}")
    user = urlsplit(amqp_url).username or "guest"
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        "set_permissions",
        "-p",
        vhost,
        user,
        ".*",
        ".*",
        ".*",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.wait()


def _topology_from_env(env: Mapping[str, str]) -> Topology:
    topo = Topology()
    topo.pg_url = env.get("EDUMESH_PG_URL", topo.pg_url)
    topo.coursedb_url = env.get("EDUMESH_COURSEDB_URL", topo.coursedb_url)
    topo.amqp_url = env.get("EDUMESH_AMQP_URL", topo.amqp_url)
    topo.gateway_port = int(env.get("EDUMESH_PORT", topo.gateway_port))
    if env.get("MESH_JWT_SECRET"):
        topo.jwt_secret = env["MESH_JWT_SECRET"]
    topo.secret_key = env.get("MESH_SECRET_KEY")
    return topo


async def _main(args: argparse.Namespace) -> int:
    from mesh_common.auth import mint_token
    from mesh_common.secrets import generate_key

    topo = _topology_from_env(os.environ)
    if not topo.secret_key:
        # Like `make run`, a local rehearsal keeps a generated key in var/ (ADR 0007).
        from mesh_embedded.__main__ import _dev_secret_key

        _dev_secret_key(args.var_dir)
        topo.secret_key = os.environ.get("MESH_SECRET_KEY") or generate_key()
    from mesh_embedded.mailcapture import MailCapture

    mail = MailCapture(args.var_dir / "mail", port=topo.smtp_port)  # compose: the mail container
    mail.start()
    sup = Supervisor(topo, log_dir=args.var_dir / "logs")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sup.start()
    except BaseException:
        await sup.stop()
        mail.stop()
        raise
    token = mint_token(subject="ops", secret=topo.jwt_secret, roles=["admin"], ttl_seconds=8 * 3600)
    print(
        f"edumesh process topology is up (PostgreSQL + RabbitMQ, one process per service)\n"
        f"  Gateway  {topo.gateway_url}   docs {topo.gateway_url}/docs"
        f"   ops {topo.gateway_url}/admin\n"
        f"  Logs     {args.var_dir / 'logs'}\n"
        f"  export TOKEN={token}\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    code = 0
    while not stop.is_set():
        try:
            for child in sup.children:
                sup.check_alive(child)
        except RuntimeError as exc:
            print(f"edumesh: {exc}; stopping everything", file=sys.stderr, flush=True)
            code = 1
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    print("Stopping (SIGTERM, draining) ...", flush=True)
    await sup.stop()
    mail.stop()
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mesh_embedded.topology", description=__doc__)
    parser.add_argument("--var-dir", default=os.environ.get("EDUMESH_VAR", "var"))
    args = parser.parse_args(argv)
    args.var_dir = Path(args.var_dir).resolve()
    args.var_dir.mkdir(parents=True, exist_ok=True)
    raise SystemExit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
