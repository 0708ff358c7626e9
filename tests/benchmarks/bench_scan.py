"""Scan rate, platform overhead and scaling: insitu jobs against this machine's limits.

For each workload (a 2p mean projection; an EM histogram and a 2x downsample), in one run
with the contenders interleaved:

- ``platform``: an insitu job on the local backend, from submit to every result fetched;
- ``handwritten``: the same analysis as a hand-written Dask script (``handwritten.py``)
  on the same store with the same workers, started as a fresh process, as a user would;
- ``raw_get``: every chunk fetched from the store with concurrent GETs, no decoding;
- ``local_disk``: the same analysis decoded and reduced from a local copy on disk, with
  dask's threaded scheduler on every core, by ``da.from_zarr`` on zarr's defaults (as the
  hand-written script reads) and by the runtime's own reader (``local_reader``; zarrs
  where it imports, in the server's read blocks). The limit a job is held to is
  min(raw GET, local decode with the runtime's reader).

Rates are in MB/s of the array's raw (decoded) bytes. ``.venv/bin/python
tests/benchmarks/bench_scan.py --record`` writes the key ``scan`` of docs/benchmarks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import common
import dask
import dask.array as da
import handwritten
import psutil
import zarr
from common import MB, Movie, Volume

from insitu.blocks import read_plan
from insitu.catalog import inspect_store
from insitu.client import Client
from insitu.config import Settings
from insitu.runtime.reader import open_selection
from insitu.server import BackgroundServer, background_server
from insitu.storage import open_store

BENCHMARK = "scan"
HERE = Path(__file__).resolve().parent
EXAMPLES = common.ROOT / "examples"


@dataclass(frozen=True)
class Workload:
    """One analysis on one dataset, through insitu and by hand."""

    name: str
    dataset: str
    entrypoint: str
    code: str
    handwritten: str  # the same analysis in handwritten.py, also used for local_disk
    max_result: str = "64MiB"


WORKLOADS = (
    Workload(
        "2p mean projection",
        "movie",
        "ophys_analyses.projection:mean_projection",
        "ophys",
        "mean",
    ),
    Workload(
        "EM histogram",
        "volume",
        "em_analyses.histogram:intensity_histogram",
        "em",
        "histogram",
    ),
    Workload(
        "EM 2x downsample",
        "volume",
        "em_analyses.downsample:downsample_2x",
        "em",
        "downsample",
        "128MiB",
    ),
)


@dataclass(frozen=True)
class Sizes:
    """The datasets' sizes (the defaults are the brief's: a movie of at least 2 GB)."""

    movie: Movie = field(default_factory=lambda: Movie(frames=4096, size=512))
    volume: Volume = field(default_factory=Volume)


class Bench:
    """A server on the local S3 stack, the datasets registered, and the contenders."""

    def __init__(
        self,
        settings: Settings,
        server: BackgroundServer,
        locals_: dict[str, Path],
        store_pid: int | None = None,
    ):
        self.settings, self.server, self.locals = settings, server, locals_
        self.store = psutil.Process(store_pid) if store_pid else None
        #: CPU seconds the object store spent per run, by contender
        self.store_cpu: dict[str, list[float]] = {"platform": [], "handwritten": []}
        #: Where the machine's CPU went per run, by contender (see :meth:`_cpu_parts`)
        self.cpu_parts: dict[str, list[dict[str, float]]] = {"platform": [], "handwritten": []}
        self.handwritten_phases: list[dict[str, float]] = []
        token = settings.admin_token_path.read_text().strip()
        self.client = Client(server.url, token, timeout=600)
        self.bundles = {name: self.client.upload_code(EXAMPLES / name) for name in ("ophys", "em")}
        storage = settings.storage
        assert storage.job_access_key_id and storage.job_secret_access_key
        self.job_env = {
            "AWS_ACCESS_KEY_ID": storage.job_access_key_id.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": storage.job_secret_access_key.get_secret_value(),
        }
        self.jobs: list[dict[str, Any]] = []

    def platform(self, work: Workload, workers: int) -> float:
        """Submit, wait, fetch every result; the job's record is appended to ``jobs``."""
        spec = {
            "name": f"bench-{work.handwritten}",
            "dataset": f"bench/{work.dataset}",
            "analysis": {"entrypoint": work.entrypoint},
            "resources": {"workers": workers, "threads_per_worker": 1},
            "limits": {"max_result_bytes": work.max_result, "timeout": "30m"},
        }

        def run() -> dict[str, Any]:
            job = self.client.submit(spec, bundle=self.bundles[work.code])
            done = self.client.wait(job["id"], poll=0.05)
            if done["state"] != "succeeded":
                raise RuntimeError(f"benchmark job failed: {done['error']}")
            for result in done["results"]:
                self.client.result(done["id"], result["key"])
            return done

        before, cpu = self._store_cpu(), self._cpu()
        seconds, job = common.timed(run)
        self.store_cpu["platform"].append(self._store_cpu() - before)
        self.cpu_parts["platform"].append(self._cpu_parts(cpu, seconds))
        self.jobs.append(job)
        return seconds

    def _cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far: the whole machine's, this process' own (the server and the
        client; not its children) and the object store's."""
        machine, own = psutil.cpu_times(), psutil.Process().cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        return busy, own.user + own.system, self._store_cpu()

    def _cpu_parts(self, before: tuple[float, float, float], wall: float) -> dict[str, float]:
        """Where the machine's CPU went during one run: the server and client (this
        process), the object store, the job's processes (the rest: the runner and its
        workers, or the script and its workers) and the cores left idle."""
        busy, own, store = (b - a for a, b in zip(before, self._cpu(), strict=True))
        return {
            "server_and_client": own,
            "store": store,
            "job": busy - own - store,
            "idle_cores": (os.cpu_count() or 1) * wall - busy,
        }

    def _store_cpu(self) -> float:
        if self.store is None:
            return 0.0
        times = self.store.cpu_times()
        return float(times.user + times.system)

    def phases(self, job: dict[str, Any]) -> dict[str, float]:
        """Where a job's time went: from its events and the runtime's own timings."""
        events = self.client.events(job["id"])
        at = {e["to_state"]: datetime.fromisoformat(e["at"]) for e in events}
        # A job that ended between two dispatcher passes was never seen running: it counts
        # as running at its end.
        at.setdefault("running", at["succeeded"])
        timings = self.client.provenance(job["id"])["reported_by_job"]["timings"]

        def between(a: str, b: str) -> float:
            return (at[b] - at[a]).total_seconds()

        return {
            "queued_to_provisioning_s": between("queued", "provisioning"),
            "provisioning_to_running_s": between("provisioning", "running"),
            "running_to_succeeded_s": between("running", "succeeded"),
            "runner_cluster_start_s": timings.get("cluster_start_s", 0.0),
            "open_s": timings.get("open_s", 0.0),
            "compute_s": timings.get("compute_s", 0.0),
            "write_s": timings.get("write_s", 0.0),
            "runner_total_s": timings.get("total_s", 0.0),
        }

    def handwritten(self, work: Workload, workers: int) -> float:
        """The hand-written Dask script as a fresh process."""
        url = common.data_url(f"{work.dataset}.zarr")
        with tempfile.TemporaryDirectory() as out:
            command = [
                sys.executable,
                str(HERE / "handwritten.py"),
                work.handwritten,
                url,
                f"{out}/result.npy",
                f"--workers={workers}",
                f"--endpoint={self.settings.storage.endpoint_url}",
            ]
            env = {**os.environ, **self.job_env}
            before, cpu = self._store_cpu(), self._cpu()
            seconds, done = common.timed(
                lambda: subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            )
            self.store_cpu["handwritten"].append(self._store_cpu() - before)
            self.cpu_parts["handwritten"].append(self._cpu_parts(cpu, seconds))
        self.handwritten_phases.append(json.loads(done.stdout.strip().splitlines()[-1]))
        return seconds

    def raw_get(self, dataset: str, concurrency: int = 32) -> float:
        """Seconds to GET every object of the dataset, ``concurrency`` at a time."""
        url = common.data_url(f"{dataset}.zarr")
        options = {
            "key": self.job_env["AWS_ACCESS_KEY_ID"],
            "secret": self.job_env["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": self.settings.storage.endpoint_url},
        }
        store = open_store(url, storage_options=options)
        local = self.locals[dataset]
        keys = [str(p.relative_to(local)) for p in common.store_files(local)]
        seconds, _ = common.timed(lambda: common.fetch_all(store, keys, concurrency))
        return seconds

    def local_reader(self, work: Workload) -> float:
        """Decode and reduce the local copy with every core, through the runtime's reader."""
        url = self.locals[work.dataset].as_uri()
        info = inspect_store(url).arrays[0]
        ranges = [(0, n) for n in info.shape]
        cores = os.cpu_count() or 1
        plan = read_plan(info, ranges, 2 << 30, threads_per_worker=cores, workers=1)
        data = open_selection(url, info, ranges, plan=plan)
        with dask.config.set(scheduler="threads", num_workers=cores):
            reduce = handwritten.WORKLOADS[work.handwritten]
            seconds, _ = common.timed(lambda: reduce(data).compute())
        return seconds

    def local_disk(self, work: Workload) -> float:
        """Decode and reduce the local copy with every core (dask threads)."""
        array = zarr.open_array(self.locals[work.dataset], mode="r")
        data = da.from_zarr(array)
        with dask.config.set(scheduler="threads", num_workers=os.cpu_count()):
            reduce = handwritten.WORKLOADS[work.handwritten]
            seconds, _ = common.timed(lambda: reduce(data).compute())
        return seconds


def prepare(sizes: Sizes, cache: Path) -> dict[str, Path]:
    """The local copies of the datasets (written once, reused by later runs)."""
    cache.mkdir(parents=True, exist_ok=True)
    movie = common.cached(
        cache / f"movie-{sizes.movie.frames}x{sizes.movie.size}.zarr",
        sizes.movie,
        lambda p: common.write_movie(p, sizes.movie),
    )
    volume = common.cached(
        cache / f"volume-{sizes.volume.depth}x{sizes.volume.size}.zarr",
        sizes.volume,
        lambda p: common.write_volume(p, sizes.volume),
    )
    return {"movie": movie, "volume": volume}


def measure(
    bench: Bench,
    workers_options: tuple[int, ...],
    repeats: int,
    workloads: tuple[Workload, ...] = WORKLOADS,
) -> dict[str, Any]:
    """Every workload: the machine's limits once, then platform vs hand-written per worker count."""
    out: dict[str, Any] = {}
    for work in workloads:
        raw = zarr.open_array(bench.locals[work.dataset], mode="r").nbytes
        limits = common.interleaved(
            {
                "raw_get": partial(bench.raw_get, work.dataset),
                "local_disk": partial(bench.local_disk, work),
                "local_reader": partial(bench.local_reader, work),
            },
            repeats,
        )
        entry: dict[str, Any] = {
            "dataset": work.dataset,
            "raw_bytes": raw,
            "stored_bytes": common.stored_bytes(bench.locals[work.dataset]),
            "raw_get": _rate(raw, limits["raw_get"]),
            "local_disk": _rate(raw, limits["local_disk"]),
            "local_reader": _rate(raw, limits["local_reader"]),
            "by_workers": {},
        }
        for workers in workers_options:
            bench.jobs.clear()
            bench.handwritten_phases.clear()
            for runs_ in bench.store_cpu.values():
                runs_.clear()
            for parts in bench.cpu_parts.values():
                parts.clear()
            runs = common.interleaved(
                {
                    "platform": partial(bench.platform, work, workers),
                    "handwritten": partial(bench.handwritten, work, workers),
                },
                repeats,
            )
            measured = bench.jobs[1:]  # the first was the warm-up
            compared = _compare(raw, runs, measured, bench)
            cores = os.cpu_count() or 1
            compared["store_cpu_share"] = {
                name: round(common.median(cpu[1:]) / (cores * common.median(runs[name])), 3)
                for name, cpu in bench.store_cpu.items()
            }
            compared["cpu_s"] = {
                name: {
                    part: round(common.median([run[part] for run in parts[1:]]), 2)
                    for part in parts[0]
                }
                for name, parts in bench.cpu_parts.items()
            }
            entry["by_workers"][str(workers)] = compared
        out[work.name] = entry
    return out


def _rate(raw: int, seconds: list[float]) -> dict[str, Any]:
    median = common.median(seconds)
    return {
        "seconds": round(median, 3),
        "runs": [round(s, 3) for s in seconds],
        "rate_mb_s": round(raw / median / MB, 1),
    }


def _compare(
    raw: int, runs: dict[str, list[float]], jobs: list[dict[str, Any]], bench: Bench
) -> dict[str, Any]:
    """Platform against hand-written, and where the platform's time went."""
    phases = [bench.phases(j) for j in jobs]
    compute = common.median([p["compute_s"] for p in phases])
    platform = _rate(raw, runs["platform"])
    job = {k: common.median([p[k] for p in phases]) for k in phases[0]}
    hand = {
        k: common.median([p[k] for p in bench.handwritten_phases[1:]])
        for k in bench.handwritten_phases[0]
    }
    start = job["queued_to_provisioning_s"] + job["provisioning_to_running_s"]
    span = start + job["running_to_succeeded_s"]
    breakdown = {
        "startup": start - hand["startup_s"] - hand["cluster_start_s"],
        "compute": job["compute_s"] - hand["compute_s"],
        "after_compute": job["running_to_succeeded_s"] - job["compute_s"],
        "api_and_polling": platform["seconds"] - span,
    }
    return {
        "overhead_breakdown_s": {k: round(v, 3) for k, v in breakdown.items()},
        "platform": platform,
        "handwritten": _rate(raw, runs["handwritten"]),
        "overhead": round(platform["seconds"] / common.median(runs["handwritten"]), 3),
        "job_compute_s": round(compute, 3),
        "job_compute_rate_mb_s": round(raw / compute / MB, 1) if compute else None,
        "job_phases": {k: round(common.median([p[k] for p in phases]), 3) for k in phases[0]},
        "handwritten_phases": {
            k: round(common.median([p[k] for p in bench.handwritten_phases[1:]]), 3)
            for k in bench.handwritten_phases[0]
        },
        "bytes_scanned": jobs[-1]["bytes_scanned"],
        "bytes_returned": jobs[-1]["bytes_returned"],
    }


def limit_of(entry: dict[str, Any]) -> float:
    """min(raw GET, local decode-and-reduce with the runtime's reader), MB/s."""
    local = entry.get("local_reader") or entry["local_disk"]
    return float(min(entry["raw_get"]["rate_mb_s"], local["rate_mb_s"]))


def compute_ratio(compared: dict[str, Any]) -> float:
    """The job's compute rate over the hand-written script's (same raw bytes)."""
    job, hand = compared["job_compute_s"], compared["handwritten_phases"].get("compute_s")
    return round(hand / job, 3) if job and hand else 0.0


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance issue's goals, per workload: every worker count, and the most."""
    out: list[dict[str, Any]] = []
    for name, entry in figures.items():
        by = entry["by_workers"]
        most = max(by, key=int)
        overheads = {w: c["overhead"] for w, c in by.items()}
        worst = max(overheads.values())
        out.append(
            {
                "goal": f"{name}: insitu / hand-written end to end at most 1.05x "
                f"({', '.join(f'{w} worker(s)' for w in by)})",
                "target": 1.05,
                "measured": worst,
                "by_workers": overheads,
                "met": worst <= 1.05,
            }
        )
        ratio = compute_ratio(by[most])
        out.append(
            {
                "goal": f"{name}: job compute rate at least 1.2x the hand-written script's "
                f"({most} workers)",
                "target": 1.2,
                "measured": ratio,
                "met": ratio >= 1.2,
            }
        )
        limit = limit_of(entry)
        fraction = (by[most]["job_compute_rate_mb_s"] or 0.0) / limit
        out.append(
            {
                "goal": f"{name}: job compute rate at least 80% of min(raw GET, local decode "
                f"with the same reader) ({most} workers)",
                "target": 0.8,
                "measured": round(fraction, 3),
                "met": fraction >= 0.8,
                "end_to_end_fraction": round(by[most]["platform"]["rate_mb_s"] / limit, 3),
            }
        )
    return out


def run(
    home: Path,
    sizes: Sizes = Sizes(),
    workers_options: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    cache: Path = common.CACHE,
    workloads: tuple[Workload, ...] = WORKLOADS,
) -> dict[str, Any]:
    """Prepare the data, start the stack and the server, and measure every workload."""
    locals_ = prepare(sizes, cache)
    with common.s3_stack(home) as (store, settings):
        for name, path in locals_.items():
            common.upload(path, common.data_url(f"{name}.zarr"), settings)
        with background_server(settings) as server:
            pid = store._process.pid if store._process else None
            bench = Bench(settings, server, locals_, pid)
            for name in locals_:
                bench.client.register_dataset(
                    f"bench/{name}", common.data_url(f"{name}.zarr"), access="public"
                )
            figures = measure(bench, workers_options, repeats, workloads)
            bench.client.close()
    return {
        "title": "Scan rate, platform overhead and scaling",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": common.machine(),
        "data": {
            "movie": {**asdict(sizes.movie), "shape": list(sizes.movie.shape), "dtype": "uint16"},
            "volume": {**asdict(sizes.volume), "shape": list(sizes.volume.shape), "dtype": "uint8"},
            "codec": "zstd level 3",
            "store": "SeaweedFS on 127.0.0.1 (same machine)",
        },
        "method": (
            f"{repeats} interleaved runs per contender after one warm-up, medians; rates in MB/s "
            "of raw (decoded) bytes; platform = submit to every result fetched (local backend, "
            "workers x 1 thread); handwritten = a fresh Python process with a LocalCluster of "
            "the same workers, da.from_zarr on zarr's ObjectStore, compute, np.save; raw_get = "
            "32 concurrent GETs of every object; local_disk = dask threads on every core over "
            "a local copy"
        ),
        "repeats": repeats,
        "figures": figures,
        "goals": goals(figures),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Sizes()
    parser.add_argument("--frames", type=int, default=defaults.movie.frames)
    parser.add_argument("--depth", type=int, default=defaults.volume.depth)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, action="append", help="worker counts (1 and 2)")
    parser.add_argument("--only", help="only workloads whose name contains this")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.json")
    args = parser.parse_args(argv)
    sizes = Sizes(Movie(frames=args.frames), Volume(depth=args.depth))
    with common.scratch() as home:
        chosen = tuple(w for w in WORKLOADS if not args.only or args.only in w.name)
        workers = tuple(args.workers or (1, 2))
        result = run(home, sizes, workers, args.repeats, workloads=chosen)
    common.publish(BENCHMARK, result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def report(result: dict[str, Any]) -> str:
    """The Markdown section of ``docs/benchmarks.md``."""
    lines = [
        "## Scan rate, platform overhead and scaling",
        "",
        f"Method: {result['method']}. Store: {result['data']['store']}.",
        *(["", f"Note: {result['note']}"] if result.get("note") else []),
        "",
        "![scan rates](benchmarks-scan.png)",
        "",
        "| workload | raw bytes | raw GET MB/s | local disk MB/s, zarr / insitu's reader | "
        "workers | hand-written s | insitu s | overhead | job compute MB/s | compute / "
        "hand-written compute | compute / limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in result["figures"].items():
        limit = limit_of(entry)
        reader = (entry.get("local_reader") or entry["local_disk"])["rate_mb_s"]
        for workers, c in entry["by_workers"].items():
            rate = c["job_compute_rate_mb_s"] or 0.0
            lines.append(
                f"| {name} | {entry['raw_bytes'] / 1e9:.2f} GB | {entry['raw_get']['rate_mb_s']} | "
                f"{entry['local_disk']['rate_mb_s']} / {reader} | {workers} | "
                f"{c['handwritten']['seconds']} | {c['platform']['seconds']} | "
                f"**{c['overhead']}x** | {rate} | {compute_ratio(c):.2f}x | {rate / limit:.2f} |"
            )
    lines += [
        "",
        "Where insitu's extra time goes, in seconds against the hand-written script (startup: "
        "queued to running against the script's interpreter, imports and cluster start; "
        "compute: the job's analysis against the script's compute; after compute: writing "
        "results until the job is succeeded; API and polling: submit, waiting and fetching):",
        "",
        "| workload | workers | startup | compute | after compute | API and polling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, entry in result["figures"].items():
        for workers, c in entry["by_workers"].items():
            b = c["overhead_breakdown_s"]
            lines.append(
                f"| {name} | {workers} | {b['startup']} | {b['compute']} | "
                f"{b['after_compute']} | {b['api_and_polling']} |"
            )
    if any("cpu_s" in c for e in result["figures"].values() for c in e["by_workers"].values()):
        lines += [
            "",
            "Where the machine's CPU went per run (medians, CPU seconds; idle: core-seconds "
            "no process used). Server and client: the insitu server, its dispatcher and the "
            "client waiting for the job (the hand-written script has none); job: the runner "
            "and its workers, or the script and its workers; store: SeaweedFS:",
            "",
            "| workload | workers | contender | server and client | job | store | idle cores |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for name, entry in result["figures"].items():
            for workers, c in entry["by_workers"].items():
                for contender, cpu in c.get("cpu_s", {}).items():
                    lines.append(
                        f"| {name} | {workers} | {contender} | {cpu['server_and_client']} | "
                        f"{cpu['job']} | {cpu['store']} | {cpu['idle_cores']} |"
                    )
    lines += ["", "Where an insitu job's time goes (medians, seconds):", ""]
    first = next(iter(result["figures"].values()))
    keys = list(next(iter(first["by_workers"].values()))["job_phases"])
    lines += [
        "| workload | workers | " + " | ".join(k.removesuffix("_s") for k in keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for name, entry in result["figures"].items():
        for workers, c in entry["by_workers"].items():
            values = " | ".join(str(c["job_phases"][k]) for k in keys)
            lines.append(f"| {name} | {workers} | {values} |")
    return "\n".join(lines)
