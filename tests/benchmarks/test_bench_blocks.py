"""Keeps the million-chunk benchmark runnable: a small sparse volume, no timed asserts."""

from __future__ import annotations

from pathlib import Path

import bench_blocks
import pytest
from common import Movie

from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_million_chunk_benchmark_runs_and_reads_the_subset_exactly(tmp_path: Path) -> None:
    require_seaweedfs()
    result = bench_blocks.run(
        tmp_path / "home",
        side=1024,
        chunk=32,
        region=64,
        cap=60,
        movie=Movie(frames=96, size=128, chunk_frames=16),
        multiples=(1, 2),
        repeats=1,
        cache=tmp_path / "cache",
    )
    job = result["insitu_job"]
    assert result["data"]["chunk_count"] == 32**3
    assert job["subset_mean"] == pytest.approx(job["subset_mean_expected"], rel=1e-12)
    assert job["read_tasks"] * 16 <= result["data"]["chunk_count"]
    per_chunk, blocks = result["graphs"].values()
    assert per_chunk["read_tasks"] == 32**3 and blocks["read_tasks"] == job["read_tasks"]
    assert blocks["mean_tasks"] < per_chunk["mean_tasks"]
    assert [g["met"] for g in result["goals"]][1] is True
    assert set(result["sweep"]["rates_mb_s"]["2"]) == {"1", "2"}
    assert all(rate > 0 for rate in result["sweep"]["rates_mb_s"]["1"].values())
    assert "| read tasks |" in bench_blocks.report(result)
    bench_blocks.plot_sweep(result, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
