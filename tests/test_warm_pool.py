"""The local backend's warm pool: small jobs fork from a zygote onto workers kept warm."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest

from helpers import wait_for
from insitu.client import Client
from insitu.config import Settings
from insitu.server import BackgroundServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "ophys")
MEAN = "ophys_analyses.projection:mean_projection"


@contextmanager
def warm_server(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, dataset_url: str
) -> Iterator[tuple[Client, Settings]]:
    """A server with a warm pool of 2 workers and the movie registered as ``pool/movie``."""
    # The pool's processes import installed analyses: put the example on their path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([EXAMPLE, os.environ.get("PYTHONPATH", "")]))
    warm = settings.model_copy(
        update={
            "local": settings.local.model_copy(
                update={"warm_pool_workers": 2, "warm_pool_max_workers": 1}
            )
        }
    )
    server = BackgroundServer(warm).start()
    try:
        with Client(server.url, warm.admin_token_path.read_text().strip()) as api:
            api.register_dataset("pool/movie", dataset_url, access="public")
            wait_for(lambda: (warm.home / "pool" / "scheduler").exists(), 60, 0.1)
            wait_for(lambda: (warm.home / "pool" / "zygote.sock").exists(), 60, 0.1)
            yield api, warm
    finally:
        server.stop()


@pytest.fixture
def pool_client(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, movie: tuple[Path, np.ndarray]
) -> Iterator[tuple[Client, Settings]]:
    with warm_server(settings, monkeypatch, str(movie[0])) as (api, warm):
        yield api, warm
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(warm.home / "pool") in (p.info.get("cmdline") or [])
    ], "the pool's processes outlived their server"


def _submit(api: Client, **extra: object) -> str:
    spec = {"dataset": "pool/movie", "analysis": {"entrypoint": MEAN}, **extra}
    return str(api.submit(spec)["id"])


def test_small_jobs_share_warm_workers_each_metered_alone(
    pool_client: tuple[Client, Settings],
    movie: tuple[Path, np.ndarray],
    analysis_code: Path,
) -> None:
    api, _ = pool_client
    jobs = [_submit(api) for _ in range(3)]  # at once: they share the pool's workers
    part = _submit(api, select={"t": [5, 40]})  # same array, another selection, same workers
    expected = movie[1].astype(np.float64).mean(axis=0)
    scanned = set()
    for job in jobs:
        done = api.wait(job, timeout=60)
        assert done["state"] == "succeeded", done["error"]
        np.testing.assert_allclose(api.result(job, "mean"), expected, rtol=1e-6)
        assert "a warm-pool runner" in api.log_text(job)
        scanned.add(done["bytes_scanned"])
    assert api.wait(part, timeout=60)["state"] == "succeeded"
    np.testing.assert_allclose(
        api.result(part, "mean"), movie[1][5:40].astype(np.float64).mean(axis=0), rtol=1e-6
    )
    # Each job counted its own reads, though the workers served all three at once.
    big = _submit(api, resources={"workers": 2})  # too big for the pool: its own cluster
    done = api.wait(big, timeout=90)
    assert done["state"] == "succeeded" and "warm-pool" not in api.log_text(big)
    assert scanned == {done["bytes_scanned"]}
    # Uploaded code never runs on shared workers.
    own = api.submit(
        {"dataset": "pool/movie", "analysis": {"entrypoint": "my_analysis:time_mean"}},
        code=analysis_code,
    )["id"]
    assert api.wait(own, timeout=90)["state"] == "succeeded"
    assert "warm-pool" not in api.log_text(own)


def test_a_warm_job_starts_fast_and_cancel_spares_the_pool(
    pool_client: tuple[Client, Settings],
) -> None:
    api, settings = pool_client
    first = _submit(api)
    assert api.wait(first, timeout=60)["state"] == "succeeded"
    events = {e["to_state"]: e["at"] for e in api.events(first)}
    assert "running" in events  # the figures are measured in bench_course_load, not here
    pool_pids = {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(settings.home / "pool") in (p.info.get("cmdline") or [])
    }
    assert len(pool_pids) >= 2
    victim = _submit(api)
    api.cancel(victim)
    assert api.wait(victim, timeout=60)["state"] in ("cancelled", "succeeded")
    time.sleep(0.5)
    assert all(psutil.pid_exists(pid) for pid in pool_pids)
    after = _submit(api)
    assert api.wait(after, timeout=60)["state"] == "succeeded"


@pytest.mark.s3
def test_warm_workers_read_s3_data_with_the_jobs_key(
    s3_settings: Settings,
    s3_movie: tuple[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool's workers start without any key; the job's key travels with its store."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with warm_server(s3_settings, monkeypatch, s3_movie[0]) as (api, warm):
        pool = [
            p
            for p in psutil.process_iter(["cmdline", "environ"])
            if str(warm.home / "pool") in (p.info.get("cmdline") or [])
        ]
        assert pool and not any("AWS_ACCESS_KEY_ID" in (p.info["environ"] or {}) for p in pool)
        job = _submit(api)
        done = api.wait(job, timeout=60)
        assert done["state"] == "succeeded", done["error"]
        assert "a warm-pool runner" in api.log_text(job)
        expected = s3_movie[1].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(api.result(job, "mean"), expected, rtol=1e-6)
        assert done["bytes_scanned"] > 0
