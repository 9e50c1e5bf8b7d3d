"""API docs need no CDN: the gateway and every service serve Swagger UI's assets themselves."""

from __future__ import annotations

import re

import httpx

from .conftest import AdminRig


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(
        r"url: *['\"]([^'\"]+)['\"]", html
    )


def test_gateway_docs_load_only_local_assets(admin_rig: AdminRig) -> None:
    page = httpx.get(f"{admin_rig.gateway}/docs")
    assert page.status_code == 200
    urls = _asset_urls(page.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    for url in urls:
        r = httpx.get(f"{admin_rig.gateway}{url}")
        assert r.status_code == 200, url
    assert "cdn" not in page.text.lower()


def test_service_docs_through_the_gateway_use_the_prefixed_local_assets(
    admin_rig: AdminRig,
) -> None:
    page = httpx.get(f"{admin_rig.gateway}/api/demo/docs")  # public: no token needed
    assert page.status_code == 200, page.text
    urls = _asset_urls(page.text)
    assert urls and all(u.startswith("/api/demo/") for u in urls), urls
    for url in urls:
        assert httpx.get(f"{admin_rig.gateway}{url}").status_code == 200, url
