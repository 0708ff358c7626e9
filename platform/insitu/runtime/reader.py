"""Open a job's selection as a lazy dask array that the workers read themselves."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from insitu.catalog import ArrayInfo, chunk_boundaries
from insitu.runtime import metering
from insitu.storage import job_retry_timeout, open_store


class BlockReader:
    """Reads blocks of a selection from a zarr array and counts what it delivers.

    Dask pickles this object to the workers; each worker opens the store itself.
    """

    def __init__(self, array: Any, ranges: list[tuple[int, int]], job: str = "") -> None:
        self.array = array
        self.job = job
        self.offsets = [start for start, _ in ranges]
        self.shape = tuple(stop - start for start, stop in ranges)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        shifted = tuple(
            slice(s.start + off, s.stop + off) for s, off in zip(key, self.offsets, strict=True)
        )
        block = self.array[shifted]
        if block.size:
            metering.add(chunks=1, job=self.job)
        return np.asarray(block)


def open_array(
    url: str, info: ArrayInfo, storage_options: dict[str, Any] | None = None, job: str = ""
) -> Any:
    """The zarr array behind ``info``, through a store that counts the bytes a job reads."""
    opened = open_store(url, storage_options=storage_options, retry_timeout=job_retry_timeout())
    store = metering.CountingStore(opened, job)
    return zarr.open_array(store=store, path=info.path, mode="r")


def open_selection(
    url: str,
    info: ArrayInfo,
    ranges: list[tuple[int, int]],
    storage_options: dict[str, Any] | None = None,
    job: str = "",
) -> da.Array:
    """A lazy dask array of the selection, one block per stored chunk (or shard)."""
    array = open_array(url, info, storage_options, job)
    chunks = tuple(
        chunk_boundaries(start, stop, size)
        for (start, stop), size in zip(ranges, info.read_chunks, strict=True)
    )
    reader = BlockReader(array, ranges, job)
    # Keys name the job and the selection: on a shared scheduler (a warm pool), another
    # job's blocks must never stand in for this one's.
    name = f"read-{info.path}-{tokenize(url, info.path, ranges, job)}"
    return da.from_array(reader, chunks=chunks, asarray=False, fancy=False, lock=False, name=name)
