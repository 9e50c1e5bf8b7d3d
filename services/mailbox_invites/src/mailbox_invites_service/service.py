"""The rules of mailbox-invites: configuration, events → invitations, statuses, replies, log.

:class:`Invites` works inside one unit of work (an ``AsyncSession`` transaction) and raises
domain errors (NotFound, Invalid, Conflict, Unavailable); the HTTP edge and the bus map them. It
never talks to a mail server (see ``processor`` and ``transport``).

Invitation lifecycle (one row per event and room mailbox, stable UID):

- ``pending``: a REQUEST or CANCEL waits for the MailboxProcessor; a failed attempt counts up
  ``attempts``; at ``max_send_attempts`` the status becomes ``error`` and stays there (nothing
  more is tried) until an operator resets it.
- ``sent``: the REQUEST went out; the room mailbox has not answered this SEQUENCE yet.
- ``accepted`` / ``declined`` / ``tentative``: the mailbox's REPLY for the current SEQUENCE.
- ``cancelled``: the CANCEL went out.  ``skipped``: nothing to deliver (the event was deleted, or
  is no longer meant for the mailbox, before anything reached it).

SEQUENCE rises only against what the mailbox last *received*: by one for a change of start or
end (``itip.SIGNIFICANT_FIELDS``), for a CANCEL and for a re-invitation after a CANCEL; other
changes are re-sent with the same SEQUENCE. Every step is written to ``invitation_log`` and
every status change is published as ``InvitationStatusChanged`` through the outbox.
"""

from __future__ import annotations

import datetime as dt
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from mesh_common.bus.outbox import Outbox
from mesh_common.db import Database
from mesh_common.errors import Conflict, Invalid, NotFound, Unavailable
from mesh_common.secrets import SecretBox, SecretsError
from mesh_contracts.mailbox_invites import InvitationStatusChanged, RoomEventData
from pydantic import SecretStr
from sqlalchemy import (
    Boolean,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mailbox_invites_service import itip
from mailbox_invites_service.models import (
    invitation_log,
    invitations,
    mailboxes,
    room_events,
    room_group_rooms,
    room_groups,
    rooms,
    technical_users,
)
from mailbox_invites_service.settings import Settings
from mailbox_invites_service.transport import MailAccount, ProbeResult

PARTSTAT_STATUS = {"ACCEPTED": "accepted", "DECLINED": "declined", "TENTATIVE": "tentative"}
REPLY_STATUSES = frozenset(PARTSTAT_STATUS.values())
# Only these may change once a mailbox exists (the seed: technical user and room blocks).
CHANGEABLE_MAILBOX_FIELDS = ("technical_user_id", "include_blocks")
LOCKED_MAILBOX_FIELDS = ("room_id", "email")
SET, NOT_SET = "set", "not set"


@asynccontextmanager
async def writing(db: Database) -> AsyncIterator[AsyncSession]:
    """A unit of work meant to write. On SQLite it takes the write lock first (BEGIN
    IMMEDIATE): a transaction that reads and then writes would otherwise fail at once with
    "database is locked" whenever another connection committed in between (a stale read
    snapshot cannot be upgraded). On PostgreSQL the rows read for an update are locked where
    they are read (FOR UPDATE)."""
    async with db.unit_of_work() as session:
        if db.dialect == "sqlite":
            await session.execute(text("BEGIN IMMEDIATE"))
        yield session


def credentials_context(name: str) -> str:
    """SecretBox context of a technical user's credentials: a token only opens on its own row."""
    return f"mailbox_invites.technical_users.credentials|{name}"


def validate_ca_pem(pem: str | None) -> None:
    if not pem:
        return
    try:
        ssl.create_default_context().load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError, TypeError):  # TypeError: non-ASCII text as cadata
        raise Invalid(
            "tls_ca_pem is not a PEM certificate (or bundle) that can be trusted",
            code="invalid-ca-certificate",
        ) from None


def _dump(row: Row[Any] | None) -> dict[str, Any]:
    assert row is not None
    return dict(row._mapping)


class Invites:
    """The service layer, bound to one transaction (see the module docstring)."""

    def __init__(
        self,
        session: AsyncSession,
        *,
        settings: Settings,
        now: dt.datetime,
        actor: str,
        outbox: Outbox | None = None,
        box: Callable[[], SecretBox] | None = None,
        buffer_log: bool = False,
    ) -> None:
        self.session = session
        self.settings = settings
        self.now = now
        self.actor = actor
        self.outbox = outbox
        self._box = box
        # Batch writers (the MailboxProcessor) collect log lines and write them at once;
        # they must call flush_log() before the commit.
        self._log_buffer: list[dict[str, Any]] | None = [] if buffer_log else None

    # ================================================================== helpers

    def box(self) -> SecretBox:
        if self._box is None:
            raise Unavailable("no secret key configured", code="secret-key-missing")
        try:
            return self._box()
        except SecretsError as exc:
            raise Unavailable(str(exc), code="secret-key-missing") from None

    async def _one(self, query: Any) -> dict[str, Any] | None:
        row = (await self.session.execute(query)).first()
        return dict(row._mapping) if row is not None else None

    async def _all(self, query: Any) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in (await self.session.execute(query)).all()]

    async def log(
        self,
        invitation_id: int | None,
        action: str,
        message: str,
        *,
        level: str = "info",
        sequence: int | None = None,
        detail: Mapping[str, Any] | None = None,
        technical_user_id: int | None = None,
    ) -> None:
        row = {
            "invitation_id": invitation_id,
            "technical_user_id": technical_user_id,
            "at": self.now,
            "level": level,
            "action": action,
            "sequence": sequence,
            "message": message,
            "detail": dict(detail) if detail is not None else None,
            "actor": self.actor,
        }
        if self._log_buffer is not None:
            self._log_buffer.append(row)
            return
        await self.session.execute(insert(invitation_log).values(**row))

    async def flush_log(self) -> None:
        """Write the buffered log lines (``buffer_log=True``) in one statement."""
        if self._log_buffer:
            rows, self._log_buffer = self._log_buffer, []
            await self.session.execute(insert(invitation_log), rows)

    async def _publish(
        self,
        inv: Mapping[str, Any],
        status: str,
        detail: str | None,
        *,
        mailbox: Mapping[str, Any] | None = None,
    ) -> None:
        """Announce a status change (``mailbox``: its email and room_id, when known)."""
        if self.outbox is None:
            return
        if mailbox is None:
            mailbox = await self._one(
                select(mailboxes.c.email, mailboxes.c.room_id).where(
                    mailboxes.c.id == inv["mailbox_id"]
                )
            )
        assert mailbox is not None
        await self.outbox.add(self.session, self._status_event(inv, status, detail, mailbox))

    def _status_event(
        self, inv: Mapping[str, Any], status: str, detail: str | None, mailbox: Mapping[str, Any]
    ) -> InvitationStatusChanged:
        return InvitationStatusChanged(
            invitation_id=inv["id"],
            event_id=inv["event_id"],
            room_id=mailbox["room_id"],
            mailbox=mailbox["email"],
            uid=inv["uid"],
            sequence=inv["sequence"],
            status=status,
            detail=detail,
            at=self.now,
        )

    async def _set(self, inv_id: int, **values: Any) -> dict[str, Any]:
        values.setdefault("updated_at", self.now)
        row = await self._one(
            update(invitations)
            .where(invitations.c.id == inv_id)
            .values(**values)
            .returning(*invitations.c)
        )
        assert row is not None
        return row

    # ================================================================== rooms and groups

    async def put_room(self, room_id: str, name: str) -> dict[str, Any]:
        existing = await self._one(select(rooms).where(rooms.c.room_id == room_id))
        if existing is None:
            await self.session.execute(
                insert(rooms).values(room_id=room_id, name=name, updated_at=self.now)
            )
        elif existing["name"] != name:
            await self.session.execute(
                update(rooms)
                .where(rooms.c.room_id == room_id)
                .values(name=name, updated_at=self.now)
            )
            # The room's name is the LOCATION of its invitations: re-sent with the same SEQUENCE.
            for event_id in await self._room_event_ids(room_id):
                await self._reconcile(event_id, reason="room renamed")
        return await self.room_view(room_id)

    async def _ensure_room(self, room_id: str, name: str | None) -> None:
        existing = await self._one(select(rooms.c.name).where(rooms.c.room_id == room_id))
        if existing is None:
            await self.session.execute(
                insert(rooms).values(room_id=room_id, name=name or room_id, updated_at=self.now)
            )
        elif name and existing["name"] != name:
            await self.session.execute(
                update(rooms)
                .where(rooms.c.room_id == room_id)
                .values(name=name, updated_at=self.now)
            )

    async def _room_event_ids(self, room_id: str) -> list[str]:
        rows = await self.session.execute(
            select(room_events.c.event_id).where(room_events.c.room_id == room_id)
        )
        return list(rows.scalars())

    async def _mailbox_badges(self, room_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(room_ids)
        if not ids:
            return {}
        rows = await self._all(
            select(
                mailboxes.c.id, mailboxes.c.room_id, mailboxes.c.email, mailboxes.c.active
            ).where(mailboxes.c.room_id.in_(ids))
        )
        return {
            r["room_id"]: {
                "mailbox_id": r["id"],
                "email": r["email"],
                "active": r["active"],
                "link": f"/mailboxes/{r['id']}",
            }
            for r in rows
        }

    async def room_view(self, room_id: str) -> dict[str, Any]:
        room = await self._one(select(rooms).where(rooms.c.room_id == room_id))
        if room is None:
            raise NotFound(f"no room {room_id!r}", code="room-not-found")
        badges = await self._mailbox_badges([room_id])
        return {**room, "mailbox": badges.get(room_id)}

    async def list_rooms(self) -> list[dict[str, Any]]:
        all_rooms = await self._all(select(rooms).order_by(rooms.c.room_id))
        badges = await self._mailbox_badges(r["room_id"] for r in all_rooms)
        return [{**r, "mailbox": badges.get(r["room_id"])} for r in all_rooms]

    async def put_group(self, group_id: str, name: str, room_ids: list[str]) -> dict[str, Any]:
        if len(set(room_ids)) != len(room_ids):
            raise Invalid("room_ids contains duplicates", code="duplicate-rooms")
        known = set(
            (
                await self.session.execute(
                    select(rooms.c.room_id).where(rooms.c.room_id.in_(room_ids))
                )
            ).scalars()
        )
        unknown = [r for r in room_ids if r not in known]
        if unknown:
            raise Invalid(
                f"unknown rooms: {', '.join(unknown)} (PUT /rooms/{{room_id}} first)",
                code="unknown-rooms",
                extra={"unknown": unknown},
            )
        exists = await self._one(select(room_groups).where(room_groups.c.group_id == group_id))
        if exists is None:
            await self.session.execute(
                insert(room_groups).values(group_id=group_id, name=name, updated_at=self.now)
            )
        else:
            await self.session.execute(
                update(room_groups)
                .where(room_groups.c.group_id == group_id)
                .values(name=name, updated_at=self.now)
            )
        await self.session.execute(
            delete(room_group_rooms).where(room_group_rooms.c.group_id == group_id)
        )
        if room_ids:
            await self.session.execute(
                insert(room_group_rooms),
                [
                    {"group_id": group_id, "room_id": r, "position": i}
                    for i, r in enumerate(room_ids)
                ],
            )
        return await self.group_view(group_id)

    async def group_view(self, group_id: str) -> dict[str, Any]:
        group = await self._one(select(room_groups).where(room_groups.c.group_id == group_id))
        if group is None:
            raise NotFound(f"no room group {group_id!r}", code="room-group-not-found")
        members = await self._all(
            select(rooms.c.room_id, rooms.c.name)
            .join(room_group_rooms, room_group_rooms.c.room_id == rooms.c.room_id)
            .where(room_group_rooms.c.group_id == group_id)
            .order_by(room_group_rooms.c.position)
        )
        badges = await self._mailbox_badges(m["room_id"] for m in members)
        return {
            **group,
            "rooms": [{**m, "mailbox": badges.get(m["room_id"])} for m in members],
        }

    async def list_groups(self) -> list[dict[str, Any]]:
        ids = (
            await self.session.execute(
                select(room_groups.c.group_id).order_by(room_groups.c.group_id)
            )
        ).scalars()
        return [await self.group_view(g) for g in list(ids)]

    # ================================================================== technical users

    def _seal(self, name: str, smtp_password: str | None, imap_password: str) -> str:
        secrets: dict[str, Any] = {"imap_password": imap_password}
        if smtp_password is not None:
            secrets["smtp_password"] = smtp_password
        return self.box().encrypt(secrets, context=credentials_context(name))

    def _open(self, row: Mapping[str, Any]) -> dict[str, Any]:
        try:
            value = self.box().decrypt(row["credentials"], context=credentials_context(row["name"]))
        except SecretsError as exc:
            raise Unavailable(
                f"credentials of technical user {row['name']!r} cannot be decrypted: {exc}",
                code="credentials-unreadable",
            ) from None
        assert isinstance(value, dict)
        return value

    async def create_technical_user(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data``: the validated fields of ``schemas.TechnicalUserIn`` (passwords as str)."""
        validate_ca_pem(data.get("tls_ca_pem"))
        smtp, imap = data["smtp"], data["imap"]
        values = {
            "name": data["name"],
            "display_name": data["display_name"],
            "email": data["email"],
            "smtp_host": smtp["host"],
            "smtp_port": smtp["port"],
            "smtp_security": smtp["security"],
            "smtp_username": smtp.get("username"),
            "imap_host": imap["host"],
            "imap_port": imap["port"],
            "imap_security": imap["security"],
            "imap_username": imap["username"],
            "imap_folder": imap["folder"],
            "processed_folder": imap["processed_folder"],
            "ignored_folder": imap["ignored_folder"],
            "tls_verify": data["tls_verify"],
            "tls_ca_pem": data.get("tls_ca_pem"),
            "timeout_seconds": data["timeout_seconds"],
            "credentials": self._seal(data["name"], smtp.get("password"), imap["password"]),
            "created_at": self.now,
            "updated_at": self.now,
            "updated_by": self.actor,
        }
        try:
            async with self.session.begin_nested():
                result = await self.session.execute(
                    insert(technical_users).values(**values).returning(technical_users.c.id)
                )
        except IntegrityError:
            raise Conflict(
                f"a technical user named {data['name']!r} already exists",
                code="technical-user-exists",
            ) from None
        return await self.technical_user_view(int(result.scalar_one()))

    async def update_technical_user(
        self, user_id: int, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Partial update. In ``smtp`` / ``imap``: a password that is absent stays, a string
        replaces it; ``smtp.password = None`` removes it (no SMTP login)."""
        row = await self._user_row(user_id)
        if "name" in changes and changes["name"] != row["name"]:
            raise Invalid(
                "a technical user's name cannot change (it binds its encrypted credentials)",
                code="technical-user-name-locked",
            )
        values: dict[str, Any] = {}
        for key in ("display_name", "email", "tls_verify", "timeout_seconds"):
            if key in changes:
                values[key] = changes[key]
        if "tls_ca_pem" in changes:
            validate_ca_pem(changes["tls_ca_pem"])
            values["tls_ca_pem"] = changes["tls_ca_pem"]
        creds = None
        for proto in ("smtp", "imap"):
            part = changes.get(proto)
            if part is None:
                continue
            for key, value in part.items():
                if key == "password":
                    if creds is None:
                        creds = self._open(row)
                    if value is None:
                        if proto == "imap":
                            raise Invalid("the IMAP password cannot be removed", code="invalid")
                        creds.pop("smtp_password", None)
                    else:
                        creds[f"{proto}_password"] = value
                elif proto == "imap" and key in ("folder", "processed_folder", "ignored_folder"):
                    values["imap_folder" if key == "folder" else key] = value
                else:
                    values[f"{proto}_{key}"] = value
        username = values.get("smtp_username", row["smtp_username"])
        has_password = (
            "smtp_password" in creds if creds is not None else row["smtp_username"] is not None
        )
        if (username is None) == has_password:
            raise Invalid(
                "an SMTP login needs both username and password (or neither, for no login)",
                code="smtp-login-incomplete",
            )
        if creds is not None:
            values["credentials"] = self._seal(
                row["name"], creds.get("smtp_password"), creds["imap_password"]
            )
        if values:
            # A changed configuration has not been checked yet.
            values.update(
                updated_at=self.now, updated_by=self.actor, last_check=None, last_check_at=None
            )
            await self.session.execute(
                update(technical_users).where(technical_users.c.id == user_id).values(**values)
            )
        return await self.technical_user_view(user_id)

    async def _user_row(self, user_id: int) -> dict[str, Any]:
        row = await self._one(select(technical_users).where(technical_users.c.id == user_id))
        if row is None:
            raise NotFound(f"no technical user {user_id}", code="technical-user-not-found")
        return row

    async def technical_user_view(self, user_id: int) -> dict[str, Any]:
        return self._user_view(await self._user_row(user_id))

    async def list_technical_users(self) -> list[dict[str, Any]]:
        rows = await self._all(select(technical_users).order_by(technical_users.c.id))
        return [self._user_view(r) for r in rows]

    def _user_view(self, r: Mapping[str, Any]) -> dict[str, Any]:
        # Which passwords are set is derived without decrypting: SMTP has one iff it logs in.
        return {
            "id": r["id"],
            "name": r["name"],
            "display_name": r["display_name"],
            "email": r["email"],
            "smtp": {
                "host": r["smtp_host"],
                "port": r["smtp_port"],
                "security": r["smtp_security"],
                "username": r["smtp_username"],
                "password": SET if r["smtp_username"] else NOT_SET,
            },
            "imap": {
                "host": r["imap_host"],
                "port": r["imap_port"],
                "security": r["imap_security"],
                "username": r["imap_username"],
                "password": SET,
                "folder": r["imap_folder"],
                "processed_folder": r["processed_folder"],
                "ignored_folder": r["ignored_folder"],
            },
            "tls_verify": r["tls_verify"],
            "tls_ca_pem": r["tls_ca_pem"],
            "timeout_seconds": r["timeout_seconds"],
            "last_check": r["last_check"],
            "last_check_at": r["last_check_at"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "updated_by": r["updated_by"],
        }

    async def account(self, user_id: int) -> MailAccount:
        """The technical user with decrypted passwords, for the mail sessions."""
        r = await self._user_row(user_id)
        creds = self._open(r)
        smtp_password = creds.get("smtp_password")
        return MailAccount(
            id=r["id"],
            name=r["name"],
            display_name=r["display_name"],
            email=r["email"],
            smtp_host=r["smtp_host"],
            smtp_port=r["smtp_port"],
            smtp_security=r["smtp_security"],
            smtp_username=r["smtp_username"],
            smtp_password=SecretStr(smtp_password) if smtp_password is not None else None,
            imap_host=r["imap_host"],
            imap_port=r["imap_port"],
            imap_security=r["imap_security"],
            imap_username=r["imap_username"],
            imap_password=SecretStr(creds["imap_password"]),
            imap_folder=r["imap_folder"],
            processed_folder=r["processed_folder"],
            ignored_folder=r["ignored_folder"],
            tls_verify=r["tls_verify"],
            tls_ca_pem=r["tls_ca_pem"],
            timeout_seconds=r["timeout_seconds"],
        )

    async def record_check(
        self, user_id: int, smtp: ProbeResult, imap: ProbeResult
    ) -> dict[str, Any]:
        result = {"ok": smtp.ok and imap.ok, "smtp": smtp.as_dict(), "imap": imap.as_dict()}
        await self.session.execute(
            update(technical_users)
            .where(technical_users.c.id == user_id)
            .values(last_check=result, last_check_at=self.now)
        )
        level = "info" if result["ok"] else "warning"
        await self.log(
            None,
            "connection-check",
            f"{smtp.message}; {imap.message}",
            level=level,
            technical_user_id=user_id,
            detail=result,
        )
        return {**result, "checked_at": self.now}

    async def mail_log(self, user_id: int, *, limit: int, offset: int) -> list[dict[str, Any]]:
        """What happened at this technical user's mailbox that belongs to no invitation."""
        await self._user_row(user_id)
        return await self._all(
            select(invitation_log)
            .where(
                invitation_log.c.technical_user_id == user_id,
                invitation_log.c.invitation_id.is_(None),
            )
            .order_by(invitation_log.c.id.desc())
            .limit(limit)
            .offset(offset)
        )

    # ================================================================== mailboxes

    async def _mailbox_row(self, mailbox_id: int) -> dict[str, Any]:
        row = await self._one(select(mailboxes).where(mailboxes.c.id == mailbox_id))
        if row is None:
            raise NotFound(f"no room mailbox {mailbox_id}", code="mailbox-not-found")
        return row

    async def create_mailbox(self, data: Mapping[str, Any]) -> dict[str, Any]:
        room = await self._one(select(rooms).where(rooms.c.room_id == data["room_id"]))
        if room is None:
            raise Invalid(
                f"unknown room {data['room_id']!r} (PUT /rooms/{{room_id}} first)",
                code="room-not-found",
            )
        await self._user_row(data["technical_user_id"])
        clash = await self._one(
            select(mailboxes.c.id, mailboxes.c.room_id, mailboxes.c.email).where(
                (mailboxes.c.room_id == data["room_id"])
                | (func.lower(mailboxes.c.email) == data["email"].lower())
            )
        )
        if clash is not None:
            what = "room" if clash["room_id"] == data["room_id"] else "address"
            raise Conflict(
                f"that {what} already has room mailbox {clash['id']}",
                code="mailbox-exists",
                extra={"mailbox_id": clash["id"]},
            )
        result = await self.session.execute(
            insert(mailboxes)
            .values(
                room_id=data["room_id"],
                email=data["email"],
                technical_user_id=data["technical_user_id"],
                include_blocks=data["include_blocks"],
                active=data["active"],
                created_at=self.now,
                created_by=self.actor,
                updated_at=self.now,
                updated_by=self.actor,
            )
            .returning(mailboxes.c.id)
        )
        return await self.mailbox_view(int(result.scalar_one()))

    async def update_mailbox(self, mailbox_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Only the technical user and ``include_blocks`` may change after set-up."""
        row = await self._mailbox_row(mailbox_id)
        locked = sorted(k for k in changes if k not in CHANGEABLE_MAILBOX_FIELDS)
        if locked:
            raise Invalid(
                f"a room mailbox's configuration is fixed once set up; only "
                f"{' and '.join(CHANGEABLE_MAILBOX_FIELDS)} can change (not: {', '.join(locked)})",
                code="mailbox-field-locked",
                extra={"locked": locked, "changeable": list(CHANGEABLE_MAILBOX_FIELDS)},
            )
        values: dict[str, Any] = {}
        if (
            "technical_user_id" in changes
            and changes["technical_user_id"] != row["technical_user_id"]
        ):
            await self._user_row(changes["technical_user_id"])
            values["technical_user_id"] = changes["technical_user_id"]
        blocks_changed = (
            "include_blocks" in changes and changes["include_blocks"] != row["include_blocks"]
        )
        if blocks_changed:
            values["include_blocks"] = changes["include_blocks"]
        if values:
            await self.session.execute(
                update(mailboxes)
                .where(mailboxes.c.id == mailbox_id)
                .values(**values, updated_at=self.now, updated_by=self.actor)
            )
        if blocks_changed:
            # Blocks now excluded: what reached the calendar is cancelled, the rest skipped.
            # Blocks now included: new and changed blocks are invited; existing future ones
            # through an initialisation (as after set-up).
            block_ids = (
                await self.session.execute(
                    select(room_events.c.event_id).where(
                        room_events.c.room_id == row["room_id"], room_events.c.kind == "block"
                    )
                )
            ).scalars()
            reason = "room blocks included" if changes["include_blocks"] else "room blocks excluded"
            for event_id in list(block_ids):
                await self._reconcile(event_id, reason=reason, create=False)
        return await self.mailbox_view(mailbox_id)

    async def set_active(self, mailbox_id: int, active: bool) -> dict[str, Any]:
        await self._mailbox_row(mailbox_id)
        await self.session.execute(
            update(mailboxes)
            .where(mailboxes.c.id == mailbox_id)
            .values(active=active, updated_at=self.now, updated_by=self.actor)
        )
        return await self.mailbox_view(mailbox_id)

    async def mailbox_view(self, mailbox_id: int) -> dict[str, Any]:
        row = await self._mailbox_row(mailbox_id)
        counts: dict[str, int] = dict(
            (
                await self.session.execute(
                    select(invitations.c.status, func.count())
                    .where(invitations.c.mailbox_id == mailbox_id)
                    .group_by(invitations.c.status)
                )
            ).all()
        )
        room = await self._one(select(rooms.c.name).where(rooms.c.room_id == row["room_id"]))
        return {
            **row,
            "room_name": room["name"] if room else None,
            "invitations": {k: int(v) for k, v in counts.items()},
        }

    async def list_mailboxes(self) -> list[dict[str, Any]]:
        ids = (
            await self.session.execute(select(mailboxes.c.id).order_by(mailboxes.c.id))
        ).scalars()
        return [await self.mailbox_view(i) for i in list(ids)]

    async def recycle(self, mailbox_id: int) -> list[int]:
        """Reset every invitation of the mailbox in status ``error`` for another round."""
        await self._mailbox_row(mailbox_id)
        ids = list(
            (
                await self.session.execute(
                    select(invitations.c.id)
                    .where(invitations.c.mailbox_id == mailbox_id, invitations.c.status == "error")
                    .order_by(invitations.c.id)
                )
            ).scalars()
        )
        for inv_id in ids:
            await self.reset_invitation(inv_id)
        return ids

    async def reset_invitation(self, inv_id: int) -> dict[str, Any]:
        inv = await self._invitation_row(inv_id)
        if inv["status"] != "error":
            raise Conflict(
                f"invitation {inv_id} is {inv['status']}, only invitations in error are reset",
                code="invitation-not-in-error",
            )
        await self._set(
            inv_id, status="pending", attempts=0, last_error=None, version=inv["version"] + 1
        )
        await self.log(
            inv_id,
            "reset",
            f"reset for sending again (was error after {inv['attempts']} attempt(s): "
            f"{inv['last_error'] or 'no error recorded'})",
            sequence=inv["sequence"],
        )
        return await self.invitation_view(inv_id)

    async def _initialisation_candidates(self, mailbox: Mapping[str, Any]) -> list[dict[str, Any]]:
        kinds = ["booking", "block"] if mailbox["include_blocks"] else ["booking"]
        existing = (
            select(invitations.c.id)
            .where(
                invitations.c.event_id == room_events.c.event_id,
                invitations.c.mailbox_id == mailbox["id"],
                invitations.c.status != "skipped",
            )
            .exists()
        )
        return await self._all(
            select(
                room_events.c.event_id,
                room_events.c.kind,
                room_events.c.title,
                room_events.c.starts_at,
                room_events.c.ends_at,
            )
            .where(
                room_events.c.room_id == mailbox["room_id"],
                room_events.c.deleted_at.is_(None),
                room_events.c.starts_at > self.now,
                room_events.c.kind.in_(kinds),
                ~existing,
            )
            .order_by(room_events.c.starts_at, room_events.c.event_id)
        )

    async def initialisation_preview(self, mailbox_id: int) -> list[dict[str, Any]]:
        """The future events (and blocks, if included) of the room that have no invitation."""
        return await self._initialisation_candidates(await self._mailbox_row(mailbox_id))

    async def initialise(
        self, mailbox_id: int, event_ids: list[str] | None
    ) -> tuple[list[int], list[str]]:
        """Queue invitations for the preview's events (only ``event_ids`` of them, if given);
        returns (invitation ids, requested ids that were not in the preview)."""
        mailbox = await self._mailbox_row(mailbox_id)
        candidates = {c["event_id"] for c in await self._initialisation_candidates(mailbox)}
        wanted = candidates if event_ids is None else set(event_ids)
        not_eligible = sorted(wanted - candidates)
        created = []
        for event_id in sorted(wanted & candidates):
            inv_id = await self._invite(event_id, mailbox, reason="initialised")
            created.append(inv_id)
        return created, not_eligible

    # ================================================================== events

    async def _event_row(self, event_id: str) -> dict[str, Any] | None:
        return await self._one(
            select(room_events).where(room_events.c.event_id == event_id).with_for_update()
        )

    async def sync_event(self, data: RoomEventData) -> str:
        """Store a created/changed event and queue what its room mailbox needs. Returns
        ``created`` / ``changed`` / ``unchanged`` / ``stale`` (an older revision: ignored)."""
        current = await self._event_row(data.event_id)
        if (
            current is not None
            and data.revision is not None
            and current["revision"] is not None
            and data.revision <= current["revision"]
        ):
            return "stale"
        await self._ensure_room(data.room_id, data.room_name)
        values = {
            "room_id": data.room_id,
            "kind": data.kind,
            "title": data.title,
            "description": data.description,
            "booked_by": data.booked_by,
            "starts_at": data.starts_at,
            "ends_at": data.ends_at,
            "revision": data.revision if data.revision is not None else None,
            "deleted_at": None,
            "updated_at": self.now,
        }
        if current is None:
            await self.session.execute(insert(room_events).values(event_id=data.event_id, **values))
            outcome = "created"
        else:
            if data.revision is None:
                values["revision"] = current["revision"]
            same = all(
                current[k] == v for k, v in values.items() if k not in ("updated_at", "revision")
            )
            await self.session.execute(
                update(room_events).where(room_events.c.event_id == data.event_id).values(**values)
            )
            outcome = "unchanged" if same else "changed"
        await self._reconcile(data.event_id, reason=f"event {outcome}")
        return outcome

    async def delete_event(self, event_id: str, revision: int | None) -> str:
        """Mark the event deleted and queue CANCELs. ``deleted`` / ``unknown`` / ``stale`` /
        ``unchanged`` (already deleted)."""
        current = await self._event_row(event_id)
        if current is None:
            return "unknown"
        if revision is not None and current["revision"] is not None:
            if revision < current["revision"]:
                return "stale"
        if current["deleted_at"] is not None:
            return "unchanged"
        await self.session.execute(
            update(room_events)
            .where(room_events.c.event_id == event_id)
            .values(
                deleted_at=self.now,
                updated_at=self.now,
                revision=revision if revision is not None else current["revision"],
            )
        )
        await self._reconcile(event_id, reason="event deleted")
        return "deleted"

    async def event_view(self, event_id: str) -> dict[str, Any]:
        ev = await self._event_row(event_id)
        if ev is None:
            raise NotFound(f"no event {event_id!r}", code="event-not-found")
        invs = await self._all(
            select(
                invitations.c.id,
                invitations.c.mailbox_id,
                mailboxes.c.email.label("mailbox"),
                invitations.c.uid,
                invitations.c.status,
                invitations.c.method,
                invitations.c.sequence,
                invitations.c.attempts,
                invitations.c.last_error,
                invitations.c.updated_at,
            )
            .join(mailboxes, mailboxes.c.id == invitations.c.mailbox_id)
            .where(invitations.c.event_id == event_id)
            .order_by(invitations.c.id)
        )
        return {**ev, "invitations": invs}

    async def list_events(
        self, *, room_id: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        query = select(room_events).order_by(room_events.c.starts_at, room_events.c.event_id)
        if room_id is not None:
            query = query.where(room_events.c.room_id == room_id)
        return await self._all(query.limit(limit).offset(offset))

    async def _content(self, ev: Mapping[str, Any]) -> dict[str, Any]:
        room = await self._one(select(rooms.c.name).where(rooms.c.room_id == ev["room_id"]))
        return itip.snapshot(
            kind=ev["kind"],
            title=ev["title"],
            description=ev["description"],
            booked_by=ev["booked_by"],
            starts_at=ev["starts_at"],
            ends_at=ev["ends_at"],
            room_id=ev["room_id"],
            room_name=room["name"] if room else ev["room_id"],
        )

    async def _reconcile(self, event_id: str, *, reason: str, create: bool = True) -> None:
        """Bring every invitation of the event in line with the event and its room's mailbox."""
        ev = await self._event_row(event_id)
        assert ev is not None
        mailbox = await self._one(select(mailboxes).where(mailboxes.c.room_id == ev["room_id"]))
        eligible = (
            mailbox is not None
            and ev["deleted_at"] is None
            and (ev["kind"] == "booking" or mailbox["include_blocks"])
        )
        content = await self._content(ev)
        invs = await self._all(
            select(invitations)
            .where(invitations.c.event_id == event_id)
            .order_by(invitations.c.id)
            .with_for_update()
        )
        has_target = False
        for inv in invs:
            if eligible and mailbox is not None and inv["mailbox_id"] == mailbox["id"]:
                has_target = True
                await self._queue_request(inv, content, reason=reason)
            else:
                await self._queue_cancel(inv, content, reason=reason)
        if eligible and mailbox is not None and not has_target and create:
            if ev["ends_at"] > self.now:  # nothing is sent for events that are already over
                await self._invite(event_id, mailbox, reason=reason, content=content)

    async def _invite(
        self,
        event_id: str,
        mailbox: Mapping[str, Any],
        *,
        reason: str,
        content: dict[str, Any] | None = None,
    ) -> int:
        """Create the invitation of an event for a mailbox (or re-queue a skipped one)."""
        if content is None:
            ev = await self._event_row(event_id)
            assert ev is not None
            content = await self._content(ev)
        skipped = await self._one(
            select(invitations).where(
                invitations.c.event_id == event_id, invitations.c.mailbox_id == mailbox["id"]
            )
        )
        if skipped is not None:
            await self._queue_request(skipped, content, reason=reason)
            return int(skipped["id"])
        result = await self.session.execute(
            insert(invitations)
            .values(
                event_id=event_id,
                mailbox_id=mailbox["id"],
                uid=f"{uuid.uuid4()}@{self.settings.uid_domain}",
                sequence=0,
                method="REQUEST",
                status="pending",
                attempts=0,
                snapshot=content,
                version=1,
                created_at=self.now,
                updated_at=self.now,
            )
            .returning(invitations.c.id)
        )
        inv_id = int(result.scalar_one())
        await self.log(
            inv_id,
            "queued",
            f"REQUEST queued ({reason}) for {mailbox['email']}",
            sequence=0,
            detail={"content": content},
        )
        return inv_id

    @staticmethod
    def next_sequence(inv: Mapping[str, Any], content: Mapping[str, Any], method: str) -> int:
        """The SEQUENCE of a new version, judged against what the mailbox last received."""
        base = inv["sent_sequence"]
        if base is None:
            return int(inv["sequence"])  # nothing delivered yet: the first number stands
        if method == "CANCEL" or inv["sent_method"] == "CANCEL":
            return int(base) + 1
        return int(base) + 1 if itip.is_significant(inv["sent_snapshot"], content) else int(base)

    @staticmethod
    def delivered_status(inv: Mapping[str, Any], sequence: int) -> str:
        """Status after a REQUEST with ``sequence`` reached the mailbox: its earlier answer to
        the same SEQUENCE still holds (RFC 5546: PARTSTAT persists within a SEQUENCE)."""
        if inv["reply_sequence"] == sequence and inv["reply_partstat"] in PARTSTAT_STATUS:
            return PARTSTAT_STATUS[inv["reply_partstat"]]
        return "sent"

    async def _queue_request(
        self, inv: Mapping[str, Any], content: dict[str, Any], *, reason: str
    ) -> None:
        already_queued = inv["method"] == "REQUEST" and inv["status"] not in (
            "skipped",
            "cancelled",
        )
        if already_queued and inv["snapshot"] == content:
            return
        sequence = self.next_sequence(inv, content, "REQUEST")
        if (
            inv["sent_method"] == "REQUEST"
            and inv["sent_snapshot"] == content
            and inv["sent_sequence"] == sequence
            and inv["status"] != "error"
        ):
            # Back to exactly what the mailbox holds: nothing to send.
            status = self.delivered_status(inv, sequence)
            await self._set(
                inv["id"],
                snapshot=content,
                sequence=sequence,
                method="REQUEST",
                status=status,
                attempts=0,
                last_error=None,
                version=inv["version"] + 1,
            )
            await self.log(
                inv["id"],
                "unchanged",
                f"{reason}: the mailbox already holds this version; nothing to send",
                sequence=sequence,
            )
            return
        significant = sequence != inv["sequence"] or inv["method"] != "REQUEST"
        keep_error = inv["status"] == "error"
        new = await self._set(
            inv["id"],
            snapshot=content,
            sequence=sequence,
            method="REQUEST",
            status="error" if keep_error else "pending",
            attempts=inv["attempts"] if keep_error else 0,
            version=inv["version"] + 1,
        )
        if keep_error:
            await self.log(
                inv["id"],
                "changed-in-error",
                f"{reason} while the invitation is in error: reset it to send SEQUENCE {sequence}",
                level="warning",
                sequence=sequence,
                detail={"content": content},
            )
            return
        kind = "significant change" if significant else "update"
        await self.log(
            inv["id"],
            "queued",
            f"REQUEST queued ({reason}; {kind}, SEQUENCE {sequence})",
            sequence=sequence,
            detail={"content": content},
        )
        if inv["status"] != new["status"] and inv["status"] in ("skipped", "cancelled"):
            await self._publish(new, "pending", reason)

    async def _queue_cancel(
        self, inv: Mapping[str, Any], content: dict[str, Any], *, reason: str
    ) -> None:
        delivered = inv["sent_sequence"] is not None and inv["sent_method"] == "REQUEST"
        if inv["status"] == "cancelled" or (inv["status"] == "skipped" and not delivered):
            return
        if inv["method"] == "CANCEL" and inv["status"] in ("pending", "error"):
            return
        if not delivered:
            # Nothing of this event is in the mailbox's calendar: nothing to cancel.
            new = await self._set(
                inv["id"], status="skipped", attempts=0, version=inv["version"] + 1
            )
            await self.log(
                inv["id"],
                "skipped",
                f"{reason}: nothing had reached the mailbox, nothing to cancel",
                sequence=inv["sequence"],
            )
            await self._publish(new, "skipped", reason)
            return
        sequence = self.next_sequence(inv, content, "CANCEL")
        keep_error = inv["status"] == "error"
        await self._set(
            inv["id"],
            snapshot=content,
            sequence=sequence,
            method="CANCEL",
            status="error" if keep_error else "pending",
            attempts=inv["attempts"] if keep_error else 0,
            version=inv["version"] + 1,
        )
        await self.log(
            inv["id"],
            "changed-in-error" if keep_error else "cancel-queued",
            f"CANCEL queued ({reason}, SEQUENCE {sequence})"
            + ("; the invitation is in error: reset it to send" if keep_error else ""),
            level="warning" if keep_error else "info",
            sequence=sequence,
        )

    # ================================================================== invitations

    async def _invitation_row(self, inv_id: int) -> dict[str, Any]:
        row = await self._one(
            select(invitations).where(invitations.c.id == inv_id).with_for_update()
        )
        if row is None:
            raise NotFound(f"no invitation {inv_id}", code="invitation-not-found")
        return row

    async def invitation_view(self, inv_id: int) -> dict[str, Any]:
        row = await self._invitation_row(inv_id)
        mailbox = await self._mailbox_row(row["mailbox_id"])
        row.pop("last_ics", None)
        return {**row, "mailbox": mailbox["email"], "room_id": mailbox["room_id"]}

    async def invitation_ics(self, inv_id: int) -> str:
        row = await self._invitation_row(inv_id)
        if not row["last_ics"]:
            raise NotFound(f"invitation {inv_id} has not been sent yet", code="not-sent-yet")
        return str(row["last_ics"])

    async def invitation_log(self, inv_id: int, *, limit: int, offset: int) -> list[dict[str, Any]]:
        await self._invitation_row(inv_id)
        return await self._all(
            select(invitation_log)
            .where(invitation_log.c.invitation_id == inv_id)
            .order_by(invitation_log.c.id)
            .limit(limit)
            .offset(offset)
        )

    async def list_invitations(
        self,
        *,
        mailbox_id: int | None,
        status: str | None,
        event_id: str | None,
        limit: int,
        offset: int,
    ) -> list[dict[str, Any]]:
        query = (
            select(
                *(c for c in invitations.c if c.name != "last_ics"),
                mailboxes.c.email.label("mailbox"),
                mailboxes.c.room_id,
            )
            .join(mailboxes, mailboxes.c.id == invitations.c.mailbox_id)
            .order_by(invitations.c.id)
            .limit(limit)
            .offset(offset)
        )
        if mailbox_id is not None:
            query = query.where(invitations.c.mailbox_id == mailbox_id)
        if status is not None:
            query = query.where(invitations.c.status == status)
        if event_id is not None:
            query = query.where(invitations.c.event_id == event_id)
        return await self._all(query)

    async def status_of_event(self, event_id: str) -> list[dict[str, Any]] | None:
        if await self._event_row(event_id) is None:
            return None
        return await self._all(
            select(
                invitations.c.id.label("invitation_id"),
                mailboxes.c.room_id,
                mailboxes.c.email.label("mailbox"),
                invitations.c.status,
                invitations.c.sequence,
                invitations.c.attempts,
                invitations.c.last_error,
                invitations.c.updated_at,
            )
            .join(mailboxes, mailboxes.c.id == invitations.c.mailbox_id)
            .where(invitations.c.event_id == event_id)
            .order_by(invitations.c.id)
        )

    # ================================================================== processor support

    async def pending(self, limit: int) -> list[dict[str, Any]]:
        """Invitations to send now (pending, mailbox active), with what building them needs."""
        return await self._all(
            select(
                invitations,
                mailboxes.c.email.label("mailbox_email"),
                mailboxes.c.room_id,
                mailboxes.c.technical_user_id,
                rooms.c.name.label("room_name"),
            )
            .join(mailboxes, mailboxes.c.id == invitations.c.mailbox_id)
            .join(rooms, rooms.c.room_id == mailboxes.c.room_id)
            .where(invitations.c.status == "pending", mailboxes.c.active.is_(True))
            .order_by(invitations.c.id)
            .limit(limit)
        )

    async def mark_sent(
        self,
        pending: Mapping[str, Any],
        *,
        message_id: str,
        ics: str,
        server_reply: str,
    ) -> dict[str, Any]:
        """Record that the version in ``pending`` (as read before sending) reached the mailbox."""
        sent = self._sent_values(pending, message_id, ics)
        what = await self._log_sent(pending, message_id, server_reply)
        # The usual case in one statement: nothing changed since it was read for sending.
        # The status then follows delivered_status(): an earlier answer to this SEQUENCE holds.
        if pending["method"] == "CANCEL":
            status: Any = literal("cancelled")
        else:
            answered = and_(
                invitations.c.reply_sequence == pending["sequence"],
                invitations.c.reply_partstat.in_(list(PARTSTAT_STATUS)),
            )
            status = case((answered, func.lower(invitations.c.reply_partstat)), else_="sent")
        new = await self._one(
            update(invitations)
            .where(invitations.c.id == pending["id"], invitations.c.version == pending["version"])
            .values(**sent, status=status, attempts=0)
            .returning(*invitations.c)
        )
        if new is not None:
            box = {"email": pending["mailbox_email"], "room_id": pending["room_id"]}
            await self._publish(new, new["status"], f"{what} sent", mailbox=box)
            return new
        return await self._sent_after_change(pending, sent)

    def _sent_values(self, pending: Mapping[str, Any], message_id: str, ics: str) -> dict[str, Any]:
        return {
            "sent_sequence": pending["sequence"],
            "sent_snapshot": pending["snapshot"],
            "sent_method": pending["method"],
            "sent_at": self.now,
            "sent_message_id": message_id,
            "last_ics": ics,
            "last_error": None,
            "updated_at": self.now,
        }

    async def _log_sent(self, pending: Mapping[str, Any], message_id: str, reply: str) -> str:
        what = f"{pending['method']} SEQUENCE {pending['sequence']}"
        await self.log(
            pending["id"],
            "sent",
            f"{what} sent to {pending['mailbox_email']} ({reply.strip()[:200]})",
            sequence=pending["sequence"],
            detail={"message_id": message_id, "attempt": pending["attempts"] + 1},
        )
        return what

    async def mark_sent_many(
        self, sent: Sequence[tuple[Mapping[str, Any], str, str, str]]
    ) -> list[dict[str, Any]]:
        """:meth:`mark_sent` for many ``(pending, message_id, ics, server_reply)`` at once: the
        usual case (unchanged since it was read for sending) as one UPDATE over all of them,
        one read-back and one outbox insert; an invitation changed meanwhile takes
        :meth:`mark_sent`'s careful path. Returns the rows in the order given."""
        if not sent:
            return []
        i = invitations.c
        # No IN (...): an expanding parameter cannot go into an executemany.
        answered = and_(
            i.reply_sequence == bindparam("b_sequence"),
            or_(*(i.reply_partstat == literal(v) for v in PARTSTAT_STATUS)),
        )
        status = case(
            (bindparam("b_cancel", type_=Boolean), literal("cancelled")),
            (answered, func.lower(i.reply_partstat)),
            else_=literal("sent"),
        )
        stmt = (
            update(invitations)
            .where(i.id == bindparam("b_id"), i.version == bindparam("b_version"))
            .values(
                sent_sequence=bindparam("b_sequence", type_=i.sent_sequence.type),
                sent_snapshot=bindparam("b_snapshot", type_=i.sent_snapshot.type),
                sent_method=bindparam("b_method", type_=i.sent_method.type),
                sent_at=bindparam("b_now", type_=i.sent_at.type),
                sent_message_id=bindparam("b_message_id", type_=i.sent_message_id.type),
                last_ics=bindparam("b_ics", type_=i.last_ics.type),
                last_error=None,
                updated_at=bindparam("b_now", type_=i.updated_at.type),
                status=status,
                attempts=0,
            )
        )
        params = []
        whats: dict[int, str] = {}
        for pending, message_id, ics, reply in sent:
            whats[pending["id"]] = await self._log_sent(pending, message_id, reply)
            params.append(
                {
                    "b_id": pending["id"],
                    "b_version": pending["version"],
                    "b_sequence": pending["sequence"],
                    "b_snapshot": pending["snapshot"],
                    "b_method": pending["method"],
                    "b_now": self.now,
                    "b_message_id": message_id,
                    "b_ics": ics,
                    "b_cancel": pending["method"] == "CANCEL",
                }
            )
        await self.session.execute(stmt, params)
        ids = [p["id"] for p, *_ in sent]
        rows = {r["id"]: r for r in await self._all(select(invitations).where(i.id.in_(ids)))}
        out: list[dict[str, Any]] = []
        events = []
        for pending, message_id, ics, _ in sent:
            row = rows[pending["id"]]
            if row["sent_message_id"] == message_id and row["version"] == pending["version"]:
                box = {"email": pending["mailbox_email"], "room_id": pending["room_id"]}
                what = whats[pending["id"]]
                events.append(self._status_event(row, row["status"], f"{what} sent", box))
                out.append(row)
            else:
                sent_values = self._sent_values(pending, message_id, ics)
                out.append(await self._sent_after_change(pending, sent_values))
        if self.outbox is not None and events:
            await self.outbox.add_many(self.session, events)
        return out

    async def _sent_after_change(
        self, pending: Mapping[str, Any], sent: dict[str, Any]
    ) -> dict[str, Any]:
        inv = await self._invitation_row(pending["id"])
        # Changed while we were sending: keep the newer version queued, now judged against
        # what was just delivered.
        await self._set(inv["id"], **sent)
        inv = await self._invitation_row(inv["id"])
        if inv["status"] == "skipped":
            await self._reconcile(inv["event_id"], reason="delivered while being withdrawn")
            return await self._invitation_row(inv["id"])
        sequence = self.next_sequence(inv, inv["snapshot"], inv["method"])
        if sequence != inv["sequence"]:
            inv = await self._set(inv["id"], sequence=sequence)
            await self.log(
                inv["id"],
                "requeued",
                f"the queued {inv['method']} now carries SEQUENCE {sequence}",
                sequence=sequence,
            )
        return inv

    async def mark_failed(self, pending: Mapping[str, Any], error: str) -> dict[str, Any]:
        """Count a failed attempt; at ``max_send_attempts`` the status becomes ``error``."""
        inv = await self._invitation_row(pending["id"])
        if inv["status"] != "pending":
            return inv
        attempts = inv["attempts"] + 1
        limit = self.settings.max_send_attempts
        what = f"{pending['method']} SEQUENCE {pending['sequence']}"
        if attempts >= limit:
            new = await self._set(inv["id"], attempts=attempts, last_error=error, status="error")
            await self.log(
                inv["id"],
                "error",
                f"{what}: attempt {attempts} of {limit} failed, giving up: {error}",
                level="error",
                sequence=pending["sequence"],
            )
            await self._publish(new, "error", error)
            return new
        new = await self._set(inv["id"], attempts=attempts, last_error=error)
        await self.log(
            inv["id"],
            "send-failed",
            f"{what}: attempt {attempts} of {limit} failed, retried on the next run: {error}",
            level="warning",
            sequence=pending["sequence"],
        )
        return new

    async def apply_reply(
        self, technical_user_id: int, event: itip.ItipEvent, mail: Mapping[str, Any]
    ) -> tuple[str, str]:
        """Apply one REPLY VEVENT (see :meth:`apply_replies`)."""
        (outcome,) = await self.apply_replies(technical_user_id, [(event, mail)])
        return outcome

    async def apply_replies(
        self,
        technical_user_id: int,
        replies: Sequence[tuple[itip.ItipEvent, Mapping[str, Any]]],
    ) -> list[tuple[str, str]]:
        """Apply REPLY VEVENTs in the order given, each judged against the state the ones
        before it left (two answers to one invitation in a batch behave as one after the
        other). Returns (outcome, why) for each: ``applied``, ``duplicate``, ``stale`` (an older
        SEQUENCE, or the event was cancelled) or ``ignored``.

        The invitations are read (and locked) in one statement and written back in one; the
        status events go to the outbox in one insert."""
        if not replies:
            return []
        uids = sorted({event.uid for event, _ in replies})
        rows = {
            r["uid"]: r
            for r in await self._all(
                select(invitations, mailboxes.c.email.label("mailbox_email"), mailboxes.c.room_id)
                .join(mailboxes, mailboxes.c.id == invitations.c.mailbox_id)
                .where(invitations.c.uid.in_(uids))
                .with_for_update(of=invitations)
            )
        }
        changed: dict[int, dict[str, Any]] = {}
        events: list[InvitationStatusChanged] = []
        out = []
        for event, mail in replies:
            inv = rows.get(event.uid)
            if inv is None:
                out.append(("ignored", f"no invitation has UID {event.uid}"))
                continue
            outcome, why, level, status = self._judge_reply(inv, event)
            action = {"applied": "reply", "duplicate": "reply-duplicate"}.get(
                outcome, f"reply-{outcome}"
            )
            partstat = event.partstat_of(inv["mailbox_email"])
            await self.log(
                inv["id"],
                action,
                why,
                level=level,
                sequence=event.sequence,
                detail={**mail, "reply_sequence": event.sequence, "partstat": partstat},
                technical_user_id=technical_user_id,
            )
            out.append((outcome, why))
            if outcome != "applied":
                continue
            before = inv["status"]
            inv.update(
                reply_partstat=partstat,
                reply_sequence=event.sequence,
                reply_dtstamp=event.dtstamp,
                replied_at=self.now,
                updated_at=self.now,
                status=status or before,
            )
            changed[inv["id"]] = inv
            if status is not None and status != before:
                box = {"email": inv["mailbox_email"], "room_id": inv["room_id"]}
                detail = f"{partstat} (SEQUENCE {event.sequence})"
                events.append(self._status_event(inv, status, detail, box))
        if changed:
            i = invitations.c
            await self.session.execute(
                update(invitations)
                .where(i.id == bindparam("b_id"))
                .values(
                    reply_partstat=bindparam("b_partstat", type_=i.reply_partstat.type),
                    reply_sequence=bindparam("b_sequence", type_=i.reply_sequence.type),
                    reply_dtstamp=bindparam("b_dtstamp", type_=i.reply_dtstamp.type),
                    replied_at=bindparam("b_now", type_=i.replied_at.type),
                    updated_at=bindparam("b_now", type_=i.updated_at.type),
                    status=bindparam("b_status", type_=i.status.type),
                ),
                [
                    {
                        "b_id": inv["id"],
                        "b_partstat": inv["reply_partstat"],
                        "b_sequence": inv["reply_sequence"],
                        "b_dtstamp": inv["reply_dtstamp"],
                        "b_now": self.now,
                        "b_status": inv["status"],
                    }
                    for inv in changed.values()
                ],
            )
        if self.outbox is not None and events:
            await self.outbox.add_many(self.session, events)
        return out

    @staticmethod
    def _judge_reply(
        inv: Mapping[str, Any], event: itip.ItipEvent
    ) -> tuple[str, str, str, str | None]:
        """(outcome, why, log level, new status or None) of a REPLY to ``inv`` as it is now."""
        partstat = event.partstat_of(inv["mailbox_email"])
        if partstat is None:
            return "ignored", f"reply has no ATTENDEE {inv['mailbox_email']}", "warning", None
        if inv["method"] == "CANCEL":
            why = f"{partstat} for SEQUENCE {event.sequence} arrived after the event was cancelled"
            return "stale", why, "info", None
        if event.sequence < inv["sequence"]:
            why = (
                f"{partstat} answers SEQUENCE {event.sequence}; the current one is "
                f"{inv['sequence']}"
            )
            return "stale", why, "info", None
        if event.sequence > inv["sequence"]:
            why = (
                f"{partstat} answers SEQUENCE {event.sequence}, which was never sent "
                f"(current: {inv['sequence']})"
            )
            return "ignored", why, "warning", None
        if partstat not in PARTSTAT_STATUS:
            return "ignored", f"PARTSTAT {partstat} is not a decision", "warning", None
        if (
            inv["reply_dtstamp"] is not None
            and event.dtstamp is not None
            and event.dtstamp < inv["reply_dtstamp"]
        ):
            why = f"{partstat} is older than the answer already recorded"
            return "stale", why, "info", None
        if inv["reply_partstat"] == partstat and inv["reply_sequence"] == event.sequence:
            return "duplicate", f"{partstat} was already recorded", "info", None
        status = PARTSTAT_STATUS[partstat]
        waiting = inv["status"] in ("sent", *REPLY_STATUSES)
        why = f"room mailbox answered {partstat} for SEQUENCE {event.sequence}"
        return (
            "applied",
            why,
            ("info" if status != "declined" else "warning"),
            (status if waiting else None),
        )

    async def note_mail(
        self, technical_user_id: int, action: str, why: str, mail: Mapping[str, Any], level: str
    ) -> None:
        """Log a mail that belongs to no invitation (moved to the ignored folder)."""
        await self.log(
            None, action, why, level=level, detail=dict(mail), technical_user_id=technical_user_id
        )

    async def technical_user_ids(self) -> list[int]:
        """Every technical user: each one's mailbox is read, also after a room mailbox moved to
        another user (late replies to what the old one sent still arrive there)."""
        rows = await self.session.execute(
            select(technical_users.c.id).order_by(technical_users.c.id)
        )
        return list(rows.scalars())
