"""A test-owned RabbitMQ node: start, stop, kill -9 and restart it, for chaos and TLS tests.

The node runs the machine's ``rabbitmq-server`` as the current user with its own node name,
ports, HOME (Erlang cookie), config file, Mnesia and log directories under one base directory,
so it never touches the system broker (rabbit@localhost on 5672). Its data directory survives
:meth:`kill` and :meth:`restart`, like a real crashed server. Test support only: production
code must not import this module.

Usage::

    with RabbitNode() as node:          # boots on 127.0.0.1:5682 (dist port 25682)
        url = node.amqp_url             # amqp://guest:guest@127.0.0.1:5682/
        node.kill()                     # SIGKILL to the node's whole process group
        node.start()                    # boots again on the same data
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
from pathlib import Path
from types import TracebackType

_SBIN_CANDIDATES = ("/usr/lib/rabbitmq/bin", "/usr/lib/rabbitmq/sbin", "/usr/sbin", "/usr/bin")


class RabbitNodeError(RuntimeError):
    pass


def _tool(name: str) -> str:
    """Path of a RabbitMQ script; prefers the unwrapped one (the /usr/sbin wrapper switches to
    the ``rabbitmq`` user when run as root, which could not use our base directory)."""
    override = os.environ.get("RABBITMQ_BIN_DIR")
    for directory in ((override,) if override else ()) + _SBIN_CANDIDATES:
        path = Path(directory) / name
        if path.exists() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise RabbitNodeError(f"{name} not found; install rabbitmq-server")
    return found


def available() -> bool:
    """True when a rabbitmq-server binary is installed on this machine."""
    try:
        _tool("rabbitmq-server")
    except RabbitNodeError:
        return False
    return True


def _port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class RabbitNode:
    """One private RabbitMQ node (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str = "meshtest",
        port: int = 5682,
        dist_port: int = 25682,
        base_dir: str | Path | None = None,
        extra_config: str = "",
    ) -> None:
        self.nodename = f"{name}@localhost"
        self.port = port
        self.dist_port = dist_port
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix=f"rabbit-{name}-"))
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ paths and env

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "node.out"

    @property
    def _claim_file(self) -> Path:
        # A fixed path (not under the random base dir) so a later run can find a node that a
        # crashed test run left behind on the same port.
        return Path(tempfile.gettempdir()) / f"edumesh-rabbit-{self.nodename}-{self.port}.pgid"

    def _reclaim_stale(self) -> None:
        """Kill a node of ours that an earlier, crashed run left listening on our port."""
        try:
            pgid = int(self._claim_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        # Only our own process group: the group leader is the rabbitmq-server script that the
        # claim file recorded; anything else (a recycled pid) is left alone.
        if b"rabbitmq-server" in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self._wait_port_closed()
        self._claim_file.unlink(missing_ok=True)

    def _prepare(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("")
        config = (
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            f"{self.extra_config}\n"
        )
        (self.base_dir / "rabbitmq.conf").write_text(config)

    def env(self) -> dict[str, str]:
        """Environment for the node and for rabbitmqctl / rabbitmq-diagnostics against it."""
        env = dict(os.environ)
        base = self.base_dir
        env.update(
            {
                "HOME": str(base / "home"),  # the node's own Erlang cookie lives here
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
                "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(base / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(base / "node.pid"),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
            }
        )
        return env

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Boot the node (on its existing data, if any) and wait until AMQP accepts."""
        if self.running:
            return
        if _port_open(self.port):
            self._reclaim_stale()
        if _port_open(self.port):
            raise RabbitNodeError(f"port {self.port} is already in use (not by a node of ours)")
        self._prepare()
        out = self.log_file.open("ab")
        try:
            # Own session/process group: kill() takes down beam and its helpers, nothing else.
            self.process = subprocess.Popen(
                [_tool("rabbitmq-server")],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.base_dir,
            )
        finally:
            out.close()
        self._claim_file.write_text(str(self.process.pid))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process is not None and self.process.poll() is not None:
                raise RabbitNodeError(
                    f"rabbitmq-server exited with {self.process.returncode}; "
                    f"see {self.log_file}:\n{self._tail()}"
                )
            if _port_open(self.port):
                return
            time.sleep(0.1)
        raise RabbitNodeError(f"node {self.nodename} not ready after {timeout}s:\n{self._tail()}")

    def ping(self) -> bool:
        """``rabbitmq-diagnostics ping`` against this node (True when it answers)."""
        result = subprocess.run(
            [_tool("rabbitmq-diagnostics"), "-q", "-n", self.nodename, "ping"],
            env=self.env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        return result.returncode == 0

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl -n <node> ...`` and return its output (raises on failure)."""
        result = subprocess.run(
            [_tool("rabbitmqctl"), "-q", "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the node's process group (a crash: no clean shutdown, data kept)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self._wait_port_closed()
        self._claim_file.unlink(missing_ok=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (SIGTERM), falling back to :meth:`kill`."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        # Helpers (erl_child_setup) share the group; make sure none outlives the node.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None
        self._wait_port_closed()
        self._claim_file.unlink(missing_ok=True)

    def restart(self, *, hard: bool = True, timeout: float = 60.0) -> None:
        """Kill -9 (``hard``) or stop the node, then boot it again on the same data."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the node and delete its base directory (when this object created it)."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _wait_port_closed(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while _port_open(self.port) and time.monotonic() < end:
            time.sleep(0.05)

    def _tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
