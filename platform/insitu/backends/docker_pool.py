"""The docker backend's warm pool: sandboxes started before their jobs, each used once.

A sandbox is everything a docker job runs, started ahead: a store gateway process on the
server's side that does not yet know its job (``python -m insitu.gateway --await-config``),
and the job's containers (the network-namespace holder, a Dask scheduler, the workers, and
a runner that has imported the runtime and waits for its assignment). Taking one for a job
writes two files: the gateway's policy and credentials (in the server's home, which no
container sees) and the runner's assignment (in the sandbox's read-only socket folder).
The job then starts in well under a second, with the same isolation as a cold start:
its own network namespace, its own scheduler and workers, no store credential. A sandbox
is never given to a second job: it is removed with its job, and the pool starts another.

A job fits the pool when it asks for the pool's image, workers and threads (and at most its
memory), no GPU, and both its dataset and its workspace are in object storage (local
folders would have to be mounted when the containers are created). A job that fits waits,
admitted, for the next sandbox (at most ``WAIT_AT_MOST``; the pool starts ``STARTERS`` at
a time): under a course's load, starting every job cold at once would make each of them,
and the pool's next sandboxes, wait for the same few cores. Any other job starts cold,
as does a job that fits while the pool cannot start sandboxes.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from insitu.backends.base import LaunchRequest
from insitu.backends.docker_specs import StoreRoute

if TYPE_CHECKING:
    from insitu.backends.docker_backend import DockerBackend

log = logging.getLogger(__name__)

KEY_PREFIX = "pool-"
RETRY_AFTER = 10.0  # seconds before trying again after a sandbox failed to start
STARTERS = 2  # sandboxes started side by side (the engine and the imports overlap)
WAIT_AT_MOST = 600.0  # seconds a fitting job waits for a healthy pool before it starts cold


@dataclass(frozen=True)
class Sandbox:
    """One started sandbox, waiting for its job."""

    key: str  # its containers' job label and its socket folder's name
    image_id: str
    gateway_pid: int
    gateway_create_time: float
    aliases: tuple[str, ...]


def is_sandbox(key: str) -> bool:
    """Whether a container group's key names a warm sandbox (not a cold job)."""
    return key.startswith(KEY_PREFIX)


class SandboxPool:
    """Keeps ``docker.warm_pool_size`` sandboxes ready; hands each to one job."""

    def __init__(self, backend: DockerBackend) -> None:
        self.backend = backend
        self.config = backend.config
        self.size = self.config.warm_pool_size
        self._ready: deque[Sandbox] = deque()
        self._creating: set[str] = set()
        self._changed = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.image_id: str | None = None  # the sandboxes' image, once one started
        self.aliases: tuple[str, ...] = ()
        self._healthy = True  # the last sandbox started
        self._waits: dict[str, float] = {}  # job id: when it first asked

    # -- the pool's own sandboxes -------------------------------------------------------

    def owned(self) -> set[str]:
        """Keys of the sandboxes that are the pool's own: ready or being started."""
        with self._changed:
            return {s.key for s in self._ready} | set(self._creating)

    def ready(self) -> int:
        with self._changed:
            return len(self._ready)

    def start(self) -> None:
        """Start filling the pool in the background."""
        for index in range(min(STARTERS, self.size)):
            thread = threading.Thread(
                target=self._fill, name=f"docker-warm-pool-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _wanted(self) -> bool:
        return len(self._ready) + len(self._creating) < self.size

    def _fill(self) -> None:
        while True:
            with self._changed:
                while not self._stopping and not self._wanted():
                    self._changed.wait(1.0)
                if self._stopping:
                    return
                key = f"{KEY_PREFIX}{secrets.token_hex(6)}"
                self._creating.add(key)
            sandbox = None
            try:
                sandbox = self.backend.create_sandbox(key, lambda: self._stopping)
            except Exception as exc:
                if not self._stopping:
                    log.warning("could not start a warm sandbox: %s", exc)
            with self._changed:
                self._creating.discard(key)
                self._healthy = sandbox is not None or self._stopping
                if sandbox is not None:
                    self.image_id, self.aliases = sandbox.image_id, sandbox.aliases
                if sandbox is not None and not self._stopping:
                    self._ready.append(sandbox)
                    self._changed.notify_all()
                elif sandbox is None and not self._stopping:
                    self._changed.wait(RETRY_AFTER)
            if sandbox is not None and self._stopping:
                self.backend.remove_sandbox(sandbox.key)

    def wait_ready(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` sandboxes are ready (for tests and benchmarks)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._ready) >= count, timeout)

    # -- handing one out ----------------------------------------------------------------

    def fits(self, request: LaunchRequest, image_id: str, route: StoreRoute | None) -> bool:
        """Whether ``request`` can run in one of this pool's sandboxes."""
        res = request.resources
        urls = (request.dataset_url or "", request.workspace_url)
        return (
            route is not None
            and all(u.startswith("s3://") for u in urls)
            and res.workers == self.config.warm_pool_workers
            and res.threads_per_worker == self.config.warm_pool_threads
            and res.memory_per_worker <= self.config.warm_pool_memory
            and not res.gpu
            and image_id == self.image_id
            and set(route.aliases) <= set(self.aliases)
        )

    def should_wait(self, job_id: str) -> bool:
        """Whether a fitting job with no sandbox ready now should wait for the next one."""
        now = time.monotonic()
        with self._changed:
            first = self._waits.setdefault(job_id, now)
            if self._healthy and not self._stopping and now - first < WAIT_AT_MOST:
                return True
            self._waits.pop(job_id, None)
            return False

    def take(self, job_id: str, image_id: str) -> Sandbox | None:
        """A ready sandbox of ``image_id`` for a job that :meth:`fits` (no longer the
        pool's), or None."""
        while not self._stopping:
            with self._changed:
                found = next((s for s in self._ready if s.image_id == image_id), None)
                if found is None:
                    return None
                self._ready.remove(found)
                self._waits.pop(job_id, None)
                self._changed.notify_all()  # start its replacement
            if self.backend.sandbox_alive(found):
                return found
            log.warning("warm sandbox %s had stopped; removing it", found.key)
            self.backend.remove_sandbox(found.key)
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop filling and remove the sandboxes no job took."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        with self._changed:
            idle = list(self._ready)
            self._ready.clear()
        for sandbox in idle:
            with contextlib.suppress(Exception):
                self.backend.remove_sandbox(sandbox.key)
