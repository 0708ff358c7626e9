"""Where datasets may be registered from: URL roots an admin allows per role or per user.

Registering a dataset reads its store with the platform's own credentials, so who may
name which URL is an access decision: an instructor could otherwise register another
owner's bucket or folder and read it, or learn whether a path exists. Admins register
anywhere; everyone else only under a root allowed to their role or to them.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from urllib.parse import unquote, urlparse

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from insitu.db import queries
from insitu.db.models import UrlRoot, User
from insitu.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from insitu.services import access
from insitu.services.auth import Role, parse_role
from insitu.storage import normalize_url


def canonical(url: str) -> str:
    """``url`` with a scheme, no trailing slash, and no ``.`` or ``..`` left in its path.

    Local paths also have their symbolic links resolved, so a link under an allowed
    root cannot point the platform at a folder outside it.
    """
    if not url or "\x00" in url or len(url) > 2000:
        raise InvalidInput("a URL must be non-empty, under 2,000 characters, without NUL bytes")
    parsed = urlparse(normalize_url(url))
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        if "\x00" in path:
            raise InvalidInput(f"URL {url!r} has a NUL byte in its path")
        return "file://" + os.path.realpath(path).rstrip("/")
    if parsed.query or parsed.fragment or parsed.params:
        raise InvalidInput(f"URL {url!r} must not have a query or fragment")
    path = posixpath.normpath("/" + parsed.path.lstrip("/")) if parsed.path else ""
    return f"{parsed.scheme}://{parsed.netloc}{path.rstrip('/')}"


def is_under(url: str, root: str) -> bool:
    """Whether canonical ``url`` is ``root`` or inside it (whole path segments only)."""
    return url == root or url.startswith(root.rstrip("/") + "/")


def roots_of(session: Session, user: User) -> list[str]:
    """The roots ``user`` may register under: their role's and their own."""
    rows = session.scalars(
        select(UrlRoot.prefix).where(or_(UrlRoot.role == user.role, UrlRoot.user_id == user.id))
    )
    return sorted(set(rows))


def require_allowed(session: Session, user: User, url: str) -> str:
    """Refuse a URL outside the caller's roots before anything reads it; return it canonical."""
    target = canonical(url)
    if access.is_admin(user):
        return target
    roots = roots_of(session, user)
    if not any(is_under(target, root) for root in roots):
        allowed = ", ".join(roots) if roots else "none yet"
        raise PermissionDenied(
            f"you ({user.name!r}) may register datasets only under the URL roots an admin "
            f"allowed you ({allowed}); {url!r} is not under them. Ask an admin to run "
            f"'insitu datasets roots allow PREFIX --user {user.name}'"
        )
    return target


def allow(
    session: Session, by: User, prefix: str, *, role: str | None, user_name: str | None
) -> UrlRoot:
    """Let a role or one user register datasets under ``prefix`` (admins; commits)."""
    access.require_role(by, (Role.ADMIN,), "allow URL roots")
    if (role is None) == (user_name is None):
        raise InvalidInput("name either a role or a user the URL root is for, not both")
    user = queries.user_named(session, user_name) if user_name is not None else None
    if role is not None:
        role = parse_role(role).value
    root = canonical(prefix)
    exists = select(UrlRoot).where(
        UrlRoot.prefix == root,
        UrlRoot.role == role if role else UrlRoot.role.is_(None),
        UrlRoot.user_id == user.id if user else UrlRoot.user_id.is_(None),
    )
    if session.scalar(exists) is not None:
        raise Conflict(f"{root} is allowed to {role or user_name} already")
    row = UrlRoot(prefix=root, role=role, user_id=user.id if user else None, granted_by=by.name)
    session.add(row)
    session.flush()
    queries.add_audit(session, by, "url_root.allow", root, detail=f"for {role or user_name}")
    session.commit()
    return row


def listing(session: Session, by: User) -> Sequence[UrlRoot]:
    """Every allowed root (admins)."""
    access.require_role(by, (Role.ADMIN,), "list URL roots")
    return session.scalars(select(UrlRoot).order_by(UrlRoot.prefix, UrlRoot.id)).all()


def remove(session: Session, by: User, root_id: int) -> UrlRoot:
    """Withdraw an allowed root (admins; commits); datasets registered under it stay."""
    access.require_role(by, (Role.ADMIN,), "remove URL roots")
    row = session.get(UrlRoot, root_id)
    if row is None:
        raise NotFound(f"no URL root {root_id}; 'insitu datasets roots list' shows them")
    session.delete(row)
    queries.add_audit(session, by, "url_root.remove", row.prefix)
    session.commit()
    return row
