"""Outputs that stay next to the data: OME-Zarr written by the runtime, checked by the
server, registered as derived datasets with lineage, quota and their parents' access."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from helpers import assert_one_error_line, missing, wait_for
from insitu.catalog import ArrayInfo
from insitu.cli.main import app
from insitu.client import Client
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database
from insitu.errors import AnalysisFailed, Conflict, InvalidInput, NotFound, PermissionDenied
from insitu.runtime.outputs import Output, layout, ome_attributes
from insitu.server import BackgroundServer
from insitu.services import derived

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / ".venv" / "tools" / "ome-zarr" / "bin" / "python"
PARENT = "lab/movie"

ANALYSIS = '''
import numpy as np
import insitu


def smooth(data, *, context, labels=False):
    """The movie minus its time mean, kept as an output; a threshold as labels; a summary."""
    centred = (data.astype("float32") - data.astype("float32").mean(axis=0)).astype("float32")
    out = {"centred": insitu.Output(centred), "frames": int(data.shape[0])}
    if labels:
        out["mask"] = insitu.Output((data > 2000).astype("uint32"), labels=True)
    return out


def mean(data, *, context):
    return {"mean": data.astype("float64").mean(axis=0)}


def slow_keep(data, *, context, seconds=3.0):
    import time

    time.sleep(seconds)
    return {"kept": insitu.Output(data[:4])}

'''


def validate(*paths: Path) -> list[dict[str, Any]]:
    """Each path as ome-zarr-models reads it (the model it validated as, or an error)."""
    if not VALIDATOR.exists():
        missing("ome-zarr", f"{VALIDATOR} is not installed; run 'make test' once")
    done = subprocess.run(
        [str(VALIDATOR), str(ROOT / "tests" / "ome_validate.py"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


# -- the runtime's side: layout and metadata -----------------------------------------------


def _source(**fields: Any) -> ArrayInfo:
    base = {
        "path": "0",
        "shape": [100, 512, 512],
        "dtype": "uint16",
        "chunks": [64, 128, 128],
        "axes": ["t", "y", "x"],
        "units": ["second", "micrometer", "micrometer"],
        "scale": [0.033, 0.8, 0.8],
        "zarr_format": 3,
    }
    return ArrayInfo.model_validate({**base, **fields})


def test_outputs_carry_the_input_axes_scale_and_place() -> None:
    import dask.array as da

    array = da.zeros((50, 512, 512), dtype="uint16", chunks=(50, 256, 256))
    plan = layout("corrected", Output(array), array, _source(), [(10, 60), (0, 512), (0, 512)])
    assert plan.axes == ["t", "y", "x"] and plan.units[1] == "micrometer"
    assert plan.chunks == (50, 128, 128)  # the input's chunks, clipped to the shape
    # Time is not downsampled; y and x halve until they fit in one chunk: 512 -> 256 -> 128.
    assert plan.factors == [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    assert plan.translation == pytest.approx([10 * 0.033, 0, 0])
    assert plan.level_scale(2) == pytest.approx([0.033, 3.2, 3.2])
    assert plan.level_translation(1) == pytest.approx([0.33, 0.4, 0.4])
    attrs = ome_attributes("corrected", plan, False, PARENT)["ome"]
    assert attrs["version"] == "0.5"
    assert [a["type"] for a in attrs["multiscales"][0]["axes"]] == ["time", "space", "space"]
    assert "image-label" not in attrs


def test_outputs_of_another_shape_must_name_their_axes() -> None:
    import dask.array as da

    image = da.zeros((512, 512), dtype="float32")
    with pytest.raises(AnalysisFailed, match=r"has 2 axes and the input 3; name them"):
        layout("mean", Output(image), image, _source(), [(0, 100), (0, 512), (0, 512)])
    plan = layout("mean", Output(image, axes=["y", "x"], scale=[0.8, 0.8]), image, _source(), [])
    assert plan.scale == [0.8, 0.8] and plan.units == ["micrometer", "micrometer"]
    assert plan.translation == [0.0, 0.0]
    window = layout("w", Output(image[10:40], axes=["y", "x"]), image[10:40], _source(), [])
    assert window.scale == [0.8, 0.8]
    with pytest.raises(AnalysisFailed, match="labels need an integer dtype"):
        from insitu.runtime.outputs import as_dask

        as_dask("mask", Output(image, labels=True))


# -- end to end on the local backend -----------------------------------------------------------


@pytest.fixture(autouse=True)
def users_may_run_code(settings: Settings) -> None:
    """Researchers run their own code here (the local backend trusts its operator)."""
    settings.local.allow_untrusted_code = True


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "derive_code"
    folder.mkdir()
    (folder / "derive.py").write_text(ANALYSIS)
    return folder


@pytest.fixture
def people(client: Client, server: BackgroundServer) -> Iterator[dict[str, Client]]:
    """The admin owns the private parent; rosa may read it; bob may not."""
    made = {name: client.add_user(name, "researcher") for name in ("rosa", "bob")}
    clients = {name: Client(server.url, user["token"]) for name, user in made.items()}
    clients["admin"] = client
    yield clients
    for name, api in clients.items():
        if name != "admin":
            api.close()


@pytest.fixture
def parent(client: Client, movie: tuple[Path, np.ndarray], people: dict[str, Client]) -> np.ndarray:
    client.register_dataset(PARENT, str(movie[0]), access="private")
    client.grant(PARENT, "rosa")
    return movie[1]


def derive_spec(name: str | None = "rosa/centred", **params: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": PARENT,
        "select": {"t": [10, 74]},
        "analysis": {"entrypoint": "derive:smooth", "params": params},
    }
    if name:
        spec["outputs"] = {"centred": {"name": name}}
    return spec


def run(api: Client, spec: dict[str, Any], code: Path) -> dict[str, Any]:
    job = api.submit(spec, code=code)
    return api.wait(job["id"], timeout=150)


def test_an_output_becomes_a_derived_dataset_that_the_next_job_reads(
    people: dict[str, Client], parent: np.ndarray, code: Path, settings: Settings
) -> None:
    rosa = people["rosa"]
    done = run(rosa, derive_spec(labels=True), code)
    assert done["state"] == "succeeded", done["error"]
    assert "kept 2 output(s) next to the data" in done["reason"]
    kept = {o["key"]: o for o in done["outputs"]}
    assert kept["centred"]["dataset"] == "rosa/centred"
    assert kept["mask"]["dataset"] == f"derived/{done['id']}/mask"
    # Outputs do not leave: only the small result and the provenance count as egress.
    assert done["bytes_returned"] < 4096
    assert rosa.result(done["id"], "frames") == 64

    derived = rosa.dataset("rosa/centred")
    assert derived["format"] == "ome-ngff-0.5" and derived["access"] == "private"
    assert derived["owner"] == "rosa" and derived["derived_from_job"] == done["id"]
    assert derived["size"] > 0 and derived["size"] == kept["centred"]["bytes"]
    # Each level's stored bytes, from the server's own listing of the output.
    assert set(derived["stored_bytes"]) == {a["path"] for a in derived["arrays"]}
    assert 0 < sum(derived["stored_bytes"].values()) < derived["size"]
    lineage = derived["lineage"]
    assert lineage["parents"][0]["name"] == PARENT
    assert lineage["parents"][0]["selection"] == {"t": [10, 74], "y": [0, 37], "x": [0, 29]}
    assert lineage["spec_sha256"] == done["spec_digest"] and lineage["code_bundle_sha256"]

    # Anyone with access reads it with plain zarr-python; values as NumPy computes them.
    store = zarr.open_group(derived["url"].removeprefix("file://"), mode="r")
    selected = parent[10:74].astype(np.float32)
    np.testing.assert_allclose(store["0"][:], selected - selected.mean(axis=0), atol=1e-3)
    assert store["0"].metadata.dimension_names == ("t", "y", "x")
    label_root = Path(rosa.dataset(kept["mask"]["dataset"])["url"].removeprefix("file://"))
    np.testing.assert_array_equal(
        zarr.open_group(label_root, mode="r")["0"][:], (parent[10:74] > 2000).astype(np.uint32)
    )
    models = validate(Path(derived["url"].removeprefix("file://")), label_root)
    assert [m.get("model") for m in models] == ["Image", "ImageLabel"], models

    # The next step runs on the derived dataset, and its lineage reaches back.
    second = rosa.submit(
        {"dataset": "rosa/centred", "analysis": {"entrypoint": "derive:mean"}}, code=code
    )
    second = rosa.wait(second["id"], timeout=120)
    assert second["state"] == "succeeded", second["error"]
    np.testing.assert_allclose(rosa.result(second["id"], "mean"), 0, atol=1e-3)

    runner = CliRunner()
    env = {"INSITU_URL": rosa.url, "INSITU_TOKEN": rosa.token or ""}
    shown = runner.invoke(app, ["lineage", "rosa/centred"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "rosa/centred" in shown.output and PARENT in shown.output
    assert done["id"] in shown.output and "t 10:74" in shown.output
    detail = runner.invoke(app, ["datasets", "show", "rosa/centred"], env=env)
    assert f"derived by job {done['id']}" in detail.output
    status = runner.invoke(app, ["status"], env=env)
    assert status.exit_code == 0 and "derived data" in status.output
    page = httpx.get(
        f"{rosa.url}/ui/datasets/rosa/centred", cookies={"insitu_token": rosa.token or ""}
    )
    assert page.status_code == 200, page.text
    assert (
        f'href="/ui/jobs/{done["id"]}"' in page.text
        and 'href="/ui/datasets/lab/movie"' in page.text
    )
    assert "only for those who may read every parent" in page.text

    # A name taken is refused at submit, before anything runs; so is a name outside
    # rosa's own (the institute's catalog names are its curators').
    with pytest.raises(Conflict, match="rosa/centred' exists already"):
        rosa.submit(derive_spec(), code=code)
    with pytest.raises(PermissionDenied, match=r"under your own name, e\.g\. 'rosa/session-002'"):
        rosa.submit(derive_spec("ophys/session-002"), code=code)


def test_derived_data_is_never_more_open_than_its_parent(
    people: dict[str, Client], parent: np.ndarray, code: Path
) -> None:
    rosa, bob, admin = people["rosa"], people["bob"], people["admin"]
    done = run(rosa, derive_spec(), code)
    assert done["state"] == "succeeded", done["error"]
    # Rosa shares her derived dataset with bob, who may not read the private parent.
    rosa.grant("rosa/centred", "bob")
    with pytest.raises(PermissionDenied, match=r"derived from dataset 'lab/movie'"):
        bob.dataset("rosa/centred")
    assert "rosa/centred" not in {d["name"] for d in bob.datasets()}
    with pytest.raises(PermissionDenied, match="never more open than its parents"):
        bob.submit({"dataset": "rosa/centred", "analysis": {"entrypoint": "derive:mean"}})
    rosa.set_access("rosa/centred", "public")
    with pytest.raises(PermissionDenied):
        bob.dataset("rosa/centred")
    # Only the parent's owner may release it; then its own rule decides.
    with pytest.raises(PermissionDenied, match="only the owner of 'lab/movie'"):
        rosa.release_dataset("rosa/centred")
    # Nor can rosa launder it through a second step: owning the middle dataset is not
    # owning the data it came from.
    again = rosa.submit(
        {
            "dataset": "rosa/centred",
            "analysis": {"entrypoint": "derive:smooth"},
            "outputs": {"centred": {"name": "rosa/twice"}},
        },
        code=code,
    )
    assert rosa.wait(again["id"], timeout=120)["state"] == "succeeded"
    with pytest.raises(PermissionDenied, match="only the owner of 'lab/movie'"):
        rosa.release_dataset("rosa/twice")
    admin.release_dataset("rosa/centred")
    assert bob.dataset("rosa/centred")["released"] is True
    # Bob's own lineage view names the parent but cannot open it.
    chain = bob.lineage("rosa/centred")
    assert [c["name"] for c in chain] == ["rosa/centred"]


def test_storage_quota_retention_and_deletion(
    people: dict[str, Client],
    parent: np.ndarray,
    code: Path,
    server: BackgroundServer,
    settings: Settings,
) -> None:
    """A course's participants' derived data counts against the course's storage quota, and
    expires after the course's retention period."""
    admin = people["admin"]
    course = admin.create_course(
        "summer",
        [{"name": "Cara", "email": "cara@example.org", "username": "cara"}],
        datasets=[PARENT],
        quota="storage=10MiB,course-storage=2KiB,retention=30d",
    )
    cara = Client(server.url, course["created"][0]["token"])
    done = run(cara, derive_spec("cara/centred"), code)
    assert done["state"] == "failed" and done["error_kind"] == "invalid_outputs"
    assert "over the course's storage quota of 2.0 kB" in done["error"], done["error"]
    assert not list((settings.home / "jobs" / done["id"]).glob("outputs/*")), "not kept"
    assert cara.storage() == {
        "used": 0,
        "quota": 10 << 20,
        "course": "summer",
        "course_used": 0,
        "course_quota": 2048,
    }
    assert "cara/centred" not in {d["name"] for d in cara.datasets()}

    autumn = admin.create_course(
        "autumn",
        [{"name": "Dan", "email": "dan@example.org", "username": "dan"}],
        datasets=[PARENT],
        quota="storage=10MiB,retention=30d",
    )
    dan = Client(server.url, autumn["created"][0]["token"])
    done = run(dan, derive_spec("dan/centred"), code)
    assert done["state"] == "succeeded", done["error"]
    kept = dan.dataset("dan/centred")
    expires = datetime.fromisoformat(kept["expires_at"])
    assert timedelta(days=29.9) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert dan.storage()["course_used"] == kept["size"] > 0
    database = Database(settings.resolved_database_url)
    with database.session() as session:
        # What dan's next job may write through its gateway: what his quota leaves.
        dan_user = queries.user_named(session, "dan")
        assert derived.output_room(session, dan_user, 1 << 40) == (10 << 20) - kept["size"]
        assert derived.output_room(session, dan_user, 1000) == 1000
    with database.session() as session:  # the dispatcher's sweep, a month on
        assert derived.expire(session, settings, datetime.now(UTC)) == []
        assert derived.expire(session, settings, expires + timedelta(seconds=1)) == ["dan/centred"]
    database.engine.dispose()
    assert not Path(kept["url"].removeprefix("file://")).exists()
    assert dan.storage()["course_used"] == 0
    dan.close()
    cara.close()

    rosa = people["rosa"]
    done = run(rosa, derive_spec(), code)
    assert done["state"] == "succeeded", done["error"]
    used = rosa.storage()
    assert used["used"] == done["outputs"][0]["bytes"] > 0 and used["quota"] is None
    url = rosa.dataset("rosa/centred")["url"]
    with pytest.raises(PermissionDenied, match="only its owner or an admin"):
        people["bob"].delete_dataset("rosa/centred")
    with pytest.raises(PermissionDenied, match="insitu deletes only derived datasets"):
        admin.delete_dataset(PARENT)
    rosa.delete_dataset("rosa/centred")
    assert not Path(url.removeprefix("file://")).exists()
    assert rosa.storage()["used"] == 0
    assert "rosa/centred" not in {d["name"] for d in rosa.datasets()}
    again = run(rosa, derive_spec(), code)  # the name is free again
    assert again["state"] == "succeeded", again["error"]
    cara.close()


def test_cli_says_what_is_wrong_without_a_traceback(
    people: dict[str, Client], parent: np.ndarray
) -> None:
    env = {"INSITU_URL": people["bob"].url, "INSITU_TOKEN": people["bob"].token or ""}
    result = CliRunner().invoke(app, ["lineage", PARENT], env=env)
    assert_one_error_line(result, "may not read dataset 'lab/movie'")
    result = CliRunner().invoke(app, ["datasets", "delete", "nope/none"], env=env)
    assert_one_error_line(result, "'nope/none' is not registered")


def test_outputs_a_job_forges_are_refused_and_removed(
    people: dict[str, Client], parent: np.ndarray, tmp_path: Path, settings: Settings
) -> None:
    """A job that writes its outputs folder by hand: a link to the server's files, a stray
    file, an unknown codec. None becomes a dataset, and nothing is left behind."""
    folder = tmp_path / "forge_code"
    folder.mkdir()
    (folder / "forge.py").write_text(FORGER)
    settings.limits.max_output_objects = 40  # the server reads it when it checks
    for trick, expected in (
        ("link", "symbolic link"),
        ("stray", "is not part of an output"),
        ("codec", "codecs insitu does not read"),
        ("version", "is not an OME-Zarr 0.5 image"),
        ("attributes", "is not an OME-Zarr 0.5 image"),
        ("deep", "is not JSON"),
        ("malformed", "its OME-Zarr metadata is malformed"),
        ("folders", "over the limit of 40"),
    ):
        spec = {
            "dataset": PARENT,
            "analysis": {"entrypoint": "forge:forge", "params": {"trick": trick}},
        }
        done = run(people["rosa"], spec, folder)
        assert done["state"] == "failed", (trick, done)
        assert done["error_kind"] == "invalid_outputs" and expected in done["error"], done
        assert not list((settings.home / "jobs" / done["id"]).glob("outputs/*"))
    assert not [d for d in people["rosa"].datasets() if d.get("derived_from_job")]
    # A job that writes outputs and then never ends: cancelled, nothing it wrote stays.
    stalled = people["rosa"].submit(
        {
            "dataset": PARENT,
            "analysis": {"entrypoint": "forge:forge", "params": {"trick": "stall"}},
        },
        code=folder,
    )
    outputs = settings.home / "jobs" / stalled["id"] / "outputs"
    wait_for(lambda: (outputs / "fake.ome.zarr" / "zarr.json").exists(), 60)
    people["rosa"].cancel(stalled["id"])
    assert people["rosa"].wait(stalled["id"], timeout=60)["state"] == "cancelled"
    wait_for(lambda: not list(outputs.glob("*")), 30)


FORGER = """
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import insitu

GROUP = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5"}}}


def _array(group, codecs):
    (group / "0").mkdir()
    array = {"zarr_format": 3, "node_type": "array", "shape": [1], "data_type": "uint8",
             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
             "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": codecs}
    (group / "0" / "zarr.json").write_text(json.dumps(array))


def forge(data, *, context, trick):
    # The local runner is 'python -m insitu.runtime WORKSPACE_URL': its outputs folder.
    outputs = Path(urlsplit(sys.argv[1]).path) / "outputs"
    fake = outputs / "fake.ome.zarr"
    fake.mkdir(parents=True, exist_ok=True)
    if trick == "link":
        (fake / "zarr.json").write_text(json.dumps(GROUP))
        os.symlink("/etc/passwd", fake / "stolen")
    elif trick == "stray":
        (outputs / "notes.txt").write_text("not an output")
    elif trick == "codec":
        (fake / "zarr.json").write_text(json.dumps(GROUP))
        _array(fake, [{"name": "bytes"}, {"name": "evil-codec"}])
    elif trick == "attributes":
        (fake / "zarr.json").write_text(json.dumps({**GROUP, "attributes": [1]}))
    elif trick == "deep":
        (fake / "zarr.json").write_text("[" * 200_000)
    elif trick == "malformed":
        broken = {**GROUP, "attributes": {"ome": {"version": "0.5", "multiscales": 5}}}
        (fake / "zarr.json").write_text(json.dumps(broken))
        _array(fake, [{"name": "bytes"}])
    elif trick == "folders":
        (fake / "zarr.json").write_text(json.dumps(GROUP))
        for number in range(60):
            (fake / f"d{number}").mkdir()
    elif trick == "stall":
        (fake / "zarr.json").write_text(json.dumps(GROUP))
        import time

        time.sleep(120)
    elif trick == "version":
        old = {**GROUP, "attributes": {"ome": {"version": "0.4"}}}
        (fake / "zarr.json").write_text(json.dumps(old))
    return {"real": insitu.Output(data[:8])}
"""


# -- pipelines ---------------------------------------------------------------------------------

PIPELINE = f"""
apiVersion: insitu/v1
kind: Pipeline
name: centre-then-average
steps:
  - name: centre
    dataset: {PARENT}
    select: {{t: [10, 74]}}
    analysis: {{entrypoint: derive:smooth}}
    outputs: {{centred: {{name: rosa/piped}}}}
  - name: average
    dataset: step:centre/centred
    analysis: {{entrypoint: derive:mean}}
"""


def step(dataset: str, function: str, **params: Any) -> dict[str, Any]:
    """A spec running ``derive:function`` on ``dataset``."""
    return {"dataset": dataset, "analysis": {"entrypoint": f"derive:{function}", "params": params}}


def test_a_pipeline_file_runs_its_steps_in_order_through_the_cli(
    people: dict[str, Client], parent: np.ndarray, code: Path, tmp_path: Path
) -> None:
    rosa = people["rosa"]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    env = {"INSITU_URL": rosa.url, "INSITU_TOKEN": rosa.token or ""}
    runner = CliRunner()
    result = runner.invoke(
        app, ["submit", str(pipeline), "--code", str(code), "--wait", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    centre, average = json.loads(result.stdout)
    assert centre["state"] == average["state"] == "succeeded", (centre, average)
    assert average["dataset"] == "rosa/piped"
    assert average["input"] == {
        "job": centre["id"],
        "output": "centred",
        "resolved": True,
        "dataset": "rosa/piped",
    }
    assert average["spec"]["dataset"] == f"job:{centre['id']}/centred"
    np.testing.assert_allclose(rosa.result(average["id"], "mean"), 0, atol=1e-3)
    shown = runner.invoke(app, ["status", average["id"]], env=env)
    assert f"output 'centred' of job {centre['id']} -> rosa/piped" in shown.output


def test_a_job_waits_for_its_parent_and_fails_naming_the_parents_failure(
    people: dict[str, Client], parent: np.ndarray, code: Path
) -> None:
    rosa = people["rosa"]
    slow = rosa.submit(
        {
            "dataset": PARENT,
            "analysis": {"entrypoint": "derive:slow_keep", "params": {"seconds": 30}},
        },
        code=code,
    )
    child = rosa.submit(
        {"dataset": f"job:{slow['id']}/kept", "analysis": {"entrypoint": "derive:mean"}},
        code=code,
    )
    assert child["state"] == "queued" and child["dataset"] == f"job:{slow['id']}/kept"
    assert child["input"]["resolved"] is False
    env = {"INSITU_URL": rosa.url, "INSITU_TOKEN": rosa.token or ""}
    chain = CliRunner().invoke(app, ["status"], env=env, terminal_width=200)
    assert chain.exit_code == 0, chain.output
    lines = chain.output.splitlines()
    parent_line = next(i for i, line in enumerate(lines) if slow["id"] in line)
    assert child["id"] in lines[parent_line + 1]  # the child under its parent
    assert f"reads output 'kept' of {slow['id']}" in lines[parent_line + 1]
    waiting = wait_for(
        lambda: (j := rosa.job(child["id"]))["reason"] and "running" in j["reason"] and j, 60
    )
    assert f"waiting for job {slow['id']} (running) to write its output 'kept'" in waiting["reason"]
    with pytest.raises(InvalidInput, match="does not exist yet: waiting for job"):
        rosa.plan({"dataset": f"job:{slow['id']}/kept", "analysis": {"entrypoint": "derive:mean"}})
    rosa.cancel(slow["id"])
    failed = rosa.wait(child["id"], timeout=60)
    assert failed["state"] == "failed" and failed["error_kind"] == "input_failed"
    assert f"output 'kept' of job {slow['id']}, will never exist" in failed["error"]
    assert "cancelled" in failed["error"]
    # A parent that ended already is refused at submit, saying why.
    with pytest.raises(Conflict, match="will never exist"):
        rosa.submit(
            {"dataset": f"job:{slow['id']}/kept", "analysis": {"entrypoint": "derive:mean"}}
        )

    # A parent that succeeds without the output named: the child fails saying what it has.
    quick = rosa.submit(
        {
            "dataset": PARENT,
            "analysis": {"entrypoint": "derive:slow_keep", "params": {"seconds": 2}},
        },
        code=code,
    )
    orphan = rosa.submit(
        {"dataset": f"job:{quick['id']}/other", "analysis": {"entrypoint": "derive:mean"}},
        code=code,
    )
    orphan = rosa.wait(orphan["id"], timeout=120)
    assert orphan["state"] == "failed", orphan
    assert "does not exist: the job succeeded with outputs 'kept'" in orphan["error"]


def test_pipelines_and_output_references_are_checked_before_anything_runs(
    people: dict[str, Client], parent: np.ndarray, code: Path
) -> None:
    rosa, bob = people["rosa"], people["bob"]
    backwards = {
        "kind": "Pipeline",
        "steps": [
            {"name": "a", "dataset": "step:b/x", "analysis": {"entrypoint": "derive:mean"}},
            {"name": "b", "dataset": PARENT, "analysis": {"entrypoint": "derive:mean"}},
        ],
    }
    with pytest.raises(InvalidInput, match="no earlier step is named 'b'"):
        rosa.submit_pipeline(backwards, code=code)
    broken = {
        "kind": "Pipeline",
        "steps": [
            {"name": "a", "dataset": PARENT, "analysis": {"entrypoint": "derive:smooth"}},
            {"name": "b", "dataset": "no/such", "analysis": {"entrypoint": "derive:mean"}},
        ],
    }
    with pytest.raises(NotFound, match="pipeline step 'b': dataset 'no/such' is not registered"):
        rosa.submit_pipeline(broken, code=code)
    assert rosa.jobs() == [], "nothing of a refused pipeline is submitted"
    with pytest.raises(InvalidInput, match="names a step of a pipeline file"):
        rosa.submit({"dataset": "step:a/x", "analysis": {"entrypoint": "derive:mean"}})
    mine = rosa.submit(
        {
            "dataset": PARENT,
            "analysis": {"entrypoint": "derive:slow_keep", "params": {"seconds": 1}},
        },
        code=code,
    )
    with pytest.raises(PermissionDenied, match=f"job {mine['id']} belongs to another user"):
        bob.submit({"dataset": f"job:{mine['id']}/kept", "analysis": {"entrypoint": "derive:mean"}})
    rosa.wait(mine["id"], timeout=120)


# -- on S3 (SeaweedFS) ------------------------------------------------------------------------


@pytest.mark.s3
def test_outputs_on_s3_are_kept_beside_the_data_and_read_by_the_next_job(
    s3_settings: Settings, s3_movie: tuple[str, np.ndarray], code: Path
) -> None:
    from zarr.storage import FsspecStore

    from insitu import objectstore

    server = BackgroundServer(s3_settings).start()
    try:
        with Client(server.url, s3_settings.admin_token_path.read_text().strip()) as admin:
            url, data = s3_movie
            admin.register_dataset(PARENT, url, access="private")
            done = run(admin, derive_spec("lab/centred", labels=True), code)
            assert done["state"] == "succeeded", done["error"]
            derived_set = admin.dataset("lab/centred")
            assert derived_set["url"].startswith("s3://") and "/outputs/" in derived_set["url"]
            assert derived_set["size"] == done["outputs"][0]["bytes"] > 0
            store = FsspecStore.from_url(
                derived_set["url"],
                storage_options=objectstore.platform_options(s3_settings, derived_set["url"]),
            )
            group = zarr.open_group(store, mode="r")
            selected = data[10:74].astype(np.float32)
            np.testing.assert_allclose(group["0"][:], selected - selected.mean(axis=0), atol=1e-3)
            assert group.attrs["ome"]["version"] == "0.5"

            second = admin.submit(
                {"dataset": "lab/centred", "analysis": {"entrypoint": "derive:mean"}}, code=code
            )
            second = admin.wait(second["id"], timeout=120)
            assert second["state"] == "succeeded", second["error"]
            np.testing.assert_allclose(admin.result(second["id"], "mean"), 0, atol=1e-3)
            assert admin.lineage("lab/centred")[1]["name"] == PARENT
            admin.delete_dataset("lab/centred")
            fs = objectstore.workspace(s3_settings, derived_set["url"]).fs
            fs.invalidate_cache()
            root = derived_set["url"].removeprefix("s3://")
            assert not [key for key in fs.find(root) if key.startswith(root + "/")]
    finally:
        server.stop()
