"""docker-compose, Kubernetes and the Dockerfile run exactly what the process topology runs.

No Docker engine runs here, so the files are validated by their own tools (`docker-compose
config`, `kubectl kustomize`) and compared with the registry and the commands that
`make up-local` starts as plain processes (tests/e2e/test_process_topology.py runs those).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mesh_common.testing.servers import require_tool
from mesh_embedded.registry import SERVICES
from mesh_embedded.topology import gateway_command, service_command

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "POSTGRES_PASSWORD": "pg-test-pw",
    "RABBITMQ_PASSWORD": "mq-test-pw",
    "MESH_JWT_SECRET": "jwt-test-secret-jwt-test-secret-000",
    "MESH_SECRET_KEY": "test-key",
}


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = require_tool("docker-compose")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = _compose("--profile", "observability", "config", env=SECRETS)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _kustomize(path: Path) -> list[dict[str, Any]]:
    exe = require_tool("kubectl")
    result = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_compose_refuses_to_start_without_secrets() -> None:
    result = _compose("config", env={k: v for k, v in SECRETS.items() if k != "MESH_SECRET_KEY"})
    assert result.returncode != 0
    assert "MESH_SECRET_KEY" in result.stderr


def test_compose_runs_every_service_with_the_process_topology_command(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for spec in SERVICES:
        svc = services[spec.name]
        assert svc["command"] == service_command(spec.package), spec.name
        service_dir = svc["build"]["args"]["SERVICE"]
        assert f"{service_dir}_service" == spec.package
        assert (ROOT / "services" / service_dir / "pyproject.toml").exists()
        assert svc["environment"]["SERVICE_NAME"] == spec.name
        assert "healthcheck" in svc and svc["depends_on"]["rabbitmq"]["condition"] == (
            "service_healthy"
        )
    gateway = services["gateway"]
    assert gateway["command"] == gateway_command(8080, "0.0.0.0")
    upstreams = yaml.safe_load(gateway["environment"]["GATEWAY_UPSTREAMS"])
    assert set(upstreams) == {s.name for s in SERVICES}
    assert {"rabbitmq", "postgres", "mail", "clamd", "otel-collector", "jaeger"} <= set(services)
    assert services["jaeger"]["profiles"] == ["observability"]
    # Secrets are interpolated from the environment, never written in the file.
    text = (ROOT / "docker-compose.yml").read_text()
    for value in SECRETS.values():
        assert value not in text


def test_kubernetes_manifests_are_current_and_build(tmp_path: Path) -> None:
    fresh = tmp_path / "base"
    shutil.copytree(ROOT / "deploy/k8s/base", fresh)
    subprocess.run([sys.executable, str(ROOT / "deploy/k8s/generate.py"), str(fresh)], check=True)
    for path in fresh.iterdir():
        committed = ROOT / "deploy/k8s/base" / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run python deploy/k8s/generate.py"
        )

    overlay = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy/k8s", overlay)
    env_file = overlay / "overlays/production/secrets.env"
    env_file.write_text((overlay / "overlays/production/secrets.env.example").read_text())
    docs = _kustomize(overlay / "overlays/production")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == len(SERVICES) + 2  # + gateway + clamd
    assert kinds.count("Service") == len(SERVICES) + 2
    assert {"Namespace", "ConfigMap", "Secret", "Ingress", "PersistentVolumeClaim"} <= set(kinds)
    secret = next(d for d in docs if d["kind"] == "Secret")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for spec in SERVICES:
        pod = deployments[spec.name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == service_command(spec.package)
        assert {"startupProbe", "livenessProbe", "readinessProbe", "resources"} <= set(container)
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["securityContext"]["runAsNonRoot"] is True
        refs = [e.get("secretRef", {}).get("name") for e in container["envFrom"]]
        assert secret["metadata"]["name"] in refs  # the generated, hashed name
    portal = deployments["portal"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in portal["containers"][0]["env"]}
    assert env["PORTAL_PUBLIC_URL"].startswith("https://")
    assert any(v.get("persistentVolumeClaim") for v in portal["volumes"])
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["command"] == gateway_command(8000, "0.0.0.0")


def test_dockerfile_installs_locked_and_runs_the_package_as_non_root() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert "-c constraints.txt" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert "EDUMESH_PACKAGE=${SERVICE}_service" in text
    cmd = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd and 'exec python -m \\"$EDUMESH_PACKAGE\\"' in cmd.group(1)
    # The default command expands to the same argv as the topology's service_command.
    for spec in SERVICES:
        assert ["python", "-m", spec.package] == service_command(spec.package)


def test_no_committed_file_names_a_package_registry_host() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    hosts = re.compile(
        r"(pypi\.org|pythonhosted\.org|docker\.io|ghcr\.io|quay\.io|registry\.npmjs)"
    )
    offenders = [
        f
        for f in files
        if (ROOT / f).is_file()
        and f != "tests/deploy/test_deploy_files.py"
        and hosts.search((ROOT / f).read_text(errors="ignore"))
    ]
    assert offenders == []
