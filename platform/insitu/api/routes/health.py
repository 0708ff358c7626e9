"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from insitu import __version__
from insitu.api.deps import SessionDep, SettingsDep
from insitu.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(session: SessionDep, settings: SettingsDep) -> Health:
    """Whether the API and its database answer."""
    session.execute(text("SELECT 1"))
    return Health(
        status="ok",
        version=__version__,
        backend=settings.backend,
        database=session.get_bind().dialect.name,
    )
