"""Keeps the scan benchmark and the docs writer runnable: tiny data, no timed asserts."""

from __future__ import annotations

from pathlib import Path

import bench_scan
import pytest
import run_all
from common import Movie, Volume

from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_scan_benchmark_runs_and_reports(tmp_path: Path) -> None:
    require_seaweedfs()
    sizes = bench_scan.Sizes(Movie(frames=96, size=128, chunk_frames=32), Volume(64, 128, 32))
    result = bench_scan.run(
        tmp_path / "home", sizes, workers_options=(1,), repeats=1, cache=tmp_path / "cache"
    )
    figures = result["figures"]
    assert set(figures) == {w.name for w in bench_scan.WORKLOADS}
    movie = figures["2p mean projection"]
    assert movie["raw_bytes"] == 96 * 128 * 128 * 2
    compare = movie["by_workers"]["1"]
    assert compare["overhead"] > 0 and compare["bytes_scanned"] > 0
    assert compare["bytes_returned"] < compare["bytes_scanned"]
    assert 0 < compare["job_phases"]["compute_s"] < compare["platform"]["seconds"]
    assert 0 < compare["handwritten_phases"]["compute_s"] < compare["handwritten"]["seconds"]
    assert set(compare["overhead_breakdown_s"]) == {
        "startup",
        "compute",
        "after_compute",
        "api_and_polling",
    }
    cpu = compare["cpu_s"]  # where the machine's CPU went, per contender
    assert set(cpu) == {"platform", "handwritten"}
    assert all(c["job"] > 0 and c["store"] >= 0 for c in cpu.values())
    assert cpu["platform"]["server_and_client"] > 0  # the script has no server
    assert movie["local_reader"]["rate_mb_s"] > 0  # the limit, read as jobs read
    assert [g["target"] for g in result["goals"]] == [1.05, 1.2, 0.8] * len(figures)
    assert all(isinstance(g["met"], bool) and g["measured"] > 0 for g in result["goals"])

    docs = tmp_path / "docs"
    docs.mkdir()
    run_all.write_docs({"scan": result}, docs)
    text = (docs / "benchmarks.md").read_text()
    assert "## Scan rate, platform overhead and scaling" in text and "EM histogram" in text
    assert "| server and client | job | store | idle cores |" in text
    assert (docs / "benchmarks-scan.png").read_bytes().startswith(b"\x89PNG")
