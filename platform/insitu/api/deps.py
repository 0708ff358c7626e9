"""Dependencies shared by the routes: the database session, the caller, the services."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from insitu.config import Settings
from insitu.db.models import User
from insitu.services import auth

_bearer = HTTPBearer(auto_error=False, description="An insitu API token.")


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as session:
        yield session


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def wake_dispatcher(request: Request) -> None:
    """Run the dispatcher's next pass now (jobs were queued or cancelled)."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


def get_current_user(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    user = auth.authenticate(session, credentials.credentials if credentials else None)
    request.state.user_id, request.state.user_name = user.id, user.name  # for the audit log
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
