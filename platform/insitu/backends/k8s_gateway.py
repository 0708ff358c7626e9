"""A Kubernetes job's store gateway, as manifests: pure functions, no cluster.

Job pods hold no cloud role and no store key: their service account has no IRSA
annotation, and their network policy lets them reach only their Dask cluster, DNS and
their own store gateway. The gateway is a pod of the server's image in the server's
namespace (``python -m insitu.gateway``), under the gateway service account, whose role
(IRSA) reads datasets and writes workspaces. botocore refreshes that role's web-identity
credentials by itself, so a job is not bounded by the hour a chained role session lasts.
The gateway allows the job only its dataset and workspace, counts the bytes, and answers
the server (and only the server, by a token in a Secret) for its counts and its seal.
"""

from __future__ import annotations

from typing import Any

from insitu.backends.base import LABEL_JOB, LaunchRequest
from insitu.backends.k8s_manifests import (
    GATEWAY_COMPONENT,
    POD_LOCKDOWN,
    container_security,
    data_zone,
    gateway_name,
    gateway_selector,
    labels_of,
    tenant_namespace,
)
from insitu.config import KubernetesBackendSettings, StorageSettings

TOKEN_ENV = "INSITU_GATEWAY_TOKEN"
TOKEN_KEY = "token"
COUNTS_DIR = "/var/run/insitu"


def _command(
    request: LaunchRequest, settings: KubernetesBackendSettings, storage: StorageSettings
) -> list[str]:
    endpoint = storage.endpoint_url or f"https://s3.{storage.region}.amazonaws.com"
    command = [
        "python", "-m", "insitu.gateway",
        "--listen", f"tcp:0.0.0.0:{settings.gateway_port}",
        "--endpoint", endpoint, "--region", storage.region,
        "--counts", f"{COUNTS_DIR}/counts.json",
        "--admin-token-env", TOKEN_ENV,
    ]  # fmt: skip
    for flag, url in (("--dataset", request.dataset_url), ("--workspace", request.workspace_url)):
        if url and url.startswith("s3://"):
            command += [flag, url]
    return command


def gateway_manifests(
    request: LaunchRequest,
    *,
    settings: KubernetesBackendSettings,
    storage: StorageSettings,
    server_id: str,
    token: str,
    max_write_bytes: int,
) -> list[dict[str, Any]]:
    """The job's gateway: its token's Secret, its pod, its Service, its network policy."""
    if not settings.gateway_image:
        raise ValueError(
            "kubernetes.gateway_image is not set: jobs reach object storage only through "
            "their store gateway, a pod of the server's image (the chart sets it)"
        )
    name, namespace = gateway_name(request.job_id), settings.platform_namespace
    labels = labels_of(request, GATEWAY_COMPONENT, server_id)
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    port = settings.gateway_port
    command = [
        *_command(request, settings, storage),
        "--max-write-bytes",
        str(max_write_bytes),
        "--max-output-objects",
        str(request.max_output_objects),
    ]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": settings.gateway_service_account,
        "automountServiceAccountToken": False,  # IRSA mounts its own web-identity token
        "enableServiceLinks": False,
        "restartPolicy": "Always",
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "gateway",
                "image": settings.gateway_image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "env": [
                    {"name": "AWS_REGION", "value": storage.region},
                    {
                        "name": TOKEN_ENV,
                        "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}},
                    },
                ],
                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2},
                "resources": {
                    "requests": {"cpu": "250m", "memory": "256Mi"},
                    "limits": {"cpu": "1", "memory": "512Mi"},
                },
                "securityContext": container_security(POD_LOCKDOWN),
                "volumeMounts": [
                    {"name": "counts", "mountPath": COUNTS_DIR},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "counts", "emptyDir": {"sizeLimit": "1Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    zone = data_zone(settings, request.dataset_url)
    if zone:  # next to the data, as the job is
        pod_spec["nodeSelector"] = {settings.zone_label: zone}
    store_peers: list[dict[str, Any]] = [
        {"ipBlock": {"cidr": cidr}} for cidr in settings.store_cidrs
    ] or [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
    job_pods = {
        "namespaceSelector": {
            "matchLabels": {
                "kubernetes.io/metadata.name": tenant_namespace(settings, request.tenant)
            }
        },
        "podSelector": {"matchLabels": {LABEL_JOB: request.job_id}},
    }
    server_pods = {"podSelector": {"matchLabels": dict(settings.server_pod_labels)}}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "Opaque",
            "stringData": {TOKEN_KEY: token},
        },
        {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": "ClusterIP",
                "selector": gateway_selector(request.job_id),
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata,
            "spec": {
                "podSelector": {"matchLabels": gateway_selector(request.job_id)},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [job_pods, server_pods],
                        "ports": [{"protocol": "TCP", "port": port}],
                    }
                ],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                                },
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [
                            {"protocol": "UDP", "port": 53},
                            {"protocol": "TCP", "port": 53},
                        ],
                    },
                    {
                        "to": store_peers,
                        "ports": [{"protocol": "TCP", "port": settings.store_port}],
                    },
                    # STS, where botocore refreshes the gateway role's credentials.
                    {"ports": [{"protocol": "TCP", "port": 443}]},
                ],
            },
        },
    ]
