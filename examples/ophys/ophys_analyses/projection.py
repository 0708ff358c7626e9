"""Projections of a calcium-imaging movie over time."""

from __future__ import annotations

from typing import Any

import dask.array as da


def _time_axis(context: Any) -> int:
    return context.axes.index("t") if "t" in context.axes else 0


def mean_projection(data: da.Array, *, context: Any) -> dict[str, Any]:
    """The mean image over time (float32, y by x)."""
    return {"mean": data.mean(axis=_time_axis(context), dtype="float64").astype("float32")}


def max_projection(data: da.Array, *, context: Any) -> dict[str, Any]:
    """The maximum image over time (the movie's dtype)."""
    return {"max": data.max(axis=_time_axis(context))}


def projections(data: da.Array, *, context: Any) -> dict[str, Any]:
    """Mean, maximum and standard deviation over time, in one pass over the movie."""
    axis = _time_axis(context)
    as_float = data.astype("float32")
    return {
        "mean": as_float.mean(axis=axis),
        "max": data.max(axis=axis),
        "std": as_float.std(axis=axis),
    }
