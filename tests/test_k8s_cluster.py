"""The kubernetes backend against a real cluster: runs wherever one is reachable.

Needs a kubeconfig (KUBECONFIG or ~/.kube/config) whose cluster has the dask-kubernetes
operator installed, and, in the environment:

- ``INSITU_K8S_TEST_IMAGE``: the ophys example image, which the cluster can pull (e.g.
  loaded into kind), also the image of the store gateways (it holds insitu);
- ``INSITU_K8S_TEST_WORKSPACE``: an ``s3://`` prefix the jobs' gateways can write, and
  ``INSITU_STORAGE__ENDPOINT_URL`` / keys for a store both this test and the cluster reach
  (leave the endpoint unset for AWS S3).

No cluster is reachable where this project's CI runs, so these tests skip there unless
INSITU_REQUIRE names ``k8s``. See the README, "Operate on Kubernetes", for kind and EKS.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
import zarr
from pydantic import SecretStr
from zarr.storage import FsspecStore

from helpers import missing
from insitu import objectstore
from insitu.backends.base import BackendPhase, JobHandle, LaunchRequest
from insitu.backends.kubernetes_backend import KubernetesBackend, check_pods_reach
from insitu.client import Client
from insitu.config import Settings
from insitu.errors import InvalidInput
from insitu.server import BackgroundServer
from insitu.spec import Resources

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def cluster_settings(settings: Settings) -> Settings:
    """Settings for a real cluster and a store its pods reach, or a skip saying what is
    missing (a failure where INSITU_REQUIRE names k8s)."""
    try:
        from kubernetes import client, config

        config.load_kube_config()
        client.CustomObjectsApi().list_cluster_custom_object(
            "kubernetes.dask.org", "v1", "daskjobs", limit=1
        )
    except Exception as exc:
        missing("k8s", f"no Kubernetes cluster with the dask operator is reachable: {exc}")
    image = os.environ.get("INSITU_K8S_TEST_IMAGE")
    workspace = os.environ.get("INSITU_K8S_TEST_WORKSPACE", "")
    if not image or not workspace.startswith("s3://"):
        missing("k8s", "set INSITU_K8S_TEST_IMAGE and INSITU_K8S_TEST_WORKSPACE (s3://...)")
    configured = settings.model_copy(
        update={
            "backend": "kubernetes",
            "workspace_url": f"{workspace.rstrip('/')}/{uuid.uuid4().hex[:8]}",
            "storage": Settings().storage,  # the endpoint and keys from the environment
            "admin_token": SecretStr(secrets.token_urlsafe(32)),
        }
    )
    configured.kubernetes.default_image = image
    configured.kubernetes.gateway_image = image
    try:
        check_pods_reach(configured)
    except InvalidInput as exc:
        missing("k8s", str(exc))
    return configured


@pytest.fixture
def cluster_client(cluster_settings: Settings) -> Iterator[Client]:
    server = BackgroundServer(cluster_settings).start()
    token = cluster_settings.admin_token.get_secret_value()  # type: ignore[union-attr]
    try:
        with Client(server.url, token) as api:
            yield api
    finally:
        server.stop()


def _movie_in_store(settings: Settings, tmp_path: Path) -> tuple[str, np.ndarray]:
    """A small movie beside the workspace, where the jobs' gateways may read it."""
    data = np.random.default_rng(7).random((40, 32, 32), dtype=np.float32)
    url = f"{settings.resolved_workspace_url}-data/movie.zarr"
    store = FsspecStore.from_url(
        url, storage_options=objectstore.platform_options(settings, url), read_only=False
    )
    array = zarr.create_array(store, shape=data.shape, chunks=(10, 32, 32), dtype=data.dtype,
                              dimension_names=["t", "y", "x"])  # fmt: skip
    array[:] = data
    return url, data


def test_a_job_runs_on_the_cluster_and_its_log_outlives_its_pods(
    cluster_client: Client, cluster_settings: Settings, tmp_path: Path
) -> None:
    url, data = _movie_in_store(cluster_settings, tmp_path)
    cluster_client.register_dataset("k8s/movie", url)
    job = cluster_client.submit(
        {
            "dataset": "k8s/movie",
            "analysis": {"entrypoint": "ophys_analyses.projection:mean_projection"},
            "resources": {"workers": 1, "threads_per_worker": 1, "memory_per_worker": "1GiB"},
        }
    )
    done = cluster_client.wait(job["id"], timeout=800)
    assert done["state"] == "succeeded", f"{done['state']}: {done['error']}"
    np.testing.assert_allclose(
        cluster_client.result(job["id"], "mean"), data.mean(axis=0), rtol=1e-5
    )
    assert done["bytes_scanned"] > 0
    time.sleep(5)  # the operator has deleted its cluster; the log was kept before that
    log = cluster_client.log_text(job["id"])
    assert f"job {job['id']} succeeded" in log  # the runner's own last line
    assert "---- the log of" in log and "could not be read" not in log  # the workers' ends


def test_a_failing_job_fails_with_its_error(cluster_client: Client, cluster_settings: Settings,
                                            tmp_path: Path) -> None:  # fmt: skip
    url, _ = _movie_in_store(cluster_settings, tmp_path)
    cluster_client.register_dataset("k8s/broken", url)
    job = cluster_client.submit(
        {"dataset": "k8s/broken", "analysis": {"entrypoint": "ophys_analyses.projection:nothing"}}
    )
    done = cluster_client.wait(job["id"], timeout=800)
    assert done["state"] == "failed" and "nothing" in (done["error"] or ""), done


@pytest.mark.anyio
async def test_a_daskjob_starts_in_its_tenant_namespace_and_is_cancelled(
    cluster_settings: Settings,
) -> None:
    backend = KubernetesBackend(cluster_settings)
    job_id = "j-" + uuid.uuid4().hex[:12]
    request = LaunchRequest(
        job_id=job_id,
        workspace_url=f"{cluster_settings.resolved_workspace_url}/{job_id}",
        resources=Resources(workers=1, memory_per_worker=1 << 30),
        timeout_s=300,
        tenant="k8s-test",
    )
    try:
        handle = await backend.start(request)
        assert handle.data["namespace"] == "insitu-tenant-k8s-test"
        await _wait(backend, handle, {BackendPhase.RUNNING, BackendPhase.EXITED})
        await backend.cancel(handle)
        await _wait(backend, handle, {BackendPhase.MISSING})
    finally:
        await backend.close()


async def _wait(backend: KubernetesBackend, handle: JobHandle, phases: set[BackendPhase]) -> None:
    """Until the job reaches one of ``phases``; fails the test after 5 minutes."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = (await backend.status([handle]))[handle.job_id]
        if status.phase in phases:
            return
        await anyio.sleep(2)
    raise AssertionError(f"job never reached {phases}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
