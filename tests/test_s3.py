"""Jobs end to end against a real S3 server (SeaweedFS): data, workspaces, keys, egress."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

from helpers import require_seaweedfs, wait_for
from insitu import objectstore
from insitu.catalog import inspect_store
from insitu.client import Client
from insitu.config import Settings
from insitu.errors import StoreUnreachable
from insitu.seaweedfs import DATA_BUCKET, RESULTS_BUCKET, weed_binary
from insitu.server import BackgroundServer

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]


def admin_s3(settings: Settings) -> Any:
    return objectstore.boto_client(settings)


@pytest.fixture
def s3_client(s3_settings: Settings) -> Iterator[Client]:
    server = BackgroundServer(s3_settings).start()
    try:
        with Client(server.url, s3_settings.admin_token_path.read_text().strip()) as api:
            yield api
    finally:
        server.stop()


def test_a_job_reads_s3_and_writes_its_results_to_s3(
    s3_client: Client,
    s3_settings: Settings,
    s3_movie: tuple[str, np.ndarray],
    analysis_code: Path,
    tmp_path: Path,
) -> None:
    url, data = s3_movie
    dataset = s3_client.register_dataset("s3/movie", url)
    assert dataset["url"] == url and dataset["arrays"][0]["axes"] == ["t", "y", "x"]
    job = s3_client.submit(
        {
            "dataset": "s3/movie",
            "select": {"t": [5, 83]},
            "analysis": {"entrypoint": "my_analysis:time_mean"},
        },
        code=analysis_code,
    )
    done = s3_client.wait(job["id"], timeout=90)
    assert done["state"] == "succeeded", done["error"]
    np.testing.assert_allclose(
        s3_client.result(job["id"], "mean"), data[5:83].astype(np.float64).mean(axis=0)
    )
    assert done["bytes_scanned"] > 0

    listed = admin_s3(s3_settings).list_objects_v2(
        Bucket=RESULTS_BUCKET, Prefix=f"jobs/{job['id']}/results/"
    )
    names = {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}
    assert names == {"mean.npy", "selection.json"}  # provenance lives in the server's database

    streamed = s3_client.download(job["id"], "mean.npy", tmp_path / "streamed")
    redirect = s3_client._http.get(
        f"/v1/jobs/{job['id']}/results/mean.npy", params={"redirect": True}
    )
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(s3_settings.storage.endpoint_url or "") and "Expires=" in location
    assert httpx.get(location).content == streamed.read_bytes()


def test_the_job_never_sees_the_platform_key(
    s3_client: Client, s3_settings: Settings, s3_movie: tuple[str, np.ndarray], analysis_code: Path
) -> None:
    s3_client.register_dataset("s3/probe", s3_movie[0])
    job = s3_client.submit(
        {"dataset": "s3/probe", "analysis": {"entrypoint": "my_analysis:env_probe"}},
        code=analysis_code,
    )
    done = s3_client.wait(job["id"], timeout=90)
    assert done["state"] == "succeeded", done["error"]
    seen = s3_client.result(job["id"], "access_key")
    platform_key = s3_settings.storage.access_key_id
    job_key = s3_settings.storage.job_access_key_id
    assert platform_key is not None and job_key is not None
    assert seen == job_key.get_secret_value() != platform_key.get_secret_value()
    assert s3_client.result(job["id"], "private") == []


def test_the_job_key_reads_data_and_writes_results_only(
    s3_settings: Settings, s3_movie: tuple[str, np.ndarray]
) -> None:
    storage = s3_settings.storage
    assert storage.job_access_key_id and storage.job_secret_access_key
    job = boto3.client(
        "s3",
        endpoint_url=storage.endpoint_url,
        region_name=storage.region,
        aws_access_key_id=storage.job_access_key_id.get_secret_value(),
        aws_secret_access_key=storage.job_secret_access_key.get_secret_value(),
    )
    bucket, key = objectstore.bucket_and_key(s3_movie[0])
    assert job.get_object(Bucket=bucket, Key=f"{key}/zarr.json")["Body"].read()
    job.put_object(Bucket=RESULTS_BUCKET, Key="jobs/probe/ok", Body=b"1")
    with pytest.raises(Exception, match="AccessDenied"):
        job.put_object(Bucket=DATA_BUCKET, Key=f"{key}/tampered", Body=b"x")
    admin_s3(s3_settings).create_bucket(Bucket="someone-elses")
    with pytest.raises(Exception, match="AccessDenied"):
        job.list_objects_v2(Bucket="someone-elses")


def test_raw_data_cannot_leave_through_the_scan_fraction(
    s3_client: Client, s3_movie: tuple[str, np.ndarray], analysis_code: Path
) -> None:
    """Even under a generous absolute cap, a result larger than half the scan is refused."""
    s3_client.register_dataset("s3/raw", s3_movie[0])
    job = s3_client.submit(
        {
            "dataset": "s3/raw",
            "analysis": {"entrypoint": "my_analysis:raw_eager"},
            "limits": {"max_result_bytes": "64MiB"},
        },
        code=analysis_code,
    )
    done = s3_client.wait(job["id"], timeout=90)
    assert done["state"] == "failed" and done["error_kind"] == "result_too_large"
    assert "50% of the" in done["error"] and "it scanned" in done["error"]
    assert s3_client.results(job["id"]) == []


def test_unreachable_or_forbidden_stores_are_clear_errors(
    s3_client: Client, s3_settings: Settings
) -> None:
    before = len(s3_client.datasets())
    for url in (f"s3://{DATA_BUCKET}/nothing-here.zarr", "s3://no-such-bucket/x.zarr"):
        with pytest.raises(Exception, match="s3://") as error:
            s3_client.register_dataset("s3/missing", url)
        assert "Traceback" not in str(error.value)
    assert len(s3_client.datasets()) == before
    wrong = objectstore.job_options(s3_settings, "s3://x") | {"key": "nobody", "secret": "wrong"}
    with pytest.raises(StoreUnreachable, match="s3://"):
        inspect_store(f"s3://{DATA_BUCKET}/anything.zarr", wrong)


def test_seaweedfs_binary_is_on_the_path() -> None:
    assert shutil.which("weed") or Path(weed_binary()).exists()


def test_the_runtime_opens_only_its_own_dataset_on_an_unscoped_store(
    s3_client: Client, s3_settings: Settings, s3_movie: tuple[str, np.ndarray], tmp_path: Path
) -> None:
    """The job key reads the whole data bucket; the runtime still refuses other datasets."""
    other_url, _ = s3_movie  # another dataset's prefix, readable with the job key
    own = f"s3://{DATA_BUCKET}/{uuid.uuid4().hex[:8]}/group.zarr"
    store = FsspecStore.from_url(
        own, storage_options=objectstore.platform_options(s3_settings, own), read_only=False
    )
    group = zarr.open_group(store, mode="w")
    level = group.create_array(
        "0", shape=(8, 4, 4), chunks=(4, 4, 4), dtype="uint16", dimension_names=["t", "y", "x"]
    )
    level[:] = 1
    code = tmp_path / "escape"
    code.mkdir()
    (code / "escape.py").write_text(
        "def run(data, *, context, target):\n"
        "    return {'stolen': context.open_array(target).sum()}\n"
    )
    s3_client.register_dataset("s3/own", own)
    relative_escape = "../../" + other_url.split(f"{DATA_BUCKET}/", 1)[1]
    for target in (other_url, relative_escape):
        job = s3_client.submit(
            {
                "dataset": "s3/own",
                "analysis": {"entrypoint": "escape:run", "params": {"target": target}},
            },
            code=code,
        )
        done = s3_client.wait(job["id"], timeout=90)
        assert done["state"] == "failed", done
        assert "only arrays inside dataset 's3/own'" in done["error"]

    fine = tmp_path / "fine"
    fine.mkdir()
    (fine / "fine.py").write_text("def run(data, *, context):\n    return {'n': data.sum()}\n")
    job = s3_client.submit({"dataset": "s3/own", "analysis": {"entrypoint": "fine:run"}}, code=fine)
    done = s3_client.wait(job["id"], timeout=90)
    assert done["state"] == "succeeded", done["error"]
    provenance = json.loads(
        (s3_client.download(job["id"], "provenance.json", tmp_path)).read_text()
    )
    assert provenance["store_access"].startswith("not enforced by the store")


def test_insitu_server_with_an_embedded_seaweedfs(
    tmp_path: Path, movie: tuple[Path, np.ndarray], analysis_code: Path
) -> None:
    """``insitu server --store seaweedfs``: datasets and results in a SeaweedFS it starts."""
    require_seaweedfs()
    home = tmp_path / "home"
    process, port, lines = _embedded_server(home)
    try:
        endpoint = next(m.group(1) for m in map(ENDPOINT_RE.search, lines) if m)
        keys = json.loads((home / "seaweedfs" / "keys.json").read_text())
        url = f"s3://{DATA_BUCKET}/lab/movie.zarr"
        options = {
            "key": keys["platform"][0],
            "secret": keys["platform"][1],
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        target = zarr.create_array(
            FsspecStore.from_url(url, storage_options=options, read_only=False),
            shape=movie[1].shape,
            chunks=(32, 16, 16),
            dtype="uint16",
            dimension_names=["t", "y", "x"],
        )
        target[:] = movie[1]
        token = (
            wait_for(lambda: (home / "admin-token").exists(), timeout=30)
            and (home / "admin-token").read_text().strip()
        )
        with Client(f"http://127.0.0.1:{port}", token) as api:
            wait_for(lambda: _healthy(api), timeout=30)
            api.register_dataset("lab/movie", url)
            job = api.submit(
                {"dataset": "lab/movie", "analysis": {"entrypoint": "my_analysis:time_mean"}},
                code=analysis_code,
            )
            done = api.wait(job["id"], timeout=90)
            assert done["state"] == "succeeded", done["error"]
            np.testing.assert_allclose(
                api.result(job["id"], "mean"), movie[1].astype(np.float64).mean(axis=0)
            )
        results = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys["platform"][0],
            aws_secret_access_key=keys["platform"][1],
        ).list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=f"jobs/{job['id']}/results/")
        assert any(o["Key"].endswith("mean.npy") for o in results.get("Contents", []))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 0, "".join(lines)
    assert not _port_open(int(endpoint.rsplit(":", 1)[1])), "SeaweedFS outlived the server"


INSITU = str(Path(sys.executable).parent / "insitu")
ENDPOINT_RE = re.compile(r"SeaweedFS at (http://127\.0\.0\.1:\d+)")


def _embedded_server(home: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    """``insitu server --store seaweedfs`` up and answering: its process, port and log.

    The API's port is chosen free before SeaweedFS picks its own, which may take it in
    between: a start that failed to bind it is tried again on another port.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSITU_", "AWS_"))}
    env |= {"INSITU_HOME": str(home)}
    for _ in range(3):
        started = _start_server(env)
        if started is not None:
            return started
    raise AssertionError("insitu server found no free port in 3 tries")


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], int, list[str]] | None:
    """One start: the server answering, or None if its port was taken meanwhile."""
    port = _free_port()
    process = subprocess.Popen(
        [INSITU, "server", "--port", str(port), "--store", "seaweedfs"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: process.poll() is not None or _healthy_at(port), timeout=120)
    except AssertionError:
        process.kill()
        raise
    if process.poll() is None:
        return process, port, lines
    reader.join(timeout=5)
    if "address already in use" not in "".join(lines).lower():
        raise AssertionError("insitu server exited:\n" + "".join(lines))
    return None


def _healthy_at(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _healthy(api: Client) -> bool:
    try:
        return api.health()["status"] == "ok"
    except Exception:
        return False
