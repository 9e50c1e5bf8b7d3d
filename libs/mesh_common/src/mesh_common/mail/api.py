"""HTTP API of a service's outgoing mail, for staff: list, inspect, retry failed mail.

``mail_router()`` is mounted by a service next to its own routers. The endpoints are thin: they
call the service's :class:`~mesh_common.mail.queue.MailOutbox` (found by ``get_outbox``; by
default ``app.state.mail_outbox`` or the one ``mail_hooks`` keeps in the runtime), whose domain
errors become problem+json at the edge. Attachment bytes and the sealed content of mail with
sensitive values are never served (its bodies show them as ``[redacted]``). This module must not
hold business logic or touch the database directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from mesh_common.auth import Principal, require
from mesh_common.mail.queue import MailOutbox, MailRecord, MailSummary

MailStatus = Literal["pending", "sending", "sent", "failed"]


class MailPage(BaseModel):
    items: list[MailSummary]
    total: int
    limit: int
    offset: int


def _default_outbox(request: Request) -> MailOutbox:
    """``app.state.mail_outbox``, else the one ``mail_hooks`` keeps in the service runtime."""
    outbox = getattr(request.app.state, "mail_outbox", None)
    if outbox is None:
        runtime = getattr(request.app.state, "runtime", None)
        outbox = getattr(runtime, "extras", {}).get("mail_outbox")
    if not isinstance(outbox, MailOutbox):
        raise RuntimeError("no MailOutbox: add mail_hooks(...) to the service's startup hooks")
    return outbox


def mail_router(
    *,
    prefix: str = "/mail",
    get_outbox: Callable[[Request], MailOutbox] = _default_outbox,
    role: str = "staff",
) -> APIRouter:
    """The outbox API of one service, guarded by ``require(role)`` (admin implies staff)."""
    router = APIRouter(prefix=prefix, tags=["mail"], dependencies=[Depends(require(role))])

    @router.get("/outbox", response_model=MailPage)
    async def list_outbox(
        request: Request,
        status: MailStatus | None = None,
        category: str | None = None,
        ref: str | None = None,
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
    ) -> MailPage:
        """Queued, sent and failed mail, newest first (``status=failed`` for what needs care)."""
        items, total = await get_outbox(request).list_mail(
            status=status, category=category, ref=ref, limit=limit, offset=offset
        )
        return MailPage(items=items, total=total, limit=limit, offset=offset)

    @router.get("/outbox/{mail_id}", response_model=MailRecord)
    async def get_mail(mail_id: str, request: Request) -> MailRecord:
        """One mail with its bodies, headers, attempts and last error; attachments as
        file name, type and size only. A mail with ``sealed: true`` named sensitive values
        (e.g. a one-time link): they show as ``[redacted]`` here and are never served."""
        return await get_outbox(request).get(mail_id)

    @router.post("/outbox/{mail_id}/retry", response_model=MailRecord)
    async def retry_mail(
        mail_id: str, request: Request, principal: Principal = Depends(require(role))
    ) -> MailRecord:
        """Send a failed mail again (it gets a fresh allowance of attempts). 409 unless failed."""
        return await get_outbox(request).retry(mail_id, actor=principal.subject)

    return router
