"""Settings of the schulconnex-sync service (environment variables, read only when instantiated).

Credentials come from exactly one of two places, never from a file:

* the **environment** (``SCHULCONNEX_BASE_URL``, ``SCHULCONNEX_TOKEN_URL``,
  ``SCHULCONNEX_CLIENT_ID``, ``SCHULCONNEX_CLIENT_SECRET``, for the password grant also
  ``SCHULCONNEX_USERNAME`` / ``SCHULCONNEX_PASSWORD``), used when a run names no connection;
* a **connection** in the service's encrypted connection store (``/connections``, AES-GCM with
  ``MESH_SECRET_KEY``), named by the run parameter ``connection``.
"""

from __future__ import annotations

from typing import Literal

from mesh_common.settings import ServiceSettings
from pydantic import SecretStr


class Settings(ServiceSettings):
    service_name: str = "schulconnex-sync"
    port: int = 8106

    # Credentials from the environment (see the module docstring).
    schulconnex_base_url: str | None = None
    schulconnex_token_url: str | None = None
    schulconnex_client_id: str | None = None
    schulconnex_client_secret: SecretStr | None = None
    schulconnex_grant_type: Literal["client_credentials", "password"] = "client_credentials"
    schulconnex_username: str | None = None
    schulconnex_password: SecretStr | None = None
    schulconnex_scope: str | None = None

    # Client behaviour.
    schulconnex_timeout_seconds: float = 10.0
    schulconnex_max_concurrency: int = 8
    schulconnex_max_retries: int = 5

    # The sync. The scheduled run is off unless an interval is given (the seed's step 1 is a
    # person pressing a button; a schedule is an option, not the default).
    sync_interval_seconds: float | None = None
    # Vertrauensstufe of persons this centre creates in Schulconnex (codes: Kein, Unbe, Teil,
    # Voll). A VHS registers people without formal identity checks: "Unbe" (unknown).
    person_vertrauensstufe: Literal["Kein", "Unbe", "Teil", "Voll"] = "Unbe"
    # Group import (seed step 10, optional): which Schulconnex group types may be offered for
    # import at all, and into which category (code) imported courses go. Without a category
    # accepted group imports fail with "attributes insufficient".
    group_import_types: list[str] = ["Kurs", "Sonstig"]
    import_course_category: str | None = None
