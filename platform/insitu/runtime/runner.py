"""Run one job: open the selection, call the analysis, compute, write results.

Usage inside any backend: ``python -m insitu.runtime WORKSPACE_URL [--scheduler ADDRESS]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from insitu import __version__
from insitu.blocks import block_count, plan_for_spec
from insitu.errors import AnalysisFailed, BackendError, InsituError, ResultTooLarge
from insitu.runtime import bundle, metering
from insitu.runtime.context import RunContext
from insitu.runtime.outputs import Output, output_url
from insitu.runtime.outputs import prepare as prepare_output
from insitu.runtime.reader import open_selection
from insitu.runtime.results import (
    RESULT_KEY,
    check_cap,
    encode,
    result_cap,
    too_large_message,
)
from insitu.runtime.workspace import (
    CODE_FILE,
    JOB_FILE,
    OUTCOME_FILE,
    OUTPUTS_DIR,
    RESULTS_DIR,
    STATUS_FILE,
    JobInput,
    Outcome,
    OutputRecord,
    Progress,
    ResultFile,
    Workspace,
    WorkspaceFull,
)
from insitu.storage import through_gateway
from insitu.units import format_size

log = logging.getLogger("insitu.runtime")
PROGRESS_INTERVAL = 0.5
ERROR_CHARS = 8192  # of an error text in the outcome; the server keeps even less
DEFAULT_WORKER_MEMORY = 2 << 30  # a LocalCluster worker's memory when the spec names none


class WorkerOutOfMemory(InsituError, MemoryError):
    """Dask workers were killed for using more memory than their limit."""

    status_code = 422
    code = "out_of_memory"


def import_entrypoint(entrypoint: str) -> Any:
    """Import ``module:function`` from the environment or the unpacked code bundle."""
    module_name, _, function_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AnalysisFailed(
            f"cannot import {module_name!r} for entrypoint {entrypoint!r} ({exc}); upload your "
            "code with 'insitu submit SPEC --code DIR', or use an image that installs it"
        ) from None
    except Exception as exc:
        raise AnalysisFailed(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise AnalysisFailed(f"module {module_name!r} has no function {function_name!r}")
    return function


def _user_frame(exc: BaseException) -> str:
    """File and line of the innermost frame outside dask, numpy and insitu."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if not any(
            part in frame.filename for part in ("/dask/", "/numpy/", "/insitu/", "/distributed/")
        ):
            return f" (at {Path(frame.filename).name} line {frame.lineno})"
    return ""


class ProgressReporter:
    """Writes chunks done and bytes read to ``status.json`` while the job computes."""

    def __init__(self, workspace: Workspace, client: Any, chunks_total: int, job: str = "") -> None:
        self.workspace, self.client, self.chunks_total = workspace, client, chunks_total
        self.job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="insitu-progress", daemon=True)

    def counts(self) -> dict[str, int]:
        """Bytes and chunks read so far, over the whole cluster."""
        snapshots = [metering.snapshot(self.job)]
        if self.client is not None:
            snapshots += list(self.client.run(metering.snapshot, self.job).values())
        return metering.total(snapshots)

    def write(self, phase: str = "running") -> dict[str, int]:
        counts = self.counts()
        self.workspace.write_model(
            STATUS_FILE,
            Progress(
                phase=phase,  # type: ignore[arg-type]
                chunks_done=min(counts["chunks"], self.chunks_total),
                chunks_total=self.chunks_total,
                bytes_scanned=counts["bytes"],
            ),
        )
        return counts

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL):
            try:
                self.write()
            except Exception as exc:  # progress is best effort; the job goes on
                log.debug("progress report failed: %s", exc)

    def __enter__(self) -> ProgressReporter:
        self.write()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop reporting (idempotent); no status write happens after this returns."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ship_code(client: Any, code: bytes) -> None:
    """Give the cluster's workers (containers of their own) the uploaded code bundle."""
    from insitu.runtime.plugins import CodeBundlePlugin

    client.register_plugin(CodeBundlePlugin(code))


def _wait_for_workers(client: Any, workers: int, timeout: float) -> None:
    try:
        client.wait_for_workers(workers, timeout=timeout)
    except TimeoutError:
        joined = len(client.scheduler_info().get("workers", {}))
        raise BackendError(
            f"only {joined} of {workers} Dask worker(s) started within {timeout:.0f} s; "
            "see the job's logs for why the others did not"
        ) from None


def _warm_client(scheduler: str) -> Any:
    """The client a warm sandbox's runner connected while it waited, if it still is."""
    from distributed.client import _get_global_client

    client = _get_global_client()
    with contextlib.suppress(Exception):
        if (
            client is not None
            and client.status == "running"
            and getattr(client.scheduler, "address", None) == scheduler
        ):
            return client
    return None


def start_cluster(
    job: JobInput,
    stack: ExitStack,
    scheduler: str | None,
    *,
    code: bytes | None = None,
    wait_workers: int = 0,
    wait_timeout: float = 120.0,
) -> Any:
    """A Dask client on the job's cluster: a given scheduler, or a LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        client = _warm_client(scheduler) or stack.enter_context(
            Client(scheduler, set_as_default=True, timeout=f"{wait_timeout}s")
        )
        if code is not None:
            _ship_code(client, code)
        if wait_workers:
            _wait_for_workers(client, wait_workers, wait_timeout)
        return client
    resources = job.spec.get("resources", {})
    cluster = stack.enter_context(
        LocalCluster(
            n_workers=int(resources.get("workers", 1)),
            threads_per_worker=int(resources.get("threads_per_worker", 1)),
            memory_limit=int(resources.get("memory_per_worker", DEFAULT_WORKER_MEMORY)),
            processes=job.worker_processes,
            dashboard_address=":0",  # a free port: jobs never clash on 8787
            silence_logs=logging.WARNING,
        )
    )
    return stack.enter_context(Client(cluster, set_as_default=True))


def _compute(returned: dict[str, Any], cap: int, stores: Any = None) -> dict[str, Any]:
    """Compute the lazy results (and write the outputs: ``stores``) together, refusing
    arrays known to exceed the cap first."""
    lazy = {k: v for k, v in returned.items() if dask.is_dask_collection(v)}
    # Only dask arrays: a Delayed answers any attribute, ``shape`` included, lazily.
    known = sum(
        int(math.prod(v.shape)) * v.dtype.itemsize
        for v in lazy.values()
        if isinstance(v, da.Array) and not any(map(math.isnan, v.shape))
    )
    limit, source = result_cap(cap)
    if known > limit:
        raise ResultTooLarge(too_large_message(known, limit, source=source))
    if lazy or stores is not None:
        values = dask.compute(*lazy.values(), *([stores] if stores is not None else []))
        returned = {**returned, **dict(zip(lazy, values[: len(lazy)], strict=True))}
    return returned


def _start_outputs(
    workspace: Workspace, job: JobInput, outputs: dict[str, Output]
) -> tuple[Any, list[OutputRecord]]:
    """Create each output's OME-Zarr group in the workspace; the lazy writes of them all."""
    sources: list[Any] = []
    targets: list[Any] = []
    records: list[OutputRecord] = []
    for key, output in outputs.items():
        if not RESULT_KEY.match(key):
            raise AnalysisFailed(
                f"output name {key!r} cannot be a folder name; use letters, digits, '.', '_' or '-'"
            )
        level_sources, level_targets, plan = prepare_output(
            key,
            output,
            output_url(workspace.url, key),
            workspace.storage_options,
            job.array,
            job.ranges,
            job.dataset,
        )
        sources += level_sources
        targets += level_targets
        records.append(
            OutputRecord(
                key=key,
                path=f"{OUTPUTS_DIR}/{key}.ome.zarr",
                shape=[int(n) for n in level_sources[0].shape],
                dtype=str(level_sources[0].dtype),
                levels=len(plan.factors),
                labels=output.labels,
            )
        )
    stores = da.store(sources, targets, lock=False, compute=False) if sources else None
    return stores, records


def _killed_workers(
    exc: BaseException, client: Any, job: JobInput, since: float
) -> InsituError | None:
    """What to say when Dask gave up on a task because its workers kept dying.

    The nanny restarts a worker that goes over its memory limit and logs an event on the
    scheduler; without such an event the workers died of something else.
    """
    from distributed.scheduler import KilledWorker

    if not isinstance(exc, KilledWorker):
        return None
    limit = int(job.spec.get("resources", {}).get("memory_per_worker", DEFAULT_WORKER_MEMORY))
    now = format_size(limit)
    for size, unit in ((1 << 30, "GiB"), (1 << 20, "MiB")):  # as the spec may have said it
        if limit and limit % size == 0:
            now = f"{limit // size}{unit} = {now}"
            break
    setting = f"resources.memory_per_worker (now {now})"
    events: list[dict[str, Any]] = []
    with contextlib.suppress(Exception):
        events = [
            event
            for when, event in client.get_events("worker-restart-memory")
            if when >= since and isinstance(event, dict)
        ]
    if events:
        peak = max(int(event.get("rss") or 0) for event in events)
        return WorkerOutOfMemory(
            f"a Dask worker ran out of memory: raise {setting} or hold less in memory at "
            f"once (smaller blocks, fewer threads per worker). A worker reached "
            f"{format_size(peak)} and was restarted {len(events)} time(s), then Dask gave up"
        )
    return BackendError(
        f"Dask workers died {exc.allowed_failures + 1} times running the same task, then Dask "
        f"gave up; if they were killed for memory, raise {setting}. The job's log may say why"
    )


def _short(text: str, limit: int = ERROR_CHARS) -> str:
    """An error text short enough for the outcome (the log keeps the whole traceback)."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" [... {len(text) - limit} more characters cut; see the job's log]"


def _environment() -> dict[str, str]:
    """Versions of what the job ran with, reported to the server (which labels them so)."""
    versions = {
        "python": platform.python_version(),
        "dask": dask.__version__,
        "numpy": np.__version__,
        "zarr": importlib.import_module("zarr").__version__,
        "insitu": __version__,
    }
    return {k: str(v)[:100] for k, v in versions.items()}


def run_job(
    workspace: Workspace,
    job: JobInput,
    scheduler: str | None = None,
    *,
    wait_workers: int = 0,
    wait_timeout: float = 120.0,
) -> Outcome:
    """Run the job described by ``job``; always returns an outcome, never raises."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    outcome = Outcome(ok=False)
    cores = int(job.spec.get("resources", {}).get("workers", 1)) * int(
        job.spec.get("resources", {}).get("threads_per_worker", 1)
    )
    with ExitStack() as stack:
        reporter: ProgressReporter | None = None
        client: Any = None
        try:
            code = workspace.read_bytes(CODE_FILE) if job.code_bundle_digest else None
            if code is not None:
                code_dir = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="insitu-code-"))
                )
                bundle.extract(code, code_dir)
                sys.path.insert(0, str(code_dir))
                os.environ["PYTHONPATH"] = os.pathsep.join(
                    p for p in (str(code_dir), os.environ.get("PYTHONPATH")) if p
                )
            function = import_entrypoint(job.spec["analysis"]["entrypoint"])
            client = start_cluster(
                job,
                stack,
                scheduler,
                code=code,
                wait_workers=wait_workers,
                wait_timeout=wait_timeout,
            )
            client.run(metering.reset, job.job_id)
            timings["cluster_start_s"] = time.perf_counter() - started
            cluster_up = time.perf_counter()
            plan = job.read or plan_for_spec(job.array, job.ranges, job.spec)
            data = open_selection(
                job.dataset_url,
                job.array,
                job.ranges,
                job.storage_options,
                job.job_id,
                plan,
            )
            outcome.bytes_selected = int(data.nbytes)
            chunks_total = block_count(job.ranges, job.array.chunks)
            context = RunContext(
                job_id=job.job_id,
                dataset=job.dataset,
                array=job.array,
                selection=dict(zip(job.array.axes, job.ranges, strict=True)),
                params=dict(job.spec["analysis"].get("params", {})),
                client=client,
                _dataset_url=job.dataset_url,
                _storage_options=job.storage_options,
            )
            log.info(
                "running %s on %s[%s] %s (%s selected, %d chunks in %d blocks of %s) with %d cores",
                job.spec["analysis"]["entrypoint"],
                job.dataset,
                job.array.path,
                list(data.shape),
                format_size(data.nbytes),
                chunks_total,
                data.npartitions,
                list(plan.block),
                cores,
            )
            reporter = stack.enter_context(
                ProgressReporter(workspace, client, chunks_total, job.job_id)
            )
            timings["open_s"] = time.perf_counter() - cluster_up
            analysis_start = time.perf_counter()
            analysis_wall_start = time.time()
            try:
                returned = function(data, context=context, **context.params)
                if not isinstance(returned, dict):
                    raise AnalysisFailed(
                        f"the analysis returned a {type(returned).__name__}; return a dict "
                        "that maps result names to values, e.g. {'mean': data.mean(axis=0)}"
                    )
                outputs = {k: v for k, v in returned.items() if isinstance(v, Output)}
                stores, outcome.outputs = _start_outputs(workspace, job, outputs)
                reduced = {k: v for k, v in returned.items() if k not in outputs}
                computed = _compute(reduced, job.result_cap_bytes, stores)
            except InsituError:
                raise
            except Exception as exc:
                log.error("the analysis raised:\n%s", traceback.format_exc())
                killed = _killed_workers(exc, client, job, analysis_wall_start)
                if killed is not None:
                    raise killed from exc
                raise AnalysisFailed(
                    f"the analysis raised {type(exc).__name__}: {exc}{_user_frame(exc)}"
                ) from exc
            timings["compute_s"] = time.perf_counter() - analysis_start
            writing = time.perf_counter()
            encoded = [encode(key, value) for key, value in computed.items()]
            counts = reporter.write(phase="writing")
            outcome.bytes_scanned, outcome.chunks_read = counts["bytes"], counts["chunks"]
            outcome.bytes_returned = check_cap(
                encoded, job.result_cap_bytes, job.result_fraction, outcome.bytes_scanned
            )
            for item in encoded:
                workspace.write_bytes(f"{RESULTS_DIR}/{item.filename}", item.data)
            outcome.results = [
                ResultFile(
                    key=e.key,
                    filename=e.filename,
                    kind=e.kind,
                    media_type=e.media_type,  # type: ignore[arg-type]
                    size=len(e.data),
                    sha256=e.sha256,
                    shape=e.shape,
                    dtype=e.dtype,
                )
                for e in encoded
            ]
            timings["write_s"] = time.perf_counter() - writing
            outcome.ok = True
        except InsituError as exc:
            outcome.error, outcome.error_kind = _short(exc.message), exc.code
            log.error("job failed: %s", exc.message)
            if isinstance(exc, WorkspaceFull):  # room for the outcome; none will be served
                with contextlib.suppress(Exception):
                    workspace.remove_results()
        except Exception as exc:
            log.error("internal error:\n%s", traceback.format_exc())
            outcome.error = _short(f"insitu's runtime failed: {type(exc).__name__}: {exc}")
            outcome.error_kind = "internal"
        finally:
            if reporter is not None and not outcome.ok:
                try:
                    counts = reporter.counts()
                    outcome.bytes_scanned, outcome.chunks_read = counts["bytes"], counts["chunks"]
                except Exception:
                    pass
            if reporter is not None:
                reporter.close()
        timings["total_s"] = time.perf_counter() - started
        outcome.timings = timings
        outcome.core_seconds = cores * (timings["total_s"] - timings.get("cluster_start_s", 0.0))
        outcome.environment = _environment()
        total = reporter.chunks_total if reporter is not None else 0
        finish(workspace, outcome, total)  # before the cluster winds down: the job is over now
        if client is not None:  # shared (warm) workers keep no counters of ended jobs
            with contextlib.suppress(Exception):
                client.run(metering.forget, job.job_id)
    return outcome


def finish(workspace: Workspace, outcome: Outcome, chunks_total: int) -> None:
    """Write the outcome, then say so in ``status.json``; the server ends the job on that."""
    try:
        workspace.write_model(OUTCOME_FILE, outcome)
    except WorkspaceFull as exc:  # results written since take the room: the job fails
        log.error("%s", exc.message)
        workspace.remove_results()
        outcome.ok, outcome.results = False, []
        outcome.error, outcome.error_kind = _short(exc.message), exc.code
        workspace.write_model(OUTCOME_FILE, outcome)
    workspace.write_model(
        STATUS_FILE,
        Progress(
            phase="finished",
            chunks_done=min(outcome.chunks_read, chunks_total),
            chunks_total=chunks_total,
            bytes_scanned=outcome.bytes_scanned,
        ),
    )


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m insitu.runtime`` (backends' plans are checked
    against it)."""
    parser = argparse.ArgumentParser(prog="python -m insitu.runtime", description=__doc__)
    parser.add_argument("workspace", help="URL of the job's workspace (file:// or s3://)")
    parser.add_argument(
        "--scheduler",
        default=os.environ.get("DASK_SCHEDULER_ADDRESS") or None,
        help="address of an existing Dask scheduler (default: DASK_SCHEDULER_ADDRESS, which "
        "the dask-kubernetes operator sets; else a LocalCluster)",
    )
    parser.add_argument(
        "--wait-workers", type=int, default=0, help="wait for this many workers to join"
    )
    parser.add_argument(
        "--wait-timeout", type=float, default=120.0, help="seconds to wait for the workers"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m insitu.runtime``."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("distributed").setLevel(logging.WARNING)
    options = through_gateway(json.loads(os.environ.get("INSITU_WORKSPACE_OPTIONS") or "{}"))
    workspace = Workspace(args.workspace, options)
    job = workspace.read_model(JOB_FILE, JobInput)
    if job is None:
        print(f"no readable {JOB_FILE} in {args.workspace}", file=sys.stderr)
        return 2
    job.storage_options = through_gateway(job.storage_options)
    outcome = run_job(
        workspace,
        job,
        args.scheduler,
        wait_workers=args.wait_workers,
        wait_timeout=args.wait_timeout,
    )
    log.info(
        "job %s %s: scanned %s, returned %s",
        job.job_id,
        "succeeded" if outcome.ok else "failed",
        format_size(outcome.bytes_scanned),
        format_size(outcome.bytes_returned),
    )
    return 0 if outcome.ok else 1
