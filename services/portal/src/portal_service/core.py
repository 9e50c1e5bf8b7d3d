"""The portal's running parts in one place (``runtime.extras["portal"]``), plus small helpers.

:class:`Portal` holds what the API, the pages, the bus handler and the tasks share: settings,
database, the mail template store and queue tables, the file storage, the virus scanner client
(None when none is configured), the password hasher, the clock (injectable for tests of
expiry) and the SecretBox (``MESH_SECRET_KEY``) that seals the activation links in queued
mail. This module must not contain HTTP or page code.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_common.app import ServiceRuntime
from mesh_common.bus.outbox import Outbox
from mesh_common.db import Database
from mesh_common.mail import MailTables, TemplateStore
from mesh_common.secrets import SecretBox
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import models
from portal_service.clamd import ClamdClient
from portal_service.names import contained, key_dir
from portal_service.passwords import Passwords
from portal_service.settings import Settings

log = logging.getLogger("portal")
audit_log = logging.getLogger("portal.audit")

Clock = Callable[[], float]
EXTRAS_KEY = "portal"

FOLDERS = ("incoming", "in_progress", "final")
FOLDER_LABELS = {"incoming": "Incoming", "in_progress": "In progress", "final": "Final"}


class Storage:
    """The bytes of job files: ``<root>/<job id>/<file id>``. Names and folders (Incoming,
    In progress, Final) are data in ``files``, so moving a file between folders is one atomic
    UPDATE and no name from outside ever becomes a path here. Uploads are spooled in
    ``<root>/.tmp`` (same file system: storing is a rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def tmp_dir(self) -> Path:
        path = self.root / ".tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def job_dir(self, job_id: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = contained(self.root, job_id)
        path.mkdir(exist_ok=True)
        return path

    def blob(self, job_id: str, file_id: str) -> Path:
        return contained(self.job_dir(job_id), file_id)


def hotfolder_path(root: Path, client_no: str, project_no: str) -> Path:
    """``<hotfolder root>/<client no>/<project no>`` (both validated keys, contained)."""
    root.mkdir(parents=True, exist_ok=True)
    return key_dir(key_dir(root, client_no), project_no)


class PortalMetrics:
    """Counters on the service's /metrics: uploads and sign-ins by outcome."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.uploads = Counter(
            "portal_uploads_total",
            "Upload requests by outcome (stored, or the problem code of the refusal)",
            ["outcome"],
            registry=registry,
        )
        self.upload_bytes = Counter(
            "portal_upload_bytes_total", "Bytes of stored uploads", registry=registry
        )
        self.logins = Counter(
            "portal_logins_total",
            "Sign-in attempts by outcome (ok, failed, throttled, inactive)",
            ["outcome"],
            registry=registry,
        )


@dataclass
class Portal:
    settings: Settings
    db: Database
    store: TemplateStore
    mail: MailTables
    storage: Storage
    passwords: Passwords
    scanner: ClamdClient | None
    outbox: Outbox | None
    clock: Clock = time.time
    metrics: PortalMetrics = field(default_factory=lambda: PortalMetrics(None))
    extras: dict[str, Any] = field(default_factory=dict)
    # Seals the one-time activation links in queued mail (mails.queue(..., sensitive=...)).
    box: SecretBox | None = None

    def now(self) -> float:
        return self.clock()

    def now_dt(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def link(self, page: str, **query: str) -> str:
        """An absolute link to a customer page (for e-mails), from PORTAL_PUBLIC_URL."""
        from urllib.parse import urlencode

        url = f"{self.settings.portal_public_url}/{page}"
        return url + ("?" + urlencode(query) if query else "")


def portal_of(runtime: ServiceRuntime) -> Portal:
    portal = runtime.extras.get(EXTRAS_KEY)
    if not isinstance(portal, Portal):
        raise RuntimeError("the portal is not started")
    return portal


async def record_audit(
    session: AsyncSession,
    now: float,
    *,
    actor: str,
    action: str,
    account_id: str | None = None,
    job_id: str | None = None,
    ip: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """One audit row (and the same as a log line) in the caller's transaction."""
    await session.execute(
        models.audit.insert().values(
            at=now,
            actor=actor[:200],
            action=action,
            account_id=account_id,
            job_id=job_id,
            ip=ip,
            detail=dict(detail) if detail else None,
        )
    )
    audit_log.info(
        "%s by %s",
        action,
        actor,
        extra={"action": action, "account_id": account_id, "job_id": job_id, "ip": ip},
    )


def epoch_dt(value: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(value, dt.UTC) if value is not None else None
