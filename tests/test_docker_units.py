"""The docker backend's parts that need no engine: container specs, the relay, image contexts."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from helpers import assert_one_error_line
from insitu import images
from insitu.backends.base import LaunchRequest
from insitu.backends.docker_backend import DockerBackend
from insitu.backends.docker_specs import LABEL_SERVER, StoreRoute, plan, store_route
from insitu.cli.main import app
from insitu.config import DockerBackendSettings, Settings
from insitu.errors import BackendError, InvalidInput
from insitu.relay import Address, serve
from insitu.runtime import metering
from insitu.spec import Resources


def _request(**overrides: object) -> LaunchRequest:
    values: dict[str, object] = {
        "job_id": "j-abc",
        "workspace_url": "s3://insitu-results/jobs/j-abc",
        "dataset_url": "s3://insitu-data/movie.zarr",
        "resources": Resources(workers=3, threads_per_worker=4, memory_per_worker=3 << 30),
        "timeout_s": 60.0,
        "env": {"AWS_ACCESS_KEY_ID": "job-key"},
    }
    values.update(overrides)
    return LaunchRequest(**values)  # type: ignore[arg-type]


def _plan(request: LaunchRequest, store: StoreRoute | None) -> list[dict[str, object]]:
    return plan(
        request,
        image="sha256:feed",
        settings=DockerBackendSettings(),
        user="10001:10001",
        server_id="srv",
        host_cpus=2,
        store=store,
        socket_dir=Path("/tmp/insitu-srv/j-abc") if store else None,
        runner_env={"INSITU_IMAGE_ID": "sha256:feed"},
    ).specs


def test_every_container_is_locked_down_and_labelled() -> None:
    store = store_route(["s3://insitu-data/x"], "http://127.0.0.1:8333", "us-east-1", [])
    specs = _plan(_request(), store)
    roles = [s["labels"]["insitu.io/component"] for s in specs]  # type: ignore[index]
    assert roles == ["gateway", "scheduler", "worker", "worker", "worker", "runner"]
    for spec in specs:
        assert spec["user"] == "10001:10001" and spec["read_only"] is True
        assert spec["cap_drop"] == ["ALL"] and spec["security_opt"] == ["no-new-privileges"]
        assert spec["labels"][LABEL_SERVER] == "srv"  # type: ignore[index]
        assert spec["labels"]["insitu.io/job-id"] == "j-abc"  # type: ignore[index]
        assert spec["mem_limit"] == spec["memswap_limit"] and spec["pids_limit"] == 1024
        assert "size=" in spec["tmpfs"]["/tmp"]  # type: ignore[index]
        assert "privileged" not in spec and "cap_add" not in spec
    gateway, scheduler, *workers, runner = specs
    assert gateway["network_mode"] == "none"
    assert all(s["network_mode"] == "container:insitu-j-abc-gateway" for s in specs[1:])
    assert gateway["volumes"] == {"/tmp/insitu-srv/j-abc": {"bind": "/run/insitu", "mode": "ro"}}
    assert "tcp:127.0.0.1:8333" in gateway["entrypoint"]  # type: ignore[operator]
    assert "AWS_ACCESS_KEY_ID" not in gateway["environment"]  # type: ignore[operator]
    assert "AWS_ACCESS_KEY_ID" not in scheduler["environment"]  # type: ignore[operator]
    for worker in workers:
        assert worker["mem_limit"] == 3 << 30
        assert worker["nano_cpus"] == 2_000_000_000  # 4 threads asked, 2 CPUs on the host
        assert worker["environment"]["AWS_ACCESS_KEY_ID"] == "job-key"  # type: ignore[index]
    assert runner["environment"]["INSITU_IMAGE_ID"] == "sha256:feed"  # type: ignore[index]
    assert "--wait-workers" in runner["entrypoint"]  # type: ignore[operator]


def test_local_files_are_mounted_and_need_no_store() -> None:
    request = _request(
        workspace_url="file:///srv/insitu/jobs/j-abc",
        dataset_url="/data/movie.zarr",
        resources=Resources(workers=1, gpu=1),
    )
    assert store_route([request.workspace_url, "/data/movie.zarr"], None, "x", []) is None
    gateway, _, worker, runner = _plan(request, None)
    assert "volumes" not in gateway and "insitu.relay" not in gateway["entrypoint"]  # type: ignore[operator]
    # Workers read the dataset and write the job's outputs (insitu.Output), nothing else.
    assert worker["volumes"] == {
        "/data/movie.zarr": {"bind": "/data/movie.zarr", "mode": "ro"},
        "/srv/insitu/jobs/j-abc/outputs": {"bind": "/srv/insitu/jobs/j-abc/outputs", "mode": "rw"},
    }
    assert worker["device_requests"] == [{"Count": 1, "Capabilities": [["gpu"]]}]
    assert runner["volumes"] == {
        "/data/movie.zarr": {"bind": "/data/movie.zarr", "mode": "ro"},
        "/srv/insitu/jobs/j-abc": {"bind": "/srv/insitu/jobs/j-abc", "mode": "rw"},
    }


def test_a_named_store_resolves_to_the_jobs_own_loopback() -> None:
    route = store_route(["s3://lab-data/x"], None, "eu-west-1", ["lab-data", "lab-results"])
    assert route == StoreRoute(
        "s3.eu-west-1.amazonaws.com",
        443,
        (
            "s3.eu-west-1.amazonaws.com",
            "lab-data.s3.eu-west-1.amazonaws.com",
            "lab-results.s3.eu-west-1.amazonaws.com",
        ),
    )
    gateway = _plan(_request(), route)[0]
    assert gateway["extra_hosts"]["lab-data.s3.eu-west-1.amazonaws.com"] == "127.0.0.1"  # type: ignore[index]
    assert gateway["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "0"}


def test_containers_never_run_as_root(settings: Settings) -> None:
    backend = DockerBackend(settings)
    assert backend.user != "0:0" and not backend.user.startswith("0:")
    if os.getuid() == 0:
        assert backend.user == "10001:10001"
    root = DockerBackend(settings.model_copy(update={"docker": DockerBackendSettings(user="0:0")}))
    with pytest.raises(BackendError, match="must not be root"):
        _ = root.user


def test_the_docker_backend_needs_an_image(settings: Settings) -> None:
    backend = DockerBackend(settings)
    with pytest.raises(InvalidInput, match=re.escape("set analysis.image")):
        backend.check_image(None)


def test_an_unreachable_engine_is_one_clear_line(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        BackendError, match=re.escape("cannot reach unix:///nonexistent/docker.sock")
    ):
        images.docker_client("unix:///nonexistent/docker.sock")
    monkeypatch.setenv("INSITU_DOCKER__BASE_URL", "unix:///nonexistent/docker.sock")
    result = CliRunner().invoke(app, ["server", "--backend", "docker", "--port", "0"])
    assert_one_error_line(result, "cannot reach unix:///nonexistent/docker.sock", "dockerd")


# -- the relay ----------------------------------------------------------------------------------


def test_the_relay_carries_bytes_both_ways_through_a_unix_socket(tmp_path: Path) -> None:
    """tcp client -> relay -> unix socket -> relay -> tcp echo server, and back."""
    echo = socket.create_server(("127.0.0.1", 0))
    echo_port = echo.getsockname()[1]

    def serve_echo() -> None:
        connection, _ = echo.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)

    threading.Thread(target=serve_echo, daemon=True).start()
    inner = socket.socket()
    inner.bind(("127.0.0.1", 0))
    inner_port = inner.getsockname()[1]
    inner.close()
    sock = tmp_path / "store.sock"

    async def relay(listen: str, connect: str) -> asyncio.Task[None]:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(Address.parse(listen), Address.parse(connect), ready))
        await ready.wait()
        return task

    async def scenario() -> bytes:
        outer_task = await relay(f"unix:{sock}", f"tcp:127.0.0.1:{echo_port}")
        inner_task = await relay(f"tcp:127.0.0.1:{inner_port}", f"unix:{sock}")
        reader, writer = await asyncio.open_connection("127.0.0.1", inner_port)
        payload = os.urandom(3 << 20)
        writer.write(payload)
        await writer.drain()
        received = await reader.readexactly(len(payload))
        writer.close()
        outer_task.cancel()
        inner_task.cancel()
        assert received == payload
        return received

    assert len(asyncio.run(scenario())) == 3 << 20
    assert oct(sock.stat().st_mode & 0o777) == "0o666"
    echo.close()


def test_relay_addresses_are_checked() -> None:
    assert Address.parse("tcp:[::1]:80") == Address("tcp", host="::1", port=80)
    assert str(Address.parse("unix:/run/x.sock")) == "unix:/run/x.sock"
    for bad in ("tcp:host", "udp:1.2.3.4:5", "unix:"):
        with pytest.raises(ValueError, match="tcp:HOST:PORT or unix:PATH"):
            Address.parse(bad)


# -- metering across containers, image contexts --------------------------------------------------


def test_workers_with_the_same_pid_in_different_containers_all_count() -> None:
    worker_a = {"bytes": 10, "chunks": 1, "pid": 1, "process": "a"}
    worker_b = {"bytes": 20, "chunks": 2, "pid": 1, "process": "b"}
    assert metering.total([worker_a, worker_b]) == {"bytes": 30, "chunks": 3}
    assert metering.total([worker_a, dict(worker_a)]) == {"bytes": 10, "chunks": 1}
    mine = metering.snapshot()
    assert mine["pid"] == os.getpid() and mine["process"]


def test_the_build_context_carries_the_runtime_and_pins(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM python:3.11-slim\n{images.RUNTIME_LINES}\n")
    (tmp_path / "my_code.py").write_text("x = 1\n")
    (tmp_path / ".insitu").mkdir()
    (tmp_path / ".insitu" / "stale").write_text("old")
    ca = tmp_path / "ca.crt"
    ca.write_text("---")
    context = images.build_context(tmp_path, ca)
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        names = set(tar.getnames())
        pins = tar.extractfile(".insitu/constraints.txt").read().decode()  # type: ignore[union-attr]
    assert {"Dockerfile", "my_code.py", ".insitu/ca.crt", ".insitu/constraints.txt"} <= names
    assert ".insitu/runtime/pyproject.toml" in names
    assert ".insitu/runtime/platform/insitu/runtime/runner.py" in names
    assert ".insitu/stale" not in names and not any("__pycache__" in n for n in names)
    assert "numpy==" in pins and "insitu==" not in pins


def test_a_folder_that_cannot_become_an_analysis_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="has no Dockerfile"):
        images.build_context(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\n")
    with pytest.raises(InvalidInput, match="does not install the insitu runtime") as error:
        images.build_context(tmp_path)
    assert images.RUNTIME_LINES in error.value.message
    result = CliRunner().invoke(app, ["image", "build", str(tmp_path), "--build-arg", "oops"])
    assert_one_error_line(result, "--build-arg 'oops'", "KEY=VALUE")


class _Stats:
    """An engine whose containers' CPU counters the test sets."""

    def __init__(self) -> None:
        self.usage: dict[str, int] = {}
        self.api = self

    def stats(self, container: str, stream: bool, one_shot: bool) -> dict[str, Any]:
        assert not stream and one_shot
        return {"cpu_stats": {"cpu_usage": {"total_usage": self.usage[container]}}}


def test_container_cpu_keeps_the_largest_figure_of_each_running_container() -> None:
    from insitu.backends.docker_metering import ContainerCpu

    engine = _Stats()
    meter = ContainerCpu(engine)
    running = [{"Id": "a", "State": "running"}, {"Id": "b", "State": "running"}]
    engine.usage = {"a": 2_000_000_000, "b": 500_000_000}
    meter.sample("j", running)
    engine.usage = {"a": 9_000_000_000, "b": 100}  # b restarted its counter: keep the larger
    meter.sample("j", running)  # too soon: not sampled again
    assert meter.seconds("j") == 2.5 and meter.seconds("j") == 0.0  # read once, then forgotten
    meter.sample("j", running, force=True)
    meter.sample("j", [{"Id": "a", "State": "exited"}], force=True)  # exited: nothing to read
    assert meter.seconds("j") == 9.0 + 1e-7


def test_container_cpu_reads_cgroup_files_and_leaves_out_a_sandbox_s_wait(
    tmp_path: Path,
) -> None:
    from insitu.backends.docker_metering import ContainerCpu, cgroup_usage

    v1 = tmp_path / "cpuacct" / "docker" / "a"
    v1.mkdir(parents=True)
    (v1 / "cpuacct.usage").write_text("3000000000\n")
    v2 = tmp_path / "system.slice" / "docker-b.scope"
    v2.mkdir(parents=True)
    (v2 / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    assert cgroup_usage("a", tmp_path) == 3_000_000_000
    assert cgroup_usage("b", tmp_path) == 1_500_000_000
    assert cgroup_usage("c", tmp_path) is None

    engine = _Stats()  # "c" is not on this machine: the engine's stats API answers
    engine.usage = {"c": 1_000_000_000}
    meter = ContainerCpu(engine, root=tmp_path)
    running = [{"Id": i, "State": "running"} for i in "abc"]
    meter.baseline("j", running)  # what the warm sandbox used before the job came
    (v1 / "cpuacct.usage").write_text("5000000000\n")
    (v2 / "cpu.stat").write_text("usage_usec 2000000\n")
    engine.usage = {"c": 1_250_000_000}
    meter.sample("j", running, force=True)
    assert meter.seconds("j") == pytest.approx(2.0 + 0.5 + 0.25)
