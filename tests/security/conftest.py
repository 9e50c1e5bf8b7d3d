"""The embedded default (`make run`'s launcher) as a subprocess for the security suite.

Started once per session on free ports with a known JWT secret (so tests mint tokens for every
role) and its log captured for the secrets-in-logs scan. Small body limits (gateway 3 MiB, 4 MiB
for the portal, services 1 MiB, portal uploads 1 MiB) let the oversized-body tests stay cheap,
and a test-owned clamd (only the EICAR signature) lets the portal scan uploads. Without clamd
installed the mesh still starts; the EICAR/upload tests then skip locally and fail under CI.
When the mesh stops, every log it wrote is scanned once more for the secrets the tests used.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mesh_common.auth import mint_token
from mesh_common.secrets import generate_key
from mesh_common.testing.clamd import ClamdServer, clamd_binary
from mesh_embedded.registry import SERVICES

JWT_SECRET = "security-suite-secret-" + "x" * 24
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
MiB = 1024 * 1024
GATEWAY_MAX_BODY = 3 * MiB
GATEWAY_MAX_BODY_PORTAL = 4 * MiB
SERVICE_MAX_BODY = 1 * MiB
PORTAL_UPLOAD_MAX = 1 * MiB


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@dataclass
class Mesh:
    url: str
    log: Path
    secret_key: str
    var: Path
    direct: dict[str, str] = field(default_factory=dict)  # service name -> its own base URL
    clamd: ClamdServer | None = None
    brevo_url: str = ""  # the launcher's fake Brevo API
    # Secrets the tests used (passwords, IBANs, API keys, tokens): none may appear in any log;
    # checked for the whole session when the mesh stops (see log_findings).
    secrets: set[str] = field(default_factory=set)

    @property
    def mail_dir(self) -> Path:
        return self.var / "mail"

    def token(self, *roles: str, sub: str = "tester", **claims: object) -> str:
        return mint_token(subject=sub, secret=JWT_SECRET, roles=list(roles), **claims)  # type: ignore[arg-type]

    def bookable_course(self, participant: int | None = None) -> str:
        """A course a web order can book now: open, web-bookable, before its deadline (or first
        session), with a free seat, not booked by ``participant`` yet (docs/booking.md)."""
        rows = self.coursedb(
            "SELECT number FROM courses c WHERE status = 'open' AND web_bookable = 1 "
            "AND registration_mode = 'direct' "
            "AND coalesce(registration_deadline, (SELECT min(session_date) FROM course_sessions s"
            "    WHERE s.course_id = c.id), '9999') > datetime('now', '+1 day') "
            "AND (SELECT count(*) FROM registrations r WHERE r.course_id = c.id "
            "    AND r.status IN ('booked', 'provisional')) < max_participants - 2 "
            "AND NOT EXISTS (SELECT 1 FROM registrations r "
            "    WHERE r.course_id = c.id AND r.participant_id = ?) ORDER BY number",
            participant or 0,
        )
        assert rows, "no bookable course in the demo data"
        return str(rows[0][0])

    def logs(self) -> dict[Path, str]:
        """Every log the mesh wrote: the launcher's output and any log file under var/."""
        found = {self.log: self.log.read_text(errors="replace")}
        for path in self.var.rglob("*"):
            if path.is_file() and path.suffix in (".log", ".out", ".txt") and path != self.log:
                found[path] = path.read_text(errors="replace")
        return found

    def dev_tokens(self) -> set[str]:
        """The dev admin token the launcher prints in its banner on purpose (`make run`)."""
        return set(re.findall(r"export TOKEN=(\S+)", self.log.read_text(errors="replace")))

    def log_findings(self, extra: set[str] = frozenset()) -> list[str]:
        """Secrets found in the logs: any of ``secrets`` (and ``extra``), the signing and data
        keys, and any JWT except the banner's dev token."""
        wanted = {s for s in self.secrets | set(extra) | {JWT_SECRET, self.secret_key} if s}
        allowed_jwts = self.dev_tokens()
        findings = []
        for path, text in self.logs().items():
            for secret in sorted(wanted):
                if secret in text:
                    line = next(ln for ln in text.splitlines() if secret in ln)
                    findings.append(f"{path.name}: {secret[:12]}... in {line[:200]!r}")
            for jwt in set(JWT_RE.findall(text)) - allowed_jwts:
                findings.append(f"{path.name}: a bearer token {jwt[:24]}...")
        return findings

    def headers(self, *roles: str, **kw: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*roles, **kw)}"}

    def coursedb(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """Read the demo course database (ids for the tests' requests); never writes."""
        with contextlib.closing(
            sqlite3.connect(f"file:{self.var / 'coursedb.sqlite3'}?mode=ro", uri=True, timeout=10)
        ) as conn:
            return list(conn.execute(sql, args).fetchall())


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    var = tmp_path_factory.mktemp("embedded")
    log = var / "launcher.log"
    port = _free_port()
    # Services on 8101..8106 + offset: pick an offset whose six ports are free.
    for _ in range(20):
        offset = _free_port() % 20000 + 30000 - 8100
        if _ports_free([s.port + offset for s in SERVICES]):
            break
    secret_key = generate_key()
    clamd = ClamdServer(base_dir=var / "clamd") if clamd_binary() else None
    brevo_port = _free_port()
    if clamd is not None:
        clamd.start()
    env = {
        **os.environ,
        "MESH_JWT_SECRET": JWT_SECRET,
        "MESH_SECRET_KEY": secret_key,
        "LOG_LEVEL": "INFO",
        "GATEWAY_MAX_BODY_BYTES": str(GATEWAY_MAX_BODY),
        "GATEWAY_MAX_BODY_BYTES_BY_SERVICE": f'{{"portal": {GATEWAY_MAX_BODY_PORTAL}}}',
        "MAX_BODY_BYTES": str(SERVICE_MAX_BODY),
        "PORTAL_UPLOAD_MAX_BYTES": str(PORTAL_UPLOAD_MAX),
        # Each portal test signs in a few times; the per-address limit is not under test here.
        "PORTAL_LOGIN_MAX_FAILURES_PER_IP": "1000",
    }
    if clamd is not None:
        env |= {"CLAMD_HOST": clamd.host, "CLAMD_PORT": str(clamd.port)}
    cmd = [
        sys.executable,
        "-m",
        "mesh_embedded",
        "--port",
        str(port),
        "--var-dir",
        str(var),
        "--courses",
        "120",
        "--smtp-port",
        str(_free_port()),
        "--brevo-port",
        str(brevo_port),
        "--port-offset",
        str(offset),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        pending = {s.name for s in SERVICES}
        while pending:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"not ready: {pending}\n{log.read_text()[-3000:]}"
            for name in list(pending):
                try:
                    r = httpx.get(f"{url}/api/{name}/health/ready", timeout=2)
                    if r.status_code == 200:
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        # The gateway aggregates each service's OpenAPI when it answers; wait for all of them.
        while True:
            paths = httpx.get(f"{url}/openapi.json", timeout=5).json().get("paths", {})
            missing = [
                s.name for s in SERVICES if not any(p.startswith(f"/api/{s.name}/") for p in paths)
            ]
            if not missing:
                break
            assert time.monotonic() < deadline, f"OpenAPI incomplete: {missing}"
            time.sleep(0.5)
        direct = {s.name: f"http://127.0.0.1:{s.port + offset}" for s in SERVICES}
        mesh = Mesh(
            url=url,
            log=log,
            secret_key=secret_key,
            var=var,
            direct=direct,
            clamd=clamd,
            brevo_url=f"http://127.0.0.1:{brevo_port}",
        )
        yield mesh
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if clamd is not None:
            clamd.cleanup()
    # The whole session's logs, shutdown included: no secret any test used, no bearer token.
    findings = mesh.log_findings()
    assert not findings, "secrets in the logs:\n" + "\n".join(findings[:30])


@pytest.fixture(scope="session")
def openapi(mesh: Mesh) -> dict[str, object]:
    document: dict[str, object] = httpx.get(f"{mesh.url}/openapi.json", timeout=10).json()
    return document


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, object]:
    """``response`` is an RFC 9457 problem document with ``status`` (and ``code``)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    ctype = response.headers.get("content-type", "")
    assert ctype.startswith("application/problem+json"), (ctype, response.text[:300])
    body: dict[str, object] = response.json()
    assert body["status"] == status and body.get("title"), body
    if code is not None:
        assert body.get("code") == code, body
    return body
