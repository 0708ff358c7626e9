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
import threading
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
TABLE_COLUMNS = 12  # ... and columns
VIEW_BYTES = 16 << 20  # a result larger than this is not opened to be shown (only linked)
PREVIEW_READ_BYTES = 256 << 20  # most decoded bytes a dataset's preview may read


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


def middle_plane(array: ArrayInfo) -> tuple[slice | int, ...]:
    """The selection of the middle plane of the last two axes (every other axis at its
    middle), strided to at most PREVIEW_PX a side; refused when there is no plane, or when
    reading it would decode more than PREVIEW_READ_BYTES (a volume with no pyramid)."""
    if len(array.shape) < 2 or min(array.shape[-2:]) == 0:
        raise InvalidInput("an array with fewer than two non-empty axes has no picture")
    height, width = array.shape[-2], array.shape[-1]
    step = max(1, math.ceil(max(height, width) / PREVIEW_PX))
    # A strided plane touches every chunk its sampled rows and columns fall in.
    touched = 1
    for n, chunk in ((height, array.chunks[-2]), (width, array.chunks[-1])):
        touched *= len({i // chunk for i in range(0, n, step)})
    chunk_bytes = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
    if touched * chunk_bytes > PREVIEW_READ_BYTES:
        raise InvalidInput(
            f"a preview of {array.path or 'the array'} would read "
            f"{touched * chunk_bytes / 2**30:.1f} GiB: register the dataset with a multiscale "
            "pyramid (OME-Zarr levels), whose coarsest level is previewed"
        )
    index: list[slice | int] = [n // 2 for n in array.shape[:-2]]
    return (*index, slice(None, None, step), slice(None, None, step))


_computing: dict[str, threading.Lock] = {}  # one computation of a preview at a time
_computing_lock = threading.Lock()


def _image(plane: np.ndarray) -> bytes:
    """A plane as a grey PNG with automatic contrast."""
    return bytes(png(np.nan_to_num(np.asarray(plane, dtype="float64"))))


def dataset_preview(settings: Settings, dataset: Dataset, path: str) -> bytes:
    """The PNG preview of one array of ``dataset`` (computed once, then kept)."""
    info = DatasetInfo.model_validate(dataset.info)
    array = preview_array(info, path)
    identity = f"{dataset.id}\0{dataset.url}\0{dataset.name}\0{dataset.version}\0{array.path}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    kept = state_store(settings, "previews")
    cached = kept.read_bytes(f"{key}.png")
    if cached is not None:
        return cached
    index = middle_plane(array)  # refused before anything is read
    with _computing_lock:
        lock = _computing.setdefault(key, threading.Lock())
    with lock:  # others asking meanwhile wait for this one, then find it kept
        cached = kept.read_bytes(f"{key}.png")
        if cached is not None:
            return cached
        image = _compute_preview(settings, dataset, array, index)
        kept.write_bytes(f"{key}.png", image)
    with _computing_lock:
        _computing.pop(key, None)
    return image


def _compute_preview(
    settings: Settings, dataset: Dataset, array: ArrayInfo, index: tuple[slice | int, ...]
) -> bytes:
    import zarr

    options = objectstore.platform_options(settings, dataset.url)
    node = zarr.open(store=open_store(dataset.url, storage_options=options), mode="r")
    data = node if isinstance(node, zarr.Array) else node[array.path]
    if not isinstance(data, zarr.Array):
        raise InvalidInput(f"{array.path!r} of {dataset.name} is a group, not an array")
    return _image(np.asarray(data[index]))


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
    """The first columns and rows, and the row count, of a ``.parquet`` result: only the
    first batch is decoded (a small file may hold a huge table)."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(io.BytesIO(data))
    columns = list(table.schema_arrow.names)[:TABLE_COLUMNS]
    batch = next(table.iter_batches(batch_size=TABLE_ROWS, columns=columns), None)
    head = batch.to_pylist() if batch is not None else []
    rows = [[str(row[c])[:200] for c in columns] for row in head[:TABLE_ROWS]]
    return columns, rows, table.metadata.num_rows
