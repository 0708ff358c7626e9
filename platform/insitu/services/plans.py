"""Plan a job before running it: what it reads, how long it should take, whether it fits.

A plan checks a spec exactly as a submit does (dataset, access, selection, code, image,
resources), then says what the job will read (chunks, decoded and estimated stored bytes),
estimates its run time and core-hours from the platform's own measured rates (recent
successful jobs, on the same dataset where there are enough), and whether the caller's
quota lets it start now, makes it wait, or refuses it. Nothing is stored.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from insitu.backends.base import Backend
from insitu.config import Settings
from insitu.db import queries
from insitu.db.models import Job, User
from insitu.errors import InsituError, InvalidInput
from insitu.services import quotas
from insitu.services.inputs import Waiting
from insitu.services.jobs import check_resources, check_target
from insitu.spec import load_spec
from insitu.states import JobState
from insitu.trusted import scan

RECENT_JOBS = 200  # successful jobs the rates are measured from
SAME_DATASET = 3  # jobs on the same dataset that make its own rate the one used
#: a rate for a platform that has run nothing yet: a core decodes about this many bytes
#: a second (the scan benchmark's order of magnitude; the plan says it is a guess)
DEFAULT_BYTES_PER_CORE_S = 100e6
DEFAULT_STARTUP_S = 5.0


@dataclass(frozen=True)
class Rates:
    """How fast jobs ran here: stored bytes per core-second, the time a job takes beyond
    its reading (queue, start, wind-down), and how known."""

    bytes_per_core_s: float
    startup_s: float
    stored_fraction: float | None  # stored bytes per decoded byte of the touched chunks
    jobs: int
    basis: str


class ReadPlan(BaseModel):
    """What the job will read."""

    dataset: str
    array: str
    shape: list[int]
    dtype: str
    chunks: list[int]
    shards: list[int] | None
    axes: list[str]
    selection: dict[str, list[int]] = Field(description="[start, stop) per named axis.")
    chunks_touched: int
    chunks_total: int
    bytes_selected: int = Field(description="Decoded bytes of the selection.")
    bytes_touched: int = Field(description="Decoded bytes of every chunk it touches.")
    stored_bytes_estimate: int | None = Field(
        None, description="Stored (compressed) bytes, from earlier jobs on this dataset."
    )


class Estimate(BaseModel):
    """Run time and core-hours, from the platform's measured rates."""

    run_seconds: float
    core_hours: float
    cores: int
    basis: str = Field(description="Which jobs the rates come from.")


class QuotaCheck(BaseModel):
    """What the caller's quota says of the job now."""

    verdict: str = Field(description="'starts', 'waits' or 'refused'.")
    reason: str | None = None
    quota: str = Field(description="The caller's quota, e.g. jobs=2,workers=2.")
    core_hours_used: float


class JobPlan(BaseModel):
    """A job as it would run, before it runs."""

    name: str
    entrypoint: str
    image: str | None
    workers: int
    threads_per_worker: int
    memory_per_worker: int
    timeout_s: float
    result_cap_bytes: int
    read: ReadPlan
    estimate: Estimate
    quota: QuotaCheck
    warnings: list[str]


def measured_rates(session: Session, dataset_id: int) -> Rates:
    """Rates of recent successful jobs: this dataset's when it has enough, else all."""
    recent = select(
        Job.dataset_id,
        Job.bytes_scanned,
        Job.core_seconds,
        Job.cores,
        Job.created_at,
        Job.started_at,
        Job.finished_at,
        Job.accounting,
    ).where(Job.state == JobState.SUCCEEDED.value, Job.core_seconds > 0, Job.bytes_scanned > 0)
    rows = session.execute(recent.order_by(Job.finished_at.desc()).limit(RECENT_JOBS)).all()
    own = [r for r in rows if r.dataset_id == dataset_id]
    used, basis = (own, "this dataset") if len(own) >= SAME_DATASET else (rows, "this platform")
    if not used:
        return Rates(DEFAULT_BYTES_PER_CORE_S, DEFAULT_STARTUP_S, None, 0,
                     "a guess: no job has succeeded here yet")  # fmt: skip
    rate = statistics.median(r.bytes_scanned / r.core_seconds for r in used)
    # Until the job runs (queue, cluster start), and what a run costs beyond its reading
    # (the runner's start, imports, writing results): its wall time less its cores' work.
    starts = [
        (r.started_at - r.created_at).total_seconds()
        + max((r.finished_at - r.started_at).total_seconds() - r.core_seconds / max(r.cores, 1), 0)
        for r in used
        if r.started_at is not None and r.finished_at is not None
    ]
    fractions = [
        r.bytes_scanned / bound
        for r in own
        if (bound := (r.accounting or {}).get("scan_bound")) and bound > 0
    ]
    return Rates(
        bytes_per_core_s=rate,
        startup_s=statistics.median(starts) if starts else DEFAULT_STARTUP_S,
        stored_fraction=min(statistics.median(fractions), 1.0) if fractions else None,
        jobs=len(used),
        basis=f"the median of {len(used)} recent successful job(s) on {basis}",
    )


def _quota_check(session: Session, owner: User, workers: int) -> QuotaCheck:
    counts = queries.usage_by_owner(session, [owner.id]).get(owner.id)
    usage = quotas.Usage(*counts) if counts else quotas.Usage()
    check = QuotaCheck(verdict="starts", quota=quotas.quota_of(owner).describe(),
                       core_hours_used=round(usage.core_seconds / 3600, 3))  # fmt: skip
    try:
        quotas.check_submit(owner, workers, usage)
    except InsituError as exc:
        return check.model_copy(update={"verdict": "refused", "reason": exc.message})
    waiting = quotas.waiting_reason(owner, workers, usage)
    if waiting:
        return check.model_copy(update={"verdict": "waits", "reason": waiting})
    return check


def plan_job(
    session: Session,
    settings: Settings,
    owner: User,
    raw_spec: dict[str, object] | str,
    code_bundle: str | None = None,
    backend: Backend | None = None,
) -> JobPlan:
    """The plan of a spec, checked as a submit checks it (its errors are the same)."""
    spec = load_spec(raw_spec)
    check_resources(spec, settings)
    dataset, array, ranges = check_target(session, settings, owner, spec, code_bundle, backend)
    if isinstance(dataset, Waiting) or array is None:
        waits = dataset.reason() if isinstance(dataset, Waiting) else "it has no array"
        raise InvalidInput(
            f"dataset {spec.dataset!r} does not exist yet: {waits}; plan this job "
            "once that job has succeeded (submitting it now is fine: it waits)"
        )
    touched = scan.chunks_touched(array, ranges)
    bound = scan.selection_bound(array, ranges)
    rates = measured_rates(session, dataset.id)
    stored = int(bound * rates.stored_fraction) if rates.stored_fraction is not None else None
    res = spec.resources
    core_seconds = (stored if stored is not None else bound) / rates.bytes_per_core_s
    run_seconds = rates.startup_s + core_seconds / max(res.cores, 1)
    warnings = []
    if run_seconds > spec.limits.timeout:
        warnings.append(
            f"it may need about {run_seconds:.0f} s, more than its limits.timeout of "
            f"{spec.limits.timeout:.0f} s: select less, ask for more workers, or raise it"
        )
    if not spec.select:
        warnings.append("no selection: it reads the whole array (select: narrows it)")
    return JobPlan(
        name=spec.display_name(),
        entrypoint=spec.analysis.entrypoint,
        image=spec.analysis.image,
        workers=res.workers,
        threads_per_worker=res.threads_per_worker,
        memory_per_worker=int(res.memory_per_worker),
        timeout_s=spec.limits.timeout,
        result_cap_bytes=quotas.result_cap(
            owner, min(spec.limits.max_result_bytes, settings.limits.max_result_bytes)
        ),
        read=ReadPlan(
            dataset=dataset.name,
            array=array.path,
            shape=array.shape,
            dtype=array.dtype,
            chunks=array.chunks,
            shards=array.shards,
            axes=array.axes,
            selection={axis: [a, b] for axis, (a, b) in zip(array.axes, ranges, strict=True)},
            chunks_touched=touched,
            chunks_total=scan.chunks_touched(array, [(0, n) for n in array.shape]),
            bytes_selected=math.prod(b - a for a, b in ranges) * np.dtype(array.dtype).itemsize,
            bytes_touched=bound,
            stored_bytes_estimate=stored,
        ),
        estimate=Estimate(
            run_seconds=round(run_seconds, 1),
            core_hours=round(core_seconds / 3600, 6),
            cores=res.cores,
            basis=rates.basis,
        ),
        quota=_quota_check(session, owner, res.workers),
        warnings=warnings,
    )
