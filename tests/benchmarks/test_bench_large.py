"""Keeps the users'-scale benchmark runnable: the same scans on tiny data, no timed asserts."""

from __future__ import annotations

from pathlib import Path

import bench_large
import numpy as np
import pytest

from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_large_benchmark_writes_scans_and_reports(tmp_path: Path) -> None:
    require_seaweedfs()
    session = bench_large.Session(frames=320, size=64, chunk_frames=32, short_frames=64)
    volume = bench_large.EMVolume(depth=128, size=128, chunk=32, every=10)
    result = bench_large.run(tmp_path / "home", session, volume)
    figures = result["figures"]
    assert list(figures) == ["short session", "whole session", "EM volume"]
    whole = figures["whole session"]
    assert whole["raw_bytes"] == 320 * 64 * 64 * 2
    assert 0 < whole["bytes_returned"] < whole["bytes_scanned"]
    assert all(f["runner_peak_rss"] > 0 for f in figures.values())
    # One chunk in ten of the volume is written: the job reads only those bytes.
    assert 0 < figures["EM volume"]["bytes_scanned"] < np.prod(volume.shape) / 5
    assert [g["target"] for g in result["goals"]] == [0.8, "< 1 GiB", "<= 2 GiB"]
    bench_large.plot(result, tmp_path / "large.png")
    assert (tmp_path / "large.png").read_bytes().startswith(b"\x89PNG")
    assert "| whole session |" in bench_large.report(result)
    # A second run finds the data written and does not write it again.
    again = bench_large.run(tmp_path / "home", session, volume)
    assert again["figures"]["whole session"]["bytes_scanned"] == whole["bytes_scanned"]
