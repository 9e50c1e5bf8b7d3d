"""Settings of the course-export service (environment variables, read only when instantiated)."""

from __future__ import annotations

from mesh_common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "course-export"
    port: int = 8101
    # Daily full snapshot (cron, UTC) and how often changes are looked for.
    full_export_cron: str = "0 3 * * *"
    change_poll_seconds: float = 60.0
