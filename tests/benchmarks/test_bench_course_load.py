"""Keeps the course load test runnable: a few participants, both databases, no timed asserts."""

from __future__ import annotations

from pathlib import Path

import bench_course_load
import pytest

import dockerlab
from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-noop", marks=pytest.mark.postgres),
        pytest.param("docker", marks=[pytest.mark.postgres, pytest.mark.docker, pytest.mark.s3]),
    ],
)
def test_the_course_load_test_runs_and_loses_nothing(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    if kind in ("postgres", "postgres-noop", "docker"):
        request.getfixturevalue("postgres_admin_url")  # skip, or fail under INSITU_REQUIRE
    if kind == "docker":
        require_seaweedfs()
        dockerlab.engine()
        dockerlab.debian_base()
    processes = 2 if kind == "postgres-noop" else 1  # API replicas beside the dispatcher's
    result = bench_course_load.run(
        tmp_path, participants=4, jobs=2, slots=4, kinds=[kind], processes=processes
    )
    figures = result["figures"][kind]
    assert figures["api_processes"] == processes
    assert figures["submitted"] == figures["distinct_ids"] == figures["in_database"] == 8
    assert figures["succeeded"] == 8 and figures["ran_more_than_once"] == 0
    assert figures["errors"] == []
    assert figures["fairness_slowest_over_fastest"] >= 1.0
    lost = [g for g in result["goals"] if "nothing lost" in g["goal"]]
    assert lost and all(goal["met"] for goal in lost)
    assert figures["idle_warm_submit_to_running_s"]["median"] > 0
    if kind == "docker":  # the load's jobs, too, found isolated sandboxes waiting
        assert figures["started_warm"] >= 1
    assert "| submit latency (ms), p50 / p99 |" in bench_course_load.report(result)
