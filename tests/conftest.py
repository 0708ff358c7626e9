"""Fixtures: isolated homes and settings, both databases, a live server and its client."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

from helpers import missing, require_seaweedfs
from insitu import objectstore
from insitu.client import Client
from insitu.config import Settings
from insitu.db.engine import Database
from insitu.seaweedfs import DATA_BUCKET, SeaweedFS, embedded
from insitu.server import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
for example in ("ophys", "em"):  # the analyses packages: ophys_analyses, em_analyses
    sys.path.insert(0, str(EXAMPLES / example))

POSTGRES_ADMIN_URL = os.environ.get(
    "INSITU_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for an isolated insitu home with a fast dispatcher."""
    home = tmp_path / "home"
    monkeypatch.setenv("INSITU_HOME", str(home))
    for name in ("INSITU_URL", "INSITU_TOKEN", "INSITU_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return Settings(
        home=home,
        server={"port": 0},  # type: ignore[arg-type]
        dispatcher={"poll_interval": 0.05, "id": f"test-{uuid.uuid4().hex[:6]}"},  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The URL of the test PostgreSQL server (fails under INSITU_REQUIRE=postgres if absent)."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        missing("postgres", f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {exc}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"insitu_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """Each data-layer test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        settings.ensure_home()
        return settings.resolved_database_url
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database (SQLite or PostgreSQL)."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def server(settings: Settings) -> Iterator[BackgroundServer]:
    """A live insitu server (API and dispatcher, local backend) on a free port."""
    background = BackgroundServer(settings).start()
    yield background
    background.stop()


@pytest.fixture
def client(server: BackgroundServer, settings: Settings) -> Iterator[Client]:
    """An admin client of the live server."""
    token = settings.admin_token_path.read_text().strip()
    with Client(server.url, token) as api:
        yield api


@pytest.fixture
def movie(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A small (t, y, x) uint16 Zarr v3 array whose shape does not divide into its chunks."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 4000, size=(90, 37, 29), dtype=np.uint16)
    path = tmp_path / "movie.zarr"
    array = zarr.create_array(
        path, shape=data.shape, chunks=(32, 16, 16), dtype="uint16", dimension_names=["t", "y", "x"]
    )
    array[:] = data
    return path, data


@pytest.fixture
def analysis_code(tmp_path: Path) -> Path:
    """A user's own analysis module, to upload with ``--code``."""
    code = tmp_path / "my_analysis"
    code.mkdir()
    (code / "my_analysis.py").write_text(
        '''
import numpy as np


def time_mean(data, *, context, scale=1.0):
    """Mean over time, times a scale; and the selection it saw."""
    context.log(f"axes {context.axes}, shape {data.shape}")
    axis = context.axis("t")
    return {
        "mean": (data.astype("float64").mean(axis=axis) * scale),
        "selection": {k: list(v) for k, v in context.selection.items()},
    }


def raw(data, *, context):
    """Tries to return its whole input."""
    return {"raw": data}


def raw_eager(data, *, context):
    """Tries to return its whole input, computed inside the analysis."""
    return {"raw": np.asarray(data.compute())}


def boom(data, *, context):
    raise ValueError("the threshold must be positive")


def env_probe(data, *, context):
    """What the job's process can see of credentials."""
    import os

    return {
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "private": sorted(
            k for k in os.environ if k.startswith(("INSITU_STORAGE__", "INSITU_DATABASE"))
        ),
        "mean": data.mean(),
    }


def keep(data, *, context):
    """Twice the movie, kept next to the data as a derived dataset; and a small answer."""
    import insitu

    return {"doubled": insitu.Output(data.astype("float32") * 2), "frames": int(data.shape[0])}


def slow(data, *, context, seconds=60):
    import time

    time.sleep(seconds)
    return {"done": True}
'''
    )
    return code


# -- Docker: the engine and the example's analysis image, built once a session ------------


@pytest.fixture(scope="session")
def engine() -> Any:
    """The Docker engine (fails under INSITU_REQUIRE=docker when there is none)."""
    import dockerlab

    return dockerlab.engine()


@pytest.fixture(scope="session")
def ophys_image(engine: Any) -> Any:
    """The ophys example's image on the Debian base, built as a user would."""
    import dockerlab
    from insitu import images

    return images.build(
        engine,
        dockerlab.ROOT / "examples" / "ophys",
        dockerlab.OPHYS_IMAGE,
        build_args={"BASE_IMAGE": dockerlab.debian_base()},
        ca_bundle=dockerlab.ca_bundle(),
    )


# -- a real S3 server (SeaweedFS), shared by a test module --------------------------------


@pytest.fixture(scope="module")
def s3_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedFS, Settings]]:
    """One SeaweedFS for the module, with the embedded server's buckets and keys."""
    require_seaweedfs()
    home = tmp_path_factory.mktemp("s3home")
    server, configured = embedded(Settings(home=home, server={"port": 0}))  # type: ignore[arg-type]
    yield server, configured
    server.stop()


@pytest.fixture
def s3_settings(s3_home: tuple[SeaweedFS, Settings], settings: Settings) -> Settings:
    """The test's own home and database, with storage on the shared SeaweedFS."""
    _, configured = s3_home
    return settings.model_copy(
        update={"storage": configured.storage, "workspace_url": configured.workspace_url}
    )


@pytest.fixture
def s3_movie(s3_settings: Settings, movie: tuple[Path, np.ndarray]) -> tuple[str, np.ndarray]:
    """The test movie copied into the data bucket under a unique prefix."""
    url = f"s3://{DATA_BUCKET}/{uuid.uuid4().hex[:8]}/movie.zarr"
    source = zarr.open_array(movie[0], mode="r")
    store = FsspecStore.from_url(
        url, storage_options=objectstore.platform_options(s3_settings, url), read_only=False
    )
    target = zarr.create_array(
        store,
        shape=source.shape,
        chunks=source.chunks,
        dtype=source.dtype,
        dimension_names=["t", "y", "x"],
    )
    target[:] = movie[1]
    return url, movie[1]
