"""Base classes and naming rules of message contracts.

The bus routes by a model's ``__message_type__`` class attribute:
- events (past tense, owned by the sender): ``<service>.<past_tense_name>.v<N>``
- commands (imperative, owned by the receiver): ``<service>.<imperative_name>.v<N>``
- RPC requests (owned by the server): ``<service>.<name>`` (the version lives in the payload's
  additive evolution; a breaking change gets a new name)
Names use lower snake case; ``<service>`` is the owning service's package stem
(``booking``, ``course_export``, ...). :func:`all_contracts` lists every model for tests and for
the AsyncAPI document.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

SERVICES = (
    "course_export",
    "booking",
    "profile",
    "portal",
    "mailbox_invites",
    "schulconnex_sync",
)
_VERSIONED = re.compile(r"^(?P<svc>[a-z_]+)\.[a-z][a-z0-9_]*\.v[1-9][0-9]*$")
_RPC = re.compile(r"^(?P<svc>[a-z_]+)\.[a-z][a-z0-9_]*$")


class Contract(BaseModel):
    """A message payload. Unknown fields are ignored so producers can add fields compatibly."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    __message_type__: ClassVar[str]
    __abstract__: ClassVar[bool] = True


class Event(Contract):
    """Something that happened, announced by its owner; fan-out to every subscriber."""


class Command(Contract):
    """A request to do something, owned by the receiving service; one consumer group handles it."""


class RpcRequest(Contract):
    """A query or idempotent command answered synchronously over RPC.

    ``__response_model__`` (optional, an :class:`RpcReply` subclass) names the reply:
    ``bus.call(request)`` validates the reply into it, and the AsyncAPI document
    (:mod:`mesh_contracts.asyncapi`) describes the reply with its schema. Without it the reply
    is documented as untyped JSON.
    """

    __response_model__: ClassVar[type[BaseModel]]


class RpcReply(Contract):
    """The typed result of an RPC request (no ``__message_type__``: it travels as a reply)."""


def naming_errors(cls: type[Contract]) -> list[str]:
    """Why a concrete contract's ``__message_type__`` breaks the naming rules (empty when fine)."""
    name = getattr(cls, "__message_type__", None)
    if not name:
        return [f"{cls.__qualname__}: no __message_type__"]
    pattern = _RPC if issubclass(cls, RpcRequest) else _VERSIONED
    m = pattern.match(name)
    if not m:
        return [f"{cls.__qualname__}: {name!r} does not match {pattern.pattern}"]
    owner = cls.__module__.rsplit(".", 1)[-1]
    if m.group("svc") != owner:
        return [f"{cls.__qualname__}: {name!r} is defined in module {owner!r}, not its owner"]
    return []


def all_contracts() -> list[type[Contract]]:
    """Every concrete contract in the package (imports each service module)."""
    import mesh_contracts

    found: list[type[Contract]] = []
    for mod in pkgutil.iter_modules(mesh_contracts.__path__):
        if mod.name in SERVICES:
            module = importlib.import_module(f"mesh_contracts.{mod.name}")
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, (Event, Command, RpcRequest))
                    and obj.__module__ == module.__name__
                    and not obj.__dict__.get("__abstract__", False)
                ):
                    found.append(obj)
    return found
