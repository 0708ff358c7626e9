"""Read blocks: tasks sized by bytes, aligned to chunks and shards, read exactly."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from insitu.blocks import (
    ReadPlan,
    block_count,
    plan_block,
    read_plan,
    target_bytes,
    units_touched,
)
from insitu.catalog import ArrayInfo, inspect_store
from insitu.client import Client
from insitu.config import ReaderSettings, Settings
from insitu.runtime import metering
from insitu.runtime.reader import open_selection
from insitu.server import background_server

MiB = 1 << 20
MEAN = "ophys_analyses.projection:mean_projection"
MOVIE = [(0, 90), (0, 37), (0, 29)]


def info(shape, chunks, dtype="uint8", shards=None) -> ArrayInfo:  # type: ignore[no-untyped-def]
    return ArrayInfo(
        path="",
        shape=list(shape),
        dtype=dtype,
        chunks=list(chunks),
        shards=list(shards) if shards else None,
        axes=[f"d{i}" for i in range(len(shape))],
        zarr_format=3,
    )


def test_units_touched_counts_the_cells_a_range_meets() -> None:
    assert units_touched(0, 64, 64) == 1
    assert units_touched(0, 65, 64) == 2
    assert units_touched(63, 65, 64) == 2
    assert units_touched(10, 10, 64) == 0


def test_a_two_photon_movie_is_read_in_blocks_of_whole_frames_near_the_target() -> None:
    movie = info((2100, 512, 512), (64, 512, 512), "uint16")
    block = plan_block(movie, [(0, 2100), (0, 512), (0, 512)], 128 * MiB)
    assert block == [256, 512, 512]  # 4 chunks of 32 MiB
    assert block_count([(0, 2100), (0, 512), (0, 512)], block) == 9


@pytest.mark.parametrize("target", [1 * MiB, 16 * MiB, 128 * MiB, 512 * MiB])
def test_an_em_volume_of_millions_of_chunks_gets_few_tasks_each_within_the_target(
    target: int,
) -> None:
    volume = info((8192, 8192, 8192), (64, 64, 64))
    ranges = [(0, 8192)] * 3
    block = plan_block(volume, ranges, target)
    chunks = block_count(ranges, volume.chunks)
    assert chunks == 128**3  # 2,097,152 chunks
    assert all(b % 64 == 0 for b in block)
    assert math.prod(block) <= target
    assert math.prod(block) * 2 > target  # not needlessly small
    assert block_count(ranges, block) * math.prod(block) // (64**3) == chunks
    if target >= 16 * MiB:
        assert chunks / block_count(ranges, block) >= 16


def test_a_block_never_grows_past_the_selection() -> None:
    volume = info((8192, 8192, 8192), (64, 64, 64))
    block = plan_block(volume, [(0, 64), (0, 64), (0, 8192)], 128 * MiB)
    assert block[:2] == [64, 64] and block[2] == 8192


def test_whole_shards_when_a_shard_fits_and_whole_chunks_inside_one_when_it_does_not() -> None:
    small = info((4096,) * 3, (64,) * 3, shards=(256,) * 3)  # 16 MiB shards
    block = plan_block(small, [(0, 4096)] * 3, 128 * MiB)
    assert all(b % 256 == 0 for b in block) and math.prod(block) <= 128 * MiB
    big = info((4096,) * 3, (64,) * 3, shards=(1024,) * 3)  # 1 GiB shards
    block = plan_block(big, [(0, 4096)] * 3, 128 * MiB)
    assert all(1024 % b == 0 and b % 64 == 0 for b in block)  # no task straddles two shards
    assert math.prod(block) <= 128 * MiB


def test_a_chunk_larger_than_the_target_is_read_alone() -> None:
    huge = info((10, 4096, 4096), (1, 4096, 4096), "float64")  # 128 MiB chunks
    assert plan_block(huge, [(0, 10), (0, 4096), (0, 4096)], 16 * MiB) == [1, 4096, 4096]


def test_the_target_is_capped_by_what_a_task_may_hold_in_its_worker() -> None:
    assert target_bytes(128 * MiB, 2 << 30, 2) == 128 * MiB
    assert target_bytes(128 * MiB, 512 * MiB, 4) == 16 * MiB
    plan = read_plan(
        info((1000, 512, 512), (10, 512, 512), "uint16"),
        [(0, 1000), (0, 512), (0, 512)],
        256 * MiB,
        2,
        reader=ReaderSettings(block_bytes=1 << 30),
    )
    assert math.prod(plan.block) * 2 <= 16 * MiB


def test_a_small_selection_is_cut_so_that_every_core_gets_several_blocks() -> None:
    volume = info((384, 1024, 1024), (128, 128, 128))  # 0.4 GB, 2 MiB chunks
    ranges = [(0, 384), (0, 1024), (0, 1024)]
    assert target_bytes(128 * MiB, 2 << 30, 1, 384 * MiB, cores=2) == 48 * MiB
    plan = read_plan(volume, ranges, 2 << 30, 1, workers=2)
    assert block_count(ranges, plan.block) >= 4 * 2
    assert plan.block != volume.chunks  # still fewer tasks than chunks
    big = read_plan(volume, ranges, 2 << 30, 1, workers=2, reader=ReaderSettings(block_bytes=MiB))
    assert big.block == volume.chunks  # a 2 MiB chunk is never split below the 1 MiB target


@pytest.mark.parametrize("sharded", [False, True])
def test_blocks_read_exactly_the_selection_and_count_every_chunk_once(
    tmp_path: Path, sharded: bool
) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 255, size=(70, 90, 50), dtype=np.uint8)
    root = tmp_path / "v.zarr"
    array = zarr.create_array(
        root,
        shape=data.shape,
        chunks=(8, 8, 8),
        shards=(16, 16, 16) if sharded else None,
        dtype=data.dtype,
    )
    array[:] = data
    described = inspect_store(root.as_uri()).arrays[0]
    ranges = [(3, 61), (10, 90), (0, 41)]
    for target in (512, 4096, 64 * 1024):
        block = plan_block(described, ranges, target)
        job = f"blocks-{sharded}-{target}"
        metering.reset(job)
        lazy = open_selection(root.as_uri(), described, ranges, job=job, plan=ReadPlan(block=block))
        assert lazy.npartitions == block_count(ranges, block)
        for axis, sizes in enumerate(lazy.chunks):  # interior edges on block multiples
            edges = list(itertools.accumulate(sizes))[:-1]
            assert all((ranges[axis][0] + e) % block[axis] == 0 for e in edges)
        got = lazy.compute(scheduler="synchronous")
        np.testing.assert_array_equal(got, data[3:61, 10:90, 0:41])
        counted = metering.snapshot(job)
        assert counted["chunks"] == block_count(ranges, described.chunks)
        assert counted["bytes"] > 0


@pytest.mark.slow
def test_the_server_plans_the_blocks_from_its_setting_and_the_job_reads_in_them(
    settings: Settings, movie: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "examples/ophys"))
    # 3 x 3 x 2 = 18 chunks of 32 x 16 x 16 uint16 (16 KiB), 193 KB in all: on one core the
    # default would read 2 chunks a block (4 blocks a core); the setting allows one.
    assert plan_block(info((90, 37, 29), (32, 16, 16), "uint16"), MOVIE, 48_000) == [32, 32, 16]
    configured = settings.model_copy(update={"reader": ReaderSettings(block_bytes=16 * 1024)})
    with (
        background_server(configured) as server,
        Client(server.url, configured.admin_token_path.read_text().strip()) as api,
    ):
        api.register_dataset("b/movie", str(movie[0]), access="public")
        spec = {
            "dataset": "b/movie",
            "analysis": {"entrypoint": MEAN},
            "resources": {"threads_per_worker": 1},
        }
        done = api.wait(api.submit(spec)["id"], timeout=90)
        assert done["state"] == "succeeded", done["error"]
        plan = json.loads((configured.home / "jobs" / done["id"] / "job.json").read_text())["read"]
        assert plan["block"] == [32, 16, 16] and plan["concurrency"] == 32
        assert "18 chunks in 18 blocks of [32, 16, 16]" in api.log_text(done["id"])
        assert done["progress"] == {"chunks_done": 18, "chunks_total": 18}
        expected = movie[1].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(api.result(done["id"], "mean"), expected, rtol=1e-6)
