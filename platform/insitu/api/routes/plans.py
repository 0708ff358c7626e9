"""Plans: a job spec checked and estimated before it runs (nothing is stored)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from insitu.api.deps import CallerDep
from insitu.api.schemas import JobCreate
from insitu.db.models import User
from insitu.services.plans import JobPlan, plan_job

router = APIRouter(prefix="/plans", tags=["jobs"])


@router.post("", response_model=JobPlan)
async def plan(body: JobCreate, request: Request, caller: CallerDep) -> Response:
    """What a job spec would read (chunks, bytes), its estimated run time and core-hours
    from this platform's measured rates, and whether your quota lets it start: checked as
    a submit checks it, with the same errors, and nothing queued."""
    settings, backend = request.app.state.settings, request.app.state.backend

    def work(session: Session, user: User) -> JobPlan:
        return plan_job(session, settings, user, body.spec, body.code_bundle, backend=backend)

    return await caller.answer(work, read_only=True)
