"""3D connected components of a thresholded EM volume, across chunk boundaries.

Each block is labelled on its own (``scipy.ndimage.label``, face connectivity); the
labels that touch across a face between two blocks are then merged (a union-find over
the face planes, ``scipy.sparse.csgraph``), and every voxel is relabelled to its
component. The volume is read twice (once for the faces and counts, once to write
the labels), never held whole. The label volume is as large as its input, so it is
returned as ``insitu.Output(..., labels=True)``: it stays next to the data as OME-Zarr
labels; the object table (id, voxels, bounding box, centroid) is the reduced result.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd


def _local(block: np.ndarray, threshold: float, above: bool) -> np.ndarray:
    from scipy.ndimage import label

    mask = block > threshold if above else block < threshold
    labelled, _ = label(mask)
    return np.asarray(labelled, dtype=np.int64)


def _faces(labelled: np.ndarray) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
    """A block's label count and its first and last planes along each axis."""
    firsts = [np.take(labelled, 0, axis=k) for k in range(labelled.ndim)]
    lasts = [np.take(labelled, -1, axis=k) for k in range(labelled.ndim)]
    return int(labelled.max(initial=0)), firsts, lasts


def _merge_table(
    grid: tuple[int, ...], faces: dict[tuple[int, ...], tuple[int, list[Any], list[Any]]]
) -> tuple[dict[tuple[int, ...], int], np.ndarray]:
    """Each block's first node, and the component (1..n) of every block-local label."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    blocks = list(itertools.product(*(range(n) for n in grid)))
    starts: dict[tuple[int, ...], int] = {}
    total = 0
    for index in blocks:
        starts[index] = total
        total += faces[index][0]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for index in blocks:
        for axis in range(len(grid)):
            after = tuple(i + (1 if k == axis else 0) for k, i in enumerate(index))
            if after[axis] >= grid[axis]:
                continue
            last, first = faces[index][2][axis], faces[after][1][axis]
            touching = (last > 0) & (first > 0)
            rows.append(last[touching] - 1 + starts[index])
            cols.append(first[touching] - 1 + starts[after])
    if total == 0:
        return starts, np.zeros(0, np.int64)
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(row), np.int8), (row, col)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    return starts, component.astype(np.int64) + 1


def _relabel(labelled: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Block-local labels to components (``table[local - 1]``), 0 staying 0."""
    out = np.zeros(labelled.shape, np.uint32)
    inside = labelled > 0
    out[inside] = table[labelled[inside] - 1]
    return out


def _stats(labels: np.ndarray, origin: tuple[int, ...]) -> pd.DataFrame:
    """Per object in one block: voxels, coordinate sums, and bounding box (global)."""
    where = np.nonzero(labels)
    ids = labels[where]
    frame = pd.DataFrame({"id": ids})
    for axis, name in enumerate("zyx"):
        frame[name] = where[axis] + origin[axis]
    grouped = frame.groupby("id")
    out = grouped.size().rename("voxels").to_frame()
    for name in "zyx":
        out[f"sum_{name}"] = grouped[name].sum()
        out[f"{name}_min"] = grouped[name].min()
        out[f"{name}_max"] = grouped[name].max()
    return out


def _table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The object table from the blocks' stats: id, voxels, bounding box, centroid."""
    if not parts or all(p.empty for p in parts):
        columns = ["voxels", *(f"{n}_{e}" for n in "zyx" for e in ("min", "max"))]
        return pd.DataFrame(columns=[*columns, "centroid_z", "centroid_y", "centroid_x"])
    stacked = pd.concat(parts)
    grouped = stacked.groupby(level=0)
    table = grouped[["voxels", "sum_z", "sum_y", "sum_x"]].sum()
    for name in "zyx":
        table[f"{name}_min"] = grouped[f"{name}_min"].min()
        table[f"{name}_max"] = grouped[f"{name}_max"].max()
        table[f"centroid_{name}"] = table.pop(f"sum_{name}") / table["voxels"]
    table.index.name = "id"
    return table.sort_index()


def connected_components(
    data: da.Array, *, context: Any, threshold: float = 100, above: bool = True
) -> dict[str, Any]:
    """3D connected components (face-connected) of the voxels above ``threshold`` (below,
    with ``above: false``).

    Returns the label volume as OME-Zarr labels kept next to the data, the object table
    (id, voxel count, bounding box and centroid in the array's voxel coordinates) and a
    picture of the middle plane.
    """
    import insitu
    from insitu.runtime.results import png

    labelled = data.map_blocks(_local, threshold, above, dtype=np.int64)
    blocks = labelled.to_delayed()
    grid = tuple(blocks.shape)
    found = dask.compute(
        {index: dask.delayed(_faces)(blocks[index]) for index in np.ndindex(*grid)}
    )[0]
    starts, component = _merge_table(grid, found)
    relabelled = np.empty(grid, dtype=object)
    for index in np.ndindex(*grid):
        count = found[index][0]
        table = component[starts[index] : starts[index] + count]
        shape = tuple(c[i] for c, i in zip(data.chunks, index, strict=True))
        relabelled[index] = da.from_delayed(
            dask.delayed(_relabel)(blocks[index], table), shape=shape, dtype=np.uint32
        )
    labels = da.block(relabelled.tolist())
    edges = [np.cumsum((0, *c[:-1])) for c in data.chunks]
    starts_at = [start for start, _ in _ranges(context, data)]
    origins = [
        tuple(int(edges[k][i]) + starts_at[k] for k, i in enumerate(index))
        for index in np.ndindex(*grid)
    ]
    stats = [
        dask.delayed(_stats)(labels.blocks[index], origin)
        for index, origin in zip(np.ndindex(*grid), origins, strict=True)
    ]
    objects = dask.delayed(_table)(stats)
    middle = labels[labels.shape[0] // 2]
    n_objects = int(component.max(initial=0))
    context.log(
        f"{n_objects} objects in {math.prod(grid)} blocks; writing the label volume next "
        "to the data"
    )
    return {
        "labels": insitu.Output(labels, labels=True),
        "objects": objects,
        "count": n_objects,
        "middle_plane": dask.delayed(png)(middle % 20, cmap="tab20"),
    }


def _ranges(context: Any, data: da.Array) -> list[tuple[int, int]]:
    """Where the selection starts and ends along each axis of the full array."""
    selection = context.selection
    return [tuple(selection.get(a, (0, n))) for a, n in zip(context.axes, data.shape, strict=True)]


def object_sizes(data: da.Array, *, context: Any, bins: int = 50) -> dict[str, Any]:
    """Voxel counts of the objects of a label volume, as a table and a histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    largest = int(data.max().compute())
    counts = np.asarray(
        da.bincount(data.ravel().astype(np.int64), minlength=largest + 1).compute()
    )[1:]
    present = np.nonzero(counts)[0]
    table = pd.DataFrame({"id": present + 1, "voxels": counts[present]})
    figure, axis = plt.subplots(figsize=(6, 3), dpi=100)
    axis.hist(np.log10(table["voxels"].clip(lower=1)), bins=bins)
    axis.set_xlabel("log10 voxels per object")
    axis.set_ylabel("objects")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return {"sizes": table, "histogram": buffer.getvalue(), "objects": len(table)}
