"""The two example pipelines end to end through the CLI, checked against ground truth.

Two-photon: a movie with known per-frame shifts, neuropil and shot noise; motion
correction must recover the shifts within 0.5 px, and the cells found in the corrected
movie must lie on the true cells. EM: connected components across chunk boundaries must
give exactly the partition ``scipy.ndimage.label`` gives on the whole volume. Both on the
local store and on S3 (SeaweedFS).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage
from typer.testing import CliRunner

from helpers import example_module, missing
from insitu import objectstore
from insitu.cli.main import app
from insitu.client import Client
from insitu.config import Settings
from insitu.seaweedfs import DATA_BUCKET
from insitu.server import BackgroundServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / ".venv" / "tools" / "ome-zarr" / "bin" / "python"
THRESHOLD = 150  # examples/em/jobs/pipeline.yaml


@pytest.fixture(autouse=True)
def installed_examples(settings: Settings) -> None:
    """The example analyses run as uploaded code on the local backend (its admin's)."""
    settings.local.installed_analyses = ["ophys_analyses", "em_analyses"]


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("ophys") / "session.ome.zarr"
    truth = example_module("ophys").generate_movie(
        path,
        frames=600,
        height=128,
        width=128,
        n_cells=25,
        chunks=(100, 128, 128),
        motion=4.0,
        neuropil=0.3,
        seed=3,
    )
    return path, truth


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("em") / "volume.ome.zarr"
    example_module("em").generate_volume(
        path, shape=(100, 150, 170), chunks=(32, 64, 64), n_cells=40, seed=1
    )
    return path, np.asarray(zarr.open_array(path / "0", mode="r")[:])


def submit_pipeline(api: Client, example: str) -> list[dict[str, Any]]:
    """``insitu submit examples/EXAMPLE/jobs/pipeline.yaml --code examples/EXAMPLE --wait``."""
    env = {"INSITU_URL": api.url, "INSITU_TOKEN": api.token or ""}
    result = CliRunner().invoke(
        app,
        [
            "submit",
            str(ROOT / "examples" / example / "jobs" / "pipeline.yaml"),
            "--code",
            str(ROOT / "examples" / example),
            "--wait",
            "--json",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    jobs: list[dict[str, Any]] = json.loads(result.stdout)
    assert all(job["state"] == "succeeded" for job in jobs), jobs
    return jobs


def store_of(api: Client, settings: Settings, name: str) -> zarr.Group:
    """A derived dataset opened with plain zarr-python, as anyone granted access would."""
    url = api.dataset(name)["url"]
    if url.startswith("file://"):
        return zarr.open_group(url.removeprefix("file://"), mode="r")
    from zarr.storage import FsspecStore

    options = objectstore.platform_options(settings, url)
    return zarr.open_group(FsspecStore.from_url(url, storage_options=options), mode="r")


def validate_locally(api: Client, *names: str) -> None:
    """ome-zarr-models reads each (local) derived dataset as an OME-Zarr image or labels."""
    if not VALIDATOR.exists():
        missing("ome-zarr", f"{VALIDATOR} is not installed; run 'make test' once")
    paths = [api.dataset(n)["url"].removeprefix("file://") for n in names]
    done = subprocess.run(
        [str(VALIDATOR), str(ROOT / "tests" / "ome_validate.py"), *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    models = [json.loads(line) for line in done.stdout.splitlines()]
    assert all("model" in m for m in models), models


def check_ophys(
    api: Client, settings: Settings, truth: dict[str, Any], jobs: list[dict[str, Any]]
) -> None:
    correct, traces = jobs
    assert traces["input"]["dataset"] == "ophys/session-001/corrected"
    # The shifts, within half a pixel of the truth (up to the reference's own offset).
    shifts = api.result(correct["id"], "shifts")[["dy", "dx"]].to_numpy()
    true = np.asarray(truth["shifts"])
    offset = np.median(shifts - true, axis=0)
    assert np.abs(offset).max() < 1.5, offset
    error = np.abs(shifts - true - offset)
    assert error.max() <= 0.5, f"largest shift error {error.max():.3f} px"
    # The corrected movie stayed next to the data: as large as the input, never returned.
    corrected = store_of(api, settings, "ophys/session-001/corrected")
    assert corrected["0"].shape == (600, 128, 128) and corrected["0"].dtype == np.uint16
    assert correct["bytes_returned"] < 1 << 20 < correct["outputs"][0]["bytes"]
    # The cells found lie on the true cells, and most true cells are found.
    labels = np.asarray(api.result(traces["id"], "rois"))
    cells = truth["labels"]
    ids = np.unique(labels[labels > 0])
    on_cells = [((labels == i) & (cells > 0)).sum() / (labels == i).sum() for i in ids]
    assert len(ids) >= 10 and np.mean(np.asarray(on_cells) > 0.5) >= 0.8, on_cells
    found = [((labels > 0) & (cells == c)).sum() > 0.3 * (cells == c).sum() for c in range(1, 26)]
    assert np.mean(found) >= 0.8, found
    table = api.result(traces["id"], "traces")
    assert isinstance(table, pd.DataFrame) and table.shape == (600, len(ids))
    assert api.result(traces["id"], "correlation_image").startswith(b"\x89PNG")
    rois = store_of(api, settings, "ophys/session-001/rois")
    np.testing.assert_array_equal(rois["0"][:], labels)
    assert "image-label" in rois.attrs["ome"]
    chain = [entry["name"] for entry in api.lineage("ophys/session-001/rois")]
    assert chain == ["ophys/session-001/rois", "ophys/session-001/corrected", "ophys/session-001"]


def check_em(
    api: Client, settings: Settings, volume: np.ndarray, jobs: list[dict[str, Any]]
) -> None:
    segment, sizes = jobs
    expected, count = ndimage.label(volume > THRESHOLD)
    labels = store_of(api, settings, "em/volume-001/cells")["0"][:]
    assert api.result(segment["id"], "count") == count
    # The same partition: every object of scipy's is exactly one of ours, and back.
    inside = expected > 0
    np.testing.assert_array_equal(labels > 0, inside)
    pairs = np.unique(np.stack([labels[inside], expected[inside]]), axis=1)
    assert pairs.shape[1] == count == len(np.unique(labels[inside]))
    objects = api.result(segment["id"], "objects")
    ours = dict(zip(pairs[1], pairs[0], strict=True))  # scipy's id -> ours
    slices = ndimage.find_objects(expected)
    centres = ndimage.center_of_mass(inside, expected, range(1, count + 1))
    voxels = np.bincount(expected.ravel())
    for theirs in np.random.default_rng(0).choice(np.arange(1, count + 1), 50, replace=False):
        row = objects.loc[ours[theirs]]
        assert row["voxels"] == voxels[theirs]
        box = slices[theirs - 1]
        assert [row[f"{a}_min"] for a in "zyx"] == [s.start for s in box]
        assert [row[f"{a}_max"] for a in "zyx"] == [s.stop - 1 for s in box]
        np.testing.assert_allclose([row[f"centroid_{a}"] for a in "zyx"], centres[theirs - 1])
    # The next step read the label volume: its sizes are the objects'.
    table = api.result(sizes["id"], "sizes").set_index("id")["voxels"]
    assert table.sort_index().tolist() == objects["voxels"].sort_index().tolist()


def test_both_pipelines_on_the_local_store(
    client: Client,
    settings: Settings,
    movie: tuple[Path, dict[str, Any]],
    volume: tuple[Path, np.ndarray],
) -> None:
    client.register_dataset("ophys/session-001", str(movie[0]))
    client.register_dataset("em/volume-001", str(volume[0]))
    check_ophys(client, settings, movie[1], submit_pipeline(client, "ophys"))
    check_em(client, settings, volume[1], submit_pipeline(client, "em"))
    validate_locally(
        client, "ophys/session-001/corrected", "ophys/session-001/rois", "em/volume-001/cells"
    )


@pytest.mark.s3
def test_both_pipelines_on_s3(
    s3_settings: Settings,
    movie: tuple[Path, dict[str, Any]],
    volume: tuple[Path, np.ndarray],
) -> None:
    s3_settings.local.installed_analyses = ["ophys_analyses", "em_analyses"]
    fs = objectstore.workspace(s3_settings, f"s3://{DATA_BUCKET}/examples").fs
    for name, local in (("session.ome.zarr", movie[0]), ("volume.ome.zarr", volume[0])):
        fs.put(str(local), f"{DATA_BUCKET}/examples/{name}", recursive=True)
    server = BackgroundServer(s3_settings).start()
    try:
        with Client(server.url, s3_settings.admin_token_path.read_text().strip()) as api:
            api.register_dataset(
                "ophys/session-001", f"s3://{DATA_BUCKET}/examples/session.ome.zarr"
            )
            api.register_dataset("em/volume-001", f"s3://{DATA_BUCKET}/examples/volume.ome.zarr")
            check_ophys(api, s3_settings, movie[1], submit_pipeline(api, "ophys"))
            check_em(api, s3_settings, volume[1], submit_pipeline(api, "em"))
            assert api.dataset("em/volume-001/cells")["url"].startswith("s3://")
    finally:
        server.stop()
