"""JSON log lines carry request id and actor, and never the values of secret-looking fields."""

from __future__ import annotations

import io
import json
import logging

from mesh_common.context import bound
from mesh_common.logging import configure_logging, get_logger


def capture() -> io.StringIO:
    configure_logging("INFO", json=True)
    buf = io.StringIO()
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_edumesh", False))
    handler.setStream(buf)  # type: ignore[attr-defined]
    return buf


def test_structlog_and_stdlib_lines_are_json_with_context() -> None:
    buf = capture()
    with bound(request_id="rid-12345678", actor="alice"):
        get_logger("t").info("booked", order_id="o-1")
        logging.getLogger("plain").warning("from stdlib %s", "x")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["event"] == "booked" and lines[0]["order_id"] == "o-1"
    assert lines[0]["request_id"] == "rid-12345678" and lines[0]["actor"] == "alice"
    assert lines[1]["event"] == "from stdlib x" and lines[1]["level"] == "warning"
    assert lines[1]["request_id"] == "rid-12345678"


def test_secrets_are_redacted() -> None:
    buf = capture()
    get_logger("t").info(
        "login", password="hunter2", iban="DE89370400440532013000", client_secret="s3cr3t"
    )
    get_logger("t").info("header was Bearer eyJhbGciOi.abc.def")
    out = buf.getvalue()
    for secret in ("hunter2", "DE89370400440532013000", "s3cr3t", "eyJhbGciOi.abc.def"):
        assert secret not in out
    assert out.count("***") >= 4
