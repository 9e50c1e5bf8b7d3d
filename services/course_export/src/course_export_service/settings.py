"""Settings of the course-export service (environment variables, read only when instantiated)."""

from __future__ import annotations

from mesh_common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "course-export"
    port: int = 8101
