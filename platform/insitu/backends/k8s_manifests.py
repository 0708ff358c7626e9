"""Kubernetes manifests of the kubernetes backend, as plain dicts: pure functions, no cluster.

One ``DaskJob`` (``kubernetes.dask.org/v1``, the dask-kubernetes operator) per job: its
runner pod runs ``python -m insitu.runtime`` against the job's ``DaskCluster``, whose
scheduler and workers come from the job's image with the spec's resources. Every pod is
pinned to the data's zone, runs as a non-root user with a read-only root filesystem, has
no Kubernetes API token, and is limited by a per-job ``NetworkPolicy`` to its own Dask
cluster, DNS and its store gateway (:mod:`insitu.backends.k8s_gateway`). Tenants get a
namespace each, with a ``ResourceQuota``, a ``LimitRange``, a default-deny policy and the
job service account, which has no cloud role: jobs hold no credential of any kind.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from insitu.backends.base import LABEL_COMPONENT, LABEL_JOB, LaunchRequest
from insitu.backends.cluster_plan import (
    DASHBOARD_PORT,
    OPERATOR,
    RUN_AS,
    RUNNER_WAIT_MARGIN_S,
    SCHEDULER_PORT,
    TMP,
    ClusterPlan,
    Lockdown,
    Process,
    plan_cluster,
)
from insitu.config import KubernetesBackendSettings
from insitu.spec import Resources
from insitu.units import format_size

LABEL_SERVER = "insitu.io/server"
LABEL_TENANT = "insitu.io/tenant"
DASK_GROUP, DASK_VERSION, DASKJOB_PLURAL = "kubernetes.dask.org", "v1", "daskjobs"
SPOT_TAINT = ("insitu.io/spot", "true")
GPU_RESOURCE = "nvidia.com/gpu"


GATEWAY_COMPONENT = "store-gateway"
#: what every pod insitu makes is denied (a job's, and its store gateway's)
POD_LOCKDOWN = Lockdown(uid=RUN_AS, gid=RUN_AS, tmp_bytes=1 << 30)


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a DNS-1123 label: lower case, digits and '-', at most ``limit`` long."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (label[:limit].rstrip("-")) or "x"


def tenant_namespace(settings: KubernetesBackendSettings, tenant: str) -> str:
    """The namespace of a tenant's jobs."""
    return dns_label(settings.namespace_prefix + tenant)


def job_name(job_id: str) -> str:
    """The DaskJob's name (also its DaskCluster's, and the prefix of its pods)."""
    return dns_label(job_id, 40)


def gateway_name(job_id: str) -> str:
    """Name of the job's store gateway pod, Service, Secret and policy."""
    return dns_label(f"{job_name(job_id)}-gateway")


def gateway_selector(job_id: str) -> dict[str, str]:
    """Labels of the job's store gateway pod."""
    return {LABEL_JOB: job_id, LABEL_COMPONENT: GATEWAY_COMPONENT}


def gateway_endpoint(settings: KubernetesBackendSettings, job_id: str) -> str:
    """Where the job's pods find their store: their gateway's Service."""
    host = f"{gateway_name(job_id)}.{settings.platform_namespace}.svc"
    return f"http://{host}:{settings.gateway_port}"


def labels_of(request: LaunchRequest, component: str, server_id: str) -> dict[str, str]:
    return {
        LABEL_JOB: request.job_id,
        LABEL_COMPONENT: component,
        LABEL_SERVER: server_id,
        LABEL_TENANT: dns_label(request.tenant),
        "app.kubernetes.io/managed-by": "insitu",
    }


def data_zone(settings: KubernetesBackendSettings, dataset_url: str | None) -> str | None:
    """The zone a job's pods go to: its dataset's bucket's, else the default data zone."""
    bucket = urlsplit(dataset_url or "").netloc
    return settings.bucket_zones.get(bucket) or settings.data_zone


def container_security(lockdown: Lockdown) -> dict[str, Any]:
    """The plan's lockdown as a container's securityContext."""
    return {
        "runAsNonRoot": True,
        "runAsUser": lockdown.uid,
        "runAsGroup": lockdown.gid,
        "readOnlyRootFilesystem": lockdown.read_only_root,
        "allowPrivilegeEscalation": not lockdown.no_new_privileges,
        "capabilities": {"drop": list(lockdown.drop_capabilities)},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity, in Gi or Mi where they divide it."""
    for unit, shift in (("Gi", 30), ("Mi", 20)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(values.items())]


def _pod_spec(
    settings: KubernetesBackendSettings,
    request: LaunchRequest,
    container: dict[str, Any],
    *,
    lockdown: Lockdown,
    spot: bool,
    gpu: int = 0,
) -> dict[str, Any]:
    """A pod spec with insitu's placement and lockdown around one container."""
    container = {
        "imagePullPolicy": "IfNotPresent",
        "securityContext": container_security(lockdown),
        "volumeMounts": [{"name": "tmp", "mountPath": TMP}],
        **container,
    }
    spec: dict[str, Any] = {
        "serviceAccountName": settings.job_service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": lockdown.uid,
            "fsGroup": lockdown.gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": quantity(lockdown.tmp_bytes)}}],
    }
    zone = data_zone(settings, request.dataset_url)
    if zone:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": settings.zone_label, "operator": "In", "values": [zone]}
                            ]
                        }
                    ]
                }
            }
        }
    if spot and settings.worker_node_selector:
        spec["nodeSelector"] = dict(settings.worker_node_selector)
    tolerations = []
    if spot and settings.spot_toleration:
        key, value = SPOT_TAINT
        tolerations.append(
            {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}
        )
    if gpu:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def _resources(process: Process) -> dict[str, Any]:
    """A container's requests and limits: equal, so its pod is Guaranteed its share."""
    wanted: dict[str, Any] = {"cpu": f"{process.cpus:g}", "memory": quantity(process.memory)}
    if process.gpu:
        wanted[GPU_RESOURCE] = str(process.gpu)
    return {"requests": dict(wanted), "limits": dict(wanted)}


def _container(process: Process, image: str) -> dict[str, Any]:
    """One process of the plan as a container."""
    container: dict[str, Any] = {
        "name": process.component,
        "image": image,
        "args": list(process.argv),
        "env": _env(dict(process.env)),
        "resources": _resources(process),
    }
    if process.component == "scheduler":
        container["ports"] = [
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        ]
    return container


def cluster_of(
    request: LaunchRequest,
    *,
    settings: KubernetesBackendSettings,
    runner_env: dict[str, str] | None = None,
) -> ClusterPlan:
    """The job's cluster as pods that the dask-kubernetes operator wires together."""
    from kubernetes.utils import parse_quantity

    return plan_cluster(
        request,
        OPERATOR,
        scheduler_memory=int(parse_quantity(settings.scheduler_memory)),
        runner_memory=int(parse_quantity(settings.runner_memory)),
        wait_timeout_s=settings.pending_timeout + RUNNER_WAIT_MARGIN_S,
        lockdown=POD_LOCKDOWN,
        runner_env=runner_env,
    )


def daskjob(
    request: LaunchRequest,
    *,
    image: str,
    settings: KubernetesBackendSettings,
    server_id: str,
    runner_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The job's ``DaskJob``: its cluster (:func:`cluster_of`) rendered as the runner pod,
    the scheduler and the workers, from the job's image."""
    name = job_name(request.job_id)
    cluster = cluster_of(request, settings=settings, runner_env=runner_env)
    lockdown = cluster.lockdown
    runner = _pod_spec(
        settings, request, _container(cluster.runner, image), lockdown=lockdown, spot=False
    )
    runner["restartPolicy"] = "Never"
    runner["activeDeadlineSeconds"] = int(cluster.deadline_s)
    scheduler = _pod_spec(
        settings, request, _container(cluster.scheduler, image), lockdown=lockdown, spot=False
    )
    worker = _pod_spec(
        settings,
        request,
        _container(cluster.worker, image),
        lockdown=lockdown,
        spot=True,
        gpu=cluster.worker.gpu,
    )
    return {
        "apiVersion": f"{DASK_GROUP}/{DASK_VERSION}",
        "kind": "DaskJob",
        "metadata": {
            "name": name,
            "namespace": tenant_namespace(settings, request.tenant),
            "labels": labels_of(request, "daskjob", server_id),
        },
        "spec": {
            "job": {
                "metadata": {"labels": labels_of(request, "runner", server_id)},
                "spec": runner,
            },
            "cluster": {
                "spec": {
                    "idleTimeout": 0,
                    "scheduler": {
                        "metadata": {"labels": labels_of(request, "scheduler", server_id)},
                        "spec": scheduler,
                        "service": {
                            "type": "ClusterIP",
                            "selector": {
                                "dask.org/cluster-name": name,
                                "dask.org/component": "scheduler",
                            },
                            "ports": [
                                {
                                    "name": "tcp-comm",
                                    "protocol": "TCP",
                                    "port": SCHEDULER_PORT,
                                    "targetPort": "tcp-comm",
                                },
                                {
                                    "name": "http-dashboard",
                                    "protocol": "TCP",
                                    "port": DASHBOARD_PORT,
                                    "targetPort": "http-dashboard",
                                },
                            ],
                        },
                    },
                    "worker": {
                        "replicas": cluster.workers,
                        "metadata": {"labels": labels_of(request, "worker", server_id)},
                        "spec": worker,
                    },
                }
            },
        },
    }


def job_network_policy(
    request: LaunchRequest, *, settings: KubernetesBackendSettings, server_id: str
) -> dict[str, Any]:
    """The job's pods reach each other, DNS and their store gateway; only the operator
    reaches in. No rule leads to the object store itself, or anywhere else."""
    own = {"podSelector": {"matchLabels": {LABEL_JOB: request.job_id}}}
    gateway = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": settings.platform_namespace}
                },
                "podSelector": {"matchLabels": gateway_selector(request.job_id)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": settings.gateway_port}],
    }
    operator = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}
        }
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{job_name(request.job_id)}-network",
            "namespace": tenant_namespace(settings, request.tenant),
            "labels": labels_of(request, "network-policy", server_id),
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB: request.job_id}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [own, operator]}],
            "egress": [
                {"to": [own]},
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                            },
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                gateway,
            ],
        },
    }


def quota_problems(res: Resources, settings: KubernetesBackendSettings) -> list[str]:
    """Why a job of ``res`` could never run under one tenant's quota (nothing if it can).

    Kubernetes refuses a pod over its namespace's quota or limits without ever creating it,
    so such a job would wait with no reason given: it is refused at submit instead, naming
    the setting that bounds it.
    """
    from kubernetes.utils import parse_quantity

    quota = settings.quota
    memory = (
        res.workers * int(res.memory_per_worker)
        + int(parse_quantity(settings.runner_memory))
        + int(parse_quantity(settings.scheduler_memory))
    )
    # (what, needed, its display, the quota, its setting)
    checks: list[tuple[str, float, str, str, str]] = [
        ("CPU of one worker (threads_per_worker)", res.threads_per_worker,
         str(res.threads_per_worker), quota.container_cpu, "CONTAINER_CPU"),
        ("memory of one worker", int(res.memory_per_worker),
         format_size(res.memory_per_worker), quota.container_memory, "CONTAINER_MEMORY"),
        ("CPU of the job (workers x threads, and 1 each for its runner and scheduler)",
         res.cores + 2, str(res.cores + 2), quota.cpu, "CPU"),
        ("memory of the job (its workers, runner and scheduler)", memory,
         format_size(memory), quota.memory, "MEMORY"),
        ("pods of the job (its workers, runner and scheduler)", res.workers + 2,
         str(res.workers + 2), str(quota.pods), "PODS"),
        ("GPUs of the job (workers x gpu)", res.workers * res.gpu,
         str(res.workers * res.gpu), str(quota.gpus), "GPUS"),
    ]  # fmt: skip
    return [
        f"the {what}, {shown}, exceeds the tenant quota of {limit} "
        f"(INSITU_KUBERNETES__QUOTA__{setting})"
        for what, needed, shown, limit, setting in checks
        if needed > parse_quantity(limit)
    ]


def tenant_manifests(
    settings: KubernetesBackendSettings, tenant: str, server_id: str
) -> list[dict[str, Any]]:
    """A tenant's namespace and what bounds it: quota, limits, default-deny, job account."""
    namespace = tenant_namespace(settings, tenant)
    quota = settings.quota
    labels = {
        LABEL_TENANT: dns_label(tenant),
        LABEL_SERVER: server_id,
        "app.kubernetes.io/managed-by": "insitu",
    }
    hard: dict[str, str] = {
        "requests.cpu": quota.cpu,
        "limits.cpu": quota.cpu,
        "requests.memory": quota.memory,
        "limits.memory": quota.memory,
        "pods": str(quota.pods),
        f"count/{DASKJOB_PLURAL}.{DASK_GROUP}": str(quota.jobs),
        f"requests.{GPU_RESOURCE}": str(quota.gpus),
    }
    account: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": settings.job_service_account,
            "namespace": namespace,
            "labels": labels,
        },
        "automountServiceAccountToken": False,
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels},
        },
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "insitu-quota", "namespace": namespace, "labels": labels},
            "spec": {"hard": hard},
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "insitu-limits", "namespace": namespace, "labels": labels},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "1", "memory": "2Gi"},
                        "defaultRequest": {"cpu": "1", "memory": "2Gi"},
                        "max": {"cpu": quota.container_cpu, "memory": quota.container_memory},
                    }
                ]
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": namespace, "labels": labels},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        account,
    ]
