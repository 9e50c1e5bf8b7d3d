"""Property-based API testing of the whole mesh through the gateway's aggregated OpenAPI.

schemathesis generates requests for every documented operation (valid and invalid ones) with an
admin token: no response may be a 5xx, and every error must be RFC 9457 problem+json. All
operations run; the failures are reported together.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.openapi import from_url

from .conftest import Mesh


def _check(case: schemathesis.Case, mesh: Mesh) -> str | None:
    response = case.call(base_url=mesh.url, headers=mesh.headers("admin"), timeout=30)
    where = f"{case.method} {case.formatted_path}"
    if response.status_code >= 500:
        return f"{where} -> {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        ctype = response.headers.get("content-type", [""])
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        if not ctype.startswith("application/problem+json"):
            return f"{where} -> {response.status_code} {ctype}: {response.text[:200]}"
        body = response.json()
        if body.get("status") != response.status_code or not body.get("title"):
            return f"{where} -> {response.status_code}: not a problem document: {body}"
    return None


@pytest.mark.timeout(900)  # ~200 operations x 5 cases, one after another: minutes on 2 cores
def test_no_server_errors_and_errors_are_problem_json(mesh: Mesh) -> None:
    schema = from_url(f"{mesh.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=5,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            problem = _check(case, mesh)
            if problem and problem not in failures:
                failures.append(problem)

        run()
    assert operations > 20
    assert not failures, f"{len(failures)} failing responses:\n" + "\n".join(failures[:40])
