"""The ``insitu`` command: every command, and the entry point."""

from __future__ import annotations

import typer

from insitu.cli import courses, datasets, demo, images, jobs, server, users
from insitu.cli.app import InsituGroup

app = typer.Typer(
    cls=InsituGroup,
    name="insitu",
    help="Send the analysis to the data: run analyses next to Zarr imaging data, "
    "get back only the small result. INSITU_URL and INSITU_TOKEN choose the server "
    "and your identity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

app.command(rich_help_panel="Server")(server.server)
app.command(rich_help_panel="Server")(demo.demo)
app.command(rich_help_panel="Server")(server.version)
app.add_typer(datasets.app, name="datasets", rich_help_panel="Data")
app.command(rich_help_panel="Data")(datasets.lineage)
app.add_typer(images.app, name="image", rich_help_panel="Data")
app.command(rich_help_panel="Jobs")(jobs.submit)
app.command(rich_help_panel="Jobs")(jobs.plan)
app.command(rich_help_panel="Jobs")(jobs.status)
app.command("list", rich_help_panel="Jobs")(jobs.list_jobs)
app.command(rich_help_panel="Jobs")(jobs.logs)
app.command(rich_help_panel="Jobs")(jobs.cancel)
app.command(rich_help_panel="Jobs")(jobs.results)
app.add_typer(users.app, name="users", rich_help_panel="Access")
app.command(rich_help_panel="Access")(users.whoami)
app.command(rich_help_panel="Access")(users.audit)
app.add_typer(courses.app, name="course", rich_help_panel="Access")


def main() -> None:
    """Entry point of the ``insitu`` script."""
    app()


if __name__ == "__main__":
    main()
