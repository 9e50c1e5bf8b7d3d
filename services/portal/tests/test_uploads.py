"""Uploads through a real clamd (project config, EICAR signature): clean files stored, EICAR
rejected with nothing stored, a stopped clamd refuses uploads (fail closed), Incoming only,
names sanitised and traversal refused, size limits, downloads from Final only."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from mesh_common.testing.clamd import EICAR_SIGNATURE, ClamdServer, eicar, require_clamd
from portal_service import models
from sqlalchemy import func, select

from .conftest import (
    STAFF,
    Rig,
    activated_customer,
    client_data,
    job_page_csrf,
    multipart,
    upload,
)

PROBLEM = "application/problem+json"


async def stored_files(rig: Rig) -> list[Any]:
    async with rig.portal.db.sessionmaker() as session:
        return list((await session.execute(select(models.files))).all())


def blobs(rig: Rig) -> list[Path]:
    root = rig.settings.storage_dir
    return sorted(p for p in root.rglob("*") if p.is_file())


def spool(rig: Rig) -> list[Path]:
    tmp = rig.settings.storage_dir / ".tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


async def test_clean_file_is_scanned_and_stored(rig: Rig) -> None:
    browser, registered, username = await activated_customer(rig)
    data = b"%PDF-1.7 clean content\n" * 5000
    r = await upload(browser, registered["job_id"], [("Übersetzung Vorlage.pdf", data)])
    assert r.status_code == 201, r.text
    (info,) = r.json()["files"]
    assert info["name"] == "Übersetzung Vorlage.pdf"
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["size"] == len(data)

    (row,) = await stored_files(rig)
    assert (row.folder, row.uploaded_by) == ("incoming", f"customer:{username}")
    assert row.scanner == "stream: OK"
    assert rig.portal.storage.blob(row.job_id, row.id).read_bytes() == data
    assert spool(rig) == []
    page = await browser.get(f"/public/jobs/{registered['job_id']}")
    assert "Übersetzung Vorlage.pdf" in page.text
    # Announced on the bus through the outbox.
    async with rig.portal.db.sessionmaker() as session:
        types = (await session.execute(select(models.outbox.c.type))).scalars().all()
    assert "portal.files_uploaded.v1" in types


async def test_eicar_is_rejected_and_nothing_is_stored(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    browser, registered, _ = await activated_customer(rig)
    caplog.set_level(logging.WARNING, logger="portal")
    # A clean file first and EICAR second in the same upload: the whole upload is refused.
    r = await upload(
        browser,
        registered["job_id"],
        [("ok.txt", b"harmless" * 1000), ("invoice.pdf.exe", b"prefix " + eicar() + b" tail")],
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["code"] == "virus-found" and body["signature"] == EICAR_SIGNATURE
    assert "invoice.pdf.exe" in body["detail"] and "nothing was stored" in body["detail"]
    assert await stored_files(rig) == []
    assert blobs(rig) == [] and spool(rig) == []
    assert any("infected upload rejected" in m for m in caplog.messages)
    audit = (
        await rig.client.get("/audit", headers=STAFF, params={"action": "upload-rejected"})
    ).json()
    assert audit[0]["detail"]["signature"] == EICAR_SIGNATURE
    assert audit[0]["detail"]["code"] == "virus-found"
    # The EICAR file alone, through the non-script form path: the same refusal.
    r = await upload(browser, registered["job_id"], [("eicar.com", eicar())], header=False)
    assert r.status_code == 422 and await stored_files(rig) == []
    metrics = (await rig.client.get("/metrics")).text
    assert 'portal_uploads_total{outcome="virus-found"} 2.0' in metrics


async def test_scanner_stopped_means_uploads_are_refused(rig_factory: Any, tmp_path: Path) -> None:
    require_clamd()
    with ClamdServer(base_dir=tmp_path / "own-clamd") as clamd:
        rig: Rig = await rig_factory(clamd)
        browser, registered, _ = await activated_customer(rig)
        assert (await upload(browser, registered["job_id"], [("a.txt", b"a")])).status_code == 201
        clamd.stop()
        r = await upload(browser, registered["job_id"], [("b.txt", b"b" * 100_000)])
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert r.json()["code"] == "scanner-unavailable"
        assert "virus scanner cannot be reached" in r.json()["detail"]
        assert "Nothing was stored" in r.json()["detail"]
        assert [f.name for f in await stored_files(rig)] == ["a.txt"]
        assert spool(rig) == []
        state = (await rig.client.get("/scanner", headers=STAFF)).json()
        assert state["configured"] and not state["reachable"]
        # Back on the same port: uploads work again.
        clamd.start()
        r = await upload(browser, registered["job_id"], [("b.txt", b"b")])
        assert r.status_code == 201, r.text
        state = (await rig.client.get("/scanner", headers=STAFF)).json()
        assert state["reachable"] and state["version"].startswith("ClamAV")


async def test_no_scanner_configured_refuses_every_upload(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(None)
    browser, registered, _ = await activated_customer(rig)
    page = await browser.get(f"/public/jobs/{registered['job_id']}")
    assert "no virus scanner is configured" in page.text
    r = await upload(browser, registered["job_id"], [("a.txt", b"a")], csrf="x" * 43)
    assert r.status_code == 403  # wrong CSRF is checked first
    token = (await browser.get(f"/public/jobs/{registered['job_id']}")).text
    from .conftest import csrf_of

    r = await upload(browser, registered["job_id"], [("a.txt", b"a")], csrf=csrf_of(token))
    assert r.status_code == 503 and r.json()["code"] == "scanner-not-configured"
    assert await stored_files(rig) == []


@pytest.mark.parametrize("folder", ["in_progress", "final"])
async def test_customers_upload_only_to_incoming(rig: Rig, folder: str) -> None:
    browser, registered, _ = await activated_customer(rig)
    r = await upload(browser, registered["job_id"], [("a.txt", b"a")], folder=folder)
    assert r.status_code == 403 and r.json()["code"] == "folder-read-only"
    r = await upload(browser, registered["job_id"], [("a.txt", b"a")], folder="../incoming")
    assert r.status_code in (404, 403)
    assert await stored_files(rig) == []


@pytest.mark.parametrize(
    "name",
    [
        "../secret.txt",
        "../../../../etc/passwd",
        "..\\..\\windows\\win.ini",
        "sub/../../x.txt",
        "/etc/passwd",
        "\\\\server\\share\\x.txt",
        "C:\\Windows\\system.ini",
        "..",
        "...",
        "a\x00b.txt",
        "tab\there.txt",
        "CON",
        "nul.txt",
        "Lpt1.pdf",
        "",
    ],
)
async def test_traversal_and_bad_names_are_refused(rig: Rig, name: str) -> None:
    browser, registered, _ = await activated_customer(rig)
    r = await upload(browser, registered["job_id"], [(name, b"payload")])
    if name == "":
        assert r.status_code == 400 and r.json()["code"] == "no-file"
    else:
        assert r.status_code == 400, (name, r.text)
        assert r.json()["code"] == "invalid-file-name"
    assert await stored_files(rig) == [] and spool(rig) == []
    # Nothing appeared outside the storage either.
    assert not (rig.settings.storage_dir.parent / "secret.txt").exists()
    assert not (rig.tmp / "x.txt").exists()


async def test_names_are_cleaned_and_never_overwrite(rig: Rig) -> None:
    browser, registered, _ = await activated_customer(rig)
    job = registered["job_id"]
    cases = [
        ("Bericht: final?.pdf", "Bericht_ final_.pdf"),
        ("Übersetzung DE→EN; v2.pdf", "Übersetzung DE→EN; v2.pdf"),
        ("Ordner/Unterordner/Text.docx", "Text.docx"),
        ("C-folder\\notes.txt", "notes.txt"),
        (".htaccess", "_htaccess"),
        ("  spaced.txt. ", "spaced.txt"),
        ("Text.docx", "Text (2).docx"),
        ("Text.docx", "Text (3).docx"),
    ]
    for raw, expected in cases:
        r = await upload(browser, job, [(raw, raw.encode())])
        assert r.status_code == 201, (raw, r.text)
        assert r.json()["files"][0]["name"] == expected
    rows = await stored_files(rig)
    assert sorted(r.name for r in rows) == sorted(e for _, e in cases)
    # Every stored byte is where its row says, under a generated id, and nowhere else.
    assert len(blobs(rig)) == len(rows)
    for row in rows:
        path = rig.portal.storage.blob(job, row.id)
        assert path.parent == rig.settings.storage_dir.resolve() / job


async def test_oversized_uploads_get_413(rig: Rig) -> None:
    browser, registered, _ = await activated_customer(rig)
    job = registered["job_id"]
    limit = rig.settings.portal_upload_max_bytes  # 4 MiB in the tests
    csrf = await job_page_csrf(browser, job)
    big = b"x" * (limit + 1)
    # Declared by Content-Length: refused before the body is parsed.
    r = await upload(browser, job, [("big.bin", big + b"y" * 2_000_000)], csrf=csrf)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "upload-too-large" and r.json()["max_bytes"] == limit
    # Streamed without a length: refused when the file data passes the limit.
    body, ctype = multipart([("big.bin", big)])

    async def chunks() -> Any:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = await browser.post(
        f"/public/jobs/{job}/folders/incoming/files",
        content=chunks(),
        headers={"content-type": ctype, "x-csrf-token": csrf, "accept": "application/json"},
    )
    assert r.status_code == 413 and r.json()["code"] == "upload-too-large"
    assert "Nothing was stored" in r.json()["detail"]
    # Exactly at the limit is fine.
    r = await upload(browser, job, [("exact.bin", b"z" * limit)], csrf=csrf)
    assert r.status_code == 201, r.text
    assert [f.name for f in await stored_files(rig)] == ["exact.bin"]
    assert spool(rig) == []
    # Other routes keep a small body limit.
    r = await rig.client.put("/clients/K-1", content=b"{" + b" " * 2_000_000 + b"}", headers=STAFF)
    assert r.status_code == 413


async def test_upload_needs_csrf_and_a_session(rig: Rig) -> None:
    browser, registered, _ = await activated_customer(rig)
    job = registered["job_id"]
    body, ctype = multipart([("a.txt", b"a")])
    r = await browser.post(
        f"/public/jobs/{job}/folders/incoming/files", content=body, headers={"content-type": ctype}
    )
    assert r.status_code == 403 and r.json()["code"] == "csrf-failed"
    r = await rig.browser().post(
        f"/public/jobs/{job}/folders/incoming/files", content=body, headers={"content-type": ctype}
    )
    assert r.status_code == 401
    assert await stored_files(rig) == []


async def test_form_post_without_script_redirects_back(rig: Rig) -> None:
    browser, registered, _ = await activated_customer(rig)
    job = registered["job_id"]
    csrf = await job_page_csrf(browser, job)
    body, ctype = multipart([("a.txt", b"a"), ("", b"")], csrf=csrf)  # an empty second input
    r = await browser.post(
        f"/public/jobs/{job}/folders/incoming/files",
        content=body,
        headers={"content-type": ctype, "accept": "text/html"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/public/jobs/{job}?uploaded=1"
    page = await browser.get(r.headers["location"])
    assert "1 file(s) uploaded and checked for viruses." in page.text


async def test_downloads_only_from_final_and_only_own_jobs(rig: Rig) -> None:
    browser, registered, _ = await activated_customer(rig)
    job = registered["job_id"]
    result = b"translated result \x00\x01\x02" * 100
    body, ctype = multipart([("Ergebnis <EN>.pdf", result)])
    r = await rig.client.post(
        f"/jobs/{job}/folders/final/files", content=body, headers={**STAFF, "content-type": ctype}
    )
    assert r.status_code == 201, r.text
    (final,) = r.json()
    assert final["name"] == "Ergebnis _EN_.pdf"
    r = await upload(browser, job, [("mine.txt", b"mine")])
    mine = r.json()["files"][0]

    page = await browser.get(f"/public/jobs/{job}")
    assert f"/public/jobs/{job}/files/{final['id']}" in page.text
    assert f"/files/{mine['id']}" not in page.text  # no link outside Final
    r = await browser.get(f"/public/jobs/{job}/files/{final['id']}")
    assert r.status_code == 200 and r.content == result
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["x-content-type-options"] == "nosniff"
    r = await browser.get(f"/public/jobs/{job}/files/{mine['id']}")
    assert r.status_code == 403 and r.json()["code"] == "folder-not-downloadable"
    # Staff move it into Final: now it can be downloaded (under a free name there).
    r = await rig.client.post(
        f"/jobs/{job}/files/{mine['id']}/move", json={"folder": "final"}, headers=STAFF
    )
    assert r.status_code == 200 and r.json()["folder"] == "final"
    r = await browser.get(f"/public/jobs/{job}/files/{mine['id']}")
    assert r.status_code == 200 and r.content == b"mine"
    downloads = (
        await rig.client.get("/audit", headers=STAFF, params={"action": "download"})
    ).json()
    assert {d["detail"]["file"] for d in downloads} == {"Ergebnis _EN_.pdf", "mine.txt"}

    # Another client's customer sees neither the job nor its files.
    await rig.register("P-OTHER", client_data("K-200"))
    (mail,) = await rig.mails_to("k-200@kunde.example")
    from .conftest import activation_link, set_password

    other = rig.browser()
    assert (await set_password(other, activation_link(mail))).status_code == 303
    assert (await other.get(f"/public/jobs/{job}")).status_code == 404
    assert (await other.get(f"/public/jobs/{job}/files/{final['id']}")).status_code == 404
    r = await upload(other, job, [("x.txt", b"x")], csrf="y" * 43)
    assert r.status_code == 404
    jobs_page = await other.get("/public/jobs")
    assert "P-OTHER" in jobs_page.text and registered["project_no"] not in jobs_page.text
    async with rig.portal.db.sessionmaker() as session:
        count = (await session.execute(select(func.count()).select_from(models.files))).scalar()
    assert count == 2
    # Staff delete a file: its row and its bytes are gone.
    r = await rig.client.delete(f"/jobs/{job}/files/{final['id']}", headers=STAFF)
    assert r.status_code == 204
    assert not rig.portal.storage.blob(job, final["id"]).exists()
    assert (await browser.get(f"/public/jobs/{job}/files/{final['id']}")).status_code == 404
