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


def portal_storage(dep: dict) -> list[dict]:
    """Uploads and the hotfolder live on a shared volume (ReadWriteMany: every portal replica
    and the hotfolder pull see the same files); links point at the public URL."""
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["env"] += [
        {"name": "PORTAL_PUBLIC_URL", "value": "https://edumesh.example.org/api/portal/public"},
        {"name": "PORTAL_STORAGE_DIR", "value": "/var/lib/edumesh/storage"},
        {"name": "PORTAL_HOTFOLDER_DIR", "value": "/var/lib/edumesh/hotfolder"},
    ]
    container["volumeMounts"].append({"name": "portal-data", "mountPath": "/var/lib/edumesh"})
    pod["volumes"].append(
        {"name": "portal-data", "persistentVolumeClaim": {"claimName": "portal-data"}}
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "portal-data", "labels": LABELS},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "50Gi"}},
            },
        }
    ]


def clamd() -> list[dict]:
    """clamd for the portal's upload scan (fail closed: uploads are refused while it is down)."""
    labels = {**LABELS, "app.kubernetes.io/name": "clamd"}
    tcp = {"tcpSocket": {"port": 3310}, "periodSeconds": 10, "failureThreshold": 3}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "clamd", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "clamd"}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "clamd",
                                "image": "clamav/clamav:1.4",
                                "ports": [{"name": "clamd", "containerPort": 3310}],
                                "resources": {
                                    "requests": {"cpu": "200m", "memory": "1536Mi"},
                                    "limits": {"memory": "3Gi"},
                                },
                                "startupProbe": {**tcp, "failureThreshold": 60},
                                "readinessProbe": tcp,
                                "livenessProbe": tcp,
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "clamd", "labels": labels},
            "spec": {
                "selector": {"app.kubernetes.io/name": "clamd"},
                "ports": [{"name": "clamd", "port": 3310, "targetPort": "clamd"}],
            },
        },
    ]


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
        dep = deployment(spec.name, service_command(spec.package), PORT, env)
        docs = [dep]
        if spec.name == "portal":
            docs += portal_storage(dep)
        files[f"{spec.name}.yaml"] = [*docs, service(spec.name, PORT)]
    files["clamd.yaml"] = clamd()
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
                "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "520m"},
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
