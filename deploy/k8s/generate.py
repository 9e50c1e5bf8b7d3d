"""Generates deploy/k8s/base/ from the service registry, so the manifests cannot drift from the
code: one Deployment + Service per service, the gateway with its Ingress, shared ConfigMap and
Secret. Run `python deploy/k8s/generate.py` after adding a service; tests/deploy checks the files
are current and that `kubectl kustomize` builds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BASE = HERE / "base"
sys.path.insert(0, str(HERE.parents[1] / "libs" / "mesh_embedded" / "src"))

from mesh_embedded.registry import SERVICES  # noqa: E402
from mesh_embedded.topology import gateway_command, service_command  # noqa: E402

LABELS = {"app.kubernetes.io/part-of": "edumesh"}
PORT = 8000
SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def probe(path: str, port: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def deployment(name: str, command: list[str], port: int, env: list[dict[str, Any]]) -> dict:
    labels = {**LABELS, "app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # SIGTERM → the process drains (shutdown_grace_seconds=20) well within this.
                    "terminationGracePeriodSeconds": 30,
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": name,
                            "image": f"edumesh/{name}:dev",
                            "imagePullPolicy": "IfNotPresent",
                            "command": command,
                            "ports": [{"name": "http", "containerPort": port}],
                            "envFrom": [
                                {"configMapRef": {"name": "edumesh-config"}},
                                {"secretRef": {"name": "edumesh-secrets"}},
                            ],
                            "env": env,
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "192Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                            "startupProbe": probe("/health/live", port, 2, 30),
                            "livenessProbe": probe("/health/live", port, 10, 3),
                            "readinessProbe": probe(
                                "/health/ready" if name != "gateway" else "/health/live",
                                port,
                                5,
                                2,
                            ),
                            "securityContext": SECURITY,
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(name: str, port: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {**LABELS, "app.kubernetes.io/name": name}},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def main(out: Path = BASE) -> None:
    out.mkdir(exist_ok=True)
    files: dict[str, list[dict]] = {}
    for spec in SERVICES:
        env = [{"name": "SERVICE_NAME", "value": spec.name}]
        files[f"{spec.name}.yaml"] = [
            deployment(spec.name, service_command(spec.package), PORT, env),
            service(spec.name, PORT),
        ]
    upstreams = {s.name: f"http://{s.name}" for s in SERVICES}
    gw_env = [
        {"name": "GATEWAY_UPSTREAMS", "value": json.dumps(upstreams)},
        {"name": "GATEWAY_AUTH__MODE", "value": "hs256"},
        {
            "name": "GATEWAY_AUTH__HS256_SECRET",
            "valueFrom": {"secretKeyRef": {"name": "edumesh-secrets", "key": "MESH_JWT_SECRET"}},
        },
    ]
    files["gateway.yaml"] = [
        deployment("gateway", gateway_command(PORT, "0.0.0.0"), PORT, gw_env),
        service("gateway", PORT),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": "edumesh",
                "labels": LABELS,
                "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "110m"},
            },
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": ["edumesh.example.org"], "secretName": "edumesh-tls"}],
                "rules": [
                    {
                        "host": "edumesh.example.org",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {"name": "gateway", "port": {"number": 80}}
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
        },
    ]
    header = "# Generated by deploy/k8s/generate.py from the service registry. Do not edit.\n"
    for name, docs in files.items():
        body = "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
        (out / name).write_text(header + body)
    resources = ["namespace.yaml", "config.yaml", *files]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "edumesh",
        "labels": [{"pairs": LABELS, "includeSelectors": False}],
        "resources": resources,
    }
    (out / "kustomization.yaml").write_text(header + yaml.safe_dump(kustomization, sort_keys=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else BASE)
