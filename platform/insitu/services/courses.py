"""Courses: provision a class in one step, report on it, close it.

Creating a course makes one participant per roster row (role participant, a first
token), grants them the course's datasets, gives them the course's quota and end date,
and puts them in the course's group (``course:NAME``, apart from ordinary groups).
Instructors manage their own courses, admins every course. Closing a course revokes
the participants' tokens and cancels their unfinished jobs; their finished jobs,
results and the audit log stay.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from insitu.db import queries
from insitu.db.models import Course, GroupMember, Job, User, utcnow
from insitu.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from insitu.services import access, jobs
from insitu.services.auth import Role, create_user
from insitu.services.quotas import parse_quota
from insitu.states import JobState

_FAILED = [JobState.FAILED.value, JobState.TIMED_OUT.value]
_COURSE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,59}$")


@dataclass(frozen=True)
class Participant:
    """One roster row: a person's name and e-mail, and optionally the user name they want."""

    name: str
    email: str
    username: str | None = None


def username_for(participant: Participant) -> str:
    """A user name from the roster: the given one, else from the e-mail's local part."""
    if participant.username:
        return participant.username.strip().lower()
    local = participant.email.split("@", 1)[0]
    ascii_text = unicodedata.normalize("NFKD", local).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9._-]+", "-", ascii_text.lower()).strip("-._")
    return name[:100] or "participant"


def _check_rows(rows: list[Participant]) -> None:
    if not rows:
        raise InvalidInput("the roster has no participants")
    problems = []
    for number, row in enumerate(rows, start=1):
        if not row.name.strip():
            problems.append(f"row {number}: the name is empty")
        if "@" not in row.email:
            problems.append(f"row {number}: {row.email!r} is not an e-mail address")
    names = [username_for(r) for r in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(
            "these user names come out twice (add a 'username' column to tell them apart): "
            + ", ".join(duplicates)
        )
    if problems:
        raise InvalidInput("the roster has problems: " + "; ".join(problems))


def course_named(session: Session, name: str) -> Course:
    course = session.scalar(select(Course).where(Course.name == name))
    if course is None:
        raise NotFound(f"no course named {name!r}; 'insitu course list' shows yours")
    return course


def _require_manager(user: User, course: Course, doing: str) -> None:
    if not (access.is_admin(user) or course.owner_id == user.id):
        raise PermissionDenied(
            f"you may not {doing}: course {course.name!r} belongs to {course.owner.name}"
        )


def _enroll(
    session: Session, by: User, course: Course, rows: list[Participant]
) -> list[tuple[User, str]]:
    _check_rows(rows)
    taken = [username_for(r) for r in rows if queries.user_by_name(session, username_for(r))]
    if taken:
        raise Conflict(
            "these user names are taken already: " + ", ".join(taken) + "; give those rows a "
            "'username' column with other names"
        )
    datasets = [queries.dataset_by_name(session, name) for name in course.datasets]
    created = []
    for row in rows:
        user, token = create_user(session, username_for(row), Role.PARTICIPANT, email=row.email)
        user.course_id, user.quota, user.expires_at = course.id, course.quota, course.expires_at
        user.memberships.append(GroupMember(group=access.course_group(course.name)))
        for dataset in datasets:
            queries.grant(session, dataset, user, by.name)
        created.append((user, token))
    queries.add_audit(
        session, by, "course.enroll", course.name, detail=f"{len(rows)} participant(s)"
    )
    return created


def create(
    session: Session,
    by: User,
    name: str,
    rows: list[Participant],
    *,
    datasets: list[str],
    quota: str | dict[str, Any] | None,
    expires: datetime | None,
) -> tuple[Course, list[tuple[User, str]]]:
    """Create a course and its participants (commits); tokens are returned once."""
    access.require_role(by, (Role.ADMIN, Role.INSTRUCTOR), "create courses")
    if not _COURSE_NAME.match(name):
        raise InvalidInput(
            f"course name {name!r} is not valid; use 2-60 lower-case letters, digits, '.', '_' "
            "or '-', e.g. 'neuro-2026'"
        )
    if session.scalar(select(Course).where(Course.name == name)) is not None:
        raise Conflict(f"a course named {name!r} exists already")
    if expires is not None and expires <= utcnow():
        raise InvalidInput(f"the course would end on {expires:%Y-%m-%d}, which has passed")
    for dataset_name in datasets:
        dataset = queries.dataset_by_name(session, dataset_name)
        access.require_curator_of(by, dataset, f"give course participants {dataset_name!r}")
    course = Course(
        name=name,
        owner_id=by.id,
        datasets=list(datasets),
        quota=parse_quota(quota).model_dump(exclude_none=True),
        expires_at=expires,
    )
    session.add(course)
    session.flush()
    session.refresh(course)
    created = _enroll(session, by, course, rows)
    queries.add_audit(session, by, "course.create", name, detail=f"{len(rows)} participant(s)")
    session.commit()
    return course, created


def add(
    session: Session, by: User, name: str, rows: list[Participant]
) -> tuple[Course, list[tuple[User, str]]]:
    """Add participants to a course (commits)."""
    course = course_named(session, name)
    _require_manager(by, course, f"add participants to {name!r}")
    if course.closed_at is not None:
        raise Conflict(f"course {name!r} is closed")
    created = _enroll(session, by, course, rows)
    session.commit()
    return course, created


def listing(session: Session, by: User) -> list[tuple[Course, int]]:
    """Courses the caller manages (all for admins), with their participant counts."""
    access.require_role(by, (Role.ADMIN, Role.INSTRUCTOR), "list courses")
    query = select(Course).order_by(Course.created_at)
    if not access.is_admin(by):
        query = query.where(Course.owner_id == by.id)
    courses = list(session.scalars(query))
    counts = dict(
        session.execute(
            select(User.course_id, func.count())
            .where(User.course_id.is_not(None))
            .group_by(User.course_id)
        ).all()
    )
    return [(c, int(counts.get(c.id, 0))) for c in courses]


def participants(session: Session, course: Course) -> list[User]:
    return list(
        session.scalars(select(User).where(User.course_id == course.id).order_by(User.name))
    )


def report(session: Session, by: User, name: str) -> tuple[Course, list[dict[str, Any]]]:
    """Per participant: jobs, failures, core-hours, bytes scanned and returned."""
    course = course_named(session, name)
    _require_manager(by, course, f"see the report of {name!r}")
    people = participants(session, course)
    totals = {
        row.owner_id: row
        for row in session.execute(
            select(
                Job.owner_id,
                func.count().label("jobs"),
                func.sum(case((Job.state == JobState.SUCCEEDED.value, 1), else_=0)).label(
                    "succeeded"
                ),
                func.sum(case((Job.state.in_(_FAILED), 1), else_=0)).label("failed"),
                func.coalesce(func.sum(Job.core_seconds), 0.0).label("core_seconds"),
                func.coalesce(func.sum(Job.bytes_scanned), 0).label("bytes_scanned"),
                func.coalesce(func.sum(Job.bytes_returned), 0).label("bytes_returned"),
            )
            .where(Job.owner_id.in_([p.id for p in people]))
            .group_by(Job.owner_id)
        )
    }
    rows = []
    for person in people:
        t = totals.get(person.id)
        rows.append(
            {
                "user": person.name,
                "email": person.email,
                "active": person.disabled_at is None,
                "jobs": int(t.jobs) if t else 0,
                "succeeded": int(t.succeeded or 0) if t else 0,
                "failed": int(t.failed or 0) if t else 0,
                "core_hours": round(float(t.core_seconds) / 3600, 4) if t else 0.0,
                "bytes_scanned": int(t.bytes_scanned) if t else 0,
                "bytes_returned": int(t.bytes_returned) if t else 0,
            }
        )
    return course, rows


def close(session: Session, by: User, name: str) -> tuple[Course, int, int]:
    """Revoke every participant's tokens and cancel their unfinished jobs (commits).

    Finished jobs, results and the audit log stay.
    """
    course = course_named(session, name)
    _require_manager(by, course, f"close {name!r}")
    if course.closed_at is not None:
        raise Conflict(f"course {name!r} was closed already")
    revoked = cancelled = 0
    now = utcnow()
    for person in participants(session, course):
        if person.disabled_at is None:
            person.disabled_at = now
        revoked += queries.revoke_tokens(session, person)
        cancelled += jobs.cancel_all_of(session, person, f"course {name} was closed by {by.name}")
    course.closed_at = now
    queries.add_audit(
        session,
        by,
        "course.close",
        name,
        detail=f"{revoked} token(s) revoked, {cancelled} unfinished job(s) cancelled",
    )
    session.commit()
    return course, revoked, cancelled


def extend(session: Session, by: User, name: str, by_how_much: timedelta) -> Course:
    """Move a course's end (and its participants' access) later (commits).

    A course without an end gets one ``by_how_much`` from now; a closed course stays closed.
    """
    course = course_named(session, name)
    _require_manager(by, course, f"extend {name!r}")
    if course.closed_at is not None:
        raise Conflict(f"course {name!r} was closed; participants' tokens are revoked")
    now = utcnow()
    course.expires_at = max(course.expires_at or now, now) + by_how_much
    for person in participants(session, course):
        person.expires_at = course.expires_at
    queries.add_audit(
        session, by, "course.extend", name, detail=f"ends {course.expires_at:%Y-%m-%d %H:%M} UTC"
    )
    session.commit()
    return course
