"""The most bytes a selection can honestly have read, computed by the server at submit.

Where the bytes do not pass the trusted side (local files on the local backend), the
job's own count is believed only up to this bound, so a forged ``bytes_scanned`` cannot
lift the fraction-of-scan egress cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from insitu.catalog import ArrayInfo

CHUNK_OVERHEAD = 4096  # codec headers and shard indexes per chunk, generously


def chunks_touched(
    array: ArrayInfo, ranges: Sequence[Sequence[int]], chunks: Sequence[int] | None = None
) -> int:
    """How many stored chunks (or blocks of ``chunks``) the half-open ``ranges`` intersect."""
    count = 1
    for (start, stop), chunk in zip(ranges, chunks or array.chunks, strict=True):
        if stop <= start:
            return 0
        count *= (stop - 1) // chunk - start // chunk + 1
    return count


def selection_bound(array: ArrayInfo, ranges: Sequence[Sequence[int]]) -> int:
    """Bytes of every chunk the selection touches, decoded, plus a per-chunk allowance."""
    chunk_bytes = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
    return chunks_touched(array, ranges) * (chunk_bytes + CHUNK_OVERHEAD)


def blocks(array: ArrayInfo, ranges: Sequence[Sequence[int]]) -> int:
    """How many stored chunks the runtime's progress counts for the selection.

    A read block (one task) holds a whole number of chunks, and each chunk belongs to one
    block, so progress is counted in chunks whatever size the blocks are.
    """
    return chunks_touched(array, ranges)
