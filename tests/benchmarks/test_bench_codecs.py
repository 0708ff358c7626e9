"""Keeps the codec benchmark runnable: tiny arrays, one run per contender, no timed asserts."""

from __future__ import annotations

import json
from pathlib import Path

import bench_codecs
import pytest

from helpers import require_seaweedfs

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.s3,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:Successfully reconstructed a store:RuntimeWarning"),
]


def test_the_codec_benchmark_runs_checks_and_reports(tmp_path: Path) -> None:
    require_seaweedfs()
    pytest.importorskip("zarrs")
    pytest.importorskip("tensorstore")
    sizes = bench_codecs.Sizes(
        frames=70, frame_size=64, frames_per_chunk=32, depth=40, size=96, chunk=16, shard=32
    )
    result = bench_codecs.run(tmp_path / "run", sizes, repeats=1, cache=tmp_path / "cache")

    workloads = result["workloads"]
    assert set(workloads) == {"2p", "EM", "EM sharded"}
    assert workloads["2p"]["data"]["raw_bytes"] == 70 * 64 * 64 * 2
    assert workloads["EM sharded"]["data"]["objects"] == 2 * 3 * 3  # shards, not chunks
    for name, workload in workloads.items():
        figures = workload["figures"]
        scans = {k: f for k, f in figures.items() if k.startswith("scan ")}
        assert len(scans) == 6, name  # three contenders, on S3 and on local disk
        assert all(f["correct"] and f["value"] > 0 for f in scans.values()), name
        # the runtime's reader is metered with either pipeline; tensorstore is not
        assert sorted(k for k, f in scans.items() if f["metered_bytes"]) == [
            "scan zarr local",
            "scan zarr s3",
            "scan zarrs local",
            "scan zarrs s3",
        ]
        raw = figures["raw zarr s3"]
        assert raw["metered_bytes"] == workload["data"]["stored_bytes"] > 0
        assert figures["raw tensorstore s3"]["value"] > 0
        # with zarrs the reader counts the bytes zarr's pipeline counts through the store
        metering = workload["metering"]
        assert metering["same_bytes"] and metering["counted"]["s3"]["zarrs"] > 0
        assert workload["fastest_correct_metered"].split()[0] in {"zarr", "zarrs"}

    text = bench_codecs.report(result)
    assert text.startswith("## Codec pipelines") and "EM sharded" in text and "**no**" not in text

    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"other_benchmark": {"value": 1}}))
    bench_codecs.record(result, path)
    assert set(json.loads(path.read_text())) == {"other_benchmark", "zarr_codecs"}
