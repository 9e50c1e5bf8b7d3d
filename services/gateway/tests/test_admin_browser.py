"""The /admin dashboard in a real browser: Debian's chromium driven by playwright (headless).

The gateway and a real service with tasks run as uvicorn servers (conftest ``admin_rig``); the
browser signs in with a minted token, sees every service's tasks, runs a task, watches the
execution finish with its records, retries the failed record, cancels a long run and signs out.
A screenshot is kept in artifacts/screenshots/admin-dashboard.png (collected by CI). Without
chromium the tests skip locally and fail under CI.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mesh_common.testing.browser import PageWatch, launch
from playwright.async_api import Browser, Page, expect

from .conftest import CONTACTS, REJECTED, AdminRig

SCREENSHOT = (
    Path(__file__).resolve().parents[3] / "artifacts" / "screenshots" / "admin-dashboard.png"
)
TOKEN_KEY = "edumesh.admin.token"

expect.set_options(timeout=15_000)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch() as launched:
        yield launched


async def new_page(browser: Browser, rig: AdminRig) -> tuple[Page, PageWatch]:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    return page, PageWatch(page, rig.gateway)


async def test_sign_in_run_a_task_see_its_records_and_retry(
    admin_rig: AdminRig, browser: Browser
) -> None:
    page, watch = await new_page(browser, admin_rig)
    await page.goto(admin_rig.gateway + "/admin")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Bearer token").fill(admin_rig.token("staff", subject="ops-browser"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Signed in as ops-browser (staff)")).to_be_visible()

    # Every service's tasks; the unreachable and the broken service are shown as such.
    demo = page.locator(
        "article.service", has=page.get_by_role("heading", name=re.compile("^demo"))
    )
    sync_row = demo.get_by_role("row", name=re.compile("sync-contacts"))
    await expect(sync_row).to_contain_text("Push contacts to the CRM.")
    await expect(sync_row).to_contain_text("every 1 h")
    await expect(demo.get_by_role("row", name=re.compile("slow-import"))).to_contain_text(
        "manual only"
    )
    down = page.locator("article.service-unreachable")
    await expect(down).to_contain_text("down")
    await expect(down).to_contain_text("the service is unreachable")
    await expect(page.locator("article.service-error")).to_contain_text("the task table is corrupt")
    await expect(page.get_by_text("Without a task API: plain")).to_be_visible()

    # Run now: the execution opens, finishes, and lists its records.
    await page.get_by_role("button", name="Run sync-contacts on demo now").click()
    status = page.get_by_role("status")
    await expect(status).to_contain_text("Started sync-contacts on demo: execution ")
    match = re.search(r"execution (\w+)\.", await status.inner_text())
    assert match is not None
    execution_id = match.group(1)
    detail = page.locator("#detail")
    await expect(detail.get_by_role("heading", level=2)).to_have_text(
        "Execution of sync-contacts on demo"
    )
    await expect(detail.locator("#detail-fields dd").first).to_have_text("partially succeeded")
    await expect(detail.locator("#detail-fields")).to_contain_text(execution_id)
    items = detail.locator("#items tbody tr")
    await expect(items).to_have_count(len(CONTACTS))
    counts = detail.locator("#detail-counts dd")
    await expect(counts).to_have_text(["6", "4", "1", "0", "1"])

    # ... and appears in the executions list and as the task's last execution.
    execution_row = page.locator(f'#executions tbody tr[data-execution="{execution_id}"]')
    await expect(execution_row).to_contain_text("partially succeeded")
    await expect(execution_row).to_contain_text("sync-contacts")
    await expect(sync_row).to_contain_text("partially succeeded")

    # The record log filtered by outcome.
    await page.get_by_label("Outcome").select_option("failed")
    await expect(items).to_have_count(1)
    await expect(items.first).to_contain_text(REJECTED)
    await expect(items.first).to_contain_text("CRM rejected the e-mail address")

    # Retry failed: a new execution for the failed record only.
    await page.get_by_role("button", name="Retry failed").click()
    await expect(status).to_contain_text(f"Retrying the failed records of {execution_id}")
    await expect(detail.locator("#detail-fields")).to_contain_text(f"Retry of{execution_id}")
    await expect(detail.locator("#detail-fields dd").first).to_have_text("succeeded")
    await expect(items).to_have_count(1)
    await expect(items.first).to_contain_text(REJECTED)
    await expect(page.get_by_role("button", name="Retry failed")).to_be_disabled()
    await expect(sync_row).to_contain_text("succeeded")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # Executions filtered by status: the partial run is there, its successful retry is not.
    await page.locator("#filter-status").select_option("partially_succeeded")
    rows = page.locator("#executions tbody tr")
    await expect(execution_row).to_be_visible()
    await expect(rows.filter(has_not_text="partially succeeded")).to_have_count(0)
    await page.locator("#filter-service").select_option("down")
    await expect(rows).to_have_count(0)
    await expect(page.locator("#executions-services")).to_contain_text("down (unreachable)")

    assert watch.errors == []
    assert watch.foreign == []


async def test_token_in_fragment_cancel_and_sign_out(admin_rig: AdminRig, browser: Browser) -> None:
    page, watch = await new_page(browser, admin_rig)
    token = admin_rig.token("admin", subject="dev-admin")
    await page.goto(f"{admin_rig.gateway}/admin#token={token}")
    await expect(page.get_by_text("Signed in as dev-admin (admin)")).to_be_visible()
    # Taken once: gone from the address bar, kept in this tab's sessionStorage.
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == token

    # A dry run shows what would change, per record.
    detail = page.locator("#detail")
    await page.get_by_role("button", name="Dry run of sync-contacts on demo").click()
    await expect(page.get_by_role("status")).to_contain_text("Started a dry run of sync-contacts")
    await expect(detail.locator("#detail-fields")).to_contain_text("manual dry run")
    first = detail.locator("#items tbody tr").first
    await expect(first).to_contain_text("contact-1")
    await first.get_by_text("show").click()
    await expect(first.locator("pre")).to_contain_text("contact-1@example.org")

    await page.get_by_role("button", name="Run slow-import on demo now").click()
    await expect(detail.get_by_role("heading", level=2)).to_have_text(
        "Execution of slow-import on demo"
    )
    state = detail.locator("#detail-fields dd").first
    await expect(state).to_have_text("running")
    # Records arrive while it runs (auto-refresh).
    await expect(detail.locator("#items tbody tr").first).to_contain_text("row-1")
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await expect(state).to_have_text("cancelled")
    await expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    assert watch.errors == []
    assert watch.foreign == []


async def test_refused_tokens_show_the_problem(admin_rig: AdminRig, browser: Browser) -> None:
    page, watch = await new_page(browser, admin_rig)
    await page.goto(admin_rig.gateway + "/admin")
    alert = page.get_by_role("alert")

    # A participant is not staff: 403 problem detail shown, back at the sign-in form.
    await page.get_by_label("Bearer token").fill(admin_rig.token("participant"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(alert).to_contain_text("Could not load the dashboard: Forbidden (HTTP 403)")
    await expect(alert).to_contain_text("requires role staff")
    await expect(alert).to_contain_text("request id ")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # A forged token: 401 with its code.
    await page.get_by_label("Bearer token").fill("Bearer " + admin_rig.token("staff")[:-4] + "AAAA")
    await page.get_by_role("button", name="Sign in").click()
    await expect(alert).to_contain_text("(HTTP 401)")
    await expect(alert).to_contain_text("code token-bad-signature")
    await expect(page.locator("#dashboard")).to_be_hidden()
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

    # The browser logs the refused fetches; nothing else may go wrong.
    assert [e for e in watch.errors if "status of 40" not in e] == []
    assert watch.foreign == []
