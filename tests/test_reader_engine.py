"""The reader's codec pipeline: same arrays and same metered bytes with zarr's and zarrs'."""

from __future__ import annotations

import copy
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from insitu import objectstore
from insitu.config import ReaderSettings, Settings
from insitu.errors import InvalidInput
from insitu.runtime import engine, metering
from insitu.seaweedfs import DATA_BUCKET, SeaweedFS
from insitu.storage import open_store

pytestmark = [
    pytest.mark.timeout(120),
    # zarrs rebuilds obstore's store in its own module and says so, once per array
    pytest.mark.filterwarnings("ignore:Successfully reconstructed a store:RuntimeWarning"),
]


@dataclass(frozen=True)
class Case:
    """A small array like a workload's, and a selection that does not align with its chunks."""

    dtype: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None
    select: tuple[slice, slice, slice]

    def data(self) -> np.ndarray:
        rng = np.random.default_rng(3)
        high = 4000 if self.dtype == "uint16" else 256
        return rng.integers(0, high, size=self.shape, dtype=self.dtype)


CASES = {
    "2p uint16 zstd": Case("uint16", (90, 64, 48), (32, 64, 48), None, np.s_[5:83, 3:60, :]),
    "EM uint8 3D": Case("uint8", (70, 50, 45), (16, 16, 16), None, np.s_[3:61, 10:50, 7:40]),
    "EM uint8 sharded": Case(
        "uint8", (70, 50, 45), (16, 16, 16), (32, 32, 32), np.s_[3:61, 10:50, 7:40]
    ),
}


@pytest.fixture(autouse=True)
def restore_zarr_config() -> Iterator[None]:
    """Each test starts from, and leaves, the process' zarr settings as they were."""
    saved = copy.deepcopy(zarr.config.config)
    zarr.config.set({"codec_pipeline.path": engine.PIPELINES["zarr"]})
    yield
    zarr.config.config.clear()
    zarr.config.config.update(saved)


@pytest.fixture
def zarrs_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import zarrs`` fail, as in an image without it."""
    monkeypatch.setitem(sys.modules, "zarrs", None)
    monkeypatch.setattr(engine, "_fallback_logged", False)


# -- where the arrays live: a local directory, or SeaweedFS read through obstore -------------


Place = tuple[str, Callable[[bool], Any], dict[str, Any] | None]
# (url, open a store: read_only -> store, the storage options a job would be given)


def local_place(tmp_path: Path) -> Place:
    url = (tmp_path / f"{uuid.uuid4().hex[:8]}.zarr").as_uri()
    return url, lambda read_only: open_store(url, read_only=read_only), None


def s3_place(s3_home: tuple[SeaweedFS, Settings]) -> Place:
    _, settings = s3_home
    url = f"s3://{DATA_BUCKET}/{uuid.uuid4().hex[:8]}/array.zarr"
    options = objectstore.platform_options(settings, url)
    opener = lambda read_only: open_store(url, read_only=read_only, storage_options=options)  # noqa: E731
    return url, opener, options


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "local":
        return local_place(tmp_path)
    return s3_place(request.getfixturevalue("s3_home"))


def write(open_writer: Callable[[bool], Any], case: Case) -> np.ndarray:
    data = case.data()
    array = zarr.create_array(
        open_writer(False),
        shape=case.shape,
        chunks=case.chunks,
        shards=case.shards,
        dtype=case.dtype,
        compressors=ZstdCodec(level=3),
    )
    array[:] = data
    return data


def plain(store: Any) -> Any:
    """The store zarrs can open itself: zarr's own LocalStore or ObjectStore, unwrapped."""
    if isinstance(store, zarr.storage.LocalStore):
        return store
    return zarr.storage.ObjectStore(store.store, read_only=True)


# -- the same arrays and the same bytes, whichever engine ----------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_each_engine_decodes_the_same_selection_and_meters_the_same_bytes(
    name: str, place: Place
) -> None:
    pytest.importorskip("zarrs")
    case = CASES[name]
    _, open_reader, _ = place
    expected = write(open_reader, case)[case.select]
    job = f"engine-{uuid.uuid4().hex[:6]}"

    reads: dict[str, tuple[np.ndarray, int]] = {}
    for chosen in ("zarr", "zarrs", "zarr"):
        assert engine.configure(chosen) == chosen
        metering.reset(job)
        array = zarr.open_array(store=metering.CountingStore(open_reader(True), job), mode="r")
        block = np.asarray(array[case.select])
        reads[chosen] = (block, metering.snapshot(job)["bytes"])
        # zarrs cannot open a wrapped store: zarr's pipeline reads through the wrapper
        assert engine.engine_of(array) == "zarr"
    metering.forget(job)

    for chosen, (block, _) in reads.items():
        assert block.dtype == expected.dtype and np.array_equal(block, expected), chosen
    assert reads["zarr"][1] == reads["zarrs"][1] > 0

    # The control: on zarr's own store zarrs does decode, to the same values.
    engine.configure("zarrs")
    direct = zarr.open_array(store=plain(open_reader(True)), mode="r")
    assert engine.engine_of(direct) == "zarrs"
    assert np.array_equal(np.asarray(direct[case.select]), expected)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("block", [(16, 32, 32), (32, 32, 64)])
@pytest.mark.parametrize("whole", [False, True], ids=["selection", "whole"])
def test_the_reader_decodes_with_zarrs_and_counts_every_byte(
    name: str,
    block: tuple[int, int, int],
    whole: bool,
    place: Place,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runtime's own reader reads with zarrs and counts what zarr's pipeline counts.

    zarrs reads the store itself, past the counting store; the reader counts its blocks by
    the stored size of what they fetched, and reads parts of shards with zarr's pipeline.
    """
    pytest.importorskip("zarrs")
    from insitu.blocks import ReadPlan
    from insitu.catalog import inspect_store
    from insitu.runtime import reader

    case = CASES[name]
    url, open_writer, options = place
    expected = write(open_writer, case)
    info = inspect_store(url, storage_options=options).arrays[0]
    monkeypatch.setattr(reader, "REMOTE_ZARRS_MIN_OBJECT_BYTES", 0)  # tiny test objects
    select = np.s_[:, :, :] if whole else case.select
    ranges = [s.indices(n)[:2] for s, n in zip(select, case.shape, strict=True)]
    totals, fast_blocks = {}, {}
    for chosen in ("zarr", "zarrs"):
        plan = ReadPlan(block=list(block), engine=chosen, concurrency=8)
        job = f"reader-{chosen}-{uuid.uuid4().hex[:6]}"
        metering.reset(job)
        read = reader.BlockReader.__getitem__
        fast_reads: list[bool] = []

        def spy(self: Any, key: Any, read: Any = read, seen: list[bool] = fast_reads) -> Any:
            region = [(s.start + o, s.stop + o) for s, o in zip(key, self.offsets, strict=True)]
            seen.append(self.reads_fast(region))
            return read(self, key)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(reader.BlockReader, "__getitem__", spy)
            data = reader.open_selection(url, info, ranges, options, job=job, plan=plan)
            assert np.array_equal(data.compute(scheduler="threads"), expected[select])
        totals[chosen] = metering.snapshot(job)
        metering.forget(job)
        fast_blocks[chosen] = sum(fast_reads)
        all_blocks = len(fast_reads)
    assert totals["zarr"]["bytes"] == totals["zarrs"]["bytes"] > 0
    assert totals["zarr"]["chunks"] == totals["zarrs"]["chunks"] > 0
    assert fast_blocks["zarr"] == 0
    if case.shards is None:  # zarrs reads every block of an unsharded array
        assert fast_blocks["zarrs"] == all_blocks
    elif whole:  # and the blocks made of whole shards (here, some of them)
        assert 0 < fast_blocks["zarrs"] < all_blocks or block == (32, 32, 64)
    else:  # every block starts inside a shard (x from 7): zarr's pipeline reads them
        assert fast_blocks["zarrs"] == 0


@pytest.mark.s3
def test_small_objects_in_an_object_store_are_read_by_zarrs_pipeline(
    s3_home: tuple[SeaweedFS, Settings], tmp_path: Path
) -> None:
    """Counting zarrs' reads costs a HEAD per object: small remote objects stay on zarr's."""
    pytest.importorskip("zarrs")
    from insitu.blocks import ReadPlan
    from insitu.catalog import inspect_store
    from insitu.runtime import reader

    case = CASES["2p uint16 zstd"]  # 32x64x48 uint16 chunks: 192 KiB
    plan = ReadPlan(block=[32, 64, 48], engine="zarrs", concurrency=8)
    remote_url, remote_writer, options = s3_place(s3_home)
    local_url, local_writer, _ = local_place(tmp_path)
    for url, writer, opts in (
        (remote_url, remote_writer, options),
        (local_url, local_writer, None),
    ):
        write(writer, case)
        info = inspect_store(url, storage_options=opts).arrays[0]
        metered, fast = reader.open_arrays(url, info, opts, plan=plan)
        assert engine.engine_of(metered) == "zarr"
        if url == remote_url:
            assert fast is None
        else:  # a stat per file costs next to nothing: zarrs reads local files of any size
            assert fast is not None and engine.engine_of(fast) == "zarrs"
    assert reader.REMOTE_ZARRS_MIN_OBJECT_BYTES > 32 * 64 * 48 * 2


# -- choosing the engine --------------------------------------------------------------------


def test_auto_uses_zarrs_where_it_is_installed() -> None:
    pytest.importorskip("zarrs")
    assert engine.configure("auto") == "zarrs"
    assert zarr.config.get("codec_pipeline.path") == engine.PIPELINES["zarrs"]
    assert engine.configure("zarr") == "zarr"
    assert zarr.config.get("codec_pipeline.path") == engine.PIPELINES["zarr"]


def test_auto_falls_back_to_zarr_when_zarrs_cannot_be_imported(
    zarrs_missing: None, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.INFO, logger="insitu.runtime"):
        assert engine.configure("auto") == "zarr"
        assert engine.configure("auto") == "zarr"
    assert zarr.config.get("codec_pipeline.path") == engine.PIPELINES["zarr"]
    said = [r.getMessage() for r in caplog.records if "zarrs is not installed" in r.getMessage()]
    assert len(said) == 1, said  # once per process, not once per block

    case = CASES["EM uint8 3D"]
    _, open_store_at, _ = local_place(tmp_path)
    expected = write(open_store_at, case)
    array = zarr.open_array(store=open_store_at(True), mode="r")
    assert engine.engine_of(array) == "zarr"
    assert np.array_equal(array[case.select], expected[case.select])


def test_asking_for_zarrs_without_it_is_a_clear_error(zarrs_missing: None) -> None:
    with pytest.raises(InvalidInput, match="zarrs package is not installed") as raised:
        engine.configure("zarrs")
    assert "INSITU_READER__ENGINE" in str(raised.value) and "'auto'" in str(raised.value)
    assert zarr.config.get("codec_pipeline.path") == engine.PIPELINES["zarr"]


def test_an_unknown_engine_or_concurrency_is_refused() -> None:
    with pytest.raises(InvalidInput, match="'rust' is not one of 'auto', 'zarrs', 'zarr'"):
        engine.configure("rust")
    with pytest.raises(InvalidInput, match="at least 1"):
        engine.configure("zarr", concurrency=0)


def test_concurrency_is_applied_and_configure_is_idempotent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("zarrs")
    settings = ReaderSettings()
    assert engine.configure(settings.engine, settings.concurrency) == "zarrs"
    assert zarr.config.get("async.concurrency") == settings.concurrency
    assert zarr.config.get("codec_pipeline.chunk_concurrent_maximum") == settings.concurrency

    def unexpected(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("configure changed settings already in force")

    monkeypatch.setattr(zarr.config, "set", unexpected)
    assert engine.configure(settings.engine, settings.concurrency) == "zarrs"
    assert engine.configure("auto") == "zarrs"  # concurrency None leaves it as it is
    assert zarr.config.get("async.concurrency") == settings.concurrency
