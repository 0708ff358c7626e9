"""What of a job's log and record its owner may read: one egress budget for every channel."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from insitu.db.models import Job
from insitu.states import JobState
from insitu.trusted.egress import Egress, budget
from insitu.units import format_size


def egress_of(job: Job, fraction: float | None = None) -> Egress:
    """The job's egress figures. Once it has ended, as settled; before, its budget is its
    result cap, or ``fraction`` of what it has scanned so far if that is less."""
    stored = (job.accounting or {}).get("egress")
    current = budget(job.result_cap_bytes, fraction, job.bytes_scanned if fraction else None)
    egress = Egress.from_json(stored, *current)
    if not JobState(job.state).terminal:
        egress.budget, egress.source = current
    return egress


@dataclass(frozen=True)
class LogWindow:
    """The part of a log chunk its reader gets."""

    data: bytes
    next_offset: int
    cut: bool = False
    notice: str = ""


def owner_log(
    session: Session, job: Job, data: bytes, offset: int, fraction: float | None = None
) -> LogWindow:
    """Cut a log chunk at the job's remaining egress budget and count what is served (flushes).

    The whole log stays on the server for admins; the owner reads it up to the budget left
    by the job's results, provenance and texts, and is told where and why it stops.
    """
    session.refresh(job, with_for_update=True)  # the dispatcher may be settling the job
    egress = egress_of(job, fraction)
    limit = egress.room_for("log")
    end = offset + len(data)
    if end <= limit:
        window = LogWindow(data, end)
    else:
        kept = data[: max(limit - offset, 0)]
        notice = ""
        # While the job runs, its budget grows with what it scans: cut without a word yet.
        if offset <= limit and JobState(job.state).terminal:
            notice = (
                f"\n[insitu: the log is cut here, at {format_size(limit)}: what a job's owner "
                f"can read of it counts against the job's egress budget of "
                f"{format_size(egress.budget)} ({egress.source}). Log less, or ask an admin "
                "for the whole log]\n"
            )
        window = LogWindow(kept, max(offset, min(end, limit)), cut=True, notice=notice)
    served = min(window.next_offset, limit)  # asking past the cut reads nothing
    if served > egress.log:
        egress.log = served
        job.accounting = {**(job.accounting or {}), "egress": egress.to_json()}
        session.flush()
    return window
