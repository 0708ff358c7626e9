"""Codec pipelines side by side: zarr-python's default, zarrs (Rust) and tensorstore.

One run measures, interleaved, on the 2p workload (uint16 movie, chunks of whole frames)
and the EM workload (uint8 volume in 64^3 chunks, and the same in 256^3 shards):

- ``zarr``: the runtime's reader (``insitu.runtime.reader``) held to zarr-python's default
  pipeline, over obstore, every byte counted by insitu's ``CountingStore``;
- ``zarrs``: the runtime's reader with the zarrs pipeline reading the store itself and the
  reader counting each block by the stored size of what it fetched (parts of shards are
  read by zarr's pipeline through the counting store), on objects of every size (jobs keep
  zarr's pipeline for small objects on an object store, which this measures);
- ``tensorstore``: its zarr3 driver over its own ``s3`` kvstore;
- the same three on a local directory (``--no-local`` leaves them out).

Figures: ``scan`` = a mean over axis 0 with dask's threaded scheduler in blocks of whole
chunks (or shards) up to the runtime's read-block size, MB/s of decoded data; ``raw`` =
concurrent GETs of every chunk object, MB/s of stored bytes; client CPU s/GB for both;
whether every run's result equals numpy's reference exactly.

Run ``.venv/bin/python tests/benchmarks/bench_codecs.py --record`` to update
``docs/benchmarks.json`` (key ``zarr_codecs``); ``--help`` lists the sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import boto3
import common
import dask.array as da
import numpy as np
import zarr
from common import CACHE, RESULTS_JSON, Movie, Volume, machine, store_files
from zarr.codecs import ZstdCodec

from insitu.blocks import ReadPlan
from insitu.catalog import inspect_store
from insitu.config import ReaderSettings
from insitu.runtime import engine, metering, reader
from insitu.seaweedfs import SeaweedFS
from insitu.storage import open_store

BENCHMARK = "zarr_codecs"
BUCKET = "insitu-codecs"
MB = 1e6
READER = ReaderSettings()
RAW_CONCURRENCY = 32  # GETs in flight for the raw figure (tensorstore's default limit too)
CONTENDERS = ("zarr", "zarrs", "tensorstore")
# zarrs warns that it rebuilt obstore's store in its own module (no shared connection pool).
warnings.filterwarnings("ignore", message="Successfully reconstructed a store")


@dataclass(frozen=True)
class Workload:
    """One array to read: its shape, dtype and storage layout."""

    name: str
    dtype: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None = None

    @property
    def unit(self) -> tuple[int, int, int]:
        """What one object holds: a shard, else a chunk."""
        return self.shards or self.chunks

    @property
    def raw_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def block(self, budget: int = READER.block_bytes) -> tuple[int, ...]:
        """A read block of whole objects up to ``budget`` bytes, growing the last axes first."""
        block = list(self.unit)
        itemsize = np.dtype(self.dtype).itemsize
        for axis in reversed(range(len(block))):
            other = int(np.prod(block)) // block[axis] * itemsize
            units = max(
                1, min(-(-self.shape[axis] // self.unit[axis]), budget // (other * self.unit[axis]))
            )
            block[axis] = min(self.shape[axis], units * self.unit[axis])
        return tuple(block)


@dataclass(frozen=True)
class Sizes:
    """The workloads' sizes; the defaults run in a few minutes on two cores."""

    frames: int = 2100
    frame_size: int = 512
    frames_per_chunk: int = 64
    depth: int = 256
    size: int = 1024
    chunk: int = 64
    shard: int = 256

    @property
    def movie(self) -> Movie:
        return Movie(self.frames, self.frame_size, self.frames_per_chunk)

    @property
    def volume(self) -> Volume:
        return Volume(self.depth, self.size, self.chunk)

    def workloads(self) -> list[Workload]:
        m, v = self.movie, self.volume
        return [
            Workload("2p", "uint16", m.shape, m.chunks),
            Workload("EM", "uint8", v.shape, (v.chunk,) * 3),
            Workload("EM sharded", "uint8", v.shape, (v.chunk,) * 3, (self.shard,) * 3),
        ]


# -- data: written once locally (cached), uploaded to SeaweedFS ------------------------------


def slab(sizes: Sizes, workload: Workload, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the workload's synthetic data."""
    if workload.dtype == "uint16":
        return common.synthetic_frames(sizes.movie, start, stop)
    return common.synthetic_slab(sizes.volume, start, stop)


def generate(path: Path, sizes: Sizes, workload: Workload) -> None:
    """Write the array one row of objects at a time, and numpy's mean over axis 0 beside it."""
    array = zarr.create_array(
        zarr.storage.LocalStore(path),
        shape=workload.shape,
        chunks=workload.chunks,
        shards=workload.shards,
        dtype=workload.dtype,
        compressors=ZstdCodec(level=3),
        overwrite=True,
    )
    total = np.zeros(workload.shape[1:], dtype=np.float64)
    depth = workload.unit[0]
    for start in range(0, workload.shape[0], depth):
        stop = min(start + depth, workload.shape[0])
        rows = np.concatenate(
            [slab(sizes, workload, s, min(s + 64, stop)) for s in range(start, stop, 64)]
        )
        array[start:stop] = rows
        total += rows.sum(axis=0, dtype=np.float64)  # integers: exact in any order
    np.save(path / ".bench-mean.npy", total / workload.shape[0])


def upload(local: Path, options: dict[str, Any], prefix: str) -> None:
    """PUT every object of a local store under ``s3://BUCKET/prefix``."""
    client = boto3.client(
        "s3",
        endpoint_url=options["client_kwargs"]["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=options["key"],
        aws_secret_access_key=options["secret"],
    )

    def put(path: Path) -> None:
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, store_files(local)))


# -- the contenders -----------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where an array lives, as each reader addresses it."""

    local: Path
    s3: dict[str, Any] | None = None  # bucket options for an S3 copy; None: the local copy

    @property
    def url(self) -> str:
        return f"s3://{BUCKET}/{self.local.name}" if self.s3 else self.local.as_uri()

    def counting_store(self) -> Any:
        """insitu's store, through the metering wrapper."""
        return metering.CountingStore(open_store(self.url, storage_options=self.s3))

    def kvstore(self, credentials: Path) -> dict[str, Any]:
        """tensorstore's kvstore spec: its own S3 driver, or its file driver."""
        if self.s3 is None:
            return {"driver": "file", "path": f"{self.local}/"}
        return {
            "driver": "s3",
            "bucket": BUCKET,
            "path": f"{self.local.name}/",
            "endpoint": self.s3["client_kwargs"]["endpoint_url"],
            "aws_region": "us-east-1",
            "aws_credentials": {
                "type": "profile",
                "profile": "default",
                "credentials_file": str(credentials),
                "config_file": str(credentials.with_name("aws-config")),
            },
        }


class TensorBlocks:
    """A tensorstore array as dask reads it: each block is one ``read()``."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype.numpy_dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.array[key].read().result())


def open_dask(contender: str, place: Place, workload: Workload, credentials: Path) -> da.Array:
    """The whole array as one contender reads it, in read blocks."""
    block = workload.block()
    if contender == "tensorstore":
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": place.kvstore(credentials)}
        blocks = TensorBlocks(ts.open(spec, read=True).result())
        return da.from_array(blocks, chunks=block, asarray=False, lock=False, fancy=False)
    info = inspect_store(place.url, storage_options=place.s3).arrays[0]
    ranges = [(0, n) for n in workload.shape]
    plan = ReadPlan(block=list(block), engine=contender, concurrency=READER.concurrency)
    return reader.open_selection(place.url, info, ranges, place.s3, plan=plan)


def scan(contender: str, place: Place, workload: Workload, credentials: Path) -> np.ndarray:
    """The mean over axis 0, as one contender reads the array."""
    data = open_dask(contender, place, workload, credentials)
    return data.mean(axis=0, dtype="float64").compute(scheduler="threads")


def object_keys(place: Place) -> list[str]:
    """The store key of every chunk (or shard) object."""
    return [p.relative_to(place.local).as_posix() for p in store_files(place.local / "c")]


def fetch_raw(contender: str, place: Place, keys: list[str], credentials: Path) -> int:
    """GET every object, no decoding: obstore through the wrapper, or tensorstore's S3."""
    if contender != "tensorstore":
        return common.fetch_all(place.counting_store(), keys, RAW_CONCURRENCY)
    import tensorstore as ts

    kv = ts.KvStore.open(place.kvstore(credentials)).result()
    reads = [kv.read(key) for key in keys]
    return sum(len(read.result().value) for read in reads)


def timed(work: Callable[[], Any]) -> dict[str, Any]:
    """Wall and process CPU seconds of one call (every thread, Rust and C++ ones too)."""
    metering.reset()
    started, cpu = time.perf_counter(), time.process_time()
    value = work()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "value": value, "metered": metering.snapshot()["bytes"]}


def measure(
    workload: Workload,
    places: dict[str, Place],
    reference: np.ndarray,
    repeats: int,
    credentials: Path,
) -> dict[str, list[dict[str, Any]]]:
    """Every (benchmark, contender, place): one warm-up, then ``repeats`` interleaved runs."""
    keys = object_keys(places["s3"])
    runs: dict[str, list[dict[str, Any]]] = {}
    names = [(c, p) for p in places for c in CONTENDERS]
    for repeat in range(-1, repeats):
        for contender, where in names if repeat % 2 == 0 else names[::-1]:
            place = places[where]
            run = timed(partial(scan, contender, place, workload, credentials))
            run["correct"] = bool(np.array_equal(run.pop("value"), reference))
            run["bytes"] = workload.raw_bytes
            tries = [("scan", run)]
            if where == "s3" and contender != "zarrs":  # zarrs fetches with obstore too
                raw = timed(partial(fetch_raw, contender, place, keys, credentials))
                tries.append(("raw", {**raw, "bytes": raw.pop("value")}))
            if repeat >= 0:
                for bench, result in tries:
                    runs.setdefault(f"{bench} {contender} {where}", []).append(result)
    return runs


def counted_under_zarrs(figs: dict[str, Any]) -> dict[str, Any]:
    """Whether the runtime's reader counted the same bytes with zarrs as with zarr's pipeline."""
    counted = {
        where: {c: figs[f"scan {c} {where}"]["metered_bytes"] for c in ("zarr", "zarrs")}
        for where in ("s3", "local")
        if f"scan zarr {where}" in figs
    }
    return {
        "counted": counted,
        "same_bytes": all(c["zarr"] == c["zarrs"] > 0 for c in counted.values()),
    }


def figures(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per (benchmark, contender, place)."""
    out: dict[str, Any] = {}
    for key, results in runs.items():
        rates = sorted(r["bytes"] / r["seconds"] / MB for r in results)
        out[key] = {
            "value": round(statistics.median(rates), 1),
            "unit": "MB/s",
            "runs_sorted": [round(r, 1) for r in rates],
            "client_cpu": {
                "value": round(
                    statistics.median(r["cpu"] / (r["bytes"] / 1e9) for r in results), 2
                ),
                "unit": "CPU s/GB",
            },
            "metered_bytes": int(results[0]["metered"]),
        }
        if key.startswith("scan"):
            out[key]["correct"] = all(r["correct"] for r in results)
    return out


def fastest(figs: dict[str, Any], metered_only: bool = False) -> str:
    """The contender-and-place with the highest correct scan rate."""
    scans = {
        key.removeprefix("scan "): f["value"]
        for key, f in figs.items()
        if key.startswith("scan ") and f["correct"] and (not metered_only or f["metered_bytes"] > 0)
    }
    return max(scans, key=lambda k: scans[k]) if scans else "none"


def run(
    directory: Path,
    sizes: Sizes = Sizes(),
    repeats: int = 3,
    cache: Path = CACHE / "codecs",
    local: bool = True,
) -> dict[str, Any]:
    """Start SeaweedFS under ``directory``, put each workload in it, measure every contender.

    zarrs reads objects of every size here, small ones on S3 included (jobs leave those to
    zarr's pipeline), to measure where it pays off.
    """
    threshold = reader.REMOTE_ZARRS_MIN_OBJECT_BYTES
    reader.REMOTE_ZARRS_MIN_OBJECT_BYTES = 0
    try:
        return _measure_all(directory, sizes, repeats, cache, local)
    finally:
        reader.REMOTE_ZARRS_MIN_OBJECT_BYTES = threshold


def _measure_all(
    directory: Path, sizes: Sizes, repeats: int, cache: Path, local: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with SeaweedFS(directory / "s3") as server:
        options = common.bucket_options(server, BUCKET)
        credentials = directory / "aws-credentials"
        credentials.write_text(
            f"[default]\naws_access_key_id = {options['key']}\n"
            f"aws_secret_access_key = {options['secret']}\n"
        )
        credentials.with_name("aws-config").write_text("[default]\nregion = us-east-1\n")
        for workload in sizes.workloads():
            slug = "-".join([workload.name.replace(" ", "-"), *map(str, workload.shape)])
            path = common.cached(
                cache / f"{slug}.zarr",
                (sizes, workload),
                partial(generate, sizes=sizes, workload=workload),
            )
            upload(path, options, path.name)
            places = {"s3": Place(path, options), **({"local": Place(path)} if local else {})}
            reference = np.load(path / ".bench-mean.npy")
            runs = measure(workload, places, reference, repeats, credentials)
            figs = figures(runs)
            out[workload.name] = {
                "data": {
                    **asdict(workload),
                    "read_block": list(workload.block()),
                    "objects": len(object_keys(places["s3"])),
                    "raw_bytes": workload.raw_bytes,
                    "stored_bytes": sum(
                        (path / key).stat().st_size for key in object_keys(places["s3"])
                    ),
                    "codec": "zstd level 3",
                },
                "figures": figs,
                "metering": counted_under_zarrs(figs),
                "fastest_correct": fastest(figs),
                "fastest_correct_metered": fastest(figs, metered_only=True),
            }
    engine.configure("zarr")
    info = machine()
    info["packages"] |= {name: version(name) for name in ("zarrs", "tensorstore")}
    return {
        "title": "Codec pipelines: zarr-python, zarrs and tensorstore",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "method": (
            f"SeaweedFS on 127.0.0.1, same machine; {repeats} interleaved runs per contender "
            "after one warm-up; scan = dask mean over axis 0 (threaded scheduler) in read "
            f"blocks of whole objects up to {READER.block_bytes / 2**20:.0f} MiB, MB/s of "
            f"decoded bytes; raw = {RAW_CONCURRENCY} concurrent GETs of every object, MB/s of "
            "stored bytes; medians; client CPU = this process' CPU seconds over every thread; "
            "correct = every run's mean equals numpy's exactly; zarr and zarrs are the "
            "runtime's reader (insitu.runtime.reader) with that pipeline, both metered; "
            f"reader concurrency {READER.concurrency}"
        ),
        "repeats": repeats,
        "workloads": out,
    }


def record(result: dict[str, Any], path: Path = RESULTS_JSON) -> None:
    """Store the result under this benchmark's key of ``docs/benchmarks.json``."""
    common.record(BENCHMARK, result, path)


LABELS = {
    "zarr": "insitu's reader on zarr-python's pipeline",
    "zarrs": "insitu's reader on zarrs (Rust)",
    "tensorstore": "tensorstore, its own driver",
}


def table(workload: dict[str, Any]) -> list[str]:
    """One workload's rows: every contender and place."""
    f = workload["figures"]
    rows = [
        "| contender | where | scan MB/s | / zarr, same place | scan CPU s/GB | raw GET MB/s "
        "| raw CPU s/GB | correct | metered |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for key, scan in f.items():
        if not key.startswith("scan "):
            continue
        _, contender, where = key.split(" ")
        raw = f.get(f"raw {'zarr' if contender == 'zarrs' else contender} {where}")
        raw_cells = f"{raw['value']} | {raw['client_cpu']['value']}" if raw else "- | -"
        ratio = scan["value"] / f[f"scan zarr {where}"]["value"]
        rows.append(
            f"| {LABELS[contender]} | {where} | {scan['value']} | **{ratio:.2f}x** "
            f"| {scan['client_cpu']['value']} | {raw_cells} | "
            f"{'yes' if scan['correct'] else '**no**'} | "
            f"{'yes' if scan['metered_bytes'] else 'no'} |"
        )
    return rows


def report(result: dict[str, Any]) -> str:
    """The Markdown section of ``docs/benchmarks.md``."""
    lines = [
        "## Codec pipelines: zarr-python, zarrs and tensorstore",
        "",
        f"Method: {result['method']}. zarrs' raw GETs are obstore's (the row of zarr).",
    ]
    for name, workload in result["workloads"].items():
        d, m = workload["data"], workload["metering"]["counted"]
        layout = f"shards {tuple(d['shards'])} of chunks" if d["shards"] else "chunks"
        lines += [
            "",
            f"**{name}**: {d['dtype']} {tuple(d['shape'])}, {layout} {tuple(d['chunks'])}, "
            f"{d['codec']}; {d['raw_bytes'] / 1e9:.2f} GB raw, {d['stored_bytes'] / 1e9:.2f} "
            f"GB stored in {d['objects']} objects; read blocks {tuple(d['read_block'])}.",
            "",
            *table(workload),
            "",
            f"Fastest correct: {workload['fastest_correct']}; fastest correct and metered: "
            f"{workload['fastest_correct_metered']}. Bytes the reader counted, zarr / zarrs: "
            + "; ".join(f"{where} {c['zarr']:,} / {c['zarrs']:,}" for where, c in m.items())
            + ".",
        ]
    lines += [
        "",
        "**Kept: zarrs, where it imports, metered by stored size.** zarrs decodes only stores "
        "it recognises by class name (zarr's `LocalStore`, `ObjectStore`) and fetches in "
        "Rust, past any Python wrapper, so the runtime's reader gives it the store unwrapped "
        "and counts each block by the stored size of the objects it fetched (a stat of a "
        "file, an S3 HEAD); parts of shards, whose bytes only a counting store can measure, "
        "are read by zarr-python's pipeline through the `CountingStore`, which is also the "
        "fallback where zarrs is missing (`INSITU_READER__ENGINE=zarr` forces it). "
        "On an object store each count is a HEAD, one more request per object: on small "
        "objects (64^3 uint8, 256 KiB) that costs more than zarrs saves, so jobs read arrays "
        "whose objects are under 1 MiB from an object store with zarr's pipeline "
        "(`insitu.runtime.reader.REMOTE_ZARRS_MIN_OBJECT_BYTES`). "
        "tensorstore reads with its own drivers, which the runtime cannot meter at all.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames", type=int, default=Sizes.frames, help="2p T (default %(default)s)"
    )
    parser.add_argument("--depth", type=int, default=Sizes.depth, help="EM Z (default %(default)s)")
    parser.add_argument(
        "--size", type=int, default=Sizes.size, help="EM Y = X (default %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (default 3)")
    parser.add_argument("--no-local", action="store_true", help="leave out the local directory")
    parser.add_argument(
        "--record", action="store_true", help="write the figures to docs/benchmarks.json"
    )
    args = parser.parse_args(argv)
    sizes = Sizes(frames=args.frames, depth=args.depth, size=args.size)
    with tempfile.TemporaryDirectory(prefix="insitu-bench-") as directory:
        result = run(Path(directory), sizes, args.repeats, local=not args.no_local)
    common.publish(BENCHMARK, result, args.record)
    for name, workload in result["workloads"].items():
        print(f"{name}: fastest correct {workload['fastest_correct']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
