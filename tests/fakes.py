"""Fakes for driving the dispatcher through every path without real processes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from insitu.backends.base import (
    Backend,
    BackendPhase,
    BackendStatus,
    JobHandle,
    LaunchRequest,
    Metered,
)
from insitu.config import Settings
from insitu.db.engine import Database
from insitu.db.models import Job, User
from insitu.errors import BackendBusy
from insitu.runtime.workspace import (
    OUTCOME_FILE,
    RESULTS_DIR,
    STATUS_FILE,
    Outcome,
    Progress,
    ResultFile,
    Workspace,
)
from insitu.services import auth, datasets, jobs, url_roots


@dataclass
class FakeBackend(Backend):
    """A backend whose jobs do what the test says, failing at a chosen stage.

    ``fail_start``: start() raises. Otherwise a started job is RUNNING until the test
    calls :meth:`finish` (writes an outcome, then EXITED) or :meth:`vanish` (EXITED with
    nothing written).
    """

    fail_start: bool = False
    busy: int = 0  # start() says "not yet" this many times first
    requests: list[LaunchRequest] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    phases: dict[str, BackendPhase] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # what the backend says, by job
    name = "fake"  # type: ignore[misc]
    METERED: ClassVar[float] = 3.5  # core-seconds the fake "measures" for every job

    async def core_seconds(self, handle: JobHandle, cores: int, wall_s: float) -> Metered:
        return Metered(self.METERED, "the fake backend's meter")

    async def start(self, request: LaunchRequest) -> JobHandle:
        if self.fail_start:
            raise RuntimeError("no capacity left")
        self.requests.append(request)
        if self.busy:
            self.busy -= 1
            raise BackendBusy("waiting for a warm sandbox")
        self.started.append(request.job_id)
        self.phases[request.job_id] = BackendPhase.RUNNING
        return JobHandle("fake", request.job_id, {"workspace": request.workspace_url})

    async def status(self, handles: Iterable[JobHandle]) -> dict[str, BackendStatus]:
        return {
            h.job_id: BackendStatus(
                self.phases.get(h.job_id, BackendPhase.MISSING), detail=self.details.get(h.job_id)
            )
            for h in handles
        }

    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        return b"", offset

    async def cancel(self, handle: JobHandle, grace: float = 5.0) -> None:
        self.cancelled.append(handle.job_id)
        self.phases[handle.job_id] = BackendPhase.EXITED

    async def cleanup(self, handle: JobHandle) -> None:
        self.cleaned.append(handle.job_id)

    # -- what the job "does" ----------------------------------------------------------------

    @staticmethod
    def report_running(job: Job, done: int = 1, total: int = 4) -> None:
        Workspace(job.workspace).write_model(
            STATUS_FILE,
            Progress(phase="running", chunks_done=done, chunks_total=total, bytes_scanned=100),
        )

    def finish(self, job: Job, outcome: Outcome, results: dict[str, bytes] | None = None) -> None:
        workspace = Workspace(job.workspace)
        for name, data in (results or {}).items():
            workspace.write_bytes(f"{RESULTS_DIR}/{name}", data)
        workspace.write_model(OUTCOME_FILE, outcome)
        self.phases[job.id] = BackendPhase.EXITED

    def vanish(self, job: Job) -> None:
        self.phases[job.id] = BackendPhase.EXITED


def ok_outcome(size: int = 10) -> Outcome:
    return Outcome(
        ok=True,
        bytes_scanned=1000,
        bytes_returned=size,
        chunks_read=4,
        core_seconds=2.0,
        results=[
            ResultFile(
                key="mean",
                filename="mean.npy",
                kind="array",
                media_type="x",
                size=size,
                sha256="0" * 64,
            )
        ],
    )


@dataclass
class World:
    """A user and a registered dataset in a database, ready for jobs."""

    db: Database
    settings: Settings
    user: User

    def submit(self, **spec: object) -> Job:
        body = {"dataset": "test/movie", "analysis": {"entrypoint": "m:f"}, **spec}
        with self.db.session() as session:
            return jobs.submit(session, self.settings, self.user, body)


def make_world(db: Database, settings: Settings, movie_path: Path) -> World:
    with db.session() as session:
        user, _ = auth.create_user(session, "ada", auth.Role.RESEARCHER)
        curator, _ = auth.create_user(session, "ines", auth.Role.INSTRUCTOR)
        admin, _ = auth.create_user(session, "root", auth.Role.ADMIN)
        session.commit()
        url_roots.allow(session, admin, str(movie_path.parent), role="instructor", user_name=None)
        datasets.register(session, curator, "test/movie", str(movie_path), access_rule="public")
    # The fake backend runs no code: the local backend's rule on user code does not apply.
    settings.local.allow_untrusted_code = True
    return World(db, settings, user)
