"""Activation tokens, login throttling, customer sessions and CSRF tokens.

- **Activation tokens**: 32 random bytes (``secrets.token_urlsafe(32)``, 43 characters) in the
  link; the database keeps only their SHA-256. A token is valid for
  ``PORTAL_ACTIVATION_MINUTES`` (30), used at most once (a conditional UPDATE marks it used, so
  two concurrent uses cannot both succeed, on any number of replicas), and a newer token of the
  same account revokes the older ones.
- **Throttling**: failed logins and link requests are rows in ``throttle_events`` keyed by
  user name and by client address (IPv6 by /64), counted over a sliding window. In the database,
  so the limits hold across replicas and restarts.
- **Sessions**: a random cookie value; the database keeps its SHA-256, an idle and an absolute
  expiry. **CSRF**: forms of a signed-in customer carry HMAC-SHA256(session cookie, "csrf"),
  which only the cookie's holder can compute; forms before sign-in use a random double-submit
  cookie. Cookies are HttpOnly, SameSite=Strict and Secure (except in the embedded default).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import models

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
SESSION_COOKIE = "portal_session"
CSRF_COOKIE = "portal_csrf"
# last_seen_at is written at most this often per session (not on every page view).
TOUCH_SECONDS = 60.0


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


# ---------------------------------------------------------------------- activation tokens


async def issue_token(
    session: AsyncSession, account_id: str, *, kind: str, now: float, minutes: int
) -> str:
    """A new activation token for ``account_id`` (older unused ones are revoked); the raw token
    is returned once and never stored."""
    t = models.activation_tokens
    await session.execute(
        update(t)
        .where(t.c.account_id == account_id, t.c.used_at.is_(None), t.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    raw = new_secret()
    await session.execute(
        t.insert().values(
            account_id=account_id,
            token_hash=digest(raw),
            kind=kind,
            created_at=now,
            expires_at=now + minutes * 60,
        )
    )
    return raw


def _usable(now: float) -> Any:
    t = models.activation_tokens
    return and_(t.c.used_at.is_(None), t.c.revoked_at.is_(None), t.c.expires_at > now)


async def peek_token(session: AsyncSession, raw: str, *, now: float) -> str | None:
    """The account id of a usable token, without using it up (None: unknown, used, expired)."""
    if not TOKEN_RE.match(raw or ""):
        return None
    t = models.activation_tokens
    row = (
        await session.execute(
            select(t.c.account_id).where(t.c.token_hash == digest(raw), _usable(now))
        )
    ).first()
    return row.account_id if row else None


async def consume_token(session: AsyncSession, raw: str, *, now: float) -> str | None:
    """Use the token up; its account id, or None when it is unknown, used, revoked or expired.
    Exactly one of several concurrent calls with the same token gets the account id."""
    if not TOKEN_RE.match(raw or ""):
        return None
    t = models.activation_tokens
    h = digest(raw)
    result = await session.execute(
        update(t).where(t.c.token_hash == h, _usable(now)).values(used_at=now)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    account_id = (
        await session.execute(select(t.c.account_id).where(t.c.token_hash == h))
    ).scalar_one()
    # Every other open link of the account is void from now on.
    await session.execute(
        update(t)
        .where(t.c.account_id == account_id, t.c.token_hash != h, _usable(now))
        .values(revoked_at=now)
    )
    return str(account_id)


# ---------------------------------------------------------------------- throttling


def ip_key(ip: str | None) -> str:
    """The throttling key of a client address: IPv4 as is, IPv6 by its /64 network."""
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


@dataclass(frozen=True)
class Window:
    count: int
    oldest: float | None


async def recent(session: AsyncSession, scope: str, key: str, *, since: float) -> Window:
    t = models.throttle_events
    row = (
        await session.execute(
            select(func.count(), func.min(t.c.at)).where(
                t.c.scope == scope, t.c.key == key, t.c.at > since
            )
        )
    ).one()
    return Window(count=int(row[0]), oldest=row[1])


async def record_event(session: AsyncSession, scope: str, key: str, *, now: float) -> None:
    await session.execute(models.throttle_events.insert().values(scope=scope, key=key, at=now))


async def clear_events(session: AsyncSession, scope: str, key: str) -> None:
    t = models.throttle_events
    await session.execute(delete(t).where(t.c.scope == scope, t.c.key == key))


# ---------------------------------------------------------------------- sessions and CSRF


@dataclass(frozen=True)
class CustomerSession:
    raw: str
    account_id: str
    username: str
    client_id: int
    csrf: str


def csrf_for(raw_session: str) -> str:
    mac = hmac.new(raw_session.encode("utf-8"), b"portal-csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


async def create_session(
    session: AsyncSession,
    account_id: str,
    *,
    now: float,
    ip: str | None,
    max_hours: int,
) -> str:
    raw = new_secret()
    await session.execute(
        models.sessions.insert().values(
            id_hash=digest(raw),
            account_id=account_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + max_hours * 3600,
            ip=(ip or "")[:64] or None,
        )
    )
    return raw


async def load_session(
    session: AsyncSession, raw: str | None, *, now: float, idle_minutes: int
) -> CustomerSession | None:
    """The signed-in customer of cookie value ``raw`` (active account, session not expired)."""
    if not raw or len(raw) > 100:
        return None
    s, a = models.sessions, models.accounts
    row = (
        await session.execute(
            select(s.c.id_hash, s.c.last_seen_at, a.c.id, a.c.username, a.c.client_id)
            .join(a, a.c.id == s.c.account_id)
            .where(
                s.c.id_hash == digest(raw),
                s.c.expires_at > now,
                s.c.last_seen_at > now - idle_minutes * 60,
                a.c.status == "active",
            )
        )
    ).first()
    if row is None:
        return None
    if now - row.last_seen_at > TOUCH_SECONDS:
        await session.execute(update(s).where(s.c.id_hash == row.id_hash).values(last_seen_at=now))
    return CustomerSession(
        raw=raw,
        account_id=row.id,
        username=row.username,
        client_id=int(row.client_id),
        csrf=csrf_for(raw),
    )


async def end_session(session: AsyncSession, raw: str) -> None:
    await session.execute(delete(models.sessions).where(models.sessions.c.id_hash == digest(raw)))


async def end_sessions_of(session: AsyncSession, account_id: str) -> None:
    await session.execute(delete(models.sessions).where(models.sessions.c.account_id == account_id))
