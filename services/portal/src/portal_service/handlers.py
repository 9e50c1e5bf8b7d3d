"""Bus handlers of the portal: ``portal.register_job.v1`` from the agency's job system.

Idempotency: the inbox records the message id in the same transaction as the effect, and the
effect itself is keyed (project number, ticket number), so a redelivered or repeated message
changes nothing. Failure policy: a payload that does not validate is dead-lettered by the bus
(poison); a registration the portal refuses (a domain error: unknown contact, job of another
client) is dead-lettered at once with the reason; anything else (database down) is retried by
the bus within its bounds and then dead-lettered, so nothing is lost.
"""

from __future__ import annotations

from mesh_common.app import ServiceRuntime
from mesh_common.bus import DeadLetter, HandlerRegistry, MessageContext
from mesh_common.errors import DomainError
from mesh_contracts.portal import RegisterJob
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import jobs
from portal_service.core import log, portal_of


def build(holder: dict[str, ServiceRuntime]) -> HandlerRegistry:
    handlers = HandlerRegistry()

    @handlers.command(RegisterJob)
    async def register_job(cmd: RegisterJob, ctx: MessageContext) -> None:
        """Idempotency key: the message id (inbox) and (project_no, ticket_no)."""
        runtime = holder["runtime"]
        portal = portal_of(runtime)
        inbox = runtime.inbox
        assert inbox is not None

        async def effect(msg: RegisterJob, c: MessageContext, session: AsyncSession) -> None:
            result = await jobs.register_job(
                portal, session, msg, source="amqp", actor=c.actor or "job-system"
            )
            log.info(
                "job %s registered over AMQP (created=%s, account created=%s)",
                result.project_no,
                result.job_created,
                result.account_created,
            )

        try:
            await inbox.idempotent(effect)(cmd, ctx)
        except DomainError as exc:
            raise DeadLetter(f"{exc.code}: {exc.detail}") from exc

    return handlers
