"""``python -m insitu.gateway``: one job's store gateway, started by the server's backend.

    python -m insitu.gateway --listen unix:/run/insitu/j-1/store.sock \\
        --dataset s3://data/session.zarr --workspace s3://results/jobs/j-1 \\
        --endpoint http://127.0.0.1:8333 --region us-east-1 --counts /srv/insitu/gw/j-1.json

The store credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_SESSION_TOKEN``): the gateway's, never the job's.
Without them the gateway uses botocore's own credential chain (an instance profile, a
pod's web identity), which refreshes itself: a long job never outlives its signer's keys.

A warm sandbox's gateway starts before its job is known: ``--await-config FILE`` makes it
import everything, then wait for the server to write FILE (a JSON object with ``dataset``,
``workspace``, ``counts``, ``max_write_bytes`` and optionally ``credentials``), read and
delete it, and only then listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
from botocore.credentials import Credentials

from insitu.gateway.policy import Policy, Prefix
from insitu.gateway.server import Gateway, Upstream, WriteLimits, serve
from insitu.relay import Address
from insitu.runtime.workspace import OUTPUTS_DIR

CONFIG_POLL = 0.01  # seconds between looks for an awaited config
CONFIG_SETTLE = 5.0  # seconds a config that does not parse yet may take to be written whole


class GatewayConfigError(ValueError):
    """The gateway was started with something it cannot work with."""


def signer(values: dict[str, str]) -> Callable[[], Any]:
    """What signs requests: the keys given, else botocore's refreshing credential chain."""
    key, secret = values.get("AWS_ACCESS_KEY_ID"), values.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        fixed = Credentials(key, secret, values.get("AWS_SESSION_TOKEN"))
        return lambda: fixed
    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise GatewayConfigError(
            "the gateway found no store credentials: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run it where botocore finds a role"
        )
    return found.get_frozen_credentials  # refreshed by botocore before they expire


def await_config(path: Path) -> dict[str, Any]:
    """Wait for the server to write ``path``; read it and delete it (it holds keys).

    A file caught mid-write (empty or cut short) is read again until it parses, for up to
    ``CONFIG_SETTLE`` seconds; the server writes it atomically, a hand-started one may not.
    """
    unreadable_since: float | None = None
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            time.sleep(CONFIG_POLL)
            continue
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            now = time.monotonic()
            unreadable_since = now if unreadable_since is None else unreadable_since
            if now - unreadable_since < CONFIG_SETTLE:
                time.sleep(CONFIG_POLL)
                continue
            path.unlink(missing_ok=True)
            raise GatewayConfigError(f"{path} does not hold JSON: {exc}") from exc
        path.unlink(missing_ok=True)
        if not isinstance(config, dict):
            raise GatewayConfigError(f"{path} does not hold a JSON object")
        return config


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
    parser.add_argument(
        "--max-output-objects",
        type=int,
        default=0,
        help="most objects a job's outputs (under outputs/ of its workspace) may take",
    )
    parser.add_argument(
        "--await-config", type=Path, help="wait for this JSON file to learn the job (warm pool)"
    )
    parser.add_argument(
        "--admin-token-env",
        help="environment variable holding the token of the server's /_insitu/ endpoints "
        "(counts and seal), for servers that cannot read --counts",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway: %(message)s")
    values: dict[str, str] = dict(os.environ)
    try:
        if args.await_config is not None:
            config = await_config(args.await_config)
            args.dataset, args.workspace = config.get("dataset"), config.get("workspace")
            args.counts = Path(config["counts"]) if config.get("counts") else None
            args.max_write_bytes = int(config.get("max_write_bytes", args.max_write_bytes))
            args.max_output_objects = int(config.get("max_output_objects", args.max_output_objects))
            values.update(config.get("credentials") or {})
        listen = Address.parse(args.listen)
        policy = Policy(
            Prefix.of(args.dataset) if args.dataset else None,
            Prefix.of(args.workspace) if args.workspace else None,
        )
        credentials = signer(values)
    except (ValueError, KeyError) as exc:
        print(exc, file=sys.stderr)
        return 2
    outputs = f"{policy.workspace.prefix}{OUTPUTS_DIR}/" if policy.workspace else None
    limits = WriteLimits(
        max_keys=args.max_keys,
        max_bytes=args.max_write_bytes,
        outputs_prefix=outputs,
        max_output_writes=args.max_output_objects,
    )
    upstream = Upstream(args.endpoint, args.region)
    token = os.environ.get(args.admin_token_env) if args.admin_token_env else None
    if args.admin_token_env and not token:
        print(f"the gateway's admin token is missing: set {args.admin_token_env}", file=sys.stderr)
        return 2
    gateway = Gateway(policy, upstream, credentials, args.counts, limits, admin_token=token)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(gateway, listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
