"""What the store gateway costs: a docker job's reads through it against reads straight from S3.

The same 2p movie on a local SeaweedFS (127.0.0.1 only), read with insitu's reader
(obstore) in the same run, interleaved: straight from the store with a key, and through a
gateway process started as the docker backend starts it (``python -m insitu.gateway``),
with a placeholder key. Two figures each, as in the reader benchmark:

- ``scan``: a mean over time with dask's threaded scheduler, in MB/s of decoded data;
- ``raw``: concurrent GETs of every chunk, no decoding, in MB/s of stored bytes;

and the gateway's own CPU seconds per GB it passed, and whether its count of scanned
bytes equals the bytes stored (it must: the server bills and caps by it).

Run ``.venv/bin/python tests/benchmarks/bench_gateway.py --record`` to update
``docs/benchmarks.json`` (key ``store_gateway``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import psutil
from bench_readers import chunk_keys, scan
from common import Movie, machine, write_movie

from insitu.seaweedfs import SeaweedFS
from insitu.storage import obstore_config, open_object_store

BENCHMARK = "store_gateway"
BUCKET = "insitu-bench"
MB = 1e6
BENCHES = ("scan", "raw")
PLACEHOLDER = {"key": "insitu-job", "secret": "placeholder"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gateway_process(server: SeaweedFS, dataset: str, counts: Path) -> Any:
    """``python -m insitu.gateway`` on a loopback port, with the store's key in its env."""
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "AWS_ACCESS_KEY_ID": server.credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": server.credentials.secret_access_key,
    }
    command = [
        sys.executable, "-m", "insitu.gateway", "--listen", f"tcp:127.0.0.1:{port}",
        "--dataset", dataset, "--endpoint", server.endpoint_url, "--counts", str(counts),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start: {process.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(10)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _options(endpoint: str, key: str, secret: str) -> dict[str, Any]:
    return {
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "key": key,
        "secret": secret,
    }


def _once(bench: str, url: str, options: dict[str, Any], keys: list[str]) -> dict[str, float]:
    store = open_object_store(url, obstore_config(options) or {})
    started = time.perf_counter()
    nbytes = scan(store) if bench == "scan" else common.fetch_all(store, keys)
    return {"seconds": time.perf_counter() - started, "bytes": nbytes}


def run(directory: Path, movie: Movie = Movie(), repeats: int = 5) -> dict[str, Any]:
    """Start SeaweedFS and a gateway under ``directory``; measure both paths, interleaved."""
    with SeaweedFS(directory) as server:
        direct = common.bucket_options(server, BUCKET)
        url = f"s3://{BUCKET}/movie.zarr"
        array = write_movie(
            open_object_store(url, obstore_config(direct) or {}, read_only=False), movie
        )
        keys = chunk_keys(array)
        counts = directory / "counts.json"
        with gateway_process(server, url, counts) as (endpoint, process):
            paths = {"direct": direct, "gateway": _options(endpoint, **PLACEHOLDER)}
            runs: dict[str, list[dict[str, float]]] = {}
            cpu: dict[str, float] = {b: 0.0 for b in BENCHES}
            passed: dict[str, int] = {b: 0 for b in BENCHES}
            for repeat in range(-1, repeats):  # -1 is the warm-up, not recorded
                order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
                for name in order:
                    for bench in BENCHES:
                        before = process.cpu_times()
                        result = _once(bench, url, paths[name], keys)
                        after = process.cpu_times()
                        if repeat >= 0:
                            runs.setdefault(f"{bench}_{name}", []).append(result)
                            if name == "gateway":
                                cpu[bench] += (
                                    after.user + after.system - before.user - before.system
                                )
                                passed[bench] += int(result["bytes"])
            time.sleep(0.5)  # one more flush of the counts
            before = json.loads(counts.read_text())["scanned"]
            stored = common.fetch_all(
                open_object_store(url, obstore_config(paths["gateway"]) or {}), keys
            )
            time.sleep(0.5)
            counted = json.loads(counts.read_text())["scanned"] - before
    return {
        "title": "Store gateway: reads through it against reads straight from S3",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "data": {
            "shape": list(movie.shape),
            "chunks": list(movie.chunks),
            "chunk_count": len(keys),
            "raw_bytes": movie.raw_bytes,
            "stored_bytes": stored,
        },
        "method": (
            f"SeaweedFS on 127.0.0.1; obstore with the store's key (direct) or a placeholder "
            f"key through a gateway process (gateway); {repeats} interleaved runs after one "
            "warm-up; scan = dask mean over t, MB/s decoded; raw = 16 concurrent GETs of "
            "every chunk, MB/s stored; medians"
        ),
        "repeats": repeats,
        "figures": figures(runs, cpu, passed),
        "count_check": {"stored_bytes": stored, "gateway_counted": counted},
    }


def figures(
    runs: dict[str, list[dict[str, float]]], cpu: dict[str, float], passed: dict[str, int]
) -> dict[str, Any]:
    """Median MB/s per path, the gateway/direct ratio, and the gateway's CPU per GB."""
    out: dict[str, Any] = {}
    for key, results in runs.items():
        rates = sorted(r["bytes"] / r["seconds"] / MB for r in results)
        out[key] = {
            "value": round(statistics.median(rates), 1),
            "unit": "MB/s",
            "runs_sorted": [round(r, 1) for r in rates],
        }
    for bench in BENCHES:
        ratio = out[f"{bench}_gateway"]["value"] / out[f"{bench}_direct"]["value"]
        out[f"{bench}_ratio_gateway_over_direct"] = {"value": round(ratio, 2), "unit": "ratio"}
        per_gb = cpu[bench] / (passed[bench] / 1e9) if passed[bench] else 0.0
        out[f"{bench}_gateway_cpu"] = {"value": round(per_gb, 2), "unit": "CPU s/GB"}
    return out


def report(result: dict[str, Any]) -> str:
    """The Markdown section of ``docs/benchmarks.md``."""
    f, data = result["figures"], result["data"]
    rows = [
        f"| {label} | {f[f'{b}_direct']['value']} | {f[f'{b}_gateway']['value']} | "
        f"{f[f'{b}_ratio_gateway_over_direct']['value']} | {f[f'{b}_gateway_cpu']['value']} |"
        for b, label in (
            ("scan", "scan (dask mean), decoded MB/s"),
            ("raw", "raw GETs, stored MB/s"),
        )
    ]
    check = result["count_check"]
    return "\n".join(
        [
            "## The store gateway",
            "",
            f"{result['title']}. {data['chunk_count']} chunks of {data['chunks']}, "
            f"{data['raw_bytes'] / 1e9:.2f} GB decoded, {data['stored_bytes'] / 1e9:.2f} GB "
            f"stored. {result['method']}.",
            "",
            "| | direct | through the gateway | gateway / direct | gateway CPU s/GB |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"The gateway counted {check['gateway_counted']:,} bytes scanned for a read of "
            f"{check['stored_bytes']:,} stored bytes.",
        ]
    )


def record(result: dict[str, Any], path: Path = common.RESULTS_JSON) -> None:
    common.record(BENCHMARK, result, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=Movie.frames, help="T (default %(default)s)")
    parser.add_argument("--size", type=int, default=Movie.size, help="Y = X (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per path (default 5)")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="insitu-bench-") as directory:
        result = run(Path(directory), Movie(args.frames, args.size), args.repeats)
    common.publish(BENCHMARK, result, args.record)
    print(report(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
