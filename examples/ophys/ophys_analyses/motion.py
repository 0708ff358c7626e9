"""Rigid motion correction by phase correlation: per-frame shifts and a corrected movie.

The corrected movie is as large as the input, so it is returned as ``insitu.Output``:
it stays next to the data as a derived dataset that the next step reads.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd


def _displacements(block: np.ndarray, reference_fft: np.ndarray, upsample: int) -> np.ndarray:
    """(dy, dx) of each frame of a (t, y, x) block relative to the reference, sub-pixel."""
    from skimage.registration import phase_cross_correlation

    out = np.empty((block.shape[0], 2))
    for index, frame in enumerate(block.astype(np.float32)):
        shift, _, _ = phase_cross_correlation(
            reference_fft, np.fft.fft2(frame), upsample_factor=upsample, space="fourier"
        )
        out[index] = -np.asarray(shift)  # the shift registering it is minus its displacement
    return out


def _moved(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Frames moved by sub-pixel (dy, dx) each (Fourier shift; edges wrap)."""
    from scipy.ndimage import fourier_shift

    out = np.empty(frames.shape, np.float32)
    for index, frame in enumerate(frames.astype(np.float32)):
        out[index] = np.fft.ifftn(fourier_shift(np.fft.fftn(frame), shifts[index])).real
    return out


def _corrected(block: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    moved = _moved(block, -displacement[:, :, 0])
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        moved = np.clip(np.rint(moved), info.min, info.max)
    return moved.astype(block.dtype)


def _reference(movie: da.Array, frames: int, upsample: int) -> np.ndarray:
    """The mean of the first frames, refined once: those frames registered to their mean."""
    first = np.asarray(movie[:frames].compute()).astype(np.float32)
    rough = first.mean(axis=0)
    shifts = _displacements(first, np.fft.fft2(rough), upsample)
    return _moved(first, -shifts).mean(axis=0)


def motion_correct(
    data: da.Array,
    *,
    context: Any,
    reference_frames: int = 200,
    upsample: int = 20,
) -> dict[str, Any]:
    """Rigid motion correction of a (t, y, x) movie by phase correlation.

    Each frame's (dy, dx) displacement from a reference (the mean of the first
    ``reference_frames`` frames, registered once) is found to 1/``upsample`` pixel; each
    frame is moved back by it. Returns the corrected movie as an output (kept next to
    the data), the shifts as a table and a plot, and the corrected mean image.
    """
    import insitu
    from insitu.runtime.results import png

    t_axis, y_axis, x_axis = (context.axes.index(a) for a in ("t", "y", "x"))
    movie = data.transpose(t_axis, y_axis, x_axis).rechunk({1: -1, 2: -1})
    reference = _reference(movie, min(reference_frames, movie.shape[0]), upsample)
    displacement = movie.map_blocks(
        _displacements,
        np.fft.fft2(reference),
        upsample,
        dtype="float64",
        chunks=(movie.chunks[0], (2,)),
        drop_axis=2,
    )
    shifts = np.asarray(displacement.compute())  # small: two numbers a frame
    per_block = da.from_array(shifts[:, :, None], chunks=(movie.chunks[0], 2, 1))
    corrected = da.map_blocks(_corrected, movie, per_block, dtype=movie.dtype)
    t0 = context.selection["t"][0]
    table = pd.DataFrame(
        shifts, columns=["dy", "dx"], index=pd.RangeIndex(t0, t0 + len(shifts), name="frame")
    )
    context.log(
        f"largest displacement {np.abs(shifts).max():.2f} px over {len(shifts)} frames; "
        "writing the corrected movie next to the data"
    )
    return {
        "corrected": insitu.Output(
            corrected.transpose(*np.argsort([t_axis, y_axis, x_axis]).tolist())
        ),
        "shifts": table,
        "shifts_plot": _plot(table),
        "mean_corrected": dask.delayed(png)(corrected.mean(axis=0)),
    }


def _plot(table: pd.DataFrame) -> bytes:
    """The shifts over time, as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 2.5), dpi=100)
    axis.plot(table.index, table["dy"], label="dy")
    axis.plot(table.index, table["dx"], label="dx")
    axis.set_xlabel("frame")
    axis.set_ylabel("displacement (px)")
    axis.legend(loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
