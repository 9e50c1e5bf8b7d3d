"""RPC handlers: what the website's backend asks during registration (``mesh.rpc`` exchange).

Every request carries :class:`~mesh_contracts.profile.CallerAuth`, verified exactly like the
HTTP API (``access.Authorizer``): the participant's own token, or the website's service token
plus a delegation for that participant with scope ``profile:read``. Failures reply with a typed
error envelope (the bus always replies): ``token-*`` 401, ``delegation-*``/``forbidden``/
``participant-mismatch``/``insufficient-scope`` 403, ``participant-not-found`` 404,
``audit-unavailable`` 503; the caller re-raises them as the matching ``RemoteDomainError``.

Idempotency: all handlers are read-only, so a repeated request is harmless; RPC requests are
never retried by the bus (the caller decides). Reads under a delegation are audited before the
reply is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from mesh_common.bus import HandlerRegistry, MessageContext
from mesh_contracts.profile import (
    BankAccountList,
    GetOrderHistory,
    GetProfile,
    ListBankAccounts,
    OrderHistory,
    Profile,
)

from profile_service import service
from profile_service.access import READ
from profile_service.api import ProfileParts


def build_handlers(parts: Callable[[], ProfileParts]) -> HandlerRegistry:
    """The service's RPC handlers; ``parts`` returns the started service's shared parts."""
    handlers = HandlerRegistry()

    @handlers.rpc()
    async def get_profile(msg: GetProfile, ctx: MessageContext) -> Profile:
        """Idempotency: read-only. Failure: domain error reply, no retry."""
        p = parts()
        access = await p.authorizer.from_credentials(
            msg.auth, scope=READ, claimed=msg.participant_id
        )
        profile = await service.get_profile(p.coursedb, access.participant_id)
        await p.audit.before_read(access, "profile.read")
        return Profile(profile=profile)

    @handlers.rpc()
    async def list_bank_accounts(msg: ListBankAccounts, ctx: MessageContext) -> BankAccountList:
        """Idempotency: read-only. Failure: domain error reply, no retry."""
        p = parts()
        access = await p.authorizer.from_credentials(
            msg.auth, scope=READ, claimed=msg.participant_id
        )
        accounts = await service.list_accounts(p.coursedb, access.participant_id)
        await p.audit.before_read(access, "bank_accounts.read")
        return BankAccountList(accounts=accounts)

    @handlers.rpc()
    async def get_order_history(msg: GetOrderHistory, ctx: MessageContext) -> OrderHistory:
        """Idempotency: read-only. Failure: domain error reply, no retry."""
        p = parts()
        access = await p.authorizer.from_credentials(
            msg.auth, scope=READ, claimed=msg.participant_id
        )
        history = await service.order_history(
            p.coursedb, access.participant_id, limit=msg.limit, offset=msg.offset
        )
        await p.audit.before_read(access, "orders.read")
        return history

    return handlers
