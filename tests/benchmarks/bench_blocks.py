"""An array of millions of chunks: read blocks sized by bytes against one task per chunk.

An EM volume of 8192^3 uint8 voxels in 64^3 chunks (2,097,152 chunks, 512 GiB raw) lives
in SeaweedFS on 127.0.0.1 as metadata and a sparse subset (a 512^3 block of written
chunks; the rest is the fill value). In one run:

- ``insitu``: a job over the whole array: submit to running (from its events), the tasks
  of its read layer and of a whole-array mean, and the mean of the written subset;
- ``graph``: on one LocalCluster, the whole-array mean built on ``da.from_zarr`` (one
  task per chunk, as a hand-written script does) and on insitu's reader with the plan's
  blocks: tasks, seconds to build the graph, and seconds from ``compute`` until the
  scheduler runs its first task (given up after ``--cap`` seconds).

``.venv/bin/python tests/benchmarks/bench_blocks.py --record`` writes the key ``blocks``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict
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
from insitu.blocks import ReadPlan, block_count, read_plan
from insitu.catalog import inspect_store
from insitu.client import Client
from insitu.config import Settings
from insitu.runtime.reader import open_selection
from insitu.server import background_server
from insitu.storage import open_store

BENCHMARK = "blocks"
ANALYSIS = '''
"""Counts the read layer's tasks and a whole-array mean's, and reads one written subset."""
import time

import numpy as np


def run(data, context, start, stop):
    began = time.perf_counter()
    tasks_mean = len(data.mean().__dask_graph__())
    graph_s = time.perf_counter() - began
    subset = data[start:stop, start:stop, start:stop]
    return {
        "stats": np.array([data.npartitions, tasks_mean, graph_s]),
        "subset_mean": subset.mean(),
    }
'''


def write_sparse_volume(
    url: str, options: dict[str, Any], side: int, chunk: int, region: int
) -> tuple[int, float]:
    """The volume's metadata and one written cube of ``region`` voxels at its centre."""
    store = open_store(url, storage_options=options, read_only=False)
    array = zarr.create_array(
        store,
        shape=(side,) * 3,
        chunks=(chunk,) * 3,
        dtype="uint8",
        fill_value=0,
        dimension_names=["z", "y", "x"],
        overwrite=True,
    )
    start = side // 2
    rng = np.random.default_rng(3)
    cube = rng.integers(1, 255, size=(region,) * 3, dtype=np.uint8)
    array[start : start + region, start : start + region, start : start + region] = cube
    return start, float(cube.mean())


def first_task_seconds(client: DaskClient, array: da.Array, cap: float) -> float | None:
    """Seconds from ``compute`` of the array's mean until the scheduler runs its first task."""
    began = time.perf_counter()
    future = client.compute(array.mean())

    def running(dask_scheduler: Any) -> int:
        return sum(1 for ts in dask_scheduler.tasks.values() if ts.state == "processing")

    try:
        while time.perf_counter() - began < cap:
            if client.run_on_scheduler(running):
                return time.perf_counter() - began
            time.sleep(0.05)
        return None
    finally:
        future.cancel()
        client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def graph_figures(name: str, array: da.Array, client: DaskClient, cap: float) -> dict[str, Any]:
    """Tasks and build time of the whole-array mean, and time to its first running task."""
    began = time.perf_counter()
    tasks = len(array.mean().__dask_graph__())
    build = time.perf_counter() - began
    first = first_task_seconds(client, array, cap)
    print(f"{name}: {array.npartitions} read tasks, {tasks} in the mean, built in {build:.2f} s")
    return {
        "read_tasks": int(array.npartitions),
        "mean_tasks": tasks,
        "graph_build_s": round(build, 3),
        "compute_to_first_task_s": None if first is None else round(first, 3),
    }


def run(
    home: Path,
    side: int = 8192,
    chunk: int = 64,
    region: int = 512,
    cap: float = 300.0,
    movie: Movie = Movie(),
    workers_options: tuple[int, ...] = (1, 2),
    multiples: tuple[int, ...] = (1, 2, 4, 8, 16),
    repeats: int = 3,
    cache: Path = common.CACHE,
) -> dict[str, Any]:
    """Write the sparse volume, run the insitu job and the two graphs, then the sweep."""
    with common.s3_stack(home) as (_, settings):
        settings = common.one_trusted_user(settings)
        url = common.data_url("million.zarr")
        options = objectstore.platform_options(settings, url)
        start, expected = write_sparse_volume(url, options, side, chunk, region)
        info = inspect_store(url, options).arrays[0]
        ranges = [(0, side)] * 3
        chunks = block_count(ranges, info.chunks)
        plan = read_plan(info, ranges, 2 << 30, 2)
        with background_server(settings) as server:
            token = settings.admin_token_path.read_text().strip()
            api = Client(server.url, token, timeout=600)
            api.register_dataset("bench/million", url, access="public")
            with tempfile.TemporaryDirectory() as code:
                Path(code, "million.py").write_text(textwrap.dedent(ANALYSIS))
                bundle = api.upload_code(Path(code))
            spec = {
                "name": "million-chunks",
                "dataset": "bench/million",
                "analysis": {
                    "entrypoint": "million:run",
                    "params": {"start": start, "stop": start + region},
                },
                "resources": {"workers": 1, "threads_per_worker": 2, "memory_per_worker": "2GiB"},
            }
            submitted = time.perf_counter()
            job = api.submit(spec, bundle=bundle)
            done = api.wait(job["id"], poll=0.05)
            wall = time.perf_counter() - submitted
            if done["state"] != "succeeded":
                raise RuntimeError(f"the million-chunk job failed: {done['error']}")
            events = {e["to_state"]: e["at"] for e in api.events(job["id"])}
            stats = api.result(job["id"], "stats")
            subset = float(api.result(job["id"], "subset_mean"))
            api.close()
        insitu = {
            # (a job that ended between two dispatcher passes counts as running at its end)
            "submit_to_running_s": round(
                _between(events["queued"], events.get("running", events["succeeded"])), 3
            ),
            "submit_to_succeeded_s": round(wall, 3),
            "read_tasks": int(stats[0]),
            "mean_tasks": int(stats[1]),
            "mean_graph_build_s": round(float(stats[2]), 3),
            "chunks_per_task": round(chunks / int(stats[0]), 1),
            "subset_mean": subset,
            "subset_mean_expected": expected,
        }
        with (
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True) as cluster,
            DaskClient(cluster) as client,
        ):
            per_chunk = da.from_zarr(open_store(url, storage_options=options), zarr_format=3)
            blocked = open_selection(url, info, ranges, options, "bench", plan)
            graphs = {
                "per_chunk (da.from_zarr)": graph_figures("per chunk", per_chunk, client, cap),
                "insitu blocks": graph_figures("blocks", blocked, client, cap),
            }
        swept = sweep(settings, movie, cache, workers_options, multiples, repeats)
    return {
        "title": "An array of millions of chunks",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": common.machine(),
        "data": {
            "shape": [side] * 3,
            "chunks": [chunk] * 3,
            "dtype": "uint8",
            "chunk_count": chunks,
            "raw_bytes": side**3,
            "written": f"one {region}^3 cube ({block_count([(0, region)] * 3, [chunk] * 3)} "
            "chunks); the rest is the fill value",
            "store": "SeaweedFS on 127.0.0.1",
        },
        "block": plan.block,
        "block_bytes": int(np.prod(plan.block)),
        "insitu_job": insitu,
        "graphs": graphs,
        "sweep": swept,
        "goals": goals(chunks, insitu),
    }


def _between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def sweep(
    settings: Settings,
    movie: Movie,
    cache: Path,
    workers_options: tuple[int, ...],
    multiples: tuple[int, ...],
    repeats: int,
) -> dict[str, Any]:
    """The 2p mean's compute rate with insitu's reader, per workers and block size.

    Blocks of 1, 2, 4... chunks along time; each worker count gets its own LocalCluster
    (processes, 1 thread each); the block sizes' runs are interleaved, after a warm-up.
    """
    local = common.cached(
        cache / f"movie-{movie.frames}x{movie.size}.zarr",
        movie,
        lambda path: common.write_movie(path, movie),
    )
    url = common.data_url(f"sweep-{movie.frames}x{movie.size}.zarr")
    common.upload(local, url, settings)
    options = objectstore.platform_options(settings, url)
    info = inspect_store(url, options).arrays[0]
    ranges = [(0, n) for n in info.shape]
    raw = int(np.prod(info.shape)) * 2
    rates: dict[str, dict[str, float]] = {}
    for workers in workers_options:
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster,
            DaskClient(cluster) as client,
        ):
            seconds: dict[int, list[float]] = {m: [] for m in multiples}
            for repeat in range(repeats + 1):
                for m in multiples:
                    block = [info.chunks[0] * m, *info.chunks[1:]]
                    data = open_selection(
                        url, info, ranges, options, f"s{repeat}", ReadPlan(block=block)
                    )
                    began = time.perf_counter()
                    client.compute(data.mean(axis=0)).result()
                    if repeat:
                        seconds[m].append(time.perf_counter() - began)
            rates[str(workers)] = {
                str(m): round(raw / common.median(seconds[m]) / common.MB, 1) for m in multiples
            }
            print(f"{workers} worker(s): {rates[str(workers)]} MB/s by chunks per block")
    chunk_bytes = int(np.prod(info.chunks)) * 2
    return {
        "data": {**asdict(movie), "raw_bytes": raw, "chunk_bytes": chunk_bytes},
        "repeats": repeats,
        "block_mib": {str(m): m * chunk_bytes / 2**20 for m in multiples},
        "rates_mb_s": rates,
    }


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Compute rate against block size, one line per worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = result["sweep"]
    figure, axes = plt.subplots(figsize=(7, 4))
    for workers, by_block in swept["rates_mb_s"].items():
        sizes = [swept["block_mib"][m] for m in by_block]
        axes.plot(sizes, list(by_block.values()), marker="o", label=f"{workers} worker(s) x 1")
    axes.set_xscale("log", base=2)
    axes.set(xlabel="read block, MiB (decoded)", ylabel="2p mean, decoded MB/s")
    axes.set_title("Scan rate against workers and block size")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def goals(chunks: int, insitu: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals for an array of a million chunks or more."""
    fewer = chunks / insitu["read_tasks"]
    return [
        {
            "goal": f"an array of {chunks:,} chunks: submit to running under 5 s",
            "target": "< 5 s",
            "measured": insitu["submit_to_running_s"],
            "met": insitu["submit_to_running_s"] < 5.0,
        },
        {
            "goal": f"an array of {chunks:,} chunks: at least 16x fewer tasks than chunks",
            "target": 16,
            "measured": round(fewer, 1),
            "met": fewer >= 16,
        },
    ]


def report(result: dict[str, Any]) -> str:
    """The markdown section of docs/benchmarks.md."""
    data, job = result["data"], result["insitu_job"]
    lines = [
        f"## {result['title']}",
        "",
        f"An EM volume of {'x'.join(map(str, data['shape']))} {data['dtype']} voxels in "
        f"{'x'.join(map(str, data['chunks']))} chunks: **{data['chunk_count']:,} chunks**, "
        f"{data['raw_bytes'] / 2**30:,.0f} GiB raw, in {data['store']}; written: "
        f"{data['written']}. A job over the whole array (1 worker x 2 threads, 2 GiB) reads "
        f"in blocks of {'x'.join(map(str, result['block']))} "
        f"({result['block_bytes'] / 2**20:.0f} MiB), planned by the server from "
        "`INSITU_READER__BLOCK_BYTES` and the workers' memory.",
        "",
        "| | insitu job |",
        "|---|---:|",
        f"| submit to running | {job['submit_to_running_s']} s |",
        f"| submit to succeeded (the sparse subset read) | {job['submit_to_succeeded_s']} s |",
        f"| read tasks | {job['read_tasks']:,} ({job['chunks_per_task']:,} chunks per task) |",
        f"| tasks of a whole-array mean | {job['mean_tasks']:,} |",
        f"| subset mean (expected) | {job['subset_mean']:.4f} "
        f"({job['subset_mean_expected']:.4f}) |",
        "",
        "The whole-array mean's graph on one LocalCluster (1 worker x 2 threads), one task per "
        "chunk as `da.from_zarr` builds it, against insitu's read blocks:",
        "",
        "| graph | read tasks | tasks of the mean | build s | compute to first task s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, g in result["graphs"].items():
        first = g["compute_to_first_task_s"]
        lines.append(
            f"| {name} | {g['read_tasks']:,} | {g['mean_tasks']:,} | {g['graph_build_s']} | "
            f"{'gave up' if first is None else first} |"
        )
    swept = result["sweep"]
    multiples = list(next(iter(swept["rates_mb_s"].values())))
    lines += [
        "",
        f"Scan rate against workers and block size: the mean over time of a "
        f"{swept['data']['raw_bytes'] / 1e9:.2f} GB 2p movie "
        f"({swept['data']['chunk_bytes'] / 2**20:.0f} MiB chunks) with insitu's reader on a "
        f"LocalCluster, {swept['repeats']} interleaved runs per size after a warm-up, medians, "
        "decoded MB/s:",
        "",
        "![scan rate against workers and block size](benchmarks-blocks.png)",
        "",
        "| workers x 1 thread | "
        + " | ".join(f"{swept['block_mib'][m]:.0f} MiB" for m in multiples)
        + " |",
        "|---|" + "---:|" * len(multiples),
    ]
    for workers, by_block in swept["rates_mb_s"].items():
        lines.append(f"| {workers} | " + " | ".join(str(by_block[m]) for m in multiples) + " |")
    lines += ["", *common.goals_markdown(result["goals"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192, help="voxels per axis")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--frames", type=int, default=Movie().frames, help="the sweep's movie")
    parser.add_argument("--cap", type=float, default=300.0, help="seconds to wait for a task")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.json")
    args = parser.parse_args(argv)
    with common.scratch() as home:
        result = run(home, args.side, args.chunk, cap=args.cap, movie=Movie(frames=args.frames))
    if args.record:
        plot_sweep(result, common.DOCS / "benchmarks-blocks.png")
    print(report(result))
    common.publish(BENCHMARK, result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
