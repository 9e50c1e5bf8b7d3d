"""The gateway's own /metrics: proxied requests by service/method/status with latency, and
requests refused at the edge; only for staff or service tokens."""

from __future__ import annotations

import httpx

from .conftest import Rig


def _value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_proxied_and_refused_requests(rig: Rig) -> None:
    base = rig.gateway
    staff = rig.auth(roles=["staff"])
    before = httpx.get(f"{base}/metrics", headers=staff).text
    ok_key = 'gateway_requests_total{method="GET",service="alpha",status="200"}'
    refused_key = 'gateway_refused_total{code="token-missing"}'
    n_ok, n_refused = _value(before, ok_key), _value(before, refused_key)

    for _ in range(3):
        assert httpx.get(f"{base}/api/alpha/health/live").status_code == 200
    assert httpx.get(f"{base}/api/alpha/private").status_code == 401

    after = httpx.get(f"{base}/metrics", headers=staff)
    assert after.status_code == 200
    assert _value(after.text, ok_key) == n_ok + 3
    assert _value(after.text, refused_key) == n_refused + 1
    assert 'gateway_request_duration_seconds_count{service="alpha"}' in after.text


def test_metrics_need_staff_or_service(rig: Rig) -> None:
    assert httpx.get(f"{rig.gateway}/metrics").status_code == 401
    assert (
        httpx.get(f"{rig.gateway}/metrics", headers=rig.auth(roles=["participant"])).status_code
        == 403
    )
    assert (
        httpx.get(f"{rig.gateway}/metrics", headers=rig.auth(roles=["service"])).status_code == 200
    )
