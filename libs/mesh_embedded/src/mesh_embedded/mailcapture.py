"""Local mail capture for the embedded default: an SMTP server that stores every message.

Services send mail over real SMTP (the same code as production); here the server is aiosmtpd on
localhost, and every message lands as an ``.eml`` file in a Maildir under ``var/mail`` that any mail
client opens. Nothing is ever relayed onwards.
"""

from __future__ import annotations

import mailbox
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class MaildirHandler:
    def __init__(self, directory: Path) -> None:
        directory.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(directory, create=True)
        # Maildir(create=True) only makes tmp/new/cur when it creates the directory itself, so
        # an existing (e.g. pre-created) directory would refuse every message: make them here.
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.SMTP)
        msg["X-Edumesh-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.maildir.add(msg.as_bytes())
        return "250 Message captured"


class MailCapture:
    """Starts aiosmtpd in its own thread (aiosmtpd's Controller) on ``host:port``."""

    def __init__(self, directory: Path, *, host: str = "127.0.0.1", port: int = 8025) -> None:
        self.directory = directory
        self.controller = Controller(MaildirHandler(directory), hostname=host, port=port)

    @property
    def url(self) -> str:
        return f"smtp://{self.controller.hostname}:{self.controller.port}"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
