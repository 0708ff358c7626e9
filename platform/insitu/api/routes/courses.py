"""Courses: provision a class, add participants, report, close (instructors and admins)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from insitu.api.deps import CurrentUser, SessionDep, wake_dispatcher
from insitu.api.schemas import (
    CourseClosed,
    CourseCreate,
    CourseEnrolled,
    CoursePublic,
    CourseReport,
    CoursesPublic,
    ParticipantCreated,
    ParticipantIn,
    ParticipantsAdd,
)
from insitu.db.models import Course, User
from insitu.services import courses

router = APIRouter(prefix="/courses", tags=["courses"])


def _rows(people: list[ParticipantIn]) -> list[courses.Participant]:
    return [courses.Participant(p.name, p.email, p.username) for p in people]


def _enrolled(
    session: SessionDep, course: Course, created: list[tuple[User, str]]
) -> CourseEnrolled:
    count = len(courses.participants(session, course))
    return CourseEnrolled(
        course=CoursePublic.of(course, count),
        created=[ParticipantCreated(user=u.name, email=u.email, token=t) for u, t in created],
    )


@router.post("", response_model=CourseEnrolled, status_code=status.HTTP_201_CREATED)
def create_course(body: CourseCreate, session: SessionDep, user: CurrentUser) -> CourseEnrolled:
    """Create a course with its participants; their tokens are in the answer, only this once."""
    course, created = courses.create(
        session,
        user,
        body.name,
        _rows(body.participants),
        datasets=body.datasets,
        quota=body.quota,
        expires=body.expires,
    )
    return _enrolled(session, course, created)


@router.get("", response_model=CoursesPublic)
def list_courses(session: SessionDep, user: CurrentUser) -> CoursesPublic:
    """The courses you manage (every course, for admins)."""
    rows = [CoursePublic.of(c, n) for c, n in courses.listing(session, user)]
    return CoursesPublic(data=rows, count=len(rows))


@router.post("/{name}/participants", response_model=CourseEnrolled, status_code=201)
def add_participants(
    name: str, body: ParticipantsAdd, session: SessionDep, user: CurrentUser
) -> CourseEnrolled:
    """Add participants to a course; their tokens are in the answer, only this once."""
    course, created = courses.add(session, user, name, _rows(body.participants))
    return _enrolled(session, course, created)


@router.get("/{name}/report", response_model=CourseReport)
def course_report(name: str, session: SessionDep, user: CurrentUser) -> CourseReport:
    """Per participant: jobs, failures, core-hours, bytes scanned and returned."""
    course, rows = courses.report(session, user, name)
    return CourseReport(course=CoursePublic.of(course, len(rows)), participants=rows)


@router.post("/{name}/close", response_model=CourseClosed)
def close_course(
    name: str, request: Request, session: SessionDep, user: CurrentUser
) -> CourseClosed:
    """Revoke every participant's tokens and cancel their unfinished jobs; finished jobs,
    results and the audit log stay."""
    course, revoked, cancelled = courses.close(session, user, name)
    wake_dispatcher(request)
    count = len(courses.participants(session, course))
    return CourseClosed(
        course=CoursePublic.of(course, count), tokens_revoked=revoked, jobs_cancelled=cancelled
    )
