"""User commands (admins): add, list, revoke; ``whoami`` for everyone; the audit log."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from insitu.cli import output
from insitu.cli.app import confirm, connect
from insitu.units import format_size

app = typer.Typer(help="Manage users and their API tokens (admins).")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
UserArg = Annotated[str, typer.Argument(help="User name.", metavar="NAME", show_default=False)]


def users_table(users: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("name", "role", "groups", "email", "created", "status"):
        table.add_column(name)
    for user in users:
        table.add_row(
            user["name"],
            user["role"],
            ", ".join(user["groups"]) or "-",
            user["email"] or "-",
            output.local_time(user["created_at"], "%Y-%m-%d"),
            Text("active", style="green") if user["active"] else Text("revoked", style="red"),
        )
    return table


@app.command()
def add(
    name: UserArg,
    role: Annotated[
        str,
        typer.Option(
            "--role", "-r", help="admin, instructor, researcher or participant.", show_default=False
        ),
    ],
    email: Annotated[str | None, typer.Option("--email", help="Their e-mail address.")] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", "-g", help="A group they belong to (repeat for several)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a user and print their API token (shown only this once)."""
    with connect() as client:
        user = client.add_user(name, role, email=email, groups=group or [])
    if as_json:
        output.print_json(user)
        return
    output.stderr().print(f"added {user['name']} ({user['role']}); their API token:")
    output.stdout().print(user["token"])
    output.stderr().print(
        "give it to them once; they set INSITU_TOKEN to it. It is stored only as a hash."
    )


@app.command("list")
def list_users(as_json: JsonOpt = False) -> None:
    """Every user with their role, groups and status."""
    with connect() as client:
        users = client.users()
    if as_json:
        output.print_json(users)
    else:
        output.stdout().print(users_table(users))


@app.command()
def revoke(
    name: UserArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Disable a user, revoke their tokens and cancel their unfinished jobs.

    Their finished jobs, results and audit entries stay.
    """
    confirm(
        f"Revoke user {name}, all their tokens, and cancel their unfinished jobs?",
        yes,
        "not revoked",
    )
    with connect() as client:
        user = client.revoke_user(name)
    if as_json:
        output.print_json(user)
    else:
        output.stdout().print(
            f"revoked {user['name']}: their tokens no longer work and their unfinished jobs "
            "are being cancelled"
        )


def whoami(as_json: JsonOpt = False) -> None:
    """The user your API token belongs to, with role and groups."""
    with connect() as client:
        user = client.whoami()
    if as_json:
        output.print_json(user)
        return
    groups = f", groups {', '.join(user['groups'])}" if user["groups"] else ""
    output.stdout().print(f"{user['name']} ({user['role']}{groups}) at {client.url}")


def audit_table(events: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("time", "user", "action", "target", "outcome", "bytes", "detail"):
        table.add_column(name, overflow="fold")
    for event in events:
        table.add_row(
            output.local_time(event["at"]),
            event["user"] or "-",
            event["action"],
            event["target"] or "-",
            Text(
                event["outcome"] + (f" x{event['count']}" if event.get("count", 1) > 1 else ""),
                style="red" if event["outcome"] == "denied" else "green",
            ),
            format_size(event["bytes"]) if event["bytes"] is not None else "-",
            event["detail"] or "",
        )
    return table


def audit(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user.")] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="Only this action: job.submit, result.download, ..."),
    ] = None,
    denied: Annotated[bool, typer.Option("--denied", help="Only refused requests.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many events.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The audit log (admins): submits, downloads, registrations, grants and denials."""
    with connect() as client:
        events = client.audit(
            user=user, action=action, outcome="denied" if denied else None, limit=limit
        )
    if as_json:
        output.print_json(events)
    elif not events:
        output.stderr().print("no audit events match")
    else:
        output.stdout().print(audit_table(events))
