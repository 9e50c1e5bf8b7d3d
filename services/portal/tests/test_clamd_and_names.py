"""The clamd client against the real clamd (project config, EICAR signature) and against
servers that misbehave; and the file-name rules on their own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mesh_common.testing.clamd import (
    EICAR_SIGNATURE,
    ClamdServer,
    deploy_dir,
    eicar,
    free_port,
    require_clamd,
)
from portal_service.clamd import ClamdClient, ScannerLimit, ScannerUnavailable, parse_reply
from portal_service.names import InvalidFileName, contained, numbered, safe_file_name


def client(server: ClamdServer, **kw: object) -> ClamdClient:
    return ClamdClient(host=server.host, port=server.port, **kw)


async def test_ping_version_clean_and_eicar(clamd_server: ClamdServer) -> None:
    c = client(clamd_server, chunk_bytes=4096)
    await c.ping()
    assert (await c.version()).startswith("ClamAV 1.")
    assert (await c.scan_bytes(b"hello" * 10_000)).clean
    found = await c.scan_bytes(b"A" * 10_000 + eicar() + b"B" * 10)
    assert not found.clean and found.signature == EICAR_SIGNATURE
    # Split across INSTREAM chunks of 4 KiB: still found.
    stream = await c.instream()
    data = b"x" * 4090 + eicar() + b"y" * 9000
    for i in range(0, len(data), 1000):
        await stream.write(data[i : i + 1000])
    result = await stream.finish()
    assert result.signature == EICAR_SIGNATURE and stream.sent == len(data)


async def test_stream_over_clamds_limit_is_refused(tmp_path: Path) -> None:
    require_clamd()
    config = tmp_path / "small.conf"
    text = (deploy_dir() / "clamd.conf").read_text()
    config.write_text(text.replace("StreamMaxLength 1024M", "StreamMaxLength 1M"))
    with ClamdServer(config=config, base_dir=tmp_path / "clamd") as server:
        c = client(server, chunk_bytes=256 * 1024)
        # Refused either way; clamd's "size limit exceeded" reply arrives only when it is read
        # before clamd's close resets the connection (it closes with our data unread).
        with pytest.raises((ScannerLimit, ScannerUnavailable), match=r"size limit|StreamMaxLength"):
            await c.scan_bytes(b"z" * (3 * 1024 * 1024))
        assert (await c.scan_bytes(b"z" * 1000)).clean


async def test_unreachable_or_misbehaving_scanner() -> None:
    with pytest.raises(ScannerUnavailable, match="cannot connect"):
        await ClamdClient(host="127.0.0.1", port=free_port(), connect_timeout=1).ping()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.read(65536)).count(b"\0\0\0\0") == 0:
            pass
        writer.write(b"what is this\0")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    for handler, message in ((hang_up, "clamd"), (garbage, "unexpected"), (silent, "no verdict")):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ScannerUnavailable, match=message):
                await ClamdClient(host="127.0.0.1", port=port, timeout=0.5).scan_bytes(b"data")
        finally:
            server.close()
            await server.wait_closed()


def test_parse_reply() -> None:
    assert parse_reply("stream: OK").clean
    r = parse_reply("stream: Win.Test.EICAR_HDB-1 FOUND")
    assert not r.clean and r.signature == "Win.Test.EICAR_HDB-1"
    with pytest.raises(ScannerLimit):
        parse_reply("INSTREAM size limit exceeded. ERROR")
    with pytest.raises(ScannerUnavailable):
        parse_reply("stream: Can't allocate memory ERROR")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("Übersetzung (final).docx", "Übersetzung (final).docx"),
        ("dir/sub/file.txt", "file.txt"),
        ("dir\\file.txt", "file.txt"),
        ('a<b>c:d"e|f?g*h.txt', "a_b_c_d_e_f_g_h.txt"),
        (".bashrc", "_bashrc"),
        ("name.txt...", "name.txt"),
        ("  padded  ", "padded"),
        ("CONFIG.SYS", "CONFIG.SYS"),  # only the exact device names are reserved
        ("e\u0301.txt", "\u00e9.txt"),  # NFC
    ],
)
def test_safe_names(raw: str, expected: str) -> None:
    assert safe_file_name(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "..",
        "../x",
        "a/../../x",
        "..\\x",
        "/abs",
        "\\\\unc\\x",
        "C:x",
        "D:\\x",
        "nul\x00.txt",
        "line\nbreak",
        "CON",
        "con.txt",
        "COM1.log",
        "LPT9",
        "x" * 256,
        "ä" * 128,  # 256 bytes in UTF-8
        "dir/",
    ],
)
def test_refused_names(raw: str) -> None:
    with pytest.raises(InvalidFileName):
        safe_file_name(raw)


def test_containment(tmp_path: Path) -> None:
    (tmp_path / "box").mkdir()
    assert contained(tmp_path / "box", "a.txt") == (tmp_path / "box" / "a.txt").resolve()
    for bad in ("../a.txt", "/etc/passwd", "sub/a.txt", "."):
        with pytest.raises(InvalidFileName):
            contained(tmp_path / "box", bad)
    (tmp_path / "box" / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidFileName):
        contained(tmp_path / "box", "link")
    assert numbered("a.pdf", 1) == "a.pdf"
    assert numbered("a.tar.gz", 2) == "a.tar (2).gz"
    assert numbered("README", 3) == "README (3)"
    assert numbered(".x", 2) == ".x (2)"
