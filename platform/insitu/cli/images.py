"""``insitu image build``: an analysis image from a directory with a Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from insitu.cli import output
from insitu.cli.app import fail
from insitu.config import Settings

app = typer.Typer(help="Analysis images for the docker backend.", no_args_is_help=True)
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@app.command("build")
def build(
    directory: Annotated[Path, typer.Argument(help="Folder with a Dockerfile (and your code).")],
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Image name (default: insitu-<folder>).")
    ] = None,
    build_arg: Annotated[
        list[str] | None,
        typer.Option("--build-arg", help="KEY=VALUE for the Dockerfile, e.g. BASE_IMAGE=..."),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle",
            help="CA bundle for pip behind a TLS-intercepting proxy (PIP_CERT in the build).",
        ),
    ] = None,
    no_pin: Annotated[
        bool,
        typer.Option("--no-pin", help="Let pip choose versions instead of this environment's."),
    ] = False,
    network: Annotated[
        str, typer.Option("--network", help="Network of the build's RUN steps.")
    ] = "host",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print the build log.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Build an analysis image; the insitu runtime goes in with the Dockerfile's .insitu lines."""
    from insitu import images

    args: dict[str, str] = {}
    for item in build_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--build-arg {item!r}: write it as KEY=VALUE")
        args[key] = value
    name = tag or f"insitu-{directory.resolve().name.lower()}:latest"
    client = images.docker_client(Settings().docker.base_url)
    err = output.stderr()
    log: list[str] = []
    with Progress(
        TextColumn("[bold]building[/] {task.fields[tag]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=err,
        transient=not verbose,
        disable=as_json,
    ) as bar:
        task = bar.add_task("build", total=None, tag=name, step="")

        def on_line(line: str) -> None:
            log.append(line)
            if verbose and not as_json:
                bar.console.print(line, markup=False, highlight=False)
            match = _STEP.match(line)
            if match:
                done, total, what = int(match[1]), int(match[2]), match[3]
                bar.update(task, completed=done - 1, total=total, step=what[:60])

        try:
            built = images.build(
                client,
                directory,
                name,
                build_args=args,
                ca_bundle=ca_bundle,
                network=network,
                pin=not no_pin,
                on_line=on_line,
            )
        except Exception:
            if not verbose:
                for line in log[-15:]:
                    err.print(line, markup=False, highlight=False)
            raise
        bar.update(task, completed=bar.tasks[0].total or 1, step="done")
    info = {"tag": built.tag, "id": built.id, "seconds": round(built.seconds, 1)}
    if as_json:
        output.print_json(info)
        return
    output.stdout().print(f"built {built.tag} ({built.id[:19]}) in {built.seconds:.1f} s")
