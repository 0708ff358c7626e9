"""Real components for the fault tests, each started and stopped by the test itself.

- :class:`ServerProcess`: ``insitu server`` as a subprocess of the test (local backend,
  SQLite in its home or the database it is given), killed with SIGKILL or SIGTERM and
  started again with the same home and dispatcher id.
- :class:`PostgresInstance`: a private PostgreSQL (``initdb`` into a temporary folder, on
  a free port of 127.0.0.1) that a test may stop and start; never the shared one.
- :data:`ANALYSIS`: an analysis that appends a line to ``<folder>/<job id>`` each time
  it runs, so a test can count how often each job's analysis ran.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from glob import glob
from pathlib import Path
from typing import Any

import httpx
import psutil

from helpers import missing, wait_for
from insitu.client import Client

ROOT = Path(__file__).resolve().parents[1]
INSITU = Path(sys.executable).parent / "insitu"

ANALYSIS = '''
"""Counts its own runs: one line per run in <folder>/<job id>."""

import os
import time


def counted(data, *, context, folder, seconds=1.0, size=0):
    job = os.environ.get("INSITU_JOB_ID", "unknown")
    with open(os.path.join(folder, job), "a") as runs:
        # Who started this run: the runner's parent is the server that spawned it.
        runs.write(f"{os.getpid()} {os.getppid()}\\n")
    time.sleep(seconds)
    result = {"frames": int(data.shape[0])}
    if size:
        import numpy as np

        result["blob"] = np.zeros(size, dtype="uint8")
    return result
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_analysis(directory: Path) -> Path:
    """A code folder holding the counting analysis (module ``faultlab_analysis``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "faultlab_analysis.py").write_text(ANALYSIS)
    return directory


def runs(folder: Path, job_id: str) -> list[tuple[int, int]]:
    """(runner pid, server pid) of each run of ``job_id``'s analysis."""
    path = folder / job_id
    if not path.exists():
        return []
    return [
        (int(pid), int(parent))
        for pid, parent in (line.split() for line in path.read_text().splitlines() if line)
    ]


def job_processes(job_ids: Iterable[str]) -> list[psutil.Process]:
    """Live runner processes (and their children) of the given jobs."""
    wanted = set(job_ids)
    found = []
    for process in psutil.process_iter(["environ", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if (process.info.get("environ") or {}).get("INSITU_JOB_ID") in wanted:
                found.append(process)
        except psutil.Error:
            continue
    return found


def live_jobs(job_ids: Iterable[str]) -> set[str]:
    """Which of the given jobs have a live runner process."""
    found = set()
    for process in job_processes(job_ids):
        with contextlib.suppress(psutil.Error):
            found.add(process.environ()["INSITU_JOB_ID"])
    return found


def kill_job_processes(job_ids: Iterable[str]) -> None:
    """Kill what is left of the given jobs' runners (a failed test must leave nothing)."""
    for process in job_processes(job_ids):
        with contextlib.suppress(psutil.Error):
            process.kill()


class ServerProcess:
    """``insitu server`` in a subprocess, restartable with the same home and dispatcher id."""

    def __init__(
        self,
        home: Path,
        *,
        dispatcher_id: str,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.home, self.args = home, args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("INSITU_", "AWS_")) and k != "PYTHONPATH"
        }
        environ.update(
            {
                "INSITU_HOME": str(home),
                "INSITU_DISPATCHER__ID": dispatcher_id,
                "INSITU_DISPATCHER__POLL_INTERVAL": "0.1",
                # Workers as threads of the runner: jobs start in about a second.
                "INSITU_LOCAL__WORKER_PROCESSES": "false",
                **(env or {}),
            }
        )
        if database_url is not None:
            environ["INSITU_DATABASE_URL"] = database_url
        self.env = environ
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.pids: list[int] = []

    @property
    def log_path(self) -> Path:
        return self.home / f"server-{self.starts}.log"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        assert self.process is None or self.process.poll() is not None
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(INSITU),
                    "server",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.home,
            )
        self.pids.append(self.process.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"insitu server exited with {self.process.returncode}:\n{self.log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"insitu server did not answer in {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        """Everything the server printed, over all its starts."""
        return "\n".join(
            path.read_text(errors="replace")
            for path in sorted(self.home.glob("server-*.log"), key=lambda p: p.stat().st_mtime)
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs; the jobs' processes live on."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: the server shuts down by itself."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        """The server's exit code, or None (and it is killed) if it is still up after
        ``timeout`` seconds."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    @property
    def token(self) -> str:
        return (self.home / "admin-token").read_text().strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.url, self.token, timeout=timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs, if installed."""
    installed = sorted(glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in [os.environ.get("INSITU_TEST_PG_BIN", ""), *installed]:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class PostgresInstance:
    """A PostgreSQL server of the test's own, on a free port of 127.0.0.1 (trust auth).

    PostgreSQL refuses to run as root: as root, the instance runs as the ``postgres``
    user, in a folder that user owns.
    """

    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            missing("postgres", "PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        assert binaries is not None
        self.bin = binaries
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                missing("postgres", "running as root and there is no 'postgres' user to run as")
            self.user = "postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="insitu-fault-pg-"))
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.user,
            cwd=self.directory,
            env={**os.environ, "LC_ALL": "C"},
        )
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")

    def init(self) -> PostgresInstance:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\nfsync = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
        return self

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; 'immediate' is a crash as far as clients can tell."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(Exception):
                self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def postgres_instance() -> Iterator[PostgresInstance]:
    """A started private PostgreSQL, removed afterwards."""
    instance = PostgresInstance()
    try:
        instance.init().start()
        yield instance
    finally:
        instance.remove()


def wait_terminal(client: Client, job_ids: Iterable[str], timeout: float) -> dict[str, Any]:
    """Every job's record once all of them are in a final state."""
    pending = list(job_ids)
    records: dict[str, Any] = {}

    def settled() -> bool:
        for job_id in list(pending):
            record = client.job(job_id)
            if record["state"] in ("succeeded", "failed", "cancelled", "timed_out"):
                records[job_id] = record
                pending.remove(job_id)
        return not pending

    wait_for(settled, timeout=timeout, interval=0.25)
    return records
