"""The catalog reads Zarr v2, Zarr v3 and OME-Zarr stores, and checks selections."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import example_module
from insitu.catalog import chunk_boundaries, inspect_store, resolve_selection
from insitu.errors import InvalidInput, StoreUnreachable


def test_zarr_v2_with_array_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "v2.zarr"
    array = zarr.create_array(path, shape=(10, 20), chunks=(3, 7), dtype="u2", zarr_format=2)
    array.attrs["_ARRAY_DIMENSIONS"] = ["t", "x"]
    info = inspect_store(str(path))
    assert info.format == "zarr-v2" and info.default_array == ""
    (only,) = info.arrays
    assert (only.shape, only.chunks, only.axes, only.dtype) == (
        [10, 20],
        [3, 7],
        ["t", "x"],
        "uint16",
    )
    assert info.url == path.resolve().as_uri()


def test_unnamed_axes_get_dim_names(tmp_path: Path) -> None:
    zarr.create_array(
        tmp_path / "plain.zarr", shape=(4, 5, 6), chunks=(2, 2, 2), dtype="f4", zarr_format=2
    )
    assert inspect_store(str(tmp_path / "plain.zarr")).arrays[0].axes == ["dim_0", "dim_1", "dim_2"]


def test_zarr_v3_group_with_dimension_names(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "v3.zarr", mode="w")
    group.create_array(
        "raw", shape=(100, 64), chunks=(10, 64), dtype="u1", dimension_names=["z", "x"]
    )
    group.create_array("small", shape=(5,), chunks=(5,), dtype="f8")
    info = inspect_store((tmp_path / "v3.zarr").as_uri())
    assert info.format == "zarr-v3"
    assert [a.path for a in info.arrays] == ["raw", "small"]
    assert info.default_array == "raw"  # the largest array, without OME metadata
    assert info.array("raw").axes == ["z", "x"]


@pytest.mark.parametrize(("zarr_format", "version"), [(2, "0.4"), (3, "0.5")])
def test_ome_zarr_multiscales_and_labels(tmp_path: Path, zarr_format: int, version: str) -> None:
    path = tmp_path / "movie.zarr"
    example_module("ophys").generate_movie(
        path, frames=20, height=32, width=32, n_cells=3, chunks=(8, 32, 32), zarr_format=zarr_format
    )
    info = inspect_store(str(path))
    assert info.format == f"ome-ngff-{version}"
    assert info.default_array == "0"  # the image, not the label image
    movie = info.array(None)
    assert movie.axes == ["t", "y", "x"] and movie.units == ["second", "micrometer", "micrometer"]
    assert movie.scale is not None and movie.scale[1:] == [1.0, 1.0] and movie.level == 0
    assert info.array("labels/cells/0").axes == ["y", "x"]


def test_em_pyramid_levels(tmp_path: Path) -> None:
    path = tmp_path / "em.zarr"
    example_module("em").generate_volume(
        path, shape=(20, 40, 40), chunks=(8, 16, 16), levels=3, n_cells=5
    )
    info = inspect_store(str(path))
    assert [(a.path, a.level, a.shape) for a in info.arrays] == [
        ("0", 0, [20, 40, 40]),
        ("1", 1, [10, 20, 20]),
        ("2", 2, [5, 10, 10]),
    ]
    assert info.array("1").scale == [60.0, 16.0, 16.0]
    assert info.default_array == "0"


def test_sharded_array_reads_by_shard(tmp_path: Path) -> None:
    zarr.create_array(
        tmp_path / "sharded.zarr",
        shape=(128, 64, 64),
        chunks=(16, 32, 32),
        shards=(64, 64, 64),
        dtype="u2",
        dimension_names=["t", "y", "x"],
    )
    array = inspect_store(str(tmp_path / "sharded.zarr")).arrays[0]
    assert array.chunks == [16, 32, 32] and array.shards == [64, 64, 64]
    assert array.read_chunks == [64, 64, 64]


def test_metadata_change_changes_version(tmp_path: Path) -> None:
    path = tmp_path / "v.zarr"
    array = zarr.create_array(path, shape=(4,), chunks=(2,), dtype="u1")
    before = inspect_store(str(path)).version
    array.attrs["note"] = "edited"
    assert inspect_store(str(path)).version != before


def test_unreadable_stores(tmp_path: Path) -> None:
    with pytest.raises(StoreUnreachable, match=str(tmp_path / "missing.zarr")):
        inspect_store(str(tmp_path / "missing.zarr"))
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreUnreachable, match="no Zarr array or group"):
        inspect_store(str(tmp_path / "empty.zarr"))
    zarr.open_group(tmp_path / "hollow.zarr", mode="w")
    with pytest.raises(InvalidInput, match="holds no arrays"):
        inspect_store(str(tmp_path / "hollow.zarr"))
    with pytest.raises(InvalidInput, match="scheme 'gopher'"):
        inspect_store("gopher://example/x.zarr")


@pytest.fixture
def movie_info(movie: tuple[Path, np.ndarray]):  # type: ignore[no-untyped-def]
    return inspect_store(str(movie[0])).arrays[0]


def test_selection_resolves_defaults(movie_info) -> None:  # type: ignore[no-untyped-def]
    assert resolve_selection(movie_info, {}) == [(0, 90), (0, 37), (0, 29)]
    assert resolve_selection(movie_info, {"t": (5, None), "x": (None, 10)}) == [
        (5, 90),
        (0, 37),
        (0, 10),
    ]


def test_selection_errors(movie_info) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=r"axis 'z'.*its axes are t, y, x"):
        resolve_selection(movie_info, {"z": (0, 1)}, dataset="dataset 'd'")
    with pytest.raises(InvalidInput, match=r"select.t = \[0, 91\) is out of bounds.*length 90"):
        resolve_selection(movie_info, {"t": (0, 91)})
    with pytest.raises(InvalidInput, match="out of bounds"):
        resolve_selection(movie_info, {"y": (37, None)})


@pytest.mark.parametrize(
    ("start", "stop", "chunk"), [(0, 90, 32), (5, 83, 32), (3, 4, 16), (0, 16, 16), (17, 100, 7)]
)
def test_chunk_boundaries_align_with_store_chunks(start: int, stop: int, chunk: int) -> None:
    sizes = chunk_boundaries(start, stop, chunk)
    assert sum(sizes) == stop - start
    edges = np.cumsum((start, *sizes))
    for left, right in itertools.pairwise(edges):
        assert left // chunk == (right - 1) // chunk  # a block never crosses a chunk edge
    assert len(sizes) == (stop - 1) // chunk - start // chunk + 1


def test_registration_lists_what_each_array_takes_in_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from insitu import catalog

    root = zarr.open_group(tmp_path / "two.zarr", mode="w")
    root.create_array("big", shape=(64, 64), chunks=(16, 16), dtype="float64")[:] = np.random.rand(
        64, 64
    )
    root.create_array("small", shape=(8,), chunks=(8,), dtype="uint8")[:] = 1
    info = catalog.inspect_store(str(tmp_path / "two.zarr"))
    on_disk = {
        name: sum(
            f.stat().st_size for f in (tmp_path / "two.zarr" / name).rglob("*") if f.is_file()
        )
        for name in ("big", "small")
    }
    assert info.stored_bytes == on_disk and on_disk["big"] > on_disk["small"] > 0
    # A store of more objects than registration lists (a PB volume) is not listed.
    monkeypatch.setattr(catalog, "MAX_LISTED_OBJECTS", 10)
    assert catalog.inspect_store(str(tmp_path / "two.zarr")).stored_bytes is None
