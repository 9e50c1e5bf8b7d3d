"""Settings of the profile service (environment variables, read only when instantiated)."""

from __future__ import annotations

from mesh_common.auth.delegation import DELEGATION_AUDIENCE
from mesh_common.mail import MailSettings
from mesh_common.settings import ServiceSettings


class Settings(ServiceSettings, MailSettings):
    """Profile's settings; ``SMTP_*`` / ``MAIL_*`` (``MailSettings``) configure the connector
    tasks' notification mail."""

    service_name: str = "profile"
    port: int = 8103
    # Audience of delegation tokens (RFC 8693 "act"); must differ from jwt_audience so that a
    # delegation never passes as a bearer token.
    delegation_audience: str = DELEGATION_AUDIENCE
