"""A warm pool for small jobs on one machine: Dask workers that stay up, and a runner zygote.

Starting a job costs an interpreter, its imports (numpy, dask, zarr) and a Dask cluster:
about two seconds. For a class submitting many small jobs, the local backend keeps:

- a **cluster** process: a Dask scheduler and workers that stay up between jobs; each
  job's bytes are metered under its own id, so jobs can share workers;
- a **zygote** process that has imported the runtime once and forks one runner per job,
  connected to that scheduler. The forked runner writes the job's log and workspace
  exactly as a runner started from scratch does.

    python -m insitu.runtime.pool cluster --dir DIR --workers 2 --threads 1 --memory 2GiB
    python -m insitu.runtime.pool zygote --dir DIR

The backend asks the zygote for a runner over ``DIR/zygote.sock`` with one JSON line:
``{"workspace": URL, "scheduler": ADDRESS, "log": PATH, "env": {...}}``; the answer is
``{"pid": PID}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

SCHEDULER_FILE = "scheduler"
ZYGOTE_SOCKET = "zygote.sock"
log = logging.getLogger("insitu.pool")


def run_cluster(directory: Path, workers: int, threads: int, memory: str) -> int:
    """Keep a LocalCluster up; write its scheduler address to ``DIR/scheduler``."""
    from distributed import LocalCluster

    from insitu.units import parse_size

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        memory_limit=parse_size(memory),
        processes=True,
        scheduler_port=0,
        dashboard_address=None,
        silence_logs=logging.WARNING,
    ) as cluster:
        target = directory / SCHEDULER_FILE
        partial = target.with_suffix(".tmp")
        partial.write_text(cluster.scheduler_address)
        partial.replace(target)
        log.info("warm pool cluster at %s", cluster.scheduler_address)
        parent = os.getppid()
        while not stop and os.getppid() == parent:  # the server is gone: so is its pool
            time.sleep(0.5)
        target.unlink(missing_ok=True)
    return 0


def _reap(*_: object) -> None:
    """Collect ended runners so that they leave no zombies."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become the job's runner (never returns)."""
    code = 1
    try:
        os.setsid()  # its own process group: cancelling the job kills it, not the pool
        descriptor = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.update(request.get("env", {}))
        os.chdir(os.path.dirname(request["log"]))
        from insitu.runtime.runner import main

        banner = f"insitu: a warm-pool runner (zygote {os.getppid()}) on {request['scheduler']}\n"
        os.write(1, banner.encode())
        code = main([request["workspace"], "--scheduler", request["scheduler"]])
    except BaseException as exc:  # report anything, then leave without the parent's cleanup
        with contextlib.suppress(Exception):
            print(f"insitu: the warm-pool runner failed to start: {exc!r}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def run_zygote(directory: Path) -> int:
    """Import the runtime once, then fork a runner for every request on the socket."""
    import dask.array  # noqa: F401  (what every runner needs, imported before forking)
    import distributed  # noqa: F401
    import numpy  # noqa: F401
    import zarr  # noqa: F401

    import insitu.runtime.runner
    import insitu.storage  # noqa: F401

    path = directory / ZYGOTE_SOCKET
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(64)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("warm pool zygote listening on %s", path)
    parent = os.getppid()
    server.settimeout(1.0)
    while os.getppid() == parent:  # the server is gone: so is its pool
        try:
            connection, _ = server.accept()
        except (InterruptedError, TimeoutError):
            continue
        connection.settimeout(None)
        with connection:
            try:
                request = json.loads(connection.makefile("r").readline())
                pid = os.fork()
                if pid == 0:
                    server.close()
                    _run_child(request)
                connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            except Exception as exc:
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"error": repr(exc)}).encode() + b"\n")
    return 0


def request_runner(directory: Path, request: dict[str, Any], timeout: float = 10.0) -> int:
    """Ask the zygote in ``directory`` for a runner; return its pid."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(directory / ZYGOTE_SOCKET))
        client.sendall(json.dumps(request).encode() + b"\n")
        answer = json.loads(client.makefile("r").readline() or "{}")
    if "pid" not in answer:
        raise RuntimeError(answer.get("error", "the warm pool's zygote did not answer"))
    return int(answer["pid"])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m insitu.runtime.pool``."""
    parser = argparse.ArgumentParser(prog="python -m insitu.runtime.pool", description=__doc__)
    parser.add_argument("role", choices=["cluster", "zygote"])
    parser.add_argument("--dir", required=True, type=Path, help="the pool's folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", default="2GiB", help="memory per worker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.role == "cluster":
        return run_cluster(args.dir, args.workers, args.threads, args.memory)
    return run_zygote(args.dir)


if __name__ == "__main__":
    sys.exit(main())
