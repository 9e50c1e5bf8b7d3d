"""Settings of the portal service (environment variables, read only when instantiated)."""

from __future__ import annotations

from mesh_common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "portal"
    port: int = 8104
