"""Swagger UI served from this process (assets from the ``fastapi-offline`` package), so API
docs work without any CDN: edumesh downloads nothing at run time and its pages' CSP can stay
``'self'``. Used by every service (``create_service_app``) and by the gateway."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
STATIC_URL = "/docs-static"


def install_docs(
    app: FastAPI, *, title: str, openapi_url: str = "/openapi.json", docs_url: str = "/docs"
) -> None:
    """Mount the Swagger UI assets at ``/docs-static`` and serve the page at ``docs_url``."""
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS), name="docs-static")

    @app.get(docs_url, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        # Behind the gateway the page lives under /api/<service>: the gateway says so in
        # X-Forwarded-Prefix (which it strips from outside requests).
        prefix = request.headers.get("x-forwarded-prefix") or request.scope.get("root_path", "")
        root = str(prefix).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - docs",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        )
