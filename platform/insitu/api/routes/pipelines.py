"""Pipelines: several jobs submitted together, each step able to read an earlier one's output."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from insitu.api.deps import CallerDep, wake_dispatcher
from insitu.api.schemas import JobPublic, JobsPublic, PipelineCreate
from insitu.db.models import User
from insitu.services import pipelines

router = APIRouter(prefix="/pipelines", tags=["jobs"])


@router.post("", response_model=JobsPublic, status_code=status.HTTP_201_CREATED)
async def submit_pipeline(body: PipelineCreate, request: Request, caller: CallerDep) -> Response:
    """Submit every step of a pipeline file (or none); a step reading an earlier step's
    output waits in 'queued' until that output exists."""
    settings, backend = request.app.state.settings, request.app.state.backend

    def work(session: Session, user: User) -> JobsPublic:
        submitted = pipelines.submit(
            session, settings, user, body.pipeline, body.code_bundle, backend=backend
        )
        return JobsPublic(data=[JobPublic.of(job) for job in submitted], count=len(submitted))

    answer = await caller.answer(work, status.HTTP_201_CREATED)
    wake_dispatcher(request)
    return answer
