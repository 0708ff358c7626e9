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
import bench_proximal
import bench_readers
import bench_scan
import common
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
#: The commit just before "a job ends when its outcome is written" (the profiled fix).
BEFORE_FIX = "09525c2"
BENCHMARKS: list[tuple[str, Any, list[str]]] = [
    ("zarr_reader_s3", bench_readers, []),
    ("scan", bench_scan, []),
    ("before_after", bench_before_after, ["--before", BEFORE_FIX]),
    ("data_proximal", bench_proximal, []),
]
INTRO = """# Benchmarks

What insitu costs and what it saves, measured on this project's 2-core machine. Every
figure is a ratio of contenders measured in the same run, interleaved, because these
machines are noisy; the tests never assert on timings. `make bench` reruns everything
(about 20 minutes) and rewrites this page, [`benchmarks.json`](benchmarks.json) (every
figure, with the goal it is held against) and the plots. The scripts are in
[`tests/benchmarks/`](../tests/benchmarks/).
"""


def goals_table(document: dict[str, Any]) -> str:
    """Every goal of the brief that a benchmark holds itself against, met or not."""
    rows = ["| goal | target | measured | met |", "|---|---:|---:|---|"]
    for key, _, _ in BENCHMARKS:
        for goal in document.get(key, {}).get("goals", []):
            verdict = "**yes**" if goal["met"] else "**no** (see below)"
            rows.append(f"| {goal['goal']} | {goal['target']} | {goal['measured']} | {verdict} |")
    return "\n".join(rows)


def plot_scan(result: dict[str, Any], path: Path) -> None:
    """Rates per workload: the machine's limits, the hand-written script and insitu."""
    names = list(result["figures"])
    series = {
        "raw GET": [result["figures"][n]["raw_get"]["rate_mb_s"] for n in names],
        "local disk": [result["figures"][n]["local_disk"]["rate_mb_s"] for n in names],
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
    sections = [INTRO, "## The brief's goals", "", goals_table(document), ""]
    for key, module, _ in BENCHMARKS:
        if key in document:
            sections += [module.report(document[key]), ""]
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
