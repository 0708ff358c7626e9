"""Who may do what: roles, dataset access rules, and job ownership, in one place.

A dataset's access rule is ``public`` (every user), ``private`` (its owner, admins
and users granted it), ``group:NAME`` (members of the group, plus grants) or
``course:NAME`` (the participants of a course, plus grants). Course groups live in
their own namespace, so no course can be named into an existing group. Jobs and
their results belong to their owner; admins see everything.
"""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from insitu.db import queries
from insitu.db.models import Dataset, Job, User
from insitu.errors import InvalidInput, PermissionDenied
from insitu.services.auth import Role

PUBLIC, PRIVATE, GROUP_PREFIX, COURSE_PREFIX = "public", "private", "group:", "course:"
_GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
#: Roles that may register datasets and grant access to their own.
CURATORS = (Role.ADMIN, Role.INSTRUCTOR)


def is_admin(user: User) -> bool:
    return user.role == Role.ADMIN.value


def check_group_name(name: str) -> str:
    """A valid group name, or :class:`InvalidInput` saying what one looks like."""
    if not _GROUP_RE.match(name):
        raise InvalidInput(
            f"group name {name!r} is not valid; use lower-case letters, digits, '.', '_' "
            "or '-', e.g. 'lab-smith'"
        )
    return name


def course_group(course_name: str) -> str:
    """The group a course's participants belong to (never a plain group's name)."""
    return COURSE_PREFIX + course_name


def parse_access(rule: str) -> str:
    """Normalise an access rule: ``public``, ``private``, ``group:NAME`` or ``course:NAME``."""
    rule = rule.strip()
    if rule in (PUBLIC, PRIVATE):
        return rule
    for prefix in (GROUP_PREFIX, COURSE_PREFIX):
        if rule.startswith(prefix):
            return prefix + check_group_name(rule.removeprefix(prefix))
    raise InvalidInput(
        f"access rule {rule!r} is not known; use 'public', 'private', 'group:NAME' or 'course:NAME'"
    )


def require_role(user: User, roles: tuple[Role, ...], doing: str) -> None:
    """Refuse ``user`` unless their role is one of ``roles``."""
    if user.role not in {r.value for r in roles}:
        allowed = " and ".join(f"{r.value}s" for r in roles)
        raise PermissionDenied(f"only {allowed} may {doing}; you are {user.name!r} ({user.role})")


def allowed_by_rule(user: User, dataset: Dataset) -> bool:
    """Whether the dataset's owner, access rule or the user's role lets ``user`` read it."""
    if is_admin(user) or dataset.owner_id == user.id or dataset.access == PUBLIC:
        return True
    if dataset.access.startswith(COURSE_PREFIX):
        return dataset.access in user.groups
    group = dataset.access.removeprefix(GROUP_PREFIX)
    return dataset.access.startswith(GROUP_PREFIX) and group in user.groups


def parents_of(session: Session, dataset: Dataset) -> list[Dataset | None]:
    """The datasets a derived dataset was computed from (None for one since deleted)."""
    ids = [int(p["id"]) for p in (dataset.lineage or {}).get("parents", [])]
    found = queries.datasets_by_id(session, ids)
    return [found.get(i) for i in ids]


def _closed_parent(session: Session, user: User, dataset: Dataset) -> Dataset | bool | None:
    """The first parent ``user`` may not read (None if deleted), or False if none is.

    Derived data is never more open than its parents: unless the parents' owner released
    it, reading it needs reading every parent too (and theirs, up the lineage).
    """
    if dataset.source_job_id is None or dataset.released_at is not None or is_admin(user):
        return False
    for parent in parents_of(session, dataset):
        if parent is None or parent.deleted_at is not None or not can_read(session, user, parent):
            return parent
    return False


def can_read(session: Session, user: User, dataset: Dataset) -> bool:
    """Whether ``user`` may run jobs on ``dataset`` and see its description."""
    if not (allowed_by_rule(user, dataset) or queries.is_granted(session, dataset, user)):
        return False
    return _closed_parent(session, user, dataset) is False


def require_read(session: Session, user: User, dataset: Dataset) -> None:
    """Refuse a user who may not read ``dataset``, naming it and who can help."""
    if can_read(session, user, dataset):
        return
    if allowed_by_rule(user, dataset) or queries.is_granted(session, dataset, user):
        parent = _closed_parent(session, user, dataset)
        which = f"dataset {parent.name!r}" if isinstance(parent, Dataset) else "a deleted dataset"
        raise PermissionDenied(
            f"you ({user.name!r}) may not read dataset {dataset.name!r}: it is derived from "
            f"{which}, which you may not read, and derived data is never more open than its "
            "parents; ask the parent's owner for access to it, or to release this dataset "
            f"('insitu datasets release {dataset.name}')"
        )
    owner = dataset.owner.name if dataset.owner else "an admin"
    how = "it is private"
    if dataset.access.startswith(GROUP_PREFIX):
        how = f"it is shared with group {dataset.access.removeprefix(GROUP_PREFIX)!r}"
    elif dataset.access.startswith(COURSE_PREFIX):
        how = f"it is shared with course {dataset.access.removeprefix(COURSE_PREFIX)!r}"
    raise PermissionDenied(
        f"you ({user.name!r}) may not read dataset {dataset.name!r}: {how}; ask {owner} "
        f"to run 'insitu datasets grant {dataset.name} {user.name}'"
    )


def require_curator_of(user: User, dataset: Dataset, doing: str) -> None:
    """Only the dataset's owner (an admin or instructor, or anyone for a dataset their own
    job derived) or an admin may change it."""
    if is_admin(user):
        return
    if dataset.source_job_id is None:
        require_role(user, CURATORS, doing)
    if dataset.owner_id != user.id:
        raise PermissionDenied(
            f"dataset {dataset.name!r} belongs to another user; only its owner or an admin "
            f"may {doing}"
        )


def require_job_owner(user: User, job: Job) -> None:
    """A job and its results are its owner's and the admins' alone."""
    if job.owner_id != user.id and not is_admin(user):
        raise PermissionDenied(
            f"job {job.id} belongs to another user; only its owner and admins may see it "
            "or its results ('insitu list' shows your jobs)"
        )
