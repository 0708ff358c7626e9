"""One job's Dask cluster as a plan that every container backend renders.

A job's cluster is a scheduler, ``workers`` workers and a runner (``python -m
insitu.runtime``). Their command lines, environment, resources, waits and lockdown are
decided here, once: the docker backend renders the plan as containers
(:mod:`insitu.backends.docker_specs`) and the kubernetes backend as a DaskJob
(:mod:`insitu.backends.k8s_manifests`), so the two cannot drift apart. What differs
between them is only where the processes find each other, a :class:`Network`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from insitu.backends.base import LaunchRequest

SCHEDULER_PORT, DASHBOARD_PORT, WORKER_DASHBOARD_PORT = 8786, 8787, 8788
TMP = "/tmp"  # the only writable folder of every container
RUN_AS = 10001  # uid and gid of job pods (docker may run as the server's own user)
RUNNER_WAIT_MARGIN_S = 60.0  # the runner outwaits the backend's pending timeout by this much

Component = Literal["scheduler", "worker", "runner"]


@dataclass(frozen=True)
class Network:
    """Where a job's processes find each other: the one thing backends differ in."""

    #: interface the scheduler and workers bind (None: the pod's own address)
    bind_host: str | None
    #: the scheduler's address for workers and runner (None: DASK_SCHEDULER_ADDRESS, which
    #: the dask-kubernetes operator sets in every pod)
    scheduler_address: str | None
    #: a worker's name; ``{index}`` is its number
    worker_name: str
    #: serve the Dask dashboards (the operator's scheduler Service expects one)
    dashboards: bool


#: docker: every process of a job shares one network namespace with only a loopback
LOOPBACK = Network("127.0.0.1", f"tcp://127.0.0.1:{SCHEDULER_PORT}", "worker-{index}", False)
#: kubernetes: a pod each, wired by the operator (Kubernetes expands $(DASK_WORKER_NAME))
OPERATOR = Network(None, None, "$(DASK_WORKER_NAME)", True)


@dataclass(frozen=True)
class Lockdown:
    """What every container of a job is denied: the same on every backend."""

    uid: int = RUN_AS
    gid: int = RUN_AS
    read_only_root: bool = True
    drop_capabilities: tuple[str, ...] = ("ALL",)
    no_new_privileges: bool = True
    tmp_bytes: int = 1 << 30  # size of the writable TMP


@dataclass(frozen=True)
class Process:
    """One kind of process of the job's cluster."""

    component: Component
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cpus: float
    memory: int  # bytes, the container's limit
    gpu: int = 0


@dataclass(frozen=True)
class ClusterPlan:
    """A job's Dask cluster, whatever runs it."""

    job_id: str
    scheduler: Process
    worker: Process
    workers: int
    runner: Process
    #: how long the runner waits for its workers
    wait_timeout_s: float
    #: the job's wall-time limit (the kubernetes runner pod's activeDeadlineSeconds)
    deadline_s: float
    lockdown: Lockdown = field(default_factory=Lockdown)

    def worker_argv(self, index: int) -> tuple[str, ...]:
        """The command line of worker ``index`` (its name filled in)."""
        return tuple(arg.replace("{index}", str(index)) for arg in self.worker.argv)


def base_env(job_id: str) -> dict[str, str]:
    """Environment of every process of a job: home and temporary files in TMP."""
    return {
        "HOME": TMP,
        "TMPDIR": TMP,
        "DASK_TEMPORARY_DIRECTORY": TMP,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "INSITU_JOB_ID": job_id,
    }


def scheduler_argv(network: Network) -> tuple[str, ...]:
    """The job's Dask scheduler."""
    argv = ["python", "-m", "distributed.cli.dask_scheduler"]
    if network.bind_host:
        argv += ["--host", network.bind_host]
    argv += ["--port", str(SCHEDULER_PORT)]
    argv += [f"--dashboard-address=:{DASHBOARD_PORT}"] if network.dashboards else ["--no-dashboard"]
    return tuple(argv)


def worker_argv(network: Network, threads: int, memory: int) -> tuple[str, ...]:
    """A Dask worker without a nanny: the container is the worker, so a worker killed for
    memory is the container's death, which the backend sees and names."""
    argv = ["python", "-m", "distributed.cli.dask_worker"]
    if network.scheduler_address:
        argv.append(network.scheduler_address)
    argv += ["--name", network.worker_name]
    if network.bind_host:
        argv += ["--host", network.bind_host]
    argv += [
        "--nthreads", str(threads), "--nworkers", "1", "--no-nanny",
        "--memory-limit", str(memory), "--local-directory", TMP,
    ]  # fmt: skip
    if network.dashboards:
        argv.append(f"--dashboard-address=:{WORKER_DASHBOARD_PORT}")
    else:
        argv.append("--no-dashboard")
    return tuple(argv)


def runner_argv(
    network: Network,
    workspace_url: str,
    workers: int,
    wait_timeout_s: float,
    assignment: str | None = None,
) -> tuple[str, ...]:
    """The runner: the job's workspace, or (a warm sandbox) the file that will name it."""
    waits = []
    if network.scheduler_address:
        waits += ["--scheduler", network.scheduler_address]
    waits += ["--wait-workers", str(workers), "--wait-timeout", str(int(wait_timeout_s))]
    if assignment is not None:
        return ("python", "-m", "insitu.runtime.sandbox", "--assignment", assignment, *waits)
    return ("python", "-m", "insitu.runtime", workspace_url, *waits)


def plan_cluster(
    request: LaunchRequest,
    network: Network,
    *,
    scheduler_memory: int,
    runner_memory: int,
    wait_timeout_s: float,
    lockdown: Lockdown,
    runner_env: Mapping[str, str] | None = None,
    assignment: str | None = None,
) -> ClusterPlan:
    """The cluster of ``request``'s job on ``network``.

    The runner waits ``wait_timeout_s`` for its workers: a backend that explains pods it
    cannot place passes its own pending timeout plus :data:`RUNNER_WAIT_MARGIN_S`, so a
    slow scale-up ends with the backend's reason, not the runner's "only 0 of N workers".
    """
    res = request.resources
    env = base_env(request.job_id)
    job_env = {**request.env, **env}  # the platform's variables win over the spec's
    return ClusterPlan(
        job_id=request.job_id,
        scheduler=Process("scheduler", scheduler_argv(network), env, 1.0, scheduler_memory),
        worker=Process(
            "worker",
            worker_argv(network, res.threads_per_worker, int(res.memory_per_worker)),
            job_env,
            float(res.threads_per_worker),
            int(res.memory_per_worker),
            res.gpu,
        ),
        workers=res.workers,
        runner=Process(
            "runner",
            runner_argv(network, request.workspace_url, res.workers, wait_timeout_s, assignment),
            {**job_env, **(runner_env or {})},
            1.0,
            runner_memory,
        ),
        wait_timeout_s=wait_timeout_s,
        deadline_s=max(float(request.timeout_s), 1.0),
        lockdown=lockdown,
    )
