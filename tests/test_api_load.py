"""What keeps the API fast under a course's load: few database statements per request, a
pool that keeps its connections, a dispatcher woken from any thread, and the noop backend
the load test measures the API with (docs/profile-api.md)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from sqlalchemy import Engine, event, text

from fakes import FakeBackend
from faultlab import ServerProcess
from helpers import wait_for
from insitu.client import Client
from insitu.config import Settings
from insitu.db import engine as db_engine
from insitu.db.engine import Database
from insitu.dispatcher import Dispatcher
from insitu.errors import InvalidInput
from insitu.runtime.workspace import JOB_FILE, JobInput, Workspace
from insitu.server import BackgroundServer, background_server, serve

pytestmark = pytest.mark.timeout(90)
SPEC = {"dataset": "course/movie", "analysis": {"entrypoint": "ophys_analyses.x:f"}}


@pytest.fixture
def noop_settings(settings: Settings, database_url: str) -> Settings:
    """A server on the noop backend, on SQLite and on PostgreSQL."""
    settings.database_url = database_url
    settings.backend = "noop"
    return settings


def participant(admin: Client, movie: Path) -> Client:
    """A course participant (a quota, the dataset granted), as in the load test."""
    admin.register_dataset("course/movie", str(movie))
    course = admin.create_course(
        "load", [{"name": "P 0", "email": "p0@x.org"}], datasets=["course/movie"], quota="jobs=2"
    )
    return Client(admin.url, course["created"][0]["token"])


@pytest.fixture
def statements(noop_settings: Settings) -> Iterator[tuple[BackgroundServer, list[str]]]:
    """A server without a dispatcher, and the kinds of SQL statements sent from now on."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement.split()[0])

    with background_server(noop_settings, run_dispatcher=False) as server:
        event.listen(Engine, "before_cursor_execute", record)
        try:
            yield server, sent
        finally:
            event.remove(Engine, "before_cursor_execute", record)


def test_status_takes_two_statements_and_submit_seven(
    statements: tuple[BackgroundServer, list[str]],
    noop_settings: Settings,
    movie: tuple[Path, np.ndarray],
) -> None:
    server, sent = statements
    with Client(server.url, noop_settings.admin_token_path.read_text().strip()) as admin:
        api = participant(admin, movie[0])
    job = api.submit(SPEC)
    sent.clear()
    api.submit(SPEC)
    # Who, the queue's room, the dataset, its grant; the job, its first event, its audit row.
    assert sent == ["SELECT"] * 4 + ["INSERT"] * 3, sent
    sent.clear()
    assert api.job(job["id"])["dataset"] == "course/movie"
    assert sent == ["SELECT", "SELECT"], sent  # who, and the job with its dataset
    api.close()


def test_a_submit_writes_nothing_to_the_workspace_and_the_dispatcher_writes_the_input(
    noop_settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    with background_server(noop_settings, run_dispatcher=False) as server:
        with Client(server.url, noop_settings.admin_token_path.read_text().strip()) as admin:
            api = participant(admin, movie[0])
        job = api.submit(SPEC)
        workspace = Workspace(f"{noop_settings.resolved_workspace_url}/{job['id']}")
        assert workspace.read_bytes(JOB_FILE) is None
    api.close()
    with background_server(noop_settings) as server:  # its dispatcher starts the queued job
        api = Client(server.url, api.token)
        done = api.wait(job["id"], timeout=30)
        written = workspace.read_model(JOB_FILE, JobInput)
    assert done["state"] == "succeeded" and done["results"] == []
    assert written.job_id == job["id"] and written.dataset == "course/movie"
    assert [list(r) for r in written.ranges] == [[0, n] for n in np.shape(movie[1])]
    assert written.array.shape == list(np.shape(movie[1])) and written.spec == done["spec"]
    api.close()


def test_the_noop_backend_ends_each_job_succeeded_having_run_nothing(
    noop_settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    with background_server(noop_settings) as server:
        admin = Client(server.url, noop_settings.admin_token_path.read_text().strip())
        api = participant(admin, movie[0])
        ids = [api.submit(SPEC)["id"] for _ in range(5)]
        done = [api.wait(i, timeout=30) for i in ids]
        assert {d["state"] for d in done} == {"succeeded"}
        assert all(d["results"] == [] and d["bytes_returned"] > 0 for d in done)  # provenance
        assert admin.health()["backend"] == "noop" and admin.health()["warm_pool"] is None
        assert api.logs(ids[0])["text"] == ""
        events = [e["to_state"] for e in api.events(ids[0])]
        assert events == ["queued", "admitted", "provisioning", "succeeded"]
        admin.close()
    api.close()


def test_the_noop_backend_is_chosen_only_by_name() -> None:
    assert Settings().backend == "local"
    assert Settings(backend="noop").backend == "noop"


@pytest.mark.postgres
def test_a_pooled_connection_that_died_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping on every checkout, but a connection idle past PING_AFTER_IDLE is pinged, and
    one whose server process died is replaced: the caller never sees it."""
    monkeypatch.setattr(db_engine, "PING_AFTER_IDLE", 0.0)
    db = Database(postgres_url, connections=2)
    with db.engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    other = Database(postgres_url, connections=1)
    with other.engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    other.dispose()
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    db.dispose()


def test_the_pool_keeps_a_connection_for_each_thread(database_url: str) -> None:
    db = Database(database_url, connections=7)
    assert db.engine.pool.size() == 7  # type: ignore[attr-defined]
    db.dispose()


def test_the_dispatcher_is_woken_from_a_worker_thread(settings: Settings, db: Database) -> None:
    """Routes that run in threads wake the dispatcher's loop at once (an asyncio event set
    from another thread would wait for the loop's next wake-up)."""
    dispatcher = Dispatcher(settings, db, FakeBackend())

    async def woken() -> None:
        dispatcher._loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(dispatcher._wake.wait())
        await asyncio.sleep(0)
        threading.Thread(target=dispatcher.wake).start()
        await asyncio.wait_for(waiting, timeout=2)

    asyncio.run(woken())
    wait_for(lambda: dispatcher._wake.is_set(), timeout=2)


def test_several_api_processes_need_postgresql(settings: Settings) -> None:
    settings.server.processes = 2
    with pytest.raises(InvalidInput, match="INSITU_SERVER__PROCESSES=2 needs PostgreSQL"):
        serve(settings)


def replicas_of(pid: int) -> list[psutil.Process] | None:
    """The server's two API replicas, once both run (not multiprocessing's own helpers)."""
    replicas = [
        child
        for child in psutil.Process(pid).children()
        if "spawn_main" in " ".join(child.cmdline())
    ]
    return replicas if len(replicas) == 2 else None


@pytest.mark.postgres
def test_api_replicas_serve_beside_the_dispatcher_and_stop_with_it(
    tmp_path: Path, postgres_url: str, movie: tuple[Path, np.ndarray]
) -> None:
    """Three processes on one port: jobs submitted through any of them start at once (the
    replicas wake the dispatcher), and SIGTERM stops all three."""
    env = {"INSITU_SERVER__PROCESSES": "3", "INSITU_BACKEND": "noop"}
    home = tmp_path / "home"
    server = ServerProcess(home, dispatcher_id="multi", database_url=postgres_url, env=env)
    try:
        server.start()
        replicas = wait_for(lambda: replicas_of(server.pid), timeout=30)
        with server.client() as admin:
            api = participant(admin, movie[0])
        callers = [Client(server.url, api.token) for _ in range(6)]  # connections spread out
        ids = [c.submit(SPEC)["id"] for c in callers for _ in range(2)]
        done = [api.wait(i, timeout=30) for i in ids]
        assert {d["state"] for d in done} == {"succeeded"}
        waits = [
            (datetime.fromisoformat(d["started_at"]) - datetime.fromisoformat(d["created_at"]))
            for d in done
        ]
        assert max(w.total_seconds() for w in waits) < 5  # woken, not only polled
        for client in (*callers, api):
            client.close()
        server.terminate()
        assert server.wait_exit(30) is not None
        assert not [p for p in replicas if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        server.stop()
