"""Keeps the Dask Gateway peer benchmark runnable: tiny movies, one round, no timed asserts."""

from __future__ import annotations

from pathlib import Path

import bench_dask_gateway
import pytest
from common import Movie

from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_dask_gateway_benchmark_runs_agrees_and_reports(tmp_path: Path) -> None:
    require_seaweedfs()
    sizes = bench_dask_gateway.Sizes(
        short=Movie(frames=40, size=64, chunk_frames=16),
        long=Movie(frames=96, size=64, chunk_frames=16),
    )
    result = bench_dask_gateway.run(
        tmp_path / "home", sizes, workers=1, repeats=1, cache=tmp_path / "cache", warmup=False
    )

    for length in bench_dask_gateway.LENGTHS:
        figures = result["figures"][length]
        # Every contender computed the same mean image.
        assert figures["answers"]["agree"], figures["answers"]
        assert figures["answers"]["shape"] == [64, 64]
        for name in bench_dask_gateway.CONTENDERS:
            assert figures["seconds"][name]["median"] > 0
        gateway = figures["phases_s"]["gateway"]
        assert set(gateway) == {
            "startup_s",
            "create_s",
            "scale_to_ready_s",
            "compute_s",
            "fetch_s",
            "close_s",
        }
        insitu = figures["split_s"]["insitu"]
        assert 0 < insitu["compute"] < figures["seconds"]["insitu"]["median"]
        assert figures["ratios"]["insitu_over_gateway"] > 0
        assert figures["ratios"]["insitu_warm_over_gateway"] > 0
        warm = figures["phases_s"]["insitu_warm"]
        assert warm["compute_s"] > 0  # the warm pool ran it, and reported its phases
    assert [g["target"] for g in result["goals"]] == [0.5, 0.5, 1.0, 1.0]

    text = bench_dask_gateway.report(result)
    assert text.startswith("## Dask Gateway as the peer")
    assert "insitu / gateway" in text and "The long job's answers agree" in text
