"""Settings of the mailbox-invites service (environment variables, read only when instantiated)."""

from __future__ import annotations

from mesh_common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "mailbox-invites"
    port: int = 8105
