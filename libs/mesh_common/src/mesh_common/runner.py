"""Run one service (or the gateway) as its own uvicorn process: the production entrypoint.

Every container and every process of ``make up-local`` starts through :func:`serve`, so the
embedded launcher, the process topology and the images share one code path. Settings come from
the environment here, at process start, and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvicorn

from mesh_common.logging import configure_logging


def uvicorn_config(
    app: Any, *, host: str, port: int, grace: float, behind_gateway: bool = True
) -> uvicorn.Config:
    """Server config for one app. Services trust X-Forwarded-* from the gateway on loopback;
    the gateway itself (``behind_gateway=False``) trusts nobody's and sets them itself."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # our JSON logging, configured once per process
        access_log=False,  # the request-context middleware logs access lines
        timeout_graceful_shutdown=int(grace),
        proxy_headers=behind_gateway,
        forwarded_allow_ips="127.0.0.1" if behind_gateway else None,
    )


def serve(create_app: Callable[[Any], Any], settings: Any) -> None:
    """Build the app from ``settings`` and serve it until SIGTERM/SIGINT (graceful)."""
    configure_logging(settings.log_level, json=settings.log_json)
    app = create_app(settings)
    config = uvicorn_config(
        app, host=settings.host, port=settings.port, grace=settings.shutdown_grace_seconds
    )
    asyncio.run(uvicorn.Server(config).serve())
