"""Bus settings: every knob of the bus as explicit, validated parameters.

The bus never reads the environment; a service maps its own settings onto :class:`BusSettings`
when it builds the bus. This module must not open connections or import a transport.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class BusSettings(BaseModel):
    """Parameters of one service's bus facade."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
    """Service name: first part of every queue name (``<service>.<handler>``); AMQP app_id."""

    amqp_url: SecretStr | None = None
    """``None`` selects the in-memory broker; otherwise an ``amqp://`` / ``amqps://`` URL."""

    prefix: str = ""
    """Namespace prepended to every exchange and queue name (tests, side-by-side deployments)."""

    prefetch: Annotated[int, Field(ge=1)] = 32
    """Unacknowledged deliveries per event/command handler consumer (= its concurrency)."""

    rpc_prefetch: Annotated[int, Field(ge=1)] = 64
    """Unacknowledged deliveries per RPC handler consumer (= concurrent RPC requests served)."""

    max_attempts: Annotated[int, Field(ge=1)] = 5
    """Handler attempts (first try + retries) before a message goes to its DLQ."""

    retry_delays: tuple[float, ...] = (0.5, 2.0, 10.0, 30.0)
    """Delay before retry n (1-based); the last value repeats for later retries."""

    delivery_limit: Annotated[int, Field(ge=1)] = 20
    """Quorum ``x-delivery-limit``: redeliveries without a verdict (consumer crashes) before DLQ."""

    rpc_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Default per-call timeout; the caller's remaining deadline caps it."""

    publish_timeout: Annotated[float, Field(gt=0)] = 15.0
    """How long one publish may wait for a reconnect and the broker's confirm."""

    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    reconnect_interval: Annotated[float, Field(gt=0)] = 1.0
    heartbeat: Annotated[int, Field(ge=0)] = 30

    tls_ca_file: str | None = None
    """``amqps://`` only: CA bundle that signed the broker's certificate (default: system CAs).
    The broker's certificate is always verified, host name included."""

    tls_cert_file: str | None = None
    """``amqps://`` only: client certificate (PEM) for brokers that require mutual TLS."""

    tls_key_file: str | None = None
    """Private key of ``tls_cert_file`` (PEM)."""

    raise_on_unroutable_events: bool = False
    """Events are owned by the sender, who does not know its subscribers: an event nobody is
    bound to is dropped (and counted) unless this is set. Commands and RPC always raise."""

    def retry_delay(self, retry: int) -> float:
        """Delay in seconds before retry number ``retry`` (1-based)."""
        if not self.retry_delays:
            return 0.0
        return self.retry_delays[min(retry, len(self.retry_delays)) - 1]
