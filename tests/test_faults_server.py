"""Faults of the server and its database, injected into real components by the test.

The server runs as ``insitu server`` in a subprocess (local backend) and is killed with
SIGKILL or stopped with SIGTERM while jobs run; PostgreSQL is a private instance the test
stops and starts under load. Each job's analysis appends a line to a file named after
the job, so the tests count how often each job ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from fakes import FakeBackend, World
from faultlab import (
    ServerProcess,
    job_processes,
    kill_job_processes,
    live_jobs,
    postgres_instance,
    runs,
    wait_terminal,
    write_analysis,
)
from helpers import require_seaweedfs, wait_for
from insitu.client import Client
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database, unavailable
from insitu.dispatcher import Dispatcher
from insitu.services import auth, datasets

DATASET = "fault/movie"
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def counted(folder: Path, seconds: float, **params: Any) -> dict[str, Any]:
    """A job spec whose analysis records each of its runs in ``folder``."""
    return {
        "dataset": DATASET,
        "analysis": {
            "entrypoint": "faultlab_analysis:counted",
            "params": {"folder": str(folder), "seconds": seconds, **params},
        },
    }


def prepare(server: ServerProcess, movie: Path, code: Path) -> str:
    """Register the test movie and upload the counting analysis; the bundle's id."""
    with server.client() as client:
        client.register_dataset(DATASET, str(movie))
        return client.upload_code(code)


def check_each_job_ended_once(
    client: Client, records: dict[str, Any], folder: Path
) -> dict[str, list[tuple[int, int]]]:
    """Every job is final, with one final transition, no state entered twice, and its
    analysis run once if it succeeded (at most once otherwise); the runs of each job."""
    seen: dict[str, list[tuple[int, int]]] = {}
    for job_id, record in records.items():
        events = client.events(job_id)
        states = [e["to_state"] for e in events]
        finals = [s for s in states if s in TERMINAL]
        assert finals == [record["state"]] and states[-1] == record["state"], (job_id, states)
        assert len(set(states)) == len(states), f"{job_id} went through a state twice: {states}"
        assert all(e["reason"] for e in events), (job_id, events)
        seen[job_id] = runs(folder, job_id)
        if record["state"] == "succeeded":
            assert len(seen[job_id]) == 1, f"{job_id} ran {len(seen[job_id])} times"
        else:  # failed with a reason a person can act on, and never run twice
            assert record["error"] and record["reason"], record
            assert len(seen[job_id]) <= 1, f"{job_id} ran {len(seen[job_id])} times"
    return seen


# -- 1. kill -9 of the server while jobs run ------------------------------------------------


KILLS = 5


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_kill_9_while_jobs_run_loses_nothing_and_runs_nothing_twice(
    database: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    movie: tuple[Path, np.ndarray],
) -> None:
    """SIGKILL the server at random moments, five times, restarting it with the same home
    and dispatcher id: every job ends exactly once, none is lost, none runs twice, and the
    jobs whose server died under them are re-adopted by the next one."""
    url = str(request.getfixturevalue("postgres_url")) if database == "postgres" else None
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    folder = tmp_path / "runs"
    folder.mkdir()
    server = ServerProcess(tmp_path / "home", dispatcher_id="fault-kill", database_url=url)
    submitted: list[str] = []
    # Jobs the API showed as started (provisioning or running) just before each kill, and
    # those of them whose runner still ran when the next server had started.
    hit: list[set[str]] = []
    outlived: set[str] = set()
    try:
        server.start()
        bundle = prepare(server, movie[0], write_analysis(tmp_path / "code"))

        def submit(count: int) -> None:
            with server.client() as client:
                for _ in range(count):
                    # Some end before the next server is up, some run on past it.
                    seconds = rng.choice([rng.uniform(0.3, 2.0), rng.uniform(4.0, 8.0)])
                    spec = counted(folder, round(seconds, 2))
                    submitted.append(client.submit(spec, bundle=bundle)["id"])

        def started() -> set[str]:
            with server.client() as client:
                jobs = client.jobs(states=["provisioning", "running"], limit=100)
            return {j["id"] for j in jobs}

        submit(8)
        for kill in range(KILLS):
            time.sleep(rng.uniform(0.1, 2.0))
            if kill % 2 == 0:  # every other kill waits for a job to be under way
                with contextlib.suppress(AssertionError):
                    wait_for(started, timeout=15, interval=0.1)
            hit.append(started())
            server.kill()
            server.start()
            outlived |= hit[-1] & live_jobs(hit[-1])
            submit(2)

        with server.client() as client:
            records = wait_terminal(client, submitted, timeout=120)
            check_each_job_ended_once(client, records, folder)
            # None lost, none made up: the server knows exactly the jobs submitted.
            assert {j["id"] for j in client.jobs(limit=200)} == set(submitted)
        context = f"seed {seed}, started at each kill {hit}, outlived {outlived}, states " + str(
            sorted((r["state"], r.get("error_kind")) for r in records.values())
        )
        # The jobs under way at a kill kept running without a server and were re-adopted
        # by the next one (some while their runner still ran), which settled them from what
        # their runner left: none failed, none ran twice.
        assert outlived, f"no runner outlived its server into the next one; {context}"
        assert all(records[j]["state"] == "succeeded" for j in set().union(*hit)), context
        assert sum(r["state"] == "succeeded" for r in records.values()) >= len(submitted) // 2, (
            context
        )
        # Nothing of any job is left running.
        wait_for(lambda: not job_processes(submitted), timeout=30)
    finally:
        server.stop()
        kill_job_processes(submitted)


# -- 2. SIGTERM: stop taking work, leave running jobs to the next start, exit soon --------


def stalled_download(url: str, token: str, path: str) -> socket.socket:
    """A client that asks for a large download, reads a little and then nothing more."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    head = sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


@pytest.mark.timeout(180)
def test_sigterm_stops_taking_work_and_leaves_running_jobs_to_the_next_start(
    tmp_path: Path, movie: tuple[Path, np.ndarray]
) -> None:
    """On SIGTERM the server stops admitting jobs at once, refuses new connections, cuts
    a download that does not progress after a grace period, and exits within seconds,
    leaving the running jobs' processes alone; the next start adopts them."""
    folder = tmp_path / "runs"
    folder.mkdir()
    server = ServerProcess(
        tmp_path / "home",
        dispatcher_id="fault-term",
        env={
            "INSITU_DISPATCHER__MAX_RUNNING_JOBS": "3",
            "INSITU_LIMITS__RESULT_FRACTION": "100000",  # a large result for the download
        },
    )
    submitted: list[str] = []
    stalled: socket.socket | None = None
    try:
        server.start()
        bundle = prepare(server, movie[0], write_analysis(tmp_path / "code"))
        with server.client() as client:
            big = client.submit(counted(folder, 0, size=32 << 20), bundle=bundle)["id"]
            submitted.append(big)
            assert client.wait(big, timeout=60)["state"] == "succeeded"
            # One job ends while the server shuts down, two outlive it; two wait in the queue.
            short = client.submit(counted(folder, 5.0), bundle=bundle)["id"]
            long = [client.submit(counted(folder, 12.0), bundle=bundle)["id"] for _ in range(2)]
            queued = [client.submit(counted(folder, 0.5), bundle=bundle)["id"] for _ in range(2)]
            submitted += [short, *long, *queued]
            running = [short, *long]
            wait_for(
                lambda: (
                    all(client.job(j)["state"] in ("running", "succeeded") for j in running)
                    and all(runs(folder, j) for j in running)
                ),
                timeout=60,
            )
            assert all(client.job(j)["state"] == "running" for j in long)
            waiting = [j for j in queued if client.job(j)["state"] == "queued"]
            assert waiting
        # A download that never completes must not hold the shutdown up for ever.
        stalled = stalled_download(server.url, server.token, f"/v1/jobs/{big}/results/blob.npy")
        first = server.pid

        began = time.monotonic()
        server.terminate()
        time.sleep(1.0)
        if server.process is not None and server.process.poll() is None:  # still winding down
            with pytest.raises(httpx.TransportError):  # ... and taking no new requests
                httpx.get(f"{server.url}/healthz", timeout=2)
        code = server.wait_exit(timeout=30)
        took = time.monotonic() - began
        assert code is not None and took < 10, f"the server took {took:.1f} s to stop on SIGTERM"
        # The jobs running then were neither failed nor killed by the shutdown ...
        database = Database(f"sqlite:///{server.home / 'insitu.db'}")
        with database.session() as session:
            states = {j: queries.job_by_id(session, j).state for j in submitted}
        database.dispose()
        assert all(states[j] in ("running", "succeeded") for j in running), states
        # ... and nothing was started after the signal: the queued jobs wait for the next start.
        assert all(states[j] == "queued" for j in waiting), states
        assert not any(runs(folder, j) for j in waiting)
        assert all(job_processes([j]) for j in long), "shutdown killed a running job"

        server.start()
        with server.client() as client:
            records = wait_terminal(client, submitted, timeout=90)
            seen = check_each_job_ended_once(client, records, folder)
        assert all(r["state"] == "succeeded" for r in records.values()), records
        # The long jobs were adopted: started by the first server, finished by the second.
        assert all(seen[j][0][1] == first for j in long), seen
        wait_for(lambda: not job_processes(submitted), timeout=20)
    finally:
        if stalled is not None:
            stalled.close()
        server.stop()
        kill_job_processes(submitted)


@pytest.mark.timeout(120)
def test_sigterm_also_stops_the_embedded_object_store(tmp_path: Path) -> None:
    """``insitu server --store seaweedfs`` started SeaweedFS: SIGTERM stops it as well,
    instead of leaving it running (and holding its ports) without its server."""
    require_seaweedfs()
    server = ServerProcess(
        tmp_path / "home", dispatcher_id="fault-s3", args=("--store", "seaweedfs")
    )
    weed: list[psutil.Process] = []
    try:
        server.start()
        weed = [p for p in psutil.Process(server.pid).children() if "weed" in p.name()]
        assert weed, "no SeaweedFS process under the server"
        server.terminate()
        assert server.wait_exit(timeout=30) is not None
        _, alive = psutil.wait_procs(weed, timeout=5)
        assert not alive, f"SeaweedFS outlived its server: {alive}"
    finally:
        server.stop()
        for process in weed:
            with contextlib.suppress(psutil.Error):
                process.kill()


# -- 3. PostgreSQL restarted under load ---------------------------------------------------


class Load:
    """Clients submitting jobs and reading them, recording every answer, until stopped."""

    def __init__(self, server: ServerProcess, folder: Path, bundle: str) -> None:
        self.server, self.folder, self.bundle = server, folder, bundle
        self.answers: list[tuple[float, str, int, httpx.Headers, str]] = []
        self.transport_errors: list[str] = []
        self.accepted: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._submit, daemon=True),
            threading.Thread(target=self._read, daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _call(self, http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.transport_errors.append(f"{method} {path}: {exc!r}")
            raise
        self.answers.append(
            (
                time.monotonic(),
                f"{method} {path}",
                response.status_code,
                response.headers,
                response.text[:500],
            )
        )
        return response

    def _http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {self.server.token}"},
            timeout=30,
        )

    def _submit(self) -> None:
        with self._http() as http:
            while not self._stop.is_set():
                body = {"spec": counted(self.folder, 0.5), "code_bundle": self.bundle}
                try:
                    response = self._call(http, "POST", "/v1/jobs", json=body)
                except httpx.TransportError:
                    continue
                if response.status_code == 201:
                    self.accepted.append(response.json()["id"])
                self._stop.wait(0.4)

    def _read(self) -> None:
        with self._http() as http:
            while not self._stop.is_set():
                try:
                    self._call(http, "GET", "/healthz")
                    if self.accepted:
                        self._call(http, "GET", f"/v1/jobs/{self.accepted[-1]}")
                    self._call(http, "GET", "/v1/jobs", params={"limit": 5})
                except httpx.TransportError:
                    pass
                self._stop.wait(0.05)


@pytest.mark.timeout(240)
@pytest.mark.postgres
def test_postgres_restart_under_load_answers_503_and_recovers_by_itself(
    tmp_path: Path, movie: tuple[Path, np.ndarray]
) -> None:
    """A private PostgreSQL crashes (stop -m immediate) while clients submit and read jobs
    and jobs run: every request meanwhile gets 503 with Retry-After and a message (never a
    500 or a dropped connection); once PostgreSQL is back the same server process answers
    again by itself, and every job accepted runs once and succeeds."""
    folder = tmp_path / "runs"
    folder.mkdir()
    with postgres_instance() as postgres:
        server = ServerProcess(
            tmp_path / "home", dispatcher_id="fault-pg", database_url=postgres.url
        )
        load: Load | None = None
        try:
            server.start()
            bundle = prepare(server, movie[0], write_analysis(tmp_path / "code"))
            with Load(server, folder, bundle) as load:
                wait_for(lambda: any(runs(folder, j) for j in load.accepted), timeout=60)
                postgres.stop("immediate")
                down = time.monotonic()
                time.sleep(4)
                up = time.monotonic()
                postgres.start()
                wait_for(
                    lambda: any(
                        a[0] > up and a[1] == "GET /healthz" and a[2] == 200 for a in load.answers
                    ),
                    timeout=30,
                )
                recovered = time.monotonic()
                time.sleep(2)  # more jobs, after the database is back
            assert server.process is not None and server.process.poll() is None
            assert not load.transport_errors, load.transport_errors[:5]
            broken = [a for a in load.answers if a[2] >= 500 and a[2] != 503]
            assert not broken, broken[:5]
            outage = [a for a in load.answers if down + 0.5 < a[0] < up]
            assert len(outage) >= 10 and all(a[2] == 503 for a in outage), outage[:5]
            for _, _, _, headers, text in outage:
                assert int(headers["retry-after"]) >= 1
                assert "database" in text and "retry" in text, text
            assert recovered - up < 20
            after = [a for a in load.answers if a[0] > recovered + 0.5]
            failing = [a[:3] for a in after if a[2] >= 500]
            assert after and not failing, failing[:5]
            assert any(a[1] == "POST /v1/jobs" and a[2] == 201 for a in after)
            # No job is lost: each one accepted runs once and succeeds, also those the
            # dispatcher was watching while the database was away.
            assert len(load.accepted) >= 5
            with server.client() as client:
                records = wait_terminal(client, load.accepted, timeout=120)
                check_each_job_ended_once(client, records, folder)
            assert all(r["state"] == "succeeded" for r in records.values()), records
        finally:
            server.stop()
            kill_job_processes(load.accepted if load else [])


# -- 4. the database fails between a job's start and its record ----------------------------


def fake_world(db: Database, settings: Settings, movie: Path) -> World:
    """A researcher and the movie (registered by an admin) for the fake backend's jobs."""
    with db.session() as session:
        admin, _ = auth.create_user(session, "root", auth.Role.ADMIN)
        user, _ = auth.create_user(session, "ada", auth.Role.RESEARCHER)
        session.commit()
        datasets.register(session, admin, "test/movie", str(movie), access_rule="public")
    settings.local.allow_untrusted_code = True  # the fake backend runs no code
    return World(db, settings, user)


@pytest.mark.timeout(60)
def test_a_job_started_but_not_recorded_is_not_started_again(
    db: Database,
    settings: Settings,
    movie: tuple[Path, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend started the job, then the database went away before its handle was
    stored: the next pass records that handle instead of starting the job a second time."""
    world = fake_world(db, settings, movie[0])
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    original = Dispatcher._apply
    failures = [OperationalError("UPDATE jobs", {}, Exception("server closed the connection"))]

    def flaky(self: Dispatcher, job_id: str, to: Any, reason: str = "", **fields: object) -> None:
        if failures and getattr(to, "value", None) == "provisioning":
            raise failures.pop()
        original(self, job_id, to, reason, **fields)

    monkeypatch.setattr(Dispatcher, "_apply", flaky)
    with pytest.raises(OperationalError):
        asyncio.run(dispatcher.reconcile_once())
    with db.session() as session:
        assert queries.job_by_id(session, job.id).state == "admitted"
    asyncio.run(dispatcher.reconcile_once())
    asyncio.run(dispatcher.reconcile_once())
    assert backend.started == [job.id]
    with db.session() as session:
        stored = queries.job_by_id(session, job.id)
        assert stored.state == "provisioning" and stored.handle is not None


@pytest.mark.timeout(60)
def test_the_dispatcher_outlives_a_database_that_is_down(
    db: Database, settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    """Passes that fail because the database is unreachable are retried, the start-up
    clean-up included, and the dispatcher goes on once it answers again."""
    world = fake_world(db, settings, movie[0])
    job = world.submit()
    backend = FakeBackend()
    real = world.db
    broken = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    dispatcher = Dispatcher(world.settings, broken, backend)

    async def scenario() -> None:
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0.5)
        assert not task.done() and backend.started == []
        dispatcher.db = real  # the database is back
        for _ in range(100):
            if backend.started:
                break
            await asyncio.sleep(0.05)
        dispatcher.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    broken.dispose()
    assert backend.started == [job.id]


# -- 5. the server dies between starting a job's process and recording it -----------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("finished_meanwhile", [False, True], ids=["running", "finished"])
def test_a_runner_started_before_a_restart_is_adopted_not_started_again(
    settings: Settings,
    tmp_path: Path,
    movie: tuple[Path, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    finished_meanwhile: bool,
) -> None:
    """The first server starts a job's runner and dies before storing its handle (here:
    storing it fails until the server stops); the next server must adopt that runner
    (still running, or finished while no server was up), not start the analysis a
    second time."""
    from insitu.server import BackgroundServer

    folder = tmp_path / "runs"
    folder.mkdir()
    settings.local.worker_processes = False

    def dies_here(*_: object) -> None:
        raise RuntimeError("the server died right after starting the job")

    monkeypatch.setattr(Dispatcher, "_record_start", dies_here)
    first = BackgroundServer(settings).start()
    job_id = ""
    try:
        token = settings.admin_token_path.read_text().strip()
        with Client(first.url, token) as client:
            client.register_dataset(DATASET, str(movie[0]))
            bundle = client.upload_code(write_analysis(tmp_path / "code"))
            job_id = client.submit(
                counted(folder, 0.2 if finished_meanwhile else 4.0), bundle=bundle
            )["id"]
            wait_for(lambda: runs(folder, job_id), timeout=60)
            assert client.job(job_id)["state"] == "admitted"
            if finished_meanwhile:
                outcome = Path(settings.resolved_workspace_url.removeprefix("file://"))
                wait_for(lambda: (outcome / job_id / "outcome.json").exists(), timeout=60)
                wait_for(lambda: not job_processes([job_id]), timeout=60)  # runner gone
        first.stop()
        monkeypatch.undo()
        second = BackgroundServer(settings).start()
        try:
            with Client(second.url, token) as client:
                done = client.wait(job_id, timeout=60)
            assert done["state"] == "succeeded", done
            assert len(runs(folder, job_id)) == 1, f"the analysis ran {runs(folder, job_id)}"
        finally:
            second.stop()
    finally:
        first.stop()
        kill_job_processes([job_id])


# -- 6. which database errors are "retry later" (503) and which are faults (500) ----------


@pytest.mark.timeout(60)
def test_only_a_database_that_cannot_serve_now_counts_as_unavailable(tmp_path: Path) -> None:
    """A refused connection or a locked SQLite file is 'retry later'; a missing table or
    a broken constraint is a fault of the server and must stay a 500."""
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(OperationalError) as missing_table, database.session() as session:
        session.execute(text("SELECT * FROM no_such_table"))
    database.dispose()
    assert not unavailable(missing_table.value)
    locked = OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    assert unavailable(locked)
    refused = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(OperationalError) as down, refused.session() as session:
        session.execute(text("SELECT 1"))
    refused.dispose()
    assert unavailable(down.value)
    assert not unavailable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not unavailable(ValueError("not a database error"))


def test_a_server_started_while_its_database_is_down_says_so_in_one_line(tmp_path: Path) -> None:
    """No traceback: the database's address (without a password), why, and what to do."""
    import subprocess
    import sys

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "INSITU_HOME": str(tmp_path / "home"),
        "INSITU_DATABASE_URL": f"postgresql+psycopg://insitu:s3cret@127.0.0.1:{port}/insitu",
        "PATH": str(Path(sys.executable).parent),
    }
    started = subprocess.run(
        [str(Path(sys.executable).parent / "insitu"), "server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = started.stdout + started.stderr
    assert started.returncode != 0
    assert (
        f"cannot reach the database at postgresql+psycopg://insitu:***@127.0.0.1:{port}" in output
    )
    assert "INSITU_DATABASE_URL" in output and "Traceback" not in output and "s3cret" not in output
