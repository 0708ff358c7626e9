"""The trust boundary on the docker backend: a participant's attacks, each a test.

Every user may run their own code here: the job runs in containers of its own, so the
participant's code is refused nothing at submit and each attack must fail on the
server's side. Needs Docker and SeaweedFS (CI requires both).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dockerlab
import trust_checks as checks
from insitu.backends.docker_backend import PLACEHOLDER_KEY
from insitu.client import Client
from insitu.config import Settings
from test_docker import (  # noqa: F401 (fixtures)
    docker_server,
    docker_settings,
    engine,
    nothing_left_behind,
    ophys_image,
)

pytestmark = [pytest.mark.docker, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def people(
    docker_server: Client,  # noqa: F811
    docker_settings: Settings,  # noqa: F811
    s3_movie: tuple[str, np.ndarray],
) -> Iterator[dict[str, Any]]:
    docker_server.register_dataset("lab/movie", s3_movie[0], access="public")
    made = docker_server.add_user("mallory", "participant")
    with Client(docker_server.url, made["token"]) as mallory:
        yield {
            "admin": docker_server,
            "mallory": mallory,
            "admin_token": docker_settings.admin_token_path.read_text().strip(),
        }


def _attack(people: dict[str, Any], tmp_path: Path, name: str, cap: str = "16KiB") -> str:
    code = checks.attack_code(tmp_path / "code")
    spec = {
        "dataset": "lab/movie",
        "analysis": {"image": dockerlab.OPHYS_IMAGE, "entrypoint": f"attacks:{name}"},
        "resources": {"workers": 1, "memory_per_worker": "1GiB"},
        "limits": {"max_result_bytes": cap},
    }
    return str(people["mallory"].submit(spec, code=code)["id"])


def test_a_job_finds_no_secret_of_the_server(people: dict[str, Any], tmp_path: Path) -> None:
    job_id = _attack(people, tmp_path, "steal_secrets", cap="1MiB")
    mallory = people["mallory"]
    done = mallory.wait(job_id, timeout=120)
    assert done["state"] == "succeeded", (done["error"], mallory.log_text(job_id)[-3000:])
    loot = mallory.result(job_id, "loot")
    checks.check_secrets(done, loot, people["admin_token"])
    # No store credential either: only the placeholder the gateway ignores.
    assert loot["env"].get("INSITU_STORE_ENDPOINT", "").startswith("http://")
    assert loot["env"]["AWS_SECRET_ACCESS_KEY"] == PLACEHOLDER_KEY
    assert "AWS_SESSION_TOKEN" not in loot["env"]


def test_raw_data_printed_to_the_log_is_cut_at_the_budget(
    people: dict[str, Any], tmp_path: Path
) -> None:
    job_id = _attack(people, tmp_path, "print_raw")
    checks.check_log(people["mallory"], people["admin"], job_id, tmp_path / "out")


def test_raw_data_in_the_error_text_is_cut(people: dict[str, Any], tmp_path: Path) -> None:
    job_id = _attack(people, tmp_path, "raise_raw")
    checks.check_error(people["mallory"], job_id, tmp_path / "out")


def test_a_provenance_written_by_the_job_is_never_served(
    people: dict[str, Any], tmp_path: Path
) -> None:
    job_id = _attack(people, tmp_path, "rewrite_provenance")
    checks.check_provenance(people["mallory"], job_id, tmp_path / "out")


def test_forged_core_seconds_are_refused_and_metered_by_the_server(
    people: dict[str, Any], tmp_path: Path
) -> None:
    job_id = _attack(people, tmp_path, "forge_core_seconds")
    checks.check_forged_core_seconds(people["mallory"], job_id)


def test_a_forged_scan_does_not_lift_the_fraction_cap(
    people: dict[str, Any], tmp_path: Path
) -> None:
    job_id = _attack(people, tmp_path, "forge_scan", cap="4MiB")
    checks.check_forged_scan(
        people["mallory"], job_id, tmp_path / "out", "counted by insitu's store gateway"
    )


def test_forged_result_names_never_leave_the_download_folder(
    people: dict[str, Any], tmp_path: Path
) -> None:
    job_id = _attack(people, tmp_path, "forge_names")
    checks.check_forged_names(people["mallory"], job_id, tmp_path / "out")
