"""The tables: users, their tokens and groups; datasets and grants; jobs, events, audit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Now, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]
    # Course participants: their course, their quota, and when their access ends.
    course_id: Mapped[int | None] = mapped_column(
        ForeignKey("courses.id", ondelete="SET NULL", use_alter=True), index=True
    )
    quota: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    expires_at: Mapped[datetime | None]

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")
    memberships: Mapped[list[GroupMember]] = relationship(
        back_populates="user", cascade="all, delete-orphan", order_by="GroupMember.group"
    )

    @property
    def groups(self) -> list[str]:
        """Names of the groups the user belongs to."""
        return [m.group for m in self.memberships]


class Course(Base):
    """A class of participants sharing datasets, a quota and an end date."""

    __tablename__ = "courses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    datasets: Mapped[list[Any]] = mapped_column(JSON, default=list)
    quota: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]

    owner: Mapped[User] = relationship(foreign_keys=[owner_id])


class GroupMember(Base):
    """A user's membership of a named group (datasets may be shared with a group)."""

    __tablename__ = "group_members"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    group: Mapped[str] = mapped_column(String(100), primary_key=True)

    user: Mapped[User] = relationship(back_populates="memberships")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="tokens")


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(40))
    version: Mapped[str] = mapped_column(String(64))
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    access: Mapped[str] = mapped_column(String(120), default="public")
    description: Mapped[str | None] = mapped_column(Text)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Derived datasets (a job's outputs): the job that wrote them, their lineage (parents,
    # selection, spec, code and image digests), the bytes they take in the store, when
    # the parents' owners let the derived data's own access rule alone decide, and when
    # it expires under its course's retention period; a deleted one keeps its row (jobs
    # that ran on it name it) under a name no one can register.
    source_job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    released_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    owner: Mapped[User | None] = relationship()
    grants: Mapped[list[DatasetGrant]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan"
    )


class DatasetGrant(Base):
    """A user allowed to read a dataset beyond its access rule."""

    __tablename__ = "dataset_grants"
    __table_args__ = (UniqueConstraint("dataset_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    granted_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="grants")
    user: Mapped[User] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_digest: Mapped[str] = mapped_column(String(64))
    code_bundle_digest: Mapped[str | None] = mapped_column(String(64))
    array_path: Mapped[str] = mapped_column(Text)
    ranges: Mapped[list[Any]] = mapped_column(JSON)

    state: Mapped[str] = mapped_column(String(20), default="queued")
    target: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(40))

    backend: Mapped[str] = mapped_column(String(20))
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    workspace: Mapped[str] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]

    timeout_s: Mapped[float] = mapped_column(Float)
    result_cap_bytes: Mapped[int] = mapped_column(BigInteger)
    cores: Mapped[int] = mapped_column(Integer, default=1)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    chunks_done: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_selected: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_scanned: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_returned: Mapped[int] = mapped_column(BigInteger, default=0)
    core_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    results: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # What the server measured and decided about the job (egress by channel, metering
    # sources, what the job reported), and the provenance the server wrote from its records.
    accounting: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    owner: Mapped[User] = relationship()
    dataset: Mapped[Dataset] = relationship()
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="events")


class AuditEvent(Base):
    """Who did what to which object, and whether it was allowed: submits, downloads, denials."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    user_name: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(20), default="ok")
    detail: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Refused requests are folded into one row per caller, action and window: how many
    # there were and when the last came, so a flood cannot grow the table without bound.
    count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_at: Mapped[datetime | None]


class BundleUpload(Base):
    """Who uploaded which code bundle: a bundle is usable only by those who uploaded it."""

    __tablename__ = "bundle_uploads"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UrlRoot(Base):
    """A URL prefix under which a role, or one user, may register datasets (set by admins)."""

    __tablename__ = "url_roots"
    __table_args__ = (UniqueConstraint("prefix", "role", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(String(20))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    granted_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User | None] = relationship()
