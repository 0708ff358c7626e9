"""The noop backend: accepts every job and ends it at once, having run nothing.

For benchmarks and tests of the server itself (the API, the dispatcher, the database)
with the jobs' compute taken elsewhere: each job's outcome says it succeeded with no
results, and the server settles it as it settles any other job (it lists the results,
meters, writes the provenance). Only an operator's explicit ``INSITU_BACKEND=noop``
selects it; no default, CLI choice or job spec does, so no user can skip a job's work
on a server that runs jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from insitu import objectstore
from insitu.backends.base import Backend, BackendPhase, BackendStatus, JobHandle, LaunchRequest
from insitu.config import Settings
from insitu.runtime.workspace import OUTCOME_FILE, Outcome


class NoopBackend(Backend):
    """Ends every job at once: its outcome is "succeeded, nothing returned"."""

    name = "noop"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _finish(self, request: LaunchRequest) -> JobHandle:
        workspace = objectstore.workspace(self.settings, request.workspace_url)
        workspace.write_model(OUTCOME_FILE, Outcome(ok=True))
        return JobHandle(self.name, request.job_id)

    async def start(self, request: LaunchRequest) -> JobHandle:
        """Write the job's outcome (idempotent: the same file every time)."""
        return await asyncio.to_thread(self._finish, request)

    async def status(self, handles: Iterable[JobHandle]) -> dict[str, BackendStatus]:
        """Every started job has ended already."""
        return {h.job_id: BackendStatus(BackendPhase.EXITED, exit_code=0) for h in handles}

    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        """A job that ran nothing logged nothing."""
        return b"", offset

    async def cancel(self, handle: JobHandle, grace: float = 5.0) -> None:
        """Nothing runs, so nothing is stopped."""

    async def cleanup(self, handle: JobHandle) -> None:
        """Nothing was created, so nothing is removed."""
