"""Keeps the reader benchmark runnable: a tiny movie, one run per reader, no timed asserts."""

from __future__ import annotations

import json
from pathlib import Path

import bench_readers
import pytest

from helpers import require_seaweedfs

pytestmark = [pytest.mark.benchmark, pytest.mark.s3, pytest.mark.timeout(120)]


def test_the_reader_benchmark_runs_and_records(tmp_path: Path) -> None:
    require_seaweedfs()
    movie = bench_readers.Movie(frames=70, size=128, chunk_frames=32)
    result = bench_readers.run(tmp_path / "s3", movie, repeats=1)

    figures = result["figures"]
    assert result["data"]["chunk_count"] == 3 and result["data"]["raw_bytes"] == 70 * 128 * 128 * 2
    for bench in ("scan", "raw"):
        readers = [figures[f"{bench}_{name}"] for name in ("fsspec", "obstore")]
        assert all(r["value"] > 0 and r["unit"] == "MB/s" for r in readers)
        # the metering wrapper counts the same bytes whichever reader is underneath
        assert readers[0]["metered_bytes"] == readers[1]["metered_bytes"] > 0
        assert figures[f"{bench}_ratio_obstore_over_fsspec"]["unit"] == "ratio"
    assert figures["raw_fsspec"]["metered_bytes"] == result["data"]["stored_bytes"]

    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"other_benchmark": {"value": 1}}))
    bench_readers.record(result, path)
    document = json.loads(path.read_text())
    assert set(document) == {"other_benchmark", "zarr_reader_s3"}
    assert document["zarr_reader_s3"]["kept"] == "obstore"  # what open_store uses for s3://
