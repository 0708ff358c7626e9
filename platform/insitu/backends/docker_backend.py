"""The docker backend: each job's Dask scheduler, workers and runner as containers of its image.

The containers and their isolation are laid out in :mod:`insitu.backends.docker_specs`.
This module starts them, watches them, gathers their logs into the job's log, stops
them, and removes them (and the job's store relay) when the job ends or, for jobs that
ended while the server was down, when the server starts again. Containers carry labels
naming their job, their role and the server that started them, so that servers sharing
one Docker engine never touch each other's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from insitu.backends.base import (
    LABEL_COMPONENT,
    LABEL_JOB,
    Backend,
    BackendPhase,
    BackendStatus,
    JobHandle,
    LaunchRequest,
    Metered,
    job_log_path,
    read_log,
    server_id,
)
from insitu.backends.docker_metering import ContainerCpu
from insitu.backends.docker_pool import Sandbox, SandboxPool, is_sandbox
from insitu.backends.docker_specs import (
    ASSIGNMENT_FILE,
    LABEL_SERVER,
    LABEL_WORKER,
    StoreRoute,
    plan,
    store_route,
)
from insitu.backends.store_gateway import (
    GATEWAY_CREDENTIALS,
    STORE_ACCESS,
    behind_gateway,
    dataset_in_store,
    write_limit,
)
from insitu.config import Settings
from insitu.errors import BackendBusy, BackendError, InsituError, InvalidInput
from insitu.images import ImageInfo, docker_client, inspect_image
from insitu.runtime.sandbox import READY_LINE
from insitu.runtime.workspace import OUTPUTS_DIR
from insitu.spec import Resources
from insitu.units import format_size

log = logging.getLogger(__name__)

RELAY_START_TIMEOUT = 10.0


def job_request(request: LaunchRequest, route: StoreRoute) -> LaunchRequest:
    """The request as the job's containers see it: no store credential, the gateway as store.

    The store's name resolves to the job's own loopback, where its gateway container
    relays to the server's gateway, which speaks plain HTTP to the job.
    """
    return behind_gateway(request, f"http://{route.host}:{route.port}")


REAP_GRACE = 10.0  # seconds a finished runner gets to log its last lines and exit
ROOT_FALLBACK_USER = "10001:10001"
_ORDER = {"gateway": 0, "scheduler": 1, "worker": 2, "runner": 3}


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Write ``path`` whole or not at all (readers never see half of it)."""
    partial = path.with_name(f".{path.name}.part")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(partial, mode)
    os.replace(partial, path)


def _same_process(pid: int, created: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one started at ``created`` (pids are reused)."""
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        if abs(process.create_time() - created) < 1.0:
            return process
    return None


def container_key(handle: JobHandle) -> str:
    """The label value a job's containers carry: its sandbox's, else its own id."""
    return str(handle.data.get("sandbox") or handle.job_id)


def _timestamp_key(stamp: str) -> tuple[str, str]:
    """Sortable form of a Docker RFC 3339 timestamp (its fraction has no trailing zeros)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return whole, fraction.ljust(9, "0")


def _exit_detail(name: str, state: dict[str, Any], memory: int | None) -> str:
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        limit = f" (limit {format_size(memory)})" if memory else ""
        return f"{name} ran out of memory{limit}"
    if code == 137:
        return f"{name} was killed"
    return f"{name} exited with code {code}"


class DockerBackend(Backend):
    """Runs each job as a gateway, a scheduler, N workers and a runner container."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.docker
        self.server_id = server_id(settings)
        self.log_dir = settings.home / "logs"
        # Unix socket paths are short (108 bytes): keep the relays' sockets under /tmp.
        self.socket_root = Path(tempfile.gettempdir()) / f"insitu-{self.server_id}"
        self._client: Any = None
        self._images: dict[str, ImageInfo] = {}
        self._log_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._reapers: dict[str, threading.Thread] = {}
        self._cpu: ContainerCpu | None = None
        self.pool: SandboxPool | None = None
        if self.config.warm_pool_size > 0:
            self.pool = SandboxPool(self)
            self.pool.start()

    # -- the engine, the user, the images ---------------------------------------------------

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = docker_client(self.config.base_url)
            return self._client

    @property
    def cpu(self) -> ContainerCpu:
        """The meter of the jobs' containers' CPU time."""
        if self._cpu is None:
            self._cpu = ContainerCpu(self.client)
        return self._cpu

    @property
    def user(self) -> str:
        """The uid:gid containers run as: never root."""
        if self.config.user != "auto":
            if self.config.user.split(":")[0] in ("0", "root"):
                raise BackendError("docker.user must not be root; set a non-root uid:gid")
            return self.config.user
        uid, gid = os.getuid(), os.getgid()
        return ROOT_FALLBACK_USER if uid == 0 else f"{uid}:{gid}"

    def _image_name(self, image: str | None) -> str:
        name = image or self.config.default_image
        if not name:
            raise InvalidInput(
                "the docker backend runs each job in a container image: set analysis.image in "
                "the job spec (build one with 'insitu image build DIR --tag NAME')"
            )
        return name

    def image_info(self, image: str | None) -> ImageInfo:
        """Check an image once per content digest, and remember what it has."""
        name = self._image_name(image)
        try:
            current = self.client.images.get(name).id
        except Exception:
            current = None
        cached = self._images.get(name)
        if cached is not None and cached.id == current:
            return cached
        info = inspect_image(self.client, name, user=self.user, pull=self.config.pull)
        self._images[name] = info
        return info

    def check_image(self, image: str | None) -> None:
        self.image_info(image)

    def warm_pool(self) -> tuple[int, int] | None:
        return (self.pool.size, self.pool.ready()) if self.pool is not None else None

    # -- starting -----------------------------------------------------------------------------

    def _socket_dir(self, job_id: str) -> Path:
        return self.socket_root / job_id

    def _job_containers(self, job_id: str) -> list[dict[str, Any]]:
        return list(
            self.client.api.containers(
                all=True,
                filters={"label": [f"{LABEL_JOB}={job_id}", f"{LABEL_SERVER}={self.server_id}"]},
            )
        )

    def _spawn_gateway(self, key: str, options: list[str]) -> subprocess.Popen:
        """Start a store gateway process listening on ``key``'s socket folder."""
        directory = self._socket_dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_root, 0o755)
        os.chmod(directory, 0o755)
        storage = self.settings.storage
        endpoint = storage.endpoint_url or f"https://s3.{storage.region}.amazonaws.com"
        command = [
            sys.executable, "-m", "insitu.gateway",
            "--listen", f"unix:{directory / 'store.sock'}",
            "--endpoint", endpoint, "--region", storage.region, *options,
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(sys.path)}
        with open(directory / "gateway.log", "ab") as log_file:
            return subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )

    def _await_socket(self, key: str, job_id: str, alive: Any) -> None:
        """Wait until the gateway listens on ``key``'s socket; raise if it died."""
        socket_path = self._socket_dir(key) / "store.sock"
        deadline = time.monotonic() + RELAY_START_TIMEOUT
        while not socket_path.exists():
            if not alive() or time.monotonic() > deadline:
                raise BackendError(
                    f"the store gateway for job {job_id} did not start; see "
                    f"{self._socket_dir(key)}/gateway.log"
                )
            time.sleep(0.005)

    def _counts_path(self, job_id: str) -> Path:
        counts = self.settings.home / "gateway" / f"{job_id}.json"
        counts.parent.mkdir(parents=True, exist_ok=True)
        return counts

    def _config_path(self, key: str) -> Path:
        """Where a gateway reads its job's policy and keys (the server's home: no job sees it)."""
        return self._counts_path(key).with_suffix(".config.json")

    def _configure_gateway(self, key: str, request: LaunchRequest) -> Path:
        """Write the job's policy and keys where ``key``'s gateway waits for them."""
        counts = self._counts_path(request.job_id)
        workspace = request.workspace_url
        config = {
            "dataset": request.dataset_url if dataset_in_store(request) else None,
            "workspace": workspace if workspace.startswith("s3://") else None,
            "counts": str(counts),
            "max_write_bytes": request.max_write_bytes or write_limit(self.settings),
            "max_output_objects": request.max_output_objects,
            "credentials": {k: v for k, v in request.env.items() if k in GATEWAY_CREDENTIALS},
        }
        _write_atomically(self._config_path(key), json.dumps(config), 0o600)
        return counts

    @staticmethod
    def _gateway_facts(
        request: LaunchRequest, pid: int, created: float, counts: Path
    ) -> dict[str, Any]:
        return {
            "relay_pid": pid,
            "relay_create_time": created,
            "gateway_counts": str(counts),
            "gateway_scan": dataset_in_store(request),
            "store_access": STORE_ACCESS,
        }

    def _start_gateway(self, request: LaunchRequest, route: StoreRoute) -> dict[str, Any]:
        """Start the job's store gateway on the socket its gateway container relays to.

        The gateway holds the job's store credentials; the job's containers hold none. It
        learns them as a warm sandbox's gateway does, from a file it reads and deletes.
        """
        job_id = request.job_id
        counts = self._configure_gateway(job_id, request)
        process = self._spawn_gateway(job_id, ["--await-config", str(self._config_path(job_id))])
        try:
            self._await_socket(job_id, job_id, lambda: process.poll() is None)
        except BackendError:
            process.kill()
            self._config_path(job_id).unlink(missing_ok=True)  # it holds keys
            raise
        created = psutil.Process(process.pid).create_time()
        return self._gateway_facts(request, process.pid, created, counts)

    def _prepare_workspace(self, url: str) -> None:
        """A local workspace must be writable by the containers' non-root user."""
        if urlsplit(url).scheme not in ("", "file"):
            return
        path = Path(urlsplit(url).path)
        (path / OUTPUTS_DIR).mkdir(parents=True, exist_ok=True)  # mounted into the workers
        uid, gid = (int(p) for p in self.user.split(":"))
        if os.getuid() == 0:
            for item in [path, *path.rglob("*")]:
                os.chown(item, uid, gid)

    def _route(self, urls: list[str]) -> StoreRoute | None:
        buckets = [urlsplit(u).netloc for u in urls if u.startswith("s3://")]
        storage = self.settings.storage
        return store_route(urls, storage.endpoint_url, storage.region, [b for b in buckets if b])

    def _start(self, request: LaunchRequest) -> JobHandle:
        info = self.image_info(request.image)
        existing = self._job_containers(request.job_id)
        if any(c["Labels"].get(LABEL_COMPONENT) == "runner" for c in existing):
            return self._handle(request, info, {})
        self._remove_all(request.job_id, existing)
        route = self._route([u for u in (request.dataset_url, request.workspace_url) if u])
        if self.pool is not None and self.pool.fits(request, info.id, route):
            sandbox = self.pool.take(request.job_id, info.id)
            if sandbox is None and self.pool.should_wait(request.job_id):
                raise BackendBusy("waiting for a warm sandbox")
            if sandbox is not None:
                try:
                    return self._assign(sandbox, request, info, route)
                except Exception as exc:  # the sandbox is sick: start the job cold
                    log.warning(
                        "warm sandbox %s could not take job %s: %s",
                        sandbox.key,
                        request.job_id,
                        exc,
                    )
                    self.remove_sandbox(sandbox.key)
        relay: dict[str, Any] = {}
        try:
            if route is not None:
                relay = self._start_gateway(request, route)
                request = job_request(request, route)
            self._prepare_workspace(request.workspace_url)
            containers = plan(
                request,
                image=info.id,
                settings=self.config,
                user=self.user,
                server_id=self.server_id,
                host_cpus=int(self.client.info().get("NCPU") or os.cpu_count() or 1),
                store=route,
                socket_dir=self._socket_dir(request.job_id) if route else None,
                runner_env={
                    "INSITU_IMAGE": info.name,
                    "INSITU_IMAGE_ID": info.id,
                    "INSITU_IMAGE_DIGEST": info.digest,
                },
            )
            for spec in containers.specs:
                self.client.containers.run(**spec)
        except Exception as exc:
            self._remove_all(request.job_id, self._job_containers(request.job_id))
            self._stop_relay(request.job_id)
            if isinstance(exc, InsituError):
                raise
            text = getattr(exc, "explanation", None) or str(exc)
            raise BackendError(f"Docker could not start the job's containers: {text}") from None
        return self._handle(request, info, relay)

    # -- the warm pool's sandboxes ------------------------------------------------------

    def _pool_route(self) -> StoreRoute | None:
        return self._route(["s3://", self.settings.resolved_workspace_url])

    def create_sandbox(self, key: str, stopping: Callable[[], bool] = lambda: False) -> Sandbox:
        """Start a sandbox for a job not yet known: its gateway waits, its runner waits."""
        config = self.config
        info = self.image_info(config.warm_pool_image or config.default_image)
        route = self._pool_route()
        if route is None:  # unreachable: _pool_route always names the store
            raise BackendError("the warm pool needs object storage")
        config_path = self._config_path(key)
        config_path.unlink(missing_ok=True)
        process = self._spawn_gateway(key, ["--await-config", str(config_path)])
        created = psutil.Process(process.pid).create_time()
        sandbox = Sandbox(key, info.id, process.pid, created, route.aliases)
        request = LaunchRequest(
            job_id=key,
            workspace_url="",
            resources=Resources(
                workers=config.warm_pool_workers,
                threads_per_worker=config.warm_pool_threads,
                memory_per_worker=config.warm_pool_memory,
            ),
            timeout_s=0.0,
        )
        try:
            containers = plan(
                job_request(request, route),
                image=info.id,
                settings=config,
                user=self.user,
                server_id=self.server_id,
                host_cpus=int(self.client.info().get("NCPU") or os.cpu_count() or 1),
                store=route,
                socket_dir=self._socket_dir(key),
                runner_env={},
                sandbox=True,
            )
            for spec in containers.specs:
                started = self.client.containers.run(**spec)
            self._await_ready(started.id, config.worker_start_timeout + 60, stopping)
        except Exception as exc:
            self.remove_sandbox(key)
            text = getattr(exc, "explanation", None) or str(exc)
            raise BackendError(f"Docker could not start a warm sandbox: {text}") from None
        return sandbox

    def _await_ready(self, runner_id: str, timeout: float, stopping: Callable[[], bool]) -> None:
        """Wait until the sandbox's runner has imported the runtime and seen its workers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stopping():
                raise BackendError("the server is stopping")
            if READY_LINE.encode() in self.client.api.logs(runner_id, stdout=True, tail=20):
                return
            if self._state(runner_id).get("Status") not in ("created", "running"):
                raise BackendError("the sandbox's runner stopped before it was ready")
            time.sleep(0.2)
        raise BackendError(f"the sandbox was not ready within {timeout:.0f} s")

    def sandbox_alive(self, sandbox: Sandbox) -> bool:
        """Whether the sandbox's gateway waits and all its containers run."""
        if _same_process(sandbox.gateway_pid, sandbox.gateway_create_time) is None:
            return False
        containers = self._job_containers(sandbox.key)
        return len(containers) >= 4 and all(c["State"] == "running" for c in containers)

    def remove_sandbox(self, key: str) -> None:
        """Remove a sandbox no job will use: its containers, its gateway, its files."""
        self._remove_all(key, self._job_containers(key))
        self._stop_relay(key)
        self._config_path(key).unlink(missing_ok=True)

    def assigned_job(self, key: str) -> str | None:
        """The job a sandbox was given, as the server wrote it (None while it waits)."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            return str(json.loads((self._socket_dir(key) / ASSIGNMENT_FILE).read_text())["job_id"])
        return None

    def _assign(
        self, sandbox: Sandbox, request: LaunchRequest, info: ImageInfo, route: StoreRoute | None
    ) -> JobHandle:
        """Give ``sandbox`` to the job: its gateway's policy and keys, then the runner's job."""
        assert route is not None
        counts = self._configure_gateway(sandbox.key, request)

        def gateway_alive() -> bool:
            return psutil.pid_exists(sandbox.gateway_pid)

        self._await_socket(sandbox.key, request.job_id, gateway_alive)
        env = {
            **job_request(request, route).env,
            "INSITU_JOB_ID": request.job_id,
            "INSITU_IMAGE": info.name,
            "INSITU_IMAGE_ID": info.id,
            "INSITU_IMAGE_DIGEST": info.digest,
        }
        assignment = {"job_id": request.job_id, "workspace": request.workspace_url, "env": env}
        _write_atomically(
            self._socket_dir(sandbox.key) / ASSIGNMENT_FILE, json.dumps(assignment), 0o644
        )
        # What the sandbox used while it waited is not the job's.
        self.cpu.baseline(request.job_id, self._job_containers(sandbox.key))
        relay = self._gateway_facts(
            request, sandbox.gateway_pid, sandbox.gateway_create_time, counts
        )
        resources = request.resources.model_copy(
            update={
                "workers": self.config.warm_pool_workers,
                "memory_per_worker": self.config.warm_pool_memory,
            }
        )
        return self._handle(
            replace(request, resources=resources),
            info,
            {**relay, "sandbox": sandbox.key, "warm": True},
        )

    def _handle(self, request: LaunchRequest, info: ImageInfo, relay: dict[str, Any]) -> JobHandle:
        return JobHandle(
            "docker",
            request.job_id,
            {
                "server": self.server_id,
                "image": info.name,
                "image_id": info.id,
                "image_digest": info.digest,
                "workers": request.resources.workers,
                "memory_per_worker": request.resources.memory_per_worker,
                **relay,
            },
        )

    async def start(self, request: LaunchRequest) -> JobHandle:
        return await asyncio.to_thread(self._start, request)

    # -- watching -----------------------------------------------------------------------------

    def _state(self, container_id: str) -> dict[str, Any]:
        try:
            return dict(self.client.api.inspect_container(container_id)["State"])
        except Exception:
            return {}

    def _status_one(self, handle: JobHandle, containers: list[dict[str, Any]]) -> BackendStatus:
        if not containers:
            return BackendStatus(
                BackendPhase.MISSING, detail="the job's containers are gone from the Docker engine"
            )
        by_role: dict[str, list[dict[str, Any]]] = {}
        for container in containers:
            by_role.setdefault(container["Labels"].get(LABEL_COMPONENT, "?"), []).append(container)
        runners = by_role.get("runner") or []
        if not runners:
            return BackendStatus(BackendPhase.MISSING, detail="the job's runner container is gone")
        runner = runners[0]
        if runner["State"] == "created":
            return BackendStatus(BackendPhase.PENDING)
        if runner["State"] in ("exited", "dead"):
            state = self._state(runner["Id"])
            detail = None
            if state.get("OOMKilled"):
                detail = (
                    _exit_detail("the runner", state, self.config.runner_memory)
                    + " (raise docker.runner_memory, or return smaller results)"
                )
            return BackendStatus(
                BackendPhase.EXITED, exit_code=state.get("ExitCode"), detail=detail
            )
        workers = by_role.get("worker", [])
        expected = int(handle.data.get("workers", len(workers)))
        running = [w for w in workers if w["State"] in ("running", "created", "restarting")]
        if expected and not running:
            memory = handle.data.get("memory_per_worker")
            details = [
                _exit_detail(
                    f"worker-{w['Labels'].get(LABEL_WORKER, '?')}", self._state(w["Id"]), memory
                )
                for w in workers
            ] or ["their containers are gone"]
            return BackendStatus(
                BackendPhase.EXITED,
                detail="all of the job's Dask workers stopped: " + "; ".join(details),
            )
        return BackendStatus(BackendPhase.RUNNING)

    def _status_all(self, handles: list[JobHandle]) -> dict[str, BackendStatus]:
        containers = self.client.api.containers(
            all=True, filters={"label": f"{LABEL_SERVER}={self.server_id}"}
        )
        by_job: dict[str, list[dict[str, Any]]] = {}
        for container in containers:
            by_job.setdefault(container["Labels"].get(LABEL_JOB, ""), []).append(container)
        statuses = {}
        for handle in handles:
            mine = by_job.get(container_key(handle), [])
            statuses[handle.job_id] = status = self._status_one(handle, mine)
            if status.phase == BackendPhase.RUNNING:
                self.cpu.sample(handle.job_id, mine)
        return statuses

    async def status(self, handles: Iterable[JobHandle]) -> dict[str, BackendStatus]:
        return await asyncio.to_thread(self._status_all, list(handles))

    # -- logs ---------------------------------------------------------------------------------

    def log_path(self, job_id: str) -> Path:
        """The job's gathered log: every container's lines, prefixed with its role."""
        return job_log_path(self.settings, job_id)

    def _sync_logs(
        self, job_id: str, group: str | None = None, containers: list[dict[str, Any]] | None = None
    ) -> None:
        """Append the containers' new log lines to the job's log, in time order."""
        with self._lock:
            lock = self._log_locks.setdefault(job_id, threading.Lock())
        with lock:
            if containers is None:
                containers = self._job_containers(group or job_id)
            cursor_path = self.log_dir / f"{job_id}.cursor.json"
            cursor: dict[str, str] = {}
            if cursor_path.exists():
                cursor = json.loads(cursor_path.read_text())
            lines: list[tuple[tuple[str, str], bytes]] = []
            for container in containers:
                name = container["Names"][0].lstrip("/")
                role = container["Labels"].get(LABEL_COMPONENT, "?")
                if role == "worker":
                    role = f"worker-{container['Labels'].get(LABEL_WORKER, '?')}"
                last = cursor.get(name)
                since = int(datetime.fromisoformat(last[:19]).timestamp()) if last else None
                try:
                    raw = self.client.api.logs(
                        container["Id"], stdout=True, stderr=True, timestamps=True, since=since
                    )
                except Exception:
                    continue
                for line in raw.splitlines(keepends=True):
                    stamp, _, text = line.partition(b" ")
                    key = _timestamp_key(stamp.decode(errors="replace"))
                    if last and key <= _timestamp_key(last):
                        continue
                    lines.append((key, f"[{role}] ".encode() + text))
                    cursor[name] = stamp.decode(errors="replace")
            if not lines:
                return
            lines.sort(key=lambda item: item[0])
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_path(job_id), "ab") as out:
                for _, text in lines:
                    out.write(text if text.endswith(b"\n") else text + b"\n")
            cursor_path.write_text(json.dumps(cursor))

    def _read_log(self, handle: JobHandle, offset: int) -> tuple[bytes, int]:
        with contextlib.suppress(BackendError):
            self._sync_logs(handle.job_id, container_key(handle))
        return read_log(self.log_path(handle.job_id), offset)

    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        return await asyncio.to_thread(self._read_log, handle, offset)

    # -- stopping and removing ----------------------------------------------------------------

    def _stop(self, key: str, grace: float) -> None:
        containers = self._job_containers(key)
        runner = [c for c in containers if c["Labels"].get(LABEL_COMPONENT) == "runner"]
        for container in runner:
            with contextlib.suppress(Exception):
                self.client.api.stop(container["Id"], timeout=int(max(grace, 1)))

    def _remove_all(self, job_id: str, containers: list[dict[str, Any]]) -> None:
        if not containers:
            return

        def remove(container: dict[str, Any]) -> None:
            with contextlib.suppress(Exception):
                self.client.api.remove_container(container["Id"], force=True, v=True)

        ordered = sorted(
            containers, key=lambda c: -_ORDER.get(c["Labels"].get(LABEL_COMPONENT, ""), 0)
        )
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(remove, ordered))

    def _relays(self) -> dict[str, list[psutil.Process]]:
        """This server's store relay processes, by job id (found by their socket path)."""
        found: dict[str, list[psutil.Process]] = {}
        prefix = f"unix:{self.socket_root}/"
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info.get("cmdline") or []
            if "insitu.relay" in cmdline or "insitu.gateway" in cmdline:
                listen = next((a for a in cmdline if a.startswith(prefix)), None)
                if listen:
                    job_id = Path(listen.removeprefix("unix:")).parent.name
                    found.setdefault(job_id, []).append(process)
        return found

    def _relay_of(self, handle: JobHandle) -> list[psutil.Process]:
        """The job's relay: by the pid its handle recorded, else found among all processes."""
        pid = handle.data.get("relay_pid")
        if pid:  # gone, or its pid reused: no relay
            process = _same_process(int(pid), float(handle.data["relay_create_time"]))
            return [process] if process is not None else []
        return self._relays().get(container_key(handle), [])  # from before the relay started

    def _stop_relay(self, key: str, processes: list[psutil.Process] | None = None) -> None:
        for process in self._relays().get(key, []) if processes is None else processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()  # the gateway writes its counts a last time
                try:
                    process.wait(5)
                except psutil.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        shutil.rmtree(self._socket_dir(key), ignore_errors=True)

    def _cleanup(self, handle: JobHandle) -> None:
        key = container_key(handle)
        containers = self._job_containers(key)
        with contextlib.suppress(Exception):
            self._sync_logs(handle.job_id, key, containers)
        self._remove_all(key, containers)
        self._stop_relay(key, self._relay_of(handle))
        (self.log_dir / f"{handle.job_id}.cursor.json").unlink(missing_ok=True)
        if handle.data.get("gateway_counts"):  # read by the dispatcher before cleanup
            Path(handle.data["gateway_counts"]).unlink(missing_ok=True)
        with self._lock:
            self._log_locks.pop(handle.job_id, None)

    def _reap(self, handle: JobHandle) -> None:
        """Let a finished runner log its last lines and exit, then remove everything."""
        for container in self._job_containers(container_key(handle)):
            if container["Labels"].get(LABEL_COMPONENT) == "runner":
                with contextlib.suppress(Exception):
                    self.client.api.wait(container["Id"], timeout=REAP_GRACE)
        try:
            self._cleanup(handle)
        finally:
            with self._lock:
                self._reapers.pop(handle.job_id, None)

    async def core_seconds(self, handle: JobHandle, cores: int, wall_s: float) -> Metered:
        """CPU time of the job's containers as the engine counts it, sampled by the server."""

        def measure() -> float:
            self.cpu.sample(handle.job_id, self._job_containers(container_key(handle)), force=True)
            return self.cpu.seconds(handle.job_id)

        used = await asyncio.to_thread(measure)
        if used <= 0:  # ended before any sample: charge what it held
            return await super().core_seconds(handle, cores, wall_s)
        return Metered(used, "CPU time of the job's containers (the engine's cgroup figures)")

    async def seal(self, handle: JobHandle) -> None:
        """Stop the job's store gateway: from now on the job can neither read nor write."""
        await asyncio.to_thread(self._stop_relay, container_key(handle), self._relay_of(handle))

    async def bytes_scanned(self, handle: JobHandle) -> Metered | None:
        """The dataset bytes the job's store gateway let through."""
        path = handle.data.get("gateway_counts")
        if not path or not handle.data.get("gateway_scan"):
            return None
        try:
            counts = json.loads(await asyncio.to_thread(Path(path).read_text))
            return Metered(float(counts["scanned"]), "counted by insitu's store gateway")
        except (OSError, ValueError, KeyError):
            return None

    async def cancel(self, handle: JobHandle, grace: float = 5.0) -> None:
        await asyncio.to_thread(self._stop, container_key(handle), grace)
        await self.cleanup(handle)

    async def cleanup(self, handle: JobHandle) -> None:
        """Remove the job's containers in the background; the job is over already."""
        with self._lock:
            if handle.job_id in self._reapers:
                return
            reaper = threading.Thread(
                target=self._reap, args=(handle,), name=f"reap-{handle.job_id}", daemon=True
            )
            self._reapers[handle.job_id] = reaper
        reaper.start()

    def _kept(self, key: str, live_job_ids: set[str]) -> bool:
        """Whether a container group, relay or socket folder belongs to a live job or the pool."""
        if not is_sandbox(key):
            return key in live_job_ids
        if self.pool is not None and key in self.pool.owned():
            return True
        return self.assigned_job(key) in live_job_ids

    def _orphans(self, live_job_ids: set[str]) -> list[str]:
        containers = self.client.api.containers(
            all=True, filters={"label": f"{LABEL_SERVER}={self.server_id}"}
        )
        by_key: dict[str, list[dict[str, Any]]] = {}
        for container in containers:
            by_key.setdefault(container["Labels"].get(LABEL_JOB, ""), []).append(container)
        removed = []
        for key, group in by_key.items():
            if self._kept(key, live_job_ids):
                continue
            job_id = self.assigned_job(key) if is_sandbox(key) else key
            if job_id:
                with contextlib.suppress(Exception):
                    self._sync_logs(job_id, key, group)
            self._remove_all(key, group)
            removed.append(job_id or key)
        # Gateways of jobs that are over (and of sandboxes no one took), and their folders.
        for key in self._relays():
            if not self._kept(key, live_job_ids):
                job_id = (self.assigned_job(key) if is_sandbox(key) else key) or key
                self._stop_relay(key)
                if job_id not in removed:
                    removed.append(job_id)
        if self.socket_root.exists():
            for directory in self.socket_root.iterdir():
                if not self._kept(directory.name, live_job_ids):
                    shutil.rmtree(directory, ignore_errors=True)
        return removed

    async def cleanup_orphans(self, live_job_ids: set[str]) -> list[str]:
        return await asyncio.to_thread(self._orphans, live_job_ids)

    def _join_reapers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            reapers = list(self._reapers.values())
        for reaper in reapers:
            reaper.join(max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        if self.pool is not None:
            await asyncio.to_thread(self.pool.stop)
        await asyncio.to_thread(self._join_reapers, REAP_GRACE + 20)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
