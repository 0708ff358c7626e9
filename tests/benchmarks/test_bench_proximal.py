"""Keeps the data-proximal benchmark runnable: a tiny movie, one run each, no timed asserts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import bench_proximal
import netlab
import pytest
from common import Movie

from helpers import missing, require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.timeout(120)]


def test_the_proximal_benchmark_runs_and_cleans_up(tmp_path: Path) -> None:
    require_seaweedfs()
    if reason := netlab.unavailable():
        missing("netns", reason)
    movie = Movie(frames=96, size=128, chunk_frames=32)  # 3 MB raw
    result = bench_proximal.run(
        tmp_path / "home",
        movie,
        selection_frames=64,
        repeats=1,
        cache=tmp_path,
        probe_bytes=10**6,
        jobs_per_round=1,
    )

    figures, link = result["figures"], result["link"]
    a, b = figures["download"], figures["insitu"]
    assert figures["answers_agree"] and a["checksums"] == b["checksums"]
    assert a["link_bytes"]["down"] >= result["data"]["selection_stored_bytes"] > 0
    assert a["link_bytes"]["total"] > b["link_bytes"]["total"] > 128 * 128 * 4  # float32 image
    assert figures["bytes_ratio"]["value"] > 1 and figures["speedup"]["value"] > 0
    assert set(b["phases_median_s"]) >= {"submit_s", "wait_s", "fetch_s", "queued_to_running_s"}
    assert link["measured_rtt_ms"] > 10 and link["measured_throughput_mbit"] > 10
    assert [g["target"] for g in result["goals"]] == [100, 10]
    assert all(isinstance(g["met"], bool) for g in result["goals"])
    assert bench_proximal.report(result).startswith("## The data-proximal advantage\n")

    assert not netlab.exists(link["namespace"], link["devices"][0])
    addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert link["addresses"][0] not in addresses


def test_a_lab_is_removed_after_an_error() -> None:
    if reason := netlab.unavailable():
        missing("netns", reason)
    tag = f"t{os.getpid()}"
    with pytest.raises(RuntimeError, match="inside the lab"), netlab.lab_link({"x": 9}, tag=tag):
        assert netlab.exists(*netlab.names(tag)[:2])
        raise RuntimeError("inside the lab")
    assert not netlab.exists(*netlab.names(tag)[:2])
