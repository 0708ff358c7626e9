"""Open a job's selection as a lazy dask array that the workers read themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from insitu.blocks import ReadPlan, block_count
from insitu.catalog import ArrayInfo, chunk_boundaries
from insitu.runtime import engine, metering
from insitu.storage import job_retry_timeout, open_store, with_environment_key


class BlockReader:
    """Reads blocks of a selection from a zarr array and counts what it delivers.

    Dask pickles this object to the workers; each worker opens the store itself. The ``fast``
    array (zarrs, reading the store in Rust, see :mod:`insitu.runtime.engine`) reads
    every block whose objects are fetched whole, and the stored size of those objects is
    counted; ``metered`` (zarr's pipeline through a :class:`~insitu.runtime.metering.CountingStore`)
    reads the rest, and every block when zarrs is not in force. The chunks of one block are
    fetched and decoded concurrently either way.
    """

    def __init__(
        self,
        metered: Any,
        ranges: list[tuple[int, int]],
        info: ArrayInfo,
        job: str = "",
        concurrency: int | None = None,
        fast: Any | None = None,
    ) -> None:
        self.metered = metered
        self.fast = fast
        self.job = job
        self.chunks = tuple(info.chunks)
        self.objects = tuple(info.read_chunks)  # what one GET fetches: a chunk, or a shard
        self.sharded = info.shards is not None
        self.extent = tuple(info.shape)
        self.concurrency = concurrency
        self.offsets = [start for start, _ in ranges]
        self.shape = tuple(stop - start for start, stop in ranges)
        self.dtype = metered.dtype
        self.ndim = len(self.shape)

    def reads_fast(self, region: Sequence[tuple[int, int]]) -> bool:
        """Whether zarrs reads ``region``: it is in force, and the region's objects are
        fetched whole (any part of an unsharded chunk fetches it whole; a part of a shard
        fetches its index and some chunks, which only the counting store can measure)."""
        if self.fast is None:
            return False
        return not self.sharded or metering.whole_objects(region, self.objects, self.extent)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        region = [(s.start + off, s.stop + off) for s, off in zip(key, self.offsets, strict=True)]
        shifted = tuple(slice(start, stop) for start, stop in region)
        fast = self.fast if self.reads_fast(region) else None
        if self.concurrency is not None:  # read in this (worker) process
            engine.configure("zarr" if fast is None else "zarrs", self.concurrency)
        if fast is not None:
            block = fast[shifted]
            if block.size:
                metering.count_stored(fast, region, self.objects, self.job, self.concurrency or 32)
        else:
            block = self.metered[shifted]
        if block.size:
            metering.add(chunks=block_count(region, self.chunks), job=self.job)
        return np.asarray(block)


#: Below this many decoded bytes per stored object, reads from an object store stay on
#: zarr's pipeline: counting zarrs' reads takes one HEAD per object, and on 64^3 uint8
#: chunks (256 KiB) that made the scan slower than zarr's (docs/benchmarks.md, the codec
#: pipelines); on 2 MiB chunks and larger, and on local files (a stat), zarrs is faster.
REMOTE_ZARRS_MIN_OBJECT_BYTES = 1 << 20


def _for_zarrs(store: Any) -> Any:
    """The store as zarrs recognises it: zarr's own ObjectStore class, not a subclass."""
    if isinstance(store, zarr.storage.ObjectStore) and type(store) is not zarr.storage.ObjectStore:
        return zarr.storage.ObjectStore(store.store, read_only=True)
    return store


def open_arrays(
    url: str,
    info: ArrayInfo,
    storage_options: dict[str, Any] | None = None,
    job: str = "",
    plan: ReadPlan | None = None,
) -> tuple[Any, Any | None]:
    """The array behind ``info`` twice: metered, and decoded by zarrs (None where it is not).

    The metered array passes every byte through a counting store, which zarrs cannot read
    (it opens the store itself), so it always decodes with zarr's pipeline. The fast one
    reads the store unwrapped; the :class:`BlockReader` counts its reads by stored size.
    On an object store, arrays of small objects (under ``REMOTE_ZARRS_MIN_OBJECT_BYTES``)
    get no fast array: each object's count would cost a request of its own.
    """
    chosen = engine.configure(plan.engine, plan.concurrency) if plan is not None else "zarr"
    options = with_environment_key(url, storage_options)
    opened = open_store(url, storage_options=options, retry_timeout=job_retry_timeout())
    fast = None
    if chosen == "zarrs":
        fast = zarr.open_array(store=_for_zarrs(opened), path=info.path, mode="r")
        if engine.engine_of(fast) != "zarrs":  # a store zarrs cannot open itself
            fast = None
        elif not isinstance(opened, zarr.storage.LocalStore) and info.read_bytes < (
            REMOTE_ZARRS_MIN_OBJECT_BYTES
        ):
            fast = None  # one HEAD per small object costs more than zarrs saves
    with zarr.config.set({"codec_pipeline.path": engine.PIPELINES["zarr"]}):
        metered = zarr.open_array(
            store=metering.CountingStore(opened, job), path=info.path, mode="r"
        )
    return metered, fast


def open_selection(
    url: str,
    info: ArrayInfo,
    ranges: list[tuple[int, int]],
    storage_options: dict[str, Any] | None = None,
    job: str = "",
    plan: ReadPlan | None = None,
) -> da.Array:
    """A lazy dask array of the selection, one task per read block of the ``plan``.

    A block is a whole number of chunks per axis (see :func:`insitu.blocks.plan_block`);
    blocks tile the array from its origin, so their edges are chunk edges. Without a plan,
    one task per stored chunk (or shard).
    """
    metered, fast = open_arrays(url, info, storage_options, job, plan)
    block = plan.block if plan is not None else info.read_chunks
    chunks = tuple(
        chunk_boundaries(start, stop, size)
        for (start, stop), size in zip(ranges, block, strict=True)
    )
    reader = BlockReader(
        metered,
        ranges,
        info,
        job,
        plan.concurrency if plan is not None else None,
        fast,
    )
    # Keys name the job and the selection: on a shared scheduler (a warm pool), another
    # job's blocks must never stand in for this one's.
    name = f"read-{info.path}-{tokenize(url, info.path, ranges, job, chunks)}"
    return da.from_array(reader, chunks=chunks, asarray=False, fancy=False, lock=False, name=name)
