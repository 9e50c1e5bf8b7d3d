"""Gateway throughput and latency: direct vs through the gateway vs naive proxies, one run.

Every server is a separate process (uvicorn, uvloop + httptools, one worker): a small upstream
service, the real gateway (``python -m gateway_service``), and naive "forward the request with
an HTTP client" FastAPI proxies (httpx, and with --all-clients also the httpx-aiohttp transport
and a plain aiohttp session). The load generator is wrk (installed with apt-get when missing) or,
failing that, an aiohttp-based generator in its own process. 64 concurrent connections.

    .venv/bin/python bench/gateway.py                 # direct, gateway, naive-httpx
    .venv/bin/python bench/gateway.py --all-clients   # + naive-httpx-aiohttp, naive-aiohttp
    .venv/bin/python bench/gateway.py --duration 5

Prints req/s, p50 and p99 per mode and the ratio gateway/naive; writes
bench/results/gateway.json. The internal subcommands (upstream, naive, loadgen) are how the
script starts its own processes.
"""

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gateway.json"
PY = sys.executable
SECRET = "bench-secret-0123456789abcdefghijklmnop"
TARGET_RPS = 1000
TARGET_P99_MS = 100.0


# --------------------------------------------------------------------------- servers


def upstream_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI(title="bench upstream")
    items = [{"id": i, "title": f"Course {i}", "seats": 12} for i in range(10)]

    @app.get("/items")
    async def list_items() -> list[dict[str, Any]]:
        return items

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    return app


def naive_app(upstream: str, client_kind: str) -> Any:
    """The proxy most people write first: catch-all route, whole bodies, a shared client."""
    from contextlib import asynccontextmanager

    import httpx
    from fastapi import FastAPI, Request, Response

    hop = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if client_kind == "aiohttp":
            import aiohttp

            state["session"] = aiohttp.ClientSession()
        elif client_kind == "httpx-aiohttp":
            from httpx_aiohttp import HttpxAiohttpClient

            state["client"] = HttpxAiohttpClient(base_url=upstream)
        else:
            state["client"] = httpx.AsyncClient(base_url=upstream)
        yield
        if "session" in state:
            await state["session"].close()
        else:
            await state["client"].aclose()

    app = FastAPI(lifespan=lifespan)

    @app.api_route("/api/{service}/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def proxy(request: Request, service: str, path: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k not in hop}
        body = await request.body()
        if "session" in state:
            async with state["session"].request(
                request.method,
                f"{upstream}/{path}",
                params=request.query_params,
                headers=headers,
                data=body,
            ) as r:
                content = await r.read()
                out = {k: v for k, v in r.headers.items() if k.lower() not in hop}
                return Response(content, status_code=r.status, headers=out)
        r = await state["client"].request(
            request.method, "/" + path, params=request.query_params, headers=headers, content=body
        )
        out = {k: v for k, v in r.headers.items() if k.lower() not in hop}
        return Response(r.content, status_code=r.status_code, headers=out)

    return app


def serve(app: Any, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# --------------------------------------------------------------------------- load generation


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        return None
    print("bench: wrk missing, installing it with apt-get ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    if subprocess.run([apt, "install", "-y", "wrk"], **quiet).returncode != 0:
        subprocess.run([apt, "update"], **quiet)
        subprocess.run([apt, "install", "-y", "wrk"], **quiet)
    return shutil.which("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(wrk: str, url: str, token: str | None, duration: float, conns: int) -> dict[str, Any]:
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{duration:.0f}s", "--latency", "--timeout", "5s"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": total,
        "rps": round(rps, 1),
        "p50_ms": round(_ms(pct["50"]), 2),
        "p99_ms": round(_ms(pct["99"]), 2),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "generator": "wrk -t1",
    }


async def _aiohttp_load(url: str, token: str | None, duration: float, conns: int) -> dict[str, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal bad
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.get(url, headers=headers) as r:
                    await r.read()
                    if r.status >= 400:
                        bad += 1
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49], 2),
        "p99_ms": round(q[98], 2),
        "non_2xx": bad,
        "socket_errors": "",
        "generator": "aiohttp (python)",
    }


def run_loadgen(url: str, token: str | None, duration: float, conns: int) -> dict[str, Any]:
    cmd = [PY, __file__, "loadgen", url, "--duration", str(duration), "--conns", str(conns)]
    if token:
        cmd += ["--token", token]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


LOG = Path(tempfile.gettempdir()) / "edumesh-bench-gateway-servers.log"


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    log = LOG.open("ab")
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log, stderr=log)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy right now (0..1), to flag runs disturbed by other work."""

    def snap() -> tuple[int, int]:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]
        return idle, sum(values)

    idle0, total0 = snap()
    time.sleep(seconds)
    idle1, total1 = snap()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(max_wait: float, below: float) -> float:
    deadline = time.monotonic() + max_wait
    busy = machine_busy(0.5)
    while busy > below and time.monotonic() < deadline:
        busy = machine_busy(1.0)
    return busy


def main_run(args: argparse.Namespace) -> int:
    wrk = None if args.python_loadgen else ensure_wrk()
    if wrk is None:
        print("bench: using the aiohttp load generator (wrk unavailable)", file=sys.stderr)
    from mesh_common.auth import mint_token

    token = mint_token(subject="bench", secret=SECRET, ttl_seconds=3600)
    procs: list[subprocess.Popen[bytes]] = []
    LOG.unlink(missing_ok=True)
    try:
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        procs.append(start([PY, __file__, "upstream", "--port", str(up_port)]))
        wait_ready(upstream + "/health/live", procs[-1])

        gw_port = free_port()
        gw_env = {
            "GATEWAY_UPSTREAMS": json.dumps({"bench": upstream}),
            "GATEWAY_AUTH__MODE": "hs256",
            "GATEWAY_AUTH__HS256_SECRET": SECRET,
        }
        procs.append(start([PY, "-m", "gateway_service", "--port", str(gw_port)], gw_env))
        wait_ready(f"http://127.0.0.1:{gw_port}/health/live", procs[-1])

        up_pid = procs[0].pid
        modes: list[tuple[str, str, str | None, int]] = [
            ("direct", f"{upstream}/items", None, up_pid),
            ("gateway", f"http://127.0.0.1:{gw_port}/api/bench/items", token, procs[-1].pid),
        ]
        if args.compare_gateway:
            # Another gateway_service package (e.g. an older revision) for an A/B figure.
            alt_port = free_port()
            alt_env = {**gw_env, "PYTHONPATH": args.compare_gateway}
            procs.append(start([PY, "-m", "gateway_service", "--port", str(alt_port)], alt_env))
            wait_ready(f"http://127.0.0.1:{alt_port}/health/live", procs[-1])
            modes.append(
                (
                    "gateway-alt",
                    f"http://127.0.0.1:{alt_port}/api/bench/items",
                    token,
                    procs[-1].pid,
                )
            )
        kinds = ["httpx", "httpx-aiohttp", "aiohttp"] if args.all_clients else ["httpx"]
        for kind in kinds:
            port = free_port()
            procs.append(
                start([PY, __file__, "naive", "--port", str(port), "--upstream", upstream, kind])
            )
            wait_ready(f"http://127.0.0.1:{port}/api/bench/items", procs[-1])
            modes.append(
                (f"naive-{kind}", f"http://127.0.0.1:{port}/api/bench/items", token, procs[-1].pid)
            )

        results: dict[str, Any] = {}
        print(
            f"{'mode':20s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}"
            f" {'proxy CPU us/req':>17s} {'upstream CPU us/req':>20s} {'other load':>10s}"
        )
        for name, url, tok, pid in modes:
            # Warm-up: connection pools, the gateway's verified-token cache.
            warm = min(2.0, args.duration)
            (run_wrk(wrk, url, tok, warm, args.conns) if wrk else run_loadgen(url, tok, warm, 8))
            # Everything of ours is idle now, so what is busy is other people's work on this
            # shared machine: wait a while for a quiet moment, and record what we got.
            busy = wait_for_quiet(args.quiet_wait, args.quiet_below)
            cpu0, up0 = cpu_seconds(pid), cpu_seconds(up_pid)
            result = (
                run_wrk(wrk, url, tok, args.duration, args.conns)
                if wrk
                else run_loadgen(url, tok, args.duration, args.conns)
            )
            cpu1, up1 = cpu_seconds(pid), cpu_seconds(up_pid)
            n = max(1, result["requests"])
            result["upstream_cpu_us_per_req"] = round((up1 - up0) / n * 1e6)
            result["proxy_cpu_us_per_req"] = (
                None if pid == up_pid else round((cpu1 - cpu0) / n * 1e6)
            )
            result["machine_busy_before"] = round(busy, 2)
            results[name] = result
            proxy_cpu = result["proxy_cpu_us_per_req"]
            print(
                f"{name:20s} {result['rps']:9.1f} {result['p50_ms']:8.2f} {result['p99_ms']:8.2f}"
                f" {'-' if proxy_cpu is None else proxy_cpu:>17}"
                f" {result['upstream_cpu_us_per_req']:>20} {busy:>9.0%}"
                + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else ""),
                flush=True,
            )
    finally:
        # Proxies first, so they do not log connection errors to a vanished upstream.
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    if LOG.exists() and LOG.stat().st_size:
        print(f"(server logs: {LOG})")
    naive = results["naive-httpx"]["rps"]
    gateway = results["gateway"]
    summary = {
        "gateway_over_naive_httpx": round(gateway["rps"] / naive, 2) if naive else None,
        "gateway_over_direct": round(gateway["rps"] / results["direct"]["rps"], 3),
        "target": {"rps": TARGET_RPS, "p99_ms": TARGET_P99_MS},
        "target_met": gateway["rps"] >= TARGET_RPS and gateway["p99_ms"] < TARGET_P99_MS,
    }
    print(
        f"\ngateway/naive-httpx = {summary['gateway_over_naive_httpx']}x   "
        f"gateway/direct = {summary['gateway_over_direct']}   "
        f"target (>= {TARGET_RPS} req/s, p99 < {TARGET_P99_MS:.0f} ms) "
        f"{'MET' if summary['target_met'] else 'NOT MET'}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "gateway",
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "concurrency": args.conns,
                "duration_s": args.duration,
                "upstream_response": "GET /items, 10 small JSON objects (~0.4 KiB)",
                "servers": "uvicorn, uvloop + httptools, 1 worker each, separate processes",
                "notes": "machine_busy_before: share of both CPUs busy with other work just "
                "before a run (the machine is shared); CPU us/req from /proc/<pid>/stat",
                "results": results,
                "summary": summary,
                # read by bench/run_all.py
                "targets": {
                    "gateway req/s (64 conns)": {
                        "target": f">= {TARGET_RPS}",
                        "value": float(gateway["rps"]),
                        "met": gateway["rps"] >= TARGET_RPS,
                    },
                    "gateway p99 ms": {
                        "target": f"< {TARGET_P99_MS:.0f}",
                        "value": float(gateway["p99_ms"]),
                        "met": gateway["p99_ms"] < TARGET_P99_MS,
                    },
                    "gateway / naive httpx proxy req/s": {
                        "target": "> 1",
                        "value": float(summary["gateway_over_naive_httpx"] or 0.0),
                        "met": bool(summary["gateway_over_naive_httpx"])
                        and summary["gateway_over_naive_httpx"] > 1,
                    },
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    p_up = sub.add_parser("upstream")
    p_up.add_argument("--port", type=int, required=True)
    p_naive = sub.add_parser("naive")
    p_naive.add_argument("--port", type=int, required=True)
    p_naive.add_argument("--upstream", required=True)
    p_naive.add_argument("client", choices=["httpx", "httpx-aiohttp", "aiohttp"])
    p_load = sub.add_parser("loadgen")
    p_load.add_argument("url")
    p_load.add_argument("--token")
    p_load.add_argument("--duration", type=float, default=10)
    p_load.add_argument("--conns", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--all-clients", action="store_true")
    parser.add_argument("--python-loadgen", action="store_true", help="do not use wrk")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each mode, wait up to this many seconds for other CPU load to drop",
    )
    parser.add_argument("--quiet-below", type=float, default=0.15, help="(share of all CPUs)")
    parser.add_argument(
        "--compare-gateway",
        metavar="DIR",
        help="also run the gateway_service package found in DIR (A/B against this tree)",
    )
    args = parser.parse_args()
    if args.cmd == "upstream":
        serve(upstream_app(), args.port)
        return 0
    if args.cmd == "naive":
        serve(naive_app(args.upstream, args.client), args.port)
        return 0
    if args.cmd == "loadgen":
        result = asyncio.run(_aiohttp_load(args.url, args.token, args.duration, args.conns))
        print(json.dumps(result))
        return 0
    return main_run(args)


if __name__ == "__main__":
    raise SystemExit(main())
