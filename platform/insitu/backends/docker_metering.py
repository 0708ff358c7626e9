"""CPU time of a docker job's containers, from the engine's cgroup figures.

The server samples each running container of a job every few seconds (and once more when
the job ends) and keeps the largest figure seen per container: a container that exits
takes its last few seconds with it, but nothing the job writes changes what is counted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

SAMPLE_EVERY = 2.0  # seconds between samples of one job's containers


class ContainerCpu:
    """CPU nanoseconds per container of each job, as the engine reports them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._used: dict[str, dict[str, int]] = {}
        self._sampled: dict[str, float] = {}
        self._lock = threading.Lock()

    def sample(self, job_id: str, containers: list[dict[str, Any]], force: bool = False) -> None:
        """Read the CPU usage of the job's running containers (at most every few seconds)."""
        now = time.monotonic()
        if not force and now - self._sampled.get(job_id, 0.0) < SAMPLE_EVERY:
            return
        self._sampled[job_id] = now
        for container in containers:
            if container.get("State") != "running":
                continue
            with contextlib.suppress(Exception):
                stats = self.client.api.stats(container["Id"], stream=False, one_shot=True)
                used = int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
                with self._lock:
                    seen = self._used.setdefault(job_id, {})
                    seen[container["Id"]] = max(seen.get(container["Id"], 0), used)

    def seconds(self, job_id: str) -> float:
        """CPU seconds counted for the job so far, and forget it."""
        with self._lock:
            used = self._used.pop(job_id, {})
        self._sampled.pop(job_id, None)
        return sum(used.values()) / 1e9
