"""Keeps the gateway benchmark runnable: a tiny movie, one run per path, no timed asserts."""

from __future__ import annotations

import json
from pathlib import Path

import bench_gateway
import pytest

from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.timeout(120)]


def test_the_gateway_benchmark_runs_counts_exactly_and_records(tmp_path: Path) -> None:
    require_seaweedfs()
    movie = bench_gateway.Movie(frames=70, size=128, chunk_frames=32)
    result = bench_gateway.run(tmp_path / "s3", movie, repeats=1)

    figures = result["figures"]
    for bench in ("scan", "raw"):
        assert figures[f"{bench}_direct"]["value"] > 0 and figures[f"{bench}_gateway"]["value"] > 0
        assert figures[f"{bench}_ratio_gateway_over_direct"]["unit"] == "ratio"
        assert figures[f"{bench}_gateway_cpu"]["value"] >= 0
    # What the gateway counts as scanned is exactly what the reads fetched.
    check = result["count_check"]
    assert check["gateway_counted"] == check["stored_bytes"] > 0
    assert "## The store gateway" in bench_gateway.report(result)

    path = tmp_path / "benchmarks.json"
    bench_gateway.record(result, path)
    assert set(json.loads(path.read_text())) == {"store_gateway"}
