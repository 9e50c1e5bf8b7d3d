"""Settings of the profile service (environment variables, read only when instantiated)."""

from __future__ import annotations

from mesh_common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "profile"
    port: int = 8103
