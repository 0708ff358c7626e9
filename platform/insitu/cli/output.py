"""How the CLI prints: Rich tables for people, stable JSON for scripts, live progress."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import typer
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from insitu.client import Client
from insitu.states import JobState
from insitu.units import format_duration, format_size

PIPE_WIDTH = 160
STATE_STYLES = {
    "queued": "dim",
    "admitted": "blue",
    "provisioning": "blue",
    "running": "cyan",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "timed_out": "red",
}


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output (logs, scripts, CI) gets wide lines instead of Rich's 80 columns.
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(
        stderr=stderr,
        highlight=False,
        markup=False,
        soft_wrap=True,
        width=PIPE_WIDTH if wide else None,
    )


def stdout() -> Console:
    """A console on the current stdout (looked up per call, so test runners can swap it)."""
    return _console(stderr=False)


def stderr() -> Console:
    """A console on the current stderr: progress, hints and errors."""
    return _console(stderr=True)


def print_json(value: Any) -> None:
    """Print a value as indented JSON, the stable output of every ``--json`` flag."""
    typer.echo(json.dumps(value, indent=2, default=str))


def error_line(message: str) -> None:
    """Print ``error: message`` as one red line on stderr."""
    stderr().print(Text(f"error: {one_line(message)}", style="bold red"), soft_wrap=True)


def one_line(message: str) -> str:
    """Fold a multi-line message (a list of spec problems) into one line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    head, rest = lines[0], lines[1:]
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join(lines)


class StateSpinner(SpinnerColumn):
    """A spinner while a job is live, then a mark for how it ended."""

    def render(self, task: Task) -> RenderableType:
        ended = task.fields.get("ended")
        if ended:
            return Text("✓" if ended == "succeeded" else "✗", style=STATE_STYLES[ended])
        return super().render(task)


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def local_time(value: str | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An API timestamp (UTC) in the local time zone."""
    moment = _time(value)
    return "-" if moment is None else moment.astimezone().strftime(fmt)


def job_seconds(job: dict[str, Any]) -> float | None:
    """Seconds from submission to the end (or to now, while the job runs)."""
    created, finished = _time(job.get("created_at")), _time(job.get("finished_at"))
    if created is None:
        return None
    if finished is None:
        return time.time() - created.timestamp()
    return (finished - created).total_seconds()


def reduction(job: dict[str, Any]) -> str:
    """Bytes scanned over bytes returned, e.g. ``1,250x``."""
    scanned, returned = job.get("bytes_scanned") or 0, job.get("bytes_returned") or 0
    if not scanned or not returned:
        return "-"
    factor = scanned / returned
    return f"{factor:,.0f}x" if factor >= 10 else f"{factor:.1f}x"


def selection_text(job: dict[str, Any]) -> str:
    parts = [f"{axis}={start}:{stop}" for axis, (start, stop) in job["selection"].items()]
    return ", ".join(parts)


def summary_line(job: dict[str, Any]) -> Text:
    """One line after a job ends: state, seconds, bytes scanned and returned, reduction."""
    line = Text()
    line.append(f"job {job['id']} ")
    line.append_text(state_text(job["state"]))
    line.append(
        f" in {format_duration(job_seconds(job))}: scanned {format_size(job['bytes_scanned'])}, "
        f"returned {format_size(job['bytes_returned'])} (reduction {reduction(job)})"
    )
    return line


# -- tables -----------------------------------------------------------------------------------


def jobs_table(jobs: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("job", "name", "dataset", "state", "chunks", "scanned", "returned", "time"):
        table.add_column(name, no_wrap=name in ("job", "state"))
    for job in jobs:
        progress = job["progress"]
        table.add_row(
            job["id"],
            job["name"],
            job["dataset"],
            state_text(job["state"]),
            f"{progress['chunks_done']}/{progress['chunks_total']}",
            format_size(job["bytes_scanned"]),
            format_size(job["bytes_returned"]),
            format_duration(job_seconds(job)),
        )
    return table


def chain_tree(jobs: list[dict[str, Any]]) -> Tree:
    """Unfinished jobs as chains: each job reading another's output under that job."""
    by_id = {job["id"]: job for job in jobs}
    children: dict[str, list[dict[str, Any]]] = {}
    roots: list[dict[str, Any]] = []
    for job in jobs:
        parent = str((job.get("input") or {}).get("job"))
        if parent in by_id:
            children.setdefault(parent, []).append(job)
        else:
            roots.append(job)

    def label(job: dict[str, Any]) -> Text:
        text = Text(f"{job['id']} ", style="bold")
        text.append(f"{job['name']} ")
        text.append_text(state_text(job["state"]))
        pending = job.get("input")
        if pending and not pending.get("resolved"):
            text.append(f"  reads output {pending['output']!r} of {pending['job']}", style="dim")
        elif job.get("reason"):
            text.append(f"  {job['reason']}", style="dim")
        return text

    tree = Tree("your unfinished jobs", guide_style="dim")

    def grow(node: Tree, job: dict[str, Any], depth: int) -> None:
        branch = node.add(label(job))
        for child in children.get(job["id"], []) if depth < 20 else []:
            grow(branch, child, depth + 1)

    for job in sorted(roots, key=lambda j: j["created_at"]):
        grow(tree, job, 0)
    return tree


def summary_table(jobs: Iterable[dict[str, Any]]) -> Table:
    """Job, state, seconds, bytes scanned and returned, reduction factor."""
    table = Table(header_style="bold")
    table.add_column("job", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for name in ("seconds", "bytes scanned", "bytes returned", "reduction"):
        table.add_column(name, justify="right", no_wrap=True)
    for job in jobs:
        seconds = job_seconds(job)
        table.add_row(
            job["name"],
            state_text(job["state"]),
            "-" if seconds is None else f"{seconds:.1f}",
            format_size(job["bytes_scanned"]),
            format_size(job["bytes_returned"]),
            reduction(job),
        )
    return table


def job_table(job: dict[str, Any]) -> Table:
    """Everything about one job, as field/value rows."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    progress = job["progress"]
    rows: list[tuple[str, str | Text]] = [
        ("job", f"{job['id']} ({job['name']}, owner {job['owner']})"),
        ("state", state_text(job["state"])),
        ("reason", job.get("reason") or "-"),
    ]
    if job.get("error"):
        rows.append(("error", Text(job["error"], style="red")))
    if job.get("target") and job["target"] != job["state"]:
        rows.append(("target", job["target"]))
    rows += [
        ("dataset", f"{job['dataset']} array {job['array']!r} [{selection_text(job)}]"),
        ("entrypoint", job["spec"]["analysis"]["entrypoint"]),
        ("progress", f"{progress['chunks_done']}/{progress['chunks_total']} chunks"),
        ("selected", format_size(job["bytes_selected"] or None)),
        ("scanned", _with_source(format_size(job["bytes_scanned"]), job, "bytes_scanned")),
        ("returned", f"{format_size(job['bytes_returned'])} (reduction {reduction(job)})"),
        ("result cap", format_size(job["result_cap_bytes"])),
        ("egress", egress_text(job)),
        ("core-seconds", _with_source(f"{job['core_seconds']:.1f}", job, "core_seconds")),
        ("time", format_duration(job_seconds(job))),
        ("submitted", local_time(job["created_at"])),
        ("results", ", ".join(r["filename"] for r in job["results"]) or "-"),
    ]
    pending = job.get("input")
    if pending:
        became = f" -> {pending['dataset']}" if pending.get("dataset") else " (not written yet)"
        rows.append(("input", f"output {pending['output']!r} of job {pending['job']}{became}"))
    if job.get("outputs"):
        kept = ", ".join(
            f"{o['key']} -> {o['dataset']} ({format_size(o['bytes'])})" for o in job["outputs"]
        )
        rows.append(("outputs", f"{kept} (kept next to the data)"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _lineage_label(entry: dict[str, Any], via: str = "") -> Text:
    label = Text(entry["name"], style="bold")
    if via:
        label.append(f"  {via}")
    lineage = entry.get("lineage") or {}
    if not entry["derived"]:
        label.append(f"  registered, {entry['url']}", style="dim")
        return label
    label.append(
        f"\n  output {lineage.get('output')!r} of job {lineage.get('job')} "
        f"({lineage.get('entrypoint')}), {format_size(entry.get('stored_bytes'))}, "
        f"owner {entry.get('owner')}"
    )
    digests = (
        f"spec {str(lineage.get('spec_sha256'))[:12]}",
        f"code {str(lineage.get('code_bundle_sha256') or '-')[:12]}",
        f"image {str(lineage.get('image_digest') or lineage.get('image') or '-')[:24]}",
    )
    label.append("\n  " + ", ".join(digests), style="dim")
    return label


def lineage_tree(chain: list[dict[str, Any]]) -> Tree:
    """A dataset and its ancestors as a tree, each parent with the selection taken of it."""
    by_name = {entry["name"]: entry for entry in chain}

    def grow(tree: Tree, entry: dict[str, Any], depth: int) -> None:
        for parent in (entry.get("lineage") or {}).get("parents", []):
            selection = ", ".join(
                f"{axis} {r[0]}:{r[1]}" for axis, r in (parent.get("selection") or {}).items()
            )
            via = f"[{parent.get('array') or '(root)'}] {selection}"
            known = by_name.get(parent["name"])
            if known is None:
                tree.add(Text(f"{parent['name']}  {via} (not readable or deleted)"))
            elif depth < 50:
                grow(tree.add(_lineage_label(known, via)), known, depth + 1)

    if not chain:
        return Tree("(empty)")
    root = Tree(_lineage_label(chain[0]))
    grow(root, chain[0], 0)
    return root


def storage_text(storage: dict[str, Any]) -> str:
    """Derived data kept against the storage quotas, in one line."""
    text = f"derived data {format_size(storage['used'])}"
    text += f" of {format_size(storage['quota'])}" if storage.get("quota") is not None else ""
    if storage.get("course"):
        text += f"; course {storage['course']} {format_size(storage['course_used'])}"
        if storage.get("course_quota") is not None:
            text += f" of {format_size(storage['course_quota'])}"
    return text


def plan_table(plan: dict[str, Any]) -> Table:
    """A job's plan, as field/value rows: what it reads, its estimate, the quota's say."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    read, estimate, quota = plan["read"], plan["estimate"], plan["quota"]
    selection = ", ".join(f"{axis} {a}:{b}" for axis, (a, b) in read["selection"].items())
    stored = read["stored_bytes_estimate"]
    verdict_style = {"starts": "green", "waits": "yellow", "refused": "red"}[quota["verdict"]]
    image = f" in {plan['image']}" if plan["image"] else ""
    shard = f", shard {read['shards']}" if read["shards"] else ""
    rows: list[tuple[str, str | Text]] = [
        ("job", f"{plan['name']}: {plan['entrypoint']}{image}"),
        ("dataset", f"{read['dataset']} array {read['array']!r} {read['shape']} {read['dtype']}"),
        ("selection", selection),
        ("chunks", f"{read['chunks_touched']:,} of {read['chunks_total']:,} "
                   f"(chunk {read['chunks']}{shard})"),
        ("reads", f"{format_size(read['bytes_touched'])} decoded"
                  + (f", about {format_size(stored)} stored" if stored is not None else "")),
        ("selected", format_size(read["bytes_selected"])),
        ("resources", f"{plan['workers']} worker(s) x {plan['threads_per_worker']} thread(s), "
                      f"{format_size(plan['memory_per_worker'])} each"),
        ("estimate", f"about {format_duration(estimate['run_seconds'])} and "
                     f"{estimate['core_hours']:.3g} core-hours ({estimate['basis']})"),
        ("quota", Text(f"{quota['verdict']}" + (f": {quota['reason']}" if quota["reason"] else "")
                       + f" (quota {quota['quota']}, {quota['core_hours_used']:g} core-hours used)",
                       style=verdict_style)),
        ("result cap", format_size(plan["result_cap_bytes"])),
    ]  # fmt: skip
    rows += [("warning", Text(w, style="yellow")) for w in plan["warnings"]]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _with_source(value: str, job: dict[str, Any], field: str) -> str:
    source = job.get(f"{field}_source")
    return f"{value} ({source})" if source else value


def egress_text(job: dict[str, Any]) -> str:
    """The job's egress budget and what each channel its owner reads has used of it."""
    egress = job.get("egress")
    if not egress:
        return "-"
    channels = ", ".join(
        f"{name} {format_size(egress[name])}" for name in ("results", "provenance", "texts", "log")
    )
    return (
        f"{format_size(egress['used'])} of {format_size(egress['budget'])} used ({channels}); "
        f"budget: {egress['source']}"
    )


def events_table(events: Iterable[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", title="events", title_justify="left")
    table.add_column("at", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("reason")
    for event in events:
        at = local_time(event["at"], "%H:%M:%S.%f")[:-3]
        table.add_row(at, state_text(event["to_state"]), event["reason"])
    return table


def results_table(results: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("key", "file", "kind", "shape", "dtype", "size"):
        table.add_column(name, justify="right" if name == "size" else "left")
    for result in results:
        shape = result.get("shape")
        table.add_row(
            result["key"],
            result["filename"],
            result["kind"],
            " x ".join(str(n) for n in shape) if shape else "-",
            result.get("dtype") or "-",
            format_size(result["size"]),
        )
    return table


def datasets_table(datasets: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("name", "format", "arrays", "shape", "dtype", "access", "url"):
        table.add_column(name, no_wrap=name == "name")
    for dataset in datasets:
        default = next(
            (a for a in dataset["arrays"] if a["path"] == dataset["default_array"]),
            dataset["arrays"][0] if dataset["arrays"] else None,
        )
        table.add_row(
            dataset["name"],
            dataset["format"],
            str(len(dataset["arrays"])),
            " x ".join(str(n) for n in default["shape"]) if default else "-",
            default["dtype"] if default else "-",
            dataset["access"],
            dataset["url"],
        )
    return table


def arrays_table(dataset: dict[str, Any]) -> Table:
    """Path, shape, dtype, chunks, axes and level of each array of a dataset."""
    table = Table(header_style="bold")
    for name in ("path", "shape", "dtype", "chunks", "axes", "level"):
        table.add_column(name)
    for array in dataset["arrays"]:
        chunks = " x ".join(str(n) for n in array["chunks"])
        if array.get("shards"):
            chunks += f" (shards {' x '.join(str(n) for n in array['shards'])})"
        path = array["path"] or "(root)"
        if array["path"] == dataset["default_array"]:
            path += " *"
        table.add_row(
            path,
            " x ".join(str(n) for n in array["shape"]),
            array["dtype"],
            chunks,
            ", ".join(array["axes"]),
            "-" if array.get("level") is None else str(array["level"]),
        )
    return table


# -- live progress ----------------------------------------------------------------------------


def watch(client: Client, job_ids: list[str], *, poll: float = 0.25) -> list[dict[str, Any]]:
    """Show a progress bar per job (chunks done of chunks total) until every job ends."""
    progress = Progress(
        StateSpinner(),
        TextColumn("{task.fields[name]:<18}"),
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
        console=stderr(),
        transient=False,
    )
    jobs: dict[str, dict[str, Any]] = {}
    tasks: dict[str, TaskID] = {}
    with progress:
        for job_id in job_ids:
            jobs[job_id] = job = client.job(job_id)
            tasks[job_id] = progress.add_task(
                job["state"], name=job["name"], total=None, ended=None
            )
        versions: dict[str, str | None] = dict.fromkeys(job_ids)
        while True:
            unfinished = [i for i in job_ids if not JobState(jobs[i]["state"]).terminal]
            # One job: the server answers when it changes (at most a second, so the bar
            # moves); several: each is asked in turn, then a pause.
            wait = 1.0 if len(unfinished) == 1 else 0.0
            for job_id in unfinished:
                changed, versions[job_id] = client.job_change(job_id, versions[job_id], wait=wait)
                if changed is not None:
                    jobs[job_id] = changed
            for job_id in job_ids:
                job, task = jobs[job_id], tasks[job_id]
                done, total = job["progress"]["chunks_done"], job["progress"]["chunks_total"]
                progress.update(task, description=job["state"], completed=done, total=total or None)
                if JobState(job["state"]).terminal:
                    progress.update(task, ended=job["state"])
                    progress.stop_task(task)
            if all(JobState(job["state"]).terminal for job in jobs.values()):
                return [jobs[job_id] for job_id in job_ids]
            if wait == 0.0 or versions[unfinished[0]] is None:
                time.sleep(poll)
