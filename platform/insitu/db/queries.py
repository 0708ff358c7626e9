"""Data-layer queries. They flush at most; the service owning the unit of work commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.orm import Session, joinedload, selectinload

from insitu.db.models import (
    ApiToken,
    AuditEvent,
    Dataset,
    DatasetGrant,
    Job,
    JobEvent,
    User,
    utcnow,
)
from insitu.errors import Conflict, NotFound
from insitu.states import ACTIVE, JobState, can_transition

# The statements of every request (who calls, which job) are built once: building one and
# its cache key took a fifth of each query's time under load (docs/profile-api.md).
_USER_BY_TOKEN = (
    select(User)
    .join(ApiToken)
    .where(
        ApiToken.token_hash == bindparam("token_hash"),
        ApiToken.revoked_at.is_(None),
        User.disabled_at.is_(None),
    )
)
_JOB = select(Job).where(Job.id == bindparam("job_id"))
_JOB_WITH_DATASET = _JOB.options(joinedload(Job.dataset, innerjoin=True))
_JOB_LOCKED = _JOB.with_for_update()


def user_by_token_hash(session: Session, token_hash: str) -> User | None:
    """The active user owning an unrevoked token with this hash."""
    return session.scalar(_USER_BY_TOKEN, {"token_hash": token_hash})


def user_by_name(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def user_named(session: Session, name: str) -> User:
    """A user by name, or :class:`NotFound` with a hint."""
    user = user_by_name(session, name)
    if user is None:
        raise NotFound(f"there is no user named {name!r}; 'insitu users list' shows them")
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.name)).all()


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def revoke_tokens(session: Session, user: User) -> int:
    """Revoke every live token of ``user``; return how many."""
    now = utcnow()
    live = [t for t in user.tokens if t.revoked_at is None]
    for token in live:
        token.revoked_at = now
    return len(live)


def grant(session: Session, dataset: Dataset, user: User, granted_by: str) -> DatasetGrant:
    """Let ``user`` read ``dataset`` (idempotent)."""
    existing = session.scalar(
        select(DatasetGrant).where(
            DatasetGrant.dataset_id == dataset.id, DatasetGrant.user_id == user.id
        )
    )
    if existing is not None:
        return existing
    row = DatasetGrant(dataset=dataset, user=user, granted_by=granted_by)
    session.add(row)
    return row


def is_granted(session: Session, dataset: Dataset, user: User) -> bool:
    return (
        session.scalar(
            select(DatasetGrant.id).where(
                DatasetGrant.dataset_id == dataset.id, DatasetGrant.user_id == user.id
            )
        )
        is not None
    )


def granted_dataset_ids(session: Session, user: User) -> set[int]:
    """Ids of the datasets granted to ``user``."""
    rows = session.scalars(select(DatasetGrant.dataset_id).where(DatasetGrant.user_id == user.id))
    return set(rows.all())


def add_audit(
    session: Session,
    user: User | None,
    action: str,
    target: str | None = None,
    *,
    outcome: str = "ok",
    detail: str | None = None,
    nbytes: int | None = None,
) -> AuditEvent:
    """Record one audited action (not committed)."""
    event = AuditEvent(
        user_id=user.id if user else None,
        user_name=user.name if user else None,
        action=action,
        target=target,
        outcome=outcome,
        detail=detail,
        bytes=nbytes,
    )
    session.add(event)
    return event


def add_denial(
    session: Session,
    user: User | None,
    action: str,
    target: str,
    detail: str,
    *,
    window: timedelta = timedelta(hours=1),
) -> None:
    """Record a refused request, folded into the caller's row for ``action`` in this window.

    One row per caller (anonymous callers share one), action and window, counting the
    refusals and keeping the first target and the latest reason: a flood of refused
    requests adds rows at most once per window, however many requests it sends.
    """
    now = utcnow()
    owner = AuditEvent.user_id.is_(None) if user is None else AuditEvent.user_id == user.id
    row_id = session.scalar(
        select(AuditEvent.id)
        .where(
            owner,
            AuditEvent.action == action,
            AuditEvent.outcome == "denied",
            AuditEvent.at >= now - window,
        )
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    if row_id is None:
        row = add_audit(session, user, action, target, outcome="denied", detail=detail)
        row.count, row.last_at = 1, now
        return
    # One statement, so concurrent refusals never lose a count.
    session.execute(
        update(AuditEvent)
        .where(AuditEvent.id == row_id)
        .values(count=AuditEvent.count + 1, last_at=now, detail=detail)
    )


def list_audit(
    session: Session,
    *,
    user_name: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    limit: int = 100,
) -> tuple[Sequence[AuditEvent], int]:
    """Audit events newest first, with the total count matching the filter."""
    query = select(AuditEvent)
    if user_name is not None:
        query = query.where(AuditEvent.user_name == user_name)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if outcome is not None:
        query = query.where(AuditEvent.outcome == outcome)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit)).all()
    return rows, count


def audit_of_datasets(
    session: Session, names: Sequence[str], limit: int = 100
) -> Sequence[AuditEvent]:
    """Audit events about these datasets, the jobs run on them and those jobs' results
    (downloads and views), newest first."""
    if not names:
        return []
    job_ids = (
        select(Job.id).join(Dataset, Job.dataset_id == Dataset.id).where(Dataset.name.in_(names))
    )
    about = or_(
        AuditEvent.action.like("dataset.%") & AuditEvent.target.in_(names),
        AuditEvent.action.like("job.%") & AuditEvent.target.in_(job_ids),
        (AuditEvent.action == "result.view") & AuditEvent.target.in_(job_ids),
        # a download's target is JOB/FILE; job ids have one length ("j-" and 12 digits)
        (AuditEvent.action == "result.download")
        & func.substr(AuditEvent.target, 1, 14).in_(job_ids),
    )
    return session.scalars(
        select(AuditEvent).where(about).order_by(AuditEvent.id.desc()).limit(limit)
    ).all()


def dataset_by_name(session: Session, name: str) -> Dataset:
    """A dataset by its catalog name, or :class:`NotFound` with a hint."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.name == name, Dataset.deleted_at.is_(None))
    )
    if dataset is None:
        raise NotFound(
            f"dataset {name!r} is not registered; 'insitu datasets list' shows the catalog"
        )
    return dataset


def list_datasets(session: Session) -> Sequence[Dataset]:
    """The catalog: every dataset not deleted, by name."""
    return session.scalars(
        select(Dataset).where(Dataset.deleted_at.is_(None)).order_by(Dataset.name)
    ).all()


def datasets_by_id(session: Session, ids: Sequence[int]) -> dict[int, Dataset]:
    """Datasets (deleted ones included) by id."""
    if not ids:
        return {}
    return {d.id: d for d in session.scalars(select(Dataset).where(Dataset.id.in_(ids)))}


def derived_of_job(session: Session, job_id: str) -> Sequence[Dataset]:
    """The derived datasets a job's outputs became (deleted ones included)."""
    return session.scalars(
        select(Dataset).where(Dataset.source_job_id == job_id).order_by(Dataset.id)
    ).all()


def derived_bytes(session: Session, owner_ids: Sequence[int]) -> int:
    """Bytes the live derived datasets of these users take in the store."""
    if not owner_ids:
        return 0
    total = session.scalar(
        select(func.coalesce(func.sum(Dataset.stored_bytes), 0)).where(
            Dataset.owner_id.in_(owner_ids),
            Dataset.source_job_id.is_not(None),
            Dataset.deleted_at.is_(None),
        )
    )
    return int(total or 0)


def course_member_ids(session: Session, course_id: int) -> list[int]:
    """Ids of a course's participants."""
    return list(session.scalars(select(User.id).where(User.course_id == course_id)))


def children_of(session: Session, dataset: Dataset) -> list[Dataset]:
    """Live derived datasets whose lineage names ``dataset`` as a parent."""
    return [
        d
        for d in session.scalars(
            select(Dataset).where(Dataset.source_job_id.is_not(None), Dataset.deleted_at.is_(None))
        )
        if any(p.get("id") == dataset.id for p in (d.lineage or {}).get("parents", []))
    ]


def expired_datasets(session: Session, now: datetime) -> Sequence[Dataset]:
    """Live derived datasets past their retention."""
    return session.scalars(
        select(Dataset).where(
            Dataset.expires_at.is_not(None), Dataset.expires_at <= now, Dataset.deleted_at.is_(None)
        )
    ).all()


def job_by_id(session: Session, job_id: str, *, lock: bool = False) -> Job:
    """A job by id (optionally locked for update), or :class:`NotFound`.

    Unlocked, its dataset comes in the same query: every reader of a job names it.
    """
    job = session.scalar(_JOB_LOCKED if lock else _JOB_WITH_DATASET, {"job_id": job_id})
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist; 'insitu list' shows your jobs")
    return job


def list_jobs(
    session: Session,
    *,
    owner_id: int | None = None,
    states: Sequence[str] = (),
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[Job], int]:
    """Jobs newest first, with the total count matching the filter."""
    query = select(Job)
    if owner_id is not None:
        query = query.where(Job.owner_id == owner_id)
    if states:
        query = query.where(Job.state.in_(list(states)))
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    ).all()
    return rows, count


def transition(session: Session, job: Job, to: JobState, reason: str) -> JobEvent:
    """Move ``job`` to state ``to``, checked against the transition table, and record why."""
    source = JobState(job.state)
    if not can_transition(source, to):
        raise Conflict(f"job {job.id} is {source.value} and cannot become {to.value}")
    now = utcnow()
    job.state = to.value
    job.reason = reason
    job.updated_at = now
    if to == JobState.PROVISIONING:
        job.started_at = now
    if to.terminal:
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None
    return add_event(session, job, source, to, reason)


def add_event(
    session: Session, job: Job, source: JobState | None, to: JobState, reason: str
) -> JobEvent:
    """Record a state change of ``job`` (its first one has no source)."""
    event = JobEvent(
        job_id=job.id,
        at=utcnow(),
        from_state=source.value if source else None,
        to_state=to.value,
        reason=reason,
    )
    session.add(event)
    return event


def claim_queued(session: Session, owner: str, limit: int, lease_until: datetime) -> list[Job]:
    """Lock up to ``limit`` queued jobs, oldest first, and lease them to ``owner``."""
    if limit <= 0:
        return []
    jobs = queued_candidates(session, limit)
    for job in jobs:
        job.lease_owner, job.lease_expires_at = owner, lease_until
    return jobs


def claim_active(session: Session, owner: str, now: datetime, lease_until: datetime) -> list[Job]:
    """Active jobs this dispatcher holds, or whose lease ran out; renew their lease."""
    jobs = list(
        session.scalars(
            select(Job)
            .where(
                Job.state.in_([s.value for s in ACTIVE]),
                or_(
                    Job.lease_owner == owner,
                    Job.lease_owner.is_(None),
                    Job.lease_expires_at < now,
                ),
            )
            .order_by(Job.created_at)
            .with_for_update(skip_locked=True)
        ).all()
    )
    for job in jobs:
        job.lease_owner, job.lease_expires_at = owner, lease_until
    return jobs


def unfinished_jobs_of(session: Session, owner_id: int) -> list[Job]:
    """An owner's jobs that have not ended, locked for update."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.owner_id == owner_id, Job.finished_at.is_(None))
            .order_by(Job.created_at)
            .with_for_update()
        ).all()
    )


def unfinished_jobs_on(session: Session, dataset_id: int) -> list[Job]:
    """Jobs reading a dataset that have not ended."""
    return list(
        session.scalars(
            select(Job).where(Job.dataset_id == dataset_id, Job.finished_at.is_(None))
        ).all()
    )


def core_seconds_of(session: Session, owner_id: int) -> float:
    """Core-seconds an owner's jobs have used in all."""
    used = select(func.coalesce(func.sum(Job.core_seconds), 0.0)).where(Job.owner_id == owner_id)
    return float(session.scalar(used) or 0.0)


def count_queued_of(session: Session, owner_id: int) -> int:
    """How many of an owner's jobs wait in the queue."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner_id, Job.state == JobState.QUEUED.value)
        )
        or 0
    )


def count_active(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Job).where(Job.state.in_([s.value for s in ACTIVE]))
        )
        or 0
    )


def live_job_ids(session: Session) -> set[str]:
    """Ids of jobs that are not finished."""
    return set(session.scalars(select(Job.id).where(Job.finished_at.is_(None))).all())


# -- quotas and fair share --------------------------------------------------------------------


def usage_by_owner(
    session: Session, owner_ids: Sequence[int] | None = None, since: datetime | None = None
) -> dict[int, tuple[int, int, float, int]]:
    """Per owner: jobs running now, their Dask workers, core-seconds used in all, and jobs
    admitted (no longer queued) that were submitted after ``since``."""
    usage: dict[int, list[float]] = {}
    active = select(Job.owner_id, Job.spec).where(Job.state.in_([s.value for s in ACTIVE]))
    used = select(Job.owner_id, func.coalesce(func.sum(Job.core_seconds), 0.0)).group_by(
        Job.owner_id
    )
    recent = (
        select(Job.owner_id, func.count())
        .where(Job.state != JobState.QUEUED.value)
        .group_by(Job.owner_id)
    )
    if since is not None:
        recent = recent.where(Job.created_at >= since)
    if owner_ids is not None:
        active = active.where(Job.owner_id.in_(owner_ids))
        used = used.where(Job.owner_id.in_(owner_ids))
        recent = recent.where(Job.owner_id.in_(owner_ids))
    for owner_id, spec in session.execute(active):
        entry = usage.setdefault(owner_id, [0, 0, 0.0, 0])
        entry[0] += 1
        entry[1] += int((spec or {}).get("resources", {}).get("workers", 1))
    for owner_id, seconds in session.execute(used):
        usage.setdefault(owner_id, [0, 0, 0.0, 0])[2] = float(seconds or 0.0)
    for owner_id, count in session.execute(recent):
        usage.setdefault(owner_id, [0, 0, 0.0, 0])[3] = int(count)
    return {k: (int(v[0]), int(v[1]), float(v[2]), int(v[3])) for k, v in usage.items()}


def queued_candidates(session: Session, limit: int, per_owner: int | None = None) -> list[Job]:
    """Lock up to ``limit`` queued jobs, oldest first, skipping rows others hold.

    With ``per_owner``, each owner contributes at most that many of their oldest jobs,
    so a deep backlog of one user never hides another user's job from admission.
    Their owners come in one more query (admission reads each owner's quota).
    """
    queued = Job.state == JobState.QUEUED.value
    query = select(Job).where(queued)
    if per_owner is not None:
        rank = (
            func.row_number()
            .over(partition_by=Job.owner_id, order_by=(Job.created_at, Job.id))
            .label("rank")
        )
        ranked = select(Job.id, rank).where(queued).subquery()
        query = query.where(Job.id.in_(select(ranked.c.id).where(ranked.c.rank <= per_owner)))
    return list(
        session.scalars(
            query.order_by(Job.created_at, Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .options(selectinload(Job.owner))
        ).all()
    )
