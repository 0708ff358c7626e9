"""Keeps the outputs benchmark runnable: a small movie, no timed asserts."""

from __future__ import annotations

from pathlib import Path

import bench_outputs
import pytest
from common import Movie

from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_outputs_benchmark_writes_all_three_and_checks_one(tmp_path: Path) -> None:
    require_seaweedfs()
    result = bench_outputs.run(
        tmp_path / "home", Movie(frames=64, size=128, chunk_frames=32), (32, 64, 64), repeats=1
    )
    assert set(result["median_s"]) == {"handwritten", "insitu, one level", "insitu, pyramid"}
    assert result["pyramid_levels"] == 2 and result["check"]["objects"] > 0
    assert len(result["goals"]) == 3
    assert "| insitu, pyramid |" in bench_outputs.report(result)
