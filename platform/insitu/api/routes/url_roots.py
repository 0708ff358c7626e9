"""URL roots: where instructors (or one user) may register datasets from (admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from insitu.api.deps import CurrentUser, SessionDep
from insitu.api.schemas import UrlRootCreate, UrlRootPublic, UrlRootsPublic
from insitu.services import url_roots

router = APIRouter(prefix="/url-roots", tags=["datasets"])


@router.get("", response_model=UrlRootsPublic)
def list_url_roots(session: SessionDep, user: CurrentUser) -> UrlRootsPublic:
    """Every URL root and whom it is allowed to (admins)."""
    rows = [UrlRootPublic.of(r) for r in url_roots.listing(session, user)]
    return UrlRootsPublic(data=rows, count=len(rows))


@router.post("", response_model=UrlRootPublic, status_code=status.HTTP_201_CREATED)
def allow_url_root(body: UrlRootCreate, session: SessionDep, user: CurrentUser) -> UrlRootPublic:
    """Let a role or one user register datasets under a URL prefix (admins)."""
    row = url_roots.allow(session, user, body.prefix, role=body.role, user_name=body.user)
    return UrlRootPublic.of(row)


@router.delete("/{root_id}", response_model=UrlRootPublic)
def remove_url_root(
    root_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, user: CurrentUser
) -> UrlRootPublic:
    """Withdraw a URL root (admins); datasets registered under it stay."""
    return UrlRootPublic.of(url_roots.remove(session, user, root_id))
