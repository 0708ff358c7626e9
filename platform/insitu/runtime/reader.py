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
    """Reads blocks of a selection from a zarr array and counts the chunks it delivers.

    Dask pickles this object to the workers; each worker opens the store itself. zarr
    fetches and decodes the chunks of one block concurrently.
    """

    def __init__(
        self,
        array: Any,
        ranges: list[tuple[int, int]],
        chunks: Sequence[int],
        job: str = "",
        concurrency: int | None = None,
    ) -> None:
        self.array = array
        self.job = job
        self.chunks = tuple(chunks)
        self.concurrency = concurrency
        self.offsets = [start for start, _ in ranges]
        self.shape = tuple(stop - start for start, stop in ranges)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if self.concurrency is not None:  # read by zarr in this (worker) process
            engine.configure("zarr", self.concurrency)
        shifted = tuple(
            slice(s.start + off, s.stop + off) for s, off in zip(key, self.offsets, strict=True)
        )
        block = self.array[shifted]
        if block.size:
            touched = block_count([(s.start, s.stop) for s in shifted], self.chunks)
            metering.add(chunks=touched, job=self.job)
        return np.asarray(block)


def open_array(
    url: str,
    info: ArrayInfo,
    storage_options: dict[str, Any] | None = None,
    job: str = "",
    plan: ReadPlan | None = None,
) -> Any:
    """The zarr array behind ``info``, through a store that counts the bytes a job reads.

    The plan's engine decodes only where every byte still passes the counting store: a
    pipeline that would read the store past it (zarrs on a store it opens itself) is
    refused, and zarr's own pipeline decodes instead.
    """
    if plan is not None:
        engine.configure(plan.engine, plan.concurrency)
    options = with_environment_key(url, storage_options)
    opened = open_store(url, storage_options=options, retry_timeout=job_retry_timeout())
    store = metering.CountingStore(opened, job)
    array = zarr.open_array(store=store, path=info.path, mode="r")
    if engine.engine_of(array) != "zarr":  # it would read past the counting store
        with zarr.config.set({"codec_pipeline.path": engine.PIPELINES["zarr"]}):
            array = zarr.open_array(store=store, path=info.path, mode="r")
    return array


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
    array = open_array(url, info, storage_options, job, plan)
    block = plan.block if plan is not None else info.read_chunks
    chunks = tuple(
        chunk_boundaries(start, stop, size)
        for (start, stop), size in zip(ranges, block, strict=True)
    )
    reader = BlockReader(
        array, ranges, info.chunks, job, plan.concurrency if plan is not None else None
    )
    # Keys name the job and the selection: on a shared scheduler (a warm pool), another
    # job's blocks must never stand in for this one's.
    name = f"read-{info.path}-{tokenize(url, info.path, ranges, job, chunks)}"
    return da.from_array(reader, chunks=chunks, asarray=False, fancy=False, lock=False, name=name)
