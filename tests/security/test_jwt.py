"""Forged, stale and malformed bearer tokens: refused at the gateway and at every service.

Each bad token is sent to a staff endpoint of each service through the gateway and straight to
the service (which verifies again), and must be answered 401 problem+json with a
``WWW-Authenticate: Bearer ... error="invalid_token"`` challenge, whatever the claims inside
say (all of them claim role admin). The HS/RS algorithm confusion is tried against a gateway in
production mode (rs256 with a JWKS URL, :mod:`.edge`), where it would matter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest
from mesh_common.auth import mint_token
from mesh_common.auth.tokens import generate_rsa_key

from .conftest import JWT_SECRET, Mesh, assert_problem
from .edge import Edge, edge  # noqa: F401 - fixture

# One staff-only endpoint per service (path below /api/<service>).
STAFF_ENDPOINTS = {
    "booking": "/backlog",
    "course-export": "/scheduled-exports",
    "profile": "/audit",
    "portal": "/clients",
    "mailbox-invites": "/rooms",
    "schulconnex-sync": "/selection",
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any], claims: dict[str, Any], key: bytes | None, digest: Any = None
) -> str:
    """A compact JWS with any header; HMAC-signed with ``key`` (SHA-256 unless ``digest``)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    mac = hmac.new(key, signing_input.encode(), digest or hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "edumesh",
        "aud": "edumesh-api",
        "sub": "mallory",
        "iat": now,
        "exp": now + 600,
        "roles": ["admin"],
        "scope": "schulconnex.sync",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


SECRET = JWT_SECRET.encode()
HS = {"alg": "HS256", "typ": "JWT"}


def bad_tokens() -> dict[str, str]:
    now = int(time.time())
    rsa = generate_rsa_key("attacker")
    return {
        "alg none": forge({"alg": "none", "typ": "JWT"}, claims(), None),
        "alg None (case)": forge({"alg": "None"}, claims(), None),
        "alg none with the real signature": forge({"alg": "none"}, claims(), SECRET),
        "wrong key": forge(HS, claims(), b"another-secret-" + b"y" * 32),
        "HS512 with the right secret": forge({"alg": "HS512"}, claims(), SECRET, hashlib.sha512),
        "RS256 (attacker's own key)": mint_token(
            subject="mallory", private_key=rsa.private_key, roles=["admin"]
        ),
        "expired": forge(HS, claims(exp=now - 3600, iat=now - 7200), SECRET),
        "not yet valid (nbf)": forge(HS, claims(nbf=now + 3600), SECRET),
        "issued in the future (iat)": forge(HS, claims(iat=now + 3600, exp=now + 7200), SECRET),
        "wrong audience": forge(HS, claims(aud="someone-else"), SECRET),
        "delegation audience": forge(HS, claims(aud="edumesh-delegation"), SECRET),
        "wrong issuer": forge(HS, claims(iss="https://evil.example"), SECRET),
        "no exp": forge(HS, claims(exp=None), SECRET),
        "no sub": forge(HS, claims(sub=None), SECRET),
        "signature cut off": forge(HS, claims(), SECRET).rsplit(".", 1)[0] + ".",
        "claims changed after signing": _tampered(),
        "two parts": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0",
        "garbage": "not-a-token",
        "header not JSON": "bm90IGpzb24.eyJzdWIiOiJ4In0.c2ln",
        "oversized": forge(HS, claims(pad="x" * 9000), SECRET),
    }


def _tampered() -> str:
    good = forge(HS, claims(roles=["participant"]), SECRET)
    head, _, sig = good.split(".")
    return f"{head}.{b64(json.dumps(claims(roles=['admin'])).encode())}.{sig}"


BAD = bad_tokens()
MALFORMED_HEADERS = {
    "Basic scheme": "Basic YWRtaW46YWRtaW4=",
    "Bearer without token": "Bearer",
    "token without scheme": mint_token(subject="a", secret=JWT_SECRET, roles=["admin"]),
}


def _targets(mesh: Mesh) -> list[tuple[str, str]]:
    out = []
    for service, path in STAFF_ENDPOINTS.items():
        out.append((f"gateway {service}", f"{mesh.url}/api/{service}{path}"))
        out.append((f"{service} direct", f"{mesh.direct[service]}{path}"))
    return out


def _check_refused(response: httpx.Response, where: str, what: str) -> str | None:
    if response.status_code != 401:
        return f"{what} @ {where}: {response.status_code} {response.text[:150]}"
    try:
        assert_problem(response, 401)
    except AssertionError as exc:
        return f"{what} @ {where}: {exc}"
    challenge = response.headers.get("www-authenticate", "")
    if not challenge.lower().startswith("bearer"):
        return f"{what} @ {where}: challenge {challenge!r}"
    return None


@pytest.mark.parametrize("what", list(BAD))
def test_bad_token_is_refused_everywhere(mesh: Mesh, what: str) -> None:
    token = BAD[what]
    failures = []
    with httpx.Client(timeout=15) as client:
        for where, url in _targets(mesh):
            r = client.get(url, headers={"Authorization": f"Bearer {token}"})
            problem = _check_refused(r, where, what)
            if problem:
                failures.append(problem)
            elif 'error="invalid_token"' not in r.headers["www-authenticate"]:
                failures.append(f"{what} @ {where}: no invalid_token in the challenge")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("what", list(MALFORMED_HEADERS))
def test_malformed_authorization_header_is_refused(mesh: Mesh, what: str) -> None:
    failures = []
    with httpx.Client(timeout=15) as client:
        for where, url in _targets(mesh):
            r = client.get(url, headers={"Authorization": MALFORMED_HEADERS[what]})
            problem = _check_refused(r, where, what)
            if problem:
                failures.append(problem)
    assert not failures, "\n".join(failures)


def test_token_elsewhere_than_the_authorization_header_is_ignored(mesh: Mesh) -> None:
    token = mesh.token("admin")
    for url in (
        f"{mesh.url}/api/booking/backlog?access_token={token}",
        f"{mesh.direct['booking']}/backlog?access_token={token}",
    ):
        r = httpx.get(url, cookies={"access_token": token}, headers={"X-Auth-Token": token})
        assert_problem(r, 401, "token-missing")


def test_the_control_token_is_accepted(mesh: Mesh) -> None:
    """The same requests with a good token pass: the refusals above are about the token."""
    good = mesh.headers("admin", scopes=["schulconnex.sync"])
    for where, url in _targets(mesh):
        r = httpx.get(url, headers=good, timeout=15)
        assert r.status_code == 200, (where, r.status_code, r.text[:200])


def test_expired_token_says_so(mesh: Mesh) -> None:
    token = mint_token(subject="a", secret=JWT_SECRET, roles=["admin"], ttl_seconds=-120)
    r = httpx.get(f"{mesh.url}/api/booking/backlog", headers={"Authorization": f"Bearer {token}"})
    assert_problem(r, 401, "token-expired")


def test_a_forged_token_on_a_public_path_is_refused_not_ignored(mesh: Mesh) -> None:
    """The gateway verifies a token even where none is needed, so a forged credential is never
    forwarded (and never silently downgraded to anonymous)."""
    r = httpx.get(
        f"{mesh.url}/api/booking/health/live",
        headers={"Authorization": f"Bearer {BAD['wrong key']}"},
    )
    assert_problem(r, 401)
    assert httpx.get(f"{mesh.url}/api/booking/health/live").status_code == 200


# --------------------------------------------------------------------- production mode (rs256)


def test_rs256_gateway_refuses_hs_rs_confusion_and_alg_none(edge: Edge) -> None:  # noqa: F811
    public_pem = edge.key.private_key.as_pem(private=False)
    body = claims()
    forged = {
        "HS256 signed with the public key (kid)": forge(
            {"alg": "HS256", "kid": edge.key.kid}, body, public_pem
        ),
        "HS256 signed with the public key": forge({"alg": "HS256"}, body, public_pem),
        "alg none (kid)": forge({"alg": "none", "kid": edge.key.kid}, body, None),
        "RS256 by another key, same kid": mint_token(
            subject="mallory",
            private_key=generate_rsa_key(edge.key.kid).private_key,
            roles=["admin"],
        ),
        "expired": edge.token(roles=["admin"], ttl_seconds=-3600),
        "wrong audience": edge.token(roles=["admin"], audience="other-api"),
    }
    for what, token in forged.items():
        r = httpx.get(
            f"{edge.gateway}/api/echo/anything", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 401, (what, r.status_code, r.text[:200])
        assert_problem(r, 401)
    ok = httpx.get(
        f"{edge.gateway}/api/echo/anything",
        headers={"Authorization": f"Bearer {edge.token(roles=['staff'])}"},
    )
    assert ok.status_code == 200, ok.text
