"""Quotas: what one participant may use, checked at submit and at every admission.

A quota has optional parts: ``jobs`` (jobs running at once), ``workers`` (Dask
workers in use at once, over all running jobs), ``core_hours`` (core-hours used in all,
counted when jobs end), ``result_bytes`` (the largest result of one job), ``storage``
(bytes of derived datasets a user keeps), ``course_storage`` (bytes of derived datasets
all of a course's participants keep together) and ``retention`` (how long derived
datasets are kept before they are deleted). A job that
can never fit is refused at submit, saying why; one that fits later waits in ``queued``
with the reason in its record, and the dispatcher admits it when it fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from insitu.db.models import User, utcnow
from insitu.errors import InvalidInput, PermissionDenied
from insitu.units import format_duration, format_size, parse_duration, parse_size

_KEYS = {
    "jobs": "jobs",
    "workers": "workers",
    "core-hours": "core_hours",
    "core_hours": "core_hours",
}
_KEYS |= {"result-bytes": "result_bytes", "result_bytes": "result_bytes"}
_KEYS |= {"storage": "storage", "course-storage": "course_storage", "retention": "retention"}
_KEYS |= {"course_storage": "course_storage"}


class Quota(BaseModel):
    """What one user may use; an absent part is not limited."""

    model_config = ConfigDict(extra="forbid")

    jobs: int | None = Field(None, ge=1, description="Jobs running at once.")
    workers: int | None = Field(None, ge=1, description="Dask workers in use at once.")
    core_hours: float | None = Field(None, gt=0, description="Core-hours in all.")
    result_bytes: int | None = Field(None, ge=1, description="Largest result of one job.")
    storage: int | None = Field(None, ge=0, description="Bytes of derived datasets kept.")
    course_storage: int | None = Field(
        None, ge=0, description="Bytes of derived datasets a whole course keeps."
    )
    retention: float | None = Field(
        None, gt=0, description="Seconds derived datasets are kept before deletion."
    )

    @field_validator("result_bytes", "storage", "course_storage", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    def describe(self) -> str:
        parts = []
        if self.jobs is not None:
            parts.append(f"jobs={self.jobs}")
        if self.workers is not None:
            parts.append(f"workers={self.workers}")
        if self.core_hours is not None:
            parts.append(f"core-hours={self.core_hours:g}")
        if self.result_bytes is not None:
            parts.append(f"result-bytes={format_size(self.result_bytes)}")
        if self.storage is not None:
            parts.append(f"storage={format_size(self.storage)}")
        if self.course_storage is not None:
            parts.append(f"course-storage={format_size(self.course_storage)}")
        if self.retention is not None:
            parts.append(f"retention={format_duration(self.retention)}")
        return ",".join(parts) or "unlimited"


def parse_quota(text: str | dict[str, Any] | None) -> Quota:
    """``jobs=2,workers=2,core-hours=20,result-bytes=256MiB`` (or a dict) as a Quota."""
    if text is None or text == "":
        return Quota()
    values: dict[str, Any] = {}
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise InvalidInput(
                    f"quota part {part.strip()!r} has no '='; write e.g. "
                    "jobs=2,workers=2,core-hours=20,result-bytes=256MiB"
                )
            items.append((key, value))
    for key, value in items:
        name = _KEYS.get(str(key).strip().lower())
        if name is None:
            raise InvalidInput(
                f"quota {key!r} is not known; use jobs, workers, core-hours, result-bytes, "
                "storage, course-storage or retention"
            )
        values[name] = value.strip() if isinstance(value, str) else value
    try:
        return Quota.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid quota: {problems}") from None


def quota_of(user: User) -> Quota:
    return Quota.model_validate(user.quota or {})


@dataclass
class Usage:
    """What a user is using now, and has used."""

    running_jobs: int = 0
    running_workers: int = 0
    core_seconds: float = 0.0
    recent_jobs: int = 0  # jobs admitted lately: fair share's memory of who was served


def check_access_period(user: User, now: datetime | None = None) -> None:
    """Refuse a user whose access (their course) has ended."""
    if user.expires_at is not None and (now or utcnow()) >= user.expires_at:
        raise PermissionDenied(
            f"your access ended on {user.expires_at:%Y-%m-%d %H:%M} UTC; ask your instructor "
            "to extend it"
        )


def check_submit(user: User, workers: int, usage: Usage) -> None:
    """Refuse, saying why, a job that can never fit its owner's quota."""
    check_access_period(user)
    quota = quota_of(user)
    if quota.workers is not None and workers > quota.workers:
        raise InvalidInput(
            f"the job asks for {workers} workers; your quota allows {quota.workers} at once: "
            f"set resources.workers to {quota.workers} or fewer"
        )
    if quota.core_hours is not None and usage.core_seconds >= quota.core_hours * 3600:
        raise PermissionDenied(
            f"you have used {usage.core_seconds / 3600:.1f} of your {quota.core_hours:g} "
            "core-hours; ask your instructor for more"
        )


def waiting_reason(user: User, workers: int, usage: Usage) -> str | None:
    """Why a job must wait for its owner's running jobs to end, or None if it may start."""
    quota = quota_of(user)
    if quota.jobs is not None and usage.running_jobs >= quota.jobs:
        return (
            f"waiting: {usage.running_jobs} of your jobs are running and your quota allows "
            f"{quota.jobs} at once; it starts when one ends"
        )
    if quota.workers is not None and usage.running_workers + workers > quota.workers:
        return (
            f"waiting: your running jobs use {usage.running_workers} of your "
            f"{quota.workers} workers and this one needs {workers}; it starts when they end"
        )
    if quota.core_hours is not None and usage.core_seconds >= quota.core_hours * 3600:
        return f"waiting: your {quota.core_hours:g} core-hours are used up"
    return None


def result_cap(user: User, cap: int) -> int:
    """A job's result cap under its owner's quota."""
    quota = quota_of(user)
    return min(cap, quota.result_bytes) if quota.result_bytes is not None else cap
