"""ROIs from a motion-corrected movie: a correlation image, cells found in it, dF/F traces.

The correlation image (each pixel's mean correlation over time with its four
neighbours) lights up where pixels share activity, i.e. on cells. It is computed in one
pass over the movie from per-block sums; cells are its bright connected regions.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ophys_analyses.traces import roi_dff


def _sums(block: np.ndarray, background_sigma: float) -> np.ndarray:
    """Per-pixel sums over a (t, y, x) block, each frame less its blurred self (the
    diffuse neuropil and background): x, x², and x times its right and lower neighbours
    -> (1, 5, y, x), the last the sum of the frames as they are."""
    from scipy.ndimage import gaussian_filter

    x = block.astype(np.float64)
    raw = x.sum(axis=0)
    if background_sigma > 0:
        x = x - gaussian_filter(x, sigma=(0, background_sigma, background_sigma))
    out = np.zeros((1, 5, *x.shape[1:]))
    out[0, 4] = raw
    out[0, 0] = x.sum(axis=0)
    out[0, 1] = (x * x).sum(axis=0)
    out[0, 2, :, :-1] = (x[:, :, :-1] * x[:, :, 1:]).sum(axis=0)
    out[0, 3, :-1, :] = (x[:, :-1, :] * x[:, 1:, :]).sum(axis=0)
    return out


def correlation_image(
    movie: da.Array, background_sigma: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """(correlation image, mean image) of a (t, y, x) movie chunked whole in y and x, with
    what is smooth over ``background_sigma`` pixels (neuropil, background) taken out."""
    frames = movie.shape[0]
    stats = movie.map_blocks(
        _sums,
        background_sigma,
        dtype="float64",
        chunks=((1,) * movie.numblocks[0], (5,), movie.chunks[1], movie.chunks[2]),
        new_axis=1,
    )
    total = np.asarray(stats.sum(axis=0).compute())
    mean = total[4] / frames
    centred = total[0] / frames
    std = np.sqrt(np.maximum(total[1] / frames - centred**2, 1e-12))
    m, s = centred, std
    right = (total[2, :, :-1] / frames - m[:, :-1] * m[:, 1:]) / (s[:, :-1] * s[:, 1:])
    down = (total[3, :-1, :] / frames - m[:-1, :] * m[1:, :]) / (s[:-1, :] * s[1:, :])
    summed = np.zeros_like(centred)
    count = np.zeros_like(centred)
    for values, where, other in (
        (right, np.s_[:, :-1], np.s_[:, 1:]),
        (down, np.s_[:-1, :], np.s_[1:, :]),
    ):
        summed[where] += values
        count[where] += 1
        summed[other] += values
        count[other] += 1
    return summed / np.maximum(count, 1), mean


def detect(
    correlation: np.ndarray, threshold: float | None, min_area: int, min_distance: int
) -> np.ndarray:
    """Cells in the correlation image: the regions above ``threshold`` (default: Otsu's),
    split between its local peaks (at least ``min_distance`` pixels apart) by a watershed,
    each of at least ``min_area`` pixels; numbered 1..n."""
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label
    from skimage.segmentation import watershed

    smooth = gaussian(correlation, sigma=1.0)
    level = threshold_otsu(smooth) if threshold is None else threshold
    mask = smooth > level
    peaks = peak_local_max(smooth, min_distance=min_distance, labels=label(mask))
    markers = np.zeros(correlation.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = watershed(-smooth, markers, mask=mask)
    sizes = np.bincount(regions.ravel())
    regions[sizes[regions] < min_area] = 0
    return np.asarray(_renumber(regions), np.int32)


def _renumber(regions: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order, 0 staying 0."""
    ids, inverse = np.unique(regions, return_inverse=True)
    numbers = np.arange(len(ids)) if ids[0] == 0 else np.arange(1, len(ids) + 1)
    return numbers[inverse].reshape(regions.shape)


def rois_and_traces(
    data: da.Array,
    *,
    context: Any,
    threshold: float | None = None,
    min_area: int = 20,
    min_distance: int = 4,
    background_sigma: float = 6.0,
    baseline_percentile: float = 10.0,
) -> dict[str, Any]:
    """Find cells in a motion-corrected movie and return their dF/F traces.

    Returns the correlation image (array and picture), the ROI label image (array,
    picture, and kept next to the data as OME-Zarr labels), one row per ROI, and the
    dF/F traces (frames x ROIs).
    """
    import insitu
    from insitu.runtime.results import png

    t_axis, y_axis, x_axis = (context.axes.index(a) for a in ("t", "y", "x"))
    movie = data.transpose(t_axis, y_axis, x_axis).rechunk({1: -1, 2: -1})
    correlation, mean = correlation_image(movie, background_sigma)
    labels = detect(correlation, threshold, min_area, min_distance)
    t0 = context.selection["t"][0]
    traces, ids, pixels = roi_dff(movie, ["t", "y", "x"], labels, t0, baseline_percentile)
    (y0, _), (x0, _) = context.selection["y"], context.selection["x"]
    rois = []
    for roi, count in zip(ids, pixels, strict=True):
        yy, xx = np.nonzero(labels == roi)
        rois.append(
            {
                "id": int(roi),
                "pixels": int(count),
                "centroid_y": float(yy.mean() + y0),
                "centroid_x": float(xx.mean() + x0),
            }
        )
    context.log(f"{len(ids)} ROIs in the correlation image; traces over {movie.shape[0]} frames")
    return {
        "correlation": correlation.astype(np.float32),
        "correlation_image": png(correlation, cmap="magma"),
        "mean_image": png(mean),
        "rois": labels,
        "rois_image": png((labels > 0).astype(np.uint8)),
        "roi_table": rois,
        "traces": traces,
        "roi_labels": insitu.Output(labels.astype(np.uint32), axes=["y", "x"], labels=True),
    }
