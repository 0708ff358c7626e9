"""The local backend: each job is a process on this machine with its own Dask LocalCluster.

No Docker, no cloud; the embedded default. The runner runs in the server's Python
environment, in its own session so that cancelling kills its workers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

from insitu.backends.base import (
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
from insitu.backends.warm_pool import WarmPool, pool_environment
from insitu.config import Settings
from insitu.errors import BackendError

log = logging.getLogger("insitu.backends.local")
REAP_GRACE = 10.0  # seconds a finished runner gets to stop its cluster before it is killed
# The platform's keys, and where the server keeps its tokens and database.
_PRIVATE_PREFIXES = (
    "AWS_",
    "INSITU_STORAGE__",
    "INSITU_DATABASE_URL",
    "INSITU_TOKEN",
    "INSITU_HOME",
)


def runner_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment minus its secrets: a job never inherits the platform's keys."""
    return {k: v for k, v in environ.items() if not k.startswith(_PRIVATE_PREFIXES)}


class LocalBackend(Backend):
    """Runs ``python -m insitu.runtime`` per job as a child process group."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_dir = settings.home / "logs"
        self.host = socket.gethostname()
        self.server_id = server_id(settings)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        # CPU seconds of each job's processes, by (pid, start time), as last sampled.
        self._cpu: dict[str, dict[tuple[int, float], float]] = {}
        self.pool: WarmPool | None = None
        if settings.local.warm_pool_workers > 0:
            self.pool = WarmPool(
                settings, pool_environment(runner_environment(os.environ), self.server_id)
            )
            self.pool.start()

    def log_path(self, job_id: str) -> Path:
        """Where a job's runner output is written."""
        return job_log_path(self.settings, job_id)

    def _spawn(self, request: LaunchRequest) -> JobHandle:
        existing = self._children.get(request.job_id)
        if existing is not None and existing.poll() is None:
            return self._handle(request.job_id, existing.pid)
        running = self._runner_of(request.job_id)
        if running is not None:  # started before a restart that lost its handle: adopt it
            log.warning("adopting job %s's runner (pid %d)", request.job_id, running)
            return self._handle(request.job_id, running)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **runner_environment(os.environ),
            **request.env,
            "PYTHONUNBUFFERED": "1",
            "INSITU_JOB_ID": request.job_id,
            # Which server's job this is, without saying where the server's home is.
            "INSITU_SERVER_ID": self.server_id,
        }
        if self.pool is not None:
            try:
                pid = self.pool.launch(request, self.log_path(request.job_id), env)
            except (OSError, RuntimeError) as exc:  # the pool is sick: run the usual way
                log.warning("warm pool could not take job %s: %s", request.job_id, exc)
                pid = None
            if pid is not None:
                return self._handle(request.job_id, pid, pool=True)
        with open(self.log_path(request.job_id), "ab") as log_file:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "insitu.runtime", request.workspace_url],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                    cwd=tempfile.gettempdir(),  # never inside the server's home
                )
            except OSError as exc:
                raise BackendError(f"could not start the job's process: {exc}") from exc
        self._children[request.job_id] = process
        return self._handle(request.job_id, process.pid)

    def _runner_of(self, job_id: str) -> int | None:
        """The pid of a live runner of ``job_id`` that this server (its home) started."""
        for process in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
            info: dict[str, Any] = process.info
            if "insitu.runtime" not in (info.get("cmdline") or []):
                continue
            environ = info.get("environ") or {}
            if (
                environ.get("INSITU_SERVER_ID") == self.server_id
                and environ.get("INSITU_JOB_ID") == job_id
                and info.get("status") != psutil.STATUS_ZOMBIE
            ):
                return int(info["pid"])
        return None

    def _handle(self, job_id: str, pid: int, *, pool: bool = False) -> JobHandle:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = time.time()
        data = {"pid": pid, "create_time": created, "host": self.host, "pool": pool, "warm": pool}
        return JobHandle("local", job_id, data)

    async def start(self, request: LaunchRequest) -> JobHandle:
        return await asyncio.to_thread(self._spawn, request)

    def _process(self, handle: JobHandle) -> psutil.Process | None:
        """The live runner process of ``handle``, or None (also when its pid was reused)."""
        if handle.data.get("host") != self.host:
            return None
        try:
            process = psutil.Process(int(handle.data["pid"]))
            if abs(process.create_time() - float(handle.data["create_time"])) > 1.0:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.Error:
            return None

    def _status_one(self, handle: JobHandle) -> BackendStatus:
        child = self._children.get(handle.job_id)
        if child is not None:
            code = child.poll()
            if code is None:
                self._sample_cpu(handle)
                return BackendStatus(BackendPhase.RUNNING)
            return BackendStatus(BackendPhase.EXITED, exit_code=code)
        if handle.data.get("host") != self.host:
            return BackendStatus(
                BackendPhase.MISSING, detail=f"the job ran on host {handle.data.get('host')!r}"
            )
        if self._process(handle) is not None:
            self._sample_cpu(handle)
            return BackendStatus(BackendPhase.RUNNING)
        return BackendStatus(BackendPhase.EXITED, detail="the runner process is gone")

    async def status(self, handles: Iterable[JobHandle]) -> dict[str, BackendStatus]:
        return {h.job_id: self._status_one(h) for h in handles}

    def _sample_cpu(self, handle: JobHandle) -> None:
        """Record the CPU time of the runner and every process below it (its Dask cluster)."""
        process = self._process(handle)
        if process is None:
            return
        seen = self._cpu.setdefault(handle.job_id, {})
        with contextlib.suppress(psutil.Error):
            members = [process] if handle.data.get("pool") else [process, *process.children(True)]
            for member in members:
                with contextlib.suppress(psutil.Error):
                    times = member.cpu_times()
                    used = times.user + times.system  # each process on its own: no double count
                    key = (member.pid, member.create_time())
                    seen[key] = max(seen.get(key, 0.0), used)

    async def core_seconds(self, handle: JobHandle, cores: int, wall_s: float) -> Metered:
        """CPU time of the job's processes, sampled by the server while they ran.

        A warm-pool job shares its workers with others, so it is charged its reserved
        cores for its wall time instead.
        """
        if handle.data.get("pool"):
            return await super().core_seconds(handle, cores, wall_s)
        await asyncio.to_thread(self._sample_cpu, handle)
        used = sum(self._cpu.pop(handle.job_id, {}).values())
        return Metered(used, "CPU time of the job's processes, sampled by the server")

    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        return await asyncio.to_thread(read_log, self.log_path(handle.job_id), offset)

    def _kill(self, handle: JobHandle, grace: float) -> None:
        process = self._process(handle)
        if process is None:
            return
        group = os.getpgid(process.pid)
        members = [process, *process.children(recursive=True)]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                return
            _, alive = psutil.wait_procs(members, timeout=wait)
            if not alive:
                return
            members = alive

    async def cancel(self, handle: JobHandle, grace: float = 5.0) -> None:
        await asyncio.to_thread(self._kill, handle, grace)
        await self.cleanup(handle)

    async def cleanup(self, handle: JobHandle) -> None:
        child = self._children.pop(handle.job_id, None)
        if child is None:
            return
        if child.poll() is not None:
            child.wait()
            return
        # A runner that has written its outcome winds its Dask cluster down by itself; the
        # job is over already, so nobody waits for that. Stragglers are killed later.
        threading.Thread(
            target=self._reap, args=(handle, child), name=f"reap-{handle.job_id}", daemon=True
        ).start()

    def _reap(self, handle: JobHandle, child: subprocess.Popen[bytes]) -> None:
        try:
            child.wait(timeout=REAP_GRACE)
        except subprocess.TimeoutExpired:
            self._kill(handle, 1.0)
            child.wait()

    async def cleanup_orphans(self, live_job_ids: set[str]) -> list[str]:
        """Kill runner processes of this host whose jobs are no longer live."""
        killed: list[str] = []
        for process in psutil.process_iter(["pid", "cmdline", "environ"]):
            info: dict[str, Any] = process.info
            cmdline = info.get("cmdline") or []
            if "insitu.runtime" not in cmdline:
                continue
            environ = info.get("environ") or {}
            if environ.get("INSITU_SERVER_ID") != self.server_id:
                continue  # another insitu server's job
            job_id = environ.get("INSITU_JOB_ID")
            if job_id and job_id not in live_job_ids and job_id not in self._children:
                handle = self._handle(job_id, process.pid)
                await asyncio.to_thread(self._kill, handle, 1.0)
                killed.append(job_id)
        return killed

    def warm_pool(self) -> tuple[int, int] | None:
        if self.pool is None:
            return None
        return (1, 1 if self.pool.address() else 0)

    async def close(self) -> None:
        if self.pool is not None:
            await asyncio.to_thread(self.pool.stop)
        for job_id in list(self._children):
            child = self._children.pop(job_id)
            if child.poll() is not None:
                child.wait()
