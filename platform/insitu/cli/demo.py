"""``insitu demo``: the whole platform end to end on one machine, in about a minute.

It starts an embedded server under ``<INSITU_HOME>/demo`` (apart from a real server's
home), generates a synthetic two-photon session once, registers it, runs a mean
projection and dF/F traces next to it, and saves both as PNG figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import insitu
from insitu.cli import output
from insitu.cli.app import EXIT_FAILED, fail
from insitu.client import Client
from insitu.config import Settings
from insitu.states import JobState
from insitu.units import format_duration, format_size

DATASET = "ophys/session-001"
ENTRYPOINTS = {
    "projection": "ophys_analyses.projection:mean_projection",
    "traces": "ophys_analyses.traces:dff_traces",
}
# Rough rates on a two-core machine, to say up front how long the demo takes.
GENERATE_BYTES_PER_S = 60e6
SCAN_BYTES_PER_S = 80e6  # both jobs together, per uncompressed byte of the movie
JOB_OVERHEAD_S = 4.0


def source_examples() -> Path:
    """``examples/`` of the source checkout this insitu was installed from."""
    return Path(insitu.__file__).resolve().parents[2] / "examples"


def ophys_example(examples: Path | None) -> Path:
    """The ophys example folder, or a clear error when this is not a source checkout."""
    folder = (examples or source_examples()) / "ophys"
    needed = [folder / "generate.py", folder / "ophys_analyses"]
    if not all(path.exists() for path in needed):
        raise fail(
            f"the demo needs the examples of a source checkout, and {folder} has no "
            "generate.py and ophys_analyses/; clone the insitu repository and run "
            "'make demo' there (or 'pip install -e .' and 'insitu demo')"
        )
    return folder


def load_module(path: Path, name: str) -> ModuleType:
    """Import a Python file by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise fail(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the dataset ------------------------------------------------------------------------------


def ensure_movie(example: Path, data_dir: Path, frames: int, size: int) -> Path:
    """Generate the sample session once per set of parameters; reuse it afterwards."""
    generator = example / "generate.py"
    params = {
        "frames": frames,
        "height": size,
        "width": size,
        "chunks": [64, size, size],
        "generator_sha256": hashlib.sha256(generator.read_bytes()).hexdigest(),
    }
    path = data_dir / f"session-001-{frames}x{size}x{size}.ome.zarr"
    marker = path.with_suffix(".json")
    err = output.stderr()
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == params:
        err.print(f"reusing the sample session generated before: {path}")
        return path
    shutil.rmtree(path, ignore_errors=True)
    marker.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    module = load_module(generator, "insitu_demo_generate")
    bar = Progress(
        TextColumn("generating the session"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        console=err,
    )
    with bar:
        task = bar.add_task("generate", total=frames)
        module.generate_movie(
            str(path),
            frames=frames,
            height=size,
            width=size,
            chunks=(64, size, size),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    marker.write_text(json.dumps(params, indent=1))
    return path


# -- the jobs ---------------------------------------------------------------------------------


def fit_selection(spec: dict[str, Any], extents: dict[str, int]) -> dict[str, Any]:
    """Clip a spec's ``select`` to the demo movie, which may be smaller than the example's."""
    select = {}
    for axis, (start, stop) in (spec.get("select") or {}).items():
        length = extents.get(axis)
        if length is None:
            select[axis] = [start, stop]
            continue
        start = min(start or 0, length)
        stop = length if stop is None else min(stop, length)
        if stop > start:
            select[axis] = [start, stop]
    return {**spec, "select": select}


def job_specs(example: Path, extents: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The projection and traces specs: from examples/ophys/jobs/*.yaml, else built here."""
    specs: dict[str, dict[str, Any]] = {
        "projection": {
            "name": "mean-projection",
            "analysis": {"entrypoint": ENTRYPOINTS["projection"]},
        },
        "traces": {
            "name": "dff-traces",
            "analysis": {
                "entrypoint": ENTRYPOINTS["traces"],
                "params": {"labels": "labels/cells/0", "baseline_percentile": 10.0},
            },
        },
    }
    for path in sorted((example / "jobs").glob("*.y*ml")):
        spec = yaml.safe_load(path.read_text())
        entrypoint = (spec or {}).get("analysis", {}).get("entrypoint")
        for key, wanted in ENTRYPOINTS.items():
            if entrypoint == wanted:
                specs[key] = spec
    return {
        key: fit_selection({**spec, "dataset": DATASET}, extents) for key, spec in specs.items()
    }


def upload_analyses(client: Client, example: Path) -> str:
    """Upload a bundle holding only the ``ophys_analyses`` package at its top level."""
    with tempfile.TemporaryDirectory(prefix="insitu-demo-code-") as tmp:
        shutil.copytree(
            example / "ophys_analyses",
            Path(tmp) / "ophys_analyses",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        return client.upload_code(tmp)


@contextlib.contextmanager
def demo_server(home: Path) -> Iterator[Client]:
    """An embedded server with a fresh catalog under ``home``, and its admin client."""
    from insitu.server import BackgroundServer

    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(
        home=home,
        database_url=None,
        workspace_url=None,
        server={"host": "127.0.0.1", "port": 0},  # type: ignore[arg-type]
    )
    server = BackgroundServer(settings).start()
    client = Client(server.url, settings.admin_token_path.read_text().strip())
    try:
        yield client
    finally:
        _cancel_unfinished(client)
        client.close()
        server.stop()


def _cancel_unfinished(client: Client) -> None:
    """On an interrupt, stop the demo's jobs before the server goes away."""
    with contextlib.suppress(Exception):
        for job in client.jobs():
            if not JobState(job["state"]).terminal:
                client.cancel(job["id"])
                client.wait(job["id"], timeout=15)


# -- the command ------------------------------------------------------------------------------


def roughly(seconds: float) -> str:
    """A duration as people estimate it: 'a few seconds', 'about 40 s', 'about 3 min'."""
    if seconds < 10:
        return "a few seconds"
    if seconds < 90:
        return f"about {round(seconds, -1):.0f} s"
    return f"about {round(seconds / 60)} min"


def announce(frames: int, size: int, home: Path) -> None:
    nbytes = frames * size * size * 2
    generate_s = nbytes / GENERATE_BYTES_PER_S
    jobs_s = JOB_OVERHEAD_S + nbytes / SCAN_BYTES_PER_S
    err = output.stderr()
    err.print(
        f"insitu demo: a synthetic two-photon session of {frames} frames of "
        f"{size} x {size} pixels, uint16 ({format_size(nbytes)} uncompressed), analysed "
        "in place by an embedded insitu server."
    )
    err.print(
        f"Expect {roughly(generate_s + jobs_s)} the first time, while the data is generated, "
        f"and {roughly(jobs_s)} on later runs. Everything it keeps is under {home}."
    )


def save_figures(client: Client, jobs: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Download each job's results and draw the projection and the traces as PNG files."""
    from insitu.cli import figures

    out.mkdir(parents=True, exist_ok=True)
    for job in jobs.values():
        client.download_all(job["id"], out / job["name"])
    mean = client.result(jobs["projection"]["id"], "mean")
    traces = client.result(jobs["traces"]["id"], "traces")
    return [
        figures.projection(mean, out / "projection.png", title=f"{DATASET}: mean projection"),
        figures.traces(traces, out / "traces.png", title=f"{DATASET}: dF/F of a few ROIs"),
    ]


def demo(
    frames: Annotated[int, typer.Option("--frames", min=64, help="Frames in the movie.")] = 2000,
    size: Annotated[
        int, typer.Option("--size", min=32, max=2048, help="Height and width of a frame.")
    ] = 256,
    out: Annotated[
        Path, typer.Option("--out", help="Where to save the figures and results.")
    ] = Path("insitu-demo-output"),
    examples: Annotated[Path | None, typer.Option("--examples", hidden=True)] = None,
) -> None:
    """Run the end-to-end demo on an embedded server: data, two jobs, figures."""
    started = time.monotonic()
    home = Settings().home / "demo"
    example = ophys_example(examples)
    announce(frames, size, home)
    movie = ensure_movie(example, home / "data", frames, size)
    specs = job_specs(example, {"t": frames, "y": size, "x": size})
    with demo_server(home / "server") as client:
        client.register_dataset(
            DATASET, movie.as_uri(), "insitu demo: synthetic two-photon session"
        )
        bundle = upload_analyses(client, example)
        ids = {key: client.submit(spec, bundle=bundle)["id"] for key, spec in specs.items()}
        finished = output.watch(client, list(ids.values()))
        jobs = dict(zip(ids, finished, strict=True))
        output.stdout().print(output.summary_table(finished))
        failed = [job for job in finished if job["state"] != JobState.SUCCEEDED.value]
        for job in failed:
            output.error_line(
                f"job {job['name']} {job['state']}: {job.get('error') or job['reason']}"
            )
        if failed:
            raise typer.Exit(EXIT_FAILED)
        paths = save_figures(client, jobs, out)
    _goodbye(paths, out, jobs, home / "server", time.monotonic() - started)


def _goodbye(
    paths: list[Path], out: Path, jobs: dict[str, dict[str, Any]], server_home: Path, seconds: float
) -> None:
    console = output.stdout()
    console.print(f"figures: {', '.join(str(p) for p in paths)}")
    names = " and ".join(f"{out / job['name']}/" for job in jobs.values())
    console.print(f"results and provenance: {names}")
    console.print(f"the demo took {format_duration(seconds)}")
    output.stderr().print(
        f"To look at these jobs again: 'INSITU_HOME={server_home} insitu server' in one "
        f"terminal, then 'INSITU_HOME={server_home} insitu list' in another."
    )
    jobs_url = f"{Settings(home=server_home).url.rstrip('/')}/ui/jobs"
    console.print(
        f"the demo's jobs in the web UI (with that server running): {jobs_url} "
        f"(sign in with the token in {server_home / 'admin-token'})"
    )
