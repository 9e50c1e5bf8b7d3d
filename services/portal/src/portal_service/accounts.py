"""Portal accounts (uplogin): creation, access mails, activation, sign-in with throttling.

One account per client. It is created automatically with the client's first job when the client
has ``portal_create_uplogin_automatically = 1`` (status ``active``), or by staff (who must choose
the status). The access mail (user name and first activation link) goes out automatically when
the client has ``portal_send_uplogin_email_automatically = 1``, otherwise staff send it.

Activation: the customer opens the link, chooses a password, and is signed in; at that moment
the account is marked activated (``activation_checked`` = true, ``activation_updated`` = the
time). The same link page sets a new password later (a link requested by user name). Sign-in
checks the throttle first (failures per user name and per client address within the window),
then the Argon2 hash; a hash made with old parameters is replaced on success.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

from mesh_common.errors import Conflict, DomainError, Invalid, NotFound
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import mails, models, security
from portal_service.core import Portal, log, record_audit
from portal_service.passwords import policy_problems

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{2,99}$")


class TooManyAttempts(DomainError):
    status, code, title = 429, "too-many-attempts", "Too many attempts"


async def account_by_username(session: AsyncSession, username: str) -> Any:
    a = models.accounts
    return (
        await session.execute(select(a).where(a.c.username == username.strip().lower()))
    ).first()


async def account_by_id(session: AsyncSession, account_id: str) -> Any:
    a = models.accounts
    row = (await session.execute(select(a).where(a.c.id == account_id))).first()
    if row is None:
        raise NotFound(f"no portal account {account_id!r}", code="account-not-found")
    return row


async def account_of_client(session: AsyncSession, client_id: int) -> Any:
    a = models.accounts
    return (await session.execute(select(a).where(a.c.client_id == client_id))).first()


async def client_by_id(session: AsyncSession, client_id: int) -> Any:
    c = models.clients
    return (await session.execute(select(c).where(c.c.id == client_id))).one()


def username_base(client_no: str) -> str:
    base = re.sub(r"[^a-z0-9._-]+", "-", client_no.lower()).strip("-._")
    return (base or "kunde")[:90].ljust(3, "0")


async def unique_username(session: AsyncSession, wanted: str) -> str:
    a = models.accounts
    for n in range(1, 1000):
        candidate = wanted if n == 1 else f"{wanted}-{n}"
        taken = (await session.execute(select(a.c.id).where(a.c.username == candidate))).first()
        if taken is None:
            return candidate
    raise Conflict("no free user name", code="username-taken")


async def create_account(
    portal: Portal,
    session: AsyncSession,
    client: Any,
    *,
    email: str,
    status: str,
    created_by: str,
    username: str | None = None,
) -> Any:
    """A new account for ``client`` (Conflict if it has one or the name is taken)."""
    if await account_of_client(session, client.id) is not None:
        raise Conflict(
            f"client {client.client_no} already has a portal account", code="account-exists"
        )
    if username is not None:
        username = username.strip().lower()
        if not USERNAME_RE.match(username):
            raise Invalid(
                "a user name has 3-100 characters: a-z, 0-9, '.', '_', '@', '-'",
                code="invalid-username",
            )
        if await account_by_username(session, username) is not None:
            raise Conflict(f"the user name {username!r} is taken", code="username-taken")
    else:
        username = await unique_username(session, username_base(client.client_no))
    now = portal.now()
    account_id = str(uuid.uuid4())
    await session.execute(
        models.accounts.insert().values(
            id=account_id,
            client_id=client.id,
            username=username,
            email=email,
            status=status,
            password_hash=None,
            activation_checked=False,
            activation_updated=None,
            created_by=created_by,
            created_at=now,
            updated_at=now,
        )
    )
    await record_audit(
        session,
        now,
        actor=created_by,
        action="account-created",
        account_id=account_id,
        detail={"username": username, "status": status, "client_no": client.client_no},
    )
    return await account_by_id(session, account_id)


async def send_access_mail(
    portal: Portal,
    session: AsyncSession,
    account: Any,
    *,
    kind: str,
    actor: str,
    job: Any = None,
    ticket: Any = None,
    to: str | None = None,
    recipient_name: str | None = None,
    copy_to: str | None = None,
) -> str:
    """Issue a fresh activation token and queue the access mail (``kind`` first) or the
    new-link mail (``kind`` renewal) in ``session``'s transaction; returns the mail id."""
    if account.status != "active":
        raise Conflict("the portal account is inactive", code="account-inactive")
    client = await client_by_id(session, account.client_id)
    raw = await security.issue_token(
        session,
        account.id,
        kind=kind,
        now=portal.now(),
        minutes=portal.settings.portal_activation_minutes,
    )
    link = portal.link("activate", token=raw)
    address = to or account.email
    recipient = mails.Recipient(address, recipient_name, "account")
    data = mails.context(
        portal,
        client=client,
        username=account.username,
        recipient=recipient,
        job=job,
        ticket=ticket,
        first_link=link if kind == "first" else None,
        new_link=link if kind == "renewal" else None,
    )
    template = mails.ACCESS if kind == "first" else mails.NEW_LINK
    fields: dict[str, Any] = {"to": address, "ref": account.username}
    if copy_to:
        # The staff member who sends it manually gets a copy and the replies.
        fields.update(cc=copy_to, reply_to=copy_to)
    # The token is the secret of the link (only its SHA-256 is stored): never in the queue in the
    # clear, and never shown to staff in the outbox.
    mail_id = await mails.queue(portal, session, template, data, sensitive=(raw,), **fields)
    await record_audit(
        session,
        portal.now(),
        actor=actor,
        action="activation-link-sent",
        account_id=account.id,
        detail={"kind": kind, "to": address, "mail_id": mail_id},
    )
    return mail_id


# ---------------------------------------------------------------------- activation


@dataclass(frozen=True)
class Activated:
    account_id: str
    username: str
    session_cookie: str
    first_activation: bool


async def activate(
    portal: Portal, raw_token: str, password: str, confirm: str, *, ip: str | None
) -> Activated:
    """Set the password with an activation link and sign in. The policy is checked before the
    token is used up, so a rejected password does not cost the link."""
    invalid = Invalid(
        "This activation link is not valid: it was already used, has expired or is unknown.",
        code="activation-link-invalid",
    )
    async with portal.db.unit_of_work() as session:
        account_id = await security.peek_token(session, raw_token, now=portal.now())
        account = await account_by_id(session, account_id) if account_id else None
    if account is None:
        raise invalid
    problems = policy_problems(
        password,
        confirm,
        username=account.username,
        min_length=portal.settings.portal_password_min_length,
    )
    if problems:
        raise Invalid(" ".join(problems), code="password-rejected", extra={"problems": problems})
    password_hash = await portal.passwords.hash(password)
    async with portal.db.unit_of_work() as session:
        # Used up here, atomically: of two requests with the same link only one gets through.
        if await security.consume_token(session, raw_token, now=portal.now()) != account.id:
            raise invalid
        account = await account_by_id(session, account.id)
        if account.status != "active":
            raise DomainError(
                "This portal access is deactivated. Please contact us.",
                code="account-inactive",
                status=403,
            )
        now = portal.now()
        first = not account.activation_checked
        values: dict[str, Any] = {
            "password_hash": password_hash,
            "password_changed_at": now,
            "last_login_at": now,
            "updated_at": now,
        }
        if first:
            values.update(activation_checked=True, activation_updated=now)
        a = models.accounts
        await session.execute(update(a).where(a.c.id == account.id).values(**values))
        await security.end_sessions_of(session, account.id)
        await security.clear_events(session, "login-user", account.username)
        cookie = await security.create_session(
            session,
            account.id,
            now=now,
            ip=ip,
            max_hours=portal.settings.portal_session_max_hours,
        )
        await record_audit(
            session,
            now,
            actor=account.username,
            action="account-activated" if first else "password-reset",
            account_id=account.id,
            ip=ip,
        )
    return Activated(account.id, account.username, cookie, first)


async def request_new_link(portal: Portal, username: str, *, ip: str | None) -> None:
    """Send a new activation link to the account's address, if the name belongs to an active
    account and the per-name limit allows. The caller answers the same in every case."""
    name = username.strip().lower()[:100]
    if not name:
        return
    now = portal.now()
    hour_ago = now - 3600
    async with portal.db.unit_of_work() as session:
        await security.record_event(session, "link-user", name, now=now)
        await security.record_event(session, "link-ip", security.ip_key(ip), now=now)
        by_name = await security.recent(session, "link-user", name, since=hour_ago)
        account = await account_by_username(session, name)
        if account is None or account.status != "active":
            return
        if by_name.count > portal.settings.portal_link_requests_per_user:
            log.warning("new activation link for %s refused: hourly limit", name)
            return
        await send_access_mail(portal, session, account, kind="renewal", actor=f"{name} (portal)")


def spawn_link_request(portal: Portal, username: str, ip: str | None) -> asyncio.Task[None]:
    """Handle a link request in the background: the answer to the customer does not wait for
    (and so cannot reveal) whether the name exists."""

    async def run() -> None:
        try:
            await request_new_link(portal, username, ip=ip)
        except Exception:
            log.exception("sending a new activation link failed")

    task = asyncio.ensure_future(run())
    pending: set[asyncio.Task[None]] = portal.extras.setdefault("link_requests", set())
    pending.add(task)
    task.add_done_callback(pending.discard)
    return task


async def link_requests_allowed(portal: Portal, ip: str | None) -> bool:
    """Whether this client address may request another link this hour (per-address limit)."""
    async with portal.db.unit_of_work() as session:
        window = await security.recent(
            session, "link-ip", security.ip_key(ip), since=portal.now() - 3600
        )
    return window.count < portal.settings.portal_link_requests_per_ip


# ---------------------------------------------------------------------- sign-in


@dataclass(frozen=True)
class SignedIn:
    account_id: str
    username: str
    session_cookie: str


class LoginFailed(DomainError):
    status, code, title = 401, "login-failed", "Sign-in failed"


async def login(portal: Portal, username: str, password: str, *, ip: str | None) -> SignedIn:
    """Check throttle, then password; a session cookie value on success."""
    settings = portal.settings
    name = username.strip().lower()[:100]
    address = security.ip_key(ip)
    now = portal.now()
    since = now - settings.portal_login_window_seconds
    async with portal.db.unit_of_work() as session:
        by_user = await security.recent(session, "login-user", name, since=since)
        by_ip = await security.recent(session, "login-ip", address, since=since)
    blocked = [
        w
        for w, limit in (
            (by_user, settings.portal_login_max_failures_per_user),
            (by_ip, settings.portal_login_max_failures_per_ip),
        )
        if w.count >= limit
    ]
    if blocked:
        oldest = min(w.oldest or now for w in blocked)
        retry_after = max(1, int(oldest + settings.portal_login_window_seconds - now) + 1)
        async with portal.db.unit_of_work() as session:
            await record_audit(session, now, actor=name or "?", action="login-throttled", ip=ip)
        portal.metrics.logins.labels("throttled").inc()
        raise TooManyAttempts(
            "Too many failed sign-in attempts. Please wait a few minutes and try again.",
            extra={"retry_after": retry_after},
        )
    async with portal.db.unit_of_work() as session:
        account = await account_by_username(session, name) if name else None
    ok, rehash = await portal.passwords.verify(
        account.password_hash if account is not None else None, password[:1024]
    )
    if not ok or account is None:
        # Recorded (committed) before the refusal: the basis of the throttle.
        async with portal.db.unit_of_work() as session:
            now = portal.now()
            await security.record_event(session, "login-user", name, now=now)
            await security.record_event(session, "login-ip", address, now=now)
            await record_audit(
                session,
                now,
                actor=name or "?",
                action="login-failed",
                account_id=account.id if account is not None else None,
                ip=ip,
            )
        portal.metrics.logins.labels("failed").inc()
        raise LoginFailed("The user name or the password is wrong.")
    if account.status != "active":
        async with portal.db.unit_of_work() as session:
            await record_audit(
                session,
                portal.now(),
                actor=name,
                action="login-inactive",
                account_id=account.id,
                ip=ip,
            )
        portal.metrics.logins.labels("inactive").inc()
        raise DomainError(
            "This portal access is deactivated. Please contact us.",
            code="account-inactive",
            status=403,
        )
    async with portal.db.unit_of_work() as session:
        now = portal.now()
        values: dict[str, Any] = {"last_login_at": now}
        if rehash:
            values["password_hash"] = await portal.passwords.hash(password)
        a = models.accounts
        await session.execute(update(a).where(a.c.id == account.id).values(**values))
        await security.clear_events(session, "login-user", name)
        cookie = await security.create_session(
            session, account.id, now=now, ip=ip, max_hours=settings.portal_session_max_hours
        )
        await record_audit(
            session,
            now,
            actor=name,
            action="login",
            account_id=account.id,
            ip=ip,
            detail={"rehashed": True} if rehash else None,
        )
    portal.metrics.logins.labels("ok").inc()
    return SignedIn(account.id, account.username, cookie)
