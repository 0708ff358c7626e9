"""The kubernetes backend against a real cluster: runs wherever one is reachable.

Needs a kubeconfig (KUBECONFIG or ~/.kube/config) whose cluster has the dask-kubernetes
operator installed, and an analysis image the cluster can pull in INSITU_K8S_TEST_IMAGE
(e.g. the ophys example image loaded into kind). No cluster is reachable where this
project's CI runs, so these tests skip there unless INSITU_REQUIRE names ``k8s``. See the
README, "Operate on Kubernetes", for kind and EKS.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from helpers import missing
from insitu.backends.base import BackendPhase, LaunchRequest
from insitu.backends.kubernetes_backend import KubernetesBackend
from insitu.config import Settings
from insitu.spec import Resources

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def cluster_backend(settings: Settings) -> KubernetesBackend:
    try:
        from kubernetes import client, config

        config.load_kube_config()
        client.CustomObjectsApi().list_cluster_custom_object(
            "kubernetes.dask.org", "v1", "daskjobs", limit=1
        )
    except Exception as exc:
        missing("k8s", f"no Kubernetes cluster with the dask operator is reachable: {exc}")
    image = os.environ.get("INSITU_K8S_TEST_IMAGE")
    if not image:
        missing("k8s", "set INSITU_K8S_TEST_IMAGE to an analysis image the cluster can pull")
    configured = settings.model_copy(update={"backend": "kubernetes"})
    configured.kubernetes.default_image = image
    return KubernetesBackend(configured)


async def _wait(backend: KubernetesBackend, handle: object, phases: set[BackendPhase]) -> object:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = (await backend.status([handle]))[handle.job_id]  # type: ignore[attr-defined]
        if status.phase in phases:
            return status
        time.sleep(2)
    raise AssertionError(f"job never reached {phases}")


@pytest.mark.anyio
async def test_a_daskjob_starts_in_its_tenant_namespace_and_is_cancelled(
    cluster_backend: KubernetesBackend,
) -> None:
    job_id = "j-" + uuid.uuid4().hex[:12]
    request = LaunchRequest(
        job_id=job_id,
        workspace_url=f"file:///tmp/{job_id}",
        resources=Resources(workers=1, memory_per_worker=1 << 30),
        timeout_s=300,
        tenant="k8s-test",
    )
    handle = await cluster_backend.start(request)
    assert handle.data["namespace"] == "insitu-tenant-k8s-test"
    status = await _wait(cluster_backend, handle, {BackendPhase.RUNNING, BackendPhase.EXITED})
    assert status is not None
    await cluster_backend.cancel(handle)
    gone = await _wait(cluster_backend, handle, {BackendPhase.MISSING})
    assert gone.phase == BackendPhase.MISSING  # type: ignore[attr-defined]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
