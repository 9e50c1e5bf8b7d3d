"""The audit trail of access to participants' data (table ``profile_audit``).

Two policies, because the data lives in another database (the coursedb) and one transaction
cannot span both:

- **Reads by someone other than the participant** (staff, a service client under a delegation)
  are recorded *before* the data is returned: if the record cannot be written, the read fails
  (503) — nobody reads personal data unaudited.
- **Changes** are recorded right after the coursedb transaction committed. If the record cannot
  be written then, the change stands (it cannot be rolled back any more); the failure is logged
  at error level and counted (``profile_audit_failures_total``) so an operator sees it.

Entries name fields and record ids, never values (no address, e-mail, phone or IBAN).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from mesh_common.context import current_request_id
from mesh_common.db import Database
from mesh_common.errors import Unavailable
from prometheus_client import Counter
from pydantic import BaseModel, field_validator
from sqlalchemy import select

from profile_service.access import Access
from profile_service.models import profile_audit

log = logging.getLogger("profile.audit")


class AuditEntry(BaseModel):
    id: int
    at: dt.datetime
    channel: str
    action: str
    actor: str
    via: str
    participant_id: int
    delegation_jti: str | None
    request_id: str | None
    detail: dict[str, Any] | None

    @field_validator("at")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        # SQLite returns the stored UTC instant without its zone.
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


class AuditLog:
    def __init__(self, db: Database, failures: Counter | None = None) -> None:
        self._db = db
        self._failures = failures

    async def _insert(self, access: Access, action: str, detail: dict[str, Any] | None) -> None:
        async with self._db.unit_of_work() as session:
            await session.execute(
                profile_audit.insert().values(
                    at=dt.datetime.now(dt.UTC),
                    channel=access.channel,
                    action=action,
                    actor=access.actor[:200],
                    via=access.via,
                    participant_id=access.participant_id,
                    delegation_jti=access.delegation_jti,
                    request_id=current_request_id(),
                    detail=detail,
                )
            )

    async def before_read(
        self, access: Access, action: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Record a read by someone other than the participant; raise 503 if that fails."""
        if not access.audited:
            return
        try:
            await self._insert(access, action, detail)
        except Exception as exc:
            self._count(action)
            log.error("audit record failed; read refused", extra={"action": action})
            raise Unavailable(
                "the access could not be audited; try again later", code="audit-unavailable"
            ) from exc

    async def after_change(
        self, access: Access, action: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Record a committed change; a failure is logged and counted, not raised."""
        try:
            await self._insert(access, action, detail)
        except Exception:
            self._count(action)
            log.error(
                "audit record of a committed change failed",
                extra={"action": action, "participant_id": access.participant_id},
                exc_info=True,
            )

    def _count(self, action: str) -> None:
        if self._failures is not None:
            self._failures.labels(action=action).inc()

    async def entries(
        self, *, participant_id: int | None, actor: str | None, limit: int, before_id: int | None
    ) -> list[AuditEntry]:
        query = select(profile_audit).order_by(profile_audit.c.id.desc()).limit(limit)
        if participant_id is not None:
            query = query.where(profile_audit.c.participant_id == participant_id)
        if actor is not None:
            query = query.where(profile_audit.c.actor == actor)
        if before_id is not None:
            query = query.where(profile_audit.c.id < before_id)
        async with self._db.unit_of_work() as session:
            rows = (await session.execute(query)).mappings().all()
        return [AuditEntry.model_validate(dict(r)) for r in rows]
