"""Mail settings (SMTP server, sender address, retry policy), read from the environment.

A service that sends mail mixes :class:`MailSettings` into its settings class::

    class Settings(ServiceSettings, MailSettings):
        service_name: str = "booking"

so ``SMTP_HOST``, ``MAIL_FROM``, ... are plain environment variables next to ``DATABASE_URL``.
The defaults point at the local mail capture of the embedded default (127.0.0.1:8025, no TLS,
no login); production sets ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_SECURITY`` and credentials.
Like every settings class this is read only when instantiated, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh_common.mail.models import MailAddress


class MailSettings(BaseSettings):
    """SMTP and sending policy. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    smtp_host: str = Field("127.0.0.1", description="SMTP server (default: local mail capture)")
    smtp_port: int = Field(8025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        "none",
        description="none: plain SMTP (never upgraded); starttls: STARTTLS required; "
        "tls: implicit TLS (SMTPS, usually port 465)",
    )
    smtp_timeout: float = Field(30.0, gt=0, description="seconds per SMTP operation")
    smtp_validate_certs: bool = True
    smtp_ca_file: Path | None = Field(None, description="CA bundle for a private mail server CA")
    smtp_local_hostname: str | None = Field(None, description="name sent in EHLO")

    mail_from: MailAddress = "edumesh <noreply@localhost>"
    mail_max_attempts: int = Field(5, ge=1, le=100)
    mail_backoff_seconds: float = Field(60.0, gt=0, description="delay after the first failure")
    mail_backoff_max_seconds: float = Field(3600.0, gt=0)
    mail_poll_seconds: float = Field(
        5.0, gt=0, description="how often the sender looks for due mail"
    )
    mail_batch_size: int = Field(20, ge=1, le=1000)
    mail_concurrency: int = Field(4, ge=1, le=64, description="SMTP sessions at once per replica")
    mail_claim_seconds: float = Field(
        600.0, gt=0, description="a mail being sent by a replica that died is retried after this"
    )
    mail_retention_days: float = Field(
        30.0, ge=0, description="sent mail (with attachments) is deleted after this; 0 keeps it"
    )
    mail_sender_enabled: bool = Field(True, description="false: this replica only queues mail")
