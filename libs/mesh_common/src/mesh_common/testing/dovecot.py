"""A test-owned Dovecot (IMAP + LMTP) with a real SMTP server in front, for iMIP tests and benches.

:class:`DovecotServer` renders the project's own config (``deploy/dovecot/dovecot.conf``) into a
private directory and runs ``dovecot -F -c <conf>`` on free high ports on 127.0.0.1: passwd-file
users (SSHA512 hashes), maildirs under that directory, a server certificate issued at start-up
by a throwaway test CA (:class:`CertificateAuthority`; clients trust ``ca_pem``) for IMAPS and
IMAP STARTTLS, helper processes as the current user (as ``nobody`` when the tests run as root,
because Dovecot refuses root for them). Nothing touches system paths or the package's own system
instance. ``tls=False`` runs it without TLS at all (no IMAPS, no STARTTLS offered), the server a
client requiring STARTTLS must refuse. No key is ever written outside the instance's directory.

:class:`SmtpRelay` is the MTA in front of it: an aiosmtpd server (AUTH PLAIN/LOGIN against the
same accounts, STARTTLS, implicit TLS or plaintext, with the same certificate) that refuses unknown
recipients at RCPT time and hands each accepted message to Dovecot over LMTP. It can be stopped
and started again on the same port to play an SMTP outage.

:func:`require_dovecot` skips a test when the binary is missing, or fails it under ``CI=true``.
Test support only: production code must not import this module.

Usage::

    with DovecotServer() as dovecot, SmtpRelay(dovecot) as smtp:
        tech = dovecot.add_user("tech@example.test")
        dovecot.imap_port, dovecot.imaps_port, smtp.port, dovecot.ca_pem
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import grp
import hashlib
import ipaddress
import logging
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Any

import pytest

from mesh_common.testing.servers import in_ci

_CONF_ENV = "EDUMESH_DOVECOT_CONF"
_BINARY_ENV = "DOVECOT_BINARY"


class DovecotError(RuntimeError):
    pass


def dovecot_binary() -> str | None:
    """Path of the dovecot binary (``DOVECOT_BINARY`` overrides), or None when not installed."""
    override = os.environ.get(_BINARY_ENV)
    candidates = [override] if override else ["/usr/sbin/dovecot", shutil.which("dovecot")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    return None


def require_dovecot() -> str:
    """The dovecot binary; skips the test (locally) or fails it (CI) when it is missing."""
    binary = dovecot_binary()
    if binary is not None:
        return binary
    message = (
        "dovecot is not installed (Debian: dovecot-imapd dovecot-lmtpd); "
        "`make test` installs it (scripts/ensure-packages.sh)"
    )
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def project_config() -> Path:
    """``deploy/dovecot/dovecot.conf`` of this repository (``EDUMESH_DOVECOT_CONF`` overrides)."""
    override = os.environ.get(_CONF_ENV)
    if override:
        return Path(override)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "dovecot" / "dovecot.conf"
        if candidate.exists():
            return candidate
    raise DovecotError(f"deploy/dovecot/dovecot.conf not found; set {_CONF_ENV}")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (from the kernel's ephemeral, i.e. high, range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def ssha512(password: str) -> str:
    """A Dovecot ``{SSHA512}`` hash: base64(sha512(password + salt) + salt)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


def verify_ssha512(stored: str, password: str) -> bool:
    """Check ``password`` against a ``{SSHA512}`` hash made by :func:`ssha512`."""
    if not stored.startswith("{SSHA512}"):
        return False
    try:
        raw = base64.b64decode(stored[len("{SSHA512}") :])
    except ValueError:
        return False
    digest, salt = raw[:64], raw[64:]
    return secrets.compare_digest(hashlib.sha512(password.encode() + salt).digest(), digest)


@dataclass(frozen=True)
class MailDirectory:
    """What the SMTP front needs of a Dovecot instance: its passwd-files, LMTP port and TLS
    files. Read from disk, so the front can run in another process."""

    users_dir: Path
    lmtp_port: int
    tls_dir: Path

    def _entry(self, address: str) -> str | None:
        user = address.lower()
        if "/" in user or user.startswith("."):
            return None
        try:
            return (self.users_dir / user).read_text().split(":", 2)[1]
        except (OSError, IndexError):
            return None

    def exists(self, address: str) -> bool:
        return self._entry(address) is not None

    def check_password(self, address: str, password: str) -> bool:
        stored = self._entry(address)
        return stored is not None and verify_ssha512(stored, password)


def self_signed_certificate(hostnames: tuple[str, ...] = ("localhost",)) -> tuple[str, str]:
    """(certificate PEM, key PEM) valid for ``hostnames`` and 127.0.0.1, for one day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


class CertificateAuthority:
    """A throwaway CA made at test time (EC P-256, valid one day); :meth:`issue` signs server
    certificates. Its key lives in memory only."""

    def __init__(self, name: str = "edumesh test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> str:
        """The CA certificate: what a client is given to trust (``tls_ca_pem``)."""
        from cryptography.hazmat.primitives import serialization

        return self._cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, hostnames: tuple[str, ...] = ("localhost",)) -> tuple[str, str]:
        """(certificate PEM, key PEM) of a server certificate for ``hostnames`` and 127.0.0.1."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return cert_pem, key_pem


@dataclass(frozen=True)
class MailAccount:
    address: str
    password: str


class DovecotServer:
    """One private Dovecot instance (see the module docstring). ``ca`` issues its server
    certificate (a fresh CA when not given); ``tls=False``: no TLS at all."""

    def __init__(
        self,
        *,
        config: Path | None = None,
        base_dir: Path | None = None,
        ca: CertificateAuthority | None = None,
        tls: bool = True,
    ) -> None:
        self.config_template = config or project_config()
        self.tls = tls
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="dovecot-"))
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.lmtp_port = free_port()
        self.users: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.ca = ca or CertificateAuthority()
        self.cert_pem, self._key_pem = self.ca.issue(("localhost",))
        self._lock = threading.Lock()
        if os.geteuid() == 0:
            # Dovecot refuses to run login processes (and mail access) as root.
            account = pwd.getpwnam("nobody")
        else:
            account = pwd.getpwuid(os.geteuid())
        self.account = account
        self.group = grp.getgrgid(account.pw_gid).gr_name

    # ------------------------------------------------------------------ paths

    @property
    def ca_pem(self) -> str:
        """The PEM a client trusts to verify this server's TLS certificate (the test CA)."""
        return self.ca.cert_pem

    @property
    def mail_root(self) -> Path:
        return self.base_dir / "mail"

    @property
    def passwd_dir(self) -> Path:
        return self.base_dir / "users"

    @property
    def directory(self) -> MailDirectory:
        return MailDirectory(self.passwd_dir, self.lmtp_port, self.base_dir / "tls")

    @property
    def log_file(self) -> Path:
        return self.base_dir / "dovecot.log"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "dovecot.conf"

    def maildir(self, address: str, folder: str = "INBOX") -> Path:
        local, _, domain = address.lower().partition("@")
        root = self.mail_root / domain / local / "Maildir"
        return root if folder == "INBOX" else root / ("." + folder.replace("/", "."))

    def stored_messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """The raw messages of a folder, read from the maildir on disk (not through IMAP)."""
        box = self.maildir(address, folder)
        files = [f for sub in ("new", "cur") for f in sorted((box / sub).glob("*")) if f.is_file()]
        return [f.read_bytes() for f in files]

    # ------------------------------------------------------------------ users

    def add_user(self, address: str, password: str | None = None) -> MailAccount:
        """Create a mailbox (its own passwd-file, read by Dovecot on first use)."""
        password = password or secrets.token_urlsafe(12)
        user = address.lower()
        if "/" in user or user.startswith("."):
            raise ValueError(f"unsupported address {address!r}")
        with self._lock:
            self.users[user] = password
            self.passwd_dir.mkdir(parents=True, exist_ok=True)
            # user:password:uid:gid:gecos:home:shell:extra; uid, gid and home come from the config.
            tmp = self.passwd_dir / f".{user}.tmp"
            tmp.write_text(f"{user}:{ssha512(password)}::::::\n")
            tmp.chmod(0o644)
            tmp.replace(self.passwd_dir / user)
        return MailAccount(address, password)

    def deliver(self, address: str, message: bytes, sender: str = "tests@localhost") -> None:
        """Deliver one raw message to ``address`` over LMTP (like an MTA would)."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=10) as lmtp:
            lmtp.sendmail(sender, [address], message)

    # ------------------------------------------------------------------ lifecycle

    def _render(self) -> None:
        tls = self.base_dir / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        (tls / "cert.pem").write_text(self.cert_pem)
        key = tls / "key.pem"
        key.write_text(self._key_pem)
        key.chmod(0o600)
        for sub in ("run", "state"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        self.mail_root.mkdir(parents=True, exist_ok=True)
        # Helper processes run as the account below: it must reach the passwd-file and maildirs.
        self.base_dir.chmod(0o755)
        os.chown(self.mail_root, self.account.pw_uid, self.account.pw_gid)
        self.passwd_dir.mkdir(parents=True, exist_ok=True)
        self.passwd_dir.chmod(0o755)
        values = {
            "BASE_DIR": str(self.base_dir),
            "MAIL_ROOT": str(self.mail_root),
            "PASSWD_DIR": str(self.passwd_dir),
            "LISTEN": "127.0.0.1",
            "IMAP_PORT": str(self.imap_port),
            "IMAPS_PORT": str(self.imaps_port),
            "LMTP_PORT": str(self.lmtp_port),
            "SSL_CERT": str(tls / "cert.pem"),
            "SSL_KEY": str(key),
            "INSTANCE_NAME": f"edumesh-test-{self.imap_port}",
            "INTERNAL_USER": self.account.pw_name,
            "INTERNAL_GROUP": self.group,
            "LOGIN_USER": self.account.pw_name,
            "MAIL_UID": str(self.account.pw_uid),
            "MAIL_GID": str(self.account.pw_gid),
        }
        text = Template(self.config_template.read_text()).substitute(values)
        if not self.tls:
            # A later setting overrides an earlier one: no STARTTLS offered, no IMAPS listener.
            text += "\n# DovecotServer(tls=False): a server without TLS\nssl = no\n"
        self.config_file.write_text(text)

    def start(self, timeout: float = 20.0) -> None:
        """Start Dovecot and wait until IMAP, IMAPS and LMTP accept connections."""
        if self.running:
            return
        binary = dovecot_binary()
        if binary is None:
            raise DovecotError("dovecot is not installed (dovecot-imapd dovecot-lmtpd)")
        self._render()
        out = (self.base_dir / "dovecot.out").open("ab")
        try:
            # Own session: stop() signals the master, which takes its helper processes down.
            self.process = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.base_dir,
            )
        finally:
            out.close()
        end = time.monotonic() + timeout
        ports: tuple[int, ...] = (self.imap_port, self.imaps_port, self.lmtp_port)
        if not self.tls:
            ports = (self.imap_port, self.lmtp_port)
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with {self.process.returncode}:\n{self._tail()}"
                )
            if all(_port_open(p) for p in ports):
                return
            time.sleep(0.05)
        self.stop()
        raise DovecotError(f"dovecot did not open {ports} within {timeout}s:\n{self._tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
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

    def _tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("dovecot.out", "dovecot.log"):
            with contextlib.suppress(OSError):
                text += (self.base_dir / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> DovecotServer:
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


class _RelayHandler:
    """aiosmtpd handler: known recipients only, delivery over LMTP (blocking, so in a thread).

    Like an MTA's LMTP client it delivers over several connections in parallel (one per worker
    thread) and keeps them open between messages (Postfix: ``lmtp_connection_cache``),
    reconnecting once when one went stale."""

    def __init__(self, directory: MailDirectory) -> None:
        self.directory = directory
        self.delivered = 0
        self._local = threading.local()
        self._all: list[smtplib.LMTP] = []
        self._lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.directory.exists(address):
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        try:
            await asyncio.to_thread(self._deliver, envelope.mail_from, envelope.rcpt_tos, content)
        except smtplib.SMTPRecipientsRefused as exc:
            # Dovecot refuses with 4xx while it is going down: temporary, as an MTA says.
            if all(400 <= code < 500 for code, _ in exc.recipients.values()):
                return f"451 4.3.0 delivery deferred: {sorted(exc.recipients)}"
            return f"550 5.1.1 delivery refused: {sorted(exc.recipients)}"
        except (OSError, smtplib.SMTPException) as exc:
            return f"451 4.3.0 local delivery failed: {type(exc).__name__}"
        self.delivered += 1
        return "250 2.0.0 delivered"

    def _deliver(self, sender: str, recipients: list[str], content: bytes) -> None:
        for attempt in (1, 2):
            lmtp: smtplib.LMTP | None = getattr(self._local, "lmtp", None)
            if lmtp is None:
                lmtp = smtplib.LMTP("127.0.0.1", self.directory.lmtp_port, timeout=30)
                self._local.lmtp = lmtp
                with self._lock:
                    self._all.append(lmtp)
            try:
                lmtp.sendmail(sender, recipients, content)
                return
            except smtplib.SMTPServerDisconnected:
                self._local.lmtp = None
                if attempt == 2:
                    raise

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for lmtp in connections:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                lmtp.close()
        self._local = threading.local()


class SmtpRelay:
    """The SMTP server in front of a :class:`DovecotServer` (see the module docstring).

    ``process=True`` runs it in a child process (``python -m mesh_common.testing.dovecot
    smtp-relay``), so a benchmark's mail server does not share the interpreter of the code it
    measures; otherwise it runs in a thread of this process."""

    def __init__(
        self,
        dovecot: DovecotServer | MailDirectory,
        *,
        port: int | None = None,
        starttls: bool = True,
        implicit_tls: bool = False,
        process: bool = False,
    ) -> None:
        self.directory = dovecot.directory if isinstance(dovecot, DovecotServer) else dovecot
        self.port = port or free_port()
        # implicit_tls: TLS from the first byte (port 465 style), no STARTTLS inside it.
        self.implicit_tls = implicit_tls
        self.starttls = starttls and not implicit_tls
        self.process = process
        self.handler = _RelayHandler(self.directory)
        self._controller: Any = None
        self._child: subprocess.Popen[bytes] | None = None

    def _authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode(errors="replace")
        password = auth_data.password.decode(errors="replace")
        return AuthResult(success=self.directory.check_password(login, password), handled=False)

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls = self.directory.tls_dir
        ctx.load_cert_chain(str(tls / "cert.pem"), str(tls / "key.pem"))
        return ctx

    @property
    def running(self) -> bool:
        return self._controller is not None or self._child is not None

    def start(self) -> None:
        """Listen on ``port`` (the same one after a stop: an outage ends)."""
        if self.running:
            return
        if self.process:
            self._start_child()
            return
        from aiosmtpd.controller import Controller

        # aiosmtpd warns (log and warning) about AUTH without required TLS on every session;
        # that is this test server's deliberate choice, not news.
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
        controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="localhost",
            authenticator=self._authenticator,
            auth_required=True,
            # Loopback tests log in without TLS too; with STARTTLS offered, clients may upgrade.
            auth_require_tls=False,
            tls_context=self._tls_context() if self.starttls else None,
            ssl_context=self._tls_context() if self.implicit_tls else None,
            ready_timeout=10,
        )
        controller.start()
        self._controller = controller

    def _start_child(self, timeout: float = 20.0) -> None:
        d = self.directory
        args = [
            sys.executable,
            "-m",
            "mesh_common.testing.dovecot",
            "smtp-relay",
            "--port",
            str(self.port),
            "--users",
            str(d.users_dir),
            "--lmtp-port",
            str(d.lmtp_port),
            "--tls-dir",
            str(d.tls_dir),
        ]
        if not self.starttls:
            args.append("--no-starttls")
        if self.implicit_tls:
            args.append("--implicit-tls")
        self._child = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._child.poll() is not None:
                raise DovecotError(f"SMTP relay exited with {self._child.returncode}")
            if _port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise DovecotError(f"SMTP relay did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Close the listener: clients now get "connection refused" (an SMTP outage)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
        self.handler.close()
        child, self._child = self._child, None
        if child is not None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)

    def __enter__(self) -> SmtpRelay:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _serve_relay(argv: list[str] | None = None) -> None:
    """``python -m mesh_common.testing.dovecot smtp-relay ...``: run the SMTP front until
    SIGTERM (used by :class:`SmtpRelay` with ``process=True``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mesh_common.testing.dovecot")
    sub = parser.add_subparsers(dest="cmd", required=True)
    relay = sub.add_parser("smtp-relay")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--users", type=Path, required=True)
    relay.add_argument("--lmtp-port", type=int, required=True)
    relay.add_argument("--tls-dir", type=Path, required=True)
    relay.add_argument("--no-starttls", action="store_true")
    relay.add_argument("--implicit-tls", action="store_true")
    args = parser.parse_args(argv)
    front = SmtpRelay(
        MailDirectory(args.users, args.lmtp_port, args.tls_dir),
        port=args.port,
        starttls=not args.no_starttls,
        implicit_tls=args.implicit_tls,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    front.start()
    try:
        stopped.wait()
    finally:
        front.stop()


__all__ = [
    "CertificateAuthority",
    "DovecotError",
    "DovecotServer",
    "MailAccount",
    "MailDirectory",
    "SmtpRelay",
    "dovecot_binary",
    "free_port",
    "project_config",
    "require_dovecot",
    "self_signed_certificate",
    "ssha512",
    "verify_ssha512",
]


if __name__ == "__main__":
    _serve_relay()
