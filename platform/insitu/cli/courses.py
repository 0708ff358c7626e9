"""``insitu course``: provision a class from a roster, add to it, report on it, close it."""

from __future__ import annotations

import csv
import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from insitu.cli import output
from insitu.cli.app import confirm, connect, fail
from insitu.units import format_size

app = typer.Typer(help="Courses: a class of participants with datasets, quotas and an end date.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
CourseArg = Annotated[str, typer.Argument(help="Course name.", metavar="NAME", show_default=False)]
RosterOpt = Annotated[
    Path,
    typer.Option(
        "--roster", help="CSV with a header: name, email (and optionally username).",
        show_default=False,
    ),
]  # fmt: skip
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Folder for the credentials files (default ./course-NAME)."),
]


def read_roster(path: Path) -> list[dict[str, str]]:
    """The roster's rows; a clear error for a missing file, columns or values."""
    if not path.is_file():
        raise fail(f"roster {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower() for c in reader.fieldnames or []}
        missing = {"name", "email"} - columns
        if missing:
            raise fail(
                f"roster {path} has no {' or '.join(sorted(missing))} column; its first line "
                "must name the columns, e.g. 'name,email'"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            clean = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not any(clean.values()):
                continue
            if not clean.get("name") or not clean.get("email"):
                raise fail(f"roster {path} line {line}: both name and email are needed")
            person = {"name": clean["name"], "email": clean["email"]}
            if clean.get("username"):
                person["username"] = clean["username"]
            rows.append(person)
    if not rows:
        raise fail(f"roster {path} lists nobody")
    return rows


def _expiry(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise fail(f"--expires {text!r} is not a date; write it as YYYY-MM-DD") from None
    # Access lasts through the given day (UTC).
    end = datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=timezone.utc)
    return end.isoformat()


def write_credentials(
    folder: Path, course: str, url: str, created: list[dict[str, Any]], datasets: list[str]
) -> list[Path]:
    """One private file per participant: the server, their token, a first command."""
    folder.mkdir(parents=True, exist_ok=True)
    first = f"insitu datasets show {datasets[0]}" if datasets else "insitu datasets list"
    paths = []
    for person in created:
        path = folder / f"{person['user']}.env"
        text = (
            f"# insitu credentials of {person['user']} for the course {course}. Keep private.\n"
            f"# Load them with:  source {path.name}\n"
            f"export INSITU_URL={url}\n"
            f"export INSITU_TOKEN={person['token']}\n"
            f"# A first command to try:  {first}\n"
            "# Then submit a job:        insitu submit my-job.yaml --wait\n"
            f"# Or sign in to the web pages with this link (it holds your token):\n"
            f"#   {url.rstrip('/')}/ui/login#token={person['token']}\n"
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        paths.append(path)
    return paths


def _enrolled_output(result: dict[str, Any], out: Path | None, url: str, as_json: bool) -> None:
    course = result["course"]
    folder = out or Path(f"course-{course['name']}")
    paths = write_credentials(folder, course["name"], url, result["created"], course["datasets"])
    if as_json:
        output.print_json(
            {
                "course": course,
                "participants": [
                    {"user": p["user"], "email": p["email"], "credentials": str(f)}
                    for p, f in zip(result["created"], paths, strict=True)
                ],
            }
        )
        return
    table = Table(box=None, header_style="bold")
    for column in ("user", "email", "credentials file"):
        table.add_column(column)
    for person, path in zip(result["created"], paths, strict=True):
        table.add_row(person["user"], person["email"] or "-", str(path))
    output.stdout().print(table)
    output.stderr().print(
        f"course {course['name']}: {course['participants']} participant(s), datasets "
        f"{', '.join(course['datasets']) or '-'}, quota {course['quota_text']}; hand each "
        f"person their file in {folder} (tokens are not shown again)"
    )


@app.command()
def create(
    name: CourseArg,
    roster: RosterOpt,
    datasets: Annotated[
        str, typer.Option("--datasets", help="Comma-separated datasets they may read.")
    ] = "",
    quota: Annotated[
        str | None,
        typer.Option("--quota", help="e.g. jobs=2,workers=2,core-hours=20,result-bytes=256MiB."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Last day of access, YYYY-MM-DD (UTC).")
    ] = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a course: participants with tokens, datasets, quota, end date; one file each."""
    people = read_roster(roster)
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    with connect() as client:
        result = client.create_course(
            name, people, datasets=names, quota=quota, expires=_expiry(expires)
        )
        url = client.url
    _enrolled_output(result, out, url, as_json)


@app.command("add")
def add_participants(
    name: CourseArg, roster: RosterOpt, out: OutOpt = None, as_json: JsonOpt = False
) -> None:
    """Add the participants of a roster to a course; one credentials file each."""
    people = read_roster(roster)
    with connect() as client:
        result = client.add_participants(name, people)
        url = client.url
    _enrolled_output(result, out, url, as_json)


@app.command("list")
def list_courses(as_json: JsonOpt = False) -> None:
    """The courses you manage (every course, for admins)."""
    with connect() as client:
        rows = client.courses()
    if as_json:
        output.print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("course", "owner", "participants", "datasets", "quota", "ends", "status"):
        table.add_column(column)
    for course in rows:
        table.add_row(
            course["name"],
            course["owner"],
            str(course["participants"]),
            ", ".join(course["datasets"]) or "-",
            course["quota_text"],
            output.local_time(course["expires_at"], "%Y-%m-%d") if course["expires_at"] else "-",
            "closed" if course["closed_at"] else "open",
        )
    output.stdout().print(table)


@app.command()
def report(name: CourseArg, as_json: JsonOpt = False) -> None:
    """Per participant: jobs, failures, core-hours, bytes scanned and returned."""
    with connect() as client:
        result = client.course_report(name)
    if as_json:
        output.print_json(result)
        return
    table = Table(box=None, header_style="bold", title=f"course {name}")
    for column in ("user", "jobs", "succeeded", "failed", "core-hours", "scanned", "returned"):
        table.add_column(column, justify="left" if column == "user" else "right")
    for row in result["participants"]:
        table.add_row(
            row["user"] + ("" if row["active"] else " (revoked)"),
            str(row["jobs"]),
            str(row["succeeded"]),
            str(row["failed"]),
            f"{row['core_hours']:.2f}",
            format_size(row["bytes_scanned"]),
            format_size(row["bytes_returned"]),
        )
    output.stdout().print(table)


@app.command()
def close(
    name: CourseArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Close a course: revoke every participant's token and cancel their unfinished jobs."""
    confirm(f"Revoke the tokens of every participant of {name}?", yes)
    with connect() as client:
        result = client.close_course(name)
    if as_json:
        output.print_json(result)
        return
    output.stdout().print(
        f"closed {name}: {result['tokens_revoked']} token(s) revoked, "
        f"{result.get('jobs_cancelled', 0)} unfinished job(s) cancelled; finished jobs, "
        "results and the audit log are kept"
    )
