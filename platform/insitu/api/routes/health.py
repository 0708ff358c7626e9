"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from insitu import __version__
from insitu.api.deps import SessionDep, SettingsDep
from insitu.api.schemas import Health, WarmPoolState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(request: Request, session: SessionDep, settings: SettingsDep) -> Health:
    """Whether the API and its database answer, and how warm the backend's pool is."""
    session.execute(text("SELECT 1"))
    pool = request.app.state.backend.warm_pool()
    return Health(
        status="ok",
        version=__version__,
        backend=settings.backend,
        database=session.get_bind().dialect.name,
        warm_pool=WarmPoolState(size=pool[0], ready=pool[1]) if pool else None,
    )
