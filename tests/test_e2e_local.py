"""Real jobs on the local backend, submitted through the API, checked against NumPy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from helpers import wait_for
from insitu.client import Client
from insitu.config import Settings
from insitu.server import BackgroundServer

pytestmark = pytest.mark.timeout(120)
DATASET = "test/movie"


def spec(entrypoint: str, **fields: Any) -> dict[str, Any]:
    """A job spec on the test movie."""
    return {"dataset": DATASET, "analysis": {"entrypoint": f"my_analysis:{entrypoint}"}, **fields}


@pytest.fixture
def registered(client: Client, movie: tuple[Path, np.ndarray]) -> np.ndarray:
    client.register_dataset(DATASET, str(movie[0]))
    return movie[1]


def test_user_code_on_uneven_chunks_matches_numpy(
    client: Client, registered: np.ndarray, analysis_code: Path
) -> None:
    """The user's own module, uploaded with the job, on a selection off the chunk grid."""
    job = client.submit(
        spec(
            "time_mean",
            select={"t": [5, 83], "y": [3, 35]},
            analysis={"entrypoint": "my_analysis:time_mean", "params": {"scale": 2.0}},
        ),
        code=analysis_code,
    )
    assert job["state"] == "queued"
    done = client.wait(job["id"], timeout=90)
    assert done["state"] == "succeeded", done["error"]

    expected = registered[5:83, 3:35, :].astype(np.float64).mean(axis=0) * 2.0
    np.testing.assert_allclose(client.result(job["id"], "mean"), expected, rtol=1e-9)
    assert client.result(job["id"], "selection") == {"t": [5, 83], "y": [3, 35], "x": [0, 29]}

    results = client.results(job["id"])
    # Every byte the owner can download counts: the results and the provenance.
    assert done["bytes_returned"] == sum(r["size"] for r in results) + done["egress"]["provenance"]
    assert done["bytes_selected"] == 78 * 32 * 29 * 2
    assert done["bytes_scanned"] > 0
    # 78 frames over chunks of 32 from t=5: 3 blocks; y 3..35 over 16: 3; x 29 over 16: 2.
    assert done["progress"] == {"chunks_done": 18, "chunks_total": 18}
    assert done["core_seconds"] > 0
    states = [e["to_state"] for e in client.events(job["id"])]
    assert states == ["queued", "admitted", "provisioning", "running", "succeeded"]
    assert all(e["reason"] for e in client.events(job["id"]))


def test_provenance_records_spec_code_and_dataset(
    client: Client, registered: np.ndarray, analysis_code: Path, tmp_path: Path
) -> None:
    import json

    job = client.submit(spec("time_mean"), code=analysis_code)
    done = client.wait(job["id"], timeout=90)
    assert done["state"] == "succeeded", done["error"]
    provenance = json.loads(client.download(job["id"], "provenance.json", tmp_path).read_text())
    dataset = client.dataset(DATASET)
    assert provenance["spec_sha256"] == done["spec_digest"]
    assert provenance["code_bundle_sha256"] == done["code_bundle"]
    assert provenance["dataset"]["version"] == dataset["version"]
    assert provenance["dataset"]["selection"] == {"t": [0, 90], "y": [0, 37], "x": [0, 29]}
    assert "not enforced" in provenance["store_access"]
    assert provenance["written_by"] == "the insitu server, from its own records"
    assert {r["file"] for r in provenance["results"]} == {r["filename"] for r in done["results"]}


@pytest.mark.parametrize("entrypoint", ["raw", "raw_eager"])
def test_returning_the_raw_input_is_refused(
    client: Client, registered: np.ndarray, analysis_code: Path, entrypoint: str
) -> None:
    """A job over its result cap fails, naming both sizes, and serves no results."""
    job = client.submit(spec(entrypoint, limits={"max_result_bytes": "64KiB"}), code=analysis_code)
    done = client.wait(job["id"], timeout=90)
    assert done["state"] == "failed"
    assert done["error_kind"] == "result_too_large"
    assert "cap of 73.7 kB (limits.max_result_bytes = 65.5 kB + 8.2 kB" in done["error"]
    # The selection is 90 * 37 * 29 * 2 = 193,140 bytes (plus an .npy header if computed).
    assert re.search(r"results total 193\.\d kB", done["error"])
    assert "reduce further" in done["error"]
    assert client.results(job["id"]) == []


def test_analysis_error_is_reported_with_its_place(
    client: Client, registered: np.ndarray, analysis_code: Path
) -> None:
    job = client.submit(spec("boom"), code=analysis_code)
    done = client.wait(job["id"], timeout=90)
    assert done["state"] == "failed"
    assert "ValueError: the threshold must be positive" in done["error"]
    assert "my_analysis.py line" in done["error"]
    assert "Traceback" in client.log_text(job["id"])


def test_missing_module_says_how_to_upload_code(client: Client, registered: np.ndarray) -> None:
    job = client.submit(spec("time_mean"))  # no --code: my_analysis is not installed
    done = client.wait(job["id"], timeout=90)
    assert done["state"] == "failed"
    assert "--code" in done["error"] and "my_analysis" in done["error"]


def test_cancel_a_running_job_stops_its_processes(
    client: Client, registered: np.ndarray, analysis_code: Path
) -> None:
    job = client.submit(spec("slow"), code=analysis_code)
    wait_for(lambda: client.job(job["id"])["state"] == "running", timeout=60)
    assert runner_alive(job)
    client.cancel(job["id"])
    done = client.wait(job["id"], timeout=30)
    assert done["state"] == "cancelled"
    assert "cancel" in done["reason"]
    wait_for(lambda: not runner_alive(job), timeout=15)


def test_timeout_stops_the_job(client: Client, registered: np.ndarray, analysis_code: Path) -> None:
    job = client.submit(spec("slow", limits={"timeout": "4s"}), code=analysis_code)
    done = client.wait(job["id"], timeout=60)
    assert done["state"] == "timed_out"
    assert "4.0 s" in done["reason"] and "limits.timeout" in done["reason"]
    wait_for(lambda: not runner_alive(job), timeout=15)


def job_processes(job_id: str) -> list[psutil.Process]:
    """The runner and Dask worker processes of a job."""
    found = []
    for process in psutil.process_iter(["environ"]):
        try:
            if (process.info.get("environ") or {}).get("INSITU_JOB_ID") == job_id:
                found.append(process)
        except psutil.Error:
            continue
    return found


def runner_alive(job: dict[str, Any]) -> bool:
    """Whether any process of this job (runner or Dask worker) is still running."""
    return bool(job_processes(job["id"]))


def start_then_stop_server(
    settings: Settings, movie: tuple[Path, np.ndarray], code: Path, seconds: float
) -> dict[str, Any]:
    """Submit a slow job, wait until it runs, then stop the server under it."""
    server = BackgroundServer(settings).start()
    token = settings.admin_token_path.read_text().strip()
    with Client(server.url, token) as api:
        api.register_dataset(DATASET, str(movie[0]))
        slow = {"entrypoint": "my_analysis:slow", "params": {"seconds": seconds}}
        job = api.submit(spec("slow", analysis=slow), code=code)
        wait_for(lambda: api.job(job["id"])["state"] == "running", timeout=60)
    server.stop()
    return job


def wait_after_restart(settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """Start a new server on the same home and wait for the job to end."""
    server = BackgroundServer(settings).start()
    try:
        with Client(server.url, settings.admin_token_path.read_text().strip()) as api:
            done = api.wait(job["id"], timeout=60)
            done["results_served"] = api.results(job["id"])
            return done
    finally:
        server.stop()


def test_restart_readopts_a_running_job(
    settings: Settings, movie: tuple[Path, np.ndarray], analysis_code: Path
) -> None:
    """A job keeps running while the server restarts, and the new server finishes it."""
    job = start_then_stop_server(settings, movie, analysis_code, seconds=6)
    assert runner_alive(job)
    done = wait_after_restart(settings, job)
    assert done["state"] == "succeeded", done["error"]
    assert [r["key"] for r in done["results_served"]] == ["done"]


def test_restart_fails_a_job_whose_process_died(
    settings: Settings, movie: tuple[Path, np.ndarray], analysis_code: Path
) -> None:
    """None lost, none left running: a runner killed while the server was down is failed."""
    job = start_then_stop_server(settings, movie, analysis_code, seconds=60)
    for process in job_processes(job["id"]):
        process.kill()
    wait_for(lambda: not runner_alive(job), timeout=15)
    done = wait_after_restart(settings, job)
    assert done["state"] == "failed"
    assert "insitu logs" in done["reason"]


def test_many_jobs_respect_the_running_limit(
    settings: Settings, movie: tuple[Path, np.ndarray], analysis_code: Path
) -> None:
    settings.dispatcher.max_running_jobs = 2
    server = BackgroundServer(settings).start()
    try:
        token = settings.admin_token_path.read_text().strip()
        with Client(server.url, token) as api:
            api.register_dataset(DATASET, str(movie[0]))
            bundle = api.upload_code(analysis_code)
            jobs = [api.submit(spec("time_mean"), bundle=bundle) for _ in range(5)]
            peak = 0

            def all_done() -> bool:
                nonlocal peak
                states = [api.job(j["id"])["state"] for j in jobs]
                peak = max(peak, sum(s in ("admitted", "provisioning", "running") for s in states))
                return all(s == "succeeded" for s in states)

            wait_for(all_done, timeout=110, interval=0.1)
            assert 1 <= peak <= 2
    finally:
        server.stop()
