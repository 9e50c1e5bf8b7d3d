"""Sign-in: Argon2 hashes (rehashed when the parameters change), a throttle per user name and
per client address that lives in the database (shared by replicas, kept over restarts), the
session cookie's flags, CSRF on forms, and idle expiry."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

from mesh_common.testing.clamd import ClamdServer
from portal_service import models
from sqlalchemy import select

from .conftest import (
    CHEAP_ARGON2,
    PASSWORD,
    STAFF,
    Rig,
    activated_customer,
    csrf_of,
    login,
)


async def test_brute_force_is_throttled_per_user_name(rig: Rig) -> None:
    await activated_customer(rig)
    attacker = rig.browser()
    for i in range(5):
        r = await login(attacker, "k-100", f"wrong-{i}")
        assert r.status_code == 401, r.text
        assert "The user name or the password is wrong." in r.text
    # The limit is reached: even the right password is refused now, with Retry-After.
    r = await login(attacker, "k-100", PASSWORD)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 900
    assert "Too many failed sign-in attempts" in r.text
    # Another browser (same address) gets the same answer for this user name.
    assert (await login(rig.browser(), "K-100", PASSWORD)).status_code == 429
    # After the window the right password works again, and clears the user's failures.
    rig.clock.advance(901)
    assert (await login(rig.browser(), "k-100", PASSWORD)).status_code == 303
    audit = (
        await rig.client.get("/audit", headers=STAFF, params={"action": "login-failed"})
    ).json()
    assert len(audit) == 5 and all(a["ip"] == "127.0.0.1" for a in audit)
    throttled = (
        await rig.client.get("/audit", headers=STAFF, params={"action": "login-throttled"})
    ).json()
    assert len(throttled) == 2


async def test_throttle_per_client_address_across_user_names(
    rig_factory: Any, clamd_server: ClamdServer
) -> None:
    rig: Rig = await rig_factory(clamd_server, portal_login_max_failures_per_ip=6)
    await activated_customer(rig)
    browser = rig.browser()
    for i in range(6):  # different names, so the per-name limit never triggers
        assert (await login(browser, f"guess-{i}", "x")).status_code == 401
    assert (await login(browser, "k-100", PASSWORD)).status_code == 429


async def test_throttle_is_shared_by_replicas_and_survives_a_restart(
    rig_factory: Any, clamd_server: ClamdServer
) -> None:
    first: Rig = await rig_factory(clamd_server)
    await activated_customer(first)
    for i in range(5):
        assert (await login(first.browser(), "k-100", f"nope-{i}")).status_code == 401
    # A second instance of the service on the same database (another replica, or the same
    # service after a restart) refuses as well.
    second: Rig = await rig_factory(clamd_server)
    assert (await login(second.browser(), "k-100", PASSWORD)).status_code == 429


async def test_hash_is_upgraded_when_the_parameters_change(
    rig_factory: Any, clamd_server: ClamdServer
) -> None:
    old: Rig = await rig_factory(clamd_server)
    await activated_customer(old)

    async def stored() -> str:
        async with old.portal.db.sessionmaker() as session:
            value = (await session.execute(select(models.accounts.c.password_hash))).scalar_one()
        return str(value)

    before = await stored()
    assert "m=8192,t=1,p=1" in before
    stronger = {**CHEAP_ARGON2, "time_cost": 2, "memory_cost_kib": 16384}
    new: Rig = await rig_factory(clamd_server, passwords=stronger)
    assert (await login(new.browser(), "k-100")).status_code == 303
    after = await stored()
    assert "m=16384,t=2,p=1" in after and after != before
    assert (await login(new.browser(), "k-100")).status_code == 303  # the new hash verifies
    rehashed = (await new.client.get("/audit", headers=STAFF, params={"action": "login"})).json()
    assert rehashed[-1]["detail"] == {"rehashed": True}


async def test_session_cookie_flags_in_production(
    rig_factory: Any, clamd_server: ClamdServer
) -> None:
    rig: Rig = await rig_factory(clamd_server, environment="production")
    await rig.register("P-1", {"client_no": "K-1", "email": "k1@kunde.example"})
    browser = rig.browser()
    page = await browser.get("/public/login")
    csrf_cookie = SimpleCookie(page.headers["set-cookie"])["portal_csrf"]
    assert csrf_cookie["httponly"] and csrf_cookie["secure"]
    assert csrf_cookie["samesite"] == "strict" and csrf_cookie["path"] == "/public"
    # Security headers of every page.
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"


async def test_session_cookie_flags_and_sign_out(rig: Rig) -> None:
    await rig.register("P-1", {"client_no": "K-1", "email": "k1@kunde.example"})
    (mail,) = await rig.mails_to("k1@kunde.example")
    from .conftest import activation_link, set_password

    browser = rig.browser()
    r = await set_password(browser, activation_link(mail))
    cookie = SimpleCookie(r.headers["set-cookie"])["portal_session"]
    assert cookie["httponly"] and cookie["samesite"] == "strict" and cookie["path"] == "/public"
    assert not cookie["secure"]  # the embedded default serves plain http on 127.0.0.1
    # Behind the gateway the cookie is scoped to the gateway's path.
    page = await browser.get(
        "/public/login", headers={"x-forwarded-prefix": "/api/portal"}, follow_redirects=False
    )
    assert page.headers["location"] == "/api/portal/public/jobs"
    # Sign out needs the session's CSRF token: a forged one (a cross-site form) ends nothing
    # on the server.
    r = await browser.post("/public/logout", data={"csrf": "forged"})
    assert r.status_code == 303
    async with rig.portal.db.sessionmaker() as session:
        assert len((await session.execute(select(models.sessions))).all()) == 1
    browser2 = rig.browser()
    assert (await login(browser2, "k-1")).status_code == 303
    jobs = await browser2.get("/public/jobs")
    r = await browser2.post("/public/logout", data={"csrf": csrf_of(jobs.text)})
    assert r.status_code == 303 and r.headers["location"] == "/public/login?notice=signed-out"
    assert (await browser2.get("/public/jobs")).status_code == 401


async def test_login_form_needs_its_csrf_token(rig: Rig) -> None:
    await activated_customer(rig)
    browser = rig.browser()
    await browser.get("/public/login")
    r = await browser.post(
        "/public/login", data={"csrf": "wrong", "username": "k-100", "password": PASSWORD}
    )
    assert r.status_code == 403 and "Reload the page" in r.text
    r = await rig.browser().post("/public/login", data={"username": "k-100", "password": PASSWORD})
    assert r.status_code == 403


async def test_idle_session_expires(rig: Rig) -> None:
    browser, registered, _ = await activated_customer(rig)
    assert (await browser.get("/public/jobs")).status_code == 200
    rig.clock.advance(31 * 60)
    r = await browser.get("/public/jobs", headers={"accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"] == "/public/login"
    r = await browser.get(f"/public/jobs/{registered['job_id']}")
    assert r.status_code == 401 and r.json()["code"] == "not-signed-in"
