"""Run the API (and, by default, the dispatcher) with uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from insitu.api.app import create_app
from insitu.config import Settings


def serve(settings: Settings, *, run_dispatcher: bool = True, log_level: str = "info") -> None:
    """Serve the API in the foreground until interrupted."""
    app = create_app(settings, run_dispatcher=run_dispatcher)
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, log_level=log_level)


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
