"""What the benchmarks share: synthetic data, a local S3 stack, timing and recording.

Every benchmark measures its contenders in the same run, interleaved, and records
its figures under its own key of ``docs/benchmarks.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import boto3
import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from insitu import objectstore
from insitu.config import Settings
from insitu.seaweedfs import DATA_BUCKET, SeaweedFS, embedded, weed_binary

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CACHE = ROOT / ".bench"  # generated datasets and scratch homes (git-ignored)
RESULTS_JSON = DOCS / "benchmarks.json"
MB = 1e6
T = TypeVar("T")


# -- synthetic data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Movie:
    """A synthetic 2p movie: uint16 (T, Y, X), chunked along T, zstd."""

    frames: int = 2100
    size: int = 512
    chunk_frames: int = 64

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.size, self.size)

    @property
    def chunks(self) -> tuple[int, int, int]:
        return (self.chunk_frames, self.size, self.size)

    @property
    def raw_bytes(self) -> int:
        return self.frames * self.size * self.size * 2


def synthetic_frames(movie: Movie, start: int, stop: int, seed: int = 0) -> np.ndarray:
    """Frames ``start:stop`` of a plausible 2p movie: cells on a background, shot noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: movie.size, : movie.size].astype(np.float32) / movie.size
    background = 120 + 280 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.18)
    cells = 1 + rng.integers(0, 400, size=(movie.size, movie.size))
    labels = np.where(rng.random((movie.size, movie.size)) < 0.3, cells, 0)
    activity = rng.random((movie.frames, 401), dtype=np.float32) ** 40 * 3
    activity[:, 0] = 0
    frames = np.empty((stop - start, movie.size, movie.size), dtype=np.uint16)
    noise = np.random.default_rng(seed + 1 + start)
    for i, t in enumerate(range(start, stop)):
        signal = background * (1 + activity[t][labels])
        frames[i] = signal + np.sqrt(signal) * noise.standard_normal(signal.shape, np.float32)
    return frames


def write_movie(store: Store | str | Path, movie: Movie) -> zarr.Array:
    """Write the movie chunk by chunk, zstd-compressed, and return the array."""
    array = zarr.create_array(
        store,  # type: ignore[arg-type]
        shape=movie.shape,
        chunks=movie.chunks,
        dtype="uint16",
        compressors=ZstdCodec(level=3),
        dimension_names=["t", "y", "x"],
        overwrite=True,
    )
    for start in range(0, movie.frames, movie.chunk_frames):
        stop = min(start + movie.chunk_frames, movie.frames)
        array[start:stop] = synthetic_frames(movie, start, stop)
    return array


@dataclass(frozen=True)
class Volume:
    """A synthetic EM volume: uint8 (Z, Y, X) in cubic chunks, zstd."""

    depth: int = 384
    size: int = 1024
    chunk: int = 128

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.depth, self.size, self.size)

    @property
    def raw_bytes(self) -> int:
        return self.depth * self.size * self.size


def synthetic_slab(volume: Volume, start: int, stop: int, seed: int = 0) -> np.ndarray:
    """Slices ``start:stop``: membrane-like ridges between cells, with noise (uint8)."""
    rng = np.random.default_rng(seed + start)
    zz, yy, xx = np.meshgrid(
        np.arange(start, stop, dtype=np.float32),
        np.arange(volume.size, dtype=np.float32),
        np.arange(volume.size, dtype=np.float32),
        indexing="ij",
    )
    field = np.sin(xx / 23.0 + np.sin(yy / 41.0)) * np.cos(yy / 29.0 + zz / 37.0)
    membranes = np.exp(-(field**2) / 0.02)
    image = 170 - 110 * membranes + rng.normal(0, 12, field.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_volume(store: Store | str | Path, volume: Volume) -> zarr.Array:
    """Write the volume one chunk-slab of Z at a time and return the array."""
    array = zarr.create_array(
        store,  # type: ignore[arg-type]
        shape=volume.shape,
        chunks=(volume.chunk,) * 3,
        dtype="uint8",
        compressors=ZstdCodec(level=3),
        dimension_names=["z", "y", "x"],
        overwrite=True,
    )
    for start in range(0, volume.depth, volume.chunk):
        stop = min(start + volume.chunk, volume.depth)
        array[start:stop] = synthetic_slab(volume, start, stop)
    return array


def cached(path: Path, spec: object, write: Callable[[Path], object]) -> Path:
    """Write a local store once per ``spec`` (kept in ``.bench/``; reused on later runs)."""
    marker = path / ".bench-spec"
    if marker.exists() and marker.read_text() == repr(spec):
        return path
    write(path)
    marker.write_text(repr(spec))
    return path


# -- a local S3 stack ---------------------------------------------------------------------------


@contextmanager
def s3_stack(home: Path) -> Iterator[tuple[SeaweedFS, Settings]]:
    """SeaweedFS on 127.0.0.1 with insitu's buckets and keys, and settings that use it."""
    weed_binary()
    settings = Settings(home=home, server={"port": 0})  # type: ignore[arg-type]
    server, configured = embedded(settings)
    try:
        yield server, configured
    finally:
        server.stop()


def bucket_options(server: SeaweedFS, bucket: str) -> dict[str, Any]:
    """Create ``bucket`` on a bare SeaweedFS; s3fs-style options with the server's own key."""
    options: dict[str, Any] = {
        "client_kwargs": {"endpoint_url": server.endpoint_url, "region_name": "us-east-1"},
        "key": server.credentials.access_key_id,
        "secret": server.credentials.secret_access_key,
    }
    boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=options["key"],
        aws_secret_access_key=options["secret"],
    ).create_bucket(Bucket=bucket)
    return options


def one_trusted_user(settings: Settings) -> Settings:
    """Settings for a benchmark's own server, whose one user may run uploaded code on the
    local backend (the operator's choice for a one-trusted-user host; see Trust model)."""
    local = settings.local.model_copy(update={"allow_untrusted_code": True})
    return settings.model_copy(update={"local": local})


def upload(local: Path, url: str, settings: Settings, workers: int = 16) -> int:
    """Copy a local Zarr store under an ``s3://`` URL with concurrent PUTs; return bytes."""
    client = objectstore.boto_client(settings)
    bucket, prefix = objectstore.bucket_and_key(url)
    files = store_files(local)

    def put(path: Path) -> int:
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        body = path.read_bytes()
        client.put_object(Bucket=bucket, Key=key, Body=body)
        return len(body)

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(put, files))


def data_url(name: str) -> str:
    """Where a benchmark dataset lives in the embedded store."""
    return f"s3://{DATA_BUCKET}/bench/{name}"


def store_files(path: Path) -> list[Path]:
    """The files of a local Zarr store (its objects), without the cache's own marker."""
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".bench"))


def stored_bytes(path: Path) -> int:
    """Bytes of a local store on disk (what a scan reads)."""
    return sum(p.stat().st_size for p in store_files(path))


def fetch_all(store: Store, keys: list[str], concurrency: int = 16) -> int:
    """GET every key of ``store``, ``concurrency`` at a time; return the bytes fetched."""

    async def fetch_every() -> int:
        limit = asyncio.Semaphore(concurrency)

        async def fetch(key: str) -> int:
            async with limit:
                buffer = await store.get(key, default_buffer_prototype())
                assert buffer is not None, key
                return len(buffer)

        return sum(await asyncio.gather(*(fetch(k) for k in keys)))

    return int(sync(fetch_every()))


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh home for one benchmark run under ``.bench/``, removed afterwards."""
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="insitu-bench-", dir=CACHE) as home:
        yield Path(home)


# -- timing and recording -----------------------------------------------------------------------


def timed(work: Callable[[], T]) -> tuple[float, T]:
    """Wall seconds of one call, and its value."""
    started = time.perf_counter()
    value = work()
    return time.perf_counter() - started, value


def interleaved(
    contenders: dict[str, Callable[[], float]], repeats: int, warmup: bool = True
) -> dict[str, list[float]]:
    """Seconds of each contender per run, order alternating run to run (a warm-up first)."""
    names = list(contenders)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(-1 if warmup else 0, repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            seconds = contenders[name]()
            if repeat >= 0:
                runs[name].append(seconds)
    return runs


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    weed = subprocess.run([weed_binary(), "version"], capture_output=True, text=True)
    packages = ("zarr", "obstore", "s3fs", "fsspec", "dask", "distributed", "numcodecs")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "seaweedfs": weed.stdout.strip(),
        "packages": {name: version(name) for name in packages},
    }


def goals_markdown(goals: list[dict[str, Any]]) -> list[str]:
    """A benchmark's goals as Markdown table lines: goal, target, measured, met."""
    lines = ["| goal | target | measured | met |", "|---|---:|---:|---|"]
    for goal in goals:
        met = "**yes**" if goal["met"] else "**no**"
        lines.append(f"| {goal['goal']} | {goal['target']} | {goal['measured']} | {met} |")
    return lines


def publish(key: str, result: dict[str, Any], record_it: bool) -> None:
    """Print a benchmark's result as JSON and, if asked, record it."""
    print(json.dumps(result, indent=2))
    if record_it:
        record(key, result)


def record(key: str, result: dict[str, Any], path: Path = RESULTS_JSON) -> None:
    """Store ``result`` under ``key``, keeping the other benchmarks' keys."""
    document = json.loads(path.read_text()) if path.exists() else {}
    document[key] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
