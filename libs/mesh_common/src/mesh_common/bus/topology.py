"""Names and shapes of exchanges and queues: the single source of the bus topology.

Exchanges ``mesh.events``, ``mesh.commands``, ``mesh.rpc`` (topic, durable) route by message
type; ``mesh.dlx`` (direct) dead-letters into ``<queue>.dlq``. Every handler owns one queue
``<service>.<handler>``; event/command queues also own ``<queue>.retry`` and ``<queue>.dlq``.
An optional prefix namespaces everything (tests, side-by-side deployments). This module only
computes names and arguments; it must not talk to a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

HandlerKind = Literal["event", "command", "rpc"]

EVENTS = "mesh.events"
COMMANDS = "mesh.commands"
RPC = "mesh.rpc"
DLX = "mesh.dlx"
RETRY_SUFFIX = ".retry"
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """Everything a transport needs to declare one handler queue and its companions."""

    name: str
    kind: HandlerKind
    exchange: str
    routing_key: str
    delivery_limit: int
    dlx: str

    @property
    def durable_pipeline(self) -> bool:
        """Events and commands get quorum queue + retry queue + DLQ; RPC a classic queue."""
        return self.kind != "rpc"

    @property
    def retry_queue(self) -> str:
        return self.name + RETRY_SUFFIX

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    def main_arguments(self) -> dict[str, Any]:
        if not self.durable_pipeline:
            # RPC requests are answered (errors included), never retried, and carry their own
            # expiration; a classic queue keeps their latency low.
            return {"x-queue-type": "classic"}
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dlx,
            "x-dead-letter-routing-key": self.name,
            # Dead-letter with publisher-confirm semantics inside the broker (RabbitMQ >= 3.10).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def retry_arguments(self) -> dict[str, Any]:
        # Messages sit here for their per-message expiration, then dead-letter through the
        # default exchange straight back into the handler queue.
        return {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.name,
        }

    def dlq_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"}


@dataclass(frozen=True, slots=True)
class Topology:
    """Exchange and queue names for one prefix."""

    prefix: str = ""

    @property
    def events(self) -> str:
        return self.prefix + EVENTS

    @property
    def commands(self) -> str:
        return self.prefix + COMMANDS

    @property
    def rpc(self) -> str:
        return self.prefix + RPC

    @property
    def dlx(self) -> str:
        return self.prefix + DLX

    @property
    def topic_exchanges(self) -> tuple[str, str, str]:
        return (self.events, self.commands, self.rpc)

    def exchange_for(self, kind: HandlerKind) -> str:
        return {"event": self.events, "command": self.commands, "rpc": self.rpc}[kind]

    def handler_queue(self, service: str, handler: str) -> str:
        return f"{self.prefix}{service}.{handler}"

    def reply_queue(self, service: str, instance: str) -> str:
        return f"{self.prefix}rpc.reply.{service}.{instance}"

    def queue_spec(
        self,
        *,
        service: str,
        handler: str,
        kind: HandlerKind,
        routing_key: str,
        delivery_limit: int,
    ) -> QueueSpec:
        return QueueSpec(
            name=self.handler_queue(service, handler),
            kind=kind,
            exchange=self.exchange_for(kind),
            routing_key=routing_key,
            delivery_limit=delivery_limit,
            dlx=self.dlx,
        )


def main_queue_of(queue: str) -> str:
    """``svc.h`` for ``svc.h``, ``svc.h.dlq`` or ``svc.h.retry``."""
    for suffix in (DLQ_SUFFIX, RETRY_SUFFIX):
        if queue.endswith(suffix):
            return queue[: -len(suffix)]
    return queue
