"""The trust boundary on the docker backend: a participant's attacks, each a test.

Every user may run their own code here: the job runs in containers of its own, so the
participant's code is refused nothing at submit and each attack must fail on the
server's side. One server serves the module; the attacks are submitted together and run
side by side, and each test checks one of them. Every attack runs twice: started cold
(containers made for the job), and in the warm pool's sandboxes, started before the job
existed, as a course's jobs run. Needs Docker and SeaweedFS (CI requires both).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

import dockerlab
import trust_checks as checks
from insitu import images, objectstore
from insitu.backends.store_gateway import PLACEHOLDER_KEY
from insitu.client import Client
from insitu.config import Settings
from insitu.seaweedfs import DATA_BUCKET, SeaweedFS
from insitu.server import BackgroundServer
from test_docker import nothing_left_behind  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(300)]

ATTACKS = {  # attack -> its job's result cap
    "steal_secrets": "1MiB",
    "print_raw": "16KiB",
    "raise_raw": "16KiB",
    "rewrite_provenance": "16KiB",
    "forge_core_seconds": "16KiB",
    "forge_scan": "4MiB",
    "forge_names": "16KiB",
    "seal_own_gateway": "16KiB",
}


def _movie(settings: Settings) -> str:
    """The test movie's shape and chunks, in the data bucket under a unique prefix."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 4000, size=(90, 37, 29), dtype=np.uint16)
    url = f"s3://{DATA_BUCKET}/{uuid.uuid4().hex[:8]}/movie.zarr"
    store = FsspecStore.from_url(
        url, storage_options=objectstore.platform_options(settings, url), read_only=False
    )
    array = zarr.create_array(
        store,
        shape=data.shape,
        chunks=(32, 16, 16),
        dtype="uint16",
        dimension_names=["t", "y", "x"],
    )
    array[:] = data
    return url


WARM_POOL = {
    "warm_pool_size": len(ATTACKS),
    "warm_pool_image": dockerlab.OPHYS_IMAGE,
    "warm_pool_workers": 1,
    "warm_pool_threads": 2,
    "warm_pool_memory": "1GiB",
}


def wait_for_warm_pool(admin: Client, timeout: float = 120.0) -> dict[str, int]:
    """Wait until the server's warm pool is full; its state from /healthz."""
    deadline = time.monotonic() + timeout
    while True:
        pool = admin.health()["warm_pool"]
        if pool["ready"] >= pool["size"] or time.monotonic() > deadline:
            return dict(pool)
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["cold", "warm"])
def attacked(
    s3_home: tuple[SeaweedFS, Settings],
    tmp_path_factory: pytest.TempPathFactory,
    ophys_image: images.BuiltImage,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Any]]:
    """A docker server, a participant, and every attack submitted as one of their jobs."""
    _, configured = s3_home
    home = tmp_path_factory.mktemp("trust-docker")
    warm = request.param == "warm"
    settings = Settings(
        home=home / "home",
        backend="docker",
        server={"port": 0},  # type: ignore[arg-type]
        dispatcher={"poll_interval": 0.05, "id": f"test-{uuid.uuid4().hex[:6]}"},  # type: ignore[arg-type]
        storage=configured.storage,
        workspace_url=configured.workspace_url,
        docker=WARM_POOL if warm else {},  # type: ignore[arg-type]
    )
    server = BackgroundServer(settings).start()
    admin_token = settings.admin_token_path.read_text().strip()
    try:
        with Client(server.url, admin_token) as admin:
            if warm:
                pool = wait_for_warm_pool(admin)
                assert pool["ready"] == len(ATTACKS), pool
            admin.register_dataset("lab/movie", _movie(settings), access="public")
            made = admin.add_user("mallory", "participant")
            with Client(server.url, made["token"]) as mallory:
                code = checks.attack_code(home / "code")
                jobs = {}
                for attack, cap in ATTACKS.items():
                    spec = {
                        "dataset": "lab/movie",
                        "analysis": {
                            "image": dockerlab.OPHYS_IMAGE,
                            "entrypoint": f"attacks:{attack}",
                        },
                        "resources": {"workers": 1, "memory_per_worker": "1GiB"},
                        "limits": {"max_result_bytes": cap},
                    }
                    jobs[attack] = str(mallory.submit(spec, code=code)["id"])
                for job_id in jobs.values():
                    mallory.wait(job_id, timeout=240)
                yield {
                    "admin": admin,
                    "mallory": mallory,
                    "admin_token": admin_token,
                    "jobs": jobs,
                    "warm": warm,
                    "settings": settings,
                }
    finally:
        server.stop()


def test_a_job_finds_no_secret_of_the_server(attacked: dict[str, Any]) -> None:
    mallory, job_id = attacked["mallory"], attacked["jobs"]["steal_secrets"]
    done = mallory.job(job_id)
    assert done["state"] == "succeeded", (done["error"], mallory.log_text(job_id)[-3000:])
    loot = mallory.result(job_id, "loot")
    checks.check_secrets(done, loot, attacked["admin_token"])
    # No store credential either: only the placeholder the gateway ignores.
    assert loot["env"].get("INSITU_STORE_ENDPOINT", "").startswith("http://")
    assert loot["env"]["AWS_SECRET_ACCESS_KEY"] == PLACEHOLDER_KEY
    assert "AWS_SESSION_TOKEN" not in loot["env"]


def test_raw_data_printed_to_the_log_is_cut_at_the_budget(
    attacked: dict[str, Any], tmp_path: Path
) -> None:
    job_id = attacked["jobs"]["print_raw"]
    checks.check_log(attacked["mallory"], attacked["admin"], job_id, tmp_path / "out")


def test_raw_data_in_the_error_text_is_cut(attacked: dict[str, Any], tmp_path: Path) -> None:
    checks.check_error(attacked["mallory"], attacked["jobs"]["raise_raw"], tmp_path / "out")


def test_a_provenance_written_by_the_job_is_never_served(
    attacked: dict[str, Any], tmp_path: Path
) -> None:
    job_id = attacked["jobs"]["rewrite_provenance"]
    checks.check_provenance(attacked["mallory"], job_id, tmp_path / "out")


def test_forged_core_seconds_are_refused_and_metered_by_the_server(
    attacked: dict[str, Any],
) -> None:
    checks.check_forged_core_seconds(attacked["mallory"], attacked["jobs"]["forge_core_seconds"])


def test_a_forged_scan_does_not_lift_the_fraction_cap(
    attacked: dict[str, Any], tmp_path: Path
) -> None:
    job_id = attacked["jobs"]["forge_scan"]
    checks.check_forged_scan(
        attacked["mallory"], job_id, tmp_path / "out", "counted by insitu's store gateway"
    )


def test_forged_result_names_never_leave_the_download_folder(
    attacked: dict[str, Any], tmp_path: Path
) -> None:
    job_id = attacked["jobs"]["forge_names"]
    checks.check_forged_names(attacked["mallory"], job_id, tmp_path / "out")


def test_warm_attacks_each_ran_in_a_sandbox_of_their_own(attacked: dict[str, Any]) -> None:
    mallory, jobs = attacked["mallory"], attacked["jobs"]
    reasons = {
        job_id: " ".join(e["reason"] for e in mallory.events(job_id)) for job_id in jobs.values()
    }
    warm = {job_id for job_id, text in reasons.items() if "(warm pool)" in text}
    if not attacked["warm"]:
        assert warm == set()
        return
    assert warm == set(jobs.values()), reasons
    database = attacked["settings"].home / "insitu.db"
    with sqlite3.connect(database) as db:
        handles = [json.loads(h) for (h,) in db.execute("SELECT handle FROM jobs")]
    sandboxes = [h["data"]["sandbox"] for h in handles]
    assert len(set(sandboxes)) == len(jobs)  # never two jobs in one sandbox


def test_a_job_can_neither_read_nor_seal_its_gateway_s_counts(attacked: dict[str, Any]) -> None:
    """The gateway's own endpoints answer the server's token only; the scan is still counted."""
    mallory, job_id = attacked["mallory"], attacked["jobs"]["seal_own_gateway"]
    done = mallory.job(job_id)
    assert done["state"] == "succeeded", (done["error"], mallory.log_text(job_id)[-3000:])
    answers = mallory.result(job_id, "answers")
    assert answers and set(answers.values()) == {403}, answers
    assert done["bytes_scanned_source"] == "counted by insitu's store gateway"
    assert done["bytes_scanned"] > 0
