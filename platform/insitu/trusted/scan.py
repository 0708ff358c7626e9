"""The most bytes a selection can honestly have read, computed by the server at submit.

Where the bytes do not pass the trusted side (local files on the local backend), the
job's own count is believed only up to this bound, so a forged ``bytes_scanned`` cannot
lift the fraction-of-scan egress cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from insitu.blocks import block_count
from insitu.catalog import ArrayInfo

CHUNK_OVERHEAD = 4096  # codec headers and shard indexes per chunk, generously


def chunks_touched(array: ArrayInfo, ranges: Sequence[Sequence[int]]) -> int:
    """How many stored chunks the half-open ``ranges`` intersect.

    The runtime's progress counts these too: a read block (one task) holds whole chunks,
    each in one block, so the count does not depend on the block size.
    """
    return block_count(ranges, array.chunks)


def selection_bound(array: ArrayInfo, ranges: Sequence[Sequence[int]]) -> int:
    """Bytes of every chunk the selection touches, decoded, plus a per-chunk allowance."""
    chunk_bytes = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
    return chunks_touched(array, ranges) * (chunk_bytes + CHUNK_OVERHEAD)
