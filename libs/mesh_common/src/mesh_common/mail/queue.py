"""The outgoing-mail queue: :func:`enqueue` in the caller's transaction, and :class:`MailOutbox`,
the queries and state changes on queued mail that the sender and the staff API share.

``enqueue`` only INSERTs (mail row and attachments) into the caller's session or connection, so
the mail commits or rolls back with the business change that caused it (a transactional
outbox): a booking and its confirmation mail exist together or not at all. After the commit the
service's senders are woken in-process; other replicas find the mail on their next poll.

Claiming is safe with several replicas: on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, elsewhere
with a conditional ``UPDATE`` that only one writer can win. A claimed row carries a lease
(``locked_until``); a replica that dies while sending loses the row to another after it expires,
which counts as another attempt.

A mail naming ``sensitive`` values is stored redacted with its real content sealed
(:mod:`mesh_common.mail.sealing`): ``enqueue`` needs the service's SecretBox for it, the sender's
outbox opens the seal when it claims the mail, and ``mark_sent`` erases the sealed copy. Staff
views only ever read the redacted columns. This module must not talk SMTP or commit a caller's
transaction.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mesh_common.db import Database
from mesh_common.errors import Conflict, NotFound
from mesh_common.mail.models import Attachment, OutgoingMail
from mesh_common.mail.sealing import seal, unseal
from mesh_common.mail.tables import FAILED, PENDING, SENDING, SENT, MailTables
from mesh_common.secrets import SecretBox, SecretsError

Executor = AsyncSession | AsyncConnection
log = logging.getLogger("mesh.mail")


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _epoch(value: datetime | float | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("not_before must be timezone-aware")
        return value.timestamp()
    return float(value)


async def enqueue(
    conn: Executor,
    tables: MailTables,
    mail: OutgoingMail,
    *,
    not_before: datetime | None = None,
    box: SecretBox | None = None,
) -> str:
    """Queue ``mail`` in ``conn``'s transaction; returns the mail's id (``/mail/outbox/{id}``).

    Nothing is sent before the caller commits. ``not_before`` delays the first attempt. A mail
    with ``sensitive`` values needs ``box`` (the service's SecretBox): they are stored redacted
    and the real content sealed; without a box this raises rather than store them in the clear.
    """
    now = time.time()
    mail_id = str(uuid.uuid4())
    stored = seal(mail, mail_id, box)
    await conn.execute(
        tables.queue.insert().values(
            id=mail_id,
            status=PENDING,
            category=mail.category,
            ref=mail.ref,
            from_address=mail.from_address,
            to_addresses=list(mail.to),
            cc_addresses=list(mail.cc),
            bcc_addresses=list(mail.bcc),
            reply_to=list(mail.reply_to),
            subject=stored.subject,
            text_body=stored.text,
            html_body=stored.html,
            headers=stored.headers,
            sealed_content=stored.token,
            message_id=None,
            attempts=0,
            next_attempt_at=_epoch(not_before, now),
            created_at=now,
            updated_at=now,
        )
    )
    if mail.attachments:
        await conn.execute(
            tables.attachments.insert(),
            [
                {
                    "mail_id": mail_id,
                    "position": i,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": len(a.data),
                    "data": a.data,
                }
                for i, a in enumerate(mail.attachments)
            ],
        )
    _notify_after_commit(conn, tables)
    return mail_id


def _notify_after_commit(conn: Executor, tables: MailTables) -> None:
    """Wake the senders once the caller's transaction commits (never on rollback).

    One permanent listener per session/connection (flagged in its ``info``) and a per-transaction
    flag, so long-lived sessions accumulate nothing.
    """
    pending_key = ("mesh_mail_pending", id(tables))
    listening_key = ("mesh_mail_listening", id(tables))
    if isinstance(conn, AsyncSession):
        target: Any = conn.sync_session
        commit_event, rollback_event = "after_commit", "after_soft_rollback"
    else:
        target = conn.sync_connection
        commit_event, rollback_event = "commit", "rollback"
    if target is None:
        return
    target.info[pending_key] = True
    if target.info.get(listening_key):
        return
    target.info[listening_key] = True

    def on_commit(owner: Any) -> None:
        if owner.info.pop(pending_key, False):
            tables.notify()

    def on_rollback(owner: Any, *_: Any) -> None:
        owner.info.pop(pending_key, None)

    sa_event.listen(target, commit_event, on_commit)
    sa_event.listen(target, rollback_event, on_rollback)


class AttachmentInfo(BaseModel):
    filename: str
    content_type: str
    size: int


class MailSummary(BaseModel):
    """One queued mail as listed (no bodies). ``sealed``: the mail named sensitive values; its
    subject and bodies here show them as ``[redacted]`` and the real content is kept encrypted
    until it is sent."""

    id: str
    status: str
    category: str
    ref: str | None
    to: list[str]
    subject: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    sealed: bool = False


class MailRecord(MailSummary):
    """One queued mail in full, attachments as metadata only (never their bytes)."""

    from_address: str | None
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    text: str
    html: str | None
    headers: dict[str, str]
    message_id: str | None
    updated_at: datetime
    attachments: list[AttachmentInfo]


def _summary_fields(row: Any, *, sealed: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "category": row.category,
        "ref": row.ref,
        "to": list(row.to_addresses or []),
        "subject": row.subject,
        "attempts": row.attempts,
        "next_attempt_at": _ts(row.next_attempt_at) if row.status == PENDING else None,
        "last_error": row.last_error,
        "created_at": _ts(row.created_at),
        "sent_at": _ts(row.sent_at),
        "sealed": sealed,
    }


@dataclass(frozen=True)
class ClaimedMail:
    """A mail a sender holds for one attempt: the row's id, attempt number and contents."""

    id: str
    attempt: int
    message_id: str | None
    category: str
    mail: OutgoingMail | None  # None: the stored row no longer forms a valid mail
    invalid_reason: str | None = None


@dataclass(frozen=True)
class QueueStats:
    counts: dict[str, int]
    oldest_pending_age: float  # seconds; 0 when nothing is pending


class MailOutbox:
    """Queries and state changes on one service's mail queue (its own transactions)."""

    def __init__(self, db: Database, tables: MailTables, box: SecretBox | None = None) -> None:
        """``box`` opens sealed mail when the sender claims it (see :mod:`.sealing`)."""
        self.db = db
        self.tables = tables
        self.box = box
        self._skip_locked = db.is_postgres

    # ------------------------------------------------------------------ staff views

    async def list_mail(
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        ref: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[MailSummary], int]:
        """A page of mail, newest first, and the total matching the filters."""
        q = self.tables.queue
        conditions = []
        if status is not None:
            conditions.append(q.c.status == status)
        if category is not None:
            conditions.append(q.c.category == category)
        if ref is not None:
            conditions.append(q.c.ref == ref)
        where = and_(*conditions) if conditions else None
        columns = [
            q.c.id,
            q.c.status,
            q.c.category,
            q.c.ref,
            q.c.to_addresses,
            q.c.subject,
            q.c.attempts,
            q.c.next_attempt_at,
            q.c.last_error,
            q.c.created_at,
            q.c.sent_at,
            q.c.sealed_content.is_not(None).label("is_sealed"),
        ]
        page = select(*columns).order_by(q.c.created_at.desc(), q.c.id).limit(limit).offset(offset)
        count = select(func.count()).select_from(q)
        if where is not None:
            page, count = page.where(where), count.where(where)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(page)).all()
            total = (await conn.execute(count)).scalar_one()
        items = [MailSummary(**_summary_fields(r, sealed=bool(r.is_sealed))) for r in rows]
        return items, int(total)

    async def get(self, mail_id: str) -> MailRecord:
        q, a = self.tables.queue, self.tables.attachments
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(q).where(q.c.id == mail_id))).first()
            if row is None:
                raise NotFound(f"no mail {mail_id!r} in the outbox", code="mail-not-found")
            files = (
                await conn.execute(
                    select(a.c.filename, a.c.content_type, a.c.size)
                    .where(a.c.mail_id == mail_id)
                    .order_by(a.c.position)
                )
            ).all()
        return MailRecord(
            **_summary_fields(row, sealed=row.sealed_content is not None),
            from_address=row.from_address,
            cc=list(row.cc_addresses or []),
            bcc=list(row.bcc_addresses or []),
            reply_to=list(row.reply_to or []),
            text=row.text_body,
            html=row.html_body,
            headers=dict(row.headers or {}),
            message_id=row.message_id,
            updated_at=_ts(row.updated_at),
            attachments=[
                AttachmentInfo(filename=f.filename, content_type=f.content_type, size=f.size)
                for f in files
            ],
        )

    async def retry(self, mail_id: str, *, actor: str | None = None) -> MailRecord:
        """Send a failed mail again: back to ``pending`` with a fresh allowance of attempts."""
        q = self.tables.queue
        now = time.time()
        async with self.db.unit_of_work() as session:
            result = await session.execute(
                update(q)
                .where(q.c.id == mail_id, q.c.status == FAILED)
                .values(
                    status=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    locked_until=None,
                    claimed_by=None,
                    updated_at=now,
                )
            )
            changed = result.rowcount  # type: ignore[attr-defined]
        if not changed:
            current = await self.get(mail_id)  # 404 when it does not exist
            raise Conflict(
                f"only failed mail can be retried; this one is {current.status}",
                code="mail-not-failed",
                extra={"mail_status": current.status},
            )
        log.info("mail %s set back to pending by %s", mail_id, actor or "unknown")
        self.tables.notify()
        return await self.get(mail_id)

    async def stats(self) -> QueueStats:
        q = self.tables.queue
        now = time.time()
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(q.c.status, func.count()).group_by(q.c.status))).all()
            oldest = (
                await conn.execute(
                    select(func.min(q.c.created_at)).where(q.c.status.in_((PENDING, SENDING)))
                )
            ).scalar()
        counts = dict.fromkeys((PENDING, SENDING, SENT, FAILED), 0)
        counts.update({status: int(n) for status, n in rows})
        return QueueStats(counts, max(0.0, now - oldest) if oldest is not None else 0.0)

    async def next_due(self) -> float | None:
        """When the earliest pending mail becomes due (epoch seconds), if any is pending."""
        q = self.tables.queue
        async with self.db.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(func.min(q.c.next_attempt_at)).where(q.c.status == PENDING)
                )
            ).scalar()
        return float(value) if value is not None else None

    async def purge_sent(self, before: float) -> int:
        """Delete sent mail (and its attachments) sent before ``before``; returns how many."""
        q, a = self.tables.queue, self.tables.attachments
        old = select(q.c.id).where(q.c.status == SENT, q.c.sent_at < before)
        async with self.db.unit_of_work() as session:
            # Attachments explicitly: SQLite enforces ON DELETE CASCADE only with foreign keys on.
            await session.execute(delete(a).where(a.c.mail_id.in_(old)))
            result = await session.execute(delete(q).where(q.c.id.in_(old)))
            return int(result.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ sender side

    def _due(self, now: float, max_attempts: int) -> Any:
        q = self.tables.queue
        return or_(
            and_(q.c.status == PENDING, q.c.next_attempt_at <= now),
            # A lost attempt is taken over only while attempts are left (else expire_lost).
            and_(q.c.status == SENDING, q.c.locked_until < now, q.c.attempts < max_attempts),
        )

    async def expire_lost(self, *, max_attempts: int, now: float) -> int:
        """Fail mail whose sender died during its last allowed attempt (delivery unknown)."""
        q = self.tables.queue
        async with self.db.unit_of_work() as session:
            result = await session.execute(
                update(q)
                .where(q.c.status == SENDING, q.c.locked_until < now, q.c.attempts >= max_attempts)
                .values(
                    status=FAILED,
                    locked_until=None,
                    claimed_by=None,
                    updated_at=now,
                    last_error=(
                        "the sender stopped during the last allowed attempt; "
                        "the mail may or may not have been delivered"
                    ),
                )
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def claim(
        self,
        *,
        holder: str,
        limit: int,
        lease_seconds: float,
        max_attempts: int,
        now: float | None = None,
    ) -> list[ClaimedMail]:
        """Take up to ``limit`` due mails for one attempt each (``attempts`` + 1)."""
        q = self.tables.queue
        now = time.time() if now is None else now
        values = {
            "status": SENDING,
            "attempts": q.c.attempts + 1,
            "locked_until": now + lease_seconds,
            "claimed_by": holder,
            "updated_at": now,
        }
        async with self.db.unit_of_work() as session:
            candidates = (
                select(q.c.id)
                .where(self._due(now, max_attempts))
                .order_by(q.c.next_attempt_at)
                .limit(limit)
            )
            if self._skip_locked:
                ids = list(
                    (
                        await session.execute(
                            update(q)
                            .where(q.c.id.in_(candidates.with_for_update(skip_locked=True)))
                            .values(**values)
                            .returning(q.c.id)
                        )
                    ).scalars()
                )
            else:
                ids = []
                for mail_id in (await session.execute(candidates)).scalars().all():
                    # Conditional: a concurrent sender that claimed it first makes this a no-op.
                    result = await session.execute(
                        update(q)
                        .where(q.c.id == mail_id, self._due(now, max_attempts))
                        .values(**values)
                    )
                    if result.rowcount:  # type: ignore[attr-defined]
                        ids.append(mail_id)
            if not ids:
                return []
            rows = (await session.execute(select(q).where(q.c.id.in_(ids)))).all()
            files = await self._attachments(session, ids)
        return [self._claimed(row, files.get(row.id, [])) for row in rows]

    async def _attachments(
        self, session: AsyncSession, ids: Sequence[str]
    ) -> dict[str, list[Attachment]]:
        a = self.tables.attachments
        rows = (
            await session.execute(
                select(a.c.mail_id, a.c.filename, a.c.content_type, a.c.data)
                .where(a.c.mail_id.in_(ids))
                .order_by(a.c.mail_id, a.c.position)
            )
        ).all()
        out: dict[str, list[Attachment]] = {}
        for r in rows:
            out.setdefault(r.mail_id, []).append(
                Attachment(filename=r.filename, content_type=r.content_type, data=bytes(r.data))
            )
        return out

    def _claimed(self, row: Row[Any], attachments: list[Attachment]) -> ClaimedMail:
        content: dict[str, Any] = {
            "subject": row.subject,
            "text": row.text_body,
            "html": row.html_body,
            "headers": row.headers or {},
        }
        if row.sealed_content is not None:
            try:
                content.update(unseal(row.sealed_content, row.id, self.box))
            except SecretsError as exc:
                # Failed, not sent redacted; the sealed copy stays for a retry once the key is
                # there. The message names no key material and no content.
                return ClaimedMail(
                    row.id,
                    row.attempts,
                    row.message_id,
                    row.category,
                    None,
                    f"sealed content cannot be opened: {exc}",
                )
        try:
            mail = OutgoingMail(
                to=row.to_addresses,
                cc=row.cc_addresses,
                bcc=row.bcc_addresses,
                reply_to=row.reply_to,
                from_address=row.from_address,
                attachments=attachments,
                category=row.category,
                ref=row.ref,
                **content,
            )
        except ValueError as exc:
            # pydantic quotes the input in its message: never the content of a sealed mail.
            reason = (
                "invalid mail (sealed content, details withheld)"
                if row.sealed_content is not None
                else f"invalid mail: {exc}"
            )
            return ClaimedMail(row.id, row.attempts, row.message_id, row.category, None, reason)
        return ClaimedMail(row.id, row.attempts, row.message_id, row.category, mail)

    async def _finish(self, mail_id: str, holder: str, **values: Any) -> bool:
        q = self.tables.queue
        values.setdefault("updated_at", time.time())
        async with self.db.unit_of_work() as session:
            result = await session.execute(
                update(q)
                .where(q.c.id == mail_id, q.c.status == SENDING, q.c.claimed_by == holder)
                .values(locked_until=None, claimed_by=None, **values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def mark_sent(
        self, mail_id: str, holder: str, *, message_id: str, note: str | None = None
    ) -> bool:
        now = time.time()
        return await self._finish(
            mail_id,
            holder,
            status=SENT,
            sent_at=now,
            updated_at=now,
            message_id=message_id,
            last_error=note,
            sealed_content=None,  # sent: the real content is not kept any longer
        )

    async def mark_retry(
        self, mail_id: str, holder: str, *, error: str, next_attempt_at: float, message_id: str
    ) -> bool:
        return await self._finish(
            mail_id,
            holder,
            status=PENDING,
            next_attempt_at=next_attempt_at,
            last_error=error,
            message_id=message_id,
        )

    async def mark_failed(
        self, mail_id: str, holder: str, *, error: str, message_id: str | None
    ) -> bool:
        return await self._finish(
            mail_id, holder, status=FAILED, last_error=error, message_id=message_id
        )

    async def release(self, mail_id: str, holder: str) -> bool:
        """Give a claimed mail back untried (shutdown before its attempt finished)."""
        return await self._finish(mail_id, holder, status=PENDING, next_attempt_at=time.time())
