"""Job states and the only transitions allowed between them."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    ADMITTED = "admitted"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """True once the job can change no more."""
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})
ACTIVE = frozenset({JobState.ADMITTED, JobState.PROVISIONING, JobState.RUNNING})
_ENDINGS = {JobState.FAILED, JobState.CANCELLED}

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.ADMITTED, *_ENDINGS}),
    JobState.ADMITTED: frozenset({JobState.PROVISIONING, JobState.QUEUED, *_ENDINGS}),
    JobState.PROVISIONING: frozenset(
        {JobState.RUNNING, JobState.SUCCEEDED, JobState.TIMED_OUT, *_ENDINGS}
    ),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.TIMED_OUT, *_ENDINGS}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}


def can_transition(source: JobState, target: JobState) -> bool:
    """Whether a job may move from ``source`` to ``target``."""
    return target in ALLOWED[source]
