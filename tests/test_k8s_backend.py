"""The kubernetes backend against a Kubernetes API that answers with recorded responses.

Submit (tenant namespace and its bounds, the job's policy and DaskJob), the mapping of
DaskJob and pod states to a job's phase with actionable reasons, logs, cancel, and
reconciliation after an API restart. No cluster is reachable here; ``test_k8s_cluster.py``
runs the same backend against a real one (marker ``k8s``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from botocore.credentials import Credentials

from insitu.backends.base import BackendPhase, JobHandle, LaunchRequest
from insitu.backends.k8s_manifests import LABEL_SERVER
from insitu.backends.kubernetes_backend import KubernetesBackend
from insitu.config import KubernetesBackendSettings, Settings
from insitu.errors import BackendError
from insitu.gateway.policy import Policy, Prefix
from insitu.gateway.server import Gateway, Upstream
from insitu.spec import Resources
from k8s_fake_api import DATA, FakeCluster, api_client, daskjob_status, fake_cluster, pods
from test_gateway import Running
from test_k8s_manifests import operator_crd

pytestmark = pytest.mark.anyio
JOB = "j-0123456789ab"
NAMESPACE = "insitu-tenant-ada"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with fake_cluster(operator_crd("daskjob")) as fake:
        yield fake


@pytest.fixture
def k8s_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "backend": "kubernetes",
            "kubernetes": KubernetesBackendSettings(
                data_zone="eu-central-1a",
                pending_timeout=300.0,
                gateway_image="registry.example.org/insitu:0.1",
            ),
        }
    )


@pytest.fixture
async def backend(k8s_settings: Settings, cluster: FakeCluster) -> AsyncIterator[KubernetesBackend]:
    made = KubernetesBackend(k8s_settings, api_client=api_client(cluster.url))
    yield made
    await made.close()  # its watches end with the test


def _request(**overrides: Any) -> LaunchRequest:
    values: dict[str, Any] = {
        "job_id": JOB,
        "workspace_url": f"s3://insitu-results/jobs/{JOB}",
        "dataset_url": "s3://insitu-data/datasets/m1.zarr",
        "resources": Resources(workers=2),
        "timeout_s": 600.0,
        "image": "registry.example.org/lab/ophys:1.2",
        "tenant": "ada",
        "env": {"AWS_ACCESS_KEY_ID": "ASIA-session"},
    }
    values.update(overrides)
    return LaunchRequest(**values)


async def test_start_provisions_the_tenant_then_the_job(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    handle = await backend.start(_request())
    assert handle.data["namespace"] == NAMESPACE and handle.data["name"] == JOB
    made = [(m, path) for m, path in cluster.requests if m in ("POST", "PATCH")]
    # The tenant's objects are applied (server-side apply, named by the URL), then the job's
    # are created.
    assert [(m, path.split("?")[0].split("/")[-2]) for m, path in made[:5]] == [
        ("PATCH", "namespaces"),
        ("PATCH", "resourcequotas"),
        ("PATCH", "limitranges"),
        ("PATCH", "networkpolicies"),
        ("PATCH", "serviceaccounts"),
    ]
    assert all("fieldManager=insitu" in p and "force=true" in p.lower() for _, p in made[:5])
    posted = [path for m, path in made[5:]]
    assert [m for m, _ in made[5:]] == ["POST"] * len(posted)
    assert [path.split("/")[-1] for path in posted] == [
        "secrets",  # the job's store gateway, in the server's namespace
        "pods",
        "services",
        "networkpolicies",
        "networkpolicies",  # the job's own policy and DaskJob
        "daskjobs",
    ]
    assert all("/namespaces/insitu/" in path for path in posted[:4])
    assert handle.data["gateway"] == f"{JOB}-gateway" and handle.data["gateway_token"]
    (job,) = cluster.created("daskjobs")
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] == 2
    # A second job of the same tenant reuses its namespace; a restarted server that starts
    # the same job again adopts the existing DaskJob (409) instead of failing.
    again = KubernetesBackend(backend.settings, api_client=api_client(cluster.url))
    assert (await again.start(_request())).data == handle.data
    assert len(cluster.created("daskjobs")) == 1


async def test_a_changed_tenant_quota_reaches_a_namespace_made_before(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    """Creates that ignore "already exists" would keep the first quota forever."""
    backend.ensure_tenant("Ada Lovelace")
    (quota,) = cluster.created("resourcequotas")
    assert quota["spec"]["hard"]["requests.cpu"] == "16"
    uid = quota["metadata"]["uid"]
    settings = backend.settings.model_copy(deep=True)
    settings.kubernetes.quota.cpu, settings.kubernetes.quota.gpus = "48", 2
    settings.kubernetes.quota.container_memory = "32Gi"
    restarted = KubernetesBackend(settings, api_client=api_client(cluster.url))
    restarted.ensure_tenant("Ada Lovelace")
    (quota,) = cluster.created("resourcequotas")
    assert quota["metadata"]["uid"] == uid  # the same object, brought to the new settings
    assert quota["spec"]["hard"]["requests.cpu"] == "48"
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "2"
    (limits,) = cluster.created("limitranges")
    assert limits["spec"]["limits"][0]["max"]["memory"] == "32Gi"


async def test_the_server_alone_seals_the_gateway_and_reads_its_counts(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    """Through the API server's service proxy, with the token of the gateway's Secret."""
    handle = await backend.start(_request())
    (secret,) = cluster.created("secrets")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert token == handle.data["gateway_token"]
    policy = Policy(Prefix.of(_request().dataset_url or ""), Prefix.of(_request().workspace_url))
    gateway = Gateway(
        policy,
        Upstream("http://127.0.0.1:9", "us-east-1"),
        lambda: Credentials("k", "s"),
        admin_token=token,
    )
    running = Running(gateway)
    try:
        cluster.services[("insitu", f"{JOB}-gateway")] = running.endpoint
        gateway.counts.scanned = 123_456  # as if the job had read that much of its dataset
        await backend.seal(handle)
        assert gateway.sealed
        scanned = await backend.bytes_scanned(handle)
        assert scanned is not None and scanned.value == 123_456
        assert scanned.source == "counted by insitu's store gateway"
        # From now on the job's own requests are refused; a wrong token reads nothing.
        job_read = httpx.get(f"{running.endpoint}/insitu-data/datasets/m1.zarr/zarr.json")
        assert job_read.status_code == 403 and "the job is over" in job_read.text
        forged = dict(handle.data, gateway_token="guess")
        with pytest.raises(BackendError, match="store gateway"):
            await backend.seal(JobHandle("kubernetes", JOB, forged))
    finally:
        running.stop()
    await backend.cleanup(handle)
    assert not cluster.created("secrets") and not cluster.created("pods")
    assert not cluster.created("services")


async def test_a_daskjob_the_api_server_refuses_is_a_clear_error(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    cluster.crd_schema = {**cluster.crd_schema, "required": ["spec", "impossible"]}
    with pytest.raises(BackendError, match=r"refused the job's DaskJob .*422"):
        await backend.start(_request())


async def test_a_network_policy_the_cluster_refuses_stops_the_job_from_starting(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    """Without its policy a job's pods could reach anything: it fails at once, saying why,
    instead of running unfenced or waiting forever."""
    cluster.forbidden.add(("networkpolicies", NAMESPACE, f"{JOB}-network"))  # the job's own
    with pytest.raises(BackendError, match=r"refused to create NetworkPolicy .*403 Forbidden"):
        await backend.start(_request())
    assert not cluster.created("daskjobs")
    assert not cluster.created("pods") and not cluster.created("secrets")  # its gateway, gone


async def _phase(
    backend: KubernetesBackend, cluster: FakeCluster, status: str, pod_list: str | None
) -> Any:
    handle = await backend.start(_request())
    cluster.set_status(NAMESPACE, JOB, daskjob_status(status))
    if pod_list:
        cluster.put_pods(pods(pod_list), labels={LABEL_SERVER: backend.server_id})
    return (await backend.status([handle]))[JOB]


@pytest.mark.parametrize(
    ("status", "pod_list", "phase", "code", "detail"),
    [
        ("created", None, BackendPhase.PENDING, None, "the Dask operator is making the job's"),
        (
            "cluster-created",
            "unschedulable-fresh",
            BackendPhase.PENDING,
            None,
            "waiting for a node for pod j-0123456789ab-default-worker-6b7c9: 0/3 nodes",
        ),
        ("running", "running", BackendPhase.RUNNING, None, None),
        ("successful", "succeeded", BackendPhase.EXITED, 0, None),
        ("failed", "runner-oomkilled", BackendPhase.EXITED, 137, "ran out of memory"),
        ("failed", "deadline", BackendPhase.EXITED, None, "deadline (activeDeadlineSeconds)"),
        (
            "cluster-created",
            "image-pull-backoff",
            BackendPhase.EXITED,
            None,
            "the image 'registry.example.org/lab/ophys:1.2' cannot be pulled (ImagePullBackOff",
        ),
        (
            "cluster-created",
            "unschedulable",
            BackendPhase.EXITED,
            None,
            "could not be scheduled for 300 s: 0/3 nodes are available",
        ),
    ],
)
async def test_states_map_to_phases_with_reasons(
    backend: KubernetesBackend,
    cluster: FakeCluster,
    status: str,
    pod_list: str | None,
    phase: BackendPhase,
    code: int | None,
    detail: str | None,
) -> None:
    seen = await _phase(backend, cluster, status, pod_list)
    assert seen.phase == phase
    assert seen.exit_code == code
    if detail is None:
        assert seen.detail is None
    else:
        assert seen.detail is not None and detail in seen.detail


async def test_logs_cancel_and_a_gone_job(backend: KubernetesBackend, cluster: FakeCluster) -> None:
    handle = await backend.start(_request())
    cluster.set_status(NAMESPACE, JOB, daskjob_status("running"))
    cluster.put_pods(pods("running"), labels={LABEL_SERVER: backend.server_id})
    recorded = (DATA / "runner.log").read_bytes()
    cluster.logs[f"{JOB}-runner"] = recorded
    first, offset = await backend.logs(handle, 0)
    assert first == recorded and offset == len(recorded)
    rest, same = await backend.logs(handle, offset)
    assert rest == b"" and same == offset

    await backend.cancel(handle)
    assert ("DELETE", f"/apis/kubernetes.dask.org/v1/namespaces/{NAMESPACE}/daskjobs/{JOB}") in [
        (m, p.split("?")[0]) for m, p in cluster.requests
    ]
    assert not cluster.created("daskjobs")
    # The runner's log was kept before its pods went.
    cluster.logs.clear()
    kept, _ = await backend.logs(handle, 0)
    assert kept.startswith(recorded)  # then the scheduler's and workers' (none recorded)
    assert f"---- the log of {JOB}-scheduler".encode() in kept
    gone = (await backend.status([handle]))[JOB]
    assert gone.phase == BackendPhase.MISSING and "is gone" in (gone.detail or "")
    await backend.cleanup(handle)  # idempotent: a second delete finds nothing, quietly


async def test_a_restarted_server_reads_its_jobs_and_removes_ended_ones(
    k8s_settings: Settings, cluster: FakeCluster
) -> None:
    first = KubernetesBackend(k8s_settings, api_client=api_client(cluster.url))
    live = await first.start(_request())
    ended = await first.start(_request(job_id="j-ended0000000"))
    persisted = JobHandle.from_json(live.to_json())
    await first.close()

    restarted = KubernetesBackend(k8s_settings, api_client=api_client(cluster.url))
    cluster.set_status(NAMESPACE, JOB, daskjob_status("running"))
    cluster.put_pods(pods("running"), labels={LABEL_SERVER: restarted.server_id})
    assert (await restarted.status([persisted]))[JOB].phase == BackendPhase.RUNNING
    removed = await restarted.cleanup_orphans({JOB})
    assert removed == [ended.job_id]
    assert [j["metadata"]["name"] for j in cluster.created("daskjobs")] == [JOB]
    # The ended job's gateway went too; the live job's stays.
    gateways = [p for p in cluster.created("pods") if p["metadata"]["namespace"] == "insitu"]
    assert [p["metadata"]["name"] for p in gateways] == [f"{JOB}-gateway"]
    # A gateway left without its DaskJob is found by its Secret's labels and removed.
    await restarted.start(_request(job_id="j-strayed00000"))
    cluster.remove("daskjobs", NAMESPACE, "j-strayed00000")
    assert await restarted.cleanup_orphans({JOB}) == ["j-strayed00000"]
    assert [s["metadata"]["name"] for s in cluster.created("secrets")] == [f"{JOB}-gateway"]
    await restarted.close()


async def test_an_unreachable_cluster_is_a_clear_error(k8s_settings: Settings) -> None:
    backend = KubernetesBackend(k8s_settings, api_client=api_client("http://127.0.0.1:9"))
    with pytest.raises(BackendError, match="Kubernetes"):
        await backend.start(_request())


def _worker_pod(container_status: dict[str, Any], component: str = "worker") -> dict[str, Any]:
    """A pod of the job as the API server reports it, checked against the Pod schema."""
    import kubernetes_validate

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{JOB}-{component}-0",
            "namespace": NAMESPACE,
            "labels": {"insitu.io/job-id": JOB, "insitu.io/component": component},
        },
        "spec": {"containers": [{"name": component, "image": "registry.example.org/a:1"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": component,
                    "image": "registry.example.org/a:1",
                    "imageID": "",
                    "ready": False,
                    **container_status,
                }
            ],
        },
    }
    kubernetes_validate.validate(pod, "1.30", strict=True)
    return pod


OOM = {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-12-07T09:00:05Z",
       "finishedAt": "2026-12-07T09:00:45Z"}  # fmt: skip


@pytest.mark.parametrize(
    ("component", "status", "expected"),
    [
        (  # the kernel killed a worker, Kubernetes restarted it: it runs, for now
            "worker",
            {"restartCount": 1, "state": {"running": {}}, "lastState": {"terminated": OOM}},
            "a worker (pod j-0123456789ab-worker-0) ran out of memory (OOMKilled): ask for "
            "more resources.memory_per_worker",
        ),
        (
            "runner",
            {"restartCount": 0, "state": {"terminated": OOM}},
            "the job's runner (pod j-0123456789ab-runner-0) ran out of memory (OOMKilled): the "
            "analysis brought too much into it",
        ),
        (
            "worker",
            {
                "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
                "lastState": {"terminated": {**OOM, "exitCode": 1, "reason": "Error"}},
            },
            "pod j-0123456789ab-worker-0 keeps crashing (CrashLoopBackOff after 5 restarts, "
            "exit code 1: Error)",
        ),
        ("worker", {"restartCount": 0, "state": {"running": {}}, "lastState": {}}, None),
    ],
)
def test_crashing_and_out_of_memory_pods_give_reasons_for_their_part(
    component: str, status: dict[str, Any], expected: str | None
) -> None:
    """Advice follows the pod: memory_per_worker for a worker, never for the runner."""
    from datetime import datetime, timezone

    from insitu.backends.kubernetes_backend import pod_problem

    problem = pod_problem(_worker_pod(status, component), datetime.now(timezone.utc), 600)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected), problem
    if component == "runner":
        assert problem is not None and "memory_per_worker" not in problem


def test_the_fake_api_server_refuses_what_the_real_one_would(cluster: FakeCluster) -> None:
    """Every object the backend sends passes the Kubernetes schema on its way in (the
    tests above); a misspelt field is refused with 422, as by a real API server."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "c", "image": "i:1"}], "serviceAcountName": "typo"},
    }
    refused = httpx.post(f"{cluster.url}/api/v1/namespaces/{NAMESPACE}/pods", json=pod)
    assert refused.status_code == 422 and "serviceAcountName" in refused.json()["message"]
    del pod["spec"]["serviceAcountName"]
    created = httpx.post(f"{cluster.url}/api/v1/namespaces/{NAMESPACE}/pods", json=pod)
    assert created.status_code == 201


# -- watches, events and logs ----------------------------------------------------------


async def _until(backend: KubernetesBackend, handle: JobHandle, check: Any) -> Any:
    """The job's status once ``check`` holds (a watch brings changes a moment later)."""
    for _ in range(200):
        status = (await backend.status([handle]))[handle.job_id]
        if check(status):
            return status
        await anyio.sleep(0.02)
    raise AssertionError(f"the status never came: last {status}")


def _running(cluster: FakeCluster, backend: KubernetesBackend, job_id: str) -> None:
    """The job's DaskJob running, with its runner, scheduler and worker pods."""
    cluster.set_status(NAMESPACE, job_id, daskjob_status("running"))
    listed = json.loads(json.dumps(pods("running")).replace(JOB, job_id))
    cluster.put_pods(listed, labels={LABEL_SERVER: backend.server_id})


def _per_job_calls(cluster: FakeCluster) -> list[str]:
    """Requests that read one job's objects (not the watches' lists and streams)."""
    return [
        path
        for method, path in cluster.requests
        if method == "GET"
        and ("/daskjobs/" in path or "insitu.io%2Fjob-id" in path or "insitu.io/job-id" in path)
    ]


async def test_states_come_from_watches_not_from_calls_per_job(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    ids = [f"j-watched0000{i}" for i in range(3)]
    handles = [await backend.start(_request(job_id=job_id)) for job_id in ids]
    for job_id in ids:
        _running(cluster, backend, job_id)
    cluster.requests.clear()
    for _ in range(5):
        seen = await backend.status(handles)
        assert {s.phase for s in seen.values()} == {BackendPhase.RUNNING}
    # The job ends: the watch brings it, and still nothing is asked per job.
    cluster.set_status(NAMESPACE, ids[1], daskjob_status("successful"))
    ended = await _until(backend, handles[1], lambda s: s.phase == BackendPhase.EXITED)
    assert ended.exit_code == 0
    assert _per_job_calls(cluster) == []
    cache = backend.watches()
    assert cache is not None and cache.daskjobs.lists == 1  # one list, then the watch


async def test_a_watch_the_api_server_forgot_is_listed_again(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    handle = await backend.start(_request())
    _running(cluster, backend, JOB)
    await _until(backend, handle, lambda s: s.phase == BackendPhase.RUNNING)
    cache = backend.watches()
    assert cache is not None
    listed = cache.daskjobs.lists
    other = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "else"}}
    cluster.put("pods", other)  # the cluster moves on past the version the watches saw...
    cluster.compact()  # ...and forgets it: resuming from it is now 410 Gone
    cluster.break_watches()
    cluster.set_status(NAMESPACE, JOB, daskjob_status("successful"))
    ended = await _until(backend, handle, lambda s: s.phase == BackendPhase.EXITED)
    assert ended.exit_code == 0 and cache.daskjobs.lists > listed


async def test_a_daskjob_not_yet_seen_by_the_watch_is_not_taken_for_gone(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    assert backend.watches() is not None  # watching before the job exists
    handle = await backend.start(_request())
    status = (await backend.status([handle]))[JOB]
    assert status.phase == BackendPhase.PENDING


async def test_the_runner_log_is_read_from_where_it_was_left(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    handle = await backend.start(_request())
    _running(cluster, backend, JOB)
    runner = f"{JOB}-runner"
    lines = [("2026-12-07T10:00:00.5Z", b"starting\n"), ("2026-12-07T10:00:01.25Z", b"1/4\n")]
    cluster.log_lines(runner, lines)
    first, offset = await backend.logs(handle, 0)
    assert first == b"starting\n1/4\n"
    lines += [("2026-12-07T10:00:01.25Z", b"2/4\n"), ("2026-12-07T10:00:03.1Z", b"done\n")]
    cluster.log_lines(runner, lines)
    rest, end = await backend.logs(handle, offset)
    assert rest == b"2/4\ndone\n" and end == offset + len(rest)
    asked = [p for m, p in cluster.requests if f"/pods/{runner}/log" in p]
    assert "sinceTime" not in asked[0] and "sinceTime=2026-12-07T10%3A00%3A01Z" in asked[-1]


async def test_scheduler_and_worker_logs_end_up_in_the_job_log(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    handle = await backend.start(_request())
    assert backend.watches() is not None  # following the cluster before the pods exist
    _running(cluster, backend, JOB)
    worker, scheduler = f"{JOB}-default-worker-6b7c9", f"{JOB}-scheduler"
    cluster.logs[f"{JOB}-runner"] = b"runner ran\n"
    cluster.logs[worker] = b"distributed.worker - WARNING - Worker is at 95% memory usage\n"
    cluster.logs[scheduler] = b"distributed.scheduler - INFO - Receive client connection\n"
    await _until(backend, handle, lambda s: s.phase == BackendPhase.RUNNING)
    assert worker not in backend._part_logs.get(JOB, {})  # not read while it only runs
    # The runner ends; the operator deletes the cluster: the worker is going, then gone.
    going = cluster.objects[("pods", NAMESPACE, worker)]
    going["metadata"]["deletionTimestamp"] = "2026-12-07T10:00:05Z"
    cluster.put("pods", going)
    for _ in range(200):  # its log is read while it is still there
        if b"95% memory" in backend._part_logs.get(JOB, {}).get(worker, b""):
            break
        await anyio.sleep(0.02)
    cluster.remove("pods", NAMESPACE, worker)
    del cluster.logs[worker]
    cluster.set_status(NAMESPACE, JOB, daskjob_status("successful"))
    await backend.cleanup(handle)
    kept = b""
    while chunk := (await backend.logs(handle, len(kept)))[0]:
        kept += chunk
    text = kept.decode()
    assert text.startswith("runner ran\n")
    assert f"---- the log of {worker} ----" in text and "95% memory usage" in text
    assert f"---- the log of {scheduler} ----" in text and "Receive client" in text


async def test_a_quota_refusal_says_why_the_job_waits_then_fails_it(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    handle = await backend.start(_request())
    cluster.set_status(NAMESPACE, JOB, daskjob_status("cluster-created"))
    listed = pods("running")
    listed["items"] = [p for p in listed["items"] if "worker" not in p["metadata"]["name"]]
    cluster.put_pods(listed, labels={LABEL_SERVER: backend.server_id})
    message = (
        f'pods "{JOB}-default-worker-6b7c9" is forbidden: exceeded quota: insitu-quota, '
        "requested: limits.cpu=2, used: limits.cpu=15, limited: limits.cpu=16"
    )
    event = cluster.event(NAMESPACE, "ReplicaSet", f"{JOB}-default-worker-6b7c9",
                          "FailedCreate", message)  # fmt: skip
    waiting = await _until(backend, handle, lambda s: s.detail is not None)
    assert waiting.phase == BackendPhase.PENDING
    assert "tenant's quota refuses" in waiting.detail and "limited: limits.cpu=16" in waiting.detail
    event["firstTimestamp"] = "2026-12-07T09:00:00Z"  # refused for longer than pending_timeout
    cluster.put("events", event)
    failed = await _until(backend, handle, lambda s: s.phase == BackendPhase.EXITED)
    assert "for 300 s" in failed.detail and "INSITU_KUBERNETES__QUOTA__" in failed.detail


async def test_a_job_log_kept_by_one_replica_reads_the_same_from_another(
    s3_settings: Settings, cluster: FakeCluster, tmp_path: Any
) -> None:
    """Kept logs live in the object store, not in the pod's home that kept them."""
    k8s = KubernetesBackendSettings(gateway_image="registry.example.org/insitu:0.1")
    replicas = [
        KubernetesBackend(
            s3_settings.model_copy(
                update={"home": tmp_path / name, "backend": "kubernetes", "kubernetes": k8s}
            ),
            api_client=api_client(cluster.url),
        )
        for name in ("pod-a", "pod-b")
    ]
    first, second = replicas
    try:
        handle = await first.start(_request())
        _running(cluster, first, JOB)
        cluster.logs[f"{JOB}-runner"] = b"the analysis ran\n"
        await first.cleanup(handle)
        kept, _ = await first.logs(handle, 0)
        assert kept.startswith(b"the analysis ran\n")
        assert (await second.logs(handle, 0))[0] == kept
        assert not (tmp_path / "pod-a" / "logs").exists()
    finally:
        for replica in replicas:
            await replica.close()


async def test_with_watches_off_each_pass_asks_for_the_job_s_objects(
    k8s_settings: Settings, cluster: FakeCluster
) -> None:
    """INSITU_KUBERNETES__WATCH=false: the same states and reasons, by calls per job."""
    settings = k8s_settings.model_copy(deep=True)
    settings.kubernetes.watch = False
    backend = KubernetesBackend(settings, api_client=api_client(cluster.url))
    handle = await backend.start(_request())
    _running(cluster, backend, JOB)
    cluster.requests.clear()
    assert (await backend.status([handle]))[JOB].phase == BackendPhase.RUNNING
    assert len(_per_job_calls(cluster)) == 2  # its DaskJob and its pods
    assert backend.watches() is None
    cluster.remove("pods", NAMESPACE, f"{JOB}-default-worker-6b7c9")
    cluster.set_status(NAMESPACE, JOB, daskjob_status("cluster-created"))
    refused = "exceeded quota: insitu-quota, requested: pods=1, used: pods=64, limited: pods=64"
    worker = f"{JOB}-default-worker-6b7c9"
    cluster.event(NAMESPACE, "ReplicaSet", worker, "FailedCreate", refused)
    waiting = (await backend.status([handle]))[JOB]
    assert waiting.phase == BackendPhase.PENDING and "limited: pods=64" in (waiting.detail or "")


async def test_a_restarted_worker_s_earlier_run_is_kept_once(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    handle = await backend.start(_request())
    assert backend.watches() is not None
    _running(cluster, backend, JOB)
    worker = f"{JOB}-default-worker-6b7c9"
    cluster.logs[worker] = b"MemoryError: the last words of the first run\n"
    pod = cluster.objects[("pods", NAMESPACE, worker)]
    pod["status"]["containerStatuses"][0]["restartCount"] = 1
    for _ in range(3):  # the same restart, seen in several events, is read once
        cluster.put("pods", pod)
    part = f"{worker} (before restart 1)"
    for _ in range(200):
        if backend._part_logs.get(JOB, {}).get(part):
            break
        await anyio.sleep(0.02)
    assert b"last words" in backend._part_logs[JOB][part]
    assert len(backend._collections[JOB]) == 1
    await backend.cleanup(handle)
    kept = (await backend.logs(handle, 0))[0].decode()
    assert f"---- the log of {part} ----" in kept


async def test_a_quota_refusal_is_seen_for_a_one_worker_job_with_its_gateway(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    """The store gateway carries the job's labels but is not one of its pods."""
    handle = await backend.start(_request(resources=Resources(workers=1)))
    assert cluster.objects.get(("pods", "insitu", f"{JOB}-gateway"))
    cluster.set_status(NAMESPACE, JOB, daskjob_status("cluster-created"))
    listed = pods("running")
    listed["items"] = [p for p in listed["items"] if "worker" not in p["metadata"]["name"]]
    cluster.put_pods(listed, labels={LABEL_SERVER: backend.server_id})
    worker = f"{JOB}-default-worker-6b7c9"
    cluster.event(NAMESPACE, "ReplicaSet", worker, "FailedCreate",
                  f'pods "{worker}" is forbidden: exceeded quota: insitu-quota')  # fmt: skip
    waiting = await _until(backend, handle, lambda s: "quota" in (s.detail or ""))
    assert waiting.phase == BackendPhase.PENDING


async def test_an_hour_old_quota_refusal_fails_nothing(
    backend: KubernetesBackend, cluster: FakeCluster
) -> None:
    """Refused once at its start, the job got its pods; now the operator deletes them as
    the runner ends. The old event must not fail it."""
    handle = await backend.start(_request())
    cluster.set_status(NAMESPACE, JOB, daskjob_status("cluster-created"))
    worker = f"{JOB}-default-worker-6b7c9"
    refused = f'pods "{worker}" is forbidden: exceeded quota: insitu-quota'
    event = cluster.event(NAMESPACE, "ReplicaSet", worker, "FailedCreate", refused)
    event["firstTimestamp"] = event["lastTimestamp"] = "2026-12-07T08:00:00Z"
    cluster.put("events", event)
    status = await _until(backend, handle, lambda s: s.detail is not None)
    assert status.phase == BackendPhase.PENDING and "quota" not in (status.detail or "")
