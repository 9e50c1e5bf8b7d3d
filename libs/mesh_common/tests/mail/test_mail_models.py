"""Unit tests (no IO): what an OutgoingMail accepts and refuses, how it becomes MIME, how SMTP
failures are classified, and the settings' environment names."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from mesh_common.mail import (
    MAX_MAIL_BYTES,
    Attachment,
    MailSettings,
    OutgoingMail,
    build_message,
    classify,
    message_id_for,
)
from pydantic import ValidationError


def mail(**fields: Any) -> OutgoingMail:
    values: dict[str, Any] = {"to": "a@example.org", "subject": "s", "text": "t"}
    values.update(fields)
    return OutgoingMail(**values)


def reparse(msg: EmailMessage) -> EmailMessage:
    return message_from_bytes(msg.as_bytes(), policy=policy.default)


def test_addresses_are_checked_and_normalized() -> None:
    m = mail(to=["Jörg Müller <j@example.org>", '"Muster, Erika" <e@example.org>'], cc="c@x.de")
    assert m.to == ["Jörg Müller <j@example.org>", '"Muster, Erika" <e@example.org>']
    assert m.cc == ["c@x.de"]
    for bad in ("nobody", "a@", "a@b..de", "a@b.de, c@d.de", "Muster, Erika <e@x.de>"):
        with pytest.raises(ValidationError):
            mail(to=bad)


def test_header_injection_and_reserved_headers_are_refused() -> None:
    with pytest.raises(ValidationError, match="line breaks"):
        mail(subject="Hallo\r\nBcc: victim@example.org")
    with pytest.raises(ValidationError, match="line breaks"):
        mail(to="a@example.org\r\nBcc: victim@example.org")
    with pytest.raises(ValidationError, match="line breaks"):
        mail(headers={"X-Note": "a\nb"})
    with pytest.raises(ValidationError, match="set by the mail package"):
        mail(headers={"Bcc": "victim@example.org"})
    with pytest.raises(ValidationError, match="header name"):
        mail(headers={"Bad Name": "x"})
    with pytest.raises(ValidationError, match="plain file name"):
        Attachment(filename="../etc/passwd", data=b"x")
    with pytest.raises(ValidationError, match="MIME type"):
        Attachment(filename="a.pdf", content_type="pdf", data=b"x")


def test_needs_a_recipient_and_a_bounded_size() -> None:
    with pytest.raises(ValidationError, match="at least one recipient"):
        OutgoingMail(subject="s", text="t")
    assert mail(to=[], bcc="b@example.org").envelope_recipients == ["b@example.org"]
    big = Attachment(filename="big.bin", data=b"x" * (MAX_MAIL_BYTES + 1))
    with pytest.raises(ValidationError, match="at most"):
        mail(attachments=[big])


def test_envelope_has_every_recipient_once() -> None:
    m = mail(to=["A <a@example.org>", "b@example.org"], cc="A@EXAMPLE.ORG", bcc="c@example.org")
    assert m.envelope_recipients == ["a@example.org", "b@example.org", "c@example.org"]


def test_json_round_trip_keeps_attachment_bytes() -> None:
    data = bytes(range(256))
    m = mail(attachments=[Attachment(filename="a.bin", data=data)])
    again = OutgoingMail.model_validate_json(m.model_dump_json())
    assert again.attachments[0].data == data


def test_message_structure_without_and_with_html_and_attachments() -> None:
    plain = reparse(build_message(mail(), message_id="<1@x.de>", default_from="n@x.de"))
    assert plain.get_content_type() == "text/plain"
    assert plain["From"] == "n@x.de" and plain["Message-ID"] == "<1@x.de>"

    alt = reparse(
        build_message(mail(html="<b>t</b>"), message_id="<2@x.de>", default_from="n@x.de")
    )
    assert alt.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alt.iter_parts()] == ["text/plain", "text/html"]

    files = [Attachment(filename="a.txt", content_type="text/plain", data=b"caf\xc3\xa9\r\n")]
    mixed = reparse(
        build_message(
            mail(
                attachments=files,
                from_address="Kursbüro <k@x.de>",
                headers={"Auto-Submitted": "no"},
            ),
            message_id="<3@x.de>",
            default_from="n@x.de",
        )
    )
    assert mixed.get_content_type() == "multipart/mixed"
    body, attached = mixed.iter_parts()
    assert body.get_content_type() == "text/plain"
    assert attached.get_filename() == "a.txt"
    assert attached.get_payload(decode=True) == b"caf\xc3\xa9\r\n"  # bytes untouched
    assert mixed["From"] == "Kursbüro <k@x.de>"
    assert mixed.get_all("Auto-Submitted") == ["no"]  # the caller's value replaces the default


def test_long_lines_and_umlauts_stay_7bit_clean() -> None:
    text = "Zeile mit Ümlaut " + "x" * 2000
    raw = build_message(mail(text=text), message_id="<4@x.de>", default_from="n@x.de").as_bytes()
    assert max(len(line) for line in raw.split(b"\n")) <= 998
    raw.decode("ascii")  # no 8-bit bytes on the wire
    parsed = reparse(build_message(mail(text=text), message_id="<4@x.de>", default_from="n@x.de"))
    assert parsed.get_content().strip() == text


def test_message_id_is_stable_per_mail_and_domain() -> None:
    assert message_id_for("abc", "VHS <noreply@vhs.de>") == "<abc@vhs.de>"


def test_classification() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(550, "no such user", "x@example.org")]
    )
    assert classify(refused).permanent
    soft = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(550, "no such user", "x@example.org"),
            aiosmtplib.SMTPRecipientRefused(452, "mailbox full", "y@example.org"),
        ]
    )
    assert not classify(soft).permanent
    assert classify(aiosmtplib.SMTPDataError(554, "spam")).permanent
    assert not classify(aiosmtplib.SMTPDataError(451, "later")).permanent
    assert classify(aiosmtplib.SMTPSenderRefused(553, "not yours", "n@x.de")).permanent
    assert not classify(aiosmtplib.SMTPAuthenticationError(535, "bad credentials")).permanent
    assert not classify(aiosmtplib.SMTPConnectError("refused")).permanent
    assert not classify(TimeoutError()).permanent
    assert not classify(ConnectionResetError()).permanent


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_HOST", "mail.example.org")
    monkeypatch.setenv("SMTP_PORT", "587")
    monkeypatch.setenv("SMTP_USERNAME", "mesh")
    monkeypatch.setenv("SMTP_PASSWORD", "pw-123")
    monkeypatch.setenv("SMTP_SECURITY", "starttls")
    monkeypatch.setenv("MAIL_FROM", "VHS <noreply@vhs.de>")
    monkeypatch.setenv("MAIL_MAX_ATTEMPTS", "7")
    s = MailSettings()
    assert (s.smtp_host, s.smtp_port, s.smtp_security, s.mail_max_attempts) == (
        "mail.example.org",
        587,
        "starttls",
        7,
    )
    assert s.smtp_password is not None and s.smtp_password.get_secret_value() == "pw-123"
    assert "pw-123" not in repr(s) and "pw-123" not in str(s.model_dump())
    monkeypatch.setenv("MAIL_FROM", "not an address")
    with pytest.raises(ValidationError):
        MailSettings()


def test_defaults_point_at_the_local_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY"):
        monkeypatch.delenv(name, raising=False)
    s = MailSettings()
    assert (s.smtp_host, s.smtp_port, s.smtp_security) == ("127.0.0.1", 8025, "none")
