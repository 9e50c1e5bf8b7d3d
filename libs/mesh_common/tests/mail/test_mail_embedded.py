"""The embedded default: a service's mail reaches the launcher's local capture (Maildir)."""

from __future__ import annotations

import asyncio
import mailbox
import time
from pathlib import Path

from mesh_common.mail import MailSender, OutgoingMail, create_mail_tables, enqueue
from mesh_common.settings import ServiceSettings
from mesh_common.testing.smtp import free_port
from mesh_embedded.mailcapture import MailCapture

from .conftest import Env
from .test_mail_api import Settings


async def test_mail_lands_in_the_local_capture(sqlite_url: str, tmp_path: Path) -> None:
    capture = MailCapture(tmp_path / "mail", port=free_port())
    capture.start()
    env = Env("sqlite", sqlite_url, None)
    try:
        await create_mail_tables(env.db, env.mail)
        # What the launcher passes to every service's settings; services without mail ignore it.
        launcher_kwargs = {
            "smtp_host": capture.controller.hostname,
            "smtp_port": capture.controller.port,
            "smtp_security": "none",
            "mail_poll_seconds": 0.05,
        }
        ServiceSettings(service_name="no-mail", **launcher_kwargs)
        settings = Settings(var_dir=tmp_path, **launcher_kwargs)
        sender = MailSender(env.db, env.mail, settings)
        env.senders.append(sender)
        await sender.start()
        async with env.db.unit_of_work() as session:
            await enqueue(
                session, env.mail, OutgoingMail(to="erika@example.org", subject="Hallo", text="x")
            )
        deadline = time.monotonic() + 10
        box = mailbox.Maildir(tmp_path / "mail", create=False)
        while not list(box.keys()):
            assert time.monotonic() < deadline, "nothing arrived in the Maildir"
            await asyncio.sleep(0.05)
        (message,) = list(box)
        assert message["Subject"] == "Hallo"
        assert message["X-Edumesh-Envelope-To"] == "erika@example.org"
        assert message["From"] == "edumesh <noreply@localhost>"  # the default MAIL_FROM
    finally:
        await env.aclose()
        capture.stop()
