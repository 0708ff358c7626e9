"""What a job reads: a dataset of the catalog, or the output of another job.

A spec's ``dataset`` may name another job's output, ``job:<id>/<key>``: the job that will
write it may still be queued or running. The new job then waits in ``queued``, saying
for what, until that job ends; the dispatcher resolves its input then
(:func:`resolve_waiting`): the output's derived dataset if the job succeeded with it,
or a failure naming the parent's when it did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy.orm import Session

from insitu.catalog import ArrayInfo, resolve_selection
from insitu.db import queries
from insitu.db.models import Dataset, Job, User
from insitu.errors import Conflict, InsituError, InvalidInput
from insitu.services import access
from insitu.services.datasets import info_of
from insitu.spec import INPUT_REF
from insitu.states import JobState
from insitu.trusted import scan


@dataclass(frozen=True)
class Waiting:
    """The output ``key`` of ``parent``, a job that has not ended yet."""

    parent: Job
    key: str

    def reason(self) -> str:
        return (
            f"waiting for job {self.parent.id} ({self.parent.state}) to write its output "
            f"{self.key!r}, this job's input"
        )


def parse_ref(name: str) -> tuple[str, str, str] | None:
    """(``job`` or ``step``, id or step name, output key) of an output reference, or None."""
    found = INPUT_REF.match(name)
    return (found["kind"], found["ref"], found["key"]) if found else None


def output_dataset(session: Session, parent: Job, key: str) -> Dataset | None:
    """The live derived dataset output ``key`` of ``parent`` became, if any."""
    for dataset in queries.derived_of_job(session, parent.id):
        if (dataset.lineage or {}).get("output") == key and dataset.deleted_at is None:
            return dataset
    return None


def _outputs_of(session: Session, parent: Job) -> str:
    keys = [
        str((d.lineage or {}).get("output")) for d in queries.derived_of_job(session, parent.id)
    ]
    return ", ".join(repr(k) for k in keys) or "none"


def _never(parent: Job, key: str) -> str:
    why = parent.error or parent.reason or ""
    return (
        f"its input, output {key!r} of job {parent.id}, will never exist: job {parent.id} "
        f"{parent.state}" + (f" ({why})" if why else "")
    )


def input_of(session: Session, owner: User, name: str) -> Dataset | Waiting:
    """The dataset a spec's ``dataset`` names (which ``owner`` may read), or the job whose
    output it will be; refuses an output that will never exist."""
    ref = parse_ref(name)
    if ref is None:
        dataset = queries.dataset_by_name(session, name)
        access.require_read(session, owner, dataset)
        return dataset
    kind, ident, key = ref
    if kind == "step":
        raise InvalidInput(
            f"dataset {name!r} names a step of a pipeline file; submit the whole pipeline "
            "('insitu submit pipeline.yaml'), or name a job's output as 'job:<id>/<output>'"
        )
    parent = queries.job_by_id(session, ident)
    access.require_job_owner(owner, parent)
    state = JobState(parent.state)
    if state is JobState.SUCCEEDED:
        output = output_dataset(session, parent, key)
        if output is None:
            raise InvalidInput(
                f"job {parent.id} succeeded without an output {key!r}; its outputs are "
                f"{_outputs_of(session, parent)}"
            )
        access.require_read(session, owner, output)
        return output
    if state.terminal:
        raise Conflict(_never(parent, key).replace("its input", "the input", 1))
    return Waiting(parent, key)


def target_fields(array: ArrayInfo, ranges: list[tuple[int, int]]) -> dict[str, Any]:
    """The fields of a job's record that follow from what it reads."""
    return {
        "array_path": array.path,
        "ranges": [list(r) for r in ranges],
        "bytes_selected": math.prod(stop - start for start, stop in ranges)
        * np.dtype(array.dtype).itemsize,
    }


def target_accounting(array: ArrayInfo, ranges: list[tuple[int, int]]) -> dict[str, Any]:
    """What the server bounds a job's scan and progress by, from what it reads."""
    return {
        "scan_bound": scan.selection_bound(array, ranges),
        "blocks": scan.chunks_touched(array, ranges),  # progress total
    }


@dataclass(frozen=True)
class Resolution:
    """Whether a queued job's input exists: it may run, must wait, or can never run."""

    state: Literal["ready", "waiting", "failed"]
    reason: str = ""


def resolve_waiting(session: Session, job: Job) -> Resolution:
    """Resolve a queued job's pending input once its parent has ended (not committed)."""
    pending = (job.accounting or {}).get("input")
    if not pending or pending.get("resolved"):
        return Resolution("ready")
    parent = queries.job_by_id(session, str(pending["job"]))
    key = str(pending["output"])
    state = JobState(parent.state)
    if not state.terminal:
        return Resolution("waiting", Waiting(parent, key).reason())
    if state is not JobState.SUCCEEDED:
        return Resolution("failed", _never(parent, key))
    dataset = output_dataset(session, parent, key)
    if dataset is None:
        return Resolution(
            "failed",
            f"its input, output {key!r} of job {parent.id}, does not exist: the job "
            f"succeeded with outputs {_outputs_of(session, parent)}",
        )
    try:
        access.require_read(session, job.owner, dataset)
        array = info_of(dataset).array(job.spec.get("array"), dataset=f"dataset {dataset.name!r}")
        ranges = resolve_selection(
            array,
            {k: tuple(v) for k, v in (job.spec.get("select") or {}).items()},
            dataset=f"dataset {dataset.name!r}",
        )
    except InsituError as exc:
        return Resolution("failed", f"its input {dataset.name!r}: {exc.message}")
    ranges = [(int(a), int(b)) for a, b in ranges]
    job.dataset = dataset
    for name, value in target_fields(array, ranges).items():
        setattr(job, name, value)
    job.accounting = {
        **(job.accounting or {}),
        **target_accounting(array, ranges),
        "input": {**pending, "resolved": True, "dataset": dataset.name},
    }
    return Resolution("ready")
