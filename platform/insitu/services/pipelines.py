"""Pipelines: a short list of jobs submitted together, each able to read an earlier one's
output (``dataset: step:<name>/<output>``), which waits until that output exists."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from insitu.backends.base import Backend
from insitu.config import Settings
from insitu.db.models import Job, User
from insitu.errors import InsituError, InvalidInput
from insitu.services import jobs
from insitu.spec import INPUT_REF, JobSpec, Pipeline, load_document


def load_pipeline(source: str | dict[str, Any]) -> Pipeline:
    """A pipeline file, or :class:`InvalidInput` saying what one looks like."""
    document = load_document(source)
    if not isinstance(document, Pipeline):
        raise InvalidInput(
            "this is a job spec, not a pipeline; a pipeline has 'kind: Pipeline' and a list "
            "of 'steps' (submit a job spec with 'insitu submit' as it is)"
        )
    return document


def _bound(step: JobSpec, job_ids: dict[str, str]) -> JobSpec:
    """The step with ``step:<name>/<output>`` replaced by the job id of that step."""
    ref = INPUT_REF.match(step.dataset)
    if ref is None or ref["kind"] != "step":
        return step
    return step.model_copy(update={"dataset": f"job:{job_ids[ref['ref']]}/{ref['key']}"})


def submit(
    session: Session,
    settings: Settings,
    owner: User,
    source: str | dict[str, Any],
    code_bundle: str | None = None,
    backend: Backend | None = None,
) -> list[Job]:
    """Submit every step of a pipeline, or none of them (commits)."""
    pipeline = load_pipeline(source)
    job_ids: dict[str, str] = {}
    submitted: list[Job] = []
    for step in pipeline.steps:
        assert step.name is not None  # the pipeline's validator insists
        try:
            job = jobs.submit(
                session,
                settings,
                owner,
                _bound(step, job_ids),
                code_bundle,
                backend,
                commit=False,
            )
        except InsituError as exc:
            session.rollback()
            exc.message = f"pipeline step {step.name!r}: {exc.message}; nothing was submitted"
            raise
        job_ids[step.name] = job.id
        submitted.append(job)
    session.commit()
    return submitted
