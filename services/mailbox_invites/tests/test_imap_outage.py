"""IMAP sessions when Dovecot goes away: a dropped connection fails the command at once (with
the reason), never waits for an answer that cannot come, and a new session works once the
server is back. (The MailboxProcessor under an outage: tests/chaos/test_dependency_chaos.py.)"""

from __future__ import annotations

import time

import pytest
from mailbox_invites_service.transport import MailAccount, MailError, imap_session
from mesh_common.testing.dovecot import DovecotServer, require_dovecot
from pydantic import SecretStr


def account(dovecot: DovecotServer, address: str, password: str) -> MailAccount:
    return MailAccount(
        id=1,
        name="tech",
        display_name="Raumbuchung",
        email=address,
        smtp_host="127.0.0.1",
        smtp_port=1,
        smtp_security="none",
        smtp_username=None,
        smtp_password=None,
        imap_host="127.0.0.1",
        imap_port=dovecot.imap_port,
        imap_security="starttls",
        imap_username=address,
        imap_password=SecretStr(password),
        imap_folder="INBOX",
        processed_folder="edumesh-processed",
        ignored_folder="edumesh-ignored",
        tls_verify=True,
        tls_ca_pem=dovecot.ca_pem,
        timeout_seconds=10,
    )


async def test_a_connection_dropped_mid_session_fails_fast_and_recovers() -> None:
    require_dovecot()
    with DovecotServer() as dovecot:
        tech = dovecot.add_user("tech@vhs.example.test")
        dovecot.deliver(tech.address, b"Subject: kept\r\n\r\nbody\r\n")
        a = account(dovecot, tech.address, tech.password)
        async with imap_session(a) as imap:
            await imap.select("INBOX")
            assert len(await imap.uids()) == 1
            dovecot.stop()
            started = time.monotonic()
            with pytest.raises(MailError) as failed:
                await imap.uids()
            with pytest.raises(MailError):
                await imap.fetch([1])
        # Well inside the 10 s timeout: the loss was noticed, not waited out.
        assert time.monotonic() - started < 3
        assert failed.value.session_broken
        assert str(failed.value).startswith("IMAP: SEARCH: connection closed by the server")

        with pytest.raises(MailError, match="connection refused"):
            async with imap_session(a):
                pass
        dovecot.start()
        async with imap_session(a) as imap:
            await imap.select("INBOX")
            messages = await imap.fetch(await imap.uids())
        assert len(messages) == 1 and b"\r\nSubject: kept\r\n" in messages[0][1]
