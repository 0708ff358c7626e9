"""The docker backend end to end: jobs in user images, isolation, cancel, timeout, failures.

Needs a running Docker engine, root and debootstrap (to build the base image with no
registry) and SeaweedFS; CI requires them all (INSITU_REQUIRE=docker,s3).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import dockerlab
from helpers import assert_one_error_line, missing, wait_for
from insitu import images
from insitu.backends.docker_backend import DockerBackend
from insitu.backends.docker_specs import LABEL_SERVER
from insitu.cli.main import app
from insitu.client import Client
from insitu.config import Settings
from insitu.errors import InvalidInput
from insitu.server import BackgroundServer

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
import netlab

pytestmark = [pytest.mark.docker, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(240)]

PROBES = '''
import os
import socket
import time


def net_probe(data, *, context, targets):
    """What a job can reach and do: each target connected or refused, and its sandbox."""
    reached = {}
    for name, (host, port) in targets.items():
        try:
            socket.create_connection((host, port), timeout=3).close()
            reached[name] = "connected"
        except OSError as exc:
            reached[name] = f"{type(exc).__name__}: {exc.strerror or exc}"
    try:
        open("/usr/insitu-probe", "w").close()
        root_fs = "writable"
    except OSError as exc:
        root_fs = exc.strerror
    status = open("/proc/self/status").read().splitlines()
    capabilities = [line.split()[1] for line in status if line.startswith("CapEff")][0]
    return {
        "reached": reached,
        "root_fs": root_fs,
        "capabilities": capabilities,
        "uid": os.getuid(),
        "interfaces": sorted(os.listdir("/sys/class/net")),
        "mean": data.mean(),
    }


def hold_port(data, *, context, port, seconds=60):
    """Listen on a port of the job's own loopback for a while."""
    server = socket.create_server(("127.0.0.1", port))
    time.sleep(seconds)
    server.close()
    return {"held": port}


def slow_chunks(data, *, context, seconds=0.4):
    """Mean over time, each chunk taking a while on the workers."""

    def pause(block):
        time.sleep(seconds)
        return block

    return {"mean": data.map_blocks(pause, dtype=data.dtype).astype("float64").mean(axis=0)}


def sleep(data, *, context, seconds=60):
    time.sleep(seconds)
    return {"done": True}
'''

TINY_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
USER root
ARG PIP_CERT
COPY .insitu /opt/insitu
RUN pip install --no-cache-dir -c /opt/insitu/constraints.txt "/opt/insitu/runtime[s3]"
COPY tiny_analysis.py /opt/analysis/
ENV PYTHONPATH=/opt/analysis
"""

TINY_ANALYSIS = """
def double_mean(data, *, context):
    return {"mean2": data.astype("float64").mean(axis=0) * 2}
"""


# -- images and the engine ------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind(engine: Any) -> Iterator[None]:
    """After every test here: no job container, and no volume or network more than before."""
    volumes = {v.name for v in engine.volumes.list()}
    networks = {n.name for n in engine.networks.list()}
    yield
    dockerlab.prune_test_images(engine)
    assert wait_for(lambda: dockerlab.job_containers(engine) == [], 30)
    assert {v.name for v in engine.volumes.list()} <= volumes
    assert {n.name for n in engine.networks.list()} == networks


@pytest.fixture
def docker_settings(s3_settings: Settings) -> Settings:
    return s3_settings.model_copy(update={"backend": "docker"})


@pytest.fixture
def docker_server(docker_settings: Settings, ophys_image: images.BuiltImage) -> Iterator[Client]:
    server = BackgroundServer(docker_settings).start()
    try:
        with Client(server.url, docker_settings.admin_token_path.read_text().strip()) as api:
            yield api
    finally:
        server.stop()


@pytest.fixture
def probes(tmp_path: Path) -> Path:
    code = tmp_path / "probes"
    code.mkdir()
    (code / "probes.py").write_text(PROBES)
    return code


def _spec(dataset: str, entrypoint: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": dataset,
        "analysis": {"image": dockerlab.OPHYS_IMAGE, "entrypoint": entrypoint},
    }
    for key, value in extra.items():
        if key == "params":
            spec["analysis"]["params"] = value
        else:
            spec[key] = value
    return spec


def _wait_state(api: Client, job_id: str, state: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(lambda: (j := api.job(job_id))["state"] == state and j, timeout, 0.2)


def _gone(engine: Any, job_id: str) -> bool:
    return dockerlab.job_containers(engine, job_id) == []


# -- a job in a user image -------------------------------------------------------------------


def test_a_job_runs_in_its_image_with_its_digest_in_the_provenance(
    docker_server: Client,
    docker_settings: Settings,
    engine: Any,
    ophys_image: images.BuiltImage,
    s3_movie: tuple[str, np.ndarray],
) -> None:
    url, data = s3_movie
    docker_server.register_dataset("d/movie", url)
    job = docker_server.submit(
        _spec(
            "d/movie",
            "ophys_analyses.projection:mean_projection",
            resources={"workers": 2, "threads_per_worker": 1, "memory_per_worker": "1GiB"},
        )
    )
    done = docker_server.wait(job["id"], timeout=120)
    assert done["state"] == "succeeded", done["error"]
    np.testing.assert_allclose(
        docker_server.result(job["id"], "mean"), data.astype(np.float64).mean(axis=0), rtol=1e-6
    )
    # Metered on the server's side: the containers' CPU time, and the gateway's byte count.
    assert done["core_seconds_source"].startswith("CPU time of the job's containers")
    assert 0 < done["core_seconds"] < 600
    assert done["bytes_scanned_source"] == "counted by insitu's store gateway"
    assert done["bytes_scanned"] > 0
    provenance = docker_server.provenance(job["id"])
    assert provenance["image"] == dockerlab.OPHYS_IMAGE
    assert provenance["image_id"] == ophys_image.id == engine.images.get(dockerlab.OPHYS_IMAGE).id
    assert provenance["image_digest"].startswith("sha256:")
    assert provenance["reported_by_job"]["environment"]["python"].startswith("3.11")

    # The runner's last line comes after the job has ended: its log keeps it.
    log = wait_for(
        lambda: (
            (text := docker_server.log_text(job["id"])) and "succeeded: scanned" in text and text
        ),
        20,
        0.2,
    )
    for role in ("[runner]", "[scheduler]", "[worker-0]", "[worker-1]"):
        assert role in log, f"{role} missing from the job's log"
    # Everything the job ran is gone: containers, the store relay and its socket.
    assert wait_for(lambda: _gone(engine, job["id"]), 15)
    backend = DockerBackend(docker_settings)
    assert wait_for(lambda: job["id"] not in backend._relays(), 15)
    assert wait_for(lambda: not (backend.socket_root / job["id"]).exists(), 5)


def test_uploaded_code_reaches_workers_in_their_own_containers(
    docker_server: Client, s3_movie: tuple[str, np.ndarray], analysis_code: Path
) -> None:
    url, data = s3_movie
    docker_server.register_dataset("d/code", url)
    job = docker_server.submit(
        _spec(
            "d/code",
            "my_analysis:time_mean",
            params={"scale": 2.0},
            select={"t": [5, 83]},
            resources={"workers": 2, "memory_per_worker": "1GiB"},
        ),
        code=analysis_code,
    )
    done = docker_server.wait(job["id"], timeout=120)
    assert done["state"] == "succeeded", done["error"]
    np.testing.assert_allclose(
        docker_server.result(job["id"], "mean"),
        data[5:83].astype(np.float64).mean(axis=0) * 2.0,
        rtol=1e-6,
    )
    # Outputs: the workers write them through the job's gateway, into its workspace only.
    job = docker_server.submit(
        {
            **_spec("d/code", "my_analysis:keep", resources={"workers": 2}),
            "outputs": {"doubled": {"name": "d/code-x2"}},
        },
        code=analysis_code,
    )
    done = docker_server.wait(job["id"], timeout=120)
    assert done["state"] == "succeeded", done["error"]
    kept = docker_server.dataset("d/code-x2")
    assert kept["url"].startswith("s3://") and kept["size"] > 0


def test_a_job_on_local_files_gets_them_as_mounts(
    settings: Settings,
    engine: Any,
    ophys_image: images.BuiltImage,
    movie: tuple[Path, np.ndarray],
    analysis_code: Path,
) -> None:
    """No object store: the dataset is mounted read-only, the workspace read-write (and its
    outputs folder in the workers, which write a job's outputs)."""
    local = settings.model_copy(update={"backend": "docker"})
    server = BackgroundServer(local).start()
    try:
        with Client(server.url, local.admin_token_path.read_text().strip()) as api:
            api.register_dataset("d/local", str(movie[0]))
            job = api.submit(
                _spec("d/local", "ophys_analyses.projection:mean_projection"),
            )
            done = api.wait(job["id"], timeout=120)
            assert done["state"] == "succeeded", done["error"]
            np.testing.assert_allclose(
                api.result(job["id"], "mean"), movie[1].astype(np.float64).mean(axis=0), rtol=1e-6
            )
            # Outputs: written by the workers in their containers, into the job's own folder.
            job = api.submit(
                {**_spec("d/local", "my_analysis:keep"), "outputs": {"doubled": {"name": "d/x2"}}},
                code=analysis_code,
            )
            done = api.wait(job["id"], timeout=120)
            assert done["state"] == "succeeded", done["error"]
            kept = api.dataset("d/x2")
            assert kept["derived_from_job"] == job["id"] and kept["size"] > 0
            stored = zarr.open_group(kept["url"].removeprefix("file://"), mode="r")["0"][:]
            np.testing.assert_allclose(stored, movie[1].astype(np.float32) * 2)
    finally:
        server.stop()


# -- isolation --------------------------------------------------------------------------------


def _listener() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
                connection.close()
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, port


def test_a_job_reaches_only_its_cluster_and_its_store(
    docker_server: Client,
    docker_settings: Settings,
    engine: Any,
    s3_movie: tuple[str, np.ndarray],
    probes: Path,
) -> None:
    if reason := netlab.unavailable():
        missing("netns", reason)
    url, data = s3_movie
    docker_server.register_dataset("d/iso", url)
    host_listener, host_port = _listener()
    hold = 47123
    other = docker_server.submit(
        _spec("d/iso", "probes:hold_port", params={"port": hold, "seconds": 120}), code=probes
    )
    _wait_state(docker_server, other["id"], "running")
    with netlab.lab_link({"listener": host_port}, rtt=0.0, tag="dock") as lab:
        # A positive control: from the host, the lab's side of the link answers.
        socket.create_connection((lab.host_address, lab.ports["listener"]), timeout=3).close()
        targets = {
            "host_loopback_service": ["127.0.0.1", host_port],
            "other_jobs_port": ["127.0.0.1", hold],
            "address_outside": [lab.host_address, lab.ports["listener"]],
            "lab_host": [lab.lab_address, 22],
        }
        job = docker_server.submit(
            _spec("d/iso", "probes:net_probe", params={"targets": targets}), code=probes
        )
        done = docker_server.wait(job["id"], timeout=120)
    host_listener.close()
    assert done["state"] == "succeeded", done["error"]
    seen = docker_server.result(job["id"], "reached")
    assert all(result != "connected" for result in seen.values()), seen
    assert "Network is unreachable" in seen["address_outside"]
    assert "refused" in seen["host_loopback_service"] and "refused" in seen["other_jobs_port"]
    # ...and yet it read its dataset from the store, through the relay.
    np.testing.assert_allclose(docker_server.result(job["id"], "mean"), data.mean(), rtol=1e-6)
    assert docker_server.result(job["id"], "interfaces") == ["lo"]
    assert docker_server.result(job["id"], "uid") != 0
    assert docker_server.result(job["id"], "root_fs") == "Read-only file system"
    assert int(docker_server.result(job["id"], "capabilities"), 16) == 0

    # Every container of a running job: non-root, read-only, no capabilities, own network,
    # limits set, the job's own key and never the platform's.
    platform_secret = docker_settings.storage.secret_access_key
    assert platform_secret is not None
    containers = dockerlab.job_containers(engine, other["id"])
    assert {c.labels["insitu.io/component"] for c in containers} == {
        "gateway",
        "scheduler",
        "worker",
        "runner",
    }
    for container in containers:
        host = container.attrs["HostConfig"]
        config = container.attrs["Config"]
        assert config["User"] not in ("", "0", "root") and not config["User"].startswith("0:")
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"] and not host["Privileged"]
        assert host["NetworkMode"] in ("none", f"container:{containers[0].name}") or host[
            "NetworkMode"
        ].startswith("container:")
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0
        assert platform_secret.get_secret_value() not in json.dumps(config["Env"])
        assert container.labels[LABEL_SERVER]
    docker_server.cancel(other["id"])
    assert _wait_state(docker_server, other["id"], "cancelled")["state"] == "cancelled"
    assert wait_for(lambda: _gone(engine, other["id"]), 20)


# -- stopping: cancel, timeout, a lost worker ----------------------------------------------------


def test_cancel_while_running_removes_every_container(
    docker_server: Client, engine: Any, s3_movie: tuple[str, np.ndarray], probes: Path
) -> None:
    docker_server.register_dataset("d/cancel", s3_movie[0])
    job = docker_server.submit(_spec("d/cancel", "probes:sleep"), code=probes)
    _wait_state(docker_server, job["id"], "running")
    assert len(dockerlab.job_containers(engine, job["id"])) == 4
    started = time.monotonic()
    docker_server.cancel(job["id"])
    done = _wait_state(docker_server, job["id"], "cancelled", timeout=30)
    assert done["state"] == "cancelled"
    assert wait_for(lambda: _gone(engine, job["id"]), 20)
    assert time.monotonic() - started < 20


def test_timeout_stops_the_job(
    docker_server: Client, engine: Any, s3_movie: tuple[str, np.ndarray], probes: Path
) -> None:
    docker_server.register_dataset("d/timeout", s3_movie[0])
    job = docker_server.submit(
        _spec("d/timeout", "probes:sleep", limits={"timeout": "4s"}), code=probes
    )
    done = docker_server.wait(job["id"], timeout=90)
    assert done["state"] == "timed_out" and "time limit of 4.0 s" in done["error"]
    assert wait_for(lambda: _gone(engine, job["id"]), 20)


def _kill_worker(engine: Any, job_id: str, index: int) -> None:
    worker = engine.containers.get(f"insitu-{job_id}-worker-{index}")
    worker.kill()


def test_a_killed_worker_is_replaced_by_the_others(
    docker_server: Client, engine: Any, s3_movie: tuple[str, np.ndarray], probes: Path
) -> None:
    url, data = s3_movie
    docker_server.register_dataset("d/kill", url)
    job = docker_server.submit(
        _spec(
            "d/kill",
            "probes:slow_chunks",
            params={"seconds": 0.5},
            resources={"workers": 2, "memory_per_worker": "1GiB"},
        ),
        code=probes,
    )
    wait_for(lambda: docker_server.job(job["id"])["progress"]["chunks_done"] >= 2, 90, 0.1)
    _kill_worker(engine, job["id"], 1)
    done = docker_server.wait(job["id"], timeout=120)
    assert done["state"] == "succeeded", done["error"]
    np.testing.assert_allclose(
        docker_server.result(job["id"], "mean"), data.astype(np.float64).mean(axis=0), rtol=1e-6
    )
    # Metered on the server's side: the containers' CPU time, and the gateway's byte count.
    assert done["core_seconds_source"].startswith("CPU time of the job's containers")
    assert 0 < done["core_seconds"] < 600
    assert done["bytes_scanned_source"] == "counted by insitu's store gateway"
    assert done["bytes_scanned"] > 0


def test_a_job_whose_only_worker_dies_fails_with_the_reason(
    docker_server: Client, engine: Any, s3_movie: tuple[str, np.ndarray], probes: Path
) -> None:
    docker_server.register_dataset("d/lost", s3_movie[0])
    job = docker_server.submit(
        _spec("d/lost", "probes:slow_chunks", params={"seconds": 2.0}), code=probes
    )
    _wait_state(docker_server, job["id"], "running")
    wait_for(lambda: docker_server.job(job["id"])["progress"]["chunks_total"] > 0, 60, 0.1)
    _kill_worker(engine, job["id"], 0)
    done = docker_server.wait(job["id"], timeout=60)
    assert done["state"] == "failed"
    assert "all of the job's Dask workers stopped: worker-0 was killed" in done["error"]
    assert wait_for(lambda: _gone(engine, job["id"]), 20)


# -- restarts and leftovers --------------------------------------------------------------------


def test_a_restarted_server_adopts_its_running_job_and_removes_leftovers(
    docker_settings: Settings,
    engine: Any,
    ophys_image: images.BuiltImage,
    s3_movie: tuple[str, np.ndarray],
    probes: Path,
) -> None:
    token = lambda: docker_settings.admin_token_path.read_text().strip()  # noqa: E731
    server = BackgroundServer(docker_settings).start()
    with Client(server.url, token()) as api:
        api.register_dataset("d/restart", s3_movie[0])
        # Long enough to outlive the server's shutdown (a few seconds on a loaded machine).
        job = api.submit(_spec("d/restart", "probes:sleep", params={"seconds": 15}), code=probes)
        _wait_state(api, job["id"], "running")
    server.stop()  # the job's containers run on without their server
    assert len(dockerlab.job_containers(engine, job["id"])) == 4
    # A leftover of this server whose job is no longer live, e.g. from a crash.
    server_id = DockerBackend(docker_settings).server_id
    stray = engine.containers.run(
        dockerlab.OPHYS_IMAGE,
        entrypoint=["python", "-c", "import time; time.sleep(600)"],
        command=[],
        detach=True,
        network_mode="none",
        user="10001:10001",
        labels={"insitu.io/job-id": "j-gone", LABEL_SERVER: server_id},
    )
    server = BackgroundServer(docker_settings).start()
    try:
        with Client(server.url, token()) as api:
            done = api.wait(job["id"], timeout=90)
            assert done["state"] == "succeeded", done["error"]
            assert api.result(job["id"], "done") is True
        assert wait_for(lambda: _gone(engine, "j-gone"), 20)
        assert wait_for(lambda: _gone(engine, job["id"]), 20)
    finally:
        server.stop()
        if not _gone(engine, "j-gone"):
            stray.remove(force=True)


# -- images: build, and refused ones -------------------------------------------------------------


def test_image_build_cli_makes_an_image_jobs_run_in(
    tmp_path: Path,
    engine: Any,
    ophys_image: images.BuiltImage,
    docker_server: Client,
    s3_movie: tuple[str, np.ndarray],
) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "Dockerfile").write_text(TINY_DOCKERFILE)
    (folder / "tiny_analysis.py").write_text(TINY_ANALYSIS)
    args = ["image", "build", str(folder), "--tag", "insitu-tiny:test", "--json"]
    args += ["--build-arg", f"BASE_IMAGE={dockerlab.OPHYS_IMAGE}"]
    if dockerlab.ca_bundle():
        args += ["--ca-bundle", str(dockerlab.ca_bundle())]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["tag"] == "insitu-tiny:test" and built["id"].startswith("sha256:")
    assert engine.images.get("insitu-tiny:test").labels[images.LABEL_RUNTIME]

    docker_server.register_dataset("d/tiny", s3_movie[0])
    spec = _spec("d/tiny", "tiny_analysis:double_mean")
    spec["analysis"]["image"] = "insitu-tiny:test"
    job = docker_server.submit(spec)
    done = docker_server.wait(job["id"], timeout=120)
    assert done["state"] == "succeeded", done["error"]
    assert docker_server.provenance(job["id"])["image_id"] == built["id"]
    np.testing.assert_allclose(
        docker_server.result(job["id"], "mean2"),
        s3_movie[1].astype(np.float64).mean(axis=0) * 2,
        rtol=1e-6,
    )


def test_image_build_without_the_runtime_lines_is_refused(tmp_path: Path, engine: Any) -> None:
    (tmp_path / "Dockerfile").write_text("FROM insitu-base:bookworm\n")
    result = CliRunner().invoke(app, ["image", "build", str(tmp_path)])
    assert_one_error_line(result, "does not install the insitu runtime")
    assert "COPY .insitu /opt/insitu" in result.stderr


def test_images_that_cannot_run_jobs_are_refused_at_submit_saying_why(
    docker_server: Client, engine: Any, s3_movie: tuple[str, np.ndarray]
) -> None:
    docker_server.register_dataset("d/images", s3_movie[0])
    old = dockerlab.debian_base(dockerlab.OLD_PYTHON_IMAGE, suite="bullseye")
    cases = {
        "insitu-no-such-image:1": "is not on this server's Docker engine",
        dockerlab.no_python_image(engine): "has no 'python' command",
        dockerlab.BASE_IMAGE: "not the insitu runtime",
        old: "has Python 3.9",
    }
    before = len(docker_server.jobs())
    for image, message in cases.items():
        spec = _spec("d/images", "ophys_analyses.projection:mean_projection")
        spec["analysis"]["image"] = image
        with pytest.raises(InvalidInput, match=re.escape(message)):
            docker_server.submit(spec)
    spec = _spec("d/images", "ophys_analyses.projection:mean_projection")
    del spec["analysis"]["image"]
    with pytest.raises(InvalidInput, match=re.escape("set analysis.image")):
        docker_server.submit(spec)
    assert len(docker_server.jobs()) == before


# -- the server image the Helm chart runs ---------------------------------------------------------


def test_the_server_image_builds_and_runs_as_non_root(engine: Any, tmp_path: Path) -> None:
    import io
    import tarfile

    root = dockerlab.ROOT
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("Dockerfile", "pyproject.toml", "README.md", "docker-build/README"):
            tar.add(root / name, arcname=name)
        pins = images.constraints().encode()
        member = tarfile.TarInfo("docker-build/constraints.txt")
        member.size = len(pins)
        tar.addfile(member, io.BytesIO(pins))
        for path in sorted((root / "platform" / "insitu").rglob("*")):
            if "__pycache__" not in path.parts and path.is_file():
                tar.add(path, arcname=path.relative_to(root).as_posix())
        if dockerlab.ca_bundle():
            tar.add(str(dockerlab.ca_bundle()), arcname="docker-build/ca.crt")
    base = dockerlab.debian_base()
    chunks = engine.api.build(
        fileobj=io.BytesIO(buffer.getvalue()),
        custom_context=True,
        tag="insitu-server:test",
        buildargs={"BASE_IMAGE": base},
        network_mode="host",
        rm=True,
        forcerm=True,
        decode=True,
    )
    log = [c.get("stream", "") + c.get("error", "") for c in chunks]
    assert engine.images.list(name="insitu-server:test"), "".join(log)[-3000:]
    image = engine.images.get("insitu-server:test")
    assert image.attrs["Config"]["User"] == "10001"
    assert image.attrs["Config"]["Entrypoint"] == ["insitu"]
    output = engine.containers.run(
        "insitu-server:test",
        command=["version", "--json"],
        remove=True,
        network_mode="none",
        read_only=True,
        environment={"INSITU_URL": "http://127.0.0.1:9"},
    )
    info = json.loads(output)
    assert info["client"] and info["server"] is None
    modules = engine.containers.run(
        "insitu-server:test",
        entrypoint=["python", "-c", "import kubernetes, psycopg, obstore; print('ok')"],
        command=[],
        remove=True,
        network_mode="none",
    )
    assert modules.strip() == b"ok"
