"""Count the bytes and chunks a job reads, in whichever process reads them.

Each worker process keeps its own counters; the runner sums them over the cluster.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

_lock = threading.Lock()
_counts = {"bytes": 0, "chunks": 0}
# Pids repeat across containers (every worker may be pid 1): a process is its pid plus a
# token drawn when this module was imported.
_TOKEN = uuid.uuid4().hex


def add(nbytes: int = 0, chunks: int = 0) -> None:
    """Record bytes fetched from the store, or blocks delivered to the analysis."""
    with _lock:
        _counts["bytes"] += nbytes
        _counts["chunks"] += chunks


def reset() -> None:
    """Start counting from zero (a new job on this worker)."""
    with _lock:
        _counts.update(bytes=0, chunks=0)


def snapshot() -> dict[str, Any]:
    """This process' counters, tagged with who it is so that threads are not counted twice."""
    with _lock:
        return {**_counts, "pid": os.getpid(), "process": _TOKEN}


def total(snapshots: Any) -> dict[str, int]:
    """Sum snapshots from several workers, once per process."""
    per_process = {(s["pid"], s.get("process")): s for s in snapshots}
    return {
        "bytes": sum(s["bytes"] for s in per_process.values()),
        "chunks": sum(s["chunks"] for s in per_process.values()),
    }


class CountingStore(WrapperStore[Store]):
    """A read-through store that counts the bytes every ``get`` returns."""

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        buffer = await self._store.get(key, prototype, byte_range)
        if buffer is not None:
            add(nbytes=len(buffer))
        return buffer

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Any
    ) -> list[Buffer | None]:
        buffers = await self._store.get_partial_values(prototype, key_ranges)
        add(nbytes=sum(len(b) for b in buffers if b is not None))
        return buffers

    def __reduce__(self) -> tuple[Any, ...]:
        return (CountingStore, (self._store,))
