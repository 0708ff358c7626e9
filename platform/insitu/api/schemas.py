"""What the API accepts and returns: one schema family per resource."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from insitu.catalog import ArrayInfo
from insitu.db.models import AuditEvent, Course, Dataset, Job, JobEvent, UrlRoot, User
from insitu.services.egress import egress_of
from insitu.services.quotas import parse_quota


class JobCreate(BaseModel):
    """A job submission: the spec (as parsed YAML/JSON, or its text) and an optional bundle."""

    spec: dict[str, Any] | str = Field(description="The job spec, as an object or as YAML text.")
    code_bundle: str | None = Field(
        None, description="SHA-256 of a bundle uploaded to /v1/bundles."
    )


class PipelineCreate(BaseModel):
    """A pipeline submission: its file (as parsed YAML/JSON, or its text) and a bundle of
    code every step may use."""

    pipeline: dict[str, Any] | str = Field(
        description="The pipeline: kind Pipeline and its steps, as an object or YAML text."
    )
    code_bundle: str | None = Field(
        None, description="SHA-256 of a bundle uploaded to /v1/bundles."
    )


class Progress(BaseModel):
    chunks_done: int
    chunks_total: int


class ResultPublic(BaseModel):
    key: str
    filename: str
    kind: str
    media_type: str
    size: int
    sha256: str
    shape: list[int] | None = None
    dtype: str | None = None


class EgressPublic(BaseModel):
    """A job's egress budget and what each channel its owner reads has used of it."""

    budget: int = Field(description="Bytes the job may return by every channel together.")
    source: str = Field(description="Where the budget comes from.")
    results: int
    provenance: int
    texts: int = Field(description="The job's error, reason and event texts.")
    log: int = Field(description="The job's log as served to its owner.")
    used: int


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: str
    name: str
    owner: str
    dataset: str
    array: str
    selection: dict[str, list[int]]
    state: str
    target: str | None
    reason: str | None
    error: str | None
    error_kind: str | None
    backend: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    bytes_selected: int
    bytes_scanned: int
    bytes_returned: int
    core_seconds: float
    result_cap_bytes: int
    spec_digest: str
    code_bundle: str | None
    spec: dict[str, Any]
    results: list[ResultPublic]
    egress: EgressPublic
    outputs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Outputs kept next to the data, as derived datasets: key, dataset, bytes.",
    )
    input: dict[str, Any] | None = Field(
        None,
        description="For a job reading another job's output: that job, the output's key, "
        "whether it exists yet and the dataset it became.",
    )
    bytes_scanned_source: str | None = Field(None, description="How the server counted them.")
    core_seconds_source: str | None = Field(None, description="How the backend measured them.")

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        pending = (job.accounting or {}).get("input")
        waiting = bool(pending and not pending.get("resolved"))
        axes: list[str] = next(
            (a["axes"] for a in job.dataset.info["arrays"] if a["path"] == job.array_path), []
        )
        return cls(
            id=job.id,
            name=job.name,
            owner=job.owner.name,
            dataset=job.dataset.name if not waiting else job.spec.get("dataset", ""),
            array=job.array_path,
            selection={axis: list(r) for axis, r in zip(axes, job.ranges, strict=False)},
            state=job.state,
            target=job.target,
            reason=job.reason,
            error=job.error,
            error_kind=job.error_kind,
            backend=job.backend,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            progress=Progress(chunks_done=job.chunks_done, chunks_total=job.chunks_total),
            bytes_selected=job.bytes_selected,
            bytes_scanned=job.bytes_scanned,
            bytes_returned=job.bytes_returned,
            core_seconds=job.core_seconds,
            result_cap_bytes=job.result_cap_bytes,
            spec_digest=job.spec_digest,
            code_bundle=job.code_bundle_digest,
            spec=job.spec,
            results=[ResultPublic.model_validate(r) for r in job.results],
            egress=EgressPublic(**(egress := egress_of(job)).to_json(), used=egress.used),
            outputs=list((job.accounting or {}).get("outputs") or []),
            input=pending,
            bytes_scanned_source=(job.accounting or {}).get("bytes_scanned_source"),
            core_seconds_source=(job.accounting or {}).get("core_seconds_source"),
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobEventPublic(BaseModel):
    at: datetime
    from_state: str | None
    to_state: str
    reason: str

    @classmethod
    def of(cls, event: JobEvent) -> JobEventPublic:
        return cls(
            at=event.at, from_state=event.from_state, to_state=event.to_state, reason=event.reason
        )


class JobEventsPublic(BaseModel):
    data: list[JobEventPublic]
    count: int


class LogChunk(BaseModel):
    """A piece of a job's log, from ``offset`` to ``next_offset``."""

    text: str
    offset: int
    next_offset: int
    complete: bool = Field(description="True when the job has ended and no more log will come.")
    cut: bool = Field(
        False,
        description="True when the rest of the log is withheld from its owner: it would exceed "
        "the job's egress budget (admins read the whole log).",
    )


class ResultsPublic(BaseModel):
    data: list[ResultPublic]
    count: int


class DatasetCreate(BaseModel):
    name: str = Field(description="Catalog name, e.g. 'ophys/session-001'.")
    url: str = Field(description="Where the Zarr store lives: s3://..., file://... or a path.")
    access: str = Field(
        "private",
        description="Who may read it: 'public', 'private', 'group:NAME' or 'course:NAME'.",
    )
    description: str | None = None
    same_url_ok: bool = Field(
        False, description="Register a URL that is in the catalog already, under another name."
    )


class GrantCreate(BaseModel):
    user: str = Field(description="Name of the user who may read the dataset.")


class DatasetPublic(BaseModel):
    name: str
    url: str
    format: str
    version: str
    access: str
    owner: str | None
    description: str | None
    default_array: str
    arrays: list[ArrayInfo]
    stored_bytes: dict[str, int] | None = Field(
        None, description="Bytes each array takes in the store, where it was listed."
    )
    created_at: datetime
    derived_from_job: str | None = Field(
        None, description="The job whose output this dataset is; None for a registered one."
    )
    lineage: dict[str, Any] | None = Field(
        None,
        description="Parents (datasets, arrays, selections), job, spec, code and image digests.",
    )
    size: int | None = Field(None, description="Bytes a derived dataset takes in the store.")
    released: bool = Field(
        False, description="Whether its parents' owner let its own access rule alone decide."
    )
    expires_at: datetime | None = Field(
        None, description="When a derived dataset is deleted (its course's retention)."
    )

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetPublic:
        info = dataset.info
        return cls(
            name=dataset.name,
            url=dataset.url,
            format=dataset.format,
            version=dataset.version,
            access=dataset.access,
            owner=dataset.owner.name if dataset.owner else None,
            description=dataset.description,
            default_array=info["default_array"],
            arrays=[ArrayInfo.model_validate(a) for a in info["arrays"]],
            stored_bytes=info.get("stored_bytes"),
            created_at=dataset.created_at,
            derived_from_job=dataset.source_job_id,
            lineage=dataset.lineage,
            size=dataset.stored_bytes,
            released=dataset.released_at is not None,
            expires_at=dataset.expires_at,
        )


class AccessChange(BaseModel):
    access: str = Field(description="public, private, group:NAME or course:NAME.")


class LineagePublic(BaseModel):
    data: list[dict[str, Any]] = Field(description="The dataset and its ancestors, nearest first.")


class StoragePublic(BaseModel):
    used: int = Field(description="Bytes your derived datasets take in the store.")
    quota: int | None = Field(description="Your storage quota in bytes (None: unlimited).")
    course: str | None = None
    course_used: int = 0
    course_quota: int | None = None


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class BundlePublic(BaseModel):
    digest: str
    size: int


class WarmPoolState(BaseModel):
    size: int = Field(description="How many warm runners or sandboxes the pool keeps.")
    ready: int = Field(description="How many are ready for a job now.")


class Health(BaseModel):
    status: str
    version: str
    backend: str
    database: str
    warm_pool: WarmPoolState | None = Field(
        None, description="The backend's warm pool, where it keeps one."
    )


class UserCreate(BaseModel):
    name: str = Field(description="Login name, e.g. 'ada'.")
    role: str = Field(description="admin, instructor, researcher or participant.")
    email: str | None = None
    groups: list[str] = Field(default_factory=list, description="Groups the user belongs to.")


class UserPublic(BaseModel):
    name: str
    role: str
    email: str | None
    groups: list[str]
    created_at: datetime
    disabled_at: datetime | None
    active: bool

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(
            name=user.name,
            role=user.role,
            email=user.email,
            groups=user.groups,
            created_at=user.created_at,
            disabled_at=user.disabled_at,
            active=user.disabled_at is None,
        )


class UserCreated(UserPublic):
    token: str = Field(description="The user's API token; shown only this once.")


class UsersPublic(BaseModel):
    data: list[UserPublic]
    count: int


class AuditEventPublic(BaseModel):
    at: datetime
    user: str | None
    action: str
    target: str | None
    outcome: str
    detail: str | None
    bytes: int | None
    count: int = Field(
        1, description="Refused requests folded into this row (same caller, action and hour)."
    )
    last_at: datetime | None = Field(None, description="When the last of them came.")

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventPublic:
        return cls(
            at=event.at,
            user=event.user_name,
            action=event.action,
            target=event.target,
            outcome=event.outcome,
            detail=event.detail,
            bytes=event.bytes,
            count=event.count or 1,
            last_at=event.last_at,
        )


class AuditEventsPublic(BaseModel):
    data: list[AuditEventPublic]
    count: int


# -- courses ------------------------------------------------------------------------------------


class ParticipantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The person's name, as on the roster.")
    email: str = Field(description="Their e-mail address.")
    username: str | None = Field(None, description="User name; default: from the e-mail.")


class CourseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Course name, e.g. 'neuro-2026'.")
    participants: list[ParticipantIn]
    datasets: list[str] = Field(default_factory=list, description="Datasets they may read.")
    quota: str | dict[str, Any] | None = Field(
        None, description="e.g. 'jobs=2,workers=2,core-hours=20,result-bytes=256MiB'."
    )
    expires: datetime | None = Field(None, description="When their access ends (UTC).")

    @field_validator("expires")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        """A date or time without a zone is in UTC, as the description says."""
        return value.replace(tzinfo=timezone.utc) if value and value.tzinfo is None else value


class ParticipantsAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    participants: list[ParticipantIn]


class ParticipantCreated(BaseModel):
    user: str
    email: str | None
    token: str = Field(description="Their API token, shown only this once.")


class CoursePublic(BaseModel):
    name: str
    owner: str
    datasets: list[str]
    quota: dict[str, Any]
    quota_text: str = Field(description="The quota as written, e.g. 'jobs=2,workers=2'.")
    expires_at: datetime | None
    created_at: datetime
    closed_at: datetime | None
    participants: int

    @classmethod
    def of(cls, course: Course, participants: int) -> CoursePublic:
        return cls(
            name=course.name,
            owner=course.owner.name,
            datasets=list(course.datasets),
            quota=dict(course.quota),
            quota_text=parse_quota(course.quota).describe(),
            expires_at=course.expires_at,
            created_at=course.created_at,
            closed_at=course.closed_at,
            participants=participants,
        )


class CourseEnrolled(BaseModel):
    course: CoursePublic
    created: list[ParticipantCreated]


class CoursesPublic(BaseModel):
    data: list[CoursePublic]
    count: int


class CourseReport(BaseModel):
    course: CoursePublic
    participants: list[dict[str, Any]]


class CourseClosed(BaseModel):
    course: CoursePublic
    tokens_revoked: int
    jobs_cancelled: int = Field(0, description="Participants' unfinished jobs now cancelled.")


class UrlRootCreate(BaseModel):
    prefix: str = Field(description="A URL prefix, e.g. 's3://lab-bucket/course/' or a path.")
    role: str | None = Field(None, description="The role it is allowed to, e.g. 'instructor'.")
    user: str | None = Field(None, description="Or the one user it is allowed to.")


class UrlRootPublic(BaseModel):
    id: int
    prefix: str
    role: str | None
    user: str | None
    granted_by: str
    created_at: datetime

    @classmethod
    def of(cls, row: UrlRoot) -> UrlRootPublic:
        return cls(
            id=row.id,
            prefix=row.prefix,
            role=row.role,
            user=row.user.name if row.user else None,
            granted_by=row.granted_by,
            created_at=row.created_at,
        )


class UrlRootsPublic(BaseModel):
    data: list[UrlRootPublic]
    count: int


class ErrorPublic(BaseModel):
    """Every refusal and failure: a sentence to act on, and a stable code for scripts."""

    detail: str = Field(description="What was wrong and how to fix it.")
    error: str = Field(description="A stable code, e.g. invalid_input, forbidden, too_large.")


_ERROR_MEANINGS = {
    400: "The request could not be read (malformed JSON, a bad query).",
    401: "No API token, or one that is unknown or revoked.",
    403: "The caller may not do this.",
    404: "The named job, dataset, result or user does not exist (for the caller).",
    409: "The request clashes with the current state.",
    413: "The request body is larger than the server accepts.",
    422: "Something in the request is invalid; the detail says what.",
    429: "A limit that frees itself was reached (e.g. queued jobs).",
    503: "The server cannot serve now (database or backend); retry after Retry-After.",
    507: "The workspace's disk is full.",
}
#: The error answers every route may give, declared in the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic, "description": meaning}
    for code, meaning in _ERROR_MEANINGS.items()
}
