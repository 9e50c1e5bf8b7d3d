"""Settings of the schulconnex-sync service (environment variables, read only when instantiated).

Credentials come from exactly one of two places, never from a file:

* the **environment** (``SCHULCONNEX_BASE_URL``, ``SCHULCONNEX_TOKEN_URL``,
  ``SCHULCONNEX_CLIENT_ID``, ``SCHULCONNEX_CLIENT_SECRET``, for the password grant also
  ``SCHULCONNEX_USERNAME`` / ``SCHULCONNEX_PASSWORD``), used when a run names no connection;
* a **connection** in the service's encrypted connection store (``/connections``, AES-GCM with
  ``MESH_SECRET_KEY``), named by the run parameter ``connection``.
"""

from __future__ import annotations

import re
from typing import Literal

from mesh_common.mail import MailSettings
from mesh_common.settings import ServiceSettings
from pydantic import Field, SecretStr, field_validator

#: Final run statuses a feedback mail can be asked for.
NotifyStatus = Literal["succeeded", "partially_succeeded", "failed", "cancelled"]
_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


def check_addresses(values: list[str]) -> list[str]:
    """E-mail addresses (the notification recipients), trimmed; ValueError for a bad one."""
    out = []
    for value in values:
        value = value.strip()
        if not _ADDRESS.match(value):
            raise ValueError(f"not an e-mail address: {value!r}")
        out.append(value)
    return list(dict.fromkeys(out))


class Settings(ServiceSettings, MailSettings):
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
    # Seed step 9 "Löschen": groups, memberships and persons this centre created (or matched)
    # in Schulconnex whose local record is gone. "confirm": a person confirms each deletion
    # (GET /confirmations?kind=delete); "auto": deleted at once (deletions that would take
    # records of other systems along are still asked); "off": never deleted, only reported.
    # Cancelled registrations are an explicit local decision: their memberships are deleted
    # unless the mode is "off".
    sync_delete_mode: Literal["confirm", "auto", "off"] = "confirm"
    # A personenkontext already used by services cannot be deleted directly (400/13): its
    # Löschzeitpunkt is set this many days ahead (0: in five minutes; ablauf-löschen.md).
    kontext_deletion_days: float = Field(default=0.0, ge=0, le=3650)

    # Seed step 11 by mail (opt-in): the feedback of runs without a stored connection goes to
    # these recipients when the run ends in one of ``sync_notify_on``. A stored connection
    # has its own ``notify_recipients`` / ``notify_on``. SMTP: the SMTP_* / MAIL_* variables.
    sync_notify_recipients: list[str] = Field(default_factory=list, max_length=50)
    sync_notify_on: list[NotifyStatus] = ["partially_succeeded", "failed"]

    _addresses = field_validator("sync_notify_recipients")(check_addresses)
