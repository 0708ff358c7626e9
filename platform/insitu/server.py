"""Run the API (and, by default, the dispatcher) with uvicorn, in one process or several."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from types import FrameType

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from uvicorn.config import STARTUP_FAILURE

from insitu.api.app import create_app
from insitu.config import Settings
from insitu.errors import InvalidInput

# Seconds requests in flight get to finish after SIGTERM before they are cut off: a client
# that stops reading a download must not keep the server from stopping.
SHUTDOWN_GRACE = 5


class _Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or SIGINT also stops the dispatcher at once: no job
    is admitted or started while requests drain. Running jobs are left as they are, for the
    next start to adopt. ``cleanups`` run once it has shut down, before uvicorn re-raises
    the signal (which ends the process, and no ``finally`` of the caller runs then)."""

    def __init__(
        self, config: uvicorn.Config, app: FastAPI, cleanups: Sequence[Callable[[], None]] = ()
    ) -> None:
        super().__init__(config)
        self.app, self.cleanups = app, cleanups

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            for cleanup in self.cleanups:
                await asyncio.to_thread(cleanup)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        dispatcher = getattr(self.app.state, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.stop()


def serve(
    settings: Settings,
    *,
    run_dispatcher: bool = True,
    log_level: str = "info",
    on_shutdown: Sequence[Callable[[], None]] = (),
) -> None:
    """Serve the API in the foreground until interrupted (then exit within seconds);
    ``on_shutdown`` stops what the caller started next to it (an embedded object store).

    With ``server.processes`` above one, this process (the dispatcher's, if it runs one)
    and that many less one API replicas accept requests on the same socket.
    """
    replicas = settings.server.processes - 1
    if replicas and make_url(settings.resolved_database_url).get_backend_name() != "postgresql":
        raise InvalidInput(
            f"INSITU_SERVER__PROCESSES={settings.server.processes} needs PostgreSQL (SQLite "
            "writes from one process at a time); set INSITU_DATABASE_URL to a PostgreSQL "
            "database, or serve from one process"
        )
    app = create_app(settings, run_dispatcher=run_dispatcher)  # migrated before any replica
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=log_level,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    sockets, cleanups = None, list(on_shutdown)
    if replicas:
        sockets = [config.bind_socket()]
        cleanups.append(_start_replicas(app, settings, log_level, sockets[0], replicas))
    server = _Server(config, app, cleanups)
    # Ctrl-C: uvicorn re-raises SIGINT once shut down; that is a clean exit, not an error.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run does; the reason is logged


def _start_replicas(
    app: FastAPI, settings: Settings, log_level: str, listening: socket.socket, count: int
) -> Callable[[], None]:
    """Start ``count`` API replicas on ``listening``; return what stops them. Their submits
    and cancels wake this process's dispatcher through one shared event."""
    spawn = multiprocessing.get_context("spawn")
    wake = spawn.Event()
    processes = [
        spawn.Process(
            target=_replica,
            args=(settings, log_level, listening, wake),
            name=f"insitu-api-{i + 1}",
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()

    def relay() -> None:
        while True:
            wake.wait()
            wake.clear()
            if app.state.dispatcher is not None:
                app.state.dispatcher.wake()

    threading.Thread(target=relay, name="insitu-wake-relay", daemon=True).start()
    return lambda: _stop(processes)


def _stop(processes: list[SpawnProcess]) -> None:
    """Stop the replicas as uvicorn stops: SIGTERM, a grace period, then SIGKILL."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(SHUTDOWN_GRACE + 5)
        if process.is_alive():
            process.kill()
            process.join()


def _replica(settings: Settings, log_level: str, listening: socket.socket, wake: Event) -> None:
    """One API replica: requests only; the dispatcher, the backend's warm pool and its
    infrastructure are the first process's (its health says no warm pool)."""
    settings.local = settings.local.model_copy(update={"warm_pool_workers": 0})
    settings.docker = settings.docker.model_copy(update={"warm_pool_size": 0})
    app = create_app(settings, run_dispatcher=False)
    app.state.wake = wake.set
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[listening])


class BackgroundServer:
    """An API server on a thread of this process: for ``insitu demo`` and tests."""

    def __init__(self, settings: Settings, *, run_dispatcher: bool = True) -> None:
        self.settings = settings
        app = create_app(settings, run_dispatcher=run_dispatcher)
        config = uvicorn.Config(
            app,
            host=settings.server.host,
            port=settings.server.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="insitu-server", daemon=True)

    @property
    def url(self) -> str:
        """The base URL the server listens on (its real port, also when asked for port 0)."""
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded insitu server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


@contextmanager
def background_server(
    settings: Settings, *, run_dispatcher: bool = True
) -> Iterator[BackgroundServer]:
    """Run a server for the duration of a ``with`` block."""
    server = BackgroundServer(settings, run_dispatcher=run_dispatcher).start()
    try:
        yield server
    finally:
        server.stop()
