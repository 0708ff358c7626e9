"""Outputs that stay next to the data: large arrays an analysis returns as ``insitu.Output``.

A result leaves the platform; an output does not. The runtime writes each output into
the job's workspace as an OME-Zarr 0.5 image (Zarr v3, one multiscale pyramid, named
axes and physical scale, carried over from the input unless the analysis says
otherwise), or as an OME-Zarr label image when it is marked ``labels=True``. The server
then checks what was written with its own credentials and registers it as a derived
dataset (:mod:`insitu.trusted.outputs`); nothing the job says about it is believed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr

from insitu.catalog import ArrayInfo
from insitu.errors import AnalysisFailed
from insitu.runtime.workspace import OUTPUTS_DIR

OME_SUFFIX = ".ome.zarr"
NGFF_VERSION = "0.5"
#: Axis names downsampled by the pyramid; other axes (time, channel) keep their length.
SPATIAL_AXES = {"x", "y", "z"}
MAX_LEVELS = 8
_AXIS_TYPES = {"t": "time", "time": "time", "c": "channel", "channel": "channel"}


@dataclass
class Output:
    """A large array to keep next to the data as a derived dataset, not to return.

    ``array`` is usually a Dask array computed from the input. ``axes``, ``scale`` and
    ``units`` default to the input's when the output has as many dimensions; ``chunks``
    to the input's chunks (clipped to the output's shape). ``labels=True`` writes an
    OME-Zarr label image (integer values, nearest-neighbour pyramid). ``levels`` is the
    number of pyramid levels (default: until the spatial axes fit in one chunk).
    """

    array: Any
    chunks: tuple[int, ...] | list[int] | None = None
    axes: list[str] | None = None
    scale: list[float] | None = None
    units: list[str | None] | None = None
    labels: bool = False
    levels: int | None = None
    description: str | None = field(default=None)


@dataclass(frozen=True)
class Layout:
    """How one output is written: its axes, scale and the shape of each pyramid level."""

    axes: list[str]
    units: list[str | None]
    scale: list[float]
    translation: list[float]
    chunks: tuple[int, ...]
    factors: list[tuple[int, ...]] = field(default_factory=list)  # per level, per axis

    def level_scale(self, level: int) -> list[float]:
        return [s * f for s, f in zip(self.scale, self.factors[level], strict=True)]

    def level_translation(self, level: int) -> list[float]:
        # A mean over f voxels sits at the centre of those voxels: (f - 1) / 2 voxels on.
        return [
            t + (f - 1) / 2 * s
            for t, s, f in zip(self.translation, self.scale, self.factors[level], strict=True)
        ]


def output_url(workspace_url: str, key: str) -> str:
    """Where output ``key`` of the job with this workspace is written."""
    return f"{workspace_url.rstrip('/')}/{OUTPUTS_DIR}/{key}{OME_SUFFIX}"


def _fail(key: str, problem: str) -> AnalysisFailed:
    return AnalysisFailed(f"output {key!r}: {problem}")


def as_dask(key: str, output: Output) -> da.Array:
    """The output's array as a Dask array, refusing what cannot be stored."""
    array = output.array
    if not isinstance(array, da.Array):
        array = np.asarray(array)
        if array.dtype == object:
            raise _fail(key, "insitu.Output needs a numeric array (a Dask or NumPy array)")
        array = da.from_array(array)
    if array.ndim == 0 or any(math.isnan(n) for n in array.shape):
        raise _fail(key, f"the array needs a known shape of at least one axis, got {array.shape}")
    if array.dtype.kind not in "biuf":
        raise _fail(key, f"dtype {array.dtype} cannot be stored; use an integer or float type")
    if output.labels and array.dtype.kind not in "biu":
        raise _fail(
            key, f"labels need an integer dtype, got {array.dtype}; use e.g. .astype('uint32')"
        )
    return array


def _same_length(key: str, what: str, values: list[Any] | None, ndim: int) -> None:
    if values is not None and len(values) != ndim:
        raise _fail(key, f"{what} has {len(values)} entries for an array of {ndim} axes")


def layout(
    key: str,
    output: Output,
    array: da.Array,
    source: ArrayInfo,
    ranges: list[tuple[int, int]],
) -> Layout:
    """The axes, scale, chunks and pyramid of one output, by default those of its input."""
    ndim = array.ndim
    like_input = ndim == len(source.shape)
    for what, values in (("axes", output.axes), ("scale", output.scale), ("units", output.units)):
        _same_length(key, what, values, ndim)
    if output.axes is None and not like_input:
        raise _fail(
            key,
            f"it has {ndim} axes and the input {len(source.shape)}; name them, e.g. "
            f"insitu.Output(array, axes={['z', 'y', 'x'][-ndim:] if ndim <= 3 else '[...]'})",
        )
    axes = list(output.axes) if output.axes is not None else list(source.axes)
    if len(set(axes)) != len(axes) or not all(isinstance(a, str) and a for a in axes):
        raise _fail(key, f"axis names must be distinct non-empty strings, got {axes}")
    same_axes = like_input and axes == list(source.axes)
    # An axis the input has keeps its voxel size, unit and place (where the selection
    # starts, if the output spans the selection along it), unless the analysis says else.
    known = {
        name: (
            source.scale[i] if source.scale else 1.0,
            source.units[i] if source.units else None,
            ranges[i] if i < len(ranges) else (0, source.shape[i]),
        )
        for i, name in enumerate(source.axes)
    }
    scale = [float(s) for s in output.scale] if output.scale is not None else None
    if scale is None:
        scale = [float(known[a][0]) if a in known else 1.0 for a in axes]
    if any(not math.isfinite(s) or s <= 0 for s in scale):
        raise _fail(key, f"scale must be positive numbers, got {scale}")
    units = list(output.units) if output.units is not None else None
    if units is None:
        units = [known[a][1] if a in known else None for a in axes]
    translation = []
    for name, length, size in zip(axes, array.shape, scale, strict=True):
        start, stop = known[name][2] if name in known else (0, 0)
        translation.append(start * size if stop - start == length else 0.0)
    if output.chunks is not None:
        chunks = tuple(int(c) for c in output.chunks)
        _same_length(key, "chunks", list(chunks), ndim)
        if any(c < 1 for c in chunks):
            raise _fail(key, f"chunks must be positive, got {list(chunks)}")
    elif same_axes:
        chunks = tuple(source.chunks)
    else:
        chunks = tuple(int(c[0]) for c in array.chunks)
    chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, array.shape, strict=True))
    spatial = [i for i, a in enumerate(axes) if a.lower() in SPATIAL_AXES]
    wanted = output.levels
    if wanted is not None and not 1 <= wanted <= MAX_LEVELS:
        raise _fail(key, f"levels must be between 1 and {MAX_LEVELS}, got {wanted}")
    factors: list[tuple[int, ...]] = [(1,) * ndim]
    shape = list(array.shape)
    while len(factors) < (wanted or MAX_LEVELS):
        fits = all(shape[i] <= chunks[i] for i in spatial)
        if not spatial or (wanted is None and fits) or all(shape[i] < 2 for i in spatial):
            break
        shape = [-(-n // 2) if i in spatial else n for i, n in enumerate(shape)]
        factors.append(tuple(f * 2 if i in spatial else f for i, f in enumerate(factors[-1])))
    return Layout(axes, units, scale, translation, chunks, factors)


def _axis_entry(name: str, unit: str | None) -> dict[str, Any]:
    lowered = name.lower()
    kind = "space" if lowered in SPATIAL_AXES else _AXIS_TYPES.get(lowered)
    entry: dict[str, Any] = {"name": name}
    if kind:
        entry["type"] = kind
    if unit:
        entry["unit"] = unit
    return entry


def ome_attributes(key: str, plan: Layout, labels: bool, source: str) -> dict[str, Any]:
    """The group attributes of an OME-Zarr 0.5 image (or label image) with its pyramid."""
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": plan.level_scale(level)},
                {"type": "translation", "translation": plan.level_translation(level)},
            ],
        }
        for level in range(len(plan.factors))
    ]
    multiscale = {
        "name": key,
        "axes": [_axis_entry(a, u) for a, u in zip(plan.axes, plan.units, strict=True)],
        "datasets": datasets,
        "type": "nearest" if labels else "mean",
        "metadata": {"derived_from": source},
    }
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [multiscale]}
    if labels:
        ome["image-label"] = {"version": NGFF_VERSION}
    return {"ome": ome}


def _downsample(array: da.Array, factors: tuple[int, ...], labels: bool) -> da.Array:
    """One level down: the mean over each block of voxels (nearest for labels)."""
    if all(f == 1 for f in factors):
        return array
    if labels:
        return array[tuple(slice(None, None, f) for f in factors)]
    padded = array
    pads = [(0, (-n) % f) for n, f in zip(array.shape, factors, strict=True)]
    if any(p for _, p in pads):
        padded = da.pad(array, pads, mode="edge")
    axes = {i: f for i, f in enumerate(factors) if f > 1}
    mean = da.coarsen(np.mean, padded.astype(np.float32), axes, trim_excess=False)
    if array.dtype.kind in "iub":
        info = np.iinfo(array.dtype) if array.dtype.kind != "b" else None
        mean = da.round(mean)
        if info is not None:
            mean = da.clip(mean, info.min, info.max)
    return mean.astype(array.dtype)


def prepare(
    key: str,
    output: Output,
    url: str,
    storage_options: dict[str, Any] | None,
    source: ArrayInfo,
    ranges: list[tuple[int, int]],
    source_name: str,
) -> tuple[list[da.Array], list[Any], Layout]:
    """Create the output's OME-Zarr group and arrays; return (sources, targets) to store."""
    from insitu.storage import open_store

    array = as_dask(key, output)
    plan = layout(key, output, array, source, ranges)
    store = open_store(url, read_only=False, storage_options=storage_options)
    group = zarr.create_group(
        store=store,
        zarr_format=3,
        overwrite=True,
        attributes=ome_attributes(key, plan, output.labels, source_name),
    )
    sources: list[da.Array] = []
    targets: list[Any] = []
    level_input = array
    for level, factors in enumerate(plan.factors):
        previous = plan.factors[level - 1] if level else factors
        step = tuple(f // p for f, p in zip(factors, previous, strict=True))
        level_input = _downsample(level_input, step, output.labels)
        target = group.create_array(
            name=str(level),
            shape=level_input.shape,
            dtype=level_input.dtype,
            chunks=tuple(
                min(c, n) or 1 for c, n in zip(plan.chunks, level_input.shape, strict=True)
            ),
            dimension_names=plan.axes,
            fill_value=0,
        )
        sources.append(level_input.rechunk(target.chunks))
        targets.append(target)
    return sources, targets, plan
