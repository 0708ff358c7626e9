"""Derived datasets: a job's outputs in the catalog, with lineage, quota and retention.

A job's outputs stay next to the data (:mod:`insitu.runtime.outputs`); once the server
has checked them (:mod:`insitu.trusted.outputs`) each becomes a dataset owned by the
job's owner, private to them, whose lineage names its parents, the selection, the job
and the digests of its spec, code and image. Reading it also needs reading every parent
(:func:`insitu.services.access.can_read`) until the parents' owner releases it. Derived
data counts against a storage quota, per user and per course, and expires after its
course's retention period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from insitu import __version__, objectstore
from insitu.config import Settings
from insitu.db import queries
from insitu.db.models import Course, Dataset, Job, User, utcnow
from insitu.errors import Conflict, NotFound, PermissionDenied
from insitu.runtime.workspace import Workspace
from insitu.services import access, quotas
from insitu.spec import JobSpec
from insitu.trusted.outputs import CheckedOutput
from insitu.units import format_size


class OutputsRefused(Exception):
    """The job's outputs cannot enter the catalog (a name is taken, a quota is full)."""


def output_name(job_id: str, key: str, spec: dict[str, Any]) -> str:
    """The catalog name of output ``key``: as the spec names it, else derived/JOB/KEY."""
    named = (spec.get("outputs") or {}).get(key) or {}
    return str(named.get("name") or f"derived/{job_id}/{key.lower()}")


def check_namespace(owner: User, name: str, where: str = "") -> None:
    """Only curators name derived datasets anywhere; others under their own name, so that no
    participant takes (or poses as) a name of the institute's catalog."""
    if access.is_admin(owner) or owner.role in {r.value for r in access.CURATORS}:
        return
    if name.startswith(f"{owner.name}/") or name.startswith("derived/"):
        return
    raise PermissionDenied(
        f"{where}{name!r}: name your derived datasets under your own name, e.g. "
        f"'{owner.name}/{name.rsplit('/', 1)[-1]}'; other names are for instructors and admins"
    )


def check_names_free(session: Session, owner: User, spec: JobSpec) -> None:
    """Refuse a spec naming outputs outside the owner's namespace, or after datasets that
    exist already (at submit)."""
    for key, output in spec.outputs.items():
        if output.name is None:
            continue
        check_namespace(owner, output.name, f"outputs.{key}.name: ")
        try:
            queries.dataset_by_name(session, output.name)
        except NotFound:
            continue
        raise Conflict(
            f"outputs.{key}.name: dataset {output.name!r} exists already; name the output "
            "differently, or delete the old one first ('insitu datasets delete NAME')"
        )


@dataclass(frozen=True)
class StorageUse:
    """Bytes of derived data a user keeps, and their course, against the quotas."""

    used: int
    quota: int | None
    course: str | None = None
    course_used: int = 0
    course_quota: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "quota": self.quota,
            "course": self.course,
            "course_used": self.course_used,
            "course_quota": self.course_quota,
        }


def storage_use(session: Session, user: User) -> StorageUse:
    """What ``user`` (and their course) keeps in derived datasets, and may keep."""
    quota = quotas.quota_of(user)
    used = queries.derived_bytes(session, [user.id])
    if user.course_id is None:
        return StorageUse(used, quota.storage)
    course = session.get(Course, user.course_id)
    course_quota = quotas.Quota.model_validate(course.quota or {}) if course else quota
    members = queries.course_member_ids(session, user.course_id)
    return StorageUse(
        used,
        quota.storage,
        course.name if course else None,
        queries.derived_bytes(session, members),
        course_quota.course_storage,
    )


def storage_problem(use: StorageUse, adding: int = 0, verb: str = "would take") -> str | None:
    """Why ``adding`` more bytes of derived data would exceed a storage quota, or None."""
    if use.quota is not None and use.used + adding > use.quota:
        return (
            f"your derived datasets {verb} {format_size(use.used + adding)}, over your "
            f"storage quota of {format_size(use.quota)} (you keep {format_size(use.used)}); "
            "delete derived datasets you no longer need ('insitu datasets delete NAME') or "
            "ask your instructor for more"
        )
    if use.course_quota is not None and use.course_used + adding > use.course_quota:
        return (
            f"the derived datasets of course {use.course!r} {verb} "
            f"{format_size(use.course_used + adding)}, over the course's storage quota of "
            f"{format_size(use.course_quota)}; delete derived datasets you no longer need "
            "or ask your instructor for more"
        )
    return None


def output_room(session: Session, owner: User, ceiling: int) -> int:
    """Bytes of outputs a job of ``owner`` may write: what their storage quotas leave, at
    most ``ceiling`` (the platform's limit per job)."""
    use = storage_use(session, owner)
    room = ceiling
    if use.quota is not None:
        room = min(room, max(use.quota - use.used, 0))
    if use.course_quota is not None:
        room = min(room, max(use.course_quota - use.course_used, 0))
    return room


def check_room(session: Session, owner: User, spec: JobSpec) -> None:
    """Refuse a job with outputs whose owner's storage quota is full already (at submit)."""
    if not spec.outputs:
        return
    problem = storage_problem(storage_use(session, owner), verb="take")
    if problem:
        raise PermissionDenied(problem)


def _lineage(job: Job, checked: CheckedOutput) -> dict[str, Any]:
    parent = job.dataset
    axes: list[str] = next(
        (a["axes"] for a in parent.info["arrays"] if a["path"] == job.array_path), []
    )
    handle = (job.handle or {}).get("data", {})
    return {
        "parents": [
            {
                "id": parent.id,
                "name": parent.name,
                "version": parent.version,
                "array": job.array_path,
                "selection": {a: list(r) for a, r in zip(axes, job.ranges, strict=False)},
            }
        ],
        "job": job.id,
        "output": checked.key,
        "labels": checked.labels,
        "created_by": job.owner.name,
        "entrypoint": job.spec.get("analysis", {}).get("entrypoint"),
        "spec_sha256": job.spec_digest,
        "code_bundle_sha256": job.code_bundle_digest,
        "image": job.spec.get("analysis", {}).get("image"),
        "image_digest": handle.get("image_digest") or handle.get("image_id"),
        "insitu_version": __version__,
        "stored_objects": checked.objects,
    }


def register_outputs(
    session: Session, job: Job, checked: list[CheckedOutput], now: datetime
) -> list[Dataset]:
    """Enter a succeeded job's checked outputs in the catalog (not committed);
    :class:`OutputsRefused` if a name is taken or a storage quota would overflow."""
    if not checked:
        return []
    owner = job.owner
    total = sum(c.stored_bytes for c in checked)
    problem = storage_problem(storage_use(session, owner), total)
    if problem:
        raise OutputsRefused(f"the outputs ({format_size(total)}) were not kept: {problem}")
    retention = quotas.quota_of(owner).retention
    names = [output_name(job.id, output.key, job.spec) for output in checked]
    for output, name in zip(checked, names, strict=True):  # all free before any is added
        try:
            check_namespace(owner, name, f"output {output.key!r}: ")
        except PermissionDenied as exc:
            raise OutputsRefused(f"the outputs were not kept: {exc.message}") from None
        try:
            queries.dataset_by_name(session, name)
        except NotFound:
            continue
        raise OutputsRefused(
            f"output {output.key!r} was not kept: dataset {name!r} was registered while "
            "the job ran; name the output differently and run the job again"
        )
    rows: list[Dataset] = []
    for output, name in zip(checked, names, strict=True):
        described = (job.spec.get("outputs") or {}).get(output.key, {}).get("description")
        dataset = Dataset(
            name=name,
            url=output.url,
            format=output.info.format,
            version=output.info.version,
            info=output.info.model_dump(mode="json"),
            access=access.PRIVATE,
            description=described or f"output {output.key!r} of job {job.id} on {job.dataset.name}",
            owner_id=owner.id,
            source_job_id=job.id,
            lineage=_lineage(job, output),
            stored_bytes=output.stored_bytes,
            expires_at=now + timedelta(seconds=retention) if retention else None,
            created_at=now,
        )
        session.add(dataset)
        rows.append(dataset)
        queries.add_audit(
            session,
            owner,
            "dataset.derive",
            name,
            detail=f"output {output.key!r} of job {job.id}, from {job.dataset.name}",
            nbytes=output.stored_bytes,
        )
    session.flush()
    return rows


def _bury(session: Session, dataset: Dataset, settings: Settings, now: datetime) -> None:
    """Delete a derived dataset's store and hide its row under a name no one can take."""
    Workspace(dataset.url, objectstore.platform_options(settings, dataset.url)).remove()
    dataset.deleted_at = now
    dataset.name = f"_deleted/{dataset.id}/{dataset.name}"[:200]
    dataset.stored_bytes = 0


def delete(session: Session, settings: Settings, user: User, name: str) -> Dataset:
    """Delete a derived dataset and its data (its owner or an admin; commits)."""
    dataset = queries.dataset_by_name(session, name)
    if dataset.source_job_id is None:
        raise PermissionDenied(
            f"dataset {name!r} was registered, not derived by a job; insitu deletes only "
            "derived datasets (the data of registered ones is the institute's)"
        )
    access.require_curator_of(user, dataset, f"delete {name!r}")
    children = queries.children_of(session, dataset)
    if children:
        shown = ", ".join(repr(c.name) for c in children[:5])
        raise Conflict(
            f"dataset {name!r} has derived datasets of its own ({shown}); delete those first"
        )
    waiting = queries.unfinished_jobs_on(session, dataset.id)
    if waiting:
        raise Conflict(
            f"dataset {name!r} is the input of unfinished job(s) "
            f"{', '.join(j.id for j in waiting[:5])}; wait for them or cancel them first"
        )
    freed = dataset.stored_bytes or 0
    _bury(session, dataset, settings, utcnow())
    queries.add_audit(session, user, "dataset.delete", name, detail="derived", nbytes=freed)
    session.commit()
    return dataset


def _releasers(session: Session, dataset: Dataset, depth: int = 0) -> list[Dataset | None]:
    """The datasets whose owners decide over ``dataset``'s data: its parents, and for a
    parent that is itself derived and not released, that parent's own (recursively)."""
    found: list[Dataset | None] = []
    for parent in access.parents_of(session, dataset):
        if parent is not None and parent.source_job_id and parent.released_at is None:
            if depth < 50:
                found += _releasers(session, parent, depth + 1)
            continue
        found.append(parent)
    return found


def release(session: Session, user: User, name: str) -> Dataset:
    """Let a derived dataset's own access rule alone decide who reads it (commits).

    Only someone who owns every dataset its data comes from (its parents, through any
    unreleased derived ones up to the data they were derived from), or an admin, may.
    """
    dataset = queries.dataset_by_name(session, name)
    if dataset.source_job_id is None:
        raise Conflict(f"dataset {name!r} is not derived; its own access rule decides already")
    for origin in _releasers(session, dataset):
        if access.is_admin(user):
            break
        if origin is None or origin.deleted_at is not None:
            raise PermissionDenied(
                f"a dataset {name!r} was derived from was deleted; only an admin may release it"
            )
        if origin.owner_id != user.id:
            raise PermissionDenied(
                f"only the owner of {origin.name!r} (which {name!r} was derived from) or an "
                "admin may release it"
            )
    dataset.released_at = utcnow()
    queries.add_audit(session, user, "dataset.release", name)
    session.commit()
    return dataset


def set_access(session: Session, user: User, name: str, rule: str) -> Dataset:
    """Change a dataset's own access rule (its owner or an admin; commits).

    For derived data the parents still bound who may read it, unless released.
    """
    dataset = queries.dataset_by_name(session, name)
    access.require_curator_of(user, dataset, f"change the access rule of {name!r}")
    dataset.access = access.parse_access(rule)
    queries.add_audit(session, user, "dataset.access", name, detail=dataset.access)
    session.commit()
    return dataset


def lineage_chain(session: Session, user: User, name: str) -> list[dict[str, Any]]:
    """The dataset and its ancestors, nearest first, each with its lineage record."""
    dataset = queries.dataset_by_name(session, name)
    access.require_read(session, user, dataset)
    chain: list[dict[str, Any]] = []
    frontier: list[Dataset | None] = [dataset]
    seen: set[int] = set()
    while frontier and len(chain) < 100:
        current = frontier.pop(0)
        if current is None or current.id in seen:
            continue
        if chain and not access.can_read(session, user, current):
            continue  # its child's lineage names it; what it is stays its readers' to see
        seen.add(current.id)
        chain.append(
            {
                "name": current.name,
                "url": current.url,
                "owner": current.owner.name if current.owner else None,
                "derived": current.source_job_id is not None,
                "stored_bytes": current.stored_bytes,
                "released": current.released_at is not None,
                "lineage": current.lineage,
            }
        )
        frontier += access.parents_of(session, current)
    return chain


def expire(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Delete derived datasets past their retention (and not in use); commits."""
    gone: list[str] = []
    for dataset in queries.expired_datasets(session, now):
        if queries.children_of(session, dataset) or queries.unfinished_jobs_on(session, dataset.id):
            continue
        name = dataset.name
        _bury(session, dataset, settings, now)
        queries.add_audit(session, None, "dataset.expire", name, detail="retention period ended")
        gone.append(name)
    session.commit()
    return gone
