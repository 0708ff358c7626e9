"""The data-proximal advantage: download the selection and compute in the lab, or send the job.

A researcher in a "lab" (a network namespace) reaches the "data centre" (SeaweedFS and the
insitu server in the root namespace, on 127.0.0.1) over an emulated 100 Mbit/s, 20 ms link
(see ``netlab.py``). Two ways to the mean image of a ~1 GB selection of a 2p movie:

- A, ``download-and-compute``: open the selection with the platform's key through the link
  and compute the mean over t with dask threads in the lab;
- B, ``submit-and-fetch``: submit the example mean-projection job from the lab, wait for
  it, fetch its ``mean`` result.

Time to answer and bytes over the link (the lab-side veth's counters) for each, runs
interleaved. Run ``.venv/bin/python tests/benchmarks/bench_proximal.py --record`` to update
``docs/benchmarks.json`` (key ``data_proximal``). The lab side is this file too:
``bench_proximal.py lab COMMAND`` reads a JSON request on stdin and prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import common
import netlab
import numpy as np
from common import MB, Movie

from insitu import objectstore
from insitu.client import Client
from insitu.config import Settings
from insitu.seaweedfs import DATA_BUCKET
from insitu.server import background_server

BENCHMARK = "data_proximal"
DATASET = "bench/movie-2g"
DATASET_FILE = "movie-2g.zarr"  # under common.data_url
ENTRYPOINT = "ophys_analyses.projection:mean_projection"
CODE = common.ROOT / "examples" / "ophys"
PROBE_KEY = "bench/link-probe.bin"
CONTENDERS = {"download": "download-and-compute", "insitu": "submit-and-fetch"}


# -- the lab side: runs inside the namespace, reaches the data centre only through the link --------


def _checksum(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype="float32").tobytes()).hexdigest()[:16]


def lab_probe(request: dict[str, Any]) -> dict[str, Any]:
    """Round trips of a tiny request (new, then kept-alive connection) and one bulk GET."""
    import httpx
    import obstore
    from obstore.store import S3Store

    rtts = []
    with httpx.Client(base_url=request["api"], timeout=30) as http:
        started = time.perf_counter()
        http.get("/healthz").raise_for_status()
        first = time.perf_counter() - started
        for _ in range(request["pings"]):
            started = time.perf_counter()
            http.get("/healthz").raise_for_status()
            rtts.append(time.perf_counter() - started)
    options = request["storage_options"]
    store = S3Store(
        request["bucket"],
        config={
            "access_key_id": options["key"],
            "secret_access_key": options["secret"],
            "endpoint": options["client_kwargs"]["endpoint_url"],
            "region": "us-east-1",
        },
        client_options={"allow_http": True},
    )
    started = time.perf_counter()
    size = len(obstore.get(store, request["key"]).bytes())
    bulk = time.perf_counter() - started
    return {"first_request_s": first, "request_s": rtts, "bulk_bytes": size, "bulk_s": bulk}


def lab_download_and_compute(request: dict[str, Any]) -> dict[str, Any]:
    """A: read the selection through the link and reduce it here (dask threads)."""
    import dask.array as da
    import zarr

    from insitu.storage import open_store

    started = time.perf_counter()
    store = open_store(request["url"], storage_options=request["storage_options"])
    data = da.from_zarr(zarr.open_array(store=store, mode="r"))[slice(*request["select"])]
    mean = data.mean(axis=0, dtype="float64").astype("float32").compute(scheduler="threads")
    seconds = time.perf_counter() - started
    np.save(request["output"], mean)
    return {"seconds": seconds, "checksum": _checksum(mean)}


def lab_submit_and_fetch(request: dict[str, Any]) -> dict[str, Any]:
    """B: submit the job with its code, wait for it, fetch its one small result."""
    started, wall = time.perf_counter(), time.time()
    with Client(request["api"], request["token"]) as client:
        job = client.submit(request["spec"], code=request["code"])
        submitted = time.perf_counter()
        done = client.wait(job["id"], timeout=request["timeout"])
        finished = time.perf_counter()
        if done["state"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {done['state']}: {done['error']}")
        mean = client.result(job["id"], "mean")
    seconds = time.perf_counter() - started
    np.save(request["output"], mean)
    return {
        "seconds": seconds,
        "checksum": _checksum(mean),
        "job_id": job["id"],
        "started_at": wall,
        "phases": {
            "submit_s": submitted - started,
            "wait_s": finished - submitted,
            "fetch_s": started + seconds - finished,
        },
    }


LAB_COMMANDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "probe": lab_probe,
    "download-and-compute": lab_download_and_compute,
    "submit-and-fetch": lab_submit_and_fetch,
}


def lab_main(command: str) -> int:
    """Run one lab command on the JSON request from stdin; print its JSON answer."""
    print(json.dumps(LAB_COMMANDS[command](json.loads(sys.stdin.read()))))
    return 0


# -- the data-centre side -------------------------------------------------------------------------


def _lab_env() -> dict[str, str]:
    """This environment without proxies, AWS or insitu settings: the lab uses only the link."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("AWS_", "INSITU_"))
    }


def in_lab(
    lab: netlab.Lab, command: str, request: dict[str, Any], timeout: float
) -> tuple[dict[str, Any], dict[str, int]]:
    """Run a lab command; its answer and the bytes it moved over the link (down, up)."""
    argv = lab.command([sys.executable, str(Path(__file__).resolve()), "lab", command])
    before = lab.counters()
    done = subprocess.run(
        argv, input=json.dumps(request), capture_output=True, text=True, timeout=timeout,
        env=_lab_env(),
    )  # fmt: skip
    after = lab.counters()
    if done.returncode != 0:
        raise RuntimeError(f"lab {command} failed ({done.returncode}): {done.stderr[-3000:]}")
    moved = {
        "down": after["rx_bytes"] - before["rx_bytes"],
        "up": after["tx_bytes"] - before["tx_bytes"],
    }
    return json.loads(done.stdout.splitlines()[-1]), moved


def selection_stored_bytes(local: Path, movie: Movie, frames: int) -> int:
    """Bytes of the chunk objects the selection ``t < frames`` touches (A's minimum download)."""
    last = (frames - 1) // movie.chunk_frames
    return sum(p.stat().st_size for p in (local / "c").rglob("*") if p.is_file()
               and int(p.relative_to(local / "c").parts[0]) <= last)  # fmt: skip


def _storage_options(settings: Settings, endpoint: str) -> dict[str, Any]:
    storage = settings.storage
    assert storage.access_key_id and storage.secret_access_key
    return {
        "key": storage.access_key_id.get_secret_value(),
        "secret": storage.secret_access_key.get_secret_value(),
        "client_kwargs": {"endpoint_url": endpoint, "region_name": storage.region},
    }


def probe_link(
    lab: netlab.Lab, settings: Settings, api_direct: str, probe_bytes: int
) -> dict[str, Any]:
    """The link's sanity figures: request round trip and bulk throughput, through the link."""
    client = objectstore.boto_client(settings)
    client.put_object(Bucket=DATA_BUCKET, Key=PROBE_KEY, Body=os.urandom(probe_bytes))
    with Client(api_direct) as direct:  # the same request without the link, for comparison
        local = []
        for _ in range(10):
            started = time.perf_counter()
            direct.health()
            local.append(time.perf_counter() - started)
    request = {
        "api": lab.url("api"),
        "pings": 20,
        "storage_options": _storage_options(settings, lab.url("s3")),
        "bucket": DATA_BUCKET,
        "key": PROBE_KEY,
    }
    answer, moved = in_lab(lab, "probe", request, timeout=120)
    rtt, direct_s = common.median(answer["request_s"]), common.median(local)
    return {
        "emulation": "tc tbf on both veth ends + a user-space forwarder delaying each direction",
        "rate_mbit": lab.rate_mbit,
        "rtt_ms": round(lab.delay * 2e3, 1),
        "measured_request_ms": round(rtt * 1e3, 1),
        "measured_request_without_link_ms": round(direct_s * 1e3, 1),
        "measured_rtt_ms": round((rtt - direct_s) * 1e3, 1),
        "measured_new_connection_request_ms": round(answer["first_request_s"] * 1e3, 1),
        "measured_throughput_mbit": round(answer["bulk_bytes"] * 8 / answer["bulk_s"] / 1e6, 1),
        "bulk_probe_bytes": answer["bulk_bytes"],
        "bulk_probe_link_bytes": moved["down"],
        "namespace": lab.namespace,
        "devices": [lab.host_device, lab.lab_device],
        "addresses": [lab.host_address, lab.lab_address],
    }


def _job_phases(admin: Client, answer: dict[str, Any], directory: Path) -> dict[str, float]:
    """Where B's time went: the lab's submit and fetch, the job's states, the runner's timings."""
    events = admin.events(answer["job_id"])
    at = {e["to_state"]: datetime.fromisoformat(e["at"]).timestamp() for e in events}
    provenance = json.loads(
        admin.download(answer["job_id"], "provenance.json", directory).read_text()
    )
    timings = provenance.get("reported_by_job", {}).get("timings", {})
    phases = dict(answer["phases"])
    if {"queued", "running", "succeeded"} <= set(at):
        phases["queued_to_running_s"] = at["running"] - at["queued"]
        phases["running_to_succeeded_s"] = at["succeeded"] - at["running"]
        phases["succeeded_to_seen_s"] = (
            answer["started_at"] + answer["phases"]["submit_s"] + answer["phases"]["wait_s"]
        ) - at["succeeded"]
    for key in ("cluster_start_s", "compute_s", "total_s"):
        if key in timings:
            phases[f"runner_{key}"] = timings[key]
    return phases


def lab_requests(
    lab: netlab.Lab, settings: Settings, token: str, selection_frames: int
) -> dict[str, dict[str, Any]]:
    """What the lab sends for A and for B: the same selection, reached only over the link."""
    select = [0, selection_frames]
    return {
        "download": {
            "url": common.data_url(DATASET_FILE),
            "storage_options": _storage_options(settings, lab.url("s3")),
            "select": select,
        },
        "insitu": {
            "api": lab.url("api"),
            "token": token,
            "code": str(CODE),
            "timeout": 600,
            "spec": {
                "name": "lab-mean-projection",
                "dataset": DATASET,
                "select": {"t": select},
                "analysis": {"entrypoint": ENTRYPOINT},
                "resources": {"workers": 1, "threads_per_worker": 2},
                "limits": {"timeout": "10m", "max_result_bytes": "16MiB"},
            },
        },
    }


def measure(
    lab: netlab.Lab,
    admin: Client,
    requests: dict[str, dict[str, Any]],
    rounds: tuple[int, int],
    work: Path,
    a_timeout: float,
) -> dict[str, list[dict[str, Any]]]:
    """One warm-up job, then ``rounds[0]`` rounds of one A and ``rounds[1]`` Bs, alternating."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}

    def once(name: str, record: bool = True) -> float:
        output = work / f"{name}-{len(runs[name])}-{secrets.token_hex(3)}.npy"
        request = {**requests[name], "output": str(output)}
        timeout = a_timeout if name == "download" else 660.0
        answer, moved = in_lab(lab, CONTENDERS[name], request, timeout)
        answer |= {"bytes": moved, "output": str(output)}
        if name == "insitu":
            answer["phases"] = _job_phases(admin, answer, work / answer["job_id"])
        if record:
            runs[name].append(answer)
        return float(answer["seconds"])

    once("insitu", record=False)  # warm-up: the first job's imports, the page cache
    common.interleaved(
        {
            "download": lambda: once("download"),
            "insitu": lambda: common.median([once("insitu") for _ in range(rounds[1])]),
        },
        rounds[0],
        warmup=False,
    )
    return runs


def _scenario(runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    down = [r["bytes"]["down"] for r in runs]
    up = [r["bytes"]["up"] for r in runs]
    out: dict[str, Any] = {
        "label": label,
        "seconds": {
            "median": round(common.median(seconds), 2),
            "runs": [round(s, 2) for s in seconds],
        },
        "link_bytes": {
            "down": int(statistics.median(down)),
            "up": int(statistics.median(up)),
            "total": int(statistics.median(d + u for d, u in zip(down, up, strict=True))),
            "down_runs": down,
            "up_runs": up,
        },
        "checksums": sorted({r["checksum"] for r in runs}),
    }
    if "phases" in runs[0]:
        keys = runs[0]["phases"].keys()
        out["phases_median_s"] = {
            k: round(common.median([r["phases"][k] for r in runs if k in r["phases"]]), 3)
            for k in keys
        }
    return out


def figures(runs: dict[str, list[dict[str, Any]]], link_rate_mbit: float) -> dict[str, Any]:
    """Both scenarios (keyed like :data:`CONTENDERS`), their agreement, the ratios A / B."""
    a = _scenario(runs["download"], "A: download the selection, compute in the lab")
    b = _scenario(runs["insitu"], "B: submit the insitu job, fetch its result")
    a_image, b_image = (np.load(runs[n][0]["output"]) for n in ("download", "insitu"))
    a["link_floor_seconds"] = round(a["link_bytes"]["down"] * 8 / (link_rate_mbit * 1e6), 1)
    return {
        "download": a,
        "insitu": b,
        "answers_agree": bool(np.allclose(a_image, b_image, rtol=1e-5, atol=1e-3)),
        "max_abs_difference": float(np.max(np.abs(a_image - b_image))),
        "bytes_ratio": {
            "value": round(a["link_bytes"]["total"] / b["link_bytes"]["total"], 1),
            "unit": "A/B",
        },
        "speedup": {
            "value": round(a["seconds"]["median"] / b["seconds"]["median"], 2),
            "unit": "A/B",
        },
    }


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The brief's two goals for the data-proximal advantage, met or not."""
    return [
        {
            "goal": "submitting the job moves at least 100x fewer bytes over the link",
            "target": 100,
            "measured": figures["bytes_ratio"]["value"],
            "met": figures["bytes_ratio"]["value"] >= 100,
        },
        {
            "goal": "submitting the job answers at least 10x faster",
            "target": 10,
            "measured": figures["speedup"]["value"],
            "met": figures["speedup"]["value"] >= 10,
        },
    ]


def run(
    home: Path,
    movie: Movie = Movie(frames=4096, size=512),
    selection_frames: int = 2048,
    repeats: int = 2,
    *,
    rate_mbit: float = 100.0,
    rtt: float = 0.020,
    cache: Path = common.CACHE,
    probe_bytes: int = 25_000_000,
    jobs_per_round: int = 3,
) -> dict[str, Any]:
    """Prepare the movie, start the data centre and the lab, measure A and B.

    A (a minute, link-bound, steady) runs ``repeats`` times; B (seconds, bound by this
    machine's shared cores, noisier) ``jobs_per_round`` times per A run.
    """
    cache.mkdir(parents=True, exist_ok=True)
    local = common.cached(
        cache / f"movie-{movie.frames}x{movie.size}.zarr",
        movie,
        lambda p: common.write_movie(p, movie),
    )
    selection = selection_stored_bytes(local, movie, selection_frames)
    with (
        common.s3_stack(home) as (_, settings),
        background_server(common.one_trusted_user(settings)) as server,
        Client(server.url, settings.admin_token_path.read_text().strip()) as admin,
    ):
        stored = common.upload(local, common.data_url(DATASET_FILE), settings)
        admin.register_dataset(DATASET, common.data_url(DATASET_FILE), access="public")
        token = admin.add_user(f"lab-{secrets.token_hex(3)}", "researcher")["token"]
        services = {
            "s3": int(urlparse(settings.storage.endpoint_url).port or 0),
            "api": int(urlparse(server.url).port or 0),
        }
        with (
            netlab.lab_link(services, rate_mbit=rate_mbit, rtt=rtt) as lab,
            tempfile.TemporaryDirectory(prefix="proximal-", dir=home) as work,
        ):
            link = probe_link(lab, settings, server.url, probe_bytes)
            a_timeout = 120 + 4 * selection * 8 / (rate_mbit * 1e6)
            requests = lab_requests(lab, settings, token, selection_frames)
            rounds = (repeats, jobs_per_round)
            runs = measure(lab, admin, requests, rounds, Path(work), a_timeout)
            measured = figures(runs, rate_mbit)
    return {
        "title": "The data-proximal advantage: download and compute vs submit the job",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": common.machine(),
        "data": {
            **asdict(movie),
            "shape": list(movie.shape),
            "dtype": "uint16",
            "codec": "zstd level 3",
            "raw_bytes": movie.raw_bytes,
            "stored_bytes": stored,
            "selection": {"t": [0, selection_frames]},
            "selection_raw_bytes": selection_frames * movie.size * movie.size * 2,
            "selection_stored_bytes": selection,
        },
        "link": link,
        "method": method(repeats, jobs_per_round),
        "repeats": {"download": repeats, "insitu": repeats * jobs_per_round},
        "figures": measured,
        "goals": goals(measured),
    }


def method(repeats: int, jobs_per_round: int) -> str:
    return (
        "The lab is a network namespace joined to the root namespace (SeaweedFS and the insitu "
        "server, local backend, on 127.0.0.1) by a veth pair; tc tbf limits both directions to "
        "the link rate. This kernel has no netem, so the delay comes from a user-space TCP "
        "forwarder on the root-side veth address that holds every chunk of data for half the "
        "round trip in each direction (in order, throughput unlimited) and a new connection's "
        "first bytes for one more round trip (the handshake); the lab reaches S3 and the API "
        "only through it. A opens the selection with obstore (platform key) and computes the "
        "mean over t with dask threads in the lab; B submits the example mean-projection job "
        "(code bundle uploaded from the lab; 1 worker x 2 threads), polls until it ends and "
        "fetches the float32 mean. Bytes are the lab-side veth's rx/tx counters (layer 2, "
        f"both directions). One warm-up job, then {repeats} rounds of one A run and "
        f"{jobs_per_round} B runs, the order alternating between rounds; medians."
    )


def _mb(value: float) -> str:
    return f"{value / MB:,.1f} MB" if value >= 0.1 * MB else f"{value / 1e3:,.1f} kB"


def report(result: dict[str, Any]) -> str:
    """The Markdown section for ``docs/benchmarks.md``."""
    f, link, data = result["figures"], result["link"], result["data"]
    a, b = f["download"], f["insitu"]
    bytes_a, bytes_b = a["link_bytes"], b["link_bytes"]
    phases = b.get("phases_median_s", {})
    lines = [
        "## The data-proximal advantage",
        "",
        f"A researcher in a lab {link['rate_mbit']:g} Mbit/s and {link['rtt_ms']:g} ms away "
        f"wants the mean image of frames t = {data['selection']['t']} of a "
        f"{data['raw_bytes'] / 1e9:.1f} GB movie ({data['selection_raw_bytes'] / 1e9:.2f} GB "
        f"raw, {data['selection_stored_bytes'] / 1e9:.2f} GB stored). " + result["method"],
        "",
        f"Link as measured from the lab: {link['measured_throughput_mbit']:g} Mbit/s of "
        f"payload in a {link['bulk_probe_bytes'] / MB:.0f} MB GET; a small API request took "
        f"{link['measured_request_ms']:g} ms on a kept-alive connection "
        f"({link['measured_request_without_link_ms']:g} ms without the link, so "
        f"{link['measured_rtt_ms']:g} ms round trip) and "
        f"{link['measured_new_connection_request_ms']:g} ms on a new one.",
        "",
        "| | A: download, compute in the lab | B: submit the job, fetch the result | A / B |",
        "|---|---:|---:|---:|",
        f"| time to answer (median) | {a['seconds']['median']:.1f} s | "
        f"{b['seconds']['median']:.2f} s | **{f['speedup']['value']:.1f}x** |",
        f"| runs | {', '.join(f'{s:.1f}' for s in a['seconds']['runs'])} s | "
        f"{', '.join(f'{s:.2f}' for s in b['seconds']['runs'])} s | |",
        f"| bytes over the link, down | {_mb(bytes_a['down'])} | {_mb(bytes_b['down'])} | |",
        f"| bytes over the link, up | {_mb(bytes_a['up'])} | {_mb(bytes_b['up'])} | |",
        f"| bytes over the link, total | {_mb(bytes_a['total'])} | {_mb(bytes_b['total'])} | "
        f"**{f['bytes_ratio']['value']:,.0f}x** |",
        "",
        f"Both answers agree (max |A - B| = {f['max_abs_difference']:.2g}): "
        f"{'yes' if f['answers_agree'] else 'NO'}. A's floor, its bytes at the link rate, "
        f"is {a['link_floor_seconds']:g} s.",
    ]
    if phases:
        compute = phases.get("runner_compute_s", 0.0)
        lines += [
            "",
            f"Of B's {b['seconds']['median']:.2f} s, the job's own compute (open the selection, "
            f"reduce it on 1 worker x 2 threads next to the store) took {compute:.2f} s; the "
            f"rest is the platform and the link. Where B's time goes (medians): "
            + ", ".join(
                f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f} s" for k, v in phases.items()
            )
            + ".",
        ]
    lines += ["", "| goal | target | measured | met |", "|---|---:|---:|---|"]
    lines += [
        f"| {g['goal']} | {g['target']}x | {g['measured']:,.1f}x | {'yes' if g['met'] else 'no'} |"
        for g in result["goals"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lab"]:
        return lab_main(argv[1])
    # a plain kill unwinds the with-blocks too: no namespace, server or store is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4096, help="T (default %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="Y = X (default %(default)s)")
    parser.add_argument("--select", type=int, default=2048, help="frames selected (%(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="A runs (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=3, help="B runs per A run (%(default)s)")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with common.scratch() as home:
        movie = Movie(args.frames, args.size)
        result = run(home, movie, args.select, args.repeats, jobs_per_round=args.jobs)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.record:
        common.record(BENCHMARK, result)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
