"""Dataset commands: register, list, show."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import numpy as np
import typer
from rich.text import Text

from insitu.cli import output
from insitu.cli.app import connect
from insitu.units import format_size

app = typer.Typer(help="Register and inspect datasets (Zarr and OME-Zarr stores).")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameArg = Annotated[
    str,
    typer.Argument(
        help="Catalog name, e.g. ophys/session-001.", metavar="NAME", show_default=False
    ),
]


def store_url(url: str) -> str:
    """A local path given on the command line becomes absolute: the server may run elsewhere."""
    if urlparse(url).scheme:
        return url
    return Path(url).expanduser().resolve().as_uri()


def _show(dataset: dict[str, Any]) -> None:
    out = output.stdout()
    out.print(Text(dataset["name"], style="bold"), dataset["format"], dataset["url"], sep="  ")
    if dataset.get("description"):
        out.print(dataset["description"])
    default = next((a for a in dataset["arrays"] if a["path"] == dataset["default_array"]), None)
    if default is not None:
        size = math.prod(default["shape"]) * np.dtype(default["dtype"]).itemsize
        out.print(
            f"default array {default['path'] or '(root)'!r} (*), "
            f"{format_size(size)} uncompressed; "
            f"access {dataset['access']}"
        )
    out.print(output.arrays_table(dataset))
    if dataset.get("lineage"):
        lineage = dataset["lineage"]
        parents = ", ".join(
            f"{p['name']}[{p.get('array') or '(root)'}]" for p in lineage.get("parents", [])
        )
        kept = format_size(dataset["size"]) if dataset.get("size") is not None else "?"
        out.print(
            f"derived by job {dataset['derived_from_job']} (output {lineage.get('output')!r}) "
            f"from {parents}; {kept} in the store"
            + (f"; expires {dataset['expires_at']}" if dataset.get("expires_at") else "")
        )
        if not dataset.get("released"):
            out.print("readable only by those who may also read every parent ('insitu lineage')")


@app.command()
def register(
    name: NameArg,
    url: Annotated[
        str,
        typer.Argument(
            help="Where the Zarr store is: a path, file:///... or s3://bucket/path.zarr.",
            metavar="URL",
            show_default=False,
        ),
    ],
    access: Annotated[
        str,
        typer.Option(
            "--access",
            "-a",
            help="Who may run jobs on it: public, private (you, admins and users you grant) "
            "group:NAME or course:NAME.",
        ),
    ] = "private",
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="A sentence for people.")
    ] = None,
    same_url_ok: Annotated[
        bool,
        typer.Option("--same-url-ok", help="Register a URL the catalog has under another name."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a Zarr store under a catalog name; its arrays are read at once.

    Instructors register only under URL roots an admin allowed them
    ('insitu datasets roots list').
    """
    with connect() as client:
        dataset = client.register_dataset(
            name, store_url(url), description, access=access, same_url_ok=same_url_ok
        )
    if as_json:
        output.print_json(dataset)
        return
    output.stderr().print(f"registered {dataset['name']}")
    _show(dataset)


@app.command("list")
def list_datasets(as_json: JsonOpt = False) -> None:
    """The datasets in the catalog."""
    with connect() as client:
        datasets = client.datasets()
    if as_json:
        output.print_json(datasets)
    elif not datasets:
        output.stderr().print("no datasets yet; add one with 'insitu datasets register NAME URL'")
    else:
        output.stdout().print(output.datasets_table(datasets))


@app.command()
def show(name: NameArg, as_json: JsonOpt = False) -> None:
    """One dataset: its arrays with shape, dtype, chunks, axes and level."""
    with connect() as client:
        dataset = client.dataset(name)
    if as_json:
        output.print_json(dataset)
    else:
        _show(dataset)


@app.command()
def grant(
    name: NameArg,
    user: Annotated[
        str, typer.Argument(help="The user who may read it.", metavar="USER", show_default=False)
    ],
    as_json: JsonOpt = False,
) -> None:
    """Let a user run jobs on a dataset whatever its access rule (its owner or an admin)."""
    with connect() as client:
        dataset = client.grant(name, user)
    if as_json:
        output.print_json(dataset)
    else:
        output.stdout().print(f"{user} may now read {dataset['name']} (access {dataset['access']})")


@app.command()
def delete(name: NameArg, as_json: JsonOpt = False) -> None:
    """Delete a derived dataset and its data in the store (its owner or an admin)."""
    with connect() as client:
        dataset = client.delete_dataset(name)
    if as_json:
        output.print_json(dataset)
    else:
        output.stdout().print(f"deleted {name} ({format_size(dataset.get('size') or 0)} freed)")


@app.command()
def release(name: NameArg, as_json: JsonOpt = False) -> None:
    """Let a derived dataset's own access rule alone decide who reads it (its parents'
    owner or an admin); until then only those who may read every parent can read it."""
    with connect() as client:
        dataset = client.release_dataset(name)
    if as_json:
        output.print_json(dataset)
    else:
        output.stdout().print(f"released {name}: access {dataset['access']} alone decides now")


@app.command("access")
def set_access(
    name: NameArg,
    rule: Annotated[
        str,
        typer.Argument(
            help="public, private, group:NAME or course:NAME.", metavar="RULE", show_default=False
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Change a dataset's access rule (its owner or an admin)."""
    with connect() as client:
        dataset = client.set_access(name, rule)
    if as_json:
        output.print_json(dataset)
    else:
        output.stdout().print(f"{name}: access {dataset['access']}")


def lineage(name: NameArg, as_json: JsonOpt = False) -> None:
    """Where a dataset came from: its parents, the jobs and code that derived it."""
    with connect() as client:
        chain = client.lineage(name)
    if as_json:
        output.print_json(chain)
        return
    output.stdout().print(output.lineage_tree(chain))


roots_app = typer.Typer(
    help="URL roots datasets may be registered under, per role or user (admins)."
)
app.add_typer(roots_app, name="roots")


@roots_app.command("list")
def list_roots(as_json: JsonOpt = False) -> None:
    """Every allowed URL root and whom it is for."""
    with connect() as client:
        roots = client.url_roots()
    if as_json:
        output.print_json(roots)
        return
    if not roots:
        output.stderr().print(
            "no URL roots: only admins may register datasets; allow one with "
            "'insitu datasets roots allow PREFIX --role instructor'"
        )
        return
    for root in roots:
        whom = f"role {root['role']}" if root["role"] else f"user {root['user']}"
        output.stdout().print(f"{root['id']:>4}  {root['prefix']}  ({whom})")


@roots_app.command("allow")
def allow_root(
    prefix: Annotated[
        str,
        typer.Argument(
            help="A URL prefix (s3://bucket/prefix or a path).",
            metavar="PREFIX",
            show_default=False,
        ),
    ],
    role: Annotated[
        str | None, typer.Option("--role", help="The role it is for, e.g. instructor.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Or the one user it is for.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Let a role or one user register datasets under PREFIX."""
    with connect() as client:
        root = client.allow_url_root(store_url(prefix), role=role, user=user)
    if as_json:
        output.print_json(root)
    else:
        whom = f"role {root['role']}" if root["role"] else f"user {root['user']}"
        output.stdout().print(f"{whom} may now register datasets under {root['prefix']}")


@roots_app.command("remove")
def remove_root(
    root_id: Annotated[
        int, typer.Argument(help="The root's id ('insitu datasets roots list').", metavar="ID")
    ],
) -> None:
    """Withdraw a URL root; datasets registered under it stay."""
    with connect() as client:
        root = client.remove_url_root(root_id)
    output.stdout().print(f"removed {root['prefix']}")
