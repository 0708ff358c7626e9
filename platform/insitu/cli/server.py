"""``insitu server`` and ``insitu version``."""

from __future__ import annotations

import socket
from enum import Enum
from typing import Annotated

import httpx
import typer
from sqlalchemy.engine import make_url

from insitu import __version__
from insitu.cli import output
from insitu.cli.app import connect, fail
from insitu.config import Settings
from insitu.errors import InsituError


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise fail(
                f"cannot listen on {host}:{port} ({exc.strerror}); is another insitu server "
                "running? choose another port with --port"
            ) from None


class StoreChoice(str, Enum):
    """Where ``insitu server`` keeps datasets and results."""

    SETTINGS = "settings"
    SEAWEEDFS = "seaweedfs"


class BackendChoice(str, Enum):
    """Execution backends ``insitu server`` can run jobs on."""

    LOCAL = "local"
    DOCKER = "docker"
    KUBERNETES = "kubernetes"


def server(
    host: Annotated[
        str | None, typer.Option("--host", help="Interface to bind (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="TCP port (default 8000).")
    ] = None,
    no_dispatcher: Annotated[
        bool,
        typer.Option("--no-dispatcher", help="Serve the API only; another process runs jobs."),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
    store: Annotated[
        StoreChoice,
        typer.Option(
            "--store",
            help="'settings': the INSITU_STORAGE__* settings (or local files); 'seaweedfs': "
            "start a local S3 server under INSITU_HOME for datasets and results.",
        ),
    ] = StoreChoice.SETTINGS,
    backend: Annotated[
        BackendChoice | None,
        typer.Option(
            "--backend",
            help="Where jobs run: 'local' processes, 'docker' containers or 'kubernetes' "
            "pods (default: INSITU_BACKEND, else local).",
        ),
    ] = None,
) -> None:
    """Run the insitu server (the API and, by default, the dispatcher that runs jobs)."""
    from insitu.server import serve

    settings = Settings()
    if backend is not None:
        settings.backend = backend.value
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings.server = settings.server.model_copy(update=updates)
    if settings.backend == "docker":
        from insitu.images import docker_client

        docker_client(settings.docker.base_url).close()  # a clear error now, not at a job
    if settings.backend == "kubernetes":
        from insitu.backends.kubernetes_backend import check_pods_reach

        check_pods_reach(settings)  # now, not when the first job's pods cannot read
    if settings.server.port:
        _check_port_free(settings.server.host, settings.server.port)
    err = output.stderr()
    url = f"http://{settings.server.host}:{settings.server.port}"
    where = url if settings.server.port else f"{settings.server.host}, on a free port"
    processes = settings.server.processes
    many = f", {processes} API processes" if processes > 1 else ""
    err.print(f"insitu {__version__} on {where} (backend {settings.backend}{many})")
    database = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    err.print(f"home: {settings.home}   database: {database}")  # never the password in a log
    if settings.admin_token is not None:
        err.print("admin token: the one in INSITU_ADMIN_TOKEN (given to the admin on first start)")
    else:
        err.print(
            f"admin token: {settings.admin_token_path} (written on first start; "
            "clients on this machine read it from there, others set INSITU_TOKEN)"
        )
    if settings.server.port and url != settings.url:
        err.print(f"clients: export INSITU_URL={url}")
    if store == StoreChoice.SETTINGS:
        serve(settings, run_dispatcher=not no_dispatcher, log_level=log_level)
        return
    from insitu.seaweedfs import DATA_BUCKET, embedded

    seaweed, settings = embedded(settings)
    err.print(
        f"object store: SeaweedFS at {seaweed.endpoint_url} (data under {seaweed.directory}); "
        f"put datasets in s3://{DATA_BUCKET}/ with the platform key in "
        f"{seaweed.directory / 'keys.json'}; results go to {settings.workspace_url}"
    )
    try:  # on SIGTERM uvicorn ends the process once shut down: no finally runs then
        serve(
            settings,
            run_dispatcher=not no_dispatcher,
            log_level=log_level,
            on_shutdown=[seaweed.stop],
        )
    finally:
        seaweed.stop()


def version(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The version of this client and, if it answers, of the server."""
    info: dict[str, object] = {"client": __version__}
    try:
        with connect() as client:
            info["url"] = client.url
            info["server"] = client.health()
    except (InsituError, httpx.HTTPError) as exc:
        info["server"] = None
        info["server_error"] = str(exc)
    if as_json:
        output.print_json(info)
        return
    out = output.stdout()
    out.print(f"insitu {__version__}")
    health = info["server"]
    if isinstance(health, dict):
        out.print(
            f"server {info['url']}: insitu {health['version']}, backend {health['backend']}, "
            f"database {health['database']}"
        )
    else:
        out.print(f"server: not reachable ({info['server_error']})")
