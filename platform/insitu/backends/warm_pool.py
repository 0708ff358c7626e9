"""The local backend's warm pool: start, use and stop :mod:`insitu.runtime.pool`'s processes.

Small jobs (at most ``local.warm_pool_max_workers`` workers, no GPU, no uploaded code)
get a runner forked from the pool's zygote, connected to the pool's Dask cluster, and
start in well under a second. Jobs with uploaded code never share workers: two users'
modules of the same name would meet in one worker process. Everything else, and every job
while the pool is still starting, runs the usual way.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import psutil

from insitu.backends.base import LaunchRequest
from insitu.config import Settings
from insitu.runtime.pool import SCHEDULER_FILE, ZYGOTE_SOCKET, request_runner
from insitu.units import format_size


class WarmPool:
    """A Dask cluster that stays up and a zygote that forks runners, under ``home/pool``."""

    def __init__(self, settings: Settings, environment: dict[str, str]) -> None:
        self.settings = settings
        self.config = settings.local
        self.directory = settings.home / "pool"
        self.environment = environment
        self._processes: list[subprocess.Popen[bytes]] = []

    def _command(self, role: str) -> list[str]:
        return [
            sys.executable, "-m", "insitu.runtime.pool", role, "--dir", str(self.directory),
            "--workers", str(self.config.warm_pool_workers),
            "--threads", str(self.config.warm_pool_threads),
            "--memory", format_size(self.config.warm_pool_memory).replace(" ", ""),
        ]  # fmt: skip

    def stop_stale(self) -> list[int]:
        """Stop the pool processes a previous server with this home left running."""
        stopped = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = process.info.get("cmdline") or []
            if "insitu.runtime.pool" in cmdline and str(self.directory) in cmdline:
                if process.pid in {p.pid for p in self._processes}:
                    continue
                with contextlib.suppress(psutil.Error):
                    process.kill()
                    stopped.append(process.pid)
        return stopped

    def start(self) -> None:
        """Start the cluster and the zygote (they get ready in a few seconds)."""
        self.stop_stale()
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in (SCHEDULER_FILE, ZYGOTE_SOCKET):
            (self.directory / name).unlink(missing_ok=True)
        for role in ("cluster", "zygote"):
            with open(self.directory / f"{role}.log", "ab") as log:
                self._processes.append(
                    subprocess.Popen(
                        self._command(role),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        env=self.environment,
                        cwd=self.directory,
                    )
                )

    def address(self) -> str | None:
        """The pool's scheduler address once both processes are ready, else None."""
        if len(self._processes) != 2 or any(p.poll() is not None for p in self._processes):
            return None
        scheduler = self.directory / SCHEDULER_FILE
        if not scheduler.exists() or not (self.directory / ZYGOTE_SOCKET).exists():
            return None
        return scheduler.read_text().strip() or None

    def eligible(self, request: LaunchRequest) -> bool:
        res = request.resources
        return (
            res.workers <= self.config.warm_pool_max_workers
            and res.threads_per_worker <= self.config.warm_pool_threads
            and not res.gpu
            and not request.has_code
        )

    def launch(self, request: LaunchRequest, log: Path, env: dict[str, str]) -> int | None:
        """Fork a runner for the job; None when the pool cannot take it now."""
        address = self.address()
        if address is None or not self.eligible(request):
            return None
        return request_runner(
            self.directory,
            {"workspace": request.workspace_url, "scheduler": address, "log": str(log), "env": env},
        )

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for name in (SCHEDULER_FILE, ZYGOTE_SOCKET):
            (self.directory / name).unlink(missing_ok=True)


def pool_environment(base: dict[str, str], server: str) -> dict[str, str]:
    """The pool processes' environment: the runners' (no platform secrets), marked."""
    return {**base, "PYTHONUNBUFFERED": "1", "INSITU_SERVER_ID": server}
