"""Manage users: add one with a first token, list them, revoke one. Admins only."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy.orm import Session

from insitu.db import queries
from insitu.db.models import GroupMember, User, utcnow
from insitu.errors import Conflict, InvalidInput
from insitu.services import access, jobs
from insitu.services.auth import Role, create_user, parse_role

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def add(
    session: Session,
    by: User,
    name: str,
    role: str,
    *,
    email: str | None = None,
    groups: Sequence[str] = (),
) -> tuple[User, str]:
    """Create a user and their first token (commits); the token is returned in clear once."""
    access.require_role(by, (Role.ADMIN,), "add users")
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"user name {name!r} is not valid; use lower-case letters, digits, '.', '_' or "
            "'-', e.g. 'ada' or 'ada.lovelace'"
        )
    if email is not None and "@" not in email:
        raise InvalidInput(f"email {email!r} is not an e-mail address")
    user, token = create_user(session, name, parse_role(role), email=email)
    for group in sorted(set(groups)):
        user.memberships.append(GroupMember(group=access.check_group_name(group)))
    queries.add_audit(session, by, "user.add", name, detail=f"role {user.role}")
    session.commit()
    return user, token


def revoke(session: Session, by: User, name: str) -> User:
    """Disable a user, revoke all their tokens and cancel their unfinished jobs (commits).

    Their finished jobs, results and the audit log stay.
    """
    access.require_role(by, (Role.ADMIN,), "revoke users")
    user = queries.user_named(session, name)
    if user.id == by.id:
        raise Conflict("you cannot revoke yourself; ask another admin")
    if user.disabled_at is not None:
        raise Conflict(f"user {name!r} was already revoked")
    user.disabled_at = utcnow()
    count = queries.revoke_tokens(session, user)
    cancelled = jobs.cancel_all_of(session, user, f"{name} was revoked by {by.name}")
    queries.add_audit(
        session,
        by,
        "user.revoke",
        name,
        detail=f"{count} token(s) revoked, {cancelled} unfinished job(s) cancelled",
    )
    session.commit()
    return user


def listing(session: Session, by: User) -> Sequence[User]:
    """Every user (admins only)."""
    access.require_role(by, (Role.ADMIN,), "list users")
    return queries.list_users(session)
