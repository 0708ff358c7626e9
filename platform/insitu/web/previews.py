"""Pictures for the web UI: a dataset's preview, and small views of a job's results.

A dataset's preview is the middle plane of its coarsest level (the array itself when it
has no pyramid), read next to the data by the server with its own rights, downsampled to
at most :data:`PREVIEW_PX` a side and kept in the server's state store, so it is computed
once per dataset version and array. A result array gets a summary (shape, dtype, range)
and, when it is two-dimensional, a thumbnail; a table shows its first rows.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from insitu import objectstore
from insitu.catalog import ArrayInfo, DatasetInfo
from insitu.config import Settings
from insitu.db.models import Dataset
from insitu.errors import InvalidInput
from insitu.objectstore import state_store
from insitu.runtime.results import png
from insitu.storage import open_store

PREVIEW_PX = 256  # longest side of a preview
TABLE_ROWS = 10  # rows of a table result shown


def preview_array(info: DatasetInfo, path: str) -> ArrayInfo:
    """The level a preview of ``path`` reads: the coarsest of its multiscale pyramid."""
    chosen = info.array(path, dataset="the dataset")
    if chosen.level is None:
        return chosen
    prefix = chosen.path.rsplit("/", 1)[0] if "/" in chosen.path else ""
    levels = [
        a
        for a in info.arrays
        if a.level is not None and (a.path.rsplit("/", 1)[0] if "/" in a.path else "") == prefix
    ]
    return max(levels, key=lambda a: a.level or 0, default=chosen)


def middle_plane(array: ArrayInfo) -> tuple[tuple[slice | int, ...], tuple[int, int]]:
    """The selection of the middle y-x plane (every other axis at its middle), strided to
    at most PREVIEW_PX a side; and the full plane's height and width."""
    height, width = (array.shape[-2], array.shape[-1]) if len(array.shape) >= 2 else (1, 1)
    step = max(1, math.ceil(max(height, width) / PREVIEW_PX))
    index: list[slice | int] = [n // 2 for n in array.shape[:-2]]
    index += [slice(None, None, step)] * min(2, len(array.shape))
    return tuple(index), (height, width)


def _image(plane: np.ndarray) -> bytes:
    """A plane as a grey PNG with automatic contrast."""
    return bytes(png(np.nan_to_num(np.asarray(plane, dtype="float64"))))


def dataset_preview(settings: Settings, dataset: Dataset, path: str) -> bytes:
    """The PNG preview of one array of ``dataset`` (computed once, then kept)."""
    info = DatasetInfo.model_validate(dataset.info)
    array = preview_array(info, path)
    key = hashlib.sha256(f"{dataset.name}\0{dataset.version}\0{array.path}".encode()).hexdigest()
    kept = state_store(settings, "previews")
    cached = kept.read_bytes(f"{key}.png")
    if cached is not None:
        return cached
    import zarr

    options = objectstore.platform_options(settings, dataset.url)
    node = zarr.open(store=open_store(dataset.url, storage_options=options), mode="r")
    data = node if isinstance(node, zarr.Array) else node[array.path]
    if not isinstance(data, zarr.Array):
        raise InvalidInput(f"{array.path!r} of {dataset.name} is a group, not an array")
    index, _ = middle_plane(array)
    plane = np.asarray(data[index])
    image = _image(plane if plane.ndim == 2 else np.atleast_2d(plane))
    kept.write_bytes(f"{key}.png", image)
    return image


@dataclass(frozen=True)
class ArraySummary:
    """What a result array is, at a glance."""

    shape: tuple[int, ...]
    dtype: str
    minimum: float | None
    maximum: float | None
    thumbnail: bytes | None  # a PNG of a 2-D array (or of its first plane)


def summarize_array(data: bytes) -> ArraySummary:
    """Shape, dtype and range of an ``.npy`` result, and a thumbnail when it is an image."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    numeric = array.dtype.kind in "biuf" and array.size
    thumbnail = None
    if numeric and array.ndim >= 2:
        plane = array.reshape(-1, *array.shape[-2:])[0]
        step = max(1, math.ceil(max(plane.shape) / PREVIEW_PX))
        thumbnail = _image(plane[::step, ::step])
    return ArraySummary(
        shape=tuple(array.shape),
        dtype=str(array.dtype),
        minimum=float(np.nanmin(array)) if numeric else None,
        maximum=float(np.nanmax(array)) if numeric else None,
        thumbnail=thumbnail,
    )


def table_head(data: bytes) -> tuple[list[str], list[list[Any]], int]:
    """The columns, first rows and row count of a ``.parquet`` result."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    head = table.slice(0, TABLE_ROWS).to_pylist()
    columns = list(table.column_names)
    return columns, [[row[c] for c in columns] for row in head], table.num_rows
