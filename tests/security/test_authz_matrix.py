"""The authorisation matrix: every operation x every kind of caller, through the gateway and
directly at the service (defence in depth: a service reachable without the gateway refuses the
same callers).

The expected answer of each cell comes from :mod:`.policy`. The matrix checks the auth layer:
an allowed caller gets anything but 401/403 (usually 404 or 422 for the placeholder ids and the
missing body; never a 5xx), a refused caller gets 401 problem+json (no token: ``token-missing``
with a ``WWW-Authenticate: Bearer`` challenge) or 403 problem+json. Requests carry no body and
placeholder ids, so an allowed call cannot change anything real. Which participant's data comes
back is :mod:`.test_own_data`'s part.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from . import policy
from .conftest import Mesh
from .policy import POLICY, Rule

METHODS = ("get", "post", "put", "patch", "delete")
PLACEHOLDER_INT = 999_999
PLACEHOLDER_STR = "sec-matrix-none"

# Endpoints the OpenAPI document does not list but which are reachable through the gateway.
EXTRA: dict[str, Rule] = {
    "GET /metrics": policy.STAFF_OR_SERVICE,
    **{
        f"GET /api/{svc}/metrics": policy.STAFF_OR_SERVICE
        for svc in (
            "booking",
            "course-export",
            "profile",
            "portal",
            "mailbox-invites",
            "schulconnex-sync",
        )
    },
}
# At the service itself (private network, no gateway in front): the probes and /health/about
# need no token (what the gateway lets through anonymously is decided at the gateway), and
# /metrics is for the Prometheus scraper.
DIRECT_PUBLIC = re.compile(r"^GET /api/[^/]+/(health/(live|ready|about)|metrics)$")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # template, e.g. /api/booking/orders/{external_order_id}
    params: dict[str, dict[str, Any]]  # path parameter -> schema

    @property
    def key(self) -> str:
        return f"{self.method.upper()} {self.path}"

    def url_path(self) -> str:
        def value(match: re.Match[str]) -> str:
            schema = self.params.get(match.group(1), {})
            if schema.get("enum"):
                return str(schema["enum"][0])
            if schema.get("type") == "integer":
                return str(PLACEHOLDER_INT)
            return PLACEHOLDER_STR

        return re.sub(r"\{([^}]+)\}", value, self.path)


def operations(document: dict[str, Any]) -> list[Operation]:
    schemas = document.get("components", {}).get("schemas", {})

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if ref:
            return dict(schemas.get(ref.rsplit("/", 1)[-1], {}))
        for alt in schema.get("anyOf", []) + schema.get("allOf", []):
            if "$ref" in alt or alt.get("enum") or alt.get("type") not in (None, "null"):
                return resolve(alt)
        return schema

    out = []
    for path, item in document["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            params = {
                p["name"]: resolve(p.get("schema", {}))
                for p in op.get("parameters", []) + item.get("parameters", [])
                if p.get("in") == "path"
            }
            out.append(Operation(method, path, params))
    return out


def principal_headers(mesh: Mesh, participants: tuple[int, int]) -> dict[str, dict[str, str]]:
    p1, p2 = participants
    sync = ["schulconnex.sync"]
    return {
        policy.ANONYMOUS: {},
        policy.PARTICIPANT: mesh.headers(
            "participant", sub=f"participant-{p1}", participant_id=str(p1)
        ),
        policy.OTHER_PARTICIPANT: mesh.headers(
            "participant", sub=f"participant-{p2}", participant_id=str(p2)
        ),
        policy.STAFF: mesh.headers("staff", sub="matrix-staff"),
        policy.ADMIN: mesh.headers("admin", sub="matrix-admin"),
        policy.SERVICE: mesh.headers("service", sub="website-backend"),
        policy.STAFF_SYNC: mesh.headers("staff", sub="matrix-staff-sync", scopes=sync),
        policy.SERVICE_SYNC: mesh.headers("service", sub="matrix-sync-client", scopes=sync),
    }


@pytest.fixture(scope="module")
def participants(mesh: Mesh) -> tuple[int, int]:
    rows = mesh.coursedb("SELECT id FROM participants ORDER BY id LIMIT 2")
    assert len(rows) == 2
    return int(str(rows[0][0])), int(str(rows[1][0]))


def _verdict(response: httpx.Response, principal: str, rule: Rule, *, direct: bool) -> str | None:
    status = response.status_code
    allowed = principal in rule.allowed
    if status >= 500:
        return f"{status} (server error): {response.text[:160]}"
    if rule.customer:
        if status != 401:
            return f"expected 401 not-signed-in (customer session needed), got {status}"
        allowed = False
    elif allowed:
        if status in (401, 403):
            return f"expected to pass the auth layer, got {status}: {response.text[:160]}"
        return None
    elif principal == policy.ANONYMOUS:
        if status != 401:
            return f"expected 401, got {status}"
        if (
            not rule.customer
            and "bearer" not in response.headers.get("www-authenticate", "").lower()
        ):
            return "401 without a WWW-Authenticate: Bearer challenge"
    elif status != 403:
        return f"expected 403, got {status}"
    ctype = response.headers.get("content-type", "")
    if not ctype.startswith("application/problem+json"):
        return f"{status} is not problem+json ({ctype})"
    body = response.json()
    if body.get("status") != status or not body.get("code"):
        return f"not a problem document: {body}"
    if rule.customer and body.get("code") != "not-signed-in":
        return f"expected code not-signed-in, got {body.get('code')}"
    return None


async def _run(
    base: str,
    cells: list[tuple[Operation, str, Rule, str]],
    headers: dict[str, dict[str, str]],
    *,
    direct: bool,
) -> list[str]:
    failures: list[str] = []
    limit = asyncio.Semaphore(6)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(op: Operation, principal: str, rule: Rule, url: str) -> None:
            async with limit:
                response = await client.request(op.method.upper(), url, headers=headers[principal])
            problem = _verdict(response, principal, rule, direct=direct)
            if problem:
                where = "direct" if direct else "gateway"
                failures.append(f"[{where}] {op.key} as {principal}: {problem}")

        await asyncio.gather(*(one(*cell) for cell in cells))
    return sorted(failures)


def test_every_operation_is_classified(openapi: dict[str, Any]) -> None:
    keys = {op.key for op in operations(openapi)}
    unclassified = sorted(keys - POLICY.keys())
    stale = sorted(POLICY.keys() - keys)
    assert not unclassified, (
        "operations without an authorisation policy (add them to tests/security/policy.py):\n"
        + "\n".join(unclassified)
    )
    assert not stale, "policy entries for operations that no longer exist:\n" + "\n".join(stale)
    assert len(keys) > 150  # the whole mesh, not a partial document


def test_matrix_through_the_gateway(
    mesh: Mesh, openapi: dict[str, Any], participants: tuple[int, int]
) -> None:
    headers = principal_headers(mesh, participants)
    ops = [op for op in operations(openapi) if op.key in POLICY]
    ops += [Operation(k.split()[0].lower(), k.split()[1], {}) for k in EXTRA]
    rules = {**POLICY, **EXTRA}
    cells = [
        (op, principal, rules[op.key], op.url_path())
        for op in ops
        for principal in policy.ALL_PRINCIPALS
    ]
    failures = asyncio.run(_run(mesh.url, cells, headers, direct=False))
    assert len(cells) > 1500
    assert not failures, f"{len(failures)} of {len(cells)} cells wrong:\n" + "\n".join(failures)


def test_matrix_directly_at_the_services(
    mesh: Mesh, openapi: dict[str, Any], participants: tuple[int, int]
) -> None:
    """The same callers straight at each service's own port: a service trusts nothing the
    gateway decided (it verifies the token and the role again). The callers that must be
    refused somewhere (admin passes everywhere and ``other_participant`` is a participant at
    this layer; both are covered through the gateway), the scoped ones only where scopes
    matter."""
    headers = principal_headers(mesh, participants)
    ops = [op for op in operations(openapi) if op.key in POLICY and op.path.startswith("/api/")]
    ops += [Operation("get", k.split()[1], {}) for k in EXTRA if k.startswith("GET /api/")]
    rules = {**POLICY, **EXTRA}
    cells = []
    for op in ops:
        service, _, rest = op.path[len("/api/") :].partition("/")
        rule = policy.PUBLIC if DIRECT_PUBLIC.match(op.key) else rules[op.key]
        url = mesh.direct[service] + "/" + Operation(op.method, rest, op.params).url_path()
        principals = [policy.ANONYMOUS, policy.PARTICIPANT, policy.STAFF, policy.SERVICE]
        if service == "schulconnex-sync":
            principals += [policy.STAFF_SYNC, policy.SERVICE_SYNC, policy.ADMIN]
        cells += [(op, principal, rule, url) for principal in principals]
    failures = asyncio.run(_run(mesh.url, cells, headers, direct=True))
    assert len(cells) > 700
    assert not failures, f"{len(failures)} of {len(cells)} cells wrong:\n" + "\n".join(failures)
