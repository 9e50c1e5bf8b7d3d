"""Portal upload benchmark: a 200 MB file through the customer upload endpoint, virus-scanned.

Set-up (all throwaway): a clamd started with the project's config (deploy/clamd/clamd.conf) and
its EICAR signature database, on a free port; a capturing SMTP server (for the activation
mail); the portal as its own process (``python -m portal_service``, uvicorn as in production)
on SQLite in a temporary directory. A job is registered over REST, the customer activates the
account from the mail and signs in, as a browser would.

Measured in the same run, alternating, ``--rounds`` times each (the median counts):

- **raw**: the file streamed straight to clamd over INSTREAM (1 MiB chunks, blocking socket),
  from the first byte to clamd's verdict;
- **portal**: the same file uploaded as multipart/form-data (streamed from disk in 1 MiB
  chunks) to ``/public/jobs/{id}/folders/incoming/files``, from the first byte to the 201; the
  portal streams it to a spool file and to clamd at the same time, then stores it.

While the portal uploads run, the portal process's resident set size (``/proc/<pid>/status``
VmRSS) is sampled every 10 ms; the growth over its size just before the upload is the memory
figure. Afterwards the stored copies are checked (SHA-256) and the spool must be empty.

Targets: peak RSS growth < 64 MB; portal throughput >= 50% of raw INSTREAM throughput.
Writes bench/results/portal_upload.json.

    .venv/bin/python bench/portal_upload.py [--mb 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from mesh_common.auth import mint_token
from mesh_common.testing.clamd import ClamdServer, free_port
from mesh_common.testing.smtp import SmtpCapture

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "portal_upload.json"
CHUNK = 1024 * 1024
SECRET = "portal-bench-" + os.urandom(16).hex()
BOUNDARY = "----portalbench" + os.urandom(8).hex()


def make_file(path: Path, megabytes: int) -> str:
    """Incompressible data (so nothing gets cheaper by accident); returns its SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    with path.open("wb") as f:
        for i in range(megabytes):
            # Vary each MiB a little so no two are equal.
            data = struct.pack(">Q", i) + block[8:]
            f.write(data)
            digest.update(data)
    return digest.hexdigest()


def raw_instream(host: str, port: int, path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    with socket.create_connection((host, port)) as s, path.open("rb") as f:
        s.sendall(b"zINSTREAM\0")
        while chunk := f.read(CHUNK):
            s.sendall(struct.pack(">I", len(chunk)) + chunk)
        s.sendall(struct.pack(">I", 0))
        reply = b""
        while not reply.endswith(b"\0"):
            part = s.recv(4096)
            if not part:
                break
            reply += part
    return time.perf_counter() - start, reply.rstrip(b"\0").decode()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) if match else 0


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def start_portal(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "portal_service"],
        cwd=ROOT,
        env={**os.environ, **env, "PORT": str(port), "LOG_LEVEL": "WARNING"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the portal exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the portal did not become ready")


async def signed_in_customer(base: str, smtp: SmtpCapture) -> tuple[httpx.AsyncClient, str, str]:
    """Register a job, activate the account from the mail; the signed-in client, job id and
    the session's CSRF token."""
    service = {
        "Authorization": "Bearer " + mint_token(subject="bench", secret=SECRET, roles=["service"])
    }
    browser = httpx.AsyncClient(base_url=base, timeout=600)
    r = await browser.post(
        "/jobs",
        json={
            "project_no": "P-BENCH",
            "client": {"client_no": "K-BENCH", "email": "bench@kunde.example"},
        },
        headers=service,
    )
    r.raise_for_status()
    job_id = r.json()["job_id"]
    for _ in range(500):
        if smtp.messages:
            break
        await asyncio.sleep(0.02)
    text = smtp.messages[0].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    token = re.search(r"activate\?token=([A-Za-z0-9_-]+)", text).group(1)  # type: ignore[union-attr]
    page = await browser.get("/public/activate", params={"token": token})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    password = "Bench-Password-" + os.urandom(4).hex()
    r = await browser.post(
        "/public/activate",
        data={"csrf": csrf, "token": token, "password": password, "password_confirm": password},
    )
    assert r.status_code == 303, r.text
    page = await browser.get(f"/public/jobs/{job_id}")
    session_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return browser, job_id, session_csrf


def multipart_parts(path: Path, name: str) -> tuple[bytes, bytes, int]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, tail, len(head) + path.stat().st_size + len(tail)


async def body(path: Path, head: bytes, tail: bytes) -> AsyncIterator[bytes]:
    yield head
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
    yield tail


async def portal_upload(
    browser: httpx.AsyncClient, job_id: str, csrf: str, path: Path, name: str
) -> tuple[float, dict[str, Any]]:
    head, tail, length = multipart_parts(path, name)
    start = time.perf_counter()
    r = await browser.post(
        f"/public/jobs/{job_id}/folders/incoming/files",
        content=body(path, head, tail),
        headers={
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
            "content-length": str(length),
            "x-csrf-token": csrf,
            "accept": "application/json",
        },
    )
    elapsed = time.perf_counter() - start
    if r.status_code != 201:
        raise SystemExit(f"upload failed: {r.status_code} {r.text}")
    return elapsed, r.json()["files"][0]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    source = work / "upload.bin"
    print(f"== writing {args.mb} MiB of random data", flush=True)
    sha = make_file(source, args.mb)
    size = source.stat().st_size
    proc: subprocess.Popen[bytes] | None = None
    with ClamdServer(base_dir=work / "clamd") as clamd, SmtpCapture() as smtp:
        port = free_port()
        env = {
            "VAR_DIR": str(work / "var"),
            "MESH_JWT_SECRET": SECRET,
            "CLAMD_HOST": clamd.host,
            "CLAMD_PORT": str(clamd.port),
            "SMTP_HOST": smtp.host,
            "SMTP_PORT": str(smtp.port),
            "PORTAL_UPLOAD_MAX_BYTES": str(size + 1024 * 1024),
            "PORTAL_PUBLIC_URL": f"http://127.0.0.1:{port}/public",
        }
        try:
            proc = start_portal(env, port)
            browser, job_id, csrf = await signed_in_customer(f"http://127.0.0.1:{port}", smtp)
            # Warm-up: a small upload (first scan, first write paths).
            warm = work / "warm.bin"
            warm.write_bytes(os.urandom(CHUNK))
            await portal_upload(browser, job_id, csrf, warm, "warm.bin")
            raw_instream(clamd.host, clamd.port, warm)

            raw_times: list[float] = []
            portal_times: list[float] = []
            growth_mb: list[float] = []
            stored: list[dict[str, Any]] = []
            for round_no in range(1, args.rounds + 1):
                seconds, reply = raw_instream(clamd.host, clamd.port, source)
                assert reply == "stream: OK", reply
                raw_times.append(seconds)
                baseline = rss_kib(proc.pid)
                with RssSampler(proc.pid) as sampler:
                    seconds, info = await portal_upload(
                        browser, job_id, csrf, source, f"round-{round_no}.bin"
                    )
                portal_times.append(seconds)
                stored.append(info)
                growth_mb.append((sampler.peak - baseline) / 1024)
                print(
                    f"  round {round_no}: raw {raw_times[-1]:.2f} s, portal {seconds:.2f} s, "
                    f"RSS growth {growth_mb[-1]:.1f} MB",
                    flush=True,
                )
            await browser.aclose()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    files_dir = work / "var" / "portal" / "files"
    spool = list((files_dir / ".tmp").iterdir())
    blobs = [p for p in files_dir.rglob("*") if p.is_file() and ".tmp" not in p.parts]
    intact = all(i["sha256"] == sha and i["size"] == size for i in stored)
    on_disk = [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in blobs if p.stat().st_size == size
    ]
    intact = intact and on_disk.count(sha) == args.rounds

    raw = statistics.median(raw_times)
    portal = statistics.median(portal_times)
    ratio = raw / portal
    peak_growth = max(growth_mb)
    mb = size / 1e6
    results: dict[str, Any] = {
        "file_mb": round(mb, 1),
        "rounds": args.rounds,
        "raw_instream_seconds": raw_times,
        "portal_upload_seconds": portal_times,
        "raw_instream_mb_per_s": round(mb / raw, 1),
        "portal_upload_mb_per_s": round(mb / portal, 1),
        "throughput_ratio": round(ratio, 3),
        "rss_growth_mb": [round(g, 1) for g in growth_mb],
        "stored_intact": intact,
        "spool_left": len(spool),
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
        "targets": {
            "peak_rss_growth_mb": {
                "target": "< 64",
                "value": round(peak_growth, 1),
                "met": peak_growth < 64,
            },
            "throughput_vs_raw_instream": {
                "target": ">= 0.5",
                "value": round(ratio, 3),
                "met": ratio >= 0.5,
            },
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    if not intact or spool:
        print("stored files do not match the source, or the spool is not empty", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
