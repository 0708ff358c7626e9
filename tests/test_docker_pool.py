"""The docker backend's warm pool: isolated sandboxes started ahead, each used by one job.

The parts first (the sandbox's containers, its runner's wait, its gateway's wait for a
policy), then a real server with a pool on Docker and SeaweedFS: a job that fits starts
in a sandbox, a job that does not starts cold, a used sandbox is gone and replaced, and
a stopped server leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import sqlalchemy

import dockerlab
from helpers import wait_for
from insitu import images
from insitu.backends.base import LABEL_JOB, LaunchRequest
from insitu.backends.docker_backend import job_request
from insitu.backends.docker_pool import SandboxPool, is_sandbox
from insitu.backends.docker_specs import (
    ASSIGNMENT_FILE,
    LABEL_SERVER,
    SOCKET_DIR,
    JobContainers,
    StoreRoute,
    plan,
)
from insitu.backends.store_gateway import GATEWAY_CREDENTIALS, PLACEHOLDER_KEY
from insitu.client import Client
from insitu.config import DockerBackendSettings, Settings
from insitu.runtime.sandbox import await_assignment
from insitu.server import BackgroundServer
from insitu.spec import Resources
from test_docker import nothing_left_behind  # noqa: F401 (a fixture)

ROUTE = StoreRoute(host="127.0.0.1", port=8333)


def sandbox_request(key: str = "pool-abc") -> LaunchRequest:
    return LaunchRequest(
        job_id=key, workspace_url="", resources=Resources(workers=2), timeout_s=0.0
    )


def _plan(request: LaunchRequest, socket_dir: Path, *, sandbox: bool) -> JobContainers:
    return plan(
        job_request(request, ROUTE),
        **{"image": "sha256:x", "user": "1000:1000", "server_id": "s1", "host_cpus": 2},
        settings=DockerBackendSettings(),
        store=ROUTE,
        socket_dir=socket_dir,
        runner_env={},
        sandbox=sandbox,
    )


def test_a_sandbox_runner_waits_for_its_assignment_in_a_read_only_folder(tmp_path: Path) -> None:
    containers = _plan(sandbox_request(), tmp_path, sandbox=True)
    runner = containers.specs[-1]
    assert runner["entrypoint"][:3] == ["python", "-m", "insitu.runtime.sandbox"]
    assert f"{SOCKET_DIR}/{ASSIGNMENT_FILE}" in runner["entrypoint"]
    assert runner["volumes"][str(tmp_path)] == {"bind": SOCKET_DIR, "mode": "ro"}
    assert "--wait-workers" in runner["entrypoint"]
    # No container of a sandbox holds a store key, before or after its assignment.
    for spec in containers.specs:
        env = spec["environment"]
        assert env.get("AWS_SECRET_ACCESS_KEY", PLACEHOLDER_KEY) == PLACEHOLDER_KEY
        assert spec["network_mode"] in ("none", f"container:{containers.name('gateway')}")
    cold = _plan(sandbox_request("j-1"), tmp_path, sandbox=False)
    assert cold.specs[-1]["entrypoint"][:3] == ["python", "-m", "insitu.runtime"]
    assert "volumes" not in cold.specs[-1]


def test_the_sandbox_runner_reads_only_a_whole_assignment(tmp_path: Path) -> None:
    path = tmp_path / ASSIGNMENT_FILE
    assert await_assignment(path, timeout=0.1) is None

    def write_later() -> None:
        time.sleep(0.1)
        path.write_text('{"workspace": "s3://res')  # half of it: not read
        time.sleep(0.1)
        path.write_text(json.dumps({"workspace": "s3://results/jobs/j-1", "env": {"A": "1"}}))

    writer = threading.Thread(target=write_later)
    writer.start()
    assignment = await_assignment(path, timeout=10)
    writer.join()
    assert assignment == {"workspace": "s3://results/jobs/j-1", "env": {"A": "1"}}


def test_a_waiting_gateway_listens_only_once_told_its_job(tmp_path: Path) -> None:
    """It imports ahead, then takes its policy and keys from a file it deletes."""
    socket_path, config = tmp_path / "store.sock", tmp_path / "gw.config.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "insitu.gateway", "--listen", f"unix:{socket_path}",
         "--endpoint", "http://127.0.0.1:9", "--await-config", str(config)],
        env={k: v for k, v in os.environ.items() if k not in GATEWAY_CREDENTIALS},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        assert process.poll() is None and not socket_path.exists()
        config.write_text(
            json.dumps(
                {
                    "dataset": "s3://data/lab/movie.zarr",
                    "workspace": "s3://results/jobs/j-1",
                    "counts": str(tmp_path / "counts.json"),
                    "credentials": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
                }
            )
        )
        assert wait_for(socket_path.exists, 20)
        assert not config.exists()  # the keys do not stay on disk
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://store") as client:
            refused = client.get("/data/other/secret.zarr/zarr.json")
        assert refused.status_code == 403
        assert "AccessDenied" in refused.text
    finally:
        process.terminate()
        process.wait(10)


def test_a_config_caught_mid_write_is_read_again_until_whole(tmp_path: Path) -> None:
    """An empty or cut-short config is not the job's: the gateway waits for all of it."""
    from insitu.gateway.__main__ import GatewayConfigError, await_config

    config = tmp_path / "gw.config.json"
    whole = json.dumps({"dataset": "s3://data/a.zarr", "workspace": "s3://results/jobs/j"})
    config.write_text(whole[:10])  # as a writer that has not finished

    def finish() -> None:
        time.sleep(0.3)
        config.write_text(whole)

    writer = threading.Thread(target=finish)
    writer.start()
    assert await_config(config)["dataset"] == "s3://data/a.zarr"
    writer.join()
    assert not config.exists()

    config.write_text("[1, 2]")
    with pytest.raises(GatewayConfigError, match="JSON object"):
        await_config(config)


def test_the_pool_hands_a_sandbox_only_to_a_job_of_its_shape() -> None:
    class Backend:
        config = DockerBackendSettings(warm_pool_size=1, warm_pool_workers=1, warm_pool_threads=2)

    pool = SandboxPool(Backend())  # type: ignore[arg-type]
    from insitu.backends.docker_pool import Sandbox

    pool._ready.append(Sandbox("pool-1", "sha256:a", 1, 0.0, ()))
    pool.image_id = "sha256:a"  # as once its first sandbox started
    fits = LaunchRequest(
        job_id="j",
        workspace_url="s3://results/jobs/j",
        dataset_url="s3://data/m.zarr",
        resources=Resources(workers=1, threads_per_worker=2, memory_per_worker="1GiB"),
        timeout_s=60,
    )
    assert pool.fits(fits, "sha256:a", ROUTE)
    assert not pool.fits(fits, "sha256:b", ROUTE)  # another image
    assert not pool.fits(fits, "sha256:a", None)  # no store: local folders
    local = LaunchRequest(**{**fits.__dict__, "dataset_url": "file:///data/m.zarr"})
    assert not pool.fits(local, "sha256:a", ROUTE)
    for resources in (
        Resources(workers=2, threads_per_worker=2),
        Resources(workers=1, threads_per_worker=1),
        Resources(workers=1, threads_per_worker=2, memory_per_worker="4GiB"),
        Resources(workers=1, threads_per_worker=2, gpu=1),
    ):
        other = LaunchRequest(**{**fits.__dict__, "resources": resources})
        assert not pool.fits(other, "sha256:a", ROUTE), resources
    assert is_sandbox("pool-1") and not is_sandbox("j-1")
    # A fitting job waits for the next sandbox, unless the pool cannot start them.
    assert pool.should_wait("j") and pool.should_wait("j")
    pool._healthy = False
    assert not pool.should_wait("j")


# -- on Docker and SeaweedFS ---------------------------------------------------------------


def _pool_processes(home: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if "insitu.gateway" in cmdline and any(str(home) in a for a in cmdline):
            found.append(process)
    return found


@pytest.fixture
def pooled(
    s3_settings: Settings, ophys_image: images.BuiltImage, engine: Any
) -> Iterator[tuple[Client, Settings]]:
    settings = s3_settings.model_copy(
        update={
            "backend": "docker",
            "docker": DockerBackendSettings(
                warm_pool_size=2,
                warm_pool_image=dockerlab.OPHYS_IMAGE,
                warm_pool_workers=1,
                warm_pool_threads=2,
                warm_pool_memory="1GiB",  # type: ignore[arg-type]
            ),
        }
    )
    server = BackgroundServer(settings).start()
    try:
        with Client(server.url, settings.admin_token_path.read_text().strip()) as api:
            yield api, settings
    finally:
        server.stop()
    server_id = settings.dispatcher.id
    # The idle sandboxes went with the server: no container, no waiting gateway.
    assert wait_for(
        lambda: not engine.api.containers(all=True, filters={"label": LABEL_SERVER}), 30
    ), f"server {server_id} left containers"
    assert wait_for(lambda: _pool_processes(settings.home) == [], 10)


def _runner_keys(engine: Any) -> set[str]:
    """The keys of the runner containers now (one listing: none vanishes half-way)."""
    listed = engine.api.containers(all=True, filters={"label": "insitu.io/component=runner"})
    return {c["Labels"][LABEL_JOB] for c in listed}


def _ready(api: Client) -> int:
    return int(api.health()["warm_pool"]["ready"])


def _spec(**resources: Any) -> dict[str, Any]:
    return {
        "dataset": "lab/movie",
        "analysis": {
            "image": dockerlab.OPHYS_IMAGE,
            "entrypoint": "ophys_analyses.projection:mean_projection",
        },
        "resources": {"workers": 1, "memory_per_worker": "1GiB", **resources},
    }


@pytest.mark.docker
@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_starts_in_a_warm_sandbox_that_no_other_job_gets(
    pooled: tuple[Client, Settings],
    s3_movie: tuple[str, np.ndarray],
    engine: Any,
    tmp_path: Path,
) -> None:
    api, settings = pooled
    url, data = s3_movie
    api.register_dataset("lab/movie", url)
    assert api.health()["warm_pool"]["size"] == 2
    assert wait_for(lambda: _ready(api) == 2, 120), api.health()
    waiting = _runner_keys(engine)
    assert len(waiting) == 2 and all(is_sandbox(k) for k in waiting)

    done = api.wait(api.submit(_spec())["id"], timeout=120)
    assert done["state"] == "succeeded", (done["error"], api.log_text(done["id"])[-3000:])
    events = api.events(done["id"])
    assert any("(warm pool)" in e["reason"] for e in events), events
    mean = api.result(done["id"], "mean")
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-5)
    # Metered on the trusted side: the gateway's count, the containers' CPU time.
    assert done["bytes_scanned_source"] == "counted by insitu's store gateway"
    assert "cgroup" in done["core_seconds_source"] or "reserved" in done["core_seconds_source"]
    # Its log is the sandbox's containers', under the job's name.
    assert "[runner]" in api.log_text(done["id"])

    # The sandbox went with its job; the pool started another in its place.
    def runners() -> set[str]:
        return _runner_keys(engine)

    assert wait_for(lambda: len(waiting & runners()) == 1 and _ready(api) == 2, 120), (
        runners(),
        api.health(),
    )

    # A second job gets a different sandbox; a job of another shape starts cold.
    second = api.submit(_spec())
    cold = api.submit(_spec(workers=2))
    for job in (second, cold):
        finished = api.wait(job["id"], timeout=180)
        assert finished["state"] == "succeeded", finished["error"]
    assert any("(warm pool)" in e["reason"] for e in api.events(second["id"]))
    assert not any("(warm pool)" in e["reason"] for e in api.events(cold["id"]))
    assert not (waiting <= runners())  # both first sandboxes are gone by now
    engine_db = sqlalchemy.create_engine(settings.resolved_database_url)
    with engine_db.connect() as connection:
        rows = connection.execute(sqlalchemy.text("SELECT id, handle FROM jobs")).all()
    engine_db.dispose()
    handles = {job_id: json.loads(h) if isinstance(h, str) else h for job_id, h in rows}
    sandboxes = [handles[j]["data"].get("sandbox") for j in (done["id"], second["id"])]
    assert all(sandboxes) and len(set(sandboxes)) == 2  # never two jobs in one sandbox
    assert "sandbox" not in handles[cold["id"]]["data"]
