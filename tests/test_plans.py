"""Plan before you run: what a spec reads, its estimate and the quota's say, with nothing
queued (API, client and CLI against a live server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fakes import make_world
from helpers import assert_one_error_line
from insitu.cli.main import app
from insitu.client import Client
from insitu.config import Settings
from insitu.db.engine import Database
from insitu.db.models import Job, User
from insitu.errors import InvalidInput, NotFound
from insitu.server import BackgroundServer
from insitu.services.plans import plan_job
from insitu.states import JobState

pytestmark = pytest.mark.timeout(120)
DATASET = "test/movie"


MEAN = "ophys_analyses.projection:mean_projection"  # an installed analysis's name
ANY = {"dataset": DATASET, "analysis": {"entrypoint": "m:f"}}


def _spec(**fields: Any) -> dict[str, Any]:
    return {"dataset": DATASET, "analysis": {"entrypoint": MEAN}, **fields}


@pytest.fixture
def registered(client: Client, movie: tuple[Path, np.ndarray]) -> np.ndarray:
    client.register_dataset(DATASET, str(movie[0]))
    return movie[1]


def _run(client: Client, code: Path, **fields: Any) -> dict[str, Any]:
    """A job of the user's own code (``analysis_code``), run to its end."""
    spec = {**_spec(**fields), "analysis": {"entrypoint": "my_analysis:time_mean"}}
    return client.wait(client.submit(spec, code=code)["id"], timeout=90)


def test_a_plan_says_what_the_job_reads_and_queues_nothing(
    client: Client, registered: np.ndarray, analysis_code: Path
) -> None:
    spec = _spec(select={"t": [0, 40], "y": [8, 24]})
    plan = client.plan(spec)
    read = plan["read"]
    assert read["selection"] == {"t": [0, 40], "y": [8, 24], "x": [0, registered.shape[2]]}
    assert read["bytes_selected"] == 40 * 16 * registered.shape[2] * registered.itemsize
    assert read["bytes_touched"] >= read["bytes_selected"]
    assert plan["quota"]["verdict"] == "starts" and plan["warnings"] == []
    assert "a guess" in plan["estimate"]["basis"] and plan["estimate"]["run_seconds"] > 0
    assert client.jobs() == []
    # The plan's chunk count is the one the job then counts its progress in.
    job = _run(client, analysis_code, select=spec["select"])
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"]["chunks_total"] == read["chunks_touched"]
    assert job["bytes_selected"] == read["bytes_selected"]


def test_estimates_come_from_jobs_that_ran_here(
    client: Client, registered: np.ndarray, analysis_code: Path
) -> None:
    for _ in range(3):  # enough for this dataset's own rate
        job = _run(client, analysis_code)
        assert job["state"] == "succeeded", job["error"]
    plan = client.plan(_spec())
    assert plan["estimate"]["basis"] == "the median of 3 recent successful job(s) on this dataset"
    stored = plan["read"]["stored_bytes_estimate"]
    assert stored is not None and 0 < stored <= plan["read"]["bytes_touched"]
    assert "no selection" in plan["warnings"][0]


def test_a_plan_refuses_what_a_submit_refuses(client: Client, registered: np.ndarray) -> None:
    with pytest.raises(NotFound, match="no-such"):
        client.plan({**_spec(), "dataset": "no-such/data"})
    with pytest.raises(InvalidInput, match="empty range"):
        client.plan(_spec(select={"t": [10, 5]}))
    with pytest.raises(InvalidInput, match=r"resources\.workers"):
        client.plan(_spec(resources={"workers": 99}))


def test_a_participant_s_plan_shows_a_refusal_by_the_quota(
    client: Client, server: BackgroundServer, registered: np.ndarray
) -> None:
    created = client.create_course(
        "plan-course", [{"name": "Ada", "email": "ada@x.example"}], datasets=[DATASET],
        quota="jobs=1,workers=1",
    )  # fmt: skip
    with Client(server.url, created["created"][0]["token"]) as ada:
        refused = ada.plan(_spec(resources={"workers": 2}))
        assert refused["quota"]["verdict"] == "refused"
        assert "your quota allows 1" in refused["quota"]["reason"]
        assert refused["quota"]["quota"] == "jobs=1,workers=1"
        assert ada.plan(_spec())["quota"]["verdict"] == "starts"


def test_a_plan_waits_while_the_quota_s_jobs_run_and_is_refused_when_hours_are_spent(
    db: Database, settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    world = make_world(db, settings, movie[0])
    running = world.submit()
    with db.session() as session:
        job = session.get(Job, running.id)
        user = session.get(User, world.user.id)
        assert job is not None and user is not None
        job.state, job.core_seconds = JobState.RUNNING.value, 0.0
        user.quota = {"jobs": 1}
        session.commit()
        waits = plan_job(
            session, settings, user, {"dataset": DATASET, "analysis": {"entrypoint": "m:f"}}
        )
        assert waits.quota.verdict == "waits" and "allows 1 at once" in (waits.quota.reason or "")
        job.state, job.core_seconds = JobState.SUCCEEDED.value, 7200.0
        user.quota = {"core_hours": 2}
        session.commit()
        spent = plan_job(
            session, settings, user, {"dataset": DATASET, "analysis": {"entrypoint": "m:f"}}
        )
        assert spent.quota.verdict == "refused" and "2 core-hours" in (spent.quota.reason or "")
        assert spent.quota.core_hours_used == 2.0


def test_insitu_plan_and_submit_dry_run(
    server: BackgroundServer, settings: Settings, registered: np.ndarray, tmp_path: Path
) -> None:
    env = {"INSITU_URL": server.url, "INSITU_TOKEN": settings.admin_token_path.read_text().strip()}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_spec(select={"t": [0, 10]})))
    shown = CliRunner().invoke(app, ["plan", str(path)], env=env)
    assert shown.exit_code == 0, shown.output
    for field in ("selection", "t 0:10", "chunks", "estimate", "core-hours", "starts"):
        assert field in shown.output
    dry = CliRunner().invoke(app, ["submit", str(path), "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0 and '"chunks_touched"' in dry.output
    with Client(server.url, env["INSITU_TOKEN"]) as admin:
        assert admin.jobs() == []
    path.write_text(yaml.safe_dump(_spec(select={"t": [10, 5]})))
    bad = CliRunner().invoke(app, ["plan", str(path)], env=env)
    assert_one_error_line(bad, "empty range")
