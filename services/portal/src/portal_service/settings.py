"""Settings of the portal service (environment variables, read only when instantiated).

Besides the common service settings and the mail settings (``SMTP_*``, ``MAIL_*``), the portal
reads ``PORTAL_*`` (public URL, storage, limits, accounts, defaults for new clients, tasks) and
``CLAMD_*`` (the virus scanner). See docs/portal.md for the meaning of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mesh_common.mail import MailSettings
from mesh_common.settings import ServiceSettings
from pydantic import Field, model_validator

MiB = 1024 * 1024
# Room for the multipart framing (boundaries, part headers, the CSRF field) around the file data.
MULTIPART_SLACK = 1 * MiB
# How much of an oversized upload is read (and thrown away) so the client gets to see the 413.
DRAIN_LIMIT = 16 * MiB


class Settings(ServiceSettings, MailSettings):
    service_name: str = "portal"
    port: int = 8104

    # Where the customer pages are reached from outside; activation links in e-mails start with
    # this (never with the Host of a request, which a caller controls). Production: set it to the
    # public https address (the service warns at start-up when it is not https).
    portal_public_url: str = "http://127.0.0.1:8080/api/portal/public"

    # Files: per job <storage>/<job id>/{incoming,in_progress,final}/; the internal hotfolder:
    # <hotfolder>/<client no>/<project no>/. Default: under VAR_DIR.
    portal_storage_dir: Path | None = None
    portal_hotfolder_dir: Path | None = None

    # Uploads: file data per request (one or more files), and files per request. Requests to
    # every other route are limited to portal_request_max_bytes.
    portal_upload_max_bytes: int = Field(512 * MiB, gt=0)
    portal_upload_max_files: int = Field(20, ge=1, le=1000)
    portal_request_max_bytes: int = Field(1 * MiB, gt=0)

    # Virus scanner (clamd, INSTREAM). Without CLAMD_HOST or CLAMD_SOCKET every upload is refused
    # (503 scanner-not-configured): there is no way to store an unscanned file.
    clamd_host: str | None = None
    clamd_port: int = Field(3310, ge=1, le=65535)
    clamd_socket: Path | None = None
    clamd_connect_timeout_seconds: float = Field(5.0, gt=0)
    # Longest wait for clamd while streaming, and for its verdict after the last byte (above the
    # config's MaxScanTime of 300 s, so clamd's own limit answers first).
    clamd_timeout_seconds: float = Field(330.0, gt=0)
    clamd_chunk_bytes: int = Field(256 * 1024, ge=4096, le=16 * MiB)

    # Accounts (uplogin).
    portal_activation_minutes: int = Field(30, ge=1, le=24 * 60)
    portal_password_min_length: int = Field(10, ge=8, le=128)
    portal_session_idle_minutes: int = Field(30, ge=1)
    portal_session_max_hours: int = Field(12, ge=1)
    # Cookies carry Secure unless this is false; default: Secure except in the embedded default
    # (plain http on 127.0.0.1).
    portal_cookie_secure: bool | None = None

    # Login throttling (persistent in the database, shared by every replica): failures within
    # the window per user name and per client address; beyond either, logins are refused (429)
    # until the window has passed.
    portal_login_window_seconds: int = Field(900, ge=10)
    portal_login_max_failures_per_user: int = Field(5, ge=1)
    portal_login_max_failures_per_ip: int = Field(30, ge=1)
    # "Send me a new activation link": per user name and per address and hour.
    portal_link_requests_per_user: int = Field(3, ge=1)
    portal_link_requests_per_ip: int = Field(20, ge=1)

    # Defaults for a client the portal does not know yet (the "Systemstandards"); a client's own
    # values (REST or RegisterJob) win.
    portal_default_create_hotfolder: bool = True
    portal_default_hotfolder_delete_days: int = Field(30, ge=0)
    portal_default_create_uplogin: Literal[0, 1] = 1
    portal_default_send_uplogin_email: Literal[0, 1] = 1
    portal_default_reminder_email: Literal[0, 1, 2] = 1

    # Tasks.
    portal_pull_interval_seconds: float = Field(60.0, gt=0)
    portal_reminder_interval_seconds: float = Field(60.0, gt=0)
    # An upload request (reminder) goes out this long after its job or ticket arrived, unless
    # files were uploaded to the job by then.
    portal_reminder_delay_minutes: float = Field(0.0, ge=0)
    portal_hotfolder_purge_cron: str = "30 2 * * *"
    portal_maintenance_interval_seconds: float = Field(3600.0, gt=0)
    # Receives the internal mail with the job XML after every hotfolder pull.
    portal_internal_mail_to: list[str] = Field(default_factory=lambda: ["hotfolder@localhost"])

    @model_validator(mode="after")
    def _portal_defaults(self) -> Settings:
        if self.portal_storage_dir is None:
            self.portal_storage_dir = self.var_dir / "portal" / "files"
        if self.portal_hotfolder_dir is None:
            self.portal_hotfolder_dir = self.var_dir / "portal" / "hotfolder"
        # The common body limit must let a full upload through; the upload route enforces
        # portal_upload_max_bytes itself and every other route gets portal_request_max_bytes.
        needed = self.portal_upload_max_bytes + MULTIPART_SLACK + DRAIN_LIMIT
        self.max_body_bytes = max(self.max_body_bytes, needed)
        self.portal_public_url = self.portal_public_url.rstrip("/")
        return self

    @property
    def storage_dir(self) -> Path:
        assert self.portal_storage_dir is not None
        return self.portal_storage_dir

    @property
    def hotfolder_dir(self) -> Path:
        assert self.portal_hotfolder_dir is not None
        return self.portal_hotfolder_dir

    @property
    def cookie_secure(self) -> bool:
        if self.portal_cookie_secure is not None:
            return self.portal_cookie_secure
        return self.environment != "embedded"

    @property
    def scanner_configured(self) -> bool:
        return self.clamd_host is not None or self.clamd_socket is not None
