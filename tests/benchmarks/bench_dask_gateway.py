"""Dask Gateway as the peer: the time to the answer of the same analysis, three ways.

What an institute would otherwise give its researchers is a Dask Gateway: a server that
creates Dask clusters on request. This benchmark runs a real ``dask-gateway-server``
(its local backend, with its proxy, on 127.0.0.1) beside the insitu server (local
backend), both next to SeaweedFS, and in one run, interleaved, times the 2p mean
projection of a synthetic movie with the same workers x 1 thread:

- ``handwritten``: ``handwritten.py`` as a fresh process (LocalCluster, da.from_zarr),
  as the scan benchmark measures it;
- ``gateway``: a fresh process as a researcher would write it: ``Gateway(address)``,
  ``new_cluster()``, ``scale(n)`` and wait for the workers, ``get_client()``, open the
  array on S3, compute the mean, fetch it, ``cluster.shutdown()``;
- ``insitu``: an insitu job, from submit to its result fetched, as the scan benchmark
  submits it (the example's code uploaded with the job; a runner and its cluster started
  for the job);
- ``insitu_warm``: the same job naming the installed analysis (no upload), which the
  server's warm pool of as many workers takes: a runner forked on workers already up, as
  an institute or a course would run short jobs.

Two job lengths: a short movie (a job of a few seconds) and a long one. All three answers
must agree. ``.venv/bin/python tests/benchmarks/bench_dask_gateway.py --record`` writes
the key ``dask_gateway_peer`` of docs/benchmarks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bench_scan
import common
import httpx
import numpy as np
import psutil
from common import Movie

from insitu.config import Settings
from insitu.server import background_server

BENCHMARK = "dask_gateway_peer"
HERE = Path(__file__).resolve().parent
OPHYS = common.ROOT / "examples" / "ophys"
BIN = Path(sys.executable).parent
LENGTHS = ("short", "long")
CONTENDERS = ("handwritten", "gateway", "insitu", "insitu_warm")
MEAN = "ophys_analyses.projection:mean_projection"
#: The brief's targets for insitu / Dask Gateway, time to the answer, by job length.
TARGETS = {"short": 0.5, "long": 1.0}

#: The researcher's script against the gateway (run as a fresh process, like
#: handwritten.py); the timings it prints are for the report, not what a user writes.
RESEARCHER = '''\
"""The mean image of a movie on S3, computed on a cluster from the institute's gateway."""

import json
import os
import sys
import time

import dask.array as da
import numpy as np
import psutil
import zarr
from dask_gateway import BasicAuth, Gateway
from distributed import wait
from obstore.store import S3Store

address, url, out, workers, endpoint = sys.argv[1:6]
timings = {"startup_s": time.time() - psutil.Process().create_time()}
mark = time.perf_counter()


def lap(name):
    global mark
    now = time.perf_counter()
    timings[name] = now - mark
    mark = now


gateway = Gateway(address, auth=BasicAuth("researcher", os.environ["GATEWAY_PASSWORD"]))
cluster = gateway.new_cluster()
lap("create_s")
cluster.scale(int(workers))
client = cluster.get_client()
client.wait_for_workers(int(workers))
lap("scale_to_ready_s")
bucket, _, prefix = url.removeprefix("s3://").partition("/")
s3 = S3Store(
    bucket,
    prefix=prefix,
    endpoint=endpoint,
    region="us-east-1",
    access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    client_options={"allow_http": True},
)
array = zarr.open_array(store=zarr.storage.ObjectStore(s3, read_only=True), mode="r")
mean = da.from_zarr(array).mean(axis=0, dtype="float64").astype("float32")
future = client.compute(mean)
wait(future)
lap("compute_s")
answer = future.result()
lap("fetch_s")
cluster.shutdown()
lap("close_s")
np.save(out, answer)
print(json.dumps(timings))
'''


@dataclass(frozen=True)
class Sizes:
    """The two movies: a short job (a few seconds of compute) and a long one."""

    short: Movie = field(default_factory=lambda: Movie(frames=1024, size=512))
    long: Movie = field(default_factory=lambda: Movie(frames=4096, size=512))

    def movie(self, length: str) -> Movie:
        return self.short if length == "short" else self.long


# -- the gateway --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaskGateway:
    """A running dask-gateway-server: where researchers reach it, and its password."""

    address: str
    password: str
    log: Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the gateway needs fixed ports, not 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway_config(
    api_port: int, proxy_port: int, password: str, clusters: Path, worker_memory: int
) -> str:
    """The server's config file: local backend, loopback only, 1-thread workers."""
    dask = str(BIN / "dask")
    settings = {
        "c.DaskGateway.address": f"127.0.0.1:{api_port}",
        "c.DaskGateway.backend_class": "dask_gateway_server.backends.local.UnsafeLocalBackend",
        "c.DaskGateway.authenticator_class": "dask_gateway_server.auth.SimpleAuthenticator",
        "c.SimpleAuthenticator.password": password,
        # One port for the HTTP API and the schedulers' TLS traffic (routed by SNI).
        "c.Proxy.address": f"127.0.0.1:{proxy_port}",
        "c.UnsafeLocalBackend.clusters_directory": str(clusters),
        "c.ClusterConfig.scheduler_cmd": [dask, "scheduler"],
        "c.ClusterConfig.worker_cmd": [dask, "worker"],
        "c.ClusterConfig.worker_cores": 1,
        "c.ClusterConfig.worker_threads": 1,
        "c.ClusterConfig.worker_memory": worker_memory,
        "c.ClusterConfig.idle_timeout": 600.0,  # a cluster left behind goes away
    }
    return "".join(f"{name} = {value!r}\n" for name, value in settings.items())


@contextmanager
def dask_gateway_server(home: Path, workers: int, timeout: float = 60.0) -> Iterator[DaskGateway]:
    """Start ``dask-gateway-server`` (which starts its proxy); stop it and its clusters after."""
    home.mkdir(parents=True, exist_ok=True)
    api_port, proxy_port = free_port(), free_port()
    password = secrets.token_hex(16)
    memory = psutil.virtual_memory().total // workers  # as LocalCluster shares it out
    config = home / "dask_gateway_config.py"
    config.write_text(gateway_config(api_port, proxy_port, password, home / "clusters", memory))
    log = home / "dask-gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "dask-gateway-server"), "-f", str(config)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    gateway = DaskGateway(f"http://127.0.0.1:{proxy_port}", password, log)
    try:
        _wait_healthy(gateway, process, timeout)
        yield gateway
    finally:
        process.terminate()  # the server stops its clusters and its proxy
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_healthy(gateway: DaskGateway, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dask-gateway-server exited:\n{_tail(gateway.log)}")
        try:
            if httpx.get(f"{gateway.address}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"dask-gateway-server did not answer in {timeout} s:\n{_tail(gateway.log)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- the contenders -----------------------------------------------------------------------------


class Peers:
    """The three contenders on one store, one insitu server and one gateway."""

    def __init__(self, bench: bench_scan.Bench, gateway: DaskGateway, home: Path, workers: int):
        self.bench, self.gateway_server, self.workers = bench, gateway, workers
        self.answers_dir = home / "answers"
        self.answers_dir.mkdir(parents=True, exist_ok=True)
        self.script = home / "gateway_researcher.py"
        self.script.write_text(RESEARCHER)
        #: per length and contender: each run's phases and seconds, and the last answer
        self.phases: dict[str, dict[str, list[dict[str, float]]]] = _per_contender()
        self.seconds: dict[str, dict[str, list[float]]] = _per_contender()
        self.answers: dict[str, dict[str, np.ndarray]] = {length: {} for length in LENGTHS}
        self._baseline = {p.pid for p in psutil.Process().children(recursive=True)}

    def run(self, length: str, contender: str) -> float:
        """One timed run; then wait, untimed, until every process it started has exited."""
        seconds = getattr(self, contender)(length)
        self.seconds[length][contender].append(seconds)
        self._settle()
        return float(seconds)

    def handwritten(self, length: str) -> float:
        command = [
            sys.executable,
            str(HERE / "handwritten.py"),
            "mean",
            _url(length),
            str(self.answers_dir / f"{length}-handwritten.npy"),
            f"--workers={self.workers}",
            f"--endpoint={self._endpoint}",
        ]
        return self._script(length, "handwritten", command, {})

    def gateway(self, length: str) -> float:
        command = [
            sys.executable,
            str(self.script),
            self.gateway_server.address,
            _url(length),
            str(self.answers_dir / f"{length}-gateway.npy"),
            str(self.workers),
            self._endpoint,
        ]
        env = {"GATEWAY_PASSWORD": self.gateway_server.password}
        return self._script(length, "gateway", command, env)

    def insitu_warm(self, length: str) -> float:
        """The installed analysis, no code uploaded: the warm pool takes the job."""
        return self.insitu(length, warm=True)

    def insitu(self, length: str, warm: bool = False) -> float:
        """Submit, wait, fetch the mean image; the job's phases are read afterwards."""
        bench = self.bench
        contender = "insitu_warm" if warm else "insitu"
        bundle = None if warm else bench.bundles["ophys"]  # as bench_scan uploads it
        spec = {
            "name": f"peer-{length}",
            "dataset": f"bench/movie-{length}",
            "analysis": {"entrypoint": MEAN},
            "resources": {"workers": self.workers, "threads_per_worker": 1},
            "limits": {"max_result_bytes": "64MiB", "timeout": "30m"},
        }

        def submit_wait_fetch() -> tuple[dict[str, Any], np.ndarray]:
            job = bench.client.submit(spec, bundle=bundle)
            done = bench.client.wait(job["id"], poll=0.05)
            if done["state"] != "succeeded":
                raise RuntimeError(f"the insitu job failed: {done['error']}")
            return done, np.asarray(bench.client.result(done["id"], "mean"))

        seconds, (job, answer) = common.timed(submit_wait_fetch)
        pooled = any("(warm pool)" in (e["reason"] or "") for e in bench.client.events(job["id"]))
        if pooled != warm:
            where = "on the warm pool" if pooled else "on a cluster of its own"
            raise RuntimeError(f"the {contender} job ran {where}: the comparison is void")
        phases = bench.phases(job)
        span = phases["queued_to_provisioning_s"] + phases["provisioning_to_running_s"]
        span += phases["running_to_succeeded_s"]
        self.phases[length][contender].append({**phases, "api_and_polling_s": seconds - span})
        self.answers[length][contender] = answer
        return seconds

    @property
    def _endpoint(self) -> str:
        return str(self.bench.settings.storage.endpoint_url)

    def _script(
        self, length: str, contender: str, command: list[str], env: dict[str, str]
    ) -> float:
        environment = {**os.environ, **self.bench.job_env, **env}
        run = partial(subprocess.run, command, env=environment, capture_output=True, text=True)
        seconds, done = common.timed(run)
        if done.returncode != 0:
            raise RuntimeError(f"the {contender} script failed:\n{done.stderr[-3000:]}")
        self.phases[length][contender].append(json.loads(done.stdout.strip().splitlines()[-1]))
        self.answers[length][contender] = np.load(self.answers_dir / f"{length}-{contender}.npy")
        return seconds

    def _settle(self, timeout: float = 60.0) -> None:
        """Let a run's processes (a LocalCluster, a runner, a gateway cluster) wind down."""
        deadline = time.monotonic() + timeout
        extra: list[psutil.Process] = []
        while time.monotonic() < deadline:
            extra = [
                p
                for p in psutil.Process().children(recursive=True)
                if p.pid not in self._baseline and _alive(p)
            ]
            if not extra:
                return
            time.sleep(0.1)
        print(f"still running after {timeout} s, ignored: {extra}", file=sys.stderr)
        self._baseline |= {p.pid for p in extra}


def _per_contender() -> dict[str, dict[str, list[Any]]]:
    return {length: {name: [] for name in CONTENDERS} for length in LENGTHS}


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _url(length: str) -> str:
    return common.data_url(f"movie-{length}.zarr")


# -- measuring ----------------------------------------------------------------------------------


def measure(peers: Peers, repeats: int, warmup: bool = True) -> dict[str, Any]:
    """Every contender on every length, interleaved; medians, phases, and the answers."""
    contenders: dict[str, Callable[[], float]] = {
        f"{length}/{name}": partial(peers.run, length, name)
        for length in LENGTHS
        for name in CONTENDERS
    }
    common.interleaved(contenders, repeats, warmup)
    skip = 1 if warmup else 0
    figures: dict[str, Any] = {}
    for length in LENGTHS:
        seconds = {name: peers.seconds[length][name][skip:] for name in CONTENDERS}
        phases = {name: peers.phases[length][name][skip:] for name in CONTENDERS}
        median = {name: common.median(values) for name, values in seconds.items()}
        splits = {
            name: [_split(name, p, s) for p, s in zip(phases[name], seconds[name], strict=True)]
            for name in CONTENDERS
        }
        figures[length] = {
            "seconds": {
                name: {"median": round(median[name], 3), "runs": [round(s, 3) for s in values]}
                for name, values in seconds.items()
            },
            "ratios": {
                f"{a}_over_{b}": round(median[a] / median[b], 3)
                for a, b in (
                    ("insitu", "gateway"),
                    ("insitu_warm", "gateway"),
                    ("insitu", "handwritten"),
                    ("gateway", "handwritten"),
                )
            },
            "phases_s": {name: _medians(runs) for name, runs in phases.items()},
            "split_s": {name: _medians(runs) for name, runs in splits.items()},
            "answers": _agreement(peers.answers[length]),
        }
    return figures


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(common.median([run[key] for run in runs]), 3) for key in runs[0]}


def _split(contender: str, phases: dict[str, float], total: float) -> dict[str, float]:
    """One run's time in three terms every contender has: to a ready cluster (from the
    command, or from the submit), the computation, and the rest (fetch, close, polling)."""
    if contender.startswith("insitu"):
        ready = phases["queued_to_provisioning_s"] + phases["provisioning_to_running_s"]
        compute = phases["open_s"] + phases["compute_s"]
    elif contender == "gateway":
        ready = phases["startup_s"] + phases["create_s"] + phases["scale_to_ready_s"]
        compute = phases["compute_s"]
    else:
        ready = phases["startup_s"] + phases["cluster_start_s"]
        compute = phases["compute_s"]
    return {"to_ready_cluster": ready, "compute": compute, "rest": total - ready - compute}


def _agreement(answers: dict[str, np.ndarray]) -> dict[str, Any]:
    """Whether every answer matches the hand-written one (float32: to a few ulps)."""
    reference = answers["handwritten"]

    def same(answer: np.ndarray) -> bool:
        return answer.shape == reference.shape and bool(
            np.allclose(answer, reference, rtol=1e-6, atol=0)
        )

    return {
        "agree": all(same(answer) for answer in answers.values()),
        "shape": list(reference.shape),
        "max_abs_difference_from_handwritten": {
            name: float(np.max(np.abs(answer.astype(np.float64) - reference)))
            if answer.shape == reference.shape
            else None
            for name, answer in answers.items()
            if name != "handwritten"
        },
    }


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The brief's goals: insitu / Dask Gateway, time to the answer, per job length."""
    wording = {
        "short": "time to the answer against Dask Gateway, a job of a few seconds: under 0.5x",
        "long": "time to the answer against Dask Gateway, a long job: at most 1.0x",
    }
    how = {
        "insitu_warm": "installed analysis on the warm pool",
        "insitu": "code uploaded, a cluster started for the job",
    }
    out = []
    for length, target in TARGETS.items():
        for contender, said in how.items():
            ratio = figures[length]["ratios"][f"{contender}_over_gateway"]
            met = ratio < target if length == "short" else ratio <= target
            goal = f"{wording[length]} ({said})"
            out.append({"goal": goal, "target": target, "measured": ratio, "met": met})
    return out


def prepare(sizes: Sizes, cache: Path) -> dict[str, Path]:
    """The local copies of both movies (written once; the long one is the scan benchmark's)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for length in LENGTHS:
        movie = sizes.movie(length)
        path = cache / f"movie-{movie.frames}x{movie.size}.zarr"
        out[length] = common.cached(path, movie, partial(common.write_movie, movie=movie))
    return out


def with_warm_pool(settings: Settings, workers: int) -> Settings:
    """The settings with a warm pool of ``workers`` x 1 thread that takes jobs of that size."""
    pool = {"warm_pool_workers": workers, "warm_pool_threads": 1, "warm_pool_max_workers": workers}
    return settings.model_copy(update={"local": settings.local.model_copy(update=pool)})


@contextmanager
def installed_example() -> Iterator[None]:
    """The ophys example importable by the server's processes, as an installed package is."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OPHYS), before]))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def wait_for_pool(home: Path, timeout: float = 120.0) -> None:
    """Until the server's warm pool has its scheduler and its runner zygote up."""
    deadline = time.monotonic() + timeout
    while not ((home / "pool" / "scheduler").exists() and (home / "pool" / "zygote.sock").exists()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm pool under {home / 'pool'} did not start in {timeout} s")
        time.sleep(0.1)


def run(
    home: Path,
    sizes: Sizes = Sizes(),
    workers: int = 2,
    repeats: int = 3,
    cache: Path = common.CACHE,
    warmup: bool = True,
) -> dict[str, Any]:
    """Prepare the movies; start SeaweedFS, the insitu server and the gateway; measure."""
    locals_ = prepare(sizes, cache)
    with common.s3_stack(home / "insitu") as (store, plain):
        stored = {length: common.upload(p, _url(length), plain) for length, p in locals_.items()}
        settings = with_warm_pool(plain, workers)
        with (
            installed_example(),
            background_server(settings) as server,
            dask_gateway_server(home / "dask-gateway", workers) as gateway,
        ):
            wait_for_pool(settings.home)
            pid = store._process.pid if store._process else None
            bench = bench_scan.Bench(settings, server, {}, pid)
            for length in LENGTHS:
                bench.client.register_dataset(
                    f"bench/movie-{length}", _url(length), access="public"
                )
            figures = measure(Peers(bench, gateway, home, workers), repeats, warmup)
            bench.client.close()
    data = {}
    for length in LENGTHS:
        movie = sizes.movie(length)
        data[length] = {
            **asdict(movie),
            "shape": list(movie.shape),
            "raw_bytes": movie.raw_bytes,
            "stored_bytes": stored[length],
        }
    return {
        "title": "Dask Gateway as the peer: time to the answer",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            **common.machine(),
            "dask_gateway": {
                name: version(name) for name in ("dask-gateway", "dask-gateway-server")
            },
        },
        "data": {
            **data,
            "dtype": "uint16",
            "codec": "zstd level 3",
            "store": "SeaweedFS on 127.0.0.1 (same machine)",
        },
        "workers": workers,
        "threads_per_worker": 1,
        "gateway": (
            "dask-gateway-server with UnsafeLocalBackend (scheduler and workers as local "
            "processes of the server's user; Dask's nanny and TLS as deployed), its proxy "
            "(the dask-gateway-proxy binary the wheel ships) on one 127.0.0.1 port for the "
            "API and the schedulers, SimpleAuthenticator with a password, in-memory "
            "database; each worker 1 core x 1 thread with the memory LocalCluster would "
            "give it; the server started once for the run, as an institute keeps it up"
        ),
        "method": (
            f"{repeats} interleaved rounds{' after one warm-up' if warmup else ''}, medians; "
            "each round runs every contender on both movies, the order reversed every other "
            "round; after each run, untimed, every process it started (a LocalCluster, an "
            "insitu runner, a gateway cluster) is left to exit before the next starts. "
            f"{workers} workers x 1 thread everywhere. hand-written = handwritten.py as a "
            "fresh process (LocalCluster, da.from_zarr on zarr's ObjectStore over obstore); "
            "Dask Gateway = a fresh process: Gateway(address), new_cluster(), scale(n), "
            "get_client(), wait_for_workers(n), open the array the same way, compute the "
            "mean, fetch it, cluster.shutdown(); the store's key travels with the task graph "
            "(the pickled store), as with LocalCluster; insitu = submit the example "
            "mean-projection job with its code uploaded, as the scan benchmark does (local "
            "backend: a runner and its LocalCluster started per job), wait, fetch the result; "
            f"insitu warm = the same job naming the installed analysis, taken by the server's "
            f"warm pool of {workers} workers x 1 thread (a runner forked on workers already up)"
        ),
        "repeats": repeats,
        "figures": figures,
        "goals": goals(figures),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Sizes()
    parser.add_argument("--short-frames", type=int, default=defaults.short.frames)
    parser.add_argument("--long-frames", type=int, default=defaults.long.frames)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.json")
    args = parser.parse_args(argv)
    sizes = Sizes(Movie(frames=args.short_frames), Movie(frames=args.long_frames))
    with common.scratch() as home:
        result = run(home, sizes, args.workers, args.repeats)
    common.publish(BENCHMARK, result, args.record)
    return 0


# -- the report ---------------------------------------------------------------------------------

NAMES = {
    "handwritten": "hand-written",
    "gateway": "Dask Gateway",
    "insitu": "insitu",
    "insitu_warm": "insitu, warm pool",
}


def report(result: dict[str, Any]) -> str:
    """The Markdown section of ``docs/benchmarks.md``."""
    figures, data = result["figures"], result["data"]
    lines = [
        "## Dask Gateway as the peer: time to the answer",
        "",
        "What an institute would otherwise give its researchers is a Dask Gateway. The same "
        "analysis, the mean image over t of a synthetic 2p movie on S3, three ways in one "
        "run: a hand-written Dask script, a researcher's script against a Dask Gateway, and "
        f"an insitu job. Method: {result['method']}.",
        "",
        f"Gateway: {result['gateway']}. Store: {data['store']}.",
        "",
        "| job | movie | "
        + " | ".join(f"{NAMES[n]} s" for n in CONTENDERS)
        + " | insitu / gateway | insitu warm / gateway | insitu / hand-written |",
        "|---|---|" + "---:|" * (len(CONTENDERS) + 3),
    ]
    for length in LENGTHS:
        f, movie = figures[length], data[length]
        lines.append(
            f"| {length} | {movie['frames']} x {movie['size']} x {movie['size']}, "
            f"{movie['raw_bytes'] / 1e9:.2f} GB raw | "
            + " | ".join(str(f["seconds"][n]["median"]) for n in CONTENDERS)
            + f" | **{f['ratios']['insitu_over_gateway']}x** | "
            f"**{f['ratios']['insitu_warm_over_gateway']}x** | "
            f"{f['ratios']['insitu_over_handwritten']}x |"
        )
    lines += [
        "",
        "Where each contender's time goes (medians over runs, seconds): to a ready cluster "
        "(from the command, or from the submit to the job running), the computation (for "
        "insitu, opening the selection and computing), and the rest (fetching the answer, "
        "closing the cluster, the client's polling, writing results):",
        "",
        "| job | contender | to a ready cluster | compute | rest | total |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for length in LENGTHS:
        f = figures[length]
        for name in CONTENDERS:
            split = f["split_s"][name]
            lines.append(
                f"| {length} | {NAMES[name]} | {split['to_ready_cluster']} | "
                f"{split['compute']} | {split['rest']} | {f['seconds'][name]['median']} |"
            )
    lines += ["", "Phases (medians, seconds):", ""]
    for name in ("gateway", "insitu", "insitu_warm"):
        for length in LENGTHS:
            phases = figures[length]["phases_s"][name]
            lines.append(
                f"- {NAMES[name]}, {length}: "
                + ", ".join(
                    f"{k.removesuffix('_s').replace('_', ' ')} {v}" for k, v in phases.items()
                )
            )
    lines.append("")
    for length in LENGTHS:
        f = figures[length]
        answers = f["answers"]
        differences = answers["max_abs_difference_from_handwritten"].values()
        worst = max((d for d in differences if d is not None), default=float("nan"))
        lines.append(
            f"The {length} job's answers agree (float32 image {answers['shape']}, largest "
            f"difference from the hand-written one {worst:g}): "
            f"{'yes' if answers['agree'] else '**no**'}."
        )
    lines += ["", "| goal | target | measured | met |", "|---|---:|---:|---|"]
    for goal in result["goals"]:
        lines.append(
            f"| {goal['goal']} | {goal['target']}x | {goal['measured']}x | "
            f"{'yes' if goal['met'] else '**no**'} |"
        )
    lines += ["", _reading(result)]
    return "\n".join(lines)


def _reading(result: dict[str, Any]) -> str:
    """What the figures say, in a few sentences computed from them."""
    short, long = result["figures"]["short"], result["figures"]["long"]
    gw, job = short["split_s"]["gateway"], short["split_s"]["insitu"]
    warm = short["split_s"]["insitu_warm"]
    text = (
        f"Short job: Dask Gateway spent {gw['to_ready_cluster']} s before it could compute "
        "(the researcher's interpreter and imports, the cluster's scheduler process, then "
        f"{result['workers']} worker processes with their nannies, over TLS), the insitu job "
        f"{job['to_ready_cluster']} s from the submit to running (its runner process and "
        f"its LocalCluster of as many worker processes); computing took {gw['compute']} s "
        f"and {job['compute']} s. Long job: the computation dominates "
        f"({long['split_s']['gateway']['compute']} s through the gateway, "
        f"{long['split_s']['insitu']['compute']} s in the insitu job), so the ratio moves "
        f"towards the ratio of compute times: {long['ratios']['insitu_over_gateway']}x. "
        f"On the warm pool the short job ran {warm['to_ready_cluster']} s after its submit "
        f"and computed in {warm['compute']} s: "
        f"{short['ratios']['insitu_warm_over_gateway']}x the gateway's time to the answer. "
    )
    missed = [g for g in result["goals"] if not g["met"]]
    if missed:
        text += (
            "Not met: "
            + "; ".join(f"{g['goal']} ({g['measured']}x)" for g in missed)
            + ". Where insitu starts a cluster of fresh Dask processes for the job, as the "
            "gateway does, on the same two shared cores, start-up costs them about the same; "
            "a short job gains where it starts on workers that are already up (the warm "
            "pool, for installed analyses)."
        )
    else:
        text += "Both goals are met."
    return text


if __name__ == "__main__":
    sys.exit(main())
