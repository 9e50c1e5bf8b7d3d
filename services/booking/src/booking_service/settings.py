"""Settings of the booking service (environment variables, read only when instantiated)."""

from __future__ import annotations

import re

from mesh_common.mail import MailSettings
from mesh_common.mail.models import MailAddress
from mesh_common.settings import ServiceSettings
from pydantic import Field, field_validator

_CREDITOR_ID = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{3}[A-Z0-9]{1,28}$")


def creditor_id_valid(value: str) -> bool:
    """SEPA creditor identifier (Gläubiger-Identifikationsnummer) check digits.

    Structure: country (2), check digits (2), creditor business code (3, not part of the check),
    national identifier. The check digits are ISO 7064 MOD 97-10 over the national identifier
    followed by the country and "00", letters as numbers (A=10 ... Z=35), like an IBAN.
    """
    compact = value.replace(" ", "").upper()
    if not _CREDITOR_ID.match(compact):
        return False
    rearranged = compact[7:] + compact[:2] + "00"
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return 98 - int(digits) % 97 == int(compact[2:4])


class Settings(ServiceSettings, MailSettings):
    """Booking's settings; ``SMTP_*`` / ``MAIL_*`` (``MailSettings``) configure the mail."""

    service_name: str = "booking"
    port: int = 8102
    # No ping before each use of a pooled connection of booking's own database (on asyncpg a
    # ping is three round trips, twice per order): the order path retries once on a connection
    # that turns out dead, and that failure makes the pool replace its other old connections.
    db_pool_pre_ping: bool = False

    # The course database: a booking transaction that cannot connect or does not finish within
    # this budget counts as "unreachable" and the order waits in the backlog.
    coursedb_timeout_seconds: float = Field(5.0, gt=0)
    coursedb_connect_timeout_seconds: float = Field(3.0, gt=0)
    coursedb_pool_size: int = Field(20, ge=1)

    # Backlog of orders that arrived while the course database was unreachable.
    backlog_poll_seconds: float = Field(5.0, gt=0)
    backlog_backoff_base_seconds: float = Field(1.0, gt=0)
    backlog_backoff_max_seconds: float = Field(60.0, gt=0)
    # An order that keeps failing for another reason than "unreachable" (a bug, bad data) is
    # marked failed after this many attempts, so it cannot block the orders behind it.
    backlog_max_attempts: int = Field(5, ge=1)
    # An order still waiting after this long is marked failed (the centre decides by hand).
    backlog_max_age_hours: float = Field(7 * 24, gt=0)

    # SEPA direct debit: the centre as creditor (printed on the mandate request).
    sepa_creditor_name: str = "Volkshochschule Freiburg e.V."
    sepa_creditor_id: str = "DE98ZZZ09999999999"  # the Bundesbank's documented test identifier
    sepa_creditor_address: str = "Rotteckring 12, 79098 Freiburg im Breisgau"
    mandate_reference_prefix: str = Field("VHS", pattern=r"^[A-Z0-9]{1,8}$")

    centre_name: str = "Volkshochschule Freiburg"

    # Notifications (per centre): a confirmation to the participant who pays, with the
    # registration card and (SEPA) the mandate request attached; a registration protocol to the
    # centre's address (only when ``centre_email`` is set).
    notifications_enabled: bool = True
    centre_email: MailAddress | None = None
    # The mails are prepared after the answer (booking_service.mailing): orders at a time, how
    # long a claimed order is held before another worker may take it up, and how often an
    # unreachable coursedb is retried (backoff as for the backlog) before they are given up.
    notify_concurrency: int = Field(4, ge=1, le=64)
    notify_lease_seconds: float = Field(120.0, gt=0)
    notify_max_attempts: int = Field(5, ge=1)

    @field_validator("sepa_creditor_id")
    @classmethod
    def _creditor_id(cls, value: str) -> str:
        if not creditor_id_valid(value):
            raise ValueError("not a valid SEPA creditor identifier (check digits)")
        return value.replace(" ", "").upper()
