"""Writing outputs next to the data: insitu.Output against a hand-written ``da.to_zarr``.

A synthetic two-photon movie (uint16, computed on the workers, never read from a store)
is written to SeaweedFS on 127.0.0.1 by the same LocalCluster, in one run, interleaved:

- ``handwritten``: ``da.to_zarr`` of the array into a plain Zarr v3 array, as a user
  would write it by hand (no pyramid, no OME metadata);
- ``insitu, one level``: ``insitu.Output(array, levels=1)`` as the runtime writes it
  (OME-Zarr 0.5 metadata, the same chunks and codecs);
- ``insitu, pyramid``: ``insitu.Output(array)`` with its default multiscale pyramid.

Then the server's check of what was written (its own listing, the metadata read back,
the catalog's reader), as a share of the write. Goals: one level within 1.10x of the
hand-written write; the pyramid costs what its extra levels weigh, within 1.5x; the
server's check under 10% of the write.

``.venv/bin/python tests/benchmarks/bench_outputs.py --record`` writes the key ``outputs``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import dask.array as da
import numpy as np
import zarr
from common import Movie
from distributed import Client as DaskClient
from distributed import LocalCluster

from insitu import objectstore
from insitu.catalog import ArrayInfo
from insitu.runtime.outputs import Output, prepare
from insitu.runtime.workspace import Workspace
from insitu.storage import open_store
from insitu.trusted.outputs import check_outputs

BENCHMARK = "outputs"
TITLE = "Outputs kept next to the data: insitu.Output against da.to_zarr"


def movie_array(movie: Movie) -> da.Array:
    """The synthetic movie as a Dask array computed chunk by chunk on the workers."""

    def frames(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        (start, stop), _, _ = block_info[None]["array-location"]
        return common.synthetic_frames(movie, start, stop)

    return da.map_blocks(frames, dtype=np.uint16, chunks=da.core.normalize_chunks(
        movie.chunks, movie.shape))  # fmt: skip


def source_info(movie: Movie, chunks: tuple[int, ...]) -> ArrayInfo:
    """The input an output inherits its chunks, axes and scale from."""
    return ArrayInfo(
        path="0",
        shape=list(movie.shape),
        dtype="uint16",
        chunks=list(chunks),
        axes=["t", "y", "x"],
        units=["second", "micrometer", "micrometer"],
        scale=[1 / 30, 0.8, 0.8],
        zarr_format=3,
    )


def handwritten(
    array: da.Array, url: str, options: dict[str, Any], chunks: tuple[int, ...]
) -> None:
    store = open_store(url, read_only=False, storage_options=options)
    target = zarr.create_array(
        store, shape=array.shape, chunks=chunks, dtype=array.dtype, overwrite=True,
        dimension_names=["t", "y", "x"], fill_value=0,
    )  # fmt: skip
    da.store(array.rechunk(chunks), target, lock=False)


def with_insitu(
    array: da.Array,
    url: str,
    options: dict[str, Any],
    movie: Movie,
    chunks: tuple[int, ...],
    levels: int | None,
) -> int:
    """Write ``array`` as the runtime writes an output; return its pyramid's levels."""
    sources, targets, plan = prepare(
        "movie", Output(array, levels=levels), url, options, source_info(movie, chunks),
        [(0, n) for n in movie.shape], "bench/movie",
    )  # fmt: skip
    da.store(sources, targets, lock=False)
    return len(plan.factors)


def run(
    home: Path,
    movie: Movie = Movie(frames=512, size=512, chunk_frames=64),
    chunks: tuple[int, int, int] = (64, 256, 256),
    repeats: int = 5,
    workers: int = 2,
) -> dict[str, Any]:
    """Interleave the three writers, then time the server's check of one output."""
    with common.s3_stack(home) as (_, settings):
        root = common.data_url("outputs-bench")
        options = objectstore.platform_options(settings, root)
        movie_chunks = Movie(frames=movie.frames, size=movie.size, chunk_frames=chunks[0])
        array = movie_array(movie_chunks)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
        with cluster, DaskClient(cluster):
            levels: dict[str, int] = {}
            count = {"n": 0}

            def url(name: str) -> str:
                count["n"] += 1
                return f"{root}/{name}-{count['n']}.ome.zarr"

            def one_level() -> float:
                seconds, levels["one"] = common.timed(
                    lambda: with_insitu(array, url("one"), options, movie_chunks, chunks, 1)
                )
                return seconds

            def pyramid() -> float:
                seconds, levels["pyramid"] = common.timed(
                    lambda: with_insitu(array, url("pyramid"), options, movie_chunks, chunks, None)
                )
                return seconds

            runs = common.interleaved(
                {
                    "handwritten": lambda: common.timed(
                        lambda: handwritten(array, url("plain"), options, chunks)
                    )[0],
                    "insitu, one level": one_level,
                    "insitu, pyramid": pyramid,
                },
                repeats,
            )
            # The server's check, as the dispatcher makes it after the job: one output.
            workspace_url = f"{root}/job"
            kept = f"{workspace_url}/outputs/movie.ome.zarr"
            with_insitu(array, kept, options, movie_chunks, chunks, None)
            workspace = Workspace(workspace_url, options)
            check_s, checked = common.timed(lambda: check_outputs(workspace, options, 1_000_000))
    medians = {name: round(common.median(values), 3) for name, values in runs.items()}
    base = medians["handwritten"]
    one, pyr = medians["insitu, one level"] / base, medians["insitu, pyramid"] / base
    extra = sum(1 / 4**level for level in range(1, levels["pyramid"]))  # y and x halve
    share = check_s / medians["insitu, pyramid"]
    return {
        "title": TITLE,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": common.machine(),
        "movie": {"shape": list(movie.shape), "chunks": list(chunks),
                  "raw_mb": round(movie.raw_bytes / common.MB, 1)},
        "workers": workers,
        "repeats": repeats,
        "seconds": {name: [round(v, 3) for v in values] for name, values in runs.items()},
        "median_s": medians,
        "rate_mb_s": {name: round(movie.raw_bytes / common.MB / s, 1)
                      for name, s in medians.items()},
        "pyramid_levels": levels["pyramid"],
        "pyramid_extra_bytes": round(extra, 3),
        "check": {"seconds": round(check_s, 3), "objects": checked[0].objects,
                  "stored_mb": round(checked[0].stored_bytes / common.MB, 1)},
        "goals": [
            {"goal": "one level against da.to_zarr", "target": "<= 1.10x",
             "measured": f"{one:.2f}x", "met": one <= 1.10},
            {"goal": f"pyramid ({levels['pyramid']} levels, +{extra:.0%} bytes) against da.to_zarr",
             "target": "<= 1.5x", "measured": f"{pyr:.2f}x", "met": pyr <= 1.5},
            {"goal": "the server's check of the output, share of its write", "target": "< 10%",
             "measured": f"{share:.1%}", "met": share < 0.10},
        ],
    }  # fmt: skip


def report(result: dict[str, Any]) -> str:
    """The markdown section of docs/benchmarks.md."""
    movie = result["movie"]
    base = result["median_s"]["handwritten"]
    lines = [
        f"## {result['title']}",
        "",
        f"`tests/benchmarks/bench_outputs.py`, {result['date']}: a synthetic uint16 movie of "
        f"{movie['shape']} ({movie['raw_mb']} MB) in chunks of {movie['chunks']}, computed on a "
        f"LocalCluster of {result['workers']} one-thread workers and written to SeaweedFS on "
        f"127.0.0.1; {result['repeats']} interleaved runs (medians). The pyramid has "
        f"{result['pyramid_levels']} levels. The server's check of one output (its listing of "
        f"{result['check']['objects']} objects, {result['check']['stored_mb']} MB stored, the "
        f"metadata and the catalog's reader) took {result['check']['seconds']} s.",
        "",
        "| writer | median s | MB/s | against da.to_zarr |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in result["median_s"].items():
        lines.append(
            f"| {name} | {seconds} | {result['rate_mb_s'][name]} | {seconds / base:.2f}x |"
        )
    lines += ["", *common.goals_markdown(result["goals"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with common.scratch() as home:
        result = run(home, Movie(frames=args.frames, size=args.size), repeats=args.repeats)
    print(report(result))
    print(f"took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    common.publish(BENCHMARK, result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
