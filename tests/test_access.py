"""Users, roles, dataset access rules, result ownership and the audit log, over a live server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from helpers import assert_one_error_line
from insitu.cli.main import app
from insitu.client import Client
from insitu.config import Settings
from insitu.errors import AuthenticationFailed, InvalidInput, NotFound, PermissionDenied
from insitu.server import BackgroundServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def users_may_run_code(settings: Settings) -> None:
    """These tests are about access, not isolation: the operator lets users run their code
    on the local backend (test_trust_local.py tests the default, which does not)."""
    settings.local.allow_untrusted_code = True


def as_user(server: BackgroundServer, token: str) -> Client:
    return Client(server.url, token)


@pytest.fixture
def people(client: Client, server: BackgroundServer) -> Iterator[dict[str, Client]]:
    """An instructor, two researchers (one in group lab-a) and the admin, each a client."""
    made = {
        "ines": client.add_user("ines", "instructor", email="ines@example.org"),
        "rosa": client.add_user("rosa", "researcher"),
        "pat": client.add_user("pat", "participant", groups=["lab-a"]),
    }
    clients = {name: as_user(server, user["token"]) for name, user in made.items()}
    clients["admin"] = client
    yield clients
    for name, api in clients.items():
        if name != "admin":
            api.close()


@pytest.fixture
def catalog(people: dict[str, Client], movie: tuple[Path, np.ndarray]) -> dict[str, str]:
    """Three datasets registered by the instructor: public, private and group lab-a.

    The same store three times: once plainly, then twice on purpose (``same_url_ok``).
    """
    ines = people["ines"]
    people["admin"].allow_url_root(str(movie[0].parent), role="instructor")
    names = {"public": "lab/public", "private": "lab/private", "group:lab-a": "lab/group"}
    for number, (rule, name) in enumerate(names.items()):
        registered = ines.register_dataset(name, str(movie[0]), access=rule, same_url_ok=number > 0)
        assert registered["access"] == rule
    return names


def spec(dataset: str, entrypoint: str = "my_analysis:time_mean") -> dict[str, Any]:
    return {"dataset": dataset, "analysis": {"entrypoint": entrypoint}}


def test_tokens_are_shown_once_and_stored_hashed(
    client: Client, people: dict[str, Client], settings: Settings
) -> None:
    assert people["rosa"].whoami()["name"] == "rosa"
    assert people["pat"].whoami()["groups"] == ["lab-a"]
    listed = {u["name"]: u for u in client.users()}
    assert set(listed) == {"admin", "ines", "rosa", "pat"}
    assert all("token" not in u for u in listed.values())
    token = people["rosa"].token or ""
    assert token.startswith("insitu_")
    assert token.encode() not in (settings.home / "insitu.db").read_bytes()


def test_only_admins_manage_users_and_read_the_audit_log(people: dict[str, Client]) -> None:
    for name in ("ines", "rosa"):
        with pytest.raises(PermissionDenied, match="only admins may add users"):
            people[name].add_user("mallory", "admin")
        with pytest.raises(PermissionDenied, match="audit log"):
            people[name].audit()
    admin = people["admin"]
    with pytest.raises(InvalidInput, match="role 'boss' is not known"):
        admin.add_user("bob", "boss")
    with pytest.raises(InvalidInput, match="user name 'Bad Name'"):
        admin.add_user("Bad Name", "researcher")
    with pytest.raises(Exception, match="already exists"):
        admin.add_user("rosa", "researcher")
    assert {u["name"] for u in admin.users()} == {"admin", "ines", "rosa", "pat"}


def test_researchers_cannot_register_datasets(
    people: dict[str, Client], movie: tuple[Path, np.ndarray]
) -> None:
    with pytest.raises(PermissionDenied, match="only admins and instructors may register"):
        people["rosa"].register_dataset("rosa/data", str(movie[0]))
    with pytest.raises(InvalidInput, match="access rule 'friends'"):
        people["ines"].register_dataset("lab/x", str(movie[0]), access="friends")
    assert people["admin"].datasets() == []


def test_a_private_dataset_is_refused_at_submit_with_its_name(
    people: dict[str, Client], catalog: dict[str, str], analysis_code: Path
) -> None:
    rosa = people["rosa"]
    assert [d["name"] for d in rosa.datasets()] == ["lab/public"]
    with pytest.raises(PermissionDenied, match="may not read dataset 'lab/private'") as denied:
        rosa.submit(spec("lab/private"), code=analysis_code)
    assert "insitu datasets grant lab/private rosa" in str(denied.value)
    with pytest.raises(PermissionDenied, match="lab/group"):
        rosa.submit(spec("lab/group"), code=analysis_code)
    with pytest.raises(PermissionDenied, match="lab/private"):
        rosa.dataset("lab/private")
    assert rosa.jobs() == []

    pat = people["pat"]  # in group lab-a
    assert {d["name"] for d in pat.datasets()} == {"lab/public", "lab/group"}
    assert pat.submit(spec("lab/group"), code=analysis_code)["state"] == "queued"

    with pytest.raises(PermissionDenied, match="only admins and instructors may grant"):
        pat.grant("lab/private", "rosa")
    otto = people["admin"].add_user("otto", "instructor")["token"]
    with (
        Client(people["admin"].url, otto) as other_instructor,
        pytest.raises(PermissionDenied, match="'lab/private' belongs to another user"),
    ):
        other_instructor.grant("lab/private", "rosa")
    people["ines"].grant("lab/private", "rosa")
    job = rosa.submit(spec("lab/private"), code=analysis_code)
    assert job["dataset"] == "lab/private" and job["owner"] == "rosa"
    with pytest.raises(NotFound, match="no user named 'nobody'"):
        people["ines"].grant("lab/private", "nobody")


def test_results_are_readable_by_their_owner_and_admins_only(
    people: dict[str, Client], catalog: dict[str, str], analysis_code: Path, tmp_path: Path
) -> None:
    rosa, pat, admin = people["rosa"], people["pat"], people["admin"]
    job = rosa.submit(spec("lab/public"), code=analysis_code)
    done = rosa.wait(job["id"], timeout=60)
    assert done["state"] == "succeeded", done["error"]
    mean = rosa.result(job["id"], "mean")
    for attempt in (
        lambda: pat.job(job["id"]),
        lambda: pat.results(job["id"]),
        lambda: pat.result(job["id"], "mean"),
        lambda: pat.download(job["id"], "mean.npy", tmp_path),
        lambda: pat.cancel(job["id"]),
    ):
        with pytest.raises(PermissionDenied, match=f"job {job['id']} belongs to another user"):
            attempt()
    assert not (tmp_path / "mean.npy").exists()
    assert pat.jobs() == [] and [j["id"] for j in rosa.jobs()] == [job["id"]]
    np.testing.assert_array_equal(admin.result(job["id"], "mean"), mean)

    audit = admin.audit(limit=1000)
    actions = [(e["user"], e["action"], e["outcome"]) for e in audit]
    assert ("rosa", "job.submit", "ok") in actions
    assert ("rosa", "result.download", "ok") in actions
    assert ("admin", "result.download", "ok") in actions
    denials = [e for e in audit if e["user"] == "pat" and e["outcome"] == "denied"]
    # Five refusals, folded per route: results/mean and its download share one row.
    assert sum(e["count"] for e in denials) == 5 and len(denials) == 4
    assert all(job["id"] in e["detail"] for e in denials)
    download = next(e for e in audit if e["action"] == "result.download")
    assert download["target"] == f"{job['id']}/mean.npy" and download["bytes"] > 0
    only_denied = admin.audit(outcome="denied", user="pat")
    assert len(only_denied) == 4


def test_revoking_a_user_stops_their_token_and_keeps_their_jobs(
    people: dict[str, Client], catalog: dict[str, str], analysis_code: Path
) -> None:
    rosa, admin = people["rosa"], people["admin"]
    job = rosa.submit(spec("lab/public"), code=analysis_code)
    revoked = admin.revoke_user("rosa")
    assert revoked["active"] is False
    with pytest.raises(AuthenticationFailed, match="unknown or revoked"):
        rosa.jobs()
    assert admin.job(job["id"])["owner"] == "rosa"
    with pytest.raises(Exception, match="already revoked"):
        admin.revoke_user("rosa")
    with pytest.raises(Exception, match="cannot revoke yourself"):
        admin.revoke_user("admin")
    assert any(e["action"] == "user.revoke" and e["target"] == "rosa" for e in admin.audit())
    denied = admin.audit(outcome="denied")
    assert any(e["user"] is None and "revoked" in e["detail"] for e in denied)


# -- the CLI ----------------------------------------------------------------------------------

Run = Callable[..., Result]


@pytest.fixture
def cli(server: BackgroundServer, settings: Settings) -> Run:
    base = {"INSITU_URL": server.url, "INSITU_HOME": str(settings.home)}
    admin_token = settings.admin_token_path.read_text().strip()

    def run(*args: str, token: str = admin_token, input: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env={**base, "INSITU_TOKEN": token}, input=input)

    return run


def test_users_and_access_from_the_command_line(
    cli: Run, movie: tuple[Path, np.ndarray], analysis_code: Path, tmp_path: Path
) -> None:
    added = cli("users", "add", "ada", "--role", "researcher", "--group", "lab-a", "--json")
    assert added.exit_code == 0, added.output
    token = json.loads(added.stdout)["token"]
    plain = cli("users", "add", "bo", "--role", "instructor")
    assert plain.exit_code == 0 and plain.stdout.strip().startswith("insitu_")
    assert "shown only this once" not in plain.stdout  # the token alone on stdout
    assert_one_error_line(cli("users", "add", "cy", "--role", "boss"), "role 'boss'", "participant")

    listed = json.loads(cli("users", "list", "--json").stdout)
    assert {u["name"] for u in listed} == {"admin", "ada", "bo"}
    assert "lab-a" in cli("users", "list").stdout
    assert "ada (researcher, groups lab-a)" in cli("whoami", token=token).stdout

    registered = cli(
        "datasets", "register", "lab/secret", str(movie[0]), "--access", "private", "--json"
    )
    assert registered.exit_code == 0, registered.output
    assert json.loads(registered.stdout)["access"] == "private"
    assert_one_error_line(
        cli("datasets", "register", "lab/x", str(movie[0]), "--access", "everyone"),
        "access rule 'everyone'",
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text("dataset: lab/secret\nanalysis: {entrypoint: 'my_analysis:time_mean'}\n")
    assert_one_error_line(
        cli("submit", str(job_file), "--code", str(analysis_code), token=token),
        "may not read dataset 'lab/secret'",
    )
    assert_one_error_line(cli("users", "list", token=token), "only admins may list users")
    assert_one_error_line(cli("audit", token=token), "only admins may read the audit log")

    granted = cli("datasets", "grant", "lab/secret", "ada")
    assert granted.exit_code == 0 and "ada may now read lab/secret" in granted.stdout
    submitted = cli("submit", str(job_file), "--code", str(analysis_code), "--json", token=token)
    assert submitted.exit_code == 0, submitted.output

    declined = cli("users", "revoke", "ada", input="n\n")  # no terminal: --yes is implied
    assert declined.exit_code == 0
    assert_one_error_line(cli("whoami", token=token), "unknown or revoked")
    assert_one_error_line(cli("users", "revoke", "ada", "--yes"), "already revoked")

    audit = json.loads(cli("audit", "--json", "--limit", "500").stdout)
    actions = {e["action"] for e in audit}
    assert {"user.add", "dataset.register", "dataset.grant", "job.submit", "user.revoke"} <= actions
    assert any(e["outcome"] == "denied" and e["user"] == "ada" for e in audit)
    table = cli("audit", "--denied")
    assert table.exit_code == 0 and "denied" in table.stdout and "ada" in table.stdout
