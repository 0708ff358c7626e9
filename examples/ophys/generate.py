"""Synthetic two-photon calcium-imaging movie with simulated neurons, as OME-Zarr.

The movie is uint16 (t, y, x) at 30 Hz: a blurred background, soft disk-shaped
neurons whose fluorescence follows spike trains convolved with a calcium decay,
optionally a diffuse neuropil glow that follows the population's activity and rigid
motion of the whole field of view by known sub-pixel shifts per frame, and shot
noise. The ROI masks (of the unmoved field) are written as an OME-NGFF label image
at ``labels/cells/0``. Frames are written one chunk of time at a time, so movies of
100,000 frames need no more memory than one chunk.

    python examples/ophys/generate.py OUT.zarr --frames 2000 --size 256 --cells 40
    python examples/ophys/generate.py OUT.zarr --motion 4 --neuropil 0.3   # to correct
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

FRAME_RATE = 30.0
AXES = [
    {"name": "t", "type": "time", "unit": "second"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def _multiscales(name: str, axes: list[dict[str, str]], scale: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            ],
        }
    ]


def _attrs(zarr_format: int, multiscales: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """OME-NGFF 0.5 (under 'ome') for Zarr v3, 0.4 (top level) for Zarr v2."""
    if zarr_format == 3:
        return {"ome": {"version": "0.5", "multiscales": multiscales, **extra}}
    for entry in multiscales:
        entry["version"] = "0.4"
    return {"multiscales": multiscales, **extra}


def _compressor(zarr_format: int) -> dict[str, Any]:
    if zarr_format == 3:
        return {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]}
    from numcodecs import Blosc

    return {"compressors": Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)}


def _cells(
    rng: np.random.Generator, height: int, width: int, n_cells: int, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, soft footprints (n, y, x) and the integer label image of the cells."""
    margin = radius + 2
    centers = np.column_stack(
        [
            rng.uniform(margin, height - margin, n_cells),
            rng.uniform(margin, width - margin, n_cells),
        ]
    )
    yy, xx = np.mgrid[:height, :width]
    distance = np.sqrt(
        (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    )
    footprints = np.clip(1.2 - distance / radius, 0, 1).astype(np.float32)
    labels = np.zeros((height, width), dtype=np.int32)
    inside = distance < radius
    # Where cells overlap, the nearer centre wins.
    nearest = np.argmin(np.where(inside, distance, np.inf), axis=0)
    labels[inside.any(axis=0)] = nearest[inside.any(axis=0)] + 1
    return centers, footprints, labels


def _calcium(rng: np.random.Generator, frames: int, n_cells: int) -> np.ndarray:
    """dF/F-like activity (t, n): Poisson spikes convolved with an exponential decay."""
    rates = rng.uniform(0.05, 0.6, n_cells) / FRAME_RATE  # spikes per frame
    spikes = rng.poisson(rates, size=(frames, n_cells)).astype(np.float32)
    tau = rng.uniform(0.5, 1.0, n_cells) * FRAME_RATE
    activity = np.empty_like(spikes)
    level = np.zeros(n_cells, dtype=np.float32)
    decay = np.exp(-1.0 / tau).astype(np.float32)
    for t in range(frames):  # frames x cells is small; the movie itself is never held
        level = level * decay + spikes[t]
        activity[t] = level
    return activity


def _motion(rng: np.random.Generator, frames: int, amplitude: float) -> np.ndarray:
    """Rigid (dy, dx) shifts per frame, in pixels: a slow drift plus jitter, within
    ``amplitude``."""
    if amplitude <= 0:
        return np.zeros((frames, 2))
    drift = np.cumsum(rng.normal(0, 1, (frames, 2)), axis=0)
    drift -= drift.mean(axis=0)
    drift *= 0.7 * amplitude / max(float(np.abs(drift).max()), 1e-9)
    jitter = rng.normal(0, 0.15 * amplitude, (frames, 2))
    return np.clip(drift + jitter, -amplitude, amplitude)


def _shifted(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each (y, x) frame moved by its sub-pixel (dy, dx), by the Fourier shift theorem."""
    ky = np.fft.fftfreq(frames.shape[1])[:, None]
    kx = np.fft.fftfreq(frames.shape[2])[None, :]
    spectra = np.fft.fft2(frames)
    phase = np.exp(
        -2j * np.pi * (ky[None] * shifts[:, 0, None, None] + kx[None] * shifts[:, 1, None, None])
    )
    return np.fft.ifft2(spectra * phase).real.astype(np.float32)


def _neuropil_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth glow of out-of-focus neurites: a few broad Gaussian blobs, peak 1."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    field = np.zeros((height, width), np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(0.15, 0.35) * min(height, width)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return field / field.max()


def generate_movie(
    url_or_path: str | Path,
    *,
    frames: int = 1500,
    height: int = 256,
    width: int = 256,
    n_cells: int = 40,
    chunks: tuple[int, int, int] = (64, 256, 256),
    seed: int = 0,
    zarr_format: int = 3,
    motion: float = 0.0,
    neuropil: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the movie at ``<store>/0`` and ROI labels at ``<store>/labels/cells/0``.

    ``motion`` moves the whole field by up to that many pixels per frame (the truth is
    returned as ``shifts``: frame t shows the unmoved field displaced by (dy, dx));
    ``neuropil`` adds a diffuse glow following the population's activity, at that
    fraction of the mean cell brightness.
    """
    rng = np.random.default_rng(seed)
    radius = max(3.0, min(height, width) / 40)
    centers, footprints, labels = _cells(rng, height, width, n_cells, radius)
    activity = _calcium(rng, frames, n_cells)
    yy, xx = np.mgrid[:height, :width]
    background = (300 + 80 * np.sin(yy / height * np.pi) * np.cos(xx / width * np.pi)).astype(
        np.float32
    )
    brightness = rng.uniform(250, 600, n_cells).astype(np.float32)
    flat_footprints = footprints.reshape(n_cells, -1)
    shifts = _motion(np.random.default_rng(seed + 1), frames, motion)
    glow = _neuropil_field(np.random.default_rng(seed + 2), height, width)
    population = activity.mean(axis=1) / max(float(activity.mean()), 1e-9)

    root = zarr.open_group(str(url_or_path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    root.attrs.update(_attrs(zarr_format, _multiscales("movie", AXES, [1 / FRAME_RATE, 1.0, 1.0])))
    chunks = tuple(min(c, s) for c, s in zip(chunks, (frames, height, width), strict=True))  # type: ignore[assignment]
    dims = {"dimension_names": ["t", "y", "x"]} if zarr_format == 3 else {}
    movie = root.create_array(
        "0",
        shape=(frames, height, width),
        chunks=chunks,
        dtype="uint16",
        **_compressor(zarr_format),
        **dims,  # type: ignore[arg-type]
    )
    if zarr_format == 2:
        movie.attrs["_ARRAY_DIMENSIONS"] = ["t", "y", "x"]
    _write_labels(root, labels, zarr_format)

    started = time.perf_counter()
    step = chunks[0]
    for start in range(0, frames, step):
        stop = min(start + step, frames)
        cells = (activity[start:stop] * brightness) @ flat_footprints  # (t, y*x)
        mean = (
            background
            + cells.reshape(stop - start, height, width)
            + 0.3 * brightness.mean() * (footprints.sum(axis=0) > 0)
        )
        if neuropil > 0:
            level = neuropil * brightness.mean() * (0.5 + 0.5 * population[start:stop])
            mean = mean + level[:, None, None] * glow[None]
        if motion > 0:
            mean = np.maximum(_shifted(mean, shifts[start:stop]), 0)
        # Shot noise: Gaussian with the Poisson variance (much faster than sampling Poisson).
        noise = rng.standard_normal(mean.shape, dtype=np.float32) * np.sqrt(mean)
        block = np.clip(np.rint(mean + noise), 0, 65535).astype(np.uint16)
        movie[start:stop] = block
        if progress is not None:
            progress(stop, frames)
    return {
        "shape": [frames, height, width],
        "chunks": list(chunks),
        "n_cells": n_cells,
        "centers": centers.round(2).tolist(),
        "nbytes": frames * height * width * 2,
        "shifts": shifts.round(4).tolist(),
        "labels": labels,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _write_labels(root: Any, labels: np.ndarray, zarr_format: int) -> None:
    axes = AXES[1:]
    group = root.require_group("labels")
    extra = {"labels": ["cells"]}
    if zarr_format == 3:
        group.attrs.update({"ome": {"version": "0.5", **extra}})
    else:
        group.attrs.update(extra)
    cells = group.require_group("cells")
    image_label = {
        "image-label": {
            "version": "0.5" if zarr_format == 3 else "0.4",
            "source": {"image": "../../"},
        }
    }
    attrs = _attrs(zarr_format, _multiscales("cells", axes, [1.0, 1.0]))
    if zarr_format == 3:
        attrs["ome"].update(image_label)
    else:
        attrs.update(image_label)
    cells.attrs.update(attrs)
    dims = {"dimension_names": ["y", "x"]} if zarr_format == 3 else {}
    array = cells.create_array(
        "0",
        shape=labels.shape,
        chunks=labels.shape,
        dtype="int32",
        **_compressor(zarr_format),
        **dims,  # type: ignore[arg-type]
    )
    array[:] = labels
    if zarr_format == 2:
        array.attrs["_ARRAY_DIMENSIONS"] = ["y", "x"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="path or URL of the .zarr store to write")
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--size", type=int, default=256, help="height and width in pixels")
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--chunk-frames", type=int, default=64)
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--motion", type=float, default=0.0, help="largest shift, in pixels")
    parser.add_argument(
        "--neuropil", type=float, default=0.0, help="neuropil glow, as a share of cell brightness"
    )
    args = parser.parse_args()
    truth = generate_movie(
        args.out,
        frames=args.frames,
        height=args.size,
        width=args.size,
        n_cells=args.cells,
        chunks=(args.chunk_frames, args.size, args.size),
        seed=args.seed,
        zarr_format=args.zarr_format,
        motion=args.motion,
        neuropil=args.neuropil,
    )
    print(
        f"wrote {args.out}: {truth['shape']} uint16, "
        f"{truth['nbytes'] / 1e6:.0f} MB raw, {truth['seconds']} s"
    )


if __name__ == "__main__":
    main()
