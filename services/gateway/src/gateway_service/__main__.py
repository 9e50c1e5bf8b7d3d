"""``python -m gateway_service``: run the gateway alone under uvicorn (one process per container).

Responsible only for choosing the server options the gateway depends on: uvloop, httptools, and
``proxy_headers=False`` because the gateway decides about X-Forwarded-* itself
(``GatewaySettings.trusted_proxies``); letting uvicorn rewrite the client address first would
let any caller spoof it. Settings come from ``GATEWAY_*`` environment variables at start-up.
"""

from __future__ import annotations

import argparse
import os

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway_service")
    # Defaults from HOST/PORT, as for every service (the container image sets both).
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    uvicorn.run(
        "gateway_service.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        proxy_headers=False,
        server_header=False,
        access_log=args.access_log,
        log_level=args.log_level,
        # Longer than the keep-alive the gateway's own clients expect behind a load balancer.
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
