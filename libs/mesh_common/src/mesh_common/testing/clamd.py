"""A test-owned clamd (ClamAV daemon) with the project's config and its own signature file.

:class:`ClamdServer` renders ``deploy/clamd/clamd.conf`` into a private directory and runs
``clamd -c <conf>`` in the foreground, as the current user, on a free high TCP port of
127.0.0.1. Its signature database directory holds only ``deploy/clamd/edumesh-test.ndb`` (a
signature for the EICAR test string): no signature download is possible here, and the tests must
not depend on one. ``stop()`` takes the scanner away (connections are refused) and ``start()``
brings it back on the same port, so a test can check that uploads fail closed.

:func:`eicar` returns the EICAR test string (assembled at run time, so this file itself is not
a detection). :func:`require_clamd` skips a test when clamd is not installed, or fails it under
``CI=true``. Test support only: production code must not import this module.

Usage::

    with ClamdServer() as clamd:
        settings = Settings(clamd_host=clamd.host, clamd_port=clamd.port, ...)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from string import Template
from types import TracebackType

import pytest

from mesh_common.testing.servers import in_ci

_CONF_ENV = "EDUMESH_CLAMD_CONF"
_BINARY_ENV = "CLAMD_BINARY"
SIGNATURE_FILE = "edumesh-test.ndb"
# The name clamd reports for the EICAR test signature (".UNOFFICIAL": not from ClamAV's databases).
EICAR_SIGNATURE = "Edumesh.Test.EICAR.UNOFFICIAL"


class ClamdError(RuntimeError):
    pass


def eicar() -> bytes:
    """The 68-byte EICAR anti-virus test file (https://www.eicar.org/download-anti-malware-testfile/)."""
    head = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
    return head + b"EICAR-STANDARD-ANTIVIRUS" + b"-TEST-FILE!$H+H*"


def clamd_binary() -> str | None:
    """Path of clamd (``CLAMD_BINARY`` overrides), or None when it is not installed."""
    override = os.environ.get(_BINARY_ENV)
    candidates = [override] if override else ["/usr/sbin/clamd", shutil.which("clamd")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    return None


def require_clamd() -> str:
    """The clamd binary; skips the test (locally) or fails it (CI) when it is missing."""
    binary = clamd_binary()
    if binary is not None:
        return binary
    message = (
        "clamd is not installed (Debian: clamav-daemon); "
        "`make test` installs it (scripts/ensure-packages.sh)"
    )
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def deploy_dir() -> Path:
    """``deploy/clamd`` of this repository (``EDUMESH_CLAMD_CONF`` names another config file)."""
    override = os.environ.get(_CONF_ENV)
    if override:
        return Path(override).parent
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "clamd"
        if (candidate / "clamd.conf").exists():
            return candidate
    raise ClamdError(f"deploy/clamd/clamd.conf not found; set {_CONF_ENV}")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (from the kernel's ephemeral, i.e. high, range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when clamd answers PING with PONG (listening alone is not enough: it loads first)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"zPING\0")
            return s.recv(16).rstrip(b"\0") == b"PONG"
    except OSError:
        return False


class ClamdServer:
    """One private clamd instance (see the module docstring)."""

    def __init__(
        self,
        *,
        config: Path | None = None,
        signatures: Path | None = None,
        base_dir: Path | None = None,
        port: int | None = None,
    ) -> None:
        source = deploy_dir()
        self.config_template = config or Path(os.environ.get(_CONF_ENV) or (source / "clamd.conf"))
        self.signatures = signatures or source / SIGNATURE_FILE
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="clamd-"))
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.base_dir / "clamd.conf"

    @property
    def database_dir(self) -> Path:
        return self.base_dir / "db"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "clamd.out"

    def _render(self) -> None:
        self.database_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "tmp").mkdir(exist_ok=True)
        shutil.copyfile(self.signatures, self.database_dir / self.signatures.name)
        values = {
            "LISTEN": self.host,
            "PORT": str(self.port),
            "DATABASE_DIR": str(self.database_dir),
            "TEMP_DIR": str(self.base_dir / "tmp"),
            "PID_FILE": str(self.base_dir / "clamd.pid"),
        }
        text = Template(self.config_template.read_text()).substitute(values)
        self.config_file.write_text(text)

    def start(self, timeout: float = 60.0) -> ClamdServer:
        """Start clamd and wait until it answers PING (on the same port after a stop)."""
        if self.running:
            return self
        binary = clamd_binary()
        if binary is None:
            raise ClamdError("clamd is not installed (Debian: clamav-daemon)")
        self._render()
        with self.log_file.open("ab") as out:
            # Own session: stop() signals clamd's whole process group.
            self.process = subprocess.Popen(
                [binary, "-c", str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.base_dir,
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ClamdError(f"clamd exited with {code}:\n{self.tail()}")
            if _ping(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise ClamdError(f"clamd did not answer on port {self.port} within {timeout}s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop clamd: connections to its port are refused until :meth:`start`."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def tail(self, lines: int = 30) -> str:
        """The end of clamd's output (its log)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ClamdServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


@pytest.fixture(scope="session")
def clamd_server() -> Iterator[ClamdServer]:
    """A started clamd for the test session (skipped locally / failed under CI without clamd).
    Tests that stop it must start it again; better, they use their own :class:`ClamdServer`."""
    require_clamd()
    with ClamdServer() as server:
        yield server


__all__ = [
    "EICAR_SIGNATURE",
    "SIGNATURE_FILE",
    "ClamdError",
    "ClamdServer",
    "clamd_binary",
    "clamd_server",
    "deploy_dir",
    "eicar",
    "free_port",
    "require_clamd",
]
