"""Fair share: which queued jobs to admit when there is room, across users and quotas.

Users take turns: the next job admitted is the oldest job of the user with the fewest
jobs running (counting the ones admitted in this pass), then of the user served least
lately (jobs admitted in the fair-share window), so one user with 50 queued jobs does
not hold back another's single job, even when the slots free up one at a time. A user
at their quota is skipped, and their queued jobs say why they wait; a user whose access
has ended has their jobs failed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from insitu.db.models import Job
from insitu.errors import PermissionDenied
from insitu.services.quotas import Usage, check_access_period, waiting_reason


def workers_of(job: Job) -> int:
    return int((job.spec or {}).get("resources", {}).get("workers", 1))


@dataclass
class Admission:
    """What one pass decided."""

    admit: list[Job] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why it waits
    expired: dict[str, str] = field(default_factory=dict)  # job id -> why it fails


def pick(candidates: list[Job], room: int, usage: dict[int, Usage], now: datetime) -> Admission:
    """Choose up to ``room`` jobs from ``candidates`` (oldest first), fairly across owners."""
    decision = Admission()
    queues: dict[int, deque[Job]] = {}
    for job in candidates:
        queues.setdefault(job.owner_id, deque()).append(job)
    for owner in queues:
        usage.setdefault(owner, Usage())
    while queues and len(decision.admit) < room:
        owner_id = min(
            queues,
            key=lambda o: (usage[o].running_jobs, usage[o].recent_jobs, queues[o][0].created_at),
        )
        queue = queues[owner_id]
        job = queue[0]
        try:
            check_access_period(job.owner, now)
        except PermissionDenied as exc:
            for ended in queue:
                decision.expired[ended.id] = exc.message
            del queues[owner_id]
            continue
        reason = waiting_reason(job.owner, workers_of(job), usage[owner_id])
        if reason is not None:
            for waiting in queue:
                decision.waiting[waiting.id] = reason
            del queues[owner_id]
            continue
        decision.admit.append(job)
        usage[owner_id].running_jobs += 1
        usage[owner_id].running_workers += workers_of(job)
        usage[owner_id].recent_jobs += 1
        queue.popleft()
        if not queue:
            del queues[owner_id]
    return decision
