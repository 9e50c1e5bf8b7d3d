"""Uploads at the portal (path traversal, EICAR, size) and oversized request bodies anywhere.

The mesh runs with small limits (conftest): gateway 3 MiB, services 1 MiB, portal uploads
1 MiB of file data (+1 MiB multipart slack). Who refused a body is visible in the problem's
``instance``: the gateway names the public path (``/api/booking/orders``), a service its own
(``/orders``).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from mesh_common.testing.clamd import EICAR_SIGNATURE, eicar, require_clamd

from .conftest import (
    GATEWAY_MAX_BODY,
    GATEWAY_MAX_BODY_PORTAL,
    SERVICE_MAX_BODY,
    Mesh,
    MiB,
    assert_problem,
)
from .edge import EDGE_MAX_BODY, Edge, edge  # noqa: F401 - fixture
from .portal_customer import Customer, multipart, new_customer

TRAVERSAL_NAMES = [
    "../../../../etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "/etc/passwd",
    "\\\\server\\share\\x.txt",
    "C:\\Windows\\system.ini",
    "c:x.txt",
    "incoming/../../final/x.pdf",
    "a/../../b.txt",
    "..",
    ".",
    "...",
    "CON",
    "nul.txt",
    "COM1.pdf",
    "",
    "   ",
    "x\x01.txt",
    "a" * 300 + ".txt",
]


@pytest.fixture(scope="module")
def customer(mesh: Mesh) -> Iterator[Customer]:
    if mesh.clamd is None:
        require_clamd()
    c = new_customer(mesh)
    try:
        yield c
    finally:
        c.client.close()


def _job_files(mesh: Mesh, job_id: str) -> list[dict[str, object]]:
    r = httpx.get(f"{mesh.url}/api/portal/jobs/{job_id}", headers=mesh.headers("staff"))
    assert r.status_code == 200, r.text
    files: list[dict[str, object]] = r.json()["files"]
    return files


def _storage_entries(mesh: Mesh) -> set[str]:
    root = mesh.var / "portal"
    return {str(p.relative_to(mesh.var)) for p in root.rglob("*") if ".tmp" not in p.parts}


def test_path_traversal_names_are_refused_and_nothing_is_written(
    mesh: Mesh, customer: Customer
) -> None:
    before_files = _job_files(mesh, customer.job_id)
    before_disk = _storage_entries(mesh)
    outside_before = {p.name for p in mesh.var.rglob("*")}
    failures = []
    for name in TRAVERSAL_NAMES:
        r = customer.upload([(name, b"harmless content\n")])
        try:
            body = assert_problem(r, 400)
            # An empty file name is "no file chosen" in a form (no-file); the rest are names.
            expected = {"invalid-file-name", "no-file"} if name == "" else {"invalid-file-name"}
            assert body["code"] in expected, body
        except AssertionError as exc:
            failures.append(f"{name!r}: {exc}")
    assert not failures, "\n".join(failures)
    # All or nothing: one bad name in a request with good files stores none of them.
    r = customer.upload([("good.txt", b"ok\n"), ("../evil.txt", b"x\n"), ("good2.txt", b"ok\n")])
    assert_problem(r, 400, "invalid-file-name")
    assert _job_files(mesh, customer.job_id) == before_files
    assert _storage_entries(mesh) == before_disk
    assert {p.name for p in mesh.var.rglob("*")} - outside_before <= {".tmp"}
    assert not any(p.name in ("passwd", "win.ini", "evil.txt") for p in mesh.var.rglob("*"))


def test_relative_paths_keep_only_their_last_component(mesh: Mesh, customer: Customer) -> None:
    r = customer.upload([("folder/sub/report.pdf", b"%PDF-1.4 test\n"), (".hidden", b"x")])
    assert r.status_code == 201, r.text
    names = sorted(f["name"] for f in r.json()["files"])
    assert names == ["_hidden", "report.pdf"]
    storage = mesh.var / "portal" / "files"
    stored = [p for p in storage.rglob("*") if p.is_file()]
    assert stored and all(p.resolve().is_relative_to(storage.resolve()) for p in stored)
    assert not any(p.name in ("report.pdf", "_hidden") for p in stored)  # stored under ids


def test_eicar_is_refused_logged_and_not_stored(mesh: Mesh, customer: Customer) -> None:
    before = _job_files(mesh, customer.job_id)
    r = customer.upload([("invoice.pdf", b"%PDF-1.4\n"), ("eicar.com", eicar())])
    body = assert_problem(r, 422, "virus-found")
    assert body.get("signature") == EICAR_SIGNATURE and body.get("file") == "eicar.com"
    # The EICAR string in the middle of a larger file is found as well.
    r = customer.upload([("padded.bin", b"A" * 300_000 + eicar() + b"B" * 300_000)])
    assert_problem(r, 422, "virus-found")
    assert _job_files(mesh, customer.job_id) == before
    audit = httpx.get(
        f"{mesh.url}/api/portal/audit", headers=mesh.headers("staff"), params={"limit": 200}
    ).json()
    entries = audit["entries"] if isinstance(audit, dict) else audit
    assert any(
        e.get("action") == "upload-rejected" and "virus" in str(e.get("detail")) for e in entries
    ), entries[:5]
    assert not any(
        eicar() in p.read_bytes() for p in (mesh.var / "portal").rglob("*") if p.is_file()
    )


def test_staff_uploads_are_scanned_too(mesh: Mesh, customer: Customer) -> None:
    body, ctype = multipart([("result.txt", eicar())])
    r = httpx.post(
        f"{mesh.url}/api/portal/jobs/{customer.job_id}/folders/final/files",
        content=body,
        headers={**mesh.headers("staff"), "Content-Type": ctype},
    )
    assert_problem(r, 422, "virus-found")


def test_upload_over_the_portal_limit_is_413(mesh: Mesh, customer: Customer) -> None:
    before = _job_files(mesh, customer.job_id)
    r = customer.upload([("big.bin", b"\0" * int(2.5 * MiB))])
    assert_problem(r, 413, "upload-too-large")
    assert _job_files(mesh, customer.job_id) == before


def test_upload_without_csrf_or_cross_site_is_refused(mesh: Mesh, customer: Customer) -> None:
    body, ctype = multipart([("a.txt", b"a")])
    url = f"/jobs/{customer.job_id}/folders/incoming/files"
    r = customer.client.post(url, content=body, headers={"Content-Type": ctype})
    assert_problem(r, 403, "csrf-failed")
    r = customer.upload([("a.txt", b"a")], headers={"Sec-Fetch-Site": "cross-site"})
    assert_problem(r, 403, "csrf-failed")
    # Another browser without the session: not signed in.
    r = httpx.post(
        f"{mesh.url}/api/portal/public{url}",
        content=body,
        headers={"Content-Type": ctype, "X-CSRF-Token": customer.csrf},
    )
    assert_problem(r, 401, "not-signed-in")


def test_a_customer_cannot_reach_another_customers_job(mesh: Mesh, customer: Customer) -> None:
    other = new_customer(mesh)
    try:
        r = customer.upload([("x.txt", b"x")], headers={})
        assert r.status_code == 201, r.text
        file_id = r.json()["files"][0]["id"]
        theirs = other.client.get(f"/jobs/{customer.job_id}/files/{file_id}")
        assert_problem(theirs, 404, "job-not-found")
        body, ctype = multipart([("y.txt", b"y")])
        r = other.client.post(
            f"/jobs/{customer.job_id}/folders/incoming/files",
            content=body,
            headers={"Content-Type": ctype, "X-CSRF-Token": other.csrf},
        )
        assert_problem(r, 404, "job-not-found")
        # Incoming is not downloadable, not even by its owner (only Final is).
        own = customer.client.get(f"/jobs/{customer.job_id}/files/{file_id}")
        assert_problem(own, 403, "folder-not-downloadable")
    finally:
        other.client.close()


# ------------------------------------------------------------------------- oversized bodies


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


def test_body_over_the_gateway_limit_is_413_at_the_gateway(mesh: Mesh) -> None:
    r = httpx.post(
        f"{mesh.url}/api/booking/orders",
        content=b"x" * (GATEWAY_MAX_BODY + MiB),
        headers={**mesh.headers("staff"), "Content-Type": "application/json"},
        timeout=60,
    )
    body = assert_problem(r, 413, "payload-too-large")
    assert body["instance"] == "/api/booking/orders"  # answered by the gateway
    # The portal has its own (larger) limit at the gateway, for uploads.
    r = httpx.post(
        f"{mesh.url}/api/portal/public/jobs/x/folders/incoming/files",
        content=b"x" * (GATEWAY_MAX_BODY_PORTAL + MiB),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
        timeout=60,
    )
    body = assert_problem(r, 413, "payload-too-large")
    assert body["instance"] == "/api/portal/public/jobs/x/folders/incoming/files"


def test_chunked_body_over_the_gateway_limit_is_cut_off(edge: Edge) -> None:  # noqa: F811
    """Without Content-Length the gateway counts while streaming and stops at its limit (the
    mesh's services refuse sooner than the gateway there, so this runs against :mod:`.edge`,
    whose upstream reads everything)."""
    headers = {"Authorization": f"Bearer {edge.token(roles=['staff'])}"}
    ok = httpx.post(
        f"{edge.gateway}/api/echo/sink", content=_chunks(EDGE_MAX_BODY), headers=headers
    )
    assert ok.status_code == 200 and ok.json() == {"size": EDGE_MAX_BODY}
    r = httpx.post(
        f"{edge.gateway}/api/echo/sink",
        content=_chunks(EDGE_MAX_BODY + MiB),
        headers=headers,
        timeout=60,
    )
    assert_problem(r, 413, "payload-too-large")


@pytest.mark.parametrize("service,path", [("booking", "/orders"), ("profile", "/me/bank-accounts")])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_service_limit_is_413_at_the_service(
    mesh: Mesh, service: str, path: str, chunked: bool
) -> None:
    size = SERVICE_MAX_BODY + 512 * 1024  # under the gateway's limit
    headers = {
        **mesh.headers("participant", participant_id="1"),
        "Content-Type": "application/json",
    }
    for url, instance in (
        (f"{mesh.url}/api/{service}{path}", path),
        (f"{mesh.direct[service]}{path}", path),
    ):
        content = _chunks(size) if chunked else b"x" * size
        r = httpx.post(url, content=content, headers=headers, timeout=60)
        body = assert_problem(r, 413, "payload-too-large")
        assert body["instance"] == instance


def test_portal_api_routes_keep_the_small_limit(mesh: Mesh) -> None:
    """The portal's body limit is raised for uploads only; its other routes stay small."""
    r = httpx.post(
        f"{mesh.url}/api/portal/jobs",
        content=b"x" * (2 * MiB),
        headers={**mesh.headers("service"), "Content-Type": "application/json"},
        timeout=60,
    )
    assert_problem(r, 413)
