"""The web pages' server side, attacked the way a participant would: what a job writes,
what a spec holds and what a dataset is must never make a page fail or the server read
without bound (no browser needed)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from insitu import objectstore
from insitu.catalog import ArrayInfo
from insitu.client import Client
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database
from insitu.db.models import AuditEvent
from insitu.errors import InvalidInput
from insitu.runtime.workspace import RESULTS_DIR
from insitu.server import BackgroundServer
from insitu.web import previews

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def site(
    settings: Settings, movie: tuple[Path, np.ndarray]
) -> Iterator[tuple[httpx.Client, Client]]:
    server = BackgroundServer(settings).start()
    token = settings.admin_token_path.read_text().strip()
    origin = {"Origin": server.url}
    with Client(server.url, token) as admin, httpx.Client(
        base_url=server.url, cookies={"insitu_token": token}, headers=origin, timeout=30
    ) as browser:  # fmt: skip
        admin.register_dataset("test/movie", str(movie[0]))
        yield browser, admin
    server.stop()


def test_a_result_file_that_is_not_what_its_name_says_leaves_the_page_standing(
    site: tuple[httpx.Client, Client], settings: Settings, analysis_code: Path
) -> None:
    browser, admin = site
    spec = {"dataset": "test/movie", "analysis": {"entrypoint": "my_analysis:time_mean"}}
    job = admin.wait(admin.submit(spec, code=analysis_code)["id"], timeout=90)
    assert job["state"] == "succeeded", job["error"]
    page = browser.get(f"/ui/jobs/{job['id']}")
    assert page.status_code == 200 and "Array of shape" in page.text
    workspace = objectstore.workspace(settings, f"{settings.resolved_workspace_url}/{job['id']}")
    workspace.write_bytes(f"{RESULTS_DIR}/mean.npy", b"not an array at all" * 10)
    page = browser.get(f"/ui/jobs/{job['id']}")
    assert page.status_code == 200 and "cannot be shown here; download it" in page.text
    thumbnail = browser.get(f"/ui/jobs/{job['id']}/thumbnails/mean.npy")
    assert thumbnail.status_code == 422 and "not a readable array" in thumbnail.text


def test_a_huge_table_in_a_small_file_is_shown_by_its_first_rows_only() -> None:
    rows = 20_000_000  # 160 MB of int64 decoded, a few hundred kB stored
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": pa.repeat(7, rows), "y": pa.repeat(1.5, rows)}), buffer)
    assert buffer.tell() < 2 << 20
    columns, head, count = previews.table_head(buffer.getvalue())
    assert columns == ["x", "y"] and count == rows and len(head) == previews.TABLE_ROWS


def test_a_spec_nested_to_break_the_parser_is_an_error_on_the_page(
    site: tuple[httpx.Client, Client],
) -> None:
    browser, _ = site
    deep = "a: " + "[" * 5000 + "]" * 5000
    answer = browser.post("/ui/plan", data={"spec_text": deep, "action": "plan"})
    assert answer.status_code == 422 and "nested deeper than 32 levels" in answer.text
    big = "dataset: x\n# " + "y" * (300 * 1024)
    answer = browser.post("/ui/plan", data={"spec_text": big, "action": "plan"})
    assert answer.status_code == 422 and "limit of 262,144" in answer.text


def test_previews_are_refused_where_they_would_read_too_much_or_there_is_no_plane(
    site: tuple[httpx.Client, Client], tmp_path: Path
) -> None:
    huge = ArrayInfo(path="0", shape=[100_000, 100_000, 100_000], dtype="uint8",
                     chunks=[1, 4096, 4096], axes=["z", "y", "x"], zarr_format=3)  # fmt: skip
    with pytest.raises(InvalidInput, match="multiscale pyramid"):
        previews.middle_plane(huge)
    browser, admin = site
    series = tmp_path / "series.zarr"
    zarr.create_array(series, shape=(1000,), chunks=(100,), dtype="float32")[:] = 1.0
    admin.register_dataset("test/series", str(series))
    page = browser.get("/ui/datasets/test/series")
    assert page.status_code == 200 and "preview.png" not in page.text
    picture = browser.get("/ui/datasets/test/series/preview.png")
    assert picture.status_code == 422 and "fewer than two" in picture.text


def test_a_dataset_owner_sees_only_what_was_done_with_their_datasets(
    db: Database, settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    from fakes import make_world

    world = make_world(db, settings, movie[0])
    job = world.submit()
    with db.session() as session:
        add = queries.add_audit
        add(session, None, "course.create", "test/movie", detail="a course of the same name")
        add(session, None, "user.add", "test/movie")
        add(session, None, "result.download", f"{job.id}/mean.npy", nbytes=10)
        add(session, None, "result.download", "j-000000000000/mean.npy", nbytes=10)
        add(session, None, "dataset.grant", "test/movie", detail="to bob")
        session.commit()
        seen = queries.audit_of_datasets(session, ["test/movie"])
        actions = sorted((e.action, e.target) for e in seen)
        assert ("course.create", "test/movie") not in actions
        assert ("user.add", "test/movie") not in actions
        assert ("result.download", f"{job.id}/mean.npy") in actions
        assert ("result.download", "j-000000000000/mean.npy") not in actions
        assert ("dataset.grant", "test/movie") in actions
        assert ("job.submit", job.id) in actions
        assert all(isinstance(e, AuditEvent) for e in seen)
