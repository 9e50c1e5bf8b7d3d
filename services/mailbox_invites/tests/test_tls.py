"""The technical user's TLS options on real servers: none / STARTTLS / implicit TLS for IMAP and
SMTP, certificates verified against a test CA made at test time (and refused under another CA),
and a server that does not offer STARTTLS refused before any login.

Dovecot runs with the project's config and a server certificate issued by a throwaway
``CertificateAuthority``; the SMTP front (aiosmtpd → LMTP) uses the same certificate. Keys exist
only in the servers' temporary directories.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from mailbox_invites_service.transport import MailAccount, MailError, imap_session
from mesh_common.testing.dovecot import (
    CertificateAuthority,
    DovecotServer,
    SmtpRelay,
    require_dovecot,
)
from pydantic import SecretStr

from .conftest import Api, configure

TLS_KEYS = ("smtp", "imap", "tls_verify", "tls_ca_pem")


@pytest.fixture
def smtps(dovecot: DovecotServer) -> Iterator[SmtpRelay]:
    """The SMTP front with implicit TLS (port 465 style)."""
    with SmtpRelay(dovecot, implicit_tls=True) as relay:
        yield relay


@pytest.fixture(scope="module")
def plain_dovecot() -> Iterator[DovecotServer]:
    """A Dovecot without TLS: it offers no STARTTLS."""
    require_dovecot()
    with DovecotServer(tls=False) as server:
        yield server


async def patch_and_check(api: Api, user_id: int, **changes: Any) -> dict[str, Any]:
    await api.call("PATCH", f"/technical-users/{user_id}", json=changes)
    return await api.call("POST", f"/technical-users/{user_id}/check")


async def test_imap_starttls_and_smtps_end_to_end(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay, smtps: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    check = await patch_and_check(
        svc,
        boxes.user_id,
        imap={"security": "starttls", "port": dovecot.imap_port},
        smtp={"security": "tls", "port": smtps.port},
    )
    assert check["ok"] is True, check
    assert f"127.0.0.1:{dovecot.imap_port} (starttls)" in check["imap"]["message"]
    assert f"127.0.0.1:{smtps.port} (tls)" in check["smtp"]["message"]

    await svc.put_event("evt-tls")
    inv = await svc.event_invitation("evt-tls")
    ex = await svc.run_processor()
    assert ex["status"] == "succeeded", ex
    assert [(g.method, g.sequence) for g in await boxes.responder.process()] == [("REQUEST", 0)]
    ex = await svc.run_processor()  # the reply read over IMAP after STARTTLS
    assert ex["status"] == "succeeded", ex
    assert (await svc.invitation(inv["id"]))["status"] == "accepted"
    assert len(dovecot.stored_messages(boxes.tech.address, "edumesh-processed")) == 1
    # Dovecot saw every login of the technical user inside TLS (its log says "TLS").
    logins = [
        line
        for line in dovecot.log_file.read_text(errors="replace").splitlines()
        if "imap-login: Info: Login:" in line and f"user=<{boxes.tech.address}>" in line
    ]
    assert len(logins) >= 3 and all(", TLS," in line for line in logins), logins


async def test_every_mode_verifies_against_the_ca_and_says_what_failed(
    svc: Api, dovecot: DovecotServer, smtp: SmtpRelay, smtps: SmtpRelay
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    uid = boxes.user_id
    modes = {
        "starttls": (dovecot.imap_port, smtp.port),
        "tls": (dovecot.imaps_port, smtps.port),
    }
    other_ca = CertificateAuthority("another CA").cert_pem
    for security, (imap_port, smtp_port) in modes.items():
        servers = {
            "imap": {"security": security, "port": imap_port},
            "smtp": {"security": security, "port": smtp_port},
        }
        good = await patch_and_check(
            svc, uid, **servers, tls_verify=True, tls_ca_pem=dovecot.ca_pem
        )
        assert good["ok"] is True, (security, good)
        # A CA that did not issue the server's certificate: refused, per protocol, in words.
        wrong = await patch_and_check(svc, uid, tls_ca_pem=other_ca)
        for proto in ("smtp", "imap"):
            assert wrong[proto]["ok"] is False, (security, wrong)
            assert wrong[proto]["message"] == (
                f"{proto.upper()}: TLS certificate of 127.0.0.1 is not trusted "
                "(unable to get local issuer certificate)"
            ), (security, wrong)
        # No extra CA at all: the system store does not know the test CA either.
        none = await patch_and_check(svc, uid, tls_ca_pem=None)
        assert not none["smtp"]["ok"] and not none["imap"]["ok"], (security, none)
        assert "is not trusted" in none["imap"]["message"]
        # Verification switched off (an operator's explicit choice): connects.
        off = await patch_and_check(svc, uid, tls_verify=False)
        assert off["ok"] is True, (security, off)

    # Plaintext on purpose: both work where the servers allow it.
    plain = await patch_and_check(
        svc,
        uid,
        tls_verify=True,
        tls_ca_pem=dovecot.ca_pem,
        imap={"security": "none", "port": dovecot.imap_port},
        smtp={"security": "none", "port": smtp.port},
    )
    assert plain["ok"] is True, plain
    # Implicit TLS against a plaintext port: a handshake failure, not a hang.
    mixed = await patch_and_check(
        svc, uid, imap={"security": "tls", "port": dovecot.imap_port}, smtp={"security": "none"}
    )
    assert mixed["imap"]["message"].startswith(
        f"IMAP: TLS handshake with 127.0.0.1:{dovecot.imap_port} failed"
    ), mixed
    log = await svc.call("GET", f"/technical-users/{uid}/mail-log")
    assert any("not trusted" in str(e) for e in log), "the failed checks are in the mail log"


async def test_a_server_without_starttls_is_refused_before_login(
    svc: Api,
    dovecot: DovecotServer,
    smtp: SmtpRelay,
    plain_dovecot: DovecotServer,
) -> None:
    boxes = await configure(svc, dovecot, smtp)
    tech = plain_dovecot.add_user(boxes.tech.address, boxes.tech.password)
    with SmtpRelay(dovecot, starttls=False) as no_starttls:
        check = await patch_and_check(
            svc,
            boxes.user_id,
            imap={"security": "starttls", "port": plain_dovecot.imap_port},
            smtp={"security": "starttls", "port": no_starttls.port},
        )
    assert check["ok"] is False
    assert check["imap"]["message"].startswith(
        f"IMAP: 127.0.0.1:{plain_dovecot.imap_port} does not offer STARTTLS (required; "
        "not logging in without TLS"
    ), check
    assert check["smtp"]["message"] == (
        f"SMTP: 127.0.0.1:{no_starttls.port} does not offer STARTTLS (required; nothing was sent)"
    ), check
    # The credentials never went over the plaintext connection: Dovecot saw no login attempt.
    log = plain_dovecot.log_file.read_text(errors="replace")
    assert tech.address not in log, log[-2000:]
    assert "no auth attempts" in log
    # The same server with plaintext allowed on purpose: the login works.
    plain = await patch_and_check(svc, boxes.user_id, imap={"security": "none"})
    assert plain["imap"]["ok"] is True, plain


async def test_data_injected_before_the_tls_handshake_is_refused() -> None:
    """A server (or a man in the middle) that appends plaintext to its STARTTLS "OK": the
    client must not read it as an answer from the TLS session (RFC 2595 / CVE-2011-0411)."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n")
        while line := await reader.readline():
            seen.append(line)
            tag, _, command = line.decode().strip().partition(" ")
            if command.upper() == "CAPABILITY":
                writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n")
                writer.write(f"{tag} OK done\r\n".encode())
            elif command.upper() == "STARTTLS":
                writer.write(
                    f"{tag} OK Begin TLS\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n".encode()
                )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        account = MailAccount(
            id=1,
            name="t",
            display_name="t",
            email="t@example.test",
            smtp_host="127.0.0.1",
            smtp_port=1,
            smtp_security="none",
            smtp_username=None,
            smtp_password=None,
            imap_host="127.0.0.1",
            imap_port=port,
            imap_security="starttls",
            imap_username="t@example.test",
            imap_password=SecretStr("never-sent"),
            imap_folder="INBOX",
            processed_folder="p",
            ignored_folder="i",
            tls_verify=True,
            tls_ca_pem=None,
            timeout_seconds=3,
        )
        with pytest.raises(MailError, match="sent data after accepting STARTTLS"):
            async with imap_session(account):
                pass
    finally:
        server.close()
        await server.wait_closed()
    assert [line.split(b" ", 1)[1].strip() for line in seen] == [b"CAPABILITY", b"STARTTLS"]
    assert not any(b"never-sent" in line for line in seen)
