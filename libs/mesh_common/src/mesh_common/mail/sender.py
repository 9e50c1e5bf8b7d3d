"""The mail sender: a background worker that delivers queued mail over SMTP (aiosmtplib).

Each cycle it fails mail lost by a dead replica in its last attempt, claims due mail (see
:class:`~mesh_common.mail.queue.MailOutbox`), builds each message and sends it, up to
``MAIL_CONCURRENCY`` SMTP sessions at once. Outcomes:

- accepted by the server: ``sent`` (recipients the server refused while accepting others are
  noted in ``last_error``);
- a permanent refusal (5xx for the recipients, the sender or the message data): ``failed`` at
  once, no retry can help;
- anything else (connection refused, timeout, 4xx, TLS or login problems): retried with
  exponential backoff (``MAIL_BACKOFF_SECONDS`` doubling up to ``MAIL_BACKOFF_MAX_SECONDS``),
  ``failed`` after ``MAIL_MAX_ATTEMPTS``.

Sealed mail (one naming sensitive values, see :mod:`mesh_common.mail.sealing`) is opened with
the sender's SecretBox just before it is sent; without the key, or with a key that does not open
it, it fails with that reason and keeps its sealed copy for a retry. Once sent, the sealed copy
is erased.

Failed mail stays visible in the outbox until staff retry it. Delivery is at-least-once: a
replica dying after the server accepted a mail but before recording it sends it again with the
same Message-ID. It wakes at once when mail is queued in-process and otherwise polls. The SMTP
password is passed to aiosmtplib only and never logged. This module must not define tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import time
import uuid
import weakref
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
from prometheus_client import CollectorRegistry, Counter, Gauge

from mesh_common.db import Database
from mesh_common.mail.message import build_message, message_id_for
from mesh_common.mail.models import OutgoingMail, addr_spec
from mesh_common.mail.queue import ClaimedMail, MailOutbox
from mesh_common.mail.settings import MailSettings
from mesh_common.mail.tables import STATUSES, MailTables
from mesh_common.secrets import SecretBox

log = logging.getLogger("mesh.mail")


class MailMetrics:
    """The sender's Prometheus metrics on a service's registry (created once per registry)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, MailMetrics] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.sent = Counter(
            "mail_sent_total", "Mail accepted by the SMTP server", ["category"], registry=registry
        )
        self.failed = Counter(
            "mail_failed_total",
            "Mail given up (status failed)",
            ["category", "reason"],
            registry=registry,
        )
        self.attempt_errors = Counter(
            "mail_attempt_errors_total",
            "Failed delivery attempts",
            ["category", "kind"],
            registry=registry,
        )
        self.queue = Gauge(
            "mail_queue_depth", "Mail in the queue by status", ["status"], registry=registry
        )
        self.oldest_pending = Gauge(
            "mail_oldest_pending_age_seconds",
            "Age of the oldest mail not yet sent",
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None) -> MailMetrics:
        if registry is None:
            return cls(None)
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics


@dataclass(frozen=True)
class SendError:
    """Why an attempt failed and whether trying again can help."""

    permanent: bool
    message: str


def classify(exc: BaseException) -> SendError:
    """Sort an SMTP failure into permanent (no retry) or transient (retry with backoff)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        permanent = bool(codes) and all(code >= 500 for code in codes)
        return SendError(permanent, f"all recipients refused: {detail}")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return SendError(exc.code >= 500, f"sender {exc.sender} refused: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return SendError(exc.code >= 500, f"message refused: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Wrong credentials are a configuration problem: retried (bounded) until someone fixes it.
        return SendError(False, f"SMTP login failed: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendError(False, f"SMTP error: {exc.code} {exc.message}")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return SendError(False, f"TLS error: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException | OSError | TimeoutError):
        return SendError(False, f"{type(exc).__name__}: {exc}")
    return SendError(False, f"unexpected error: {type(exc).__name__}: {exc}")


class MailSender:
    """Background worker delivering one service's queued mail (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        tables: MailTables,
        settings: MailSettings,
        *,
        registry: CollectorRegistry | None = None,
        holder: str | None = None,
        stop_grace_seconds: float = 10.0,
        purge_interval_seconds: float = 3600.0,
        box: SecretBox | None = None,
    ) -> None:
        """``box``: the service's SecretBox, needed to send mail queued with sensitive values."""
        self.settings = settings
        self.outbox = MailOutbox(db, tables, box)
        self.tables = tables
        self.metrics = MailMetrics.for_registry(registry)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_grace_seconds = stop_grace_seconds
        self.purge_interval_seconds = purge_interval_seconds
        self.last_error: str | None = None
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._semaphore = asyncio.Semaphore(settings.mail_concurrency)
        self._next_purge = 0.0
        if settings.smtp_username and settings.smtp_security == "none":
            log.warning(
                "SMTP login without TLS: the password crosses the network in clear; "
                "set SMTP_SECURITY=starttls or tls"
            )

    # ------------------------------------------------------------------ lifecycle

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self.tables.subscribe(self.wake)
        self._task = asyncio.create_task(self._run(), name="mail-sender")

    async def stop(self) -> None:
        """Finish the attempts under way (within ``stop_grace_seconds``), then stop."""
        self._stopping = True
        self.tables.unsubscribe(self.wake)
        self.wake()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.stop_grace_seconds)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wakeup.clear()
            try:
                claimed = await self.run_once()
                failures = 0
            except Exception as exc:
                # The database is away (or similar): keep trying, never die, say so once a cycle.
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("mail sender cycle failed: %s", self.last_error)
                await self._sleep(min(self.settings.mail_poll_seconds, 0.5 * 2**failures))
                continue
            if claimed >= self.settings.mail_batch_size:
                continue  # more may be due right now
            await self._sleep(await self._idle_delay())

    async def _idle_delay(self) -> float:
        delay = self.settings.mail_poll_seconds
        with contextlib.suppress(Exception):
            due = await self.outbox.next_due()
            if due is not None:
                delay = min(delay, max(0.02, due - time.time()))
        return delay

    async def _sleep(self, seconds: float) -> None:
        if self._stopping or seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    # ------------------------------------------------------------------ one cycle

    async def run_once(self) -> int:
        """One cycle: expire lost attempts, claim a batch, send it; returns how many it claimed."""
        s = self.settings
        now = time.time()
        await self.outbox.expire_lost(max_attempts=s.mail_max_attempts, now=now)
        claimed = await self.outbox.claim(
            holder=self.holder,
            limit=s.mail_batch_size,
            lease_seconds=s.mail_claim_seconds,
            max_attempts=s.mail_max_attempts,
        )
        if claimed:
            results = await asyncio.gather(
                *(self._attempt(c) for c in claimed), return_exceptions=True
            )
            for c, result in zip(claimed, results, strict=True):
                if isinstance(result, Exception):
                    # Not recorded (e.g. the database went away): the lease expires and the
                    # mail is tried again, as one more attempt.
                    log.warning("mail %s: outcome not recorded: %r", c.id, result)
        await self._housekeeping(now)
        return len(claimed)

    async def _housekeeping(self, now: float) -> None:
        stats = await self.outbox.stats()
        for status in STATUSES:
            self.metrics.queue.labels(status).set(stats.counts.get(status, 0))
        self.metrics.oldest_pending.set(stats.oldest_pending_age)
        if self.settings.mail_retention_days > 0 and now >= self._next_purge:
            self._next_purge = now + self.purge_interval_seconds
            purged = await self.outbox.purge_sent(now - self.settings.mail_retention_days * 86400)
            if purged:
                log.info("purged %d sent mail past the retention period", purged)

    async def _attempt(self, claimed: ClaimedMail) -> None:
        async with self._semaphore:
            done = False
            try:
                await self._deliver(claimed)
                done = True
            finally:
                if not done and self._stopping:
                    # Cancelled at shutdown before the outcome was recorded: hand it back.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.outbox.release(claimed.id, self.holder))

    async def _deliver(self, claimed: ClaimedMail) -> None:
        s = self.settings
        mail = claimed.mail
        if mail is None:
            await self._fail(claimed, None, claimed.invalid_reason or "invalid mail", "invalid")
            return
        sender = mail.from_address or s.mail_from
        message_id = claimed.message_id or message_id_for(claimed.id, sender)
        try:
            message = build_message(mail, message_id=message_id, default_from=s.mail_from)
            refused = await self._smtp_send(message, addr_spec(sender), mail)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = classify(exc)
            kind = "permanent" if error.permanent else "transient"
            self.metrics.attempt_errors.labels(claimed.category, kind).inc()
            if error.permanent:
                await self._fail(claimed, message_id, error.message, "permanent")
            elif claimed.attempt >= s.mail_max_attempts:
                await self._fail(
                    claimed,
                    message_id,
                    f"gave up after {claimed.attempt} attempts; last: {error.message}",
                    "attempts",
                )
            else:
                delay = min(
                    s.mail_backoff_max_seconds, s.mail_backoff_seconds * 2 ** (claimed.attempt - 1)
                )
                delay *= random.uniform(0.8, 1.0)  # replicas do not retry in lockstep
                log.info(
                    "mail %s attempt %d failed, retry in %.0fs: %s",
                    claimed.id,
                    claimed.attempt,
                    delay,
                    error.message,
                )
                await self.outbox.mark_retry(
                    claimed.id,
                    self.holder,
                    error=f"attempt {claimed.attempt}: {error.message}",
                    next_attempt_at=time.time() + delay,
                    message_id=message_id,
                )
            return
        note = (
            "accepted, but refused for: "
            + "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in refused.items())
            if refused
            else None
        )
        await self.outbox.mark_sent(claimed.id, self.holder, message_id=message_id, note=note)
        self.metrics.sent.labels(claimed.category).inc()
        log.info("mail %s sent (%s, attempt %d)", claimed.id, message_id, claimed.attempt)

    async def _fail(
        self, claimed: ClaimedMail, message_id: str | None, error: str, reason: str
    ) -> None:
        await self.outbox.mark_failed(claimed.id, self.holder, error=error, message_id=message_id)
        self.metrics.failed.labels(claimed.category, reason).inc()
        log.warning("mail %s failed (%s): %s", claimed.id, reason, error)

    async def _smtp_send(
        self, message: EmailMessage, sender: str, mail: OutgoingMail
    ) -> dict[str, aiosmtplib.SMTPResponse]:
        s = self.settings
        refused, _ = await aiosmtplib.send(
            message,
            sender=sender,
            recipients=mail.envelope_recipients,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            local_hostname=s.smtp_local_hostname,
            timeout=s.smtp_timeout,
            use_tls=s.smtp_security == "tls",
            # Explicit False: aiosmtplib would otherwise upgrade opportunistically (and fail on
            # servers advertising STARTTLS with a certificate we cannot verify).
            start_tls=s.smtp_security == "starttls",
            validate_certs=s.smtp_validate_certs,
            cert_bundle=str(s.smtp_ca_file) if s.smtp_ca_file else None,
        )
        return refused
