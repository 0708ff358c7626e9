"""The containers of one docker job, as Docker SDK arguments: pure functions, no engine.

Every job gets a network namespace of its own with only a loopback interface, held by
its *gateway* container (``network_mode="none"``); the scheduler, the workers and the
runner join it (``network_mode="container:<gateway>"``), so they reach each other on
127.0.0.1 and nothing else. When the job reads or writes object storage, the gateway
runs :mod:`insitu.relay` on the store's port, forwarding to a unix socket that the
server relays to the real store: the store is the only address a job can reach.
Every container runs as a non-root user with a read-only root filesystem, every
capability dropped, no privilege escalation, and limits on memory, CPU and processes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from insitu.backends.base import LABEL_COMPONENT, LABEL_JOB, LaunchRequest
from insitu.backends.cluster_plan import (
    LOOPBACK,
    TMP,
    ClusterPlan,
    Lockdown,
    base_env,
    plan_cluster,
)
from insitu.config import DockerBackendSettings
from insitu.runtime.workspace import OUTPUTS_DIR

LABEL_SERVER = "insitu.io/server"
LABEL_WORKER = "insitu.io/worker"
SOCKET_DIR = "/run/insitu"  # where the gateway sees the store socket
ASSIGNMENT_FILE = "assignment.json"  # where a warm sandbox's runner learns its job
COMPONENTS = ("gateway", "scheduler", "worker", "runner")


@dataclass(frozen=True)
class StoreRoute:
    """How a job's containers reach the object store: one host and port, through a relay."""

    host: str
    port: int
    aliases: tuple[str, ...] = ()  # host names that must resolve to the job's loopback


def store_route(
    urls: list[str], endpoint_url: str | None, region: str, buckets: list[str]
) -> StoreRoute | None:
    """The store a job needs, or None when its dataset and workspace are local files."""
    if not any(u.startswith("s3://") for u in urls):
        return None
    endpoint = urlsplit(endpoint_url or f"https://s3.{region}.amazonaws.com")
    host = endpoint.hostname or "127.0.0.1"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        ipaddress.ip_address(host)
        aliases: tuple[str, ...] = ()
    except ValueError:
        # Virtual-hosted-style requests name the bucket in the host, too.
        aliases = (host, *(f"{b}.{host}" for b in buckets))
    return StoreRoute(host=host, port=port, aliases=aliases)


def local_path(url: str | None) -> Path | None:
    """The directory behind a ``file://`` URL (or a plain path), else None."""
    if not url or ("://" in url and not url.startswith("file://")):
        return None
    return Path(urlsplit(url).path if url.startswith("file://") else url)


@dataclass
class JobContainers:
    """Names and SDK arguments of a job's containers, in the order they start."""

    job_id: str
    specs: list[dict[str, Any]] = field(default_factory=list)

    def name(self, component: str) -> str:
        return f"insitu-{self.job_id}-{component}"


@dataclass(frozen=True)
class _Common:
    """What every container of a job shares."""

    job: JobContainers
    image: str
    settings: DockerBackendSettings
    lockdown: Lockdown
    server_id: str


def _container(
    common: _Common,
    component: str,
    command: Sequence[str],
    *,
    memory: int,
    cpus: float,
    network_mode: str,
    env: Mapping[str, str],
    name: str | None = None,
) -> dict[str, Any]:
    job, settings, lockdown = common.job, common.settings, common.lockdown
    return {
        "name": name or job.name(component),
        "image": common.image,
        "entrypoint": list(command),
        "command": [],
        "user": f"{lockdown.uid}:{lockdown.gid}",
        "working_dir": TMP,
        "environment": dict(env),
        "labels": {
            LABEL_JOB: job.job_id,
            LABEL_COMPONENT: component,
            LABEL_SERVER: common.server_id,
        },
        "network_mode": network_mode,
        "read_only": lockdown.read_only_root,
        "tmpfs": {TMP: f"size={lockdown.tmp_bytes},mode=1777"},
        "cap_drop": list(lockdown.drop_capabilities),
        "security_opt": ["no-new-privileges"] if lockdown.no_new_privileges else [],
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": max(int(cpus * 1e9), 10_000_000),
        "pids_limit": settings.pids_limit,
        "log_config": {"type": "json-file", "config": {"max-size": "20m", "max-file": "2"}},
        "detach": True,
    }


def _gateway_command(store: StoreRoute | None) -> list[str]:
    if store is None:  # nothing to relay: just hold the network namespace
        return ["python", "-c", "import time\nwhile True: time.sleep(3600)"]
    return [
        "python", "-m", "insitu.relay",
        "--listen", f"tcp:127.0.0.1:{store.port}",
        "--connect", f"unix:{SOCKET_DIR}/store.sock",
    ]  # fmt: skip


def docker_lockdown(settings: DockerBackendSettings, user: str) -> Lockdown:
    """The plan's lockdown as the docker backend runs it: as ``user`` ("uid:gid")."""
    uid, _, gid = user.partition(":")
    return Lockdown(uid=int(uid), gid=int(gid or uid), tmp_bytes=int(settings.tmp_size))


def cluster_of(
    request: LaunchRequest,
    *,
    settings: DockerBackendSettings,
    user: str,
    runner_env: Mapping[str, str],
    sandbox: bool = False,
) -> ClusterPlan:
    """The job's cluster on one host: its processes share a loopback-only network."""
    return plan_cluster(
        request,
        LOOPBACK,
        scheduler_memory=int(settings.scheduler_memory),
        runner_memory=int(settings.runner_memory),
        wait_timeout_s=settings.worker_start_timeout,
        lockdown=docker_lockdown(settings, user),
        runner_env=runner_env,
        assignment=f"{SOCKET_DIR}/{ASSIGNMENT_FILE}" if sandbox else None,
    )


def plan(
    request: LaunchRequest,
    *,
    image: str,
    settings: DockerBackendSettings,
    user: str,
    server_id: str,
    host_cpus: int,
    store: StoreRoute | None,
    socket_dir: Path | None,
    runner_env: dict[str, str],
    sandbox: bool = False,
) -> JobContainers:
    """The containers of one job: its gateway, then its cluster (:func:`cluster_of`)
    rendered as containers: scheduler, workers, runner.

    A warm ``sandbox``'s runner waits for the server to assign it a job, through a file
    in ``socket_dir`` (mounted read-only), instead of running ``request``'s workspace.
    """
    cluster = cluster_of(
        request, settings=settings, user=user, runner_env=runner_env, sandbox=sandbox
    )
    job = JobContainers(request.job_id)
    common = _Common(job, image, settings, cluster.lockdown, server_id)
    joined = f"container:{job.name('gateway')}"

    # Gateway: owns the job's network namespace; relays the store's port to the socket.
    gateway = _container(
        common,
        "gateway",
        _gateway_command(store),
        memory=256 << 20,
        cpus=1.0,
        network_mode="none",
        env=base_env(request.job_id),
    )
    if store is not None:
        gateway["extra_hosts"] = {alias: "127.0.0.1" for alias in store.aliases}
        if store.port < 1024:
            gateway["sysctls"] = {"net.ipv4.ip_unprivileged_port_start": "0"}
        if socket_dir is not None:
            gateway["volumes"] = {str(socket_dir): {"bind": SOCKET_DIR, "mode": "ro"}}
    job.specs.append(gateway)

    scheduler = cluster.scheduler
    job.specs.append(
        _container(
            common,
            "scheduler",
            scheduler.argv,
            memory=scheduler.memory,
            cpus=scheduler.cpus,
            network_mode=joined,
            env=scheduler.env,
        )
    )

    # Workers and runner read the dataset; the runner also writes the workspace, and the
    # workers its outputs folder.
    data_dir = local_path(request.dataset_url)
    work_dir = local_path(request.workspace_url)
    read_mounts = {str(data_dir): {"bind": str(data_dir), "mode": "ro"}} if data_dir else {}
    worker_plan = cluster.worker
    for index in range(cluster.workers):
        worker = _container(
            common,
            "worker",
            cluster.worker_argv(index),
            memory=worker_plan.memory,
            cpus=min(worker_plan.cpus, float(host_cpus)),  # more than the host has cannot run
            network_mode=joined,
            env=worker_plan.env,
            name=job.name(f"worker-{index}"),
        )
        worker["labels"][LABEL_WORKER] = str(index)
        worker_mounts = dict(read_mounts)
        if work_dir is not None:  # workers write the job's outputs (insitu.Output) in place
            outputs = str(work_dir / OUTPUTS_DIR)
            worker_mounts[outputs] = {"bind": outputs, "mode": "rw"}
        if worker_mounts:
            worker["volumes"] = worker_mounts
        if worker_plan.gpu:
            worker["device_requests"] = [{"Count": worker_plan.gpu, "Capabilities": [["gpu"]]}]
        job.specs.append(worker)

    runner_plan = cluster.runner
    runner = _container(
        common,
        "runner",
        runner_plan.argv,
        memory=runner_plan.memory,
        cpus=runner_plan.cpus,
        network_mode=joined,
        env=runner_plan.env,
    )
    mounts = dict(read_mounts)
    if work_dir is not None:
        mounts[str(work_dir)] = {"bind": str(work_dir), "mode": "rw"}
    if sandbox and socket_dir is not None:
        mounts[str(socket_dir)] = {"bind": SOCKET_DIR, "mode": "ro"}
    if mounts:
        runner["volumes"] = mounts
    job.specs.append(runner)
    return job
