"""``python -m insitu.runtime.sandbox``: a warm sandbox's runner, waiting for its one job.

The docker backend's warm pool starts a job's containers before the job exists: a store
gateway, a Dask scheduler, its workers and this runner. The runner imports the runtime
(numpy, dask, zarr, the Dask client) while it waits; the server then writes the
assignment file, which only it can write (the folder is mounted read-only)::

    {"workspace": "s3://results/jobs/j-1", "env": {"INSITU_JOB_ID": "j-1", ...}}

and the runner runs that job exactly as ``python -m insitu.runtime`` would, once. A
sandbox serves one job only and is removed with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

POLL = 0.01  # seconds between looks for the assignment
READY_LINE = "insitu sandbox ready"  # the server hands out a sandbox once it printed this
# What a job imports on its way (stores, tables, figures): imported while the sandbox waits.
WARM_IMPORTS = ("s3fs", "obstore.store", "pandas", "pyarrow.parquet", "matplotlib.pyplot")


def warm_up() -> None:
    """Import the runtime and what jobs commonly use, so a job pays none of it."""
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in ("insitu.runtime.runner", *WARM_IMPORTS):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def await_workers(scheduler: str, workers: int, timeout: float) -> Any:
    """Wait until the sandbox's workers have joined its scheduler (then it is idle); the
    client stays connected, as the default, for the job's runner to use."""
    from distributed import Client

    client = Client(scheduler, timeout=timeout, set_as_default=True)
    client.wait_for_workers(workers, timeout=timeout)
    return client


def await_assignment(path: Path, timeout: float) -> dict[str, Any] | None:
    """The assignment once the server has written it, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            assignment = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # not there, or not whole yet
            time.sleep(POLL)
            continue
        if isinstance(assignment, dict) and isinstance(assignment.get("workspace"), str):
            return assignment
        time.sleep(POLL)
    return None


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m insitu.runtime.sandbox``."""
    parser = argparse.ArgumentParser(prog="python -m insitu.runtime.sandbox", description=__doc__)
    parser.add_argument("--assignment", type=Path, required=True, help="file naming the job")
    parser.add_argument("--scheduler", required=True, help="the sandbox's Dask scheduler")
    parser.add_argument("--wait-workers", type=int, default=1)
    parser.add_argument("--wait-timeout", type=float, default=120.0)
    parser.add_argument(
        "--idle-timeout", type=float, default=7 * 24 * 3600.0, help="give up after this long"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m insitu.runtime.sandbox``."""
    args = parser().parse_args(argv)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    warm_up()
    from insitu.runtime.runner import main as run_main

    warm = await_workers(args.scheduler, args.wait_workers, args.wait_timeout)
    print(READY_LINE, flush=True)
    assignment = await_assignment(args.assignment, args.idle_timeout)
    if assignment is None:
        print("no job was assigned to this sandbox; leaving", file=sys.stderr)
        return 3
    env = assignment.get("env") or {}
    os.environ.update({str(k): str(v) for k, v in env.items()})
    waits = ["--wait-workers", str(args.wait_workers), "--wait-timeout", str(args.wait_timeout)]
    try:  # the runner finds the warm client as the default one and uses it
        return run_main([assignment["workspace"], "--scheduler", args.scheduler, *waits])
    finally:
        with contextlib.suppress(Exception):
            warm.close()


if __name__ == "__main__":
    sys.exit(main())
