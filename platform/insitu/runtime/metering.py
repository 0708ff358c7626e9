"""Count the bytes and chunks a job reads, in whichever process reads them.

Bytes are counted as they pass a :class:`CountingStore`, or, for a pipeline that reads the
store itself, from the stored size of each chunk a read fetched (:func:`count_stored`).

Each worker process keeps its own counters, one set per job (workers of a warm pool serve
several jobs at once); the runner sums its job's counters over the cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

_lock = threading.Lock()
_counts: dict[str, dict[str, int]] = {}
# Pids repeat across containers (every worker may be pid 1): a process is its pid plus a
# token drawn when this module was imported.
_TOKEN = uuid.uuid4().hex


def add(nbytes: int = 0, chunks: int = 0, job: str = "") -> None:
    """Record bytes fetched from the store, or blocks delivered to the analysis, for a job."""
    with _lock:
        counts = _counts.setdefault(job, {"bytes": 0, "chunks": 0})
        counts["bytes"] += nbytes
        counts["chunks"] += chunks


def reset(job: str = "") -> None:
    """Start counting a job from zero."""
    with _lock:
        _counts[job] = {"bytes": 0, "chunks": 0}


def forget(job: str = "") -> None:
    """Drop a finished job's counters (a long-lived worker serves many jobs)."""
    with _lock:
        _counts.pop(job, None)


def snapshot(job: str = "") -> dict[str, Any]:
    """This process' counters of a job, tagged with who it is so threads count once."""
    with _lock:
        counts = _counts.get(job, {"bytes": 0, "chunks": 0})
        return {**counts, "pid": os.getpid(), "process": _TOKEN}


def total(snapshots: Any) -> dict[str, int]:
    """Sum snapshots from several workers, once per process."""
    per_process = {(s["pid"], s.get("process")): s for s in snapshots}
    return {
        "bytes": sum(s["bytes"] for s in per_process.values()),
        "chunks": sum(s["chunks"] for s in per_process.values()),
    }


class CountingStore(WrapperStore[Store]):
    """A read-through store that counts the bytes every ``get`` returns, for one job."""

    def __init__(self, store: Store, job: str = "") -> None:
        super().__init__(store)
        self.job = job

    def _with_store(self, store: Store) -> CountingStore:
        return CountingStore(store, self.job)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        buffer = await self._store.get(key, prototype, byte_range)
        if buffer is not None:
            add(nbytes=len(buffer), job=self.job)
        return buffer

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Any
    ) -> list[Buffer | None]:
        buffers = await self._store.get_partial_values(prototype, key_ranges)
        add(nbytes=sum(len(b) for b in buffers if b is not None), job=self.job)
        return buffers

    def __reduce__(self) -> tuple[Any, ...]:
        return (CountingStore, (self._store, self.job))


def whole_objects(
    region: Sequence[tuple[int, int]], objects: Sequence[int], extent: Sequence[int]
) -> bool:
    """Whether the half-open ``region`` is made of whole stored objects (shards) of ``objects``
    shape in an array of shape ``extent``: the edge objects may end at the array's edge."""
    return all(
        start % size == 0 and (stop % size == 0 or stop == end)
        for (start, stop), size, end in zip(region, objects, extent, strict=True)
    )


def stored_keys(array: Any, region: Sequence[tuple[int, int]], objects: Sequence[int]) -> list[str]:
    """Store keys of the stored objects (chunks, or shards) of ``objects`` shape that the
    half-open ``region`` touches."""
    axes = [
        range(start // size, (stop - 1) // size + 1)
        for (start, stop), size in zip(region, objects, strict=True)
    ]
    prefix = array.store_path.path
    keys = [array.metadata.encode_chunk_key(coords) for coords in itertools.product(*axes)]
    return [f"{prefix}/{key}" if prefix else key for key in keys]


async def _sizes(store: Store, keys: list[str], concurrency: int) -> int:
    gate = asyncio.Semaphore(concurrency)

    async def size(key: str) -> int:
        async with gate:
            try:
                return int(await store.getsize(key))
            except FileNotFoundError:  # never written: the fill value, nothing fetched
                return 0

    return sum(await asyncio.gather(*(size(key) for key in keys)))


def count_stored(
    array: Any,
    region: Sequence[tuple[int, int]],
    objects: Sequence[int],
    job: str = "",
    concurrency: int = 32,
) -> int:
    """Count, for ``job``, the stored size of every object a read of ``region`` fetched.

    For reads that pass no :class:`CountingStore` (a pipeline that reads the store itself,
    such as zarrs): the store is asked each object's size, a stat of a file or an S3 HEAD.
    """
    keys = stored_keys(array, region, objects)
    nbytes = sync(_sizes(array.store_path.store, keys, max(1, concurrency)))
    add(nbytes=nbytes, job=job)
    return nbytes
