"""``make bench``: run every benchmark, then write docs/benchmarks.md, .json and the plots.

Each benchmark runs as its own process (``bench_*.py --record``) and records its figures
under its key of ``docs/benchmarks.json``; this script then assembles the Markdown from
each benchmark's ``report()`` with a summary of the brief's goals, and draws the PNGs.

    .venv/bin/python tests/benchmarks/run_all.py            # everything (about 20 min)
    .venv/bin/python tests/benchmarks/run_all.py --report   # only rewrite the docs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_before_after
import bench_blocks
import bench_codecs
import bench_course_load
import bench_dask_gateway
import bench_docker
import bench_gateway
import bench_large
import bench_outputs
import bench_proximal
import bench_readers
import bench_scan
import bench_web
import common
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
#: The commit just before "a job ends when its outcome is written" (the profiled fix).
BEFORE_FIX = "09525c2"
BENCHMARKS: list[tuple[str, Any, list[str]]] = [
    ("zarr_reader_s3", bench_readers, []),
    ("zarr_codecs", bench_codecs, []),
    ("store_gateway", bench_gateway, []),
    ("scan", bench_scan, []),
    ("before_after", bench_before_after, ["--before", BEFORE_FIX]),
    ("data_proximal", bench_proximal, []),
    ("docker_backend", bench_docker, []),
    ("course_load", bench_course_load, []),
    ("blocks", bench_blocks, []),
    ("dask_gateway_peer", bench_dask_gateway, []),
    ("web_pages", bench_web, []),
    ("outputs", bench_outputs, []),
]
#: Recorded by their own make target (``make bench-large``), reported here.
RECORDED_APART: list[tuple[str, Any]] = [("large", bench_large)]
INTRO = """# Benchmarks

What insitu costs and what it saves, measured on this project's 2-core machine. Every
figure is a ratio of contenders measured in the same run, interleaved, because these
machines are noisy; the tests never assert on timings. `make bench` reruns everything
(about 25 minutes on this machine) and rewrites this page,
[`benchmarks.json`](benchmarks.json) (every figure, with the goal it is held against) and
the plots. The scripts are in
[`tests/benchmarks/`](../tests/benchmarks/). The sampling profile behind the fix measured
below is in [`profile.md`](profile.md); the API's profile under a course's load is in
[`profile-api.md`](profile-api.md). The users' scale (a 52 GB session, a 107 GB volume) is
recorded apart by `make bench-large`.
"""


def _reported() -> list[tuple[str, Any]]:
    """Every benchmark whose figures the docs report, in the order they are shown."""
    return [(key, module) for key, module, _ in BENCHMARKS] + RECORDED_APART


def goals_table(document: dict[str, Any]) -> str:
    """Every goal of the brief that a benchmark holds itself against, met or not."""
    rows = ["| goal | target | measured | met |", "|---|---:|---:|---|"]
    for key, _ in _reported():
        for goal in document.get(key, {}).get("goals", []):
            verdict = "**yes**" if goal["met"] else "**no** (see below)"
            rows.append(f"| {goal['goal']} | {goal['target']} | {goal['measured']} | {verdict} |")
    return "\n".join(rows)


def causes(document: dict[str, Any]) -> str:
    """Why each goal that is not met is not met, from the recorded figures."""
    lines = ["## Goals not met, and why (measured)", ""]
    lines += scan_causes(document)
    proximal = document.get("data_proximal", {}).get("figures")
    if proximal and not all(g["met"] for g in document["data_proximal"]["goals"]):
        phases = proximal["insitu"]["phases_median_s"]
        lines += [
            f"**Time to answer from the lab ({proximal['speedup']['value']}x faster).** Of the "
            f"insitu job's {proximal['insitu']['seconds']['median']} s, the computation took "
            f"{phases['runner_compute_s']} s and the job spent {phases['queued_to_running_s']} s "
            f"from queued to running (its runner's start-up, {phases['runner_cluster_start_s']} s "
            "of it the cluster). The download path is bound by the link, so every second of "
            "start-up removed raises the ratio: the warm pool of the courses issue is the fix.",
            "",
        ]
    course = document.get("course_load", {})
    for goal in course.get("goals", []):
        if goal["met"]:
            continue
        figures = course["figures"]
        if "submit-to-running" in goal["goal"] and "docker" in goal["goal"]:
            idle = figures["docker"]["idle_warm_submit_to_running_s"]
            assigned = idle.get("assigned_median")
            lines += [
                f"**Warm start on isolated sandboxes (docker: {goal['measured']} s).** "
                + (
                    f"The server gives the job a sandbox {assigned} s after the submit (the "
                    "dispatcher's pass, two small files, the gateway listening); the rest is "
                    "the job's own runner in its sandbox: reading its input through the store "
                    "gateway, connecting a Dask client to its scheduler, opening the selection "
                    "(the array's metadata, through the gateway), and the dispatcher's next "
                    "pass seeing it run. "
                    if assigned is not None
                    else ""
                )
                + f"The idle runs were {idle['runs']} s. Each shares this machine's two cores "
                "with the sandbox the pool starts in its place at that very moment (four "
                "containers, three interpreters importing dask, zarr and pandas). The local "
                "warm pool starts faster because its runner is forked from a process already "
                "connected to shared workers; a sandbox cannot share them without giving up "
                "the isolation. Starting the replacement only once the job runs (or at a lower "
                "CPU priority), and reading the job's input from the assignment instead of "
                "through the gateway, are the next steps.",
                "",
            ]
        elif "submit-to-running" in goal["goal"]:
            lines += [
                f"**Warm start ({goal['goal'].split('(')[1].rstrip(')')}: {goal['measured']} s).** "
                "A warm job's start is the dispatcher noticing it (its poll interval and pass), "
                "the fork, the runner reading the job and the dataset's metadata and connecting "
                "to the warm scheduler, and the dispatcher's next pass seeing it run; each step "
                "is a fraction of a second on this machine's two shared cores.",
                "",
            ]
        elif "API p99" in goal["goal"]:
            kind = goal["goal"].split("(")[1].split(";")[0]
            f = figures[kind]
            where = (
                "the jobs' compute elsewhere: the noop backend runs nothing, so the API, the "
                "dispatcher and the database are alone on the two cores"
                if f.get("backend") == "noop"
                else "the jobs' compute on the same two cores: the 60 clients, the API, the "
                f"dispatcher, the warm pool and the jobs (at {f['jobs_per_minute']} a minute) "
                "share them"
                + (
                    ", and the Docker engine starts a sandbox for each job"
                    if f.get("backend") == "docker"
                    else ""
                )
            )
            lines += [
                f"**API p99 with 60 clients ({kind}: submit and status p99 {goal['measured']}; "
                f"p50 {f['submit_ms']['p50']} ms and {f['status_ms']['p50']} ms)**, with "
                f"{where}. "
                + (
                    "These figures were recorded before the API's profile and its fixes "
                    "(they have no noop setup beside them); the same load measured after the "
                    "fixes is in [`profile-api.md`](profile-api.md), and the next `make "
                    "bench` records it here. "
                    if not any(v.get("backend") == "noop" for v in figures.values())
                    else "The sampling profile of the server under this load, each fix it "
                    "led to and its measured effect are in [`profile-api.md`](profile-api.md). "
                )
                + "What remains after the fixes is arithmetic: a closed loop of 60 clients "
                "waits about 60 divided by the requests the machine completes a second, and "
                "a submit still costs the two cores about 6 to 11 ms in the server (the "
                "dispatcher's handling of its job included), 1.4 ms in the client and 2 ms in "
                "PostgreSQL, so about 200 submits a second at best and some 300 ms of mean "
                "wait, twice the p99 goal, however the requests are scheduled. The largest "
                "remaining costs are HTTP parsing and the ASGI stack (`httptools` and `uvloop` "
                "cut a status answer's server CPU by about a third and its p99 by a fifth, but "
                "made the submits' p99 worse in two runs of two, so they are not added), the "
                "ORM's loading of the caller and the job, and the dispatcher's work in the "
                "process that also serves; two API processes lowered the medians, not the "
                "p99s, on two cores shared with the clients; more cores for the API processes "
                "(`INSITU_SERVER__PROCESSES`) spread the rest.",
                "",
            ]
    if len(lines) == 2:
        lines.append("Every goal measured here is met.")
    return "\n".join(lines)


def scan_causes(document: dict[str, Any]) -> list[str]:
    """Why each scan goal not met is not met, workload by workload, from the figures."""
    scan = document.get("scan", {})
    unmet = [g for g in scan.get("goals", []) if not g["met"]]
    lines: list[str] = []
    for name, entry in scan.get("figures", {}).items():
        mine = [g for g in unmet if g["goal"].startswith(f"{name}:")]
        if not mine:
            continue
        by = entry["by_workers"]
        most = max(by, key=int)
        c = by[most]
        hand_rate = entry["raw_bytes"] / c["handwritten_phases"]["compute_s"] / 1e6
        job_rate = c["job_compute_rate_mb_s"] or 0.0
        reader = (entry.get("local_reader") or entry["local_disk"])["rate_mb_s"]
        zarr_local = entry["local_disk"]["rate_mb_s"]
        limit = min(entry["raw_get"]["rate_mb_s"], reader)
        terms = "; ".join(
            f"{w} worker(s) {v['overhead']}x ("
            + ", ".join(
                f"{k.replace('_', ' ')} {t:+.2f} s" for k, t in v["overhead_breakdown_s"].items()
            )
            + ")"
            for w, v in by.items()
        )
        said = "; ".join(f"{g['goal'].split(': ', 1)[1]}: {g['measured']}" for g in mine)
        cpu = c.get("cpu_s")
        spent = (
            f" With {most} workers both cores are busy, so every CPU second the platform "
            "spends beside the analysis lengthens the run: per run insitu's server, "
            f"dispatcher and waiting client used {cpu['platform']['server_and_client']} CPU s, "
            f"its runner and workers {cpu['platform']['job']} s against the script's "
            f"{cpu['handwritten']['job']} s, the store {cpu['platform']['store']} s against "
            f"{cpu['handwritten']['store']} s, and {cpu['platform']['idle_cores']} core-seconds "
            f"were left idle against {cpu['handwritten']['idle_cores']} (the job's start and "
            "its end noticed by the dispatcher's pass)."
            if cpu
            else ""
        )
        after = c["overhead_breakdown_s"]["after_compute"]
        if after > 0.2:
            spent += (
                f" After the compute, +{after:.2f} s is the result's way back: "
                f"{c['bytes_returned'] / 1e6:.0f} MB written to the job's workspace in the "
                "object store, checked and hashed by the server, then fetched through it, "
                "where the script saves its array to a local file."
            )
        lines += [
            f"**{name}** ({said}). End to end against the script, term by term: {terms}.{spent} "
            f"With {most} workers the job computed at {job_rate} MB/s and the script at "
            f"{hand_rate:.0f} MB/s ({job_rate / hand_rate:.2f}x). Decoding and reducing "
            f"alone, on every core from a local copy, insitu's reader runs at {reader} MB/s "
            f"and zarr's defaults at {zarr_local} MB/s ({reader / zarr_local:.2f}x): that is "
            "what the faster reader gives where decoding is the bound. Here the scan also "
            f"needs the GETs, served by the object store on the same two cores (it used "
            f"{c['store_cpu_share']['platform']:.0%} of the machine's CPU during insitu's "
            f"runs and {c['store_cpu_share']['handwritten']:.0%} during the script's), so "
            f"the limit, min(raw GET {entry['raw_get']['rate_mb_s']} MB/s, local decode "
            f"with insitu's reader {reader} MB/s) = {limit} MB/s, measured with each part "
            f"alone, is not reached by either: the job at {job_rate / limit:.0%}, the script "
            f"at {hand_rate / limit:.0%}. Next to a bucket the store runs elsewhere and the "
            "bound is the GET rate.",
            "",
        ]
    return lines


def plot_scan(result: dict[str, Any], path: Path) -> None:
    """Rates per workload: the machine's limits, the hand-written script and insitu."""
    names = list(result["figures"])
    series = {
        "raw GET": [result["figures"][n]["raw_get"]["rate_mb_s"] for n in names],
        "local disk": [result["figures"][n]["local_disk"]["rate_mb_s"] for n in names],
        "local disk, insitu's reader": [
            result["figures"][n].get("local_reader", {}).get("rate_mb_s", 0) for n in names
        ],
    }
    for workers in next(iter(result["figures"].values()))["by_workers"]:
        by = [result["figures"][n]["by_workers"][workers] for n in names]
        series[f"hand-written, {workers}w"] = [b["handwritten"]["rate_mb_s"] for b in by]
        series[f"insitu end to end, {workers}w"] = [b["platform"]["rate_mb_s"] for b in by]
        series[f"insitu compute, {workers}w"] = [b["job_compute_rate_mb_s"] or 0 for b in by]
    figure, axes = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        axes.bar([x + i * width for x in range(len(names))], values, width, label=label)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
    axes.set_ylabel("MB/s of raw (decoded) data")
    axes.set_title("Scan rates on this machine (higher is better)")
    axes.legend(fontsize=8, ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_proximal(result: dict[str, Any], path: Path) -> None:
    """Time to answer and bytes over the link: download-and-compute against insitu."""
    figures = result["figures"]
    labels = ["download + compute", "insitu job"]
    keys = list(bench_proximal.CONTENDERS)
    seconds = [figures[k]["seconds"]["median"] for k in keys]
    megabytes = [figures[k]["link_bytes"]["total"] / 1e6 for k in keys]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.bar(labels, seconds, color=["#999999", "#2a7ab9"])
    left.set_ylabel("seconds to the answer")
    right.bar(labels, megabytes, color=["#999999", "#2a7ab9"])
    right.set_yscale("log")
    right.set_ylabel("MB over the link (log)")
    figure.suptitle("From the lab over 100 Mbit/s, 20 ms: the same mean image")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_docs(document: dict[str, Any], docs: Path = common.DOCS) -> None:
    """benchmarks.md and the PNGs in ``docs`` from the recorded figures."""
    sections = [INTRO, "## The brief's goals", "", goals_table(document), "", causes(document), ""]
    for key, module in _reported():
        if key in document:
            sections += [module.report(document[key]), ""]
    if "large" in document:
        bench_large.plot(document["large"], docs / "benchmarks-large.png")
    if "scan" in document:
        plot_scan(document["scan"], docs / "benchmarks-scan.png")
    if "data_proximal" in document:
        try:
            plot_proximal(document["data_proximal"], docs / "benchmarks-proximal.png")
        except KeyError as exc:  # a figure the plot needs is missing from an older record
            print(f"no proximal plot: missing {exc}", file=sys.stderr)
    (docs / "benchmarks.md").write_text("\n".join(sections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only rewrite the docs")
    parser.add_argument("--only", action="append", help="run only these benchmark keys")
    args = parser.parse_args(argv)
    if not args.report:
        for key, module, extra in BENCHMARKS:
            if args.only and key not in args.only:
                continue
            started = time.perf_counter()
            print(f"== {key}", file=sys.stderr, flush=True)
            script = HERE / f"{module.__name__}.py"
            subprocess.run(
                [sys.executable, str(script), "--record", *extra],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print(f"   {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    write_docs(json.loads(common.RESULTS_JSON.read_text()))
    print(f"wrote {common.DOCS / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
