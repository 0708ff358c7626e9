"""Job commands: submit, status, list, logs, cancel, results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.text import Text

from insitu.cli import output
from insitu.cli.app import EXIT_INTERRUPTED, confirm, connect, fail
from insitu.states import JobState

JobArg = Annotated[
    str, typer.Argument(help="The job id, e.g. j-1a2b3c4d5e6f.", metavar="JOB", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SpecArg = Annotated[
    Path,
    typer.Argument(
        help="The job spec (YAML or JSON).",
        metavar="SPEC",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]
CodeOpt = Annotated[
    Path | None,
    typer.Option(
        "--code",
        help="A folder of your analysis code to upload with the job.",
        exists=True,
        file_okay=False,
    ),
]


def finish(job: dict[str, Any], *, as_json: bool) -> None:
    """Report a finished job; exit 1 with its error unless it succeeded."""
    if as_json:
        output.print_json(job)
    else:
        output.stdout().print(output.summary_line(job))
    if job["state"] != JobState.SUCCEEDED.value:
        raise fail(job.get("error") or job.get("reason") or f"the job {job['state']}")
    if not as_json:
        output.stderr().print(
            f"fetch the results with: insitu results {job['id']} --download {job['name']}/"
        )


def submit(
    spec: SpecArg,
    code: CodeOpt = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Show progress until the job ends; exit 1 unless it succeeds."),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Only show the job's plan (as 'insitu plan'); submit nothing."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job spec, or a pipeline file (kind: Pipeline), optionally with a folder of
    code."""
    if _is_pipeline(spec):
        if dry_run:
            raise fail("--dry-run plans one job spec; plan a pipeline's first step on its own")
        _submit_pipeline(spec, code, wait=wait, as_json=as_json)
        return
    if dry_run:
        plan(spec, code=code, as_json=as_json)
        return
    with connect() as client:
        job = client.submit(spec, code=code)
        if wait:
            if not as_json:
                output.stderr().print(f"submitted job {job['id']} ({job['name']})")
            try:
                job = client.wait(job["id"]) if as_json else output.watch(client, [job["id"]])[0]
            except KeyboardInterrupt:
                output.stderr().print(
                    f"\nstopped watching; job {job['id']} goes on "
                    f"('insitu cancel {job['id']}' stops it)"
                )
                raise typer.Exit(EXIT_INTERRUPTED) from None
            finish(job, as_json=as_json)
            return
    if as_json:
        output.print_json(job)
        return
    out = output.stdout()
    out.print(
        f"submitted job {job['id']} ({job['name']}) on {job['dataset']} "
        f"[{output.selection_text(job)}], {job['state']}"
    )
    out.print(f"follow it with: insitu status {job['id']}  or  insitu logs {job['id']} --follow")


def _is_pipeline(path: Path) -> bool:
    """Whether a spec file is a pipeline file (``kind: Pipeline``); the server checks it."""
    try:
        head = yaml.safe_load(path.read_text()[: 256 << 10])
    except (OSError, yaml.YAMLError):
        return False  # the server says what is wrong with it
    return isinstance(head, dict) and head.get("kind") == "Pipeline"


def _submit_pipeline(path: Path, code: Path | None, *, wait: bool, as_json: bool) -> None:
    with connect() as client:
        submitted = client.submit_pipeline(path, code=code)
        ids = [job["id"] for job in submitted]
        if not as_json:
            out = output.stderr() if wait else output.stdout()
            for job in submitted:
                waits = f" ({job['reason']})" if job.get("reason") else ""
                out.print(f"submitted job {job['id']} ({job['name']}) on {job['dataset']}{waits}")
        if wait:
            try:
                done = [client.wait(i) for i in ids] if as_json else output.watch(client, ids)
            except KeyboardInterrupt:
                output.stderr().print(
                    "\nstopped watching; the jobs go on ('insitu cancel JOB' stops one)"
                )
                raise typer.Exit(EXIT_INTERRUPTED) from None
            submitted = done
    if as_json:
        output.print_json(submitted)
    elif wait:
        for job in submitted:
            output.stdout().print(output.summary_line(job))
    else:
        output.stdout().print("follow them with: insitu status  or  insitu status JOB")
    failed = [job for job in submitted if job["state"] != JobState.SUCCEEDED.value]
    if wait and failed:
        first = failed[0]
        why = first.get("error") or first.get("reason")
        raise fail(f"job {first['id']} ({first['name']}) {first['state']}: {why}")


def plan(
    spec: SpecArg,
    code: CodeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What a job would read, how long it should take and whether your quota lets it start:
    checked as a submit is, and nothing submitted."""
    with connect() as client:
        planned = client.plan(spec, code=code)
    if as_json:
        output.print_json(planned)
        return
    output.stdout().print(output.plan_table(planned))
    if planned["quota"]["verdict"] == "refused":
        raise fail(planned["quota"]["reason"] or "your quota refuses this job")


def status(
    job_id: Annotated[
        str | None,
        typer.Argument(
            help="The job id; without one, your storage and unfinished jobs.",
            metavar="[JOB]",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A job's state, reason, error, progress, bytes scanned and returned, and its events;
    without a job, the derived data you keep against your storage quota and your jobs
    that have not ended."""
    if job_id is None:
        _overview(as_json)
        return
    with connect() as client:
        job = client.job(job_id)
        if as_json:
            output.print_json(job)
            return
        events = client.events(job_id)
    out = output.stdout()
    out.print(output.job_table(job))
    out.print()
    out.print(output.events_table(events))


def _overview(as_json: bool) -> None:
    with connect() as client:
        storage = client.storage()
        unfinished = client.jobs(states=["queued", "admitted", "provisioning", "running"])
    if as_json:
        output.print_json({"storage": storage, "unfinished": unfinished})
        return
    out = output.stdout()
    out.print(output.storage_text(storage))
    if unfinished:
        out.print(output.chain_tree(unfinished))
    else:
        out.print("no unfinished jobs")


def list_jobs(
    state: Annotated[
        list[JobState] | None,
        typer.Option("--state", help="Only jobs in this state (repeat for several)."),
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all", help="Every user's jobs (admins only).")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many.")
    ] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Your jobs, newest first."""
    with connect() as client:
        jobs = client.jobs(states=[s.value for s in state or []], limit=limit, all_users=all_users)
    if as_json:
        output.print_json(jobs)
    elif not jobs:
        output.stderr().print(
            "no jobs" + (" in that state" if state else "; submit one with 'insitu submit'")
        )
    else:
        output.stdout().print(output.jobs_table(jobs))


def logs(
    job_id: JobArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")
    ] = False,
) -> None:
    """A job's log (the analysis' context.log lines and the runner's messages)."""
    with connect() as client:
        if not follow:
            sys.stdout.write(client.log_text(job_id))
            sys.stdout.flush()
            return
        for text in client.follow_logs(job_id):
            sys.stdout.write(text)
            sys.stdout.flush()


def cancel(
    job_id: JobArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a queued or running job (asks first unless --yes)."""
    with connect() as client:
        job = client.job(job_id)
        confirm(f"Cancel job {job['id']} ({job['name']}, {job['state']})?", yes, "not cancelled")
        job = client.cancel(job_id)
    if as_json:
        output.print_json(job)
        return
    line = Text(f"job {job['id']} ")
    line.append_text(output.state_text(job["state"]))
    if job["state"] != JobState.CANCELLED.value:
        line.append(", cancel requested; it stops within a few seconds")
    output.stdout().print(line)


def results(
    job_id: JobArg,
    download: Annotated[
        Path | None,
        typer.Option(
            "--download", help="Download every result and provenance.json into this folder."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A succeeded job's results; with --download, fetch them."""
    with connect() as client:
        job = client.job(job_id)
        if job["state"] != JobState.SUCCEEDED.value:
            raise fail(
                f"job {job_id} is {job['state']}; results exist only once it has succeeded"
                + (f" ({job['error']})" if job.get("error") else "")
            )
        records = client.results(job_id)
        if download is not None:
            paths = client.download_all(job_id, download)
            for record, path in zip(records, paths, strict=False):
                record["path"] = str(path)
    if as_json:
        output.print_json(records)
        return
    output.stdout().print(output.results_table(records))
    if download is not None:
        output.stdout().print(
            f"downloaded {len(paths)} files (the results and provenance.json) to {download}/"
        )
