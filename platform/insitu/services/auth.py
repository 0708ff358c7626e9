"""Users and API tokens: tokens are random, shown once, and stored only as hashes."""

from __future__ import annotations

import hashlib
import os
import secrets
from enum import Enum

from sqlalchemy.orm import Session

from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database, advisory_lock
from insitu.db.models import ApiToken, User
from insitu.errors import AuthenticationFailed, Conflict, InvalidInput

__all__ = ["AuthenticationFailed", "Role", "authenticate", "bootstrap_admin", "create_user"]

TOKEN_PREFIX = "insitu_"
BOOTSTRAP_LOCK = 0x1A5_17E1  # the advisory lock taken while the first admin is made


class Role(str, Enum):
    """What a user may do; :mod:`insitu.services.access` says what each role allows."""

    ADMIN = "admin"
    INSTRUCTOR = "instructor"
    RESEARCHER = "researcher"
    PARTICIPANT = "participant"


def parse_role(value: str) -> Role:
    """A role by name, or :class:`InvalidInput` listing the roles."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise InvalidInput(f"role {value!r} is not known; use one of {roles}") from None


def hash_token(token: str) -> str:
    """SHA-256 of a token; tokens carry 256 random bits, so no slow hash is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(session: Session, user: User, token: str | None = None) -> str:
    """Create a token for ``user`` (a new random one, unless given) and return it in clear,
    the only time it is seen."""
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user=user, token_hash=hash_token(token), prefix=token[:12]))
    return token


def create_user(
    session: Session, name: str, role: Role, email: str | None = None, token: str | None = None
) -> tuple[User, str]:
    """Add a user with a first token, ``token`` or a new one (not committed)."""
    if queries.user_by_name(session, name) is not None:
        raise Conflict(f"a user named {name!r} already exists")
    user = User(name=name, role=role.value, email=email)
    session.add(user)
    session.flush()
    return user, new_token(session, user, token)


def authenticate(session: Session, token: str | None) -> User:
    """The user a bearer token belongs to, or :class:`AuthenticationFailed`."""
    if not token:
        raise AuthenticationFailed(
            "no API token; set INSITU_TOKEN (the admin token is in $INSITU_HOME/admin-token)"
        )
    user = queries.user_by_token_hash(session, hash_token(token))
    if user is None:
        raise AuthenticationFailed("the API token is unknown or revoked; ask for a new one")
    from insitu.services.quotas import check_access_period

    check_access_period(user)
    return user


def bootstrap_admin(db: Database, settings: Settings) -> str | None:
    """On first start, create the admin user: with ``settings.admin_token`` (a Secret's), else
    with a new token written (mode 600) under home. Replicas starting together on PostgreSQL
    take turns, so one of them creates it."""
    with db.session() as session:
        advisory_lock(session.connection(), BOOTSTRAP_LOCK)
        if queries.count_users(session) > 0:
            return None
        given = settings.admin_token.get_secret_value() if settings.admin_token else None
        _, token = create_user(session, "admin", Role.ADMIN, token=given)
        if given:
            session.commit()
            return token
        settings.ensure_home()
        path = settings.admin_token_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.chmod(path, 0o600)
        session.commit()
        return token
