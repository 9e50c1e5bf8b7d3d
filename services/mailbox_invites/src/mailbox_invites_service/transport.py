"""SMTP (aiosmtplib) and IMAP (aioimaplib) sessions of a technical user, and the connection check.

:class:`MailAccount` is a technical user with its passwords decrypted (as ``SecretStr``). The
sessions apply its TLS options: SMTP ``starttls`` (required, not opportunistic), ``tls``
(implicit, port 465) or ``none``; IMAP ``tls`` (implicit, port 993) or ``none`` (aioimaplib has
no STARTTLS); certificates are verified against the system store plus an optional CA given as
PEM, unless verification is switched off. Every failure becomes a :class:`MailError` whose
message says what failed in words an operator can act on ("IMAP login as ... refused by the
server", "TLS certificate of ... not trusted", "cannot connect to ...: connection refused");
no message ever contains a password. This module knows nothing about invitations or the
database.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any, Literal

import aioimaplib
import aiosmtplib
from pydantic import SecretStr

SmtpSecurity = Literal["starttls", "tls", "none"]
LOGIN_TIMEOUT = 20.0
ImapSecurity = Literal["tls", "none"]


class MailError(Exception):
    """A mail server operation failed; ``str()`` is the operator-facing explanation."""

    def __init__(
        self,
        message: str,
        *,
        protocol: str,
        permanent: bool = False,
        session_broken: bool = False,
    ) -> None:
        super().__init__(message)
        self.protocol = protocol
        # The server refused for good (5xx, bad credentials): retrying the same will not help.
        self.permanent = permanent
        # The connection is unusable (dropped, timed out, 421): later messages need a new one.
        self.session_broken = session_broken


@dataclass(frozen=True)
class MailAccount:
    """A technical user as the sessions need it (passwords decrypted, never logged)."""

    id: int
    name: str
    display_name: str
    email: str
    smtp_host: str
    smtp_port: int
    smtp_security: SmtpSecurity
    smtp_username: str | None
    smtp_password: SecretStr | None
    imap_host: str
    imap_port: int
    imap_security: ImapSecurity
    imap_username: str
    imap_password: SecretStr
    imap_folder: str
    processed_folder: str
    ignored_folder: str
    tls_verify: bool
    tls_ca_pem: str | None
    timeout_seconds: float

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context of these options (built once per option set: loading the
        system's CA store takes a noticeable moment)."""
        return _tls_context(self.tls_verify, self.tls_ca_pem)


@functools.lru_cache(maxsize=32)
def _tls_context(verify: bool, ca_pem: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_pem:
        ctx.load_verify_locations(cadata=ca_pem)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _where(host: str, port: int) -> str:
    return f"{host}:{port}"


def explain(exc: BaseException, *, protocol: str, host: str, port: int, timeout: float) -> str:
    """An operator-facing sentence for a connection-level failure."""
    where = _where(host, port)
    cause: BaseException | None = exc
    # aiosmtplib wraps the socket error; look through the chain for the real cause.
    seen = 0
    while cause is not None and seen < 5:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "verification failed"
            return f"{protocol}: TLS certificate of {host} is not trusted ({reason})"
        if isinstance(cause, ssl.SSLError):
            return f"{protocol}: TLS handshake with {where} failed ({cause.reason or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return f"{protocol}: cannot connect to {where}: connection refused"
        if isinstance(cause, socket.gaierror):
            return f"{protocol}: cannot resolve host {host!r}"
        if isinstance(cause, TimeoutError | aiosmtplib.SMTPTimeoutError):
            return f"{protocol}: no answer from {where} within {timeout:g} s"
        if isinstance(cause, OSError) and cause.strerror:
            return f"{protocol}: cannot connect to {where}: {cause.strerror.lower()}"
        cause = cause.__cause__ or cause.__context__
        seen += 1
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        # aiosmtplib words a refused connection as "Error connecting to ...: [Errno 111] ..."
        if "111" in str(exc) or "refused" in str(exc).lower():
            return f"{protocol}: cannot connect to {where}: connection refused"
        return f"{protocol}: cannot connect to {where}: {exc}"
    return f"{protocol}: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- SMTP


class SmtpSession:
    """One authenticated SMTP connection; :meth:`send` delivers one message to one mailbox."""

    def __init__(self, account: MailAccount, client: aiosmtplib.SMTP) -> None:
        self.account = account
        self.client = client

    async def send(self, message: Message | bytes, recipient: str) -> str:
        """Send ``message`` (or its CRLF bytes) from the technical user to ``recipient``;
        returns the server's reply."""
        try:
            if isinstance(message, bytes):
                _, reply = await self.client.sendmail(self.account.email, [recipient], message)
            else:
                _, reply = await self.client.send_message(
                    message, sender=self.account.email, recipients=[recipient]
                )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            detail = "; ".join(f"{e.code} {e.message}" for e in exc.recipients)
            raise MailError(
                f"SMTP: recipient {recipient} refused ({detail})", protocol="SMTP", permanent=True
            ) from None
        except aiosmtplib.SMTPSenderRefused as exc:
            raise MailError(
                f"SMTP: sender {self.account.email} refused ({exc.code} {exc.message})",
                protocol="SMTP",
                permanent=True,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise MailError(
                f"SMTP: message refused ({exc.code} {exc.message})",
                protocol="SMTP",
                permanent=500 <= exc.code < 600,
                # 421: the server closes the session (e.g. a messages-per-connection limit).
                session_broken=exc.code == 421,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            a = self.account
            raise MailError(
                explain(
                    exc,
                    protocol="SMTP",
                    host=a.smtp_host,
                    port=a.smtp_port,
                    timeout=a.timeout_seconds,
                ),
                protocol="SMTP",
                session_broken=True,
            ) from None
        return reply


@asynccontextmanager
async def smtp_session(account: MailAccount) -> AsyncIterator[SmtpSession]:
    """Connect (TLS as configured), log in, yield a session, QUIT."""
    a = account
    client = aiosmtplib.SMTP(
        hostname=a.smtp_host,
        port=a.smtp_port,
        use_tls=a.smtp_security == "tls",
        # True: STARTTLS is required (a server that does not offer it is an error), never
        # silently skipped; False: plaintext on purpose.
        start_tls=a.smtp_security == "starttls",
        tls_context=a.tls_context() if a.smtp_security != "none" else None,
        timeout=a.timeout_seconds,
    )
    try:
        await client.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise MailError(
            explain(
                exc, protocol="SMTP", host=a.smtp_host, port=a.smtp_port, timeout=a.timeout_seconds
            ),
            protocol="SMTP",
        ) from None
    try:
        if a.smtp_username:
            password = a.smtp_password.get_secret_value() if a.smtp_password else ""
            try:
                await client.login(a.smtp_username, password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                raise MailError(
                    f"SMTP: login as {a.smtp_username} refused by the server "
                    f"({exc.code} {exc.message})",
                    protocol="SMTP",
                    permanent=True,
                ) from None
            except aiosmtplib.SMTPException as exc:
                raise MailError(
                    f"SMTP: login as {a.smtp_username} not possible ({exc})", protocol="SMTP"
                ) from None
        yield SmtpSession(a, client)
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


# --------------------------------------------------------------------------- IMAP

_UID = re.compile(rb"UID (\d+)")
_FOLDER = re.compile(r"^[\w .\-/]{1,200}$")


def quote_folder(name: str) -> str:
    """An IMAP quoted string for a folder name (names are validated to a safe alphabet)."""
    if not _FOLDER.match(name):
        raise ValueError(f"unsupported folder name {name!r}")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(lines: list[Any]) -> str:
    return " ".join(
        bytes(line).decode(errors="replace") if isinstance(line, bytes | bytearray) else str(line)
        for line in lines
    ).strip()


class ImapSession:
    """One logged-in IMAP connection of a technical user."""

    def __init__(self, account: MailAccount, client: aioimaplib.IMAP4) -> None:
        self.account = account
        self.client = client

    def _fail(self, what: str, response: Any) -> MailError:
        return MailError(f"IMAP: {what} ({_text(response.lines)})", protocol="IMAP")

    async def ensure_folder(self, name: str) -> None:
        """Create ``name`` unless it exists (an existing folder is not an error)."""
        res = await self.client.create(quote_folder(name))
        if res.result == "OK":
            return
        listing = await self.client.list('""', quote_folder(name))
        if listing.result == "OK" and any(
            name.encode() in bytes(line) for line in listing.lines[:-1]
        ):
            return
        raise self._fail(f"cannot create folder {name!r}", res)

    async def folder_exists(self, name: str) -> bool:
        listing = await self.client.list('""', quote_folder(name))
        return listing.result == "OK" and len(listing.lines) > 1

    async def select(self, name: str) -> None:
        res = await self.client.select(quote_folder(name))
        if res.result != "OK":
            raise self._fail(f"folder {name!r} cannot be opened", res)

    async def uids(self) -> list[int]:
        """UIDs of every message in the selected folder, oldest first."""
        res = await self.client.uid_search("ALL", charset=None)
        if res.result != "OK":
            raise self._fail("SEARCH failed", res)
        first = bytes(res.lines[0]) if res.lines else b""
        return sorted(int(x) for x in first.split() if x.isdigit())

    async def fetch(self, uids: list[int]) -> list[tuple[int, bytes]]:
        """(uid, raw message) for ``uids``; read with BODY.PEEK so no flag changes."""
        if not uids:
            return []
        res = await self.client.uid("fetch", ",".join(map(str, uids)), "(UID BODY.PEEK[])")
        if res.result != "OK":
            raise self._fail("FETCH failed", res)
        out: list[tuple[int, bytes]] = []
        pending_uid: int | None = None
        for line in res.lines:
            if isinstance(line, bytearray):
                if pending_uid is not None:
                    out.append((pending_uid, bytes(line)))
                pending_uid = None
            else:
                m = _UID.search(bytes(line))
                if m:
                    pending_uid = int(m.group(1))
        return out

    async def move(self, uids: list[int], folder: str) -> None:
        """Move messages (UID MOVE, RFC 6851; COPY + flag + UID EXPUNGE where MOVE is missing).

        Nothing is ever deleted without a copy having been made first."""
        if not uids:
            return
        uid_set = ",".join(map(str, uids))
        target = quote_folder(folder)
        if self.client.has_capability("MOVE"):
            res = await self.client.uid("move", uid_set, target)
            if res.result != "OK":
                raise self._fail(f"cannot move messages to {folder!r}", res)
            return
        res = await self.client.uid("copy", uid_set, target)
        if res.result != "OK":
            raise self._fail(f"cannot copy messages to {folder!r}", res)
        res = await self.client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Deleted)")
        if res.result != "OK":
            raise self._fail("cannot flag moved messages", res)
        if self.client.has_capability("UIDPLUS"):
            await self.client.uid("expunge", uid_set)
        # Without UIDPLUS the copies stay flagged in the source until the next EXPUNGE by a
        # client; the originals are kept, which is the safe direction.


@asynccontextmanager
async def imap_session(account: MailAccount) -> AsyncIterator[ImapSession]:
    """Connect (TLS as configured), log in, yield a session, LOGOUT."""
    a = account
    try:
        if a.imap_security == "tls":
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                host=a.imap_host,
                port=a.imap_port,
                timeout=a.timeout_seconds,
                ssl_context=a.tls_context(),
            )
        else:
            client = aioimaplib.IMAP4(host=a.imap_host, port=a.imap_port, timeout=a.timeout_seconds)
        await client.wait_hello_from_server()
    except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
        raise MailError(
            explain(
                exc, protocol="IMAP", host=a.imap_host, port=a.imap_port, timeout=a.timeout_seconds
            ),
            protocol="IMAP",
        ) from None
    try:
        # Servers answer a failed login only after a penalty that grows with repeated failures
        # (Dovecot: up to 15 s); wait for that answer rather than report a vague timeout.
        client.timeout = max(a.timeout_seconds, LOGIN_TIMEOUT)
        try:
            res = await client.login(a.imap_username, a.imap_password.get_secret_value())
        except (TimeoutError, aioimaplib.AioImapException) as exc:
            raise MailError(
                f"IMAP: login as {a.imap_username} got no answer within {client.timeout:g} s "
                f"({type(exc).__name__})",
                protocol="IMAP",
            ) from None
        finally:
            client.timeout = a.timeout_seconds
        if res.result != "OK":
            raise MailError(
                f"IMAP: login as {a.imap_username} refused by the server ({_text(res.lines)})",
                protocol="IMAP",
                permanent=True,
            )
        yield ImapSession(a, client)
    finally:
        try:
            await asyncio.wait_for(client.logout(), a.timeout_seconds)
        except Exception:  # noqa: S110 - closing a connection we are done with
            pass


# --------------------------------------------------------------------------- check


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "latency_ms": self.latency_ms}


async def check_smtp(account: MailAccount) -> ProbeResult:
    """Connect, TLS as configured, log in and NOOP; never raises."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(account.timeout_seconds * 2 + 1):
            async with smtp_session(account) as session:
                await session.client.noop()
        login = f", logged in as {account.smtp_username}" if account.smtp_username else ""
        message = (
            f"SMTP: connected to {_where(account.smtp_host, account.smtp_port)} "
            f"({account.smtp_security}){login}"
        )
        ok = True
    except MailError as exc:
        ok, message = False, str(exc)
    except TimeoutError:
        ok = False
        message = f"SMTP: no answer from {_where(account.smtp_host, account.smtp_port)} in time"
    return ProbeResult(ok, message, round((time.perf_counter() - started) * 1000, 1))


async def check_imap(account: MailAccount) -> ProbeResult:
    """Connect, TLS as configured, log in and open the reply folder; never raises."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(account.timeout_seconds * 2 + LOGIN_TIMEOUT):
            async with imap_session(account) as session:
                await session.select(account.imap_folder)
                missing = [
                    f
                    for f in (account.processed_folder, account.ignored_folder)
                    if not await session.folder_exists(f)
                ]
        message = (
            f"IMAP: logged in to {_where(account.imap_host, account.imap_port)} "
            f"({account.imap_security}) as {account.imap_username}, "
            f"folder {account.imap_folder!r} opened"
        )
        if missing:
            message += f"; the first run creates {', '.join(repr(m) for m in missing)}"
        ok = True
    except MailError as exc:
        ok, message = False, str(exc)
    except TimeoutError:
        ok = False
        message = f"IMAP: no answer from {_where(account.imap_host, account.imap_port)} in time"
    return ProbeResult(ok, message, round((time.perf_counter() - started) * 1000, 1))
