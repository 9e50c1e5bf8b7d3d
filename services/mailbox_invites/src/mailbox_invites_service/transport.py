"""SMTP (aiosmtplib) and IMAP (aioimaplib) sessions of a technical user, and the connection check.

:class:`MailAccount` is a technical user with its passwords decrypted (as ``SecretStr``). The
sessions apply its TLS options, the same three for both protocols: ``starttls`` (required, never
opportunistic: a server that does not offer it is an error, nothing is sent in plaintext),
``tls`` (implicit TLS: SMTP 465, IMAP 993) or ``none``. Certificates are verified against the
system store plus an optional CA given as PEM, unless verification is switched off.

aioimaplib has no STARTTLS (iroco-co/aioimaplib#1); :func:`_imap_starttls` adds it on asyncio's
own ``loop.start_tls`` (RFC 3501 6.2.1, RFC 2595): the command is only sent when the greeting
announces it, anything the server sends between its "OK" and the handshake is refused (a
plaintext injection), and the capabilities are read again over TLS.

Every failure becomes a :class:`MailError` whose message says what failed in words an operator
can act on ("IMAP login as ... refused by the server", "TLS certificate of ... not trusted",
"... does not offer STARTTLS", "cannot connect to ...: connection refused"); no message ever
contains a password. Every IMAP command is bounded by the account's timeout, and a connection
the server drops fails the command waiting on it at once. This module knows nothing about
invitations or the database.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any, Literal

import aioimaplib
import aiosmtplib
from pydantic import SecretStr

SmtpSecurity = Literal["starttls", "tls", "none"]
ImapSecurity = Literal["starttls", "tls", "none"]
LOGIN_TIMEOUT = 20.0


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
    if "STARTTLS extension not supported" in str(exc):
        return f"{protocol}: {where} does not offer STARTTLS (required; nothing was sent)"
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


class _ImapProtocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol with two additions: a dropped connection fails the commands
    waiting for an answer at once (aioimaplib leaves them waiting, some without a timeout), and
    lines arriving between the STARTTLS "OK" and the TLS handshake are refused, not parsed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, None)
        self.lost: str | None = None
        self.upgrading = False  # the server said OK to STARTTLS; the handshake has not begun
        self.injected = False  # ... and it sent something in that window

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = f"connection closed by the server{f' ({exc})' if exc else ''}"
        waiting = [self.pending_sync_command, *self.pending_async_commands.values()]
        for command in waiting:
            if command is not None and command.response.result in ("Init", "Pending"):
                # aioimaplib's own way of failing a command (as on its timeout): wait() raises.
                command._exception = aioimaplib.Abort(self.lost)
                command.close(self.lost.encode(), "KO")
        super().connection_lost(exc)

    def _response_done(self, line: bytes) -> None:
        pending = self.pending_sync_command
        starttls = pending is not None and pending.name == "STARTTLS"
        super()._response_done(line)
        if starttls and line.split(b" ", 2)[1:2] == [b"OK"]:
            self.upgrading = True

    def _handle_line(self, line: bytes, current_cmd: Any) -> Any:
        if self.upgrading:
            self.injected = self.injected or bool(line)
            return None
        return super()._handle_line(line, current_cmd)


class _ImapClient(aioimaplib.IMAP4):  # type: ignore[misc]
    """``aioimaplib.IMAP4`` on :class:`_ImapProtocol` (plaintext, or implicit TLS with
    ``ssl_context``)."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop or asyncio.get_running_loop()
        self.protocol = _ImapProtocol(local_loop)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(
                lambda: self.protocol,
                host,
                port,
                ssl=ssl_context,
                ssl_handshake_timeout=self.timeout if ssl_context is not None else None,
            )
        )


async def _imap_starttls(client: _ImapClient, account: MailAccount) -> None:
    """Upgrade a fresh connection (state NONAUTH) to TLS; raises :class:`MailError`."""
    a = account
    where = _where(a.imap_host, a.imap_port)
    protocol = client.protocol
    assert isinstance(protocol, _ImapProtocol)
    if protocol.state != aioimaplib.NONAUTH or "STARTTLS" not in protocol.capabilities:
        already = (
            " (it logged the client in before TLS: PREAUTH)" if protocol.state != "NONAUTH" else ""
        )
        raise MailError(
            f"IMAP: {where} does not offer STARTTLS{already} (required; not logging in without "
            "TLS: choose security 'tls' for an IMAPS port or 'none' to allow plaintext)",
            protocol="IMAP",
            permanent=True,
        )
    command = aioimaplib.Command(
        "STARTTLS", protocol.new_tag(), loop=protocol.loop, timeout=a.timeout_seconds
    )
    try:
        res = await protocol.execute(command)
    except aioimaplib.AioImapException as exc:
        raise MailError(f"IMAP: STARTTLS with {where} failed ({exc})", protocol="IMAP") from None
    if res.result != "OK":
        raise MailError(f"IMAP: {where} refused STARTTLS ({_text(res.lines)})", protocol="IMAP")
    if protocol.injected or protocol.incomplete_line:
        raise MailError(
            f"IMAP: {where} sent data after accepting STARTTLS, before the TLS handshake "
            "(a plaintext injection); connection dropped",
            protocol="IMAP",
            permanent=True,
        )
    transport = protocol.transport
    # uvloop's transports implement the interface without subclassing asyncio.Transport.
    assert transport is not None and hasattr(transport, "abort")
    try:
        tls_transport = await protocol.loop.start_tls(
            transport,
            protocol,
            a.tls_context(),
            server_hostname=a.imap_host,
            ssl_handshake_timeout=a.timeout_seconds,
        )
    except (OSError, TimeoutError, ConnectionError) as exc:
        transport.abort()
        raise MailError(
            explain(
                exc, protocol="IMAP", host=a.imap_host, port=a.imap_port, timeout=a.timeout_seconds
            ),
            protocol="IMAP",
        ) from None
    if tls_transport is None:  # pragma: no cover - only for a closed transport
        raise MailError(f"IMAP: {where} closed the connection during STARTTLS", protocol="IMAP")
    protocol.transport = tls_transport
    protocol.upgrading = False
    # RFC 3501 6.2.1: what the server announced before TLS is forgotten and asked again.
    protocol.capabilities = set()
    await asyncio.wait_for(protocol.capability(), a.timeout_seconds)


class ImapSession:
    """One logged-in IMAP connection of a technical user. Every command is bounded by the
    account's timeout; any failure is a :class:`MailError` (``session_broken`` when the
    connection is gone or in an unknown state)."""

    def __init__(self, account: MailAccount, client: aioimaplib.IMAP4) -> None:
        self.account = account
        self.client = client

    def _fail(self, what: str, response: Any) -> MailError:
        return MailError(f"IMAP: {what} ({_text(response.lines)})", protocol="IMAP")

    async def _call(self, what: str, command: Awaitable[Any], *, size: int = 1) -> Any:
        """Await ``command`` within the timeout (longer for commands on ``size`` messages)."""
        a = self.account
        where = _where(a.imap_host, a.imap_port)
        limit = a.timeout_seconds * max(1.0, size / 50)
        lost = getattr(self.client.protocol, "lost", None)
        if lost is not None:  # gone already: sending the command would wait for nothing
            if asyncio.iscoroutine(command):
                command.close()
            raise MailError(f"IMAP: {what}: {lost} ({where})", protocol="IMAP", session_broken=True)
        try:
            async with asyncio.timeout(limit):
                return await command
        except TimeoutError:
            raise MailError(
                f"IMAP: {what}: no answer from {where} within {limit:g} s",
                protocol="IMAP",
                session_broken=True,
            ) from None
        except (aioimaplib.AioImapException, OSError) as exc:
            lost = getattr(self.client.protocol, "lost", None)
            raise MailError(
                f"IMAP: {what}: {lost or exc} ({where})", protocol="IMAP", session_broken=True
            ) from None

    async def ensure_folder(self, name: str) -> None:
        """Create ``name`` unless it exists (an existing folder is not an error)."""
        res = await self._call("CREATE", self.client.create(quote_folder(name)))
        if res.result == "OK":
            return
        listing = await self._call("LIST", self.client.list('""', quote_folder(name)))
        if listing.result == "OK" and any(
            name.encode() in bytes(line) for line in listing.lines[:-1]
        ):
            return
        raise self._fail(f"cannot create folder {name!r}", res)

    async def folder_exists(self, name: str) -> bool:
        listing = await self._call("LIST", self.client.list('""', quote_folder(name)))
        return listing.result == "OK" and len(listing.lines) > 1

    async def select(self, name: str) -> None:
        res = await self._call("SELECT", self.client.select(quote_folder(name)))
        if res.result != "OK":
            raise self._fail(f"folder {name!r} cannot be opened", res)

    async def uids(self) -> list[int]:
        """UIDs of every message in the selected folder, oldest first."""
        res = await self._call("SEARCH", self.client.uid_search("ALL", charset=None))
        if res.result != "OK":
            raise self._fail("SEARCH failed", res)
        first = bytes(res.lines[0]) if res.lines else b""
        return sorted(int(x) for x in first.split() if x.isdigit())

    async def fetch(self, uids: list[int]) -> list[tuple[int, bytes]]:
        """(uid, raw message) for ``uids`` in one UID FETCH; read with BODY.PEEK so no flag
        changes."""
        if not uids:
            return []
        res = await self._call(
            "FETCH", self.client.uid("fetch", uid_set(uids), "(UID BODY.PEEK[])"), size=len(uids)
        )
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
        uids_ = uid_set(uids)
        target = quote_folder(folder)
        if self.client.has_capability("MOVE"):
            res = await self._call("MOVE", self.client.uid("move", uids_, target), size=len(uids))
            if res.result != "OK":
                raise self._fail(f"cannot move messages to {folder!r}", res)
            return
        res = await self._call("COPY", self.client.uid("copy", uids_, target), size=len(uids))
        if res.result != "OK":
            raise self._fail(f"cannot copy messages to {folder!r}", res)
        res = await self._call(
            "STORE", self.client.uid("store", uids_, "+FLAGS.SILENT", r"(\Deleted)")
        )
        if res.result != "OK":
            raise self._fail("cannot flag moved messages", res)
        if self.client.has_capability("UIDPLUS"):
            await self._call("EXPUNGE", self.client.uid("expunge", uids_))
        # Without UIDPLUS the copies stay flagged in the source until the next EXPUNGE by a
        # client; the originals are kept, which is the safe direction.


def uid_set(uids: list[int]) -> str:
    """An IMAP sequence set of UIDs with runs collapsed ("3:7,9,12:13"): short commands."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


async def _imap_connect(account: MailAccount) -> _ImapClient:
    """Connect and read the greeting; STARTTLS or implicit TLS as configured."""
    a = account
    client = _ImapClient(
        host=a.imap_host,
        port=a.imap_port,
        timeout=a.timeout_seconds,
        ssl_context=a.tls_context() if a.imap_security == "tls" else None,
    )
    try:
        try:
            await client.wait_hello_from_server()
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            raise MailError(
                explain(
                    exc,
                    protocol="IMAP",
                    host=a.imap_host,
                    port=a.imap_port,
                    timeout=a.timeout_seconds,
                ),
                protocol="IMAP",
            ) from None
        if a.imap_security == "starttls":
            await _imap_starttls(client, a)
    except BaseException:
        _abort(client)
        raise
    return client


def _abort(client: aioimaplib.IMAP4) -> None:
    transport = getattr(client.protocol, "transport", None)
    if transport is not None:
        transport.abort()
    elif not client._client_task.done():
        client._client_task.cancel()


@asynccontextmanager
async def imap_session(account: MailAccount) -> AsyncIterator[ImapSession]:
    """Connect (TLS as configured), log in, yield a session, LOGOUT."""
    a = account
    client = await _imap_connect(a)
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
        protocol = client.protocol
        if getattr(protocol, "lost", None) is None:
            try:
                await asyncio.wait_for(client.logout(), a.timeout_seconds)
            except Exception:  # noqa: S110 - closing a connection we are done with
                pass
        _abort(client)


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
