"""Dependencies shared by the routes: the database session, the caller, the services."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from insitu.config import Settings
from insitu.db.models import User
from insitu.errors import PermissionDenied
from insitu.services import auth

_bearer = HTTPBearer(auto_error=False, description="An insitu API token.")
T = TypeVar("T")
Work = Callable[[Session, User], T]


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as session:
        yield session


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def wake_dispatcher(request: Request) -> None:
    """Run the dispatcher's next pass now (jobs were queued or cancelled), in this process
    or, from an API replica, in the process that runs it (insitu.server)."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
    elif (wake := getattr(request.app.state, "wake", None)) is not None:
        wake()


def authenticate(request: Request, session: Session, token: str | None) -> User:
    """The caller of ``request``, remembered on it for the audit log."""
    user = auth.authenticate(session, token)
    request.state.user_id, request.state.user_name = user.id, user.name
    return user


SESSION_COOKIE = "insitu_token"  # the web UI's sign-in: the user's API token, HttpOnly
UI_HEADER = "X-Insitu-UI"  # the web UI's own scripts send it with every change they ask
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def token_of(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The caller's token: the Authorization header, else the web UI's session cookie.

    A change asked for with the cookie alone must carry the UI's header, which a page of
    another site cannot send (no CORS here), and the cookie is SameSite=Strict as well.
    """
    if credentials is not None:
        return credentials.credentials
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and request.method not in SAFE_METHODS and UI_HEADER not in request.headers:
        raise PermissionDenied(
            "a change asked with the web UI's cookie must come from the web UI itself; "
            "scripts send their token in the Authorization header"
        )
    return cookie


def get_current_user(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    return authenticate(request, session, token_of(request, credentials))


CurrentUser = Annotated[User, Depends(get_current_user)]


@dataclass(frozen=True)
class Caller:
    """A request's caller, authenticated where its unit of work runs.

    The busiest routes (jobs) use this instead of :data:`SessionDep` and
    :data:`CurrentUser`: the session, the authentication, the work and the JSON of the
    answer all run in one trip to a worker thread, where sync dependencies would take a
    trip each (profiled under a course's load, see docs/profile-api.md).
    """

    request: Request
    token: str | None

    def _run(self, work: Work[T], read_only: bool) -> T:
        with self.request.app.state.db.session(read_only=read_only) as session:
            return work(session, authenticate(self.request, session, self.token))

    async def run(self, work: Work[T], *, read_only: bool = False) -> T:
        """``work(session, user)`` in a session of its own, on a worker thread;
        ``read_only`` work writes nothing, and runs outside a transaction."""
        return await run_in_threadpool(self._run, work, read_only)

    async def answer(
        self, work: Work[BaseModel], status_code: int = 200, *, read_only: bool = False
    ) -> Response:
        """The model ``work`` returns, as the JSON answer (encoded on the worker thread)."""

        def encoded(session: Session, user: User) -> bytes:
            return work(session, user).model_dump_json(by_alias=True).encode()

        body = await self.run(encoded, read_only=read_only)
        return Response(body, status_code=status_code, media_type="application/json")


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    return Caller(request, token_of(request, credentials))


CallerDep = Annotated[Caller, Depends(get_caller)]
