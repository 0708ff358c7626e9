"""Read blocks: how a selection is cut into Dask tasks, by bytes rather than by chunks.

One task per stored chunk floods the scheduler when an EM volume has millions of small
chunks, and one task per shard can exceed a worker's memory. A read block is a box of
whole chunks (whole shards where a shard fits) grown towards a target decoded size, so a
task reads many chunks concurrently and the graph stays small. Blocks tile the array from
its origin, so their edges fall on chunk (and shard) edges wherever the selection starts.

The server plans the block when it accepts a job and hands it to the runtime in the job's
input; both sides therefore agree on the number of tasks and chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from insitu.catalog import ArrayInfo
from insitu.config import ReaderSettings
from insitu.units import parse_size

# A task holds its decoded block and the analysis' intermediates (a float64 copy of a
# uint16 block is 4x, plus the reduction's own arrays): a worker's memory is shared by
# its threads, each running one task, with this much room per decoded byte.
MEMORY_PER_BLOCK_BYTE = 8
# A selection smaller than (block size x cores x this) is cut finer, so that no core idles
# while another reads the last big block.
TASKS_PER_CORE = 4
DEFAULT_MEMORY = "2GiB"  # a spec's memory_per_worker when it has none


def units_touched(start: int, stop: int, unit: int) -> int:
    """How many ``unit``-sized cells of an axis the half-open range [start, stop) meets."""
    return 0 if stop <= start else (stop - 1) // unit - start // unit + 1


def target_bytes(
    block_bytes: int,
    memory_per_worker: int,
    threads_per_worker: int,
    selection_bytes: int | None = None,
    cores: int = 1,
) -> int:
    """The decoded size a block should approach: the setting, capped by a task's memory and,
    for a small selection, by giving every core :data:`TASKS_PER_CORE` blocks to share."""
    per_task = memory_per_worker // (max(threads_per_worker, 1) * MEMORY_PER_BLOCK_BYTE)
    target = min(block_bytes, per_task)
    if selection_bytes is not None:
        target = min(target, selection_bytes // (TASKS_PER_CORE * max(cores, 1)))
    return max(1, target)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_block(array: ArrayInfo, ranges: Sequence[Sequence[int]], target: int) -> list[int]:
    """The block shape (in elements) for reading ``ranges`` of ``array`` near ``target`` bytes.

    The block is a whole number of shards when a shard fits the target; otherwise a whole
    number of chunks that divides its shard, so no task straddles two shards. It grows one
    axis at a time, always the one whose block is shortest, never past the selection.
    """
    itemsize = np.dtype(array.dtype).itemsize
    chunks = list(array.chunks)
    shards = list(array.shards) if array.shards else None
    if shards and math.prod(shards) * itemsize <= target:
        unit, per_axis_limit = shards, None
    else:
        unit = chunks
        per_axis_limit = [s // c for s, c in zip(shards, chunks, strict=True)] if shards else None
    limits = [
        units_touched(int(start), int(stop), u)
        for (start, stop), u in zip(ranges, unit, strict=True)
    ]
    if per_axis_limit is not None:
        limits = [min(n, cap) for n, cap in zip(limits, per_axis_limit, strict=True)]
    # Allowed multiples per axis: any up to the limit, or divisors of the shard's chunk count.
    allowed = [
        _divisors(per_axis_limit[i]) if per_axis_limit is not None else None
        for i in range(len(unit))
    ]
    multiples = [1] * len(unit)
    unit_bytes = math.prod(unit) * itemsize
    growing = set(range(len(unit)))
    while growing:
        axis = min(growing, key=lambda i: (multiples[i] * unit[i], i))
        others = unit_bytes * math.prod(multiples) // multiples[axis]
        fits = max(1, target // max(others, 1))
        wanted = min(multiples[axis] * 2, limits[axis], fits)
        options = allowed[axis]
        if options is not None:
            wanted = max(d for d in options if d <= max(wanted, 1))
        if wanted <= multiples[axis]:
            growing.discard(axis)
            continue
        multiples[axis] = wanted
    return [u * m for u, m in zip(unit, multiples, strict=True)]


def block_count(ranges: Sequence[Sequence[int]], block: Sequence[int]) -> int:
    """How many blocks (Dask tasks) the selection is cut into."""
    return math.prod(
        units_touched(int(start), int(stop), b)
        for (start, stop), b in zip(ranges, block, strict=True)
    )


class ReadPlan(BaseModel):
    """How the runtime reads a job's selection; planned by the server at submit."""

    block: list[int] = Field(description="Shape of one read block (one Dask task), in elements.")
    engine: str = Field("auto", description="Codec pipeline: 'auto', 'zarrs' or 'zarr'.")
    concurrency: int = Field(32, ge=1, description="Chunks of a block fetched at once.")


def read_plan(
    array: ArrayInfo,
    ranges: Sequence[Sequence[int]],
    memory_per_worker: int,
    threads_per_worker: int,
    workers: int = 1,
    reader: ReaderSettings | None = None,
) -> ReadPlan:
    """The read plan of a job on ``array[ranges]`` with ``workers`` of the given size."""
    reader = reader or ReaderSettings()
    selection = math.prod(int(stop) - int(start) for start, stop in ranges)
    target = target_bytes(
        reader.block_bytes,
        memory_per_worker,
        threads_per_worker,
        selection * np.dtype(array.dtype).itemsize,
        workers * threads_per_worker,
    )
    return ReadPlan(
        block=plan_block(array, ranges, target),
        engine=reader.engine,
        concurrency=reader.concurrency,
    )


def plan_for_spec(
    array: ArrayInfo,
    ranges: Sequence[Sequence[int]],
    spec: dict[str, Any],
    reader: ReaderSettings | None = None,
) -> ReadPlan:
    """The read plan of a job from its spec (as stored: resources with sizes in bytes)."""
    resources = spec.get("resources", {})
    return read_plan(
        array,
        ranges,
        int(resources.get("memory_per_worker") or parse_size(DEFAULT_MEMORY)),
        int(resources.get("threads_per_worker") or 1),
        int(resources.get("workers") or 1),
        reader,
    )
