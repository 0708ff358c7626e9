"""Long polls on a job: a request that waits for a job to change is woken when it does.

``GET /v1/jobs/{id}?wait=S`` with the ``ETag`` of the record a client holds answers as soon
as the record differs from it, instead of the client asking again and again. This process's
dispatcher reports each job it changes here; a request also looks again every
``recheck`` seconds, for changes made where no report reaches it (another process's
dispatcher, an API replica's cancel).
"""

from __future__ import annotations

import asyncio
import contextlib

from insitu.threadsafe import call_in_loop


class JobChanges:
    """Wakes the requests of this process that wait on a job, when the job changes."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the waiting requests run on (the server's)."""
        self._loop = loop

    def changed(self, job_id: str) -> None:
        """Wake whoever waits on ``job_id``; safe from any thread."""
        if self._loop is not None:  # before the server started, nobody can be waiting
            call_in_loop(self._loop, self._wake, job_id)

    def _wake(self, job_id: str) -> None:
        for event in self._waiting.get(job_id, ()):
            event.set()

    async def wait(self, job_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change of ``job_id``; whether one came."""
        event = asyncio.Event()
        self._waiting.setdefault(job_id, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            return event.is_set()
        finally:
            waiters = self._waiting.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiting[job_id]
