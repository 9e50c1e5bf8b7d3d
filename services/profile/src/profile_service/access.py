"""Who may see and change which participant's profile: the one authorisation decision.

Rules (docs/profile.md, "Authorisation"):

- A **participant** token (role ``participant`` with ``participant_id``) reaches exactly that
  participant's data. There is no way to name another participant.
- A **service** client (role ``service``, e.g. the website's backend) reaches a participant only
  through a **delegation** for that participant, issued to it (``act.sub`` = its subject), with
  the scope the operation needs (``profile:read`` / ``profile:write``), at most five minutes old
  (:mod:`mesh_common.auth.delegation`). A service token without a delegation is refused (403
  ``delegation-required``).
- Anyone else (staff, admin) has no "me": staff use the read-only staff endpoints.

The same function serves HTTP (bearer in ``Authorization``, delegation in ``X-Delegation-Token``)
and RPC (both in :class:`mesh_contracts.profile.CallerAuth`), so the two channels cannot drift.
This module decides; it does not read or write any database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from mesh_common.auth import Principal, Role, TokenVerifier
from mesh_common.auth.delegation import DelegationRefused, DelegationVerifier
from mesh_common.errors import Forbidden, NotFound
from mesh_contracts.profile import CallerAuth
from prometheus_client import Counter

log = logging.getLogger("profile.access")

READ = "profile:read"
#: coursedb ids are 32-bit integers; a larger number cannot name a row on any backend.
MAX_ID = 2**31 - 1
WRITE = "profile:write"

Channel = Literal["http", "rpc"]
Via = Literal["participant", "delegation", "staff"]


class ParticipantNotFound(NotFound):
    code, title = "participant-not-found", "Participant not found"


@dataclass(frozen=True, slots=True)
class Access:
    """A granted access to one participant's data."""

    participant_id: int
    actor: str  # subject of the caller's own bearer token
    via: Via
    channel: Channel
    delegation_jti: str | None = None

    @property
    def audited(self) -> bool:
        """Reads by someone other than the participant are audited (before data is returned)."""
        return self.via != "participant"


def participant_key(value: str | int | None) -> int:
    """The coursedb id behind a token's ``participant_id``; one that cannot be an id is reported
    exactly like an unknown participant."""
    text = str(value) if value is not None else ""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_ID:
        raise ParticipantNotFound("no participant profile for this account")
    return int(text)


class Authorizer:
    def __init__(
        self,
        tokens: TokenVerifier,
        delegations: DelegationVerifier,
        refusals: Counter | None = None,
    ) -> None:
        self.tokens = tokens
        self.delegations = delegations
        self._refusals = refusals

    async def aclose(self) -> None:
        await self.delegations.aclose()

    async def participant_access(
        self,
        principal: Principal,
        delegation: str | None,
        *,
        scope: str,
        channel: Channel,
        claimed: int | None = None,
    ) -> Access:
        """Grant access to the participant the caller stands for, or raise 403/404.

        ``claimed`` (RPC only) is the participant the caller believes it asks about: a mismatch
        is a 403 that says nothing about whether that participant exists.
        """
        try:
            access = await self._decide(principal, delegation, scope=scope, channel=channel)
        except Forbidden as exc:
            self._refused(exc.code, channel)
            raise
        if claimed is not None and claimed != access.participant_id:
            self._refused("participant-mismatch", channel)
            raise Forbidden(
                "the credentials are not for the participant named in the request",
                code="participant-mismatch",
            )
        return access

    async def from_credentials(
        self, auth: CallerAuth, *, scope: str, claimed: int | None = None
    ) -> Access:
        """RPC: verify the bearer token (401 codes as over HTTP), then decide as above."""
        principal = await self.tokens.verify(auth.token)
        return await self.participant_access(
            principal, auth.delegation, scope=scope, channel="rpc", claimed=claimed
        )

    async def _decide(
        self, principal: Principal, delegation: str | None, *, scope: str, channel: Channel
    ) -> Access:
        if principal.has_role(Role.PARTICIPANT.value):
            if delegation is not None:
                raise DelegationRefused(
                    "a participant acts with their own token, not through a delegation",
                    code="delegation-not-allowed",
                )
            return Access(
                participant_key(principal.participant_id), principal.subject, "participant", channel
            )
        if principal.has_role(Role.SERVICE.value):
            if delegation is None:
                raise Forbidden(
                    "a service client needs the participant's token or a delegation for them",
                    code="delegation-required",
                )
            granted = await self.delegations.verify(delegation, actor=principal, scopes=[scope])
            return Access(
                participant_key(granted.participant_id),
                principal.subject,
                "delegation",
                channel,
                granted.jti,
            )
        raise Forbidden(
            "only participants (or service clients with a delegation) have a profile here; "
            "staff use /participants/{id}",
            code="forbidden",
        )

    def _refused(self, code: str, channel: Channel) -> None:
        # Security-relevant, so visible; never with a token or a participant's data.
        log.warning("profile access refused", extra={"code": code, "channel": channel})
        if self._refusals is not None:
            self._refusals.labels(channel=channel, code=code).inc()
