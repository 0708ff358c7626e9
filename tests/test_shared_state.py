"""API replicas share their state: each pod has a home of its own, and nothing a replica
keeps there may be needed by another.

Two servers with different homes, one PostgreSQL database and one object store stand in
for two API pods of the chart: a bundle uploaded through one runs a job submitted through
the other. (Kept logs of Kubernetes jobs: ``test_k8s_backend.py``.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from insitu.client import Client
from insitu.config import Settings
from insitu.objectstore import state_store
from insitu.server import BackgroundServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(
    s3_settings: Settings, postgres_url: str, tmp_path: Path
) -> Iterator[tuple[Client, Client, Settings]]:
    token = secrets.token_urlsafe(32)
    shared = s3_settings.model_copy(
        update={"database_url": postgres_url, "admin_token": SecretStr(token)}
    )
    started: list[BackgroundServer] = []
    clients: list[Client] = []
    try:
        for name in ("a", "b"):
            replica = shared.model_copy(update={"home": tmp_path / f"pod-{name}"})
            started.append(BackgroundServer(replica).start())
            clients.append(Client(started[-1].url, token))
        yield clients[0], clients[1], shared
    finally:
        for client in clients:
            client.close()
        for server in started:
            server.stop()


def test_a_bundle_uploaded_to_one_replica_runs_a_job_submitted_to_another(
    replicas: tuple[Client, Client, Settings],
    s3_movie: tuple[str, np.ndarray],
    analysis_code: Path,
) -> None:
    first, second, settings = replicas
    url, data = s3_movie
    first.register_dataset("shared/movie", url)
    digest = first.upload_code(analysis_code)
    spec = {"dataset": "shared/movie", "analysis": {"entrypoint": "my_analysis:time_mean"}}
    job = second.submit(spec, bundle=digest)
    done = second.wait(job["id"], timeout=180)
    assert done["state"] == "succeeded", done["error"]
    np.testing.assert_allclose(first.result(job["id"], "mean"), data.mean(axis=0), rtol=1e-5)
    kept = state_store(settings, "bundles")
    assert kept.url.startswith("s3://") and kept.size(f"{digest}.tar.gz")
    for home in (settings.home, *(p for p in Path(settings.home).parent.glob("pod-*"))):
        assert not (home / "bundles").exists(), home


def test_no_job_reaches_the_server_s_state_beside_its_workspace() -> None:
    """A participant's job naming the bundles or kept logs (its workspace's sibling
    ``_server`` prefix) through its store gateway is refused: another user's code and
    logs stay the server's to hand out."""
    from insitu.gateway.policy import Policy, Prefix

    config = Settings(workspace_url="s3://results/jobs")
    assert config.resolved_state_url == "s3://results/jobs/_server"
    policy = Policy(
        Prefix.of("s3://data/movie.zarr"), Prefix.of("s3://results/jobs/j-0123456789ab")
    )
    assert policy.check("PUT", "results", "jobs/j-0123456789ab/results/x.npy", {}).allowed
    for method, key, query in [
        ("GET", "jobs/_server/bundles/" + "0" * 64 + ".tar.gz", {}),
        ("PUT", "jobs/_server/logs/j-000000000000.log", {}),
        ("DELETE", "jobs/_server/logs/j-000000000000.log", {}),
        ("GET", "", {"list-type": "2", "prefix": "jobs/_server/"}),
    ]:
        assert not policy.check(method, "results", key, query).allowed, (method, key)
