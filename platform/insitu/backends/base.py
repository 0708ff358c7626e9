"""The contract every execution backend (local, docker, kubernetes) implements.

A backend only starts, watches, stops and cleans up a job's infrastructure. The
job's own story (progress, results, the outcome) is in its workspace, which the
runtime writes the same way on every backend. Methods are async; backends that
call blocking SDKs do so through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from insitu.config import Settings
from insitu.spec import Resources

LABEL_JOB = "insitu.io/job-id"
LABEL_COMPONENT = "insitu.io/component"
LOG_CHUNK = 4 << 20  # most log bytes one request returns


def server_id(settings: Settings) -> str:
    """A short, stable name of this server (its home): labels tell its jobs from others'."""
    return hashlib.sha256(str(settings.home).encode()).hexdigest()[:12]


def job_log_path(settings: Settings, job_id: str) -> Path:
    """Where a job's log is kept on the server, whatever the backend."""
    return settings.home / "logs" / f"{job_id}.log"


def read_log(path: Path, offset: int) -> tuple[bytes, int]:
    """Log bytes of ``path`` from ``offset`` on, and the offset to ask for next."""
    if not path.exists() or offset >= path.stat().st_size:
        return b"", offset
    with open(path, "rb") as log:
        log.seek(offset)
        data = log.read(LOG_CHUNK)
    return data, offset + len(data)


@dataclass(frozen=True)
class JobHandle:
    """Opaque, persisted reference to a job's infrastructure; any process can act on it."""

    backend: str
    job_id: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any] | str) -> JobHandle:
        if isinstance(value, str):
            value = json.loads(value)
        assert isinstance(value, dict)
        return cls(backend=value["backend"], job_id=value["job_id"], data=dict(value["data"]))


@dataclass(frozen=True)
class LaunchRequest:
    """What a backend needs to start one job."""

    job_id: str
    workspace_url: str
    resources: Resources
    timeout_s: float
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    dataset_url: str | None = None
    tenant: str = "default"  # whose quota and namespace the job runs under
    has_code: bool = False  # an uploaded code bundle (never run on shared workers)
    # What the job may write through its gateway: bytes in all (None: the backend's
    # default for results and reports), and objects of its outputs (insitu.Output).
    max_write_bytes: int | None = None
    max_output_objects: int = 0


class BackendPhase(str, Enum):
    """What the backend sees of a job's infrastructure."""

    PENDING = "pending"  # accepted, not yet running (pulling, scheduling)
    RUNNING = "running"
    EXITED = "exited"  # the runner ended; the workspace tells how
    MISSING = "missing"  # nothing found for this handle


@dataclass(frozen=True)
class BackendStatus:
    phase: BackendPhase
    exit_code: int | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Metered:
    """A figure the backend measured, and how."""

    value: float
    source: str


class Backend(ABC):
    """Starts and stops jobs' Dask clusters and runners."""

    name: ClassVar[str]

    @abstractmethod
    async def start(self, request: LaunchRequest) -> JobHandle:
        """Start the job's cluster and runner; idempotent for the same job id."""

    @abstractmethod
    async def status(self, handles: Iterable[JobHandle]) -> dict[str, BackendStatus]:
        """The status of many jobs at once, keyed by job id."""

    @abstractmethod
    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        """Log bytes from ``offset`` on, and the offset to ask for next."""

    @abstractmethod
    async def cancel(self, handle: JobHandle, grace: float = 5.0) -> None:
        """Stop everything the job runs; give it ``grace`` seconds to exit cleanly."""

    @abstractmethod
    async def cleanup(self, handle: JobHandle) -> None:
        """Remove what the job left behind (containers, pods); keep its workspace."""

    async def core_seconds(self, handle: JobHandle, cores: int, wall_s: float) -> Metered:
        """Core-seconds the job used, measured on the server's side, never told by the job.

        The default charges what the job held: its reserved cores for its wall time.
        """
        return Metered(max(cores, 1) * max(wall_s, 0.0), "reserved cores x wall time")

    async def seal(self, handle: JobHandle) -> None:  # noqa: B027 (optional hook)
        """End the job's access to the store before the server reads what it left.

        Backends whose jobs reach the store only through the server (docker's gateway) stop
        that access, so nothing the job does afterwards can change its results.
        """

    async def bytes_scanned(self, handle: JobHandle) -> Metered | None:
        """Dataset bytes the job read as counted on the trusted side, or None where the
        bytes do not pass it (then the job's own count is believed up to a bound)."""
        return None

    def warm_pool(self) -> tuple[int, int] | None:
        """The warm pool's size and how many of it are ready now; None without a pool."""
        return None

    def check_image(self, image: str | None) -> None:  # noqa: B027 (optional hook)
        """Refuse, with a message, an image this backend cannot run jobs in (blocking)."""

    def check_resources(self, resources: Resources) -> None:  # noqa: B027 (optional hook)
        """Refuse, with a message, resources this backend could never give a job."""

    async def cleanup_orphans(self, live_job_ids: set[str]) -> list[str]:
        """Remove infrastructure of jobs not in ``live_job_ids``; return their ids."""
        return []

    async def close(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Release the backend's own resources."""
