"""Read what a Zarr or OME-Zarr store holds, and check selections against it.

Runtime-safe: the models here travel inside a job to the runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import zarr
from pydantic import BaseModel, Field

from insitu.errors import InvalidInput, StoreUnreachable
from insitu.storage import normalize_url, open_store

Range = tuple[int, int]


class ArrayInfo(BaseModel):
    """One array of a dataset: its place, shape, type, chunking and named axes."""

    path: str = Field(description="Path of the array inside the store ('' for a bare array).")
    shape: list[int]
    dtype: str
    chunks: list[int] = Field(description="Chunk shape (the inner chunks of a sharded array).")
    shards: list[int] | None = Field(None, description="Shard shape, for sharded Zarr v3 arrays.")
    axes: list[str] = Field(description="Axis names, outermost first.")
    units: list[str | None] | None = Field(None, description="Unit of each axis (OME-NGFF).")
    scale: list[float] | None = Field(None, description="Voxel size per axis (OME-NGFF).")
    level: int | None = Field(None, description="Multiscale level, 0 being full resolution.")
    zarr_format: int

    @property
    def nbytes(self) -> int:
        """Decoded size of the whole array."""
        return math.prod(self.shape) * _itemsize(self.dtype)

    @property
    def read_chunks(self) -> list[int]:
        """The unit a reader should fetch: the shard if sharded, else the chunk."""
        return list(self.shards or self.chunks)

    @property
    def read_bytes(self) -> int:
        """Decoded bytes of one unit a reader fetches (a shard, or a chunk)."""
        return math.prod(self.read_chunks) * _itemsize(self.dtype)


class DatasetInfo(BaseModel):
    """What registration learns about a store."""

    url: str
    format: str = Field(description="'zarr-v2', 'zarr-v3', or 'ome-ngff-<version>'.")
    arrays: list[ArrayInfo]
    default_array: str
    version: str = Field(description="SHA-256 over the store's metadata documents.")
    stored_bytes: dict[str, int] | None = Field(
        None,
        description="Bytes each array takes in the store (its objects' sizes), listed at "
        "registration for stores of up to MAX_LISTED_OBJECTS objects; None: not listed.",
    )

    def array(self, path: str | None, dataset: str = "the dataset") -> ArrayInfo:
        """The array at ``path``, or the default (full-resolution) one."""
        wanted = self.default_array if path is None else path.strip("/")
        for info in self.arrays:
            if info.path == wanted:
                return info
        known = ", ".join(repr(a.path) for a in self.arrays) or "none"
        raise InvalidInput(f"array {wanted!r} is not in {dataset}; its arrays are {known}")


def _itemsize(dtype: str) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize)


def _multiscales(attrs: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """OME-NGFF multiscales of a group (v0.4 at the top level, v0.5 under 'ome')."""
    if isinstance(attrs.get("ome"), dict) and "multiscales" in attrs["ome"]:
        return list(attrs["ome"]["multiscales"]), attrs["ome"].get("version", "0.5")
    if "multiscales" in attrs:
        scales = list(attrs["multiscales"])
        return scales, (scales[0].get("version") if scales else None) or "0.4"
    return [], None


def _axis_names(array: Any) -> list[str]:
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(names):
        return [str(n) for n in names]
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    if isinstance(dims, list) and len(dims) == array.ndim:
        return [str(d) for d in dims]
    return [f"dim_{i}" for i in range(array.ndim)]


def _array_info(path: str, array: Any) -> ArrayInfo:
    shards = getattr(array, "shards", None)
    return ArrayInfo(
        path=path,
        shape=list(array.shape),
        dtype=str(array.dtype),
        chunks=list(array.chunks),
        shards=list(shards) if shards else None,
        axes=_axis_names(array),
        zarr_format=array.metadata.zarr_format,
    )


def _apply_multiscales(
    group_path: str, scales: list[dict[str, Any]], arrays: dict[str, ArrayInfo]
) -> list[str]:
    """Name axes and levels from OME-NGFF metadata; return level paths, finest first."""
    ordered: list[str] = []
    for scale in scales:
        axes = scale.get("axes") or []
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
        for level, entry in enumerate(scale.get("datasets", [])):
            path = "/".join(p for p in (group_path, str(entry["path"]).strip("/")) if p)
            info = arrays.get(path)
            if info is None:
                continue
            if len(names) == len(info.shape):
                info.axes, info.units = names, units
            for transform in entry.get("coordinateTransformations", []):
                if transform.get("type") == "scale":
                    info.scale = [float(v) for v in transform["scale"]]
            info.level = level
            ordered.append(path)
    return ordered


def inspect_store(
    url: str, storage_options: dict[str, Any] | None = None, *, list_sizes: bool = True
) -> DatasetInfo:
    """Open the store at ``url`` and describe every array in it (listing the store for the
    arrays' stored sizes unless ``list_sizes`` is false: a caller that listed it already
    fills them with :func:`sizes_by_array`)."""
    url = normalize_url(url)
    store = open_store(url, storage_options=storage_options)
    try:
        node = zarr.open(store=store, mode="r")
    except (FileNotFoundError, KeyError) as exc:
        raise StoreUnreachable(
            f"no Zarr array or group at {url}; check the URL points at the .zarr directory"
        ) from exc
    except Exception as exc:
        raise StoreUnreachable(f"cannot read Zarr metadata at {url}: {exc}") from exc

    documents: list[Any] = []
    arrays: dict[str, ArrayInfo] = {}
    groups: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, zarr.Array):
        arrays[""] = _array_info("", node)
        documents.append(node.metadata.to_dict())
    else:
        groups.append(("", dict(node.attrs)))
        documents.append(node.metadata.to_dict())
        for path, member in node.members(max_depth=None):
            documents.append(member.metadata.to_dict())
            if isinstance(member, zarr.Array):
                arrays[path] = _array_info(path, member)
            else:
                groups.append((path, dict(member.attrs)))
    if not arrays:
        raise InvalidInput(f"the store at {url} holds no arrays")

    fmt = f"zarr-v{next(iter(arrays.values())).zarr_format}"
    levels: list[str] = []
    for group_path, attrs in groups:
        scales, ome_version = _multiscales(attrs)
        if scales:
            levels += _apply_multiscales(group_path, scales, arrays)
            fmt = f"ome-ngff-{ome_version}"
    default = levels[0] if levels else max(arrays.values(), key=lambda a: a.nbytes).path
    version = hashlib.sha256(
        json.dumps(documents, sort_keys=True, default=str).encode()
    ).hexdigest()
    return DatasetInfo(
        url=url,
        format=fmt,
        arrays=sorted(arrays.values(), key=lambda a: a.path),
        default_array=default,
        version=version,
        stored_bytes=stored_sizes(url, storage_options, list(arrays.values()))
        if list_sizes
        else None,
    )


MAX_LISTED_OBJECTS = 100_000  # a store with more (a PB volume) is not listed at registration


def stored_sizes(
    url: str, storage_options: dict[str, Any] | None, arrays: list[ArrayInfo]
) -> dict[str, int] | None:
    """The bytes each array's objects take in the store: one listing of the store (flat,
    paginated on S3), made only when its arrays have at most MAX_LISTED_OBJECTS chunk or
    shard objects; None otherwise, or when the listing fails."""
    import math

    from insitu.storage import filesystem

    objects = sum(
        math.prod(-(-n // c) for n, c in zip(a.shape, a.read_chunks, strict=True)) for a in arrays
    )
    if objects > MAX_LISTED_OBJECTS:
        return None
    try:
        fs, root = filesystem(url, storage_options)
        listed = fs.find(root, detail=True)
    except Exception:
        return None
    start = len(root.rstrip("/")) + 1
    return sizes_by_array(
        {key[start:]: int(entry.get("size") or 0) for key, entry in listed.items()}, arrays
    )


def sizes_by_array(objects: dict[str, int], arrays: list[ArrayInfo]) -> dict[str, int]:
    """Bytes per array from a store's objects (path inside the store -> size)."""
    by_depth = sorted((a.path for a in arrays), key=len, reverse=True)  # deepest array first
    sizes = dict.fromkeys(by_depth, 0)
    for inside, size in objects.items():
        owner = next((p for p in by_depth if p == "" or inside.startswith(p + "/")), None)
        if owner is not None:
            sizes[owner] += size
    return sizes


def resolve_selection(
    info: ArrayInfo, select: dict[str, tuple[int | None, int | None]], dataset: str = "the dataset"
) -> list[Range]:
    """Turn a named-axis selection into one in-bounds [start, stop) range per axis."""
    unknown = [axis for axis in select if axis not in info.axes]
    if unknown:
        raise InvalidInput(
            f"select names axis {unknown[0]!r}, which array {info.path!r} of {dataset} "
            f"does not have; its axes are {', '.join(info.axes)}"
        )
    ranges: list[Range] = []
    for axis, length in zip(info.axes, info.shape, strict=True):
        start, stop = select.get(axis, (None, None))
        start = 0 if start is None else start
        stop = length if stop is None else stop
        if start >= length or stop > length:
            raise InvalidInput(
                f"select.{axis} = [{start}, {stop}) is out of bounds: axis {axis!r} of "
                f"{dataset} has length {length}, so ranges must lie within [0, {length})"
            )
        if stop <= start:
            raise InvalidInput(f"select.{axis} = [{start}, {stop}) is empty")
        ranges.append((start, stop))
    return ranges


def chunk_boundaries(start: int, stop: int, chunk: int) -> tuple[int, ...]:
    """Block sizes along one axis so that blocks align with the store's chunks."""
    sizes = []
    position = start
    while position < stop:
        edge = min((position // chunk + 1) * chunk, stop)
        sizes.append(edge - position)
        position = edge
    return tuple(sizes)
