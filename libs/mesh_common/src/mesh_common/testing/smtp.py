"""A real SMTP server for tests: aiosmtpd on a free local port, capturing every message.

``smtp_server`` (fixture, registered by the plugin) yields a started :class:`SmtpCapture`. Tests
point ``SMTP_HOST``/``SMTP_PORT`` at it, then read what arrived (``await server.wait_for(n)``)
and parse it back with the stdlib ``email`` package. Faults are real SMTP replies or a real
outage: ``refuse(address)`` answers RCPT with 550, ``fail_next(n)`` answers DATA with 451,
``stop()``/``start()`` takes the server away and brings it back on the same port. Optional
LOGIN/PLAIN authentication and STARTTLS or implicit TLS (with :func:`make_tls_files`) exercise
the client's security settings. Test support only: production code must not import this.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass(frozen=True)
class CapturedMail:
    """One message as the server received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> EmailMessage:
        """The message parsed back with the stdlib (``policy.default``)."""
        return message_from_bytes(self.data, policy=policy.default)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, capture: SmtpCapture) -> None:
        self.capture = capture

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        # Login is enforced here rather than with aiosmtpd's auth_required, which warns on every
        # connection when TLS is not required as well.
        if self.capture.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.capture.refusals.get(address.lower())
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.capture._lock:
            if self.capture._failures:
                return self.capture._failures.pop(0)
            self.capture.messages.append(
                CapturedMail(
                    mail_from=envelope.mail_from,
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or envelope.content),
                )
            )
        return "250 Message accepted"


class SmtpCapture:
    """aiosmtpd in its own thread on ``host:port`` (a free port unless given)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        credentials: dict[str, str] | None = None,
        starttls_context: ssl.SSLContext | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.credentials = credentials
        self.starttls_context = starttls_context
        self.tls_context = tls_context
        self.messages: list[CapturedMail] = []
        self.refusals: dict[str, str] = {}
        self.logins: list[str] = []
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    # ------------------------------------------------------------------ control

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> SmtpCapture:
        if self._controller is not None:
            return self
        kwargs: dict[str, Any] = {}
        if self.credentials is not None:
            # Plain-text AUTH is fine for tests unless TLS is what is being tested.
            kwargs.update(
                authenticator=self._authenticate,
                auth_require_tls=self.starttls_context is not None,
            )
        if self.starttls_context is not None:
            kwargs.update(tls_context=self.starttls_context, require_starttls=True)
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            ssl_context=self.tls_context,
            ready_timeout=10,
            **kwargs,
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                controller.start()
                break
            except Exception:
                # The port of a just-stopped server can take a moment to become free again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._controller = controller
        return self

    def stop(self) -> None:
        """Take the server away: connections are refused until :meth:`start`."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def refuse(self, address: str, reply: str = "550 5.1.1 No such user here") -> None:
        """Answer RCPT for ``address`` with ``reply`` (a permanent refusal by default)."""
        self.refusals[address.lower()] = reply

    def fail_next(self, count: int = 1, reply: str = "451 4.3.0 Try again later") -> None:
        """Answer the next ``count`` DATA commands with ``reply`` (a transient error by default)."""
        with self._lock:
            self._failures.extend([reply] * count)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self.credentials is not None:
            login = auth_data.login.decode()
            if self.credentials.get(login) == auth_data.password.decode():
                self.logins.append(login)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    # ------------------------------------------------------------------ reading

    def to(self, address: str) -> list[CapturedMail]:
        """Messages whose envelope included ``address``."""
        wanted = address.lower()
        return [m for m in list(self.messages) if wanted in (r.lower() for r in m.rcpt_tos)]

    async def wait_for(self, count: int, *, timeout: float = 10.0) -> list[CapturedMail]:  # noqa: ASYNC109
        """Wait until at least ``count`` messages arrived; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} message(s) at {self.host}:{self.port}, "
                    f"got {len(self.messages)} within {timeout}s"
                )
            await asyncio.sleep(0.02)
        return list(self.messages)

    def __enter__(self) -> SmtpCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_tls_files(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate (also valid for 127.0.0.1) and its key, as PEM files; the
    certificate doubles as the CA file a client trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def server_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def smtp_server() -> Iterator[SmtpCapture]:
    """A started capturing SMTP server on a free port of 127.0.0.1 (stopped afterwards)."""
    server = SmtpCapture().start()
    try:
        yield server
    finally:
        server.stop()
