"""mesh-token CLI: minting HS256/RS256 tokens and generating a dev JWKS."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mesh_common.auth import AuthSettings, TokenVerifier
from mesh_common.auth.cli import main


async def test_mint_hs256_from_env(monkeypatch, capsys, secret: str) -> None:
    monkeypatch.setenv("MESH_JWT_SECRET", secret)
    code = main(["--sub", "alice", "--role", "admin", "--scope", "booking:write", "--ttl", "60"])
    assert code == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert secret not in out.out + out.err
    principal = await TokenVerifier(AuthSettings(hs256_secret=secret)).verify(token)
    assert principal.subject == "alice"
    assert principal.roles == {"admin"} and principal.scopes == {"booking:write"}
    assert int(principal.claims["exp"]) - int(principal.claims["iat"]) == 60


def test_missing_secret_is_an_error(monkeypatch, capsys) -> None:
    monkeypatch.delenv("MESH_JWT_SECRET", raising=False)
    assert main(["--sub", "alice"]) == 2
    assert "MESH_JWT_SECRET" in capsys.readouterr().err


def test_short_secret_is_an_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("MESH_JWT_SECRET", "short")
    assert main(["--sub", "alice"]) == 2
    assert "at least 32 bytes" in capsys.readouterr().err


async def test_gen_rsa_jwks_and_mint_rs256(tmp_path: Path, capsys, jwks_server) -> None:
    assert main(["--gen-rsa-jwks", str(tmp_path), "--kid", "dev-1"]) == 0
    assert capsys.readouterr().out.strip() == "dev-1"
    pem = tmp_path / "private.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    jwks = json.loads((tmp_path / "jwks.json").read_text())
    (public,) = jwks["keys"]
    assert public["kid"] == "dev-1" and public["kty"] == "RSA"
    assert "d" not in public and "p" not in public  # no private material published

    assert main(["--sub", "svc", "--role", "service", "--rsa-key", str(pem), "--kid", "dev-1"]) == 0
    token = capsys.readouterr().out.strip()
    jwks_server.document = jwks
    verifier = TokenVerifier(AuthSettings(mode="rs256", jwks_url=jwks_server.url))
    try:
        assert (await verifier.verify(token)).roles == {"service"}
    finally:
        await verifier.aclose()


@pytest.mark.skipif(not Path(sys.executable).with_name("mesh-token").exists(), reason="no script")
def test_entry_point_installed(secret: str) -> None:
    exe = Path(sys.executable).with_name("mesh-token")
    env = {**os.environ, "MESH_JWT_SECRET": secret}
    done = subprocess.run(
        [str(exe), "--sub", "bob"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2
