"""Intensity histogram of an EM volume."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pandas as pd


def intensity_histogram(data: da.Array, *, context: Any, bins: int = 256) -> dict[str, Any]:
    """Counts of voxel intensities in ``bins`` equal bins over [0, 256)."""
    counts, edges = da.histogram(data, bins=bins, range=(0, 256))
    counts = np.asarray(counts.compute())
    table = pd.DataFrame({"bin_start": edges[:-1], "bin_stop": edges[1:], "count": counts})
    return {"histogram": table}
