"""CPU time of a docker job's containers, from the kernel's cgroup figures.

The server samples each running container of a job every few seconds (and once more when
the job ends) and keeps the largest figure seen per container: a container that exits
takes its last few seconds with it, but nothing the job writes changes what is counted.
Where the engine runs on this machine, the figures are read from the containers' cgroup
files (microseconds); elsewhere from the engine's stats API, which answers about once a
second per container, so those calls run side by side.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SAMPLE_EVERY = 2.0  # seconds between samples of one job's containers
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where a container's CPU usage lives, by cgroup version and driver: (path, unit in ns).
CGROUP_FILES = (
    ("cpuacct/docker/{id}/cpuacct.usage", 1),
    ("cpu,cpuacct/docker/{id}/cpuacct.usage", 1),
    ("cpuacct/system.slice/docker-{id}.scope/cpuacct.usage", 1),
    ("system.slice/docker-{id}.scope/cpu.stat", 1000),
    ("docker/{id}/cpu.stat", 1000),
)


def cgroup_usage(container_id: str, root: Path = CGROUP_ROOT) -> int | None:
    """CPU nanoseconds of a container on this machine, from its cgroup; None if not found."""
    for pattern, unit in CGROUP_FILES:
        path = root / pattern.format(id=container_id)
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.name == "cpu.stat":
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name == "usage_usec":
                    return int(value) * unit
            continue
        return int(text.strip()) * unit
    return None


class ContainerCpu:
    """CPU nanoseconds per container of each job, as the kernel counts them."""

    def __init__(self, client: Any, root: Path = CGROUP_ROOT) -> None:
        self.client = client
        self.root = root
        self._used: dict[str, dict[str, int]] = {}
        self._sampled: dict[str, float] = {}
        self._base: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def _stats_usage(self, container_id: str) -> int | None:
        with contextlib.suppress(Exception):
            stats = self.client.api.stats(container_id, stream=False, one_shot=True)
            return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
        return None

    def _usages(self, containers: list[dict[str, Any]]) -> dict[str, int]:
        ids = [c["Id"] for c in containers if c.get("State") == "running"]
        found = {cid: cgroup_usage(cid, self.root) for cid in ids}
        remote = [cid for cid, used in found.items() if used is None]
        if remote:  # not on this machine: ask the engine, side by side
            with ThreadPoolExecutor(max_workers=min(len(remote), 8)) as pool:
                found.update(zip(remote, pool.map(self._stats_usage, remote), strict=True))
        return {cid: used for cid, used in found.items() if used is not None}

    def baseline(self, job_id: str, containers: list[dict[str, Any]]) -> None:
        """What the containers had used before the job was theirs (a warm sandbox's wait)."""
        base = self._usages(containers)
        with self._lock:
            self._base[job_id] = base
            self._used[job_id] = dict(base)

    def sample(self, job_id: str, containers: list[dict[str, Any]], force: bool = False) -> None:
        """Read the CPU usage of the job's running containers (at most every few seconds)."""
        now = time.monotonic()
        if not force and now - self._sampled.get(job_id, 0.0) < SAMPLE_EVERY:
            return
        self._sampled[job_id] = now
        for container_id, used in self._usages(containers).items():
            with self._lock:
                seen = self._used.setdefault(job_id, {})
                seen[container_id] = max(seen.get(container_id, 0), used)

    def seconds(self, job_id: str) -> float:
        """CPU seconds counted for the job so far, and forget it."""
        with self._lock:
            used = self._used.pop(job_id, {})
            base = self._base.pop(job_id, {})
        self._sampled.pop(job_id, None)
        return sum(max(n - base.get(cid, 0), 0) for cid, n in used.items()) / 1e9
