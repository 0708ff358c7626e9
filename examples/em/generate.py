"""Synthetic serial-section EM volume with a multiscale pyramid, as OME-Zarr.

uint8 (z, y, x): bright cytoplasm cut by dark membranes between Voronoi cells,
darker organelle-like blobs and noise. Levels ``0``, ``1``, ``2``... are each a 2x
mean-downsample of the one before. Written one slab of chunks at a time; the
default shape does not divide evenly into the chunks.

    python examples/em/generate.py OUT.zarr --shape 150 300 300 --chunks 64 64 64
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

VOXEL_NM = (30.0, 8.0, 8.0)
AXES = [
    {"name": "z", "type": "space", "unit": "nanometer"},
    {"name": "y", "type": "space", "unit": "nanometer"},
    {"name": "x", "type": "space", "unit": "nanometer"},
]


def _nearest_two(
    seeds: np.ndarray, z: int, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """For one z plane: the gap between the two nearest seeds, and the nearest seed's index."""
    yy, xx = np.mgrid[: shape[1], : shape[2]].astype(np.float32)
    zs = np.float32(z * VOXEL_NM[0] / VOXEL_NM[1])
    distance = np.sqrt(
        (yy[..., None] - seeds[:, 1]) ** 2
        + (xx[..., None] - seeds[:, 2]) ** 2
        + (zs - seeds[:, 0]) ** 2
    )
    two = np.partition(distance, 1, axis=-1)[..., :2]
    return two[..., 1] - two[..., 0], np.argmin(distance, axis=-1)


def _slab(
    seeds: np.ndarray, z0: int, z1: int, shape: tuple[int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """Voxels of z in [z0, z1): membranes where the two nearest cell seeds are equidistant."""
    planes = [_nearest_two(seeds, z, shape) for z in range(z0, z1)]
    gap = np.stack([p[0] for p in planes])
    cell = np.stack([p[1] for p in planes])
    zz = np.arange(z0, z1)[:, None, None]
    intensity = 170 + (cell % 7) * 6 - 130 * np.exp(-(gap**2) / 4.0)
    intensity = intensity - 60 * (np.sin(cell * 1.7 + zz * 0.05) > 0.97)
    intensity = intensity + rng.normal(0, 12, size=gap.shape)
    return np.clip(intensity, 0, 255).astype(np.uint8)


def _attrs(zarr_format: int, levels: int) -> dict[str, Any]:
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [v * 2**level for v in VOXEL_NM]}
            ],
        }
        for level in range(levels)
    ]
    multiscales = [{"name": "em", "axes": AXES, "datasets": datasets, "type": "mean"}]
    if zarr_format == 3:
        return {"ome": {"version": "0.5", "multiscales": multiscales}}
    multiscales[0]["version"] = "0.4"
    return {"multiscales": multiscales}


def _downsample(block: np.ndarray) -> np.ndarray:
    """2x mean in every axis, trimming odd edges."""
    z, y, x = (s // 2 * 2 for s in block.shape)
    trimmed = block[:z, :y, :x].astype(np.float32)
    return (
        trimmed.reshape(z // 2, 2, y // 2, 2, x // 2, 2)
        .mean(axis=(1, 3, 5))
        .round()
        .astype(np.uint8)
    )


def generate_volume(
    url_or_path: str | Path,
    *,
    shape: tuple[int, int, int] = (150, 300, 300),
    chunks: tuple[int, int, int] = (64, 64, 64),
    levels: int = 3,
    n_cells: int = 60,
    seed: int = 0,
    zarr_format: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the pyramid at ``<store>/0``, ``<store>/1``, ...; return a summary."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, size=(n_cells, 3)) * [
        shape[0] * VOXEL_NM[0] / VOXEL_NM[1],
        shape[1],
        shape[2],
    ]
    seeds = seeds.astype(np.float32)
    root = zarr.open_group(str(url_or_path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    root.attrs.update(_attrs(zarr_format, levels))
    if zarr_format == 3:
        codec: Any = {"compressors": [BloscCodec(cname="zstd", clevel=3)]}
    else:
        from numcodecs import Blosc

        codec = {"compressors": Blosc(cname="zstd", clevel=3)}
    arrays = []
    level_shape = shape
    for level in range(levels):
        dims = {"dimension_names": ["z", "y", "x"]} if zarr_format == 3 else {}
        array = root.create_array(
            str(level),
            shape=level_shape,
            chunks=tuple(min(c, s) for c, s in zip(chunks, level_shape, strict=True)),
            dtype="uint8",
            **codec,
            **dims,
        )
        if zarr_format == 2:
            array.attrs["_ARRAY_DIMENSIONS"] = ["z", "y", "x"]
        arrays.append(array)
        level_shape = tuple(max(1, s // 2) for s in level_shape)  # type: ignore[assignment]
    step = chunks[0] // 2 * 2 or 2
    for z0 in range(0, shape[0], step):
        z1 = min(z0 + step, shape[0])
        slab = _slab(seeds, z0, z1, shape, rng)
        arrays[0][z0:z1] = slab
        for level in range(1, levels):
            slab = _downsample(slab)
            start = z0 // 2**level
            target = arrays[level]
            stop = min(start + slab.shape[0], target.shape[0])
            if stop > start:
                target[start:stop, : slab.shape[1], : slab.shape[2]] = slab[: stop - start]
        if progress is not None:
            progress(z1, shape[0])
    return {
        "shape": list(shape),
        "chunks": list(chunks),
        "levels": [list(a.shape) for a in arrays],
        "nbytes": int(np.prod(shape)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="path or URL of the .zarr store to write")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(150, 300, 300), metavar=("Z", "Y", "X")
    )
    parser.add_argument(
        "--chunks", type=int, nargs=3, default=(64, 64, 64), metavar=("Z", "Y", "X")
    )
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = generate_volume(
        args.out,
        shape=tuple(args.shape),
        chunks=tuple(args.chunks),
        levels=args.levels,
        seed=args.seed,
        zarr_format=args.zarr_format,
    )
    print(f"wrote {args.out}: levels {summary['levels']} uint8 in {summary['seconds']} s")


if __name__ == "__main__":
    main()
