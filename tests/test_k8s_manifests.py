"""Every manifest the kubernetes backend generates, validated with no cluster.

Kubernetes' own objects against the Kubernetes schemas (``kubernetes-validate``, strict),
the DaskJob against the operator's CRD schema shipped in the ``dask-kubernetes`` package,
and each of its pod specs again as a strict Kubernetes Pod.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from insitu.backends.base import LABEL_JOB, LaunchRequest
from insitu.backends.k8s_manifests import (
    daskjob,
    dns_label,
    gateway_name,
    gateway_selector,
    job_network_policy,
    tenant_manifests,
    tenant_namespace,
)
from insitu.backends.kubernetes_backend import KubernetesBackend
from insitu.backends.store_gateway import PLACEHOLDER_KEY
from insitu.config import KubernetesBackendSettings, Settings
from insitu.errors import BackendError, InvalidInput
from insitu.spec import Resources

KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


@functools.cache
def _crd_text(kind: str) -> dict[str, Any]:
    import dask_kubernetes

    root = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm"
    path = root / "dask-kubernetes-operator" / "crds" / f"{kind}.yaml"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def operator_crd(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of one of the operator's CRDs, from the dask-kubernetes package."""
    return copy.deepcopy(_crd_text(kind))


def _requests() -> dict[str, LaunchRequest]:
    common: dict[str, Any] = {
        "timeout_s": 3600.0,
        "env": {"AWS_ACCESS_KEY_ID": "ASIA-session", "AWS_SESSION_TOKEN": "token"},
        "image": "registry.example.org/lab/ophys:1.2",
    }
    return {
        "s3": LaunchRequest(
            job_id="j-0123456789ab",
            workspace_url="s3://insitu-results/jobs/j-0123456789ab",
            dataset_url="s3://insitu-data/datasets/ophys/m1.zarr",
            resources=Resources(workers=4, threads_per_worker=2, memory_per_worker=4 << 30),
            tenant="Ada Lovelace",
            max_write_bytes=3 << 30,
            max_output_objects=1000,
            **common,
        ),
        "gpu": LaunchRequest(
            job_id="j-feedfacecafe",
            workspace_url="s3://insitu-results/jobs/j-feedfacecafe",
            dataset_url="s3://other-bucket/em.zarr",
            resources=Resources(workers=1, threads_per_worker=4, memory_per_worker=8 << 30, gpu=1),
            tenant="course-2026",
            **common,
        ),
    }


@pytest.fixture
def k8s() -> KubernetesBackendSettings:
    return KubernetesBackendSettings(
        data_zone="eu-central-1a",
        bucket_zones={"other-bucket": "eu-central-1b"},
        store_cidrs=["52.219.72.0/22", "3.5.136.0/22"],
        worker_node_selector={"insitu.io/pool": "cpu-spot"},
        gateway_image="registry.example.org/insitu:0.1",
    )


def _backend(k8s: KubernetesBackendSettings) -> KubernetesBackend:
    return KubernetesBackend(Settings(backend="kubernetes", kubernetes=k8s))


def _all(k8s: KubernetesBackendSettings) -> list[dict[str, Any]]:
    """Every object a job's start creates: its tenant's, its gateway's, its own."""
    manifests = []
    backend = _backend(k8s)
    for request in _requests().values():
        manifests += tenant_manifests(k8s, request.tenant, "srv")
        manifests += backend.manifests(request, token="t0ken")
    return manifests


def _pod_specs(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = job["spec"]["cluster"]["spec"]
    return {
        "runner": job["spec"]["job"]["spec"],
        "scheduler": cluster["scheduler"]["spec"],
        "worker": cluster["worker"]["spec"],
    }


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_generated_manifest_is_valid(k8s: KubernetesBackendSettings, version: str) -> None:
    daskjob_schema = operator_crd("daskjob")
    checked = 0
    for manifest in _all(k8s):
        if manifest["kind"] == "DaskJob":
            jsonschema.validate(manifest, daskjob_schema)
            for role, spec in _pod_specs(manifest).items():
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"{role}-check", "namespace": "x"},
                    "spec": spec,
                }
                kubernetes_validate.validate(pod, version, strict=True)
            service = manifest["spec"]["cluster"]["spec"]["scheduler"]["service"]
            kubernetes_validate.validate(
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": service},
                version,
                strict=True,
            )
        else:
            kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    # 5 tenant objects + the gateway's Secret, Pod, Service, policy + policy + DaskJob, twice
    assert checked == 22


def test_the_validators_catch_mistakes(k8s: KubernetesBackendSettings) -> None:
    """The checks above can fail: a misspelt pod field and a DaskJob without its cluster."""
    job = daskjob(_requests()["s3"], image="x:1", settings=k8s, server_id="srv")
    broken_pod = copy.deepcopy(_pod_specs(job)["worker"])
    broken_pod["serviceAcountName"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": broken_pod},
            KUBE_VERSIONS[0],
            strict=True,
        )
    del job["spec"]["cluster"]
    with pytest.raises(jsonschema.ValidationError, match="cluster"):
        jsonschema.validate(job, operator_crd("daskjob"))


def test_pods_are_placed_by_the_data_and_locked_down(k8s: KubernetesBackendSettings) -> None:
    requests = _requests()
    job = daskjob(requests["s3"], image="img:1", settings=k8s, server_id="srv")
    assert job["metadata"]["namespace"] == "insitu-tenant-ada-lovelace"
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] == 4
    specs = _pod_specs(job)
    for role, spec in specs.items():
        zone = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expression = zone["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expression == {
            "key": "topology.kubernetes.io/zone",
            "operator": "In",
            "values": ["eu-central-1a"],
        }, role
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "insitu-job"
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert not security["allowPrivilegeEscalation"]
        assert container["resources"]["requests"] == container["resources"]["limits"]
    worker = specs["worker"]["containers"][0]
    assert worker["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert {"--nthreads", "2"} <= set(worker["args"])
    assert specs["worker"]["tolerations"][0]["key"] == "insitu.io/spot"
    assert specs["worker"]["nodeSelector"] == {"insitu.io/pool": "cpu-spot"}
    assert "nodeSelector" not in specs["runner"] and "nodeSelector" not in specs["scheduler"]
    assert "tolerations" not in specs["runner"] and "tolerations" not in specs["scheduler"]
    assert specs["runner"]["activeDeadlineSeconds"] == 3600
    assert specs["runner"]["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in specs["runner"]["containers"][0]["env"]}
    assert env["AWS_SESSION_TOKEN"] == "token" and env["INSITU_JOB_ID"] == "j-0123456789ab"

    gpu = daskjob(requests["gpu"], image="img:1", settings=k8s, server_id="srv")
    gpu_worker = _pod_specs(gpu)["worker"]
    assert gpu_worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {t["key"] for t in gpu_worker["tolerations"]} == {"insitu.io/spot", "nvidia.com/gpu"}
    zone = gpu_worker["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert zone["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["eu-central-1b"]


def test_the_runner_outwaits_the_backends_scheduling_limit(
    k8s: KubernetesBackendSettings,
) -> None:
    """One setting: a slow scale-up fails with the scheduler's reason, given by the backend
    after pending_timeout, never first with the runner's "only 0 of N workers"."""
    for pending in (600.0, 120.0, 1800.0):
        settings = k8s.model_copy(update={"pending_timeout": pending})
        job = daskjob(_requests()["s3"], image="img:1", settings=settings, server_id="srv")
        args = _pod_specs(job)["runner"]["containers"][0]["args"]
        waits = float(args[args.index("--wait-timeout") + 1])
        assert pending < waits <= pending + 120, (pending, waits)
        assert args[args.index("--wait-workers") + 1] == "4"


def test_a_job_reaches_only_its_cluster_dns_and_its_gateway(
    k8s: KubernetesBackendSettings,
) -> None:
    request = _requests()["s3"]
    policy = job_network_policy(request, settings=k8s, server_id="srv")
    own = {"podSelector": {"matchLabels": {LABEL_JOB: request.job_id}}}
    assert policy["spec"]["podSelector"] == own["podSelector"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    to_cluster, to_dns, to_gateway = policy["spec"]["egress"]
    assert to_cluster == {"to": [own]}
    assert to_dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert to_gateway == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "insitu"}},
                "podSelector": {"matchLabels": gateway_selector(request.job_id)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8080}],
    }
    assert "ipBlock" not in str(policy)  # no address outside the cluster, the store included
    assert policy["spec"]["ingress"][0]["from"][0] == own

    tenant = {m["kind"]: m for m in tenant_manifests(k8s, "Ada Lovelace", "srv")}
    assert tenant["NetworkPolicy"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    assert tenant["ResourceQuota"]["spec"]["hard"]["count/daskjobs.kubernetes.dask.org"] == "8"
    account = tenant["ServiceAccount"]
    assert "annotations" not in account["metadata"]  # no cloud role: nothing to assume
    assert account["automountServiceAccountToken"] is False


def test_a_job_holds_no_credential_and_its_gateway_alone_reaches_the_store(
    k8s: KubernetesBackendSettings,
) -> None:
    request = _requests()["s3"]
    secret, pod, service, gateway_policy, _, job = _backend(k8s).manifests(request, "t0ken")
    endpoint = f"http://{gateway_name(request.job_id)}.insitu.svc:8080"
    for role, spec in _pod_specs(job).items():
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        if role == "scheduler":
            continue
        assert env["INSITU_STORE_ENDPOINT"] == endpoint, role
        assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == PLACEHOLDER_KEY
        assert "AWS_SESSION_TOKEN" not in env and "ASIA-session" not in str(spec)
    # The gateway: the server's image, the gateway account (its role), next to the data; its
    # token only in a Secret, never on its command line; only the job and the server reach it.
    assert secret["stringData"] == {"token": "t0ken"}
    assert pod["metadata"]["namespace"] == service["metadata"]["namespace"] == "insitu"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "insitu-gateway"
    assert spec["nodeSelector"] == {"topology.kubernetes.io/zone": "eu-central-1a"}
    (container,) = spec["containers"]
    assert container["image"] == "registry.example.org/insitu:0.1"
    assert "t0ken" not in str(container)
    command = container["command"]
    assert command[:3] == ["python", "-m", "insitu.gateway"]
    assert command[command.index("--dataset") + 1] == request.dataset_url
    assert command[command.index("--workspace") + 1] == request.workspace_url
    # What the job may write: the dispatcher's figure (its owner's storage room included).
    assert command[command.index("--max-write-bytes") + 1] == str(request.max_write_bytes)
    assert command[command.index("--max-output-objects") + 1] == "1000"
    assert service["spec"]["selector"] == gateway_selector(request.job_id)
    (ingress,) = gateway_policy["spec"]["ingress"]
    job_pods, server_pods = ingress["from"]
    assert job_pods["podSelector"] == {"matchLabels": {LABEL_JOB: request.job_id}}
    assert job_pods["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "insitu-tenant-ada-lovelace"
    }
    assert server_pods == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "insitu"}}}
    store = gateway_policy["spec"]["egress"][1]
    assert store["to"] == [{"ipBlock": {"cidr": c}} for c in k8s.store_cidrs]
    # Without a gateway image there is no way to the store: the start says what to set.
    unset = k8s.model_copy(update={"gateway_image": None})
    with pytest.raises(BackendError, match="gateway_image"):
        _backend(unset).manifests(request)


def test_names_are_valid_kubernetes_names(k8s: KubernetesBackendSettings) -> None:
    assert dns_label("Ada_Lovelace@Lab!") == "ada-lovelace-lab"
    assert len(tenant_namespace(k8s, "x" * 200)) == 63
    assert dns_label("---") == "x"


def test_images_are_checked_at_submit(settings: Settings) -> None:
    backend = KubernetesBackend(settings.model_copy(update={"backend": "kubernetes"}))
    backend.check_image("registry.example.org:5000/lab/ophys:1.2")
    backend.check_image("ghcr.io/org/img@sha256:" + "a" * 64)
    with pytest.raises(InvalidInput, match="not a valid image reference"):
        backend.check_image("Bad Image!")
    with pytest.raises(InvalidInput, match=r"set analysis\.image"):
        backend.check_image(None)


def test_a_job_the_tenant_quota_could_never_hold_is_refused_naming_the_quota(
    settings: Settings, movie: tuple[Path, Any]
) -> None:
    """Kubernetes never creates a pod over quota, so the job would wait with no reason."""
    from insitu.backends.k8s_manifests import quota_problems
    from insitu.client import Client
    from insitu.errors import InvalidInput as Refused
    from insitu.server import BackgroundServer
    from insitu.units import parse_size

    defaults = Settings()
    quota, limits = defaults.kubernetes.quota, defaults.limits
    # The container limits admit the largest worker the server's own limits admit.
    widest = Resources(
        workers=1,
        threads_per_worker=limits.max_threads_per_worker,
        memory_per_worker=limits.max_memory_per_worker,
    )
    assert quota_problems(widest, defaults.kubernetes) == []
    assert quota_problems(Resources(), defaults.kubernetes) == []
    (gpus,) = quota_problems(Resources(workers=2, gpu=1), defaults.kubernetes)
    assert "GPUs of the job (workers x gpu), 2," in gpus and "QUOTA__GPUS" in gpus
    big = Resources(workers=8, threads_per_worker=8, memory_per_worker=parse_size("16GiB"))
    problems = quota_problems(big, defaults.kubernetes)
    assert any("66" in p and f"quota of {quota.cpu} " in p and "QUOTA__CPU)" in p for p in problems)
    assert any("QUOTA__MEMORY)" in p for p in problems)
    raised = defaults.kubernetes.model_copy(
        update={"quota": quota.model_copy(update={"cpu": "80", "memory": "200Gi", "gpus": 4})}
    )
    assert quota_problems(big, raised) == quota_problems(Resources(workers=2, gpu=1), raised) == []

    # Through the API: a 422 that says which quota, and nothing queued.
    k8s = settings.model_copy(
        update={
            "backend": "kubernetes",
            "kubernetes": KubernetesBackendSettings(gateway_image="registry.example.org/i:1"),
        }
    )
    server = BackgroundServer(k8s, run_dispatcher=False).start()  # no cluster is called
    try:
        with Client(server.url, settings.admin_token_path.read_text().strip()) as api:
            api.register_dataset("lab/movie", str(movie[0]))
            spec = {
                "dataset": "lab/movie",
                "analysis": {"entrypoint": "m:f", "image": "registry.example.org/lab/a:1"},
                "resources": {"workers": 1, "gpu": 1},
            }
            with pytest.raises(Refused, match=r"could never start.*QUOTA__GPUS"):
                api.submit(spec)
            assert api.jobs() == []
    finally:
        server.stop()
