"""The baseline: each benchmark analysis written by hand as a Dask script, no insitu.

What a researcher with direct access to the bucket would run: a ``LocalCluster`` with
the same workers as the job, ``da.from_zarr`` on zarr's ``ObjectStore``, compute, save.

    python handwritten.py WORKLOAD S3_URL OUT.npy --workers 2 --endpoint http://...

Credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from urllib.parse import urlparse

import dask.array as da
import numpy as np
import psutil
import zarr
from distributed import Client, LocalCluster
from obstore.store import S3Store


def mean_projection(data: da.Array) -> da.Array:
    return data.mean(axis=0, dtype="float64").astype("float32")


def histogram(data: da.Array) -> da.Array:
    counts, _ = da.histogram(data, bins=256, range=(0, 256))
    return counts


def downsample(data: da.Array) -> da.Array:
    factors = dict.fromkeys(range(data.ndim), 2)
    small = da.coarsen(da.mean, data.astype("float32"), factors, trim_excess=True)
    return small.round().astype("uint8")


WORKLOADS = {"mean": mean_projection, "histogram": histogram, "downsample": downsample}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args()

    parsed = urlparse(args.url)
    s3 = S3Store(
        parsed.netloc,
        prefix=parsed.path.strip("/"),
        endpoint=args.endpoint,
        region="us-east-1",
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        client_options={"allow_http": True},
    )
    # Timings for the report (not part of what a user would write).
    timings = {"startup_s": time.time() - psutil.Process().create_time()}
    mark = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0")
    with cluster, Client(cluster):
        timings["cluster_start_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        array = zarr.open_array(store=zarr.storage.ObjectStore(s3, read_only=True), mode="r")
        result = WORKLOADS[args.workload](da.from_zarr(array)).compute()
        timings["compute_s"] = time.perf_counter() - mark
    np.save(args.out, result)
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
