"""Keeps the docker benchmark runnable: a tiny movie, one job per backend, no timed asserts."""

from __future__ import annotations

import math
from pathlib import Path

import bench_docker
import pytest
from common import Movie

import dockerlab
from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.docker, pytest.mark.s3, pytest.mark.timeout(600)]


def test_the_docker_benchmark_runs_and_reports(tmp_path: Path) -> None:
    require_seaweedfs()
    dockerlab.engine()
    dockerlab.debian_base()
    result = bench_docker.run(
        tmp_path, Movie(frames=64, size=64, chunk_frames=16), repeats=1, cold_build=False
    )
    figures = result["figures"]
    assert math.isnan(figures["image_build_cold_s"]) and figures["image_build_unchanged_s"] > 0
    for backend in ("local", "docker"):
        phases = figures["jobs"][backend]
        assert 0 < phases["submit_to_running_s"] <= phases["submit_to_succeeded_s"]
        assert len(figures["runs"][backend]) == 1
    assert set(figures["docker_over_local"]) == {"submit_to_running_s", "submit_to_succeeded_s"}
    assert "| submit to running |" in bench_docker.report(result)
