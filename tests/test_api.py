"""The REST API: status codes and messages for good and bad requests; nothing lost on errors."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from insitu.client import Client
from insitu.config import Settings
from insitu.db.engine import Database
from insitu.runtime import bundle
from insitu.server import BackgroundServer
from insitu.services.auth import Role, create_user
from insitu.services.bundles import BundleStore

pytestmark = pytest.mark.timeout(60)
DATASET = "lab/movie-01"


@pytest.fixture
def http(server: BackgroundServer, settings: Settings) -> httpx.Client:
    token = settings.admin_token_path.read_text().strip()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as api:
        yield api  # type: ignore[misc]


@pytest.fixture
def registered(http: httpx.Client, movie: tuple[Path, np.ndarray]) -> dict[str, Any]:
    response = http.post("/v1/datasets", json={"name": DATASET, "url": str(movie[0])})
    assert response.status_code == 201, response.text
    return dict(response.json())


def job_spec(**fields: Any) -> dict[str, Any]:
    return {"dataset": DATASET, "analysis": {"entrypoint": "my_analysis:time_mean"}, **fields}


def count_jobs(http: httpx.Client) -> int:
    return int(http.get("/v1/jobs").json()["count"])


def test_health_and_docs(http: httpx.Client) -> None:
    health = http.get("/healthz").json()
    assert health["status"] == "ok" and health["database"] == "sqlite"
    paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/logs",
        "/v1/jobs/{job_id}/results/{filename}",
        "/v1/datasets",
        "/v1/bundles",
    ):
        assert path in paths
    assert http.get("/docs").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer insitu_not-a-real-token"}])
def test_requests_without_a_valid_token_are_refused(
    server: BackgroundServer, headers: dict[str, str]
) -> None:
    response = httpx.get(f"{server.url}/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert "token" in response.json()["detail"]


def test_datasets_register_list_show(http: httpx.Client, registered: dict[str, Any]) -> None:
    assert registered["name"] == DATASET
    assert registered["arrays"][0]["axes"] == ["t", "y", "x"]
    assert registered["arrays"][0]["chunks"] == [32, 16, 16]
    listed = http.get("/v1/datasets").json()
    assert listed["count"] == 1 and listed["data"][0]["name"] == DATASET
    shown = http.get(f"/v1/datasets/{DATASET}").json()
    assert shown["version"] == registered["version"]


def test_dataset_errors_leave_the_catalog_unchanged(
    http: httpx.Client, registered: dict[str, Any], tmp_path: Path
) -> None:
    again = http.post("/v1/datasets", json={"name": DATASET, "url": registered["url"]})
    assert again.status_code == 409 and "already registered" in again.json()["detail"]
    missing = tmp_path / "nowhere.zarr"
    response = http.post("/v1/datasets", json={"name": "lab/none", "url": str(missing)})
    assert response.status_code == 422 and str(missing) in response.json()["detail"]
    bad_name = http.post("/v1/datasets", json={"name": "Bad Name!", "url": registered["url"]})
    assert bad_name.status_code == 422 and "ophys/session-001" in bad_name.json()["detail"]
    scheme = http.post("/v1/datasets", json={"name": "lab/ftp", "url": "ftp://host/x.zarr"})
    assert scheme.status_code == 422 and "ftp" in scheme.json()["detail"]
    unknown = http.get("/v1/datasets/lab/unknown")
    assert unknown.status_code == 404 and "lab/unknown" in unknown.json()["detail"]
    assert http.get("/v1/datasets").json()["count"] == 1


@pytest.mark.parametrize(
    ("spec", "status", "words"),
    [
        (job_spec(resources={"wrkers": 2}), 422, ["spec.resources.wrkers", "unknown field"]),
        (job_spec(resources={"workers": "many"}), 422, ["resources.workers", "valid integer"]),
        (job_spec(select={"t": "all"}), 422, ["select.t"]),
        (job_spec(select={"z": [0, 4]}), 422, ["'z'", "t, y, x"]),
        (job_spec(select={"t": [0, 500]}), 422, ["select.t", "length 90"]),
        (job_spec(select={"t": [10, 5]}), 422, ["empty range"]),
        (job_spec(dataset="lab/unknown"), 404, ["lab/unknown", "not registered"]),
        (job_spec(array="9"), 422, ["array '9'"]),
        (job_spec(resources={"workers": 99}), 422, ["resources.workers = 99", "maximum of 8"]),
        (job_spec(limits={"timeout": "3 weeks"}), 422, ["duration"]),
        ("dataset: [unclosed\nanalysis: {", 422, ["not valid YAML", "line"]),
        ("just a string", 422, ["mapping"]),
    ],
)
def test_bad_submissions_are_refused_and_nothing_is_queued(
    http: httpx.Client, registered: dict[str, Any], spec: Any, status: int, words: list[str]
) -> None:
    before = count_jobs(http)
    response = http.post("/v1/jobs", json={"spec": spec})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    assert count_jobs(http) == before


def test_unknown_bundle_is_refused(http: httpx.Client, registered: dict[str, Any]) -> None:
    response = http.post("/v1/jobs", json={"spec": job_spec(), "code_bundle": "0" * 64})
    assert response.status_code == 404 and "upload it first" in response.json()["detail"]
    response = http.post("/v1/jobs", json={"spec": job_spec(), "code_bundle": "nothex"})
    assert response.status_code == 422
    assert count_jobs(http) == 0


def _tar(members: list[tarfile.TarInfo], payload: bytes = b"x = 1\n") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 6) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    return info


def test_bundle_upload_is_content_addressed(http: httpx.Client) -> None:
    data = _tar([_member("my_analysis.py")])
    response = http.post("/v1/bundles", content=data)
    assert response.status_code == 201
    assert response.json()["digest"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not a tarball", "not a readable .tar.gz"),
        (_tar([_member("../escape.py")]), "outside the bundle"),
        (_tar([_member("/etc/cron.d/x")]), "outside the bundle"),
        (_tar([_member("link", tarfile.SYMTYPE)]), "link or device"),
        (_tar([_member("hard", tarfile.LNKTYPE)]), "link or device"),
        (_tar([_member("dev", tarfile.CHRTYPE)]), "link or device"),
        (_tar([_member("fifo", tarfile.FIFOTYPE)]), "link or device"),
    ],
)
def test_unsafe_bundles_are_refused(http: httpx.Client, data: bytes, words: str) -> None:
    response = http.post("/v1/bundles", content=data)
    assert response.status_code == 422
    assert words in response.json()["detail"]


def test_oversized_bundle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSITU_LIMITS__MAX_CODE_BUNDLE_BYTES", "1KiB")
    settings = Settings(home=tmp_path / "home", server={"port": 0})  # type: ignore[arg-type]
    server = BackgroundServer(settings, run_dispatcher=False).start()
    try:
        token = settings.admin_token_path.read_text().strip()
        response = httpx.post(
            f"{server.url}/v1/bundles",
            content=np.random.bytes(4096),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert (
            response.status_code == 413 and "over the limit of 1,024" in response.json()["detail"]
        )
    finally:
        server.stop()


def test_job_lifecycle_over_http(
    http: httpx.Client, client: Client, registered: dict[str, Any], analysis_code: Path
) -> None:
    job = client.submit(job_spec(), code=analysis_code)
    done = client.wait(job["id"], timeout=60)
    assert done["state"] == "succeeded", done["error"]
    job_id = job["id"]

    assert http.get("/v1/jobs", params={"state": "succeeded"}).json()["count"] == 1
    assert http.get("/v1/jobs", params={"state": "queued"}).json()["count"] == 0
    events = http.get(f"/v1/jobs/{job_id}/events").json()
    assert (
        events["data"][0]["to_state"] == "queued" and events["data"][-1]["to_state"] == "succeeded"
    )

    first = http.get(f"/v1/jobs/{job_id}/logs", params={"offset": 0}).json()
    assert first["text"] and first["next_offset"] == len(first["text"].encode())
    rest = http.get(f"/v1/jobs/{job_id}/logs", params={"offset": first["next_offset"]}).json()
    assert rest["text"] == "" and rest["complete"] is True

    results = http.get(f"/v1/jobs/{job_id}/results").json()["data"]
    mean = next(r for r in results if r["key"] == "mean")
    download = http.get(f"/v1/jobs/{job_id}/results/{mean['filename']}")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == mean["sha256"]
    assert np.load(io.BytesIO(download.content)).shape == (37, 29)
    assert http.get(f"/v1/jobs/{job_id}/results/provenance.json").json()["job_id"] == job_id
    missing = http.get(f"/v1/jobs/{job_id}/results/raw.npy")
    assert missing.status_code == 404 and "mean.npy" in missing.json()["detail"]

    cancel = http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancel.status_code == 409 and "already ended" in cancel.json()["detail"]
    assert http.get("/v1/jobs/j-000000000000").status_code == 404


def test_cancel_a_queued_job_at_once(settings: Settings, movie: tuple[Path, np.ndarray]) -> None:
    server = BackgroundServer(settings, run_dispatcher=False).start()  # nothing will run it
    try:
        token = settings.admin_token_path.read_text().strip()
        with Client(server.url, token) as api:
            api.register_dataset(DATASET, str(movie[0]))
            job = api.submit(job_spec())
            assert api.cancel(job["id"])["state"] == "cancelled"
            states = [e["to_state"] for e in api.events(job["id"])]
            assert states == ["queued", "cancelled"]
            results = api.results(job["id"])
            assert results == []
    finally:
        server.stop()


def test_a_relative_home_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, analysis_code: Path
) -> None:
    """INSITU_HOME=.insitu works: job processes and bundles never depend on the cwd."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INSITU_HOME", "relative-home")
    settings = Settings()
    assert settings.home == tmp_path / "relative-home"
    settings.ensure_home()
    db = Database(settings.resolved_database_url)
    db.migrate()
    with db.session() as session:
        owner, _ = create_user(session, "ada", Role.ADMIN)
        digest, _ = BundleStore(settings).put(session, owner, bundle.pack(analysis_code))
    assert (tmp_path / "relative-home" / "bundles" / f"{digest}.tar.gz").exists()
