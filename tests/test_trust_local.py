"""The trust boundary on the local backend: a participant's attacks, each a test.

The local backend runs jobs as the server's own user, so by default only admins may run
their own code there (attack 1 is refused at submit). The server-side defences against
attacks 2 to 5 hold whoever runs the code: they are tested on a server whose operator
allowed user code (``local.allow_untrusted_code``), as a one-trusted-user host would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import trust_checks as checks
from insitu.client import Client, safe_target
from insitu.config import Settings
from insitu.errors import InvalidInput, PermissionDenied
from insitu.server import BackgroundServer

pytestmark = pytest.mark.timeout(180)
EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "ophys")


def _people(admin: Client, server: BackgroundServer, movie: Path) -> dict[str, Client]:
    admin.register_dataset("lab/movie", str(movie), access="public")
    made = admin.add_user("mallory", "participant")
    return {"admin": admin, "mallory": Client(server.url, made["token"])}


@pytest.fixture
def strict(
    client: Client, server: BackgroundServer, movie: tuple[Path, np.ndarray]
) -> Iterator[dict[str, Client]]:
    """The default local server: only admins run their own code."""
    people = _people(client, server, movie[0])
    yield people
    people["mallory"].close()


@pytest.fixture
def trusting(
    settings: Settings, movie: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Client]]:
    """A local server whose operator lets every user run code (one trusted user's host)."""
    monkeypatch.setenv("INSITU_HOME", str(settings.home))  # an attack looks for it
    settings.local.allow_untrusted_code = True
    background = BackgroundServer(settings).start()
    with Client(background.url, settings.admin_token_path.read_text().strip()) as admin:
        people = _people(admin, background, movie[0])
        yield people
        people["mallory"].close()
    background.stop()


def _spec(entrypoint: str, **limits: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"dataset": "lab/movie", "analysis": {"entrypoint": entrypoint}}
    spec["limits"] = {"max_result_bytes": "16KiB", **limits}
    return spec


def _attack(people: dict[str, Client], tmp_path: Path, name: str, **limits: Any) -> str:
    code = checks.attack_code(tmp_path / "code")
    job = people["mallory"].submit(_spec(f"attacks:{name}", **limits), code=code)
    return str(job["id"])


# -- attack 1: the server's secrets ---------------------------------------------------------


def test_a_participant_cannot_run_own_code_on_the_local_backend(
    strict: dict[str, Client], tmp_path: Path, settings: Settings
) -> None:
    mallory = strict["mallory"]
    code = checks.attack_code(tmp_path / "code")
    with pytest.raises(PermissionDenied, match="only its admins may upload code") as refused:
        mallory.submit(_spec("attacks:steal_secrets"), code=code)
    assert "docker or kubernetes backend" in str(refused.value)
    # Nor any importable function that is not an installed analysis.
    for entrypoint in ("os:system", "subprocess:run", "insitu.cli.main:main", "builtins:exec"):
        with pytest.raises(PermissionDenied, match="not an installed analysis"):
            mallory.submit(_spec(entrypoint))
    assert mallory.jobs() == []
    token = settings.admin_token_path.read_text().strip()
    assert token not in repr(mallory.jobs())


def test_an_installed_analysis_still_runs_for_a_participant(
    strict: dict[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([EXAMPLE, os.environ.get("PYTHONPATH", "")]))
    mallory = strict["mallory"]
    projection = "ophys_analyses.projection:mean_projection"
    job = mallory.submit(_spec(projection, max_result_bytes="1MiB"))
    done = mallory.wait(job["id"], timeout=90)
    assert done["state"] == "succeeded", done["error"]
    assert done["core_seconds_source"] == "CPU time of the job's processes, sampled by the server"


def test_a_local_job_is_not_told_where_the_server_lives(
    trusting: dict[str, Client], tmp_path: Path, settings: Settings
) -> None:
    """Defence in depth: no home in the environment, no working folder inside it."""
    job_id = _attack(trusting, tmp_path, "steal_secrets", max_result_bytes="1MiB")
    done = trusting["mallory"].wait(job_id, timeout=90)
    assert done["state"] == "succeeded", done["error"]
    found = trusting["mallory"].result(job_id, "loot")
    assert "INSITU_HOME" not in found["env"], found["env"]
    assert not any(str(settings.home) in value for value in found["env"].values())
    assert not any(str(settings.home) in path for path in found["found"]), found["found"]
    assert not found["cwd"].startswith(str(settings.home))
    assert done["state"] == "succeeded"


# -- attacks 2 to 5: what the server measures and serves ------------------------------------


def test_raw_data_printed_to_the_log_is_cut_at_the_budget(
    trusting: dict[str, Client], tmp_path: Path
) -> None:
    job_id = _attack(trusting, tmp_path, "print_raw")
    checks.check_log(trusting["mallory"], trusting["admin"], job_id, tmp_path / "out")


def test_raw_data_in_the_error_text_is_cut(trusting: dict[str, Client], tmp_path: Path) -> None:
    job_id = _attack(trusting, tmp_path, "raise_raw")
    checks.check_error(trusting["mallory"], job_id, tmp_path / "out")


def test_a_provenance_written_by_the_job_is_never_served(
    trusting: dict[str, Client], tmp_path: Path
) -> None:
    job_id = _attack(trusting, tmp_path, "rewrite_provenance")
    checks.check_provenance(trusting["mallory"], job_id, tmp_path / "out")


def test_forged_core_seconds_are_refused_and_metered_by_the_server(
    trusting: dict[str, Client], tmp_path: Path
) -> None:
    job_id = _attack(trusting, tmp_path, "forge_core_seconds")
    checks.check_forged_core_seconds(trusting["mallory"], job_id)


def test_a_forged_scan_does_not_lift_the_fraction_cap(
    trusting: dict[str, Client], tmp_path: Path
) -> None:
    job_id = _attack(trusting, tmp_path, "forge_scan", max_result_bytes="4MiB")
    checks.check_forged_scan(
        trusting["mallory"], job_id, tmp_path / "out", "more than its selection can hold"
    )


def test_forged_result_names_never_leave_the_download_folder(
    trusting: dict[str, Client], tmp_path: Path
) -> None:
    job_id = _attack(trusting, tmp_path, "forge_names")
    checks.check_forged_names(trusting["mallory"], job_id, tmp_path / "out")


# -- the client never trusts names sent by the server ---------------------------------------


@pytest.mark.parametrize(
    "name",
    ["provenance.json?/../../../x", "../x.npy", "/etc/passwd", "a\\b.npy", "..", "", "x\n.npy"],
)
def test_the_client_refuses_names_that_are_not_plain_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match=r"not a plain file name|outside"):
        safe_target(tmp_path, name)
    assert safe_target(tmp_path, "mean.npy") == (tmp_path / "mean.npy").resolve()


def test_a_lying_server_cannot_make_the_client_write_outside_its_folder(tmp_path: Path) -> None:
    """A server (or a man in the middle) that names results to climb out of the folder."""
    evil = "provenance.json?/../../../x"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/results"):
            rows = [{"key": "x", "filename": evil, "kind": "json", "media_type": "a", "size": 1}]
            return httpx.Response(200, json={"data": rows, "count": 1})
        return httpx.Response(200, content=b"owned")

    folder = tmp_path / "a" / "b" / "c"
    api = Client("http://insitu.test", "t")
    api._http = httpx.Client(base_url="http://insitu.test", transport=httpx.MockTransport(answer))
    with pytest.raises(InvalidInput, match="not a plain file name"):
        api.download_all("j-1", folder)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_download_whose_bytes_differ_from_the_record_is_not_kept(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"swapped after the job ended")

    api = Client("http://insitu.test", "t")
    api._http = httpx.Client(base_url="http://insitu.test", transport=httpx.MockTransport(answer))
    with pytest.raises(Exception, match="SHA-256 differs"):
        api.download("j-1", "mean.npy", tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
