"""Users and their tokens (admins), and who the caller is (everyone)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from insitu.api.deps import CurrentUser, SessionDep, wake_dispatcher
from insitu.api.schemas import StoragePublic, UserCreate, UserCreated, UserPublic, UsersPublic
from insitu.services import derived, users

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
def add_user(body: UserCreate, session: SessionDep, user: CurrentUser) -> UserCreated:
    """Add a user; the answer carries their API token, shown only this once (admins)."""
    added, token = users.add(
        session, user, body.name, body.role, email=body.email, groups=body.groups
    )
    return UserCreated(**UserPublic.of(added).model_dump(), token=token)


@router.get("", response_model=UsersPublic)
def list_users(session: SessionDep, user: CurrentUser) -> UsersPublic:
    """Every user with their role and groups (admins)."""
    rows = [UserPublic.of(u) for u in users.listing(session, user)]
    return UsersPublic(data=rows, count=len(rows))


@router.get("/me", response_model=UserPublic)
def who_am_i(user: CurrentUser) -> UserPublic:
    """The user the API token belongs to."""
    return UserPublic.of(user)


@router.get("/me/storage", response_model=StoragePublic)
def my_storage(session: SessionDep, user: CurrentUser) -> StoragePublic:
    """Bytes your derived datasets (and your course's) take, against the storage quotas."""
    return StoragePublic(**derived.storage_use(session, user).to_json())


@router.post("/{name}/revoke", response_model=UserPublic)
def revoke_user(name: str, request: Request, session: SessionDep, user: CurrentUser) -> UserPublic:
    """Disable a user, revoke their tokens and cancel their unfinished jobs (admins);
    their finished jobs and results stay."""
    revoked = users.revoke(session, user, name)
    wake_dispatcher(request)
    return UserPublic.of(revoked)
