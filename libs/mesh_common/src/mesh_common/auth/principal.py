"""The verified identity behind a request, and the one place that decides what it may do.

Responsible for turning verified JWT claims into a :class:`Principal` and for the role/scope rules
(:meth:`Principal.allows`). It must not verify signatures or read HTTP headers; that is the
verifier's and the FastAPI integration's job.

Rules (documented in docs/auth.md and tested):

* ``admin`` implies ``staff`` and holds every scope.
* ``participant`` and ``service`` are kinds of identity (a person with a participant id, a machine
  client), not privilege levels, so nothing implies them: an endpoint that admins may call as
  well must name ``admin`` explicitly, e.g. ``require("service", "admin")``.
* ``require(*roles, scopes=...)`` passes when the principal has *any* of the roles (or no roles
  were named) and *all* of the scopes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Role(StrEnum):
    PARTICIPANT = "participant"
    STAFF = "staff"
    ADMIN = "admin"
    SERVICE = "service"


# role -> roles it additionally grants
_IMPLIED_ROLES: Mapping[str, frozenset[str]] = {Role.ADMIN: frozenset({Role.STAFF})}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``claims`` is the full, read-only verified claim set."""

    subject: str
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    participant_id: str | None = None
    tenant: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @property
    def effective_roles(self) -> frozenset[str]:
        implied: set[str] = set(self.roles)
        for role in self.roles:
            implied |= _IMPLIED_ROLES.get(role, frozenset())
        return frozenset(implied)

    def has_role(self, role: str) -> bool:
        return role in self.effective_roles

    def has_scope(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    def missing(self, roles: Iterable[str] = (), scopes: Iterable[str] = ()) -> list[str]:
        """What keeps this principal from passing ``require(*roles, scopes=scopes)``;
        empty when it passes. Used for a precise 403 detail."""
        problems: list[str] = []
        wanted_roles = list(roles)
        if wanted_roles and not any(self.has_role(r) for r in wanted_roles):
            problems.append("role " + " or ".join(wanted_roles))
        problems.extend(f"scope {s}" for s in scopes if not self.has_scope(s))
        return problems

    def allows(self, roles: Iterable[str] = (), scopes: Iterable[str] = ()) -> bool:
        return not self.missing(roles, scopes)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        """Build a principal from *verified* claims.

        Roles come from ``roles`` (a list, or a space-separated string); scopes from ``scope``
        (OAuth 2 space-separated string) or ``scp`` (a list, as some identity providers emit).
        """
        return cls(
            subject=str(claims["sub"]),
            roles=_string_set(claims.get("roles")),
            scopes=_string_set(claims.get("scope")) | _string_set(claims.get("scp")),
            participant_id=_opt_str(claims.get("participant_id")),
            tenant=_opt_str(claims.get("tenant")),
            claims=MappingProxyType(dict(claims)),
        )


def _string_set(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()


def _opt_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)
