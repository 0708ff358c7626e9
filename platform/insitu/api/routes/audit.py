"""The audit log: submits, downloads, registrations, grants and denials."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from insitu.api.deps import CurrentUser, SessionDep
from insitu.api.schemas import AuditEventPublic, AuditEventsPublic
from insitu.db import queries
from insitu.services import access
from insitu.services.auth import Role

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=AuditEventsPublic)
def audit_log(
    session: SessionDep,
    user: CurrentUser,
    user_name: Annotated[str | None, Query(alias="user", description="Only this user.")] = None,
    action: Annotated[str | None, Query(description="Only this action, e.g. job.submit.")] = None,
    outcome: Annotated[Literal["ok", "denied"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> AuditEventsPublic:
    """Audited actions, newest first (admins)."""
    access.require_role(user, (Role.ADMIN,), "read the audit log")
    rows, count = queries.list_audit(
        session, user_name=user_name, action=action, outcome=outcome, limit=limit
    )
    return AuditEventsPublic(data=[AuditEventPublic.of(e) for e in rows], count=count)
