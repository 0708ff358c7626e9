"""One cluster plan, rendered by the docker and kubernetes backends alike.

The plan's commands are checked against the runtime's own command line and run for real
(the Kubernetes flavour in a network namespace of the test's own, with the names the
operator would give); each renderer is checked to carry the plan through unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import missing
from insitu.backends.base import LaunchRequest
from insitu.backends.cluster_plan import (
    LOOPBACK,
    OPERATOR,
    RUNNER_WAIT_MARGIN_S,
    SCHEDULER_PORT,
    ClusterPlan,
    Lockdown,
    Network,
    plan_cluster,
)
from insitu.backends.docker_specs import cluster_of as docker_cluster
from insitu.backends.docker_specs import plan as docker_plan
from insitu.backends.k8s_manifests import cluster_of as k8s_cluster
from insitu.backends.k8s_manifests import daskjob, quantity
from insitu.config import DockerBackendSettings, KubernetesBackendSettings
from insitu.runtime import runner, sandbox
from insitu.spec import Resources

NETWORK_FLAGS = {"--host", "--scheduler"}  # flags whose value is where, not what


def _request(**resources: object) -> LaunchRequest:
    return LaunchRequest(
        job_id="j-plan",
        workspace_url="s3://results/jobs/j-plan",
        resources=Resources.model_validate(
            {"workers": 3, "threads_per_worker": 2, "memory_per_worker": "3GiB", **resources}
        ),
        timeout_s=900,
        env={"AWS_ENDPOINT_URL": "http://gateway:8080", "HOME": "/root"},
        dataset_url="s3://data/movie.zarr",
    )


def _plan(network: Network, **kwargs: object) -> ClusterPlan:
    options: dict[str, object] = {
        "scheduler_memory": 1 << 30, "runner_memory": 2 << 30, "wait_timeout_s": 660.0,
        "lockdown": Lockdown(), **kwargs,
    }  # fmt: skip
    return plan_cluster(_request(), network, **options)  # type: ignore[arg-type]


def _what(argv: tuple[str, ...] | list[str]) -> list[str]:
    """A command line without the parts that only say where (addresses, names)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in NETWORK_FLAGS or arg == "--name":
            skip = True
            continue
        if arg.startswith(("tcp://", "--dashboard-address", "--no-dashboard")):
            continue
        kept.append(arg)
    return kept


# -- the plan -----------------------------------------------------------------------------


def _rendered_by_docker() -> dict[str, tuple[list[str], dict[str, str], int, float]]:
    """(argv, env, memory, CPUs) of each process as the docker backend runs it."""
    specs = docker_plan(
        _request(), image="img", settings=DockerBackendSettings(worker_start_timeout=660),
        user="1000:1000", server_id="s", host_cpus=64, store=None, socket_dir=None,
        runner_env={"INSITU_IMAGE": "img"},
    ).specs  # fmt: skip
    return {
        spec["labels"]["insitu.io/component"]: (
            spec["entrypoint"],
            spec["environment"],
            spec["mem_limit"],
            spec["nano_cpus"] / 1e9,
        )
        for spec in specs
        if spec["labels"]["insitu.io/component"] != "gateway"
    }


def _rendered_by_kubernetes() -> dict[str, tuple[list[str], dict[str, str], int, float]]:
    """(argv, env, memory, CPUs) of each process as the DaskJob has them."""
    from kubernetes.utils import parse_quantity

    settings = KubernetesBackendSettings(pending_timeout=600, scheduler_memory="1Gi",
                                         runner_memory="2Gi")  # fmt: skip
    job = daskjob(_request(), image="img", settings=settings, server_id="s",
                  runner_env={"INSITU_IMAGE": "img"})  # fmt: skip
    pods = {
        "runner": job["spec"]["job"]["spec"],
        "scheduler": job["spec"]["cluster"]["spec"]["scheduler"]["spec"],
        "worker": job["spec"]["cluster"]["spec"]["worker"]["spec"],
    }
    found = {}
    for component, pod in pods.items():
        (container,) = pod["containers"]
        limits = container["resources"]["limits"]
        found[component] = (
            container["args"],
            {e["name"]: e["value"] for e in container["env"]},
            int(parse_quantity(limits["memory"])),
            float(parse_quantity(limits["cpu"])),
        )
    return found


@pytest.mark.parametrize("component", ["scheduler", "worker", "runner"])
def test_docker_and_kubernetes_run_the_same_processes(component: str) -> None:
    """What each backend actually renders, compared: only where the processes find each
    other may differ."""
    docker, k8s = _rendered_by_docker()[component], _rendered_by_kubernetes()[component]
    assert _what(docker[0]) == _what(k8s[0])
    assert docker[1] == k8s[1]  # environment
    assert docker[2:] == k8s[2:]  # memory and CPUs


def test_workers_have_no_nanny_and_the_spec_s_threads_and_memory() -> None:
    for network in (LOOPBACK, OPERATOR):
        argv = _plan(network).worker.argv
        assert "--no-nanny" in argv  # the drift this plan ended: k8s workers had a nanny
        assert argv[argv.index("--nthreads") + 1] == "2"
        assert argv[argv.index("--memory-limit") + 1] == str(3 << 30)
        assert argv[argv.index("--local-directory") + 1] == "/tmp"


def test_each_docker_worker_gets_its_own_name_and_k8s_the_operator_s() -> None:
    plan = _plan(LOOPBACK)
    names = [argv[argv.index("--name") + 1] for argv in map(plan.worker_argv, range(3))]
    assert names == ["worker-0", "worker-1", "worker-2"]
    k8s = _plan(OPERATOR).worker_argv(0)
    assert k8s[k8s.index("--name") + 1] == "$(DASK_WORKER_NAME)"


def test_the_platform_s_environment_wins_over_the_request_s() -> None:
    plan = _plan(LOOPBACK, runner_env={"INSITU_IMAGE": "img"})
    assert plan.worker.env["HOME"] == "/tmp"
    assert plan.worker.env["AWS_ENDPOINT_URL"] == "http://gateway:8080"
    assert plan.runner.env["INSITU_IMAGE"] == "img" and "INSITU_IMAGE" not in plan.worker.env
    assert "AWS_ENDPOINT_URL" not in plan.scheduler.env  # the scheduler reads no data


def test_waits_come_from_one_setting_per_backend() -> None:
    for pending in (30.0, 600.0, 3600.0):
        k8s = k8s_cluster(_request(), settings=KubernetesBackendSettings(pending_timeout=pending))
        argv = k8s.runner.argv
        assert float(argv[argv.index("--wait-timeout") + 1]) == pending + RUNNER_WAIT_MARGIN_S
        assert k8s.wait_timeout_s > pending  # the backend's reason comes first
    docker = docker_cluster(
        _request(),
        settings=DockerBackendSettings(worker_start_timeout=45),
        user="1000:1000",
        runner_env={},
    )
    assert docker.runner.argv[docker.runner.argv.index("--wait-timeout") + 1] == "45"


@pytest.mark.parametrize("network", [LOOPBACK, OPERATOR], ids=["docker", "kubernetes"])
def test_the_runner_s_command_is_one_the_runtime_accepts(network: Network) -> None:
    plan = _plan(network)
    argv = plan.runner.argv
    assert argv[:3] == ("python", "-m", "insitu.runtime")
    args = runner.parser().parse_args(list(argv[3:]))
    assert args.workspace == "s3://results/jobs/j-plan"
    assert (args.wait_workers, args.wait_timeout) == (3, 660.0)
    if network.scheduler_address:
        assert args.scheduler == network.scheduler_address
    else:  # the operator's DASK_SCHEDULER_ADDRESS, read by the runtime
        assert "--scheduler" not in argv
    warm = _plan(network, assignment="/run/insitu/assignment.json").runner.argv
    if network.scheduler_address:  # a warm sandbox is docker's alone: it names its scheduler
        assert warm[:3] == ("python", "-m", "insitu.runtime.sandbox")
        sandbox_args = sandbox.parser().parse_args(list(warm[3:]))
        assert sandbox_args.scheduler == network.scheduler_address
        assert sandbox_args.wait_workers == 3


# -- the renderers -------------------------------------------------------------------------


def test_docker_containers_carry_the_plan() -> None:
    settings = DockerBackendSettings(worker_start_timeout=90)
    request = _request()
    plan = docker_cluster(request, settings=settings, user="1234:5678", runner_env={"X": "1"})
    specs = docker_plan(
        request, image="img", settings=settings, user="1234:5678", server_id="s",
        host_cpus=64, store=None, socket_dir=None, runner_env={"X": "1"},
    ).specs  # fmt: skip
    by_name = {spec["name"].removeprefix("insitu-j-plan-"): spec for spec in specs}
    expected = {
        "scheduler": (plan.scheduler, plan.scheduler.argv),
        "runner": (plan.runner, plan.runner.argv),
    }
    expected.update({f"worker-{i}": (plan.worker, plan.worker_argv(i)) for i in range(3)})
    assert set(by_name) == {"gateway", *expected}
    for name, (process, argv) in expected.items():
        spec = by_name[name]
        assert spec["entrypoint"] == list(argv), name
        assert spec["environment"] == dict(process.env), name
        assert spec["mem_limit"] == process.memory and spec["nano_cpus"] == int(process.cpus * 1e9)
    for spec in specs:
        assert spec["user"] == "1234:5678" and spec["read_only"] and spec["cap_drop"] == ["ALL"]
        assert spec["security_opt"] == ["no-new-privileges"]
        assert spec["tmpfs"] == {"/tmp": f"size={int(settings.tmp_size)},mode=1777"}


def test_a_docker_worker_never_asks_for_more_cpus_than_the_host_has() -> None:
    request = _request(threads_per_worker=8)
    specs = docker_plan(
        request, image="img", settings=DockerBackendSettings(), user="1000:1000", server_id="s",
        host_cpus=2, store=None, socket_dir=None, runner_env={},
    ).specs  # fmt: skip
    workers = [s for s in specs if "-worker-" in s["name"]]
    assert {w["nano_cpus"] for w in workers} == {int(2e9)}
    assert all("--nthreads" in w["entrypoint"] for w in workers)


def test_the_daskjob_carries_the_plan() -> None:
    settings = KubernetesBackendSettings(pending_timeout=120)
    request = _request(gpu=1)
    plan = k8s_cluster(request, settings=settings, runner_env={"INSITU_IMAGE": "img"})
    job = daskjob(request, image="img", settings=settings, server_id="s",
                  runner_env={"INSITU_IMAGE": "img"})  # fmt: skip
    pods = {
        "runner": job["spec"]["job"]["spec"],
        "scheduler": job["spec"]["cluster"]["spec"]["scheduler"]["spec"],
        "worker": job["spec"]["cluster"]["spec"]["worker"]["spec"],
    }
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] == plan.workers == 3
    for component, pod in pods.items():
        process = getattr(plan, component)
        (container,) = pod["containers"]
        assert container["args"] == list(process.argv), component
        assert {e["name"]: e["value"] for e in container["env"]} == dict(process.env)
        limits = container["resources"]["limits"]
        assert limits["memory"] == quantity(process.memory)
        assert float(limits["cpu"]) == process.cpus
        assert limits.get("nvidia.com/gpu") == (str(process.gpu) if process.gpu else None)
        security = container["securityContext"]
        assert security["runAsUser"] == plan.lockdown.uid == pod["securityContext"]["runAsUser"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"] == {"drop": list(plan.lockdown.drop_capabilities)}
        assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == quantity(plan.lockdown.tmp_bytes)
    assert pods["runner"]["activeDeadlineSeconds"] == int(plan.deadline_s) == 900


# -- the Kubernetes flavour, run ----------------------------------------------------------


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with only a loopback, as a pod's own network stands in here."""
    name = f"insitu-plan-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        missing("netns", made.stderr.strip() or "ip netns add failed")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _as_kubernetes_runs(argv: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """``argv`` as the kubelet runs it: ``$(VAR)`` expanded from the container's env, and
    ``python`` the image's interpreter."""
    expanded = []
    for arg in argv:
        for key, value in env.items():
            arg = arg.replace(f"$({key})", value)
        expanded.append(arg)
    return [sys.executable if expanded[0] == "python" else expanded[0], *expanded[1:]]


def test_the_kubernetes_plan_s_scheduler_and_workers_form_a_cluster(
    namespace: str, tmp_path: Path
) -> None:
    plan = _plan(OPERATOR)
    address = f"tcp://127.0.0.1:{SCHEDULER_PORT}"
    netns = ["ip", "netns", "exec", namespace]
    # What the operator adds to the plan's environment in every pod.
    operator_env = {"DASK_SCHEDULER_ADDRESS": address}
    processes: list[subprocess.Popen[bytes]] = []

    def start(argv: tuple[str, ...], env: dict[str, str], log: str) -> None:
        full = {**os.environ, **env, **operator_env, "HOME": str(tmp_path),
                "TMPDIR": str(tmp_path), "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}  # fmt: skip
        command = [*netns, *_as_kubernetes_runs(argv, full)]
        command = [str(tmp_path) if a == "/tmp" else a for a in command]
        out = open(tmp_path / log, "wb")  # noqa: SIM115 (kept open for the process)
        processes.append(subprocess.Popen(command, env=full, stdout=out, stderr=out))

    try:
        start(plan.scheduler.argv, dict(plan.scheduler.env), "scheduler.log")
        for index in range(2):
            env = {**plan.worker.env, "DASK_WORKER_NAME": f"j-plan-default-worker-{index}"}
            start(plan.worker_argv(index), env, f"worker-{index}.log")
        probe = (
            "from distributed import Client\n"
            f"c = Client({address!r}, timeout='60s')\n"
            "c.wait_for_workers(2, timeout=60)\n"
            "print(sorted(w['name'] for w in c.scheduler_info()['workers'].values()))\n"
            "print(c.submit(sum, [1, 2, 3]).result())\n"
        )
        found = subprocess.run(
            [*netns, sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
        logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
        assert found.returncode == 0, found.stderr + logs
        names, total = found.stdout.split("\n")[:2]
        assert names == "['j-plan-default-worker-0', 'j-plan-default-worker-1']"
        assert total == "6"
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
