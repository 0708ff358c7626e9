"""The ``insitu`` command line against a live server: every command, its exit codes and errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner, Result

from helpers import assert_one_error_line, wait_for
from insitu.cli import app as cli_app
from insitu.cli.main import app
from insitu.client import Client
from insitu.config import Settings
from insitu.server import BackgroundServer

pytestmark = pytest.mark.timeout(60)

DATASET = "test/movie"
INSITU = Path(sys.executable).parent / "insitu"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Run = Callable[..., Result]


def write_spec(directory: Path, entrypoint: str, **fields: Any) -> Path:
    """A job spec on the test dataset, as a YAML file."""
    spec = {"dataset": DATASET, "analysis": {"entrypoint": entrypoint}, **fields}
    path = directory / f"{entrypoint.replace(':', '-')}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def env(server: BackgroundServer, settings: Settings) -> dict[str, str]:
    """The environment that points the CLI at the live server as its admin."""
    return {
        "INSITU_URL": server.url,
        "INSITU_TOKEN": settings.admin_token_path.read_text().strip(),
        "INSITU_HOME": str(settings.home),
    }


@pytest.fixture
def cli(env: dict[str, str]) -> Run:
    """Run ``insitu ARGS...`` in-process against the live server."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None, **extra_env: str) -> Result:
        return runner.invoke(app, list(args), env={**env, **extra_env}, input=input)

    return run


@pytest.fixture
def dataset(cli: Run, movie: tuple[Path, np.ndarray]) -> np.ndarray:
    """The test movie, registered as ``test/movie``; returns its data."""
    path, data = movie
    result = cli("datasets", "register", DATASET, str(path), "--json")
    assert result.exit_code == 0, result.output
    return data


def submit_json(cli: Run, spec: Path, *args: str) -> dict[str, Any]:
    result = cli("submit", str(spec), *args, "--json")
    assert result.exit_code in (0, 1), result.output
    return dict(json.loads(result.stdout))


# -- datasets ---------------------------------------------------------------------------------


def test_datasets_register_list_show(cli: Run, movie: tuple[Path, np.ndarray]) -> None:
    path, data = movie
    registered = cli("datasets", "register", DATASET, str(path), "--description", "a movie")
    assert registered.exit_code == 0, registered.output
    assert DATASET in registered.stdout and "90 x 37 x 29" in registered.stdout

    listed = cli("datasets", "list")
    assert listed.exit_code == 0 and DATASET in listed.stdout and "uint16" in listed.stdout
    [row] = json.loads(cli("datasets", "list", "--json").stdout)
    assert row["name"] == DATASET and row["url"] == path.resolve().as_uri()

    shown = cli("datasets", "show", DATASET)
    for text in ("path", "shape", "chunks", "axes", "level", "32 x 16 x 16", "t, y, x"):
        assert text in shown.stdout
    info = json.loads(cli("datasets", "show", DATASET, "--json").stdout)
    assert info["arrays"][0]["shape"] == list(data.shape)
    assert info["description"] == "a movie"

    assert_one_error_line(cli("datasets", "show", "no/such"), "no/such")
    assert_one_error_line(cli("datasets", "register", DATASET, str(path)), "already")


def test_register_resolves_relative_paths(
    cli: Run, movie: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = movie
    monkeypatch.chdir(path.parent)
    result = cli("datasets", "register", DATASET, path.name, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["url"] == path.resolve().as_uri()


# -- submit, status, list, logs, results --------------------------------------------------


def test_submit_wait_succeeds_and_results_match_numpy(
    cli: Run, dataset: np.ndarray, analysis_code: Path, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path,
        "my_analysis:time_mean",
        select={"t": [10, 70]},
        analysis={"entrypoint": "my_analysis:time_mean", "params": {"scale": 2.0}},
    )
    result = cli("submit", str(spec), "--code", str(analysis_code), "--wait")
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout and "scanned" in result.stdout
    [job] = json.loads(cli("list", "--json").stdout)
    assert job["state"] == "succeeded" and job["bytes_scanned"] > 0

    out = tmp_path / "out"
    downloaded = cli("results", job["id"], "--download", str(out))
    assert downloaded.exit_code == 0, downloaded.output
    assert {p.name for p in out.iterdir()} == {"mean.npy", "selection.json", "provenance.json"}
    expected = dataset[10:70].astype("float64").mean(axis=0) * 2.0
    np.testing.assert_allclose(np.load(out / "mean.npy"), expected)
    assert json.loads((out / "selection.json").read_text())["t"] == [10, 70]

    listed = json.loads(cli("results", job["id"], "--json").stdout)
    assert {r["key"] for r in listed} == {"mean", "selection"}
    assert "mean.npy" in cli("results", job["id"]).stdout


def test_submit_wait_json_is_the_job(cli: Run, dataset: np.ndarray, analysis_code: Path) -> None:
    spec = write_spec(analysis_code.parent, "my_analysis:time_mean")
    job = submit_json(cli, spec, "--code", str(analysis_code), "--wait")
    for key in ("id", "state", "reason", "bytes_scanned", "bytes_returned", "core_seconds"):
        assert key in job
    assert job["state"] == "succeeded"
    returned = sum(r["size"] for r in job["results"]) + job["egress"]["provenance"]
    assert job["bytes_returned"] == returned  # every byte the owner can download


def test_failing_analysis_exits_1_with_its_error(
    cli: Run, dataset: np.ndarray, analysis_code: Path
) -> None:
    spec = write_spec(analysis_code.parent, "my_analysis:boom")
    result = cli("submit", str(spec), "--code", str(analysis_code), "--wait")
    assert_one_error_line(result, "ValueError", "the threshold must be positive")
    assert "failed" in result.stdout

    [job] = json.loads(cli("list", "--json").stdout)
    status = cli("status", job["id"])
    assert status.exit_code == 0
    assert "the threshold must be positive" in status.stdout and "events" in status.stdout
    assert_one_error_line(cli("results", job["id"]), "failed", "only once it has succeeded")


def test_unknown_field_is_one_line_naming_its_path(
    cli: Run, dataset: np.ndarray, analysis_code: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text(
        f"dataset: {DATASET}\nanalysis:\n  entrypoint: my_analysis:time_mean\n  parms: {{}}\n"
    )
    result = cli("submit", str(spec), "--code", str(analysis_code))
    assert_one_error_line(result, "spec.analysis.parms", "unknown field")


def test_status_list_and_logs(
    cli: Run, dataset: np.ndarray, analysis_code: Path, client: Client
) -> None:
    spec = write_spec(analysis_code.parent, "my_analysis:time_mean")
    submitted = submit_json(cli, spec, "--code", str(analysis_code))
    assert submitted["state"] == "queued"
    job = client.wait(submitted["id"], timeout=45)

    status = cli("status", job["id"])
    assert status.exit_code == 0
    for text in (job["id"], "succeeded", "scanned", "core-seconds", "queued", "running"):
        assert text in status.stdout
    as_json = json.loads(cli("status", job["id"], "--json").stdout)
    assert as_json["id"] == job["id"] and as_json["bytes_scanned"] == job["bytes_scanned"]

    assert job["id"] in cli("list").stdout
    succeeded = json.loads(cli("list", "--state", "succeeded", "--json").stdout)
    assert [j["id"] for j in succeeded] == [job["id"]]
    assert json.loads(cli("list", "--state", "failed", "--json").stdout) == []
    assert json.loads(cli("list", "--all", "--json").stdout)[0]["id"] == job["id"]

    logs = cli("logs", job["id"])
    assert logs.exit_code == 0 and "axes ['t', 'y', 'x']" in logs.stdout
    followed = cli("logs", job["id"], "--follow")
    assert followed.exit_code == 0 and "axes ['t', 'y', 'x']" in followed.stdout

    assert_one_error_line(cli("status", "j-000000000000"), "j-000000000000")


def test_cancel_asks_then_cancels(
    cli: Run,
    dataset: np.ndarray,
    analysis_code: Path,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = write_spec(
        analysis_code.parent,
        "my_analysis:slow",
        analysis={"entrypoint": "my_analysis:slow", "params": {"seconds": 60}},
    )
    job = submit_json(cli, spec, "--code", str(analysis_code))
    wait_for(lambda: client.job(job["id"])["state"] == "running", timeout=30)

    monkeypatch.setattr(cli_app, "interactive", lambda: True)
    declined = cli("cancel", job["id"], input="n\n")
    assert declined.exit_code == 1 and "not cancelled" in declined.stderr
    assert client.job(job["id"])["state"] == "running"

    accepted = cli("cancel", job["id"], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "cancel requested" in accepted.stdout
    wait_for(lambda: client.job(job["id"])["state"] == "cancelled", timeout=30)
    assert_one_error_line(cli("cancel", job["id"], "--yes"), "already ended")


def test_cancel_without_a_terminal_does_not_ask(
    cli: Run, dataset: np.ndarray, analysis_code: Path, client: Client
) -> None:
    spec = write_spec(
        analysis_code.parent,
        "my_analysis:slow",
        analysis={"entrypoint": "my_analysis:slow", "params": {"seconds": 60}},
    )
    job = client.submit(spec, code=analysis_code)
    result = cli("cancel", job["id"], "--json")  # CliRunner's stdin is not a terminal
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == job["id"]
    wait_for(lambda: client.job(job["id"])["state"] == "cancelled", timeout=30)


# -- errors, configuration, version, server -----------------------------------------------


def test_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app, ["list"], env={"INSITU_URL": url, "INSITU_HOME": str(tmp_path)}
    )
    assert_one_error_line(result, "cannot reach the insitu server", url, "insitu server")


def test_wrong_token_and_bad_configuration(cli: Run) -> None:
    assert_one_error_line(cli("list", INSITU_TOKEN="insitu_wrong"), "unknown or revoked")
    result = cli("list", INSITU_LIMITS__MAX_RESULT_BYTES="lots")
    assert_one_error_line(result, "INSITU_LIMITS__MAX_RESULT_BYTES", "'lots'")


def test_usage_errors_exit_2(cli: Run, tmp_path: Path) -> None:
    assert cli("list", "--state", "bogus").exit_code == 2
    assert cli("submit", str(tmp_path / "missing.yaml")).exit_code == 2
    assert cli("no-such-command").exit_code == 2


def test_interrupt_exits_130_quietly(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "jobs", interrupted)
    result = cli("list")
    assert result.exit_code == 130
    assert "Traceback" not in result.output and "error" not in result.output


def test_version(cli: Run) -> None:
    result = cli("version")
    assert result.exit_code == 0 and "backend local" in result.stdout
    info = json.loads(cli("version", "--json").stdout)
    assert info["server"]["status"] == "ok"


def test_server_command_serves_and_names_the_admin_token(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "INSITU_HOME": str(tmp_path / "home"),
        "INSITU_URL": f"http://127.0.0.1:{port}",
    }
    env.pop("INSITU_TOKEN", None)
    env.pop("INSITU_DATABASE_URL", None)
    process = subprocess.Popen(
        [str(INSITU), "server", "--port", str(port), "--no-dispatcher"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        token_file = tmp_path / "home" / "admin-token"
        wait_for(token_file.exists, timeout=30)
        with Client(f"http://127.0.0.1:{port}", token_file.read_text().strip()) as api:
            wait_for(lambda: _answers(api), timeout=30)
        busy = subprocess.run(
            [str(INSITU), "server", "--port", str(port)], env=env, capture_output=True, text=True
        )
        assert busy.returncode == 1 and "Traceback" not in busy.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert str(token_file) in stderr


def _answers(api: Client) -> bool:
    try:
        return api.health()["status"] == "ok"
    except Exception:
        return False


def test_installed_script_exit_codes_and_no_traceback(
    env: dict[str, str], dataset: np.ndarray, analysis_code: Path, tmp_path: Path
) -> None:
    environ = {**os.environ, **env}

    def insitu(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(INSITU), *args], env=environ, capture_output=True, text=True, timeout=50
        )

    good = write_spec(tmp_path, "my_analysis:time_mean")
    succeeded = insitu("submit", str(good), "--code", str(analysis_code), "--wait")
    assert succeeded.returncode == 0, succeeded.stderr
    assert "succeeded" in succeeded.stdout

    bad = write_spec(tmp_path, "my_analysis:boom")
    failed = insitu("submit", str(bad), "--code", str(analysis_code), "--wait")
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert "error: the analysis raised ValueError: the threshold must be positive" in failed.stderr

    missing = insitu("status", "j-nope")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("error: job 'j-nope' does not exist")


# -- the demo ---------------------------------------------------------------------------------


def test_demo_needs_the_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["demo", "--examples", str(tmp_path)])
    assert_one_error_line(result, "source checkout")


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (EXAMPLES / "ophys" / "generate.py").exists():
        pytest.skip("examples/ophys is not in this checkout yet")
    for name in ("INSITU_URL", "INSITU_TOKEN", "INSITU_DATABASE_URL", "INSITU_WORKSPACE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INSITU_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    args = ["demo", "--frames", "200", "--size", "64", "--out", str(out)]

    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    for text in ("mean-projection", "dff-traces", "bytes scanned", "reduction", "succeeded"):
        assert text in first.stdout
    assert "200 frames of 64 x 64" in first.stderr
    for name in ("projection.png", "traces.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert (out / "mean-projection" / "provenance.json").exists()
    assert (tmp_path / "home" / "demo" / "data").is_dir()

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "reusing" in again.stderr


def test_the_kubernetes_backend_refuses_a_workspace_its_pods_cannot_reach(tmp_path: Path) -> None:
    """`insitu server --backend kubernetes` says what to set, before serving anything."""
    from insitu.backends.kubernetes_backend import check_pods_reach

    env = {"INSITU_HOME": str(tmp_path)}
    args = ["server", "--backend", "kubernetes", "--port", "0"]
    local = CliRunner().invoke(app, args, env=env)  # the default: a folder of the server's
    assert_one_error_line(local, "cannot reach the workspace file://", "INSITU_WORKSPACE_URL")
    loopback = CliRunner().invoke(
        app,
        args,
        env={
            **env,
            "INSITU_WORKSPACE_URL": "s3://insitu-results/jobs",
            "INSITU_STORAGE__ENDPOINT_URL": "http://127.0.0.1:8333",
        },
    )
    assert_one_error_line(loopback, "http://127.0.0.1:8333", "INSITU_STORAGE__ENDPOINT_URL")
    reachable = Settings(
        home=tmp_path,
        workspace_url="s3://insitu-results/jobs",
        storage={"endpoint_url": "http://seaweedfs.insitu.svc:8333"},
    )
    check_pods_reach(reachable)  # a store in the cluster: accepted
    check_pods_reach(reachable.model_copy(update={"storage": Settings().storage}))  # AWS S3
