"""Per-ROI fluorescence traces and dF/F from an ROI label image."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pandas as pd


def _roi_sums(block: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Sum of each label's pixels in every frame of a (t, y, x) block -> (t, n_labels + 1)."""
    frames = block.shape[0]
    flat = block.reshape(frames, -1).astype(np.float64)
    index = labels.ravel()
    out = np.zeros((frames, n_labels + 1))
    for t in range(frames):
        out[t] = np.bincount(index, weights=flat[t], minlength=n_labels + 1)
    return out


def roi_dff(
    data: da.Array,
    axes: list[str],
    label_image: np.ndarray,
    t0: int,
    baseline_percentile: float = 10.0,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """dF/F of every labelled ROI over the frames of ``data`` (whose first is ``t0``):
    F the mean of each ROI's pixels, F0 its ``baseline_percentile`` over time. Returns the
    traces (frames x ROIs), the ROI ids and their pixel counts."""
    t_axis, y_axis, x_axis = (axes.index(a) for a in ("t", "y", "x"))
    ids = np.unique(label_image[label_image > 0])
    n_labels = int(label_image.max()) if label_image.size else 0
    movie = data.transpose(t_axis, y_axis, x_axis).rechunk({1: -1, 2: -1})
    sums = movie.map_blocks(
        _roi_sums,
        label_image,
        n_labels,
        dtype="float64",
        chunks=(movie.chunks[0], (n_labels + 1,)),
        drop_axis=2,
    )
    totals = np.asarray(sums.compute())[:, ids]
    pixels = np.bincount(label_image.ravel(), minlength=n_labels + 1)[ids]
    fluorescence = totals / pixels
    baseline = np.percentile(fluorescence, baseline_percentile, axis=0)
    dff = (fluorescence - baseline) / np.where(baseline == 0, np.nan, baseline)
    frames = pd.RangeIndex(t0, t0 + movie.shape[0], name="frame")
    traces = pd.DataFrame(dff, index=frames, columns=[f"roi_{i}" for i in ids])
    return traces, ids, pixels


def dff_traces(
    data: da.Array,
    *,
    context: Any,
    labels: str = "labels/cells/0",
    baseline_percentile: float = 10.0,
) -> dict[str, Any]:
    """dF/F of every ROI in the label image, over the selected frames and window.

    F is the mean of each ROI's pixels inside the selected (y, x) window, F0 the
    ``baseline_percentile`` of F over time, and dF/F = (F - F0) / F0.
    """
    (y0, y1), (x0, x1) = context.selection["y"], context.selection["x"]
    label_image = np.asarray(context.open_array(labels)[y0:y1, x0:x1].compute())
    t0, t1 = context.selection["t"]
    traces, ids, pixels = roi_dff(data, context.axes, label_image, t0, baseline_percentile)
    yy, xx = np.nonzero(label_image)
    rois = [
        {
            "id": int(i),
            "pixels": int(p),
            "centroid_y": float(yy[label_image[yy, xx] == i].mean() + y0),
            "centroid_x": float(xx[label_image[yy, xx] == i].mean() + x0),
        }
        for i, p in zip(ids, pixels, strict=True)
    ]
    context.log(f"traces for {len(ids)} ROIs over {t1 - t0} frames")
    return {"traces": traces, "rois": rois}
