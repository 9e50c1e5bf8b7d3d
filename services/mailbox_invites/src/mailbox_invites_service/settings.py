"""Settings of the mailbox-invites service (environment variables, read only when instantiated)."""

from __future__ import annotations

from mesh_common.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    service_name: str = "mailbox-invites"
    port: int = 8105
    # How often the MailboxProcessor job sends pending invitations and reads replies.
    processor_interval_seconds: float = Field(default=60.0, gt=0)
    # Failed send attempts after which an invitation gets status "error" (the seed: 5).
    max_send_attempts: int = Field(default=5, ge=1, le=20)
    # The time zone invitations are written in (DTSTART;TZID=... plus its VTIMEZONE).
    time_zone: str = "Europe/Berlin"
    # Right-hand side of generated iCalendar UIDs and Message-IDs.
    uid_domain: str = "mailbox-invites.edumesh.invalid"
    prodid: str = "-//edumesh//mailbox-invites//DE"
    # SMTP sessions a technical user sends over in parallel (servers limit connections per
    # client; Exchange allows 20 by default).
    smtp_sessions: int = Field(default=4, ge=1, le=20)
    # Messages sent over one SMTP session before it is closed and a new one opened: connection
    # reuse, bounded (servers limit messages per connection; a 421 before that also reconnects).
    smtp_messages_per_session: int = Field(default=100, ge=1, le=10_000)
    # Messages fetched per IMAP FETCH while reading replies.
    imap_fetch_batch: int = Field(default=200, ge=1, le=2000)
