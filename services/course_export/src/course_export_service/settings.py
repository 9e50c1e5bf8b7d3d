"""Settings of the course-export service (environment variables, read only when instantiated)."""

from __future__ import annotations

from typing import Literal

from mesh_common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "course-export"
    port: int = 8101
    # Daily full snapshot (cron, UTC) and how often changes are looked for (on PostgreSQL with
    # the change log this interval is only the fallback: NOTIFY starts a run within a second).
    full_export_cron: str = "0 3 * * *"
    change_poll_seconds: float = 60.0
    # "auto": the trigger-fed change log on a PostgreSQL coursedb (timestamp polling if it
    # cannot be installed, and on every other backend); "polling": timestamp polling always.
    change_detection: Literal["auto", "polling"] = "auto"
    # How long the watcher gathers a burst of notifications before starting a change run.
    change_debounce_seconds: float = 0.1
    # How often each replica looks for due scheduled exports.
    schedule_check_seconds: float = 1.0
