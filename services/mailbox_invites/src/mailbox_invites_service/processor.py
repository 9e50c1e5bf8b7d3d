"""The MailboxProcessor job: send pending invitations over SMTP, read the replies over IMAP.

One run, under the task framework's lease (never two at once, across replicas):

1. **Send.** Pending invitations of active room mailboxes, grouped by technical user, each
   user's over ``smtp_sessions`` parallel SMTP sessions; one iMIP mail per invitation, built
   from the version that was queued. Outcomes go to one recorder that writes them in small
   batches (one writer: no lock contention, few commits): a success marks the invitation sent;
   a failure counts one attempt (a session that cannot even be opened counts one for every
   invitation it was to carry) and the ``max_send_attempts``-th sets status ``error``. A crash
   between the server's "250" and the commit re-sends the same UID and SEQUENCE on the next
   run, which a calendar applies as the same update.
2. **Read.** For every technical user: the reply folder over IMAP, each message fetched
   unmodified (BODY.PEEK), in batches. iTIP REPLYs matched by UID are applied (SEQUENCE and
   DTSTAMP decide whether they are current), a batch per transaction (one transaction per
   mail if the batch fails); after the commit the mails are moved, never deleted: applied
   replies to the processed folder, everything else (stale replies, unrelated mail, unreadable
   calendars) to the ignored folder, each logged. A mail whose processing failed stays in
   place for the next run.

Every invitation sent and every mail read becomes an item of the execution. A dry run builds
and reads everything and changes nothing (no mail sent, moved or applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from mesh_common.app import ServiceRuntime
from mesh_common.tasks import TaskContext

from mailbox_invites_service import itip
from mailbox_invites_service.service import Invites, writing
from mailbox_invites_service.settings import Settings
from mailbox_invites_service.transport import (
    MailAccount,
    MailError,
    imap_session,
    smtp_session,
)

log = logging.getLogger("mailbox_invites.processor")

ACTOR = "mailbox-processor"
SEND_BATCH = 500
RECORD_BATCH = 100
# The recorder lets outcomes gather this long before it writes them: a few larger transactions
# instead of one per message (each also wakes the outbox relay). An outcome not yet written when
# the process dies is sent again on the next run, which a calendar takes as the same update.
RECORD_LINGER_SECONDS = 0.25


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class RunSummary:
    sent: int = 0
    failed: int = 0
    replies_applied: int = 0
    mails_set_aside: int = 0
    mails_left: int = 0


@dataclass
class _Outcome:
    pending: dict[str, Any]
    error: str | None = None  # None: sent
    message_id: str = ""
    ics: str = ""
    reply: str = ""


@dataclass
class _Recorder:
    """The one writer of send outcomes: lanes queue them, it commits them in batches."""

    processor: MailboxProcessor
    ctx: TaskContext
    summary: RunSummary
    queue: asyncio.Queue[_Outcome | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> _Recorder:
        self.task = asyncio.create_task(self._run(), name="mailbox-processor-recorder")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closing.set()
        await self.queue.put(None)
        assert self.task is not None
        await self.task

    async def sent(self, p: dict[str, Any], *, message_id: str, ics: str, reply: str) -> None:
        await self.queue.put(_Outcome(p, None, message_id, ics, reply))

    async def failed(self, p: dict[str, Any], error: str) -> None:
        await self.queue.put(_Outcome(p, error))

    async def _run(self) -> None:
        done = False
        while not done:
            first = await self.queue.get()
            batch: list[_Outcome] = []
            if first is None:
                done = True
            else:
                batch.append(first)
                if self.queue.qsize() < RECORD_BATCH and not self.closing.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.closing.wait(), RECORD_LINGER_SECONDS)
            while len(batch) < RECORD_BATCH and not self.queue.empty():
                nxt = self.queue.get_nowait()
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[_Outcome]) -> None:
        results: list[tuple[_Outcome, dict[str, Any]]] = []
        try:
            async with writing(self.processor.runtime.db) as session:
                invites = self.processor.invites(session, buffer_log=True)
                sent = [o for o in batch if o.error is None]
                rows = await invites.mark_sent_many(
                    [(o.pending, o.message_id, o.ics, o.reply) for o in sent]
                )
                results.extend(zip(sent, rows, strict=True))
                for o in batch:
                    if o.error is not None:
                        results.append((o, await invites.mark_failed(o.pending, o.error)))
                await invites.flush_log()
        except Exception as exc:
            # Not recorded: the invitations stay pending and go out again next run (same UID
            # and SEQUENCE, which a calendar takes as the same update).
            log.exception("could not record %d send outcome(s)", len(batch))
            for o in batch:
                p = o.pending
                await self.ctx.item(
                    f"invitation:{p['id']}",
                    f"send {p['method']} SEQUENCE {p['sequence']}",
                    "failed",
                    error=f"outcome not recorded ({type(exc).__name__}: {exc}); "
                    f"{'sent' if o.error is None else o.error}",
                )
            return
        for o, row in results:
            p = o.pending
            action = f"send {p['method']} SEQUENCE {p['sequence']}"
            if o.error is None:
                self.summary.sent += 1
                await self.ctx.item(f"invitation:{p['id']}", action, "ok")
                continue
            self.summary.failed += 1
            if row["status"] == "error":
                action += f" (gave up after {row['attempts']} attempts)"
            await self.ctx.item(f"invitation:{p['id']}", action, "failed", error=o.error)


class MailboxProcessor:
    """See the module docstring. ``clock`` exists for tests."""

    def __init__(
        self, runtime: ServiceRuntime, *, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self.runtime = runtime
        settings = runtime.settings
        assert isinstance(settings, Settings)
        self.settings = settings
        self.clock = clock

    def invites(self, session: Any, *, buffer_log: bool = False) -> Invites:
        return Invites(
            session,
            settings=self.settings,
            now=self.clock(),
            actor=ACTOR,
            outbox=self.runtime.outbox,
            box=self.runtime.extras["secret_box"],
            buffer_log=buffer_log,
        )

    async def run(self, ctx: TaskContext) -> RunSummary:
        summary = RunSummary()
        await self.send_pending(ctx, summary)
        await self.read_replies(ctx, summary)
        return summary

    # ------------------------------------------------------------------ sending

    async def send_pending(self, ctx: TaskContext, summary: RunSummary) -> None:
        done: set[int] = set()
        while not ctx.cancelled:
            async with self.runtime.db.unit_of_work() as session:
                batch = [
                    p
                    for p in await self.invites(session).pending(SEND_BATCH + len(done))
                    if p["id"] not in done and ctx.wanted(f"invitation:{p['id']}")
                ][:SEND_BATCH]
            if not batch:
                return
            by_user: dict[int, list[dict[str, Any]]] = {}
            for p in batch:
                by_user.setdefault(p["technical_user_id"], []).append(p)
                done.add(p["id"])
            for user_id, items in by_user.items():
                await self._send_as(user_id, items, ctx, summary)
            if ctx.dry_run:
                return

    async def _send_as(
        self, user_id: int, items: list[dict[str, Any]], ctx: TaskContext, summary: RunSummary
    ) -> None:
        async with self.runtime.db.unit_of_work() as session:
            account = await self.invites(session).account(user_id)
        if ctx.dry_run:
            for p in items:
                message, _ = self._build(p, account)
                await ctx.item(
                    f"invitation:{p['id']}",
                    f"would send {p['method']} SEQUENCE {p['sequence']}",
                    "skipped",
                    detail={"subject": str(message["Subject"]), "to": p["mailbox_email"]},
                )
            return
        # Several sessions in parallel: sending is bound by the server's round trips.
        lanes = max(1, min(self.settings.smtp_sessions, len(items)))
        async with _Recorder(self, ctx, summary) as recorder:
            await asyncio.gather(
                *(self._send_lane(account, items[i::lanes], ctx, recorder) for i in range(lanes))
            )

    async def _send_lane(
        self,
        account: MailAccount,
        items: list[dict[str, Any]],
        ctx: TaskContext,
        recorder: _Recorder,
    ) -> None:
        """Send ``items`` one after the other over one SMTP session (reconnecting as needed,
        and after ``smtp_messages_per_session`` messages)."""
        queue = list(items)
        per_session = self.settings.smtp_messages_per_session
        while queue:
            sent_in_session = 0
            try:
                async with smtp_session(account) as smtp:
                    while queue and sent_in_session < per_session:
                        if ctx.cancelled:
                            return
                        p = queue[0]
                        message, ics = self._build(p, account)
                        try:
                            reply = await smtp.send(message.as_bytes(), p["mailbox_email"])
                        except MailError as exc:
                            if exc.session_broken and sent_in_session > 0:
                                # The server ended a session that was working (a limit of
                                # messages per connection, an idle timeout): reconnect and
                                # carry on with this message, no attempt counted. Bounded:
                                # every reconnect follows at least one delivered message.
                                break
                            queue.pop(0)
                            await recorder.failed(p, str(exc))
                            if exc.session_broken:
                                # A fresh session that breaks at once: the rest would too.
                                for rest in queue:
                                    await recorder.failed(rest, str(exc))
                                return
                            continue
                        queue.pop(0)
                        sent_in_session += 1
                        await recorder.sent(
                            p, message_id=str(message["Message-ID"]), ics=ics, reply=reply
                        )
            except MailError as exc:
                # No session (server down, TLS or login refused): one attempt for each.
                for p in queue:
                    await recorder.failed(p, str(exc))
                return

    def _build(self, p: dict[str, Any], account: MailAccount) -> tuple[Any, str]:
        now = self.clock()
        content = p["snapshot"]
        organizer = itip.Party(account.email, account.display_name)
        attendee = itip.Party(p["mailbox_email"], content.get("room_name") or p["room_name"])
        calendar = itip.build_calendar(
            method=p["method"],
            uid=p["uid"],
            sequence=p["sequence"],
            content=content,
            organizer=organizer,
            attendee=attendee,
            dtstamp=now,
            tzid=self.settings.time_zone,
            prodid=self.settings.prodid,
        )
        ics = itip.to_ical(calendar)
        message = itip.build_message(
            calendar=calendar,
            ics=ics,
            method=p["method"],
            content=content,
            organizer=organizer,
            attendee=attendee,
            tzid=self.settings.time_zone,
            msgid_domain=self.settings.uid_domain,
            update=p["sent_sequence"] is not None,
            now=now,
        )
        return message, ics.decode("utf-8")

    # ------------------------------------------------------------------ reading

    async def read_replies(self, ctx: TaskContext, summary: RunSummary) -> None:
        async with self.runtime.db.unit_of_work() as session:
            user_ids = await self.invites(session).technical_user_ids()
        for user_id in user_ids:
            if ctx.cancelled:
                return
            async with self.runtime.db.unit_of_work() as session:
                account = await self.invites(session).account(user_id)
            try:
                await self._read_as(account, ctx, summary)
            except MailError as exc:
                async with writing(self.runtime.db) as session:
                    await self.invites(session).note_mail(
                        user_id, "read-failed", str(exc), {}, "error"
                    )
                await ctx.item(f"mailbox:{account.name}", "read replies", "failed", error=str(exc))

    async def _read_as(self, account: MailAccount, ctx: TaskContext, summary: RunSummary) -> None:
        batch = self.settings.imap_fetch_batch
        async with imap_session(account) as imap:
            if not ctx.dry_run:
                await imap.ensure_folder(account.processed_folder)
                await imap.ensure_folder(account.ignored_folder)
            await imap.select(account.imap_folder)
            uids = await imap.uids()
            for start in range(0, len(uids), batch):
                if ctx.cancelled:
                    return
                messages = await imap.fetch(uids[start : start + batch])
                if ctx.dry_run:
                    for uid, raw in messages:
                        replies = [e for e in itip.parse_mail(raw).events if e.method == "REPLY"]
                        what = "would apply" if replies else "would set aside"
                        await ctx.item(
                            f"mail:{account.name}:{uid}",
                            f"{what} ({len(replies)} REPLY)",
                            "skipped",
                        )
                    continue
                targets = await self._apply_batch(account, messages, ctx, summary)
                await imap.move(
                    [uid for uid, t in targets.items() if t == "processed"],
                    account.processed_folder,
                )
                await imap.move(
                    [uid for uid, t in targets.items() if t == "ignored"], account.ignored_folder
                )

    async def _apply_batch(
        self,
        account: MailAccount,
        messages: list[tuple[int, bytes]],
        ctx: TaskContext,
        summary: RunSummary,
    ) -> dict[int, str]:
        """Apply a batch of mails in one transaction; if anything in it fails, apply them again
        one transaction per mail, so one bad mail holds back only itself. Returns where each
        mail goes ("processed" / "ignored"); mails that failed are left out (they stay)."""
        parsed = [(uid, itip.parse_mail(raw)) for uid, raw in messages]
        done: list[tuple[int, dict[str, Any], list[tuple[str, str]]]] = []
        failed: list[tuple[int, str]] = []
        try:
            done = await self._apply_together(account, parsed)
        except Exception:
            log.warning("a batch of replies of %s failed; one by one now", account.name)
            for one in parsed:
                try:
                    done += await self._apply_together(account, [one])
                except Exception as exc:  # one bad mail must not stop the others
                    log.exception("mail %s of %s could not be processed", one[0], account.name)
                    failed.append((one[0], f"{type(exc).__name__}: {exc}"))
        targets: dict[int, str] = {}
        for uid, meta, outcomes in done:
            key = f"mail:{account.name}:{uid}"
            detail = {**meta, "outcomes": outcomes}
            if any(o in ("applied", "duplicate") for o, _ in outcomes):
                summary.replies_applied += 1
                targets[uid] = "processed"
                await ctx.item(key, "apply reply", "ok", detail=detail)
            else:
                summary.mails_set_aside += 1
                targets[uid] = "ignored"
                await ctx.item(key, "set aside", "skipped", detail=detail)
        for uid, error in failed:
            summary.mails_left += 1
            await ctx.item(f"mail:{account.name}:{uid}", "read reply", "failed", error=error)
        return targets

    async def _apply_together(
        self, account: MailAccount, mails: list[tuple[int, itip.ParsedMail]]
    ) -> list[tuple[int, dict[str, Any], list[tuple[str, str]]]]:
        """Apply the REPLYs of ``mails`` in one transaction (their invitations read and written
        in one statement each); returns (uid, meta, outcomes) per mail."""
        metas = [
            {
                "imap_uid": uid,
                "message_id": parsed.message_id,
                "subject": parsed.subject,
                "from": parsed.sender,
            }
            for uid, parsed in mails
        ]
        replies = [[e for e in parsed.events if e.method == "REPLY"] for _, parsed in mails]
        async with writing(self.runtime.db) as session:
            invites = self.invites(session, buffer_log=True)
            applied = iter(
                await invites.apply_replies(
                    account.id,
                    [
                        (e, meta)
                        for meta, events in zip(metas, replies, strict=True)
                        for e in events
                    ],
                )
            )
            out = []
            for (uid, parsed), meta, events in zip(mails, metas, replies, strict=True):
                outcomes = [next(applied) for _ in events]
                await self._note_unapplied(invites, account, parsed, meta, outcomes)
                if not events:
                    outcomes = [("ignored", self._why_not_a_reply(parsed))]
                out.append((uid, meta, outcomes))
            await invites.flush_log()
        return out

    @staticmethod
    def _why_not_a_reply(parsed: itip.ParsedMail) -> str:
        if parsed.problems:
            return "; ".join(parsed.problems)
        if parsed.events:
            return f"iTIP {', '.join(sorted(parsed.methods))}, not a REPLY"
        return "no iTIP calendar in this mail"

    async def _note_unapplied(
        self,
        invites: Invites,
        account: MailAccount,
        parsed: itip.ParsedMail,
        meta: dict[str, Any],
        outcomes: list[tuple[str, str]],
    ) -> None:
        """Log, in the user's mail log, a mail that is not a REPLY or names no invitation."""
        if not outcomes:
            why = self._why_not_a_reply(parsed)
            await invites.note_mail(account.id, "mail-ignored", why, meta, "info")
            return
        unmatched = [w for o, w in outcomes if o == "ignored" and w.startswith("no invitation")]
        if unmatched:
            await invites.note_mail(account.id, "mail-ignored", "; ".join(unmatched), meta, "info")
