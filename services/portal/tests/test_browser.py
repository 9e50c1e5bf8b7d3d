"""The customer pages in a real browser: Debian's chromium driven by playwright (headless),
through the real gateway (``/api/portal/public/...``, no mesh token) to the portal served by
uvicorn, with a real clamd and SMTP server. The customer opens the activation link from the
mail, chooses a password, lands signed in on the job list, opens the job, uploads a file, sees
it listed in Incoming, and sees the refusal of an EICAR file. A screenshot is kept in
artifacts/screenshots/portal.png. Without chromium the test skips locally and fails under CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mesh_common.testing.browser import PageWatch, launch, require_chromium
from mesh_common.testing.clamd import ClamdServer, eicar, free_port
from mesh_common.testing.serving import ServerThread
from mesh_common.testing.smtp import SmtpCapture
from playwright.async_api import Browser, expect
from portal_service.app import create_app
from portal_service.public import human_size

from .conftest import CHEAP_ARGON2, SECRET, SERVICE, activation_link, client_data, make_settings

SCREENSHOT = Path(__file__).resolve().parents[3] / "artifacts" / "screenshots" / "portal.png"

expect.set_options(timeout=15_000)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch() as launched:
        yield launched


@dataclass
class Stack:
    gateway: str
    portal: str
    smtp: SmtpCapture


def start_gateway(port: int, portal: str) -> subprocess.Popen[bytes]:
    """The real gateway as its own process (as in production; services never import it)."""
    env = {
        **os.environ,
        "GATEWAY_UPSTREAMS": json.dumps({"portal": portal}),
        "GATEWAY_AUTH__HS256_SECRET": SECRET,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_service", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/portal/health/live", timeout=1)
            if r.status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the gateway did not start")


@pytest.fixture
def stack(tmp_path: Path, smtp_server: SmtpCapture, clamd_server: ClamdServer) -> Iterator[Stack]:
    require_chromium()
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    settings = make_settings(
        tmp_path,
        smtp_server,
        clamd_server,
        portal_public_url=gateway_url + "/api/portal/public",
    )
    thread = ServerThread()
    gateway: subprocess.Popen[bytes] | None = None
    try:
        portal = thread.serve(
            create_app(settings, passwords=CHEAP_ARGON2),
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            timeout_graceful_shutdown=2,
        )
        gateway = start_gateway(gateway_port, portal)
        yield Stack(gateway_url, portal, smtp_server)
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=15)
        thread.stop()


async def test_activate_set_password_upload_and_see_the_file(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway) as api:
        r = await api.post(
            "/api/portal/jobs",
            json={
                "project_no": "P-2026-0815",
                "client": client_data("K-10023", name="Muster & Söhne GmbH"),
                "description": "Übersetzung Handbuch DE→EN",
                "due_date": "2026-12-15",
            },
            headers=SERVICE,
        )
        assert r.status_code == 201, r.text
    for _ in range(500):
        if stack.smtp.to("k-10023@kunde.example"):
            break
        await asyncio.sleep(0.02)
    (mail,) = stack.smtp.to("k-10023@kunde.example")
    link = activation_link(mail.message)
    assert link.startswith(stack.gateway + "/api/portal/public/activate?token=")

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    watch = PageWatch(page, stack.gateway)

    # Activate: the link opens the password form for the user name from the mail.
    await page.goto(link)
    await expect(page.get_by_role("heading", name="Choose your password")).to_be_visible()
    await expect(page.locator("#activate-username")).to_have_text("k-10023")
    # Mismatched passwords are caught by the page's script before anything is sent.
    await page.get_by_label("New password").fill("Blue-Ocean-42!")
    await page.get_by_label("Repeat the password").fill("Blue-Ocean-43!")
    await page.get_by_role("button", name="Save password and sign in").click()
    await expect(page.locator("#password-mismatch")).to_be_visible()
    await page.get_by_label("Repeat the password").fill("Blue-Ocean-42!")
    await page.get_by_role("button", name="Save password and sign in").click()

    # Signed in, on the job list.
    await expect(page.get_by_text("Signed in as k-10023")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("Your portal access is active")
    assert page.url.startswith(stack.gateway + "/api/portal/public/jobs")
    jobs = page.locator("#jobs tbody tr")
    await expect(jobs).to_have_count(1)
    await expect(jobs.first).to_contain_text("Übersetzung Handbuch DE→EN")
    await expect(jobs.first).to_contain_text("15.12.2026")

    # The job's folders; upload a file into Incoming.
    await page.get_by_role("link", name="P-2026-0815").click()
    await expect(page.get_by_role("heading", name="Job P-2026-0815")).to_be_visible()
    for name in ("Incoming", "In progress", "Final"):
        await expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    source = tmp_path / "Vorlage Handbuch.docx"
    source.write_bytes(b"PK\x03\x04 handbook " * 2000)
    await page.get_by_label("Files to upload").set_input_files(str(source))
    await page.get_by_role("button", name="Upload", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text(
        "1 file(s) uploaded and checked for viruses."
    )
    incoming = page.locator("#folder-incoming")
    await expect(incoming.get_by_role("cell", name="Vorlage Handbuch.docx")).to_be_visible()
    await expect(incoming).to_contain_text(human_size(source.stat().st_size))  # 27.3 KB

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # An infected file is refused and the page says why; nothing new is listed.
    bad = tmp_path / "rechnung.pdf.exe"
    bad.write_bytes(eicar())
    await page.get_by_label("Files to upload").set_input_files(str(bad))
    await page.get_by_role("button", name="Upload", exact=True).click()
    alert = page.locator("#upload-error")
    await expect(alert).to_contain_text("the virus scanner found Edumesh.Test.EICAR")
    await expect(alert).to_contain_text("nothing was stored")
    await expect(incoming.locator("tbody tr")).to_have_count(1)

    # Sign out: back at the sign-in page; the job list needs signing in again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("You are signed out.")
    await page.goto(stack.gateway + "/api/portal/public/jobs")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # ... and sign in again with the password chosen above.
    await page.get_by_label("User name").fill("k-10023")
    await page.get_by_label("Password").fill("Blue-Ocean-42!")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Signed in as k-10023")).to_be_visible()

    # The refused upload logs a failed request in the console; nothing else may go wrong
    # (a CSP violation would be a console error).
    assert [e for e in watch.errors if not re.search(r"status of 422", e)] == []
    assert watch.foreign == []
