"""``python -m insitu.gateway``: one job's store gateway, started by the server's backend.

    python -m insitu.gateway --listen unix:/run/insitu/j-1/store.sock \\
        --dataset s3://data/session.zarr --workspace s3://results/jobs/j-1 \\
        --endpoint http://127.0.0.1:8333 --region us-east-1 --counts /srv/insitu/gw/j-1.json

The store credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_SESSION_TOKEN``): the gateway's, never the job's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from botocore.credentials import Credentials

from insitu.gateway.policy import Policy, Prefix
from insitu.gateway.server import Gateway, Upstream, WriteLimits, serve
from insitu.relay import Address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m insitu.gateway", description=__doc__)
    parser.add_argument("--listen", required=True, help="unix:PATH or tcp:HOST:PORT")
    parser.add_argument("--dataset", help="s3:// URL the job may read")
    parser.add_argument("--workspace", help="s3:// URL the job may read and write")
    parser.add_argument("--endpoint", required=True, help="the store's endpoint URL")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--counts", type=Path, help="where to keep the byte counts")
    parser.add_argument("--max-keys", type=int, default=10_000, help="most objects a job writes")
    parser.add_argument(
        "--max-write-bytes", type=int, default=4 << 30, help="most bytes a job writes in all"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway: %(message)s")
    try:
        listen = Address.parse(args.listen)
        policy = Policy(
            Prefix.of(args.dataset) if args.dataset else None,
            Prefix.of(args.workspace) if args.workspace else None,
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        print("the gateway needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", file=sys.stderr)
        return 2
    credentials = Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN"))
    limits = WriteLimits(max_keys=args.max_keys, max_bytes=args.max_write_bytes)
    upstream = Upstream(args.endpoint, args.region)
    gateway = Gateway(policy, upstream, lambda: credentials, args.counts, limits)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(gateway, listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
