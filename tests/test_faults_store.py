"""Faults injected into real components: the object store stopped and throttled, the
workspace's disk full, a worker killed for memory. Each test starts and stops its own.

The object store is a SeaweedFS of this module's own (stopping it disturbs no other
test); jobs run on the local backend, with their workspaces on the server's disk unless
a test says otherwise.
"""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

from helpers import missing, require_seaweedfs, wait_for
from insitu import objectstore
from insitu.client import Client
from insitu.config import Settings
from insitu.seaweedfs import DATA_BUCKET, RESULTS_BUCKET, SeaweedFS, embedded
from insitu.server import BackgroundServer
from insitu.storage import RETRY_TIMEOUT_ENV
from insitu.units import format_size

pytestmark = pytest.mark.timeout(150)

ANALYSIS = '''
import time

import dask
import numpy as np


def stepwise(data, *, context, pause=0.3):
    """Sum the data one time chunk after another, timing each step."""
    step = data.chunksize[0]
    total, slowest = 0, 0.0
    for start in range(0, data.shape[0], step):
        began = time.monotonic()
        total += int(data[start : start + step].astype("int64").sum().compute())
        slowest = max(slowest, time.monotonic() - began)
        time.sleep(pause)
    return {"sum": total, "slowest_step_s": slowest}


def time_mean(data, *, context):
    return {"mean": data.astype("float64").mean(axis=0)}


def _hold(mib, seconds):
    block = np.ones(mib << 20, dtype=np.uint8)  # touched: resident
    time.sleep(seconds)
    return int(block[:8].sum())


def hog(data, *, context, mib=600, seconds=5.0):
    """Allocates ``mib`` MiB on a worker and holds it."""
    return {"held": dask.delayed(_hold)(mib, seconds)}
'''


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """The analyses of these tests, uploaded with each job."""
    directory = tmp_path / "faults_code"
    directory.mkdir()
    (directory / "faults_analysis.py").write_text(ANALYSIS)
    return directory


def spec(dataset: str, entrypoint: str, **fields: Any) -> dict[str, Any]:
    params = fields.pop("params", {})
    return {
        "dataset": dataset,
        "analysis": {"entrypoint": f"faults_analysis:{entrypoint}", "params": params},
        "resources": {"workers": 1, "threads_per_worker": 1, **fields.pop("resources", {})},
        **fields,
    }


class Running:
    """A live server on ``settings`` and an admin client of it."""

    def __init__(self, settings: Settings) -> None:
        self.server = BackgroundServer(settings).start()
        self.api = Client(self.server.url, settings.admin_token_path.read_text().strip())

    def stop(self) -> None:
        self.api.close()
        self.server.stop()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Servers a test started, stopped at its end whatever happened."""
    started: list[Running] = []
    yield started
    for item in started:
        item.stop()


def start(settings: Settings, running: list[Running]) -> Client:
    item = Running(settings)
    running.append(item)
    return item.api


# -- the object store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedFS, Settings]]:
    """A SeaweedFS of this module's own, with the embedded server's buckets and keys."""
    require_seaweedfs()
    home = tmp_path_factory.mktemp("faults-s3")
    server, configured = embedded(Settings(home=home, server={"port": 0}))  # type: ignore[arg-type]
    yield server, configured
    server.stop()


@pytest.fixture
def live_store(store: tuple[SeaweedFS, Settings]) -> Iterator[tuple[SeaweedFS, Settings]]:
    """The module's store, running at the start and again at the end of the test."""
    server, _ = store
    if not server.running:
        server.start()
    yield store
    if not server.running:
        server.start()


@pytest.fixture
def s3_data(live_store: tuple[SeaweedFS, Settings]) -> tuple[str, np.ndarray]:
    """A (t, y, x) uint16 array on the store, 12 chunks along t."""
    _, configured = live_store
    rng = np.random.default_rng(13)
    data = rng.integers(0, 4000, size=(96, 64, 48), dtype=np.uint16)
    url = f"s3://{DATA_BUCKET}/{uuid.uuid4().hex[:8]}/scan.zarr"
    target = zarr.create_array(
        FsspecStore.from_url(
            url, storage_options=objectstore.platform_options(configured, url), read_only=False
        ),
        shape=data.shape,
        chunks=(8, 64, 48),
        dtype="uint16",
        dimension_names=["t", "y", "x"],
    )
    target[:] = data
    return url, data


def on_store(settings: Settings, store: Settings, endpoint: str | None = None) -> Settings:
    """``settings`` with the store's keys (and another endpoint, e.g. a proxy's)."""
    storage = store.storage.model_copy(
        update={"endpoint_url": endpoint or store.storage.endpoint_url}
    )
    return settings.model_copy(update={"storage": storage})


def wait_chunks(api: Client, job_id: str, chunks: int) -> dict[str, Any]:
    def scanned() -> dict[str, Any]:
        job = api.job(job_id)
        assert job["state"] in ("queued", "admitted", "provisioning", "running"), job
        done = (job.get("progress") or {}).get("chunks_done", 0)
        return job if job["state"] == "running" and done >= chunks else {}

    return wait_for(scanned, timeout=60, interval=0.1)


@pytest.mark.s3
def test_a_store_restarted_mid_scan_is_waited_for(
    live_store: tuple[SeaweedFS, Settings],
    s3_data: tuple[str, np.ndarray],
    settings: Settings,
    code: Path,
    running: list[Running],
) -> None:
    """Reads retry with backoff while the store is down; the job completes, exact."""
    server, configured = live_store
    url, data = s3_data
    api = start(on_store(settings, configured), running)
    api.register_dataset("faults/scan", url)
    job = api.submit(spec("faults/scan", "stepwise", params={"pause": 0.3}), code=code)
    wait_chunks(api, job["id"], 2)

    down = time.monotonic()
    server.stop()
    time.sleep(2.0)
    server.start()
    outage = time.monotonic() - down

    done = api.wait(job["id"], timeout=90)
    assert done["state"] == "succeeded", done["error"]
    assert api.result(job["id"], "sum") == int(data.astype(np.int64).sum())
    # One step waited through (most of) the outage instead of failing.
    assert api.result(job["id"], "slowest_step_s") > min(outage * 0.5, 2.0), outage


@pytest.mark.s3
def test_a_store_gone_fails_the_job_naming_it(
    live_store: tuple[SeaweedFS, Settings],
    s3_data: tuple[str, np.ndarray],
    settings: Settings,
    code: Path,
    running: list[Running],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that stays down fails the job after the retry timeout, saying which store."""
    server, configured = live_store
    url, _ = s3_data
    monkeypatch.setenv(RETRY_TIMEOUT_ENV, "4")  # the jobs' runners inherit it
    api = start(on_store(settings, configured), running)
    api.register_dataset("faults/gone", url)
    job = api.submit(spec("faults/gone", "stepwise", params={"pause": 0.3}), code=code)
    wait_chunks(api, job["id"], 2)
    stopped = time.monotonic()
    server.stop()

    done = api.wait(job["id"], timeout=60)
    assert done["state"] == "failed"
    assert time.monotonic() - stopped >= 4.0  # retried for the timeout first
    assert done["error_kind"] == "store_unreachable", done["error"]
    endpoint = configured.storage.endpoint_url or ""
    assert endpoint.removeprefix("http://") in done["error"], done["error"]
    assert DATA_BUCKET in done["error"]
    assert "retr" in done["error"]
    assert api.health()  # the server itself carries on


class ThrottlingProxy:
    """A loopback HTTP proxy in front of the store that answers the first GET of every
    object with 503 SlowDown, and forwards everything else unchanged (signatures too)."""

    SLOW_DOWN = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message><RequestId>test</RequestId></Error>"
    )

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}  # GET path -> times asked
        self.throttled: set[str] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and proxy.throttle(self.path):
                    self.send_response_only(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(proxy.SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(proxy.SLOW_DOWN)
                    return
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    connection.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in ("expect", "connection"):
                            connection.putheader(name, value)
                    connection.endheaders(body)
                    response = connection.getresponse()
                    data = response.read()
                finally:
                    connection.close()
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length_header = response.getheader("Content-Length")
                if self.command == "HEAD" and length_header is not None:
                    self.send_header("Content-Length", length_header)
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def throttle(self, path: str) -> bool:
        """Whether to answer this GET with SlowDown: the first time each path is asked."""
        with self.lock:
            self.seen[path] = self.seen.get(path, 0) + 1
            if self.seen[path] == 1:
                self.throttled.add(path)
                return True
            return False

    def retried(self, fragment: str) -> list[str]:
        """Throttled paths containing ``fragment`` that were asked for again."""
        with self.lock:
            return [p for p in self.throttled if fragment in p and self.seen[p] > 1]

    def __enter__(self) -> ThrottlingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.s3
def test_throttling_is_retried(
    live_store: tuple[SeaweedFS, Settings],
    s3_data: tuple[str, np.ndarray],
    settings: Settings,
    code: Path,
    running: list[Running],
) -> None:
    """Every object's first GET answered 503 SlowDown: data reads and workspace files alike
    are retried, and the job succeeds with the right answer."""
    _, configured = live_store
    url, data = s3_data
    with ThrottlingProxy(configured.storage.endpoint_url or "") as proxy:
        throttled = on_store(settings, configured, endpoint=proxy.url).model_copy(
            update={"workspace_url": f"s3://{RESULTS_BUCKET}/faults-{uuid.uuid4().hex[:6]}"}
        )
        api = start(throttled, running)
        api.register_dataset("faults/throttled", url)
        job = api.submit(spec("faults/throttled", "time_mean", select={"t": [4, 90]}), code=code)
        done = api.wait(job["id"], timeout=90)
        assert done["state"] == "succeeded", done["error"]
        np.testing.assert_allclose(
            api.result(job["id"], "mean"), data[4:90].astype(np.float64).mean(axis=0)
        )
        key = urlparse(url).path
        chunks = proxy.retried(f"{key}/c/")
        assert len(chunks) == 12, sorted(proxy.throttled)  # every chunk, once throttled
        assert proxy.retried(f"/{job['id']}/job.json"), sorted(proxy.throttled)  # workspace


# -- the workspace's disk --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        missing("tmpfs", f"cannot mount a tmpfs (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_workspace_disk_fails_the_job_and_the_server_carries_on(
    small_disk: Path, settings: Settings, code: Path, tmp_path: Path, running: list[Running]
) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, size=(32, 256, 256), dtype=np.uint16)
    path = tmp_path / "big.zarr"
    array = zarr.create_array(
        path,
        shape=data.shape,
        chunks=(16, 128, 128),
        dtype="uint16",
        dimension_names=["t", "y", "x"],
    )
    array[:] = data
    workspaces = small_disk / "jobs"
    api = start(settings.model_copy(update={"workspace_url": workspaces.as_uri()}), running)
    api.register_dataset("faults/big", str(path))
    bundle = api.upload_code(code)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 - 160) * 1024)  # 160 KiB left; the mean is 512 KiB

    job = api.submit(spec("faults/big", "time_mean"), bundle=bundle)
    done = api.wait(job["id"], timeout=90)
    assert done["state"] == "failed"
    assert done["error_kind"] == "disk_full", done["error"]
    assert "disk" in done["error"] and "full" in done["error"]
    assert str(workspaces / job["id"]) in done["error"]  # where
    left = [f.relative_to(workspaces / job["id"]) for f in (workspaces / job["id"]).rglob("*")]
    assert not [f for f in left if f.suffix == ".tmp" or f.parts[0] == "results"], left
    assert api.health() and api.datasets()  # the server keeps serving

    filler.unlink()  # space freed: the next job runs
    again = api.submit(spec("faults/big", "time_mean"), bundle=bundle)
    finished = api.wait(again["id"], timeout=90)
    assert finished["state"] == "succeeded", finished["error"]
    np.testing.assert_allclose(
        api.result(again["id"], "mean"), data.astype(np.float64).mean(axis=0)
    )


# -- a worker's memory -----------------------------------------------------------------------


def test_a_worker_killed_for_memory_says_which_setting_to_raise(
    settings: Settings, movie: tuple[Path, np.ndarray], code: Path, running: list[Running]
) -> None:
    api = start(settings, running)
    api.register_dataset("faults/movie", str(movie[0]))
    limit = 256 << 20
    job = api.submit(
        spec(
            "faults/movie",
            "hog",
            params={"mib": 600, "seconds": 2.0},
            resources={"memory_per_worker": "256MiB"},
        ),
        code=code,
    )
    done = api.wait(job["id"], timeout=120)
    assert done["state"] == "failed"
    assert done["error_kind"] == "out_of_memory", done["error"]
    assert "ran out of memory" in done["error"]
    assert "resources.memory_per_worker" in done["error"]
    assert f"now 256MiB = {format_size(limit)}" in done["error"]  # its current value
    assert "Traceback" not in done["error"]
