"""Submit, cancel and read jobs: the units of work behind the jobs API."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy.orm import Session

from insitu import __version__, objectstore
from insitu.backends.base import Backend
from insitu.blocks import plan_for_spec
from insitu.catalog import ArrayInfo, resolve_selection
from insitu.config import Settings
from insitu.db import queries
from insitu.db.models import Dataset, Job, User
from insitu.errors import Conflict, InvalidInput, LimitReached, NotFound, PermissionDenied
from insitu.runtime.workspace import CODE_FILE, JOB_FILE, JobInput
from insitu.services import access, derived, inputs, quotas
from insitu.services.auth import Role
from insitu.services.bundles import BundleStore
from insitu.services.datasets import info_of
from insitu.services.inputs import Waiting
from insitu.spec import JobSpec, load_spec
from insitu.states import JobState
from insitu.units import format_duration, format_size


def new_job_id() -> str:
    """A short, unique, URL-safe job id."""
    return "j-" + uuid.uuid4().hex[:12]


def check_resources(spec: JobSpec, settings: Settings) -> None:
    """Refuse resources above the platform's ceilings, saying what is allowed."""
    limits, res = settings.limits, spec.resources
    problems = []
    if res.workers > limits.max_workers:
        problems.append(
            f"resources.workers = {res.workers} exceeds the maximum of {limits.max_workers}"
        )
    if res.threads_per_worker > limits.max_threads_per_worker:
        problems.append(
            f"resources.threads_per_worker = {res.threads_per_worker} exceeds the maximum of "
            f"{limits.max_threads_per_worker}"
        )
    if res.memory_per_worker > limits.max_memory_per_worker:
        problems.append(
            f"resources.memory_per_worker = {format_size(res.memory_per_worker)} exceeds the "
            f"maximum of {format_size(limits.max_memory_per_worker)}"
        )
    if spec.limits.timeout > limits.max_timeout:
        problems.append(
            f"limits.timeout = {format_duration(spec.limits.timeout)} exceeds the maximum of "
            f"{format_duration(limits.max_timeout)}"
        )
    if res.gpu and settings.backend == "local":
        problems.append("resources.gpu: the local backend has no GPUs; remove it or use kubernetes")
    if problems:
        raise InvalidInput("the job asks for more than this server allows: " + "; ".join(problems))


def check_queue_room(session: Session, settings: Settings, owner: User) -> None:
    """Refuse a submit past the per-user queue limit, saying how many wait (429)."""
    limit = settings.limits.max_queued_jobs_per_user
    queued = queries.count_queued_of(session, owner.id)
    if queued >= limit:
        raise LimitReached(
            f"you have {queued} jobs waiting in the queue, the most one user may have "
            f"({limit}); wait for some to start, or cancel some ('insitu list --state queued')"
        )


def check_local_trust(spec: JobSpec, settings: Settings, owner: User, has_code: bool) -> None:
    """On the local backend, only admins run their own code; others, installed analyses.

    A local job runs as the server's own user, so its code could read the server's files.
    """
    if settings.backend != "local" or owner.role == Role.ADMIN.value:
        return
    if settings.local.allow_untrusted_code:
        return
    installed = settings.local.installed_analyses
    choices = ", ".join(installed) if installed else "none are installed"
    isolate = (
        "ask the operator to run insitu with the docker or kubernetes backend, which "
        "isolates each job"
    )
    if has_code:
        raise PermissionDenied(
            "this server runs jobs on the local backend, as the server's own user, so only its "
            f"admins may upload code. Use an installed analysis ({choices}), or {isolate}"
        )
    module = spec.analysis.entrypoint.split(":", 1)[0].split(".", 1)[0]
    if module not in installed:
        raise PermissionDenied(
            f"entrypoint {spec.analysis.entrypoint!r} is not an installed analysis of this "
            f"server (local backend: {choices}); name one of those, or {isolate}"
        )


def check_target(
    session: Session,
    settings: Settings,
    owner: User,
    spec: JobSpec,
    code_bundle: str | None = None,
    backend: Backend | None = None,
) -> tuple[Dataset | Waiting, ArrayInfo | None, list[tuple[int, int]]]:
    """What a spec reads, checked: its dataset (``owner`` may read it), array and selection,
    or the unfinished job whose output it waits for (array and selection are checked when
    that exists); its code, image and resources (this backend can run them)."""
    source = inputs.input_of(session, owner, spec.dataset)
    check_local_trust(spec, settings, owner, code_bundle is not None)
    array: ArrayInfo | None = None
    ranges: list[tuple[int, int]] = []
    if isinstance(source, Dataset):
        array = info_of(source).array(spec.array, dataset=f"dataset {source.name!r}")
        selected = resolve_selection(array, spec.select, dataset=f"dataset {source.name!r}")
        ranges = [(int(a), int(b)) for a, b in selected]
    if code_bundle is not None:
        BundleStore(settings).require(session, owner, code_bundle)
    if backend is not None:
        backend.check_image(spec.analysis.image)
        backend.check_resources(spec.resources)
    return source, array, ranges


def submit(
    session: Session,
    settings: Settings,
    owner: User,
    raw_spec: dict[str, Any] | str | JobSpec,
    code_bundle: str | None = None,
    backend: Backend | None = None,
    *,
    commit: bool = True,
) -> Job:
    """Validate a spec against the catalog (and its image against the backend); queue it.

    A job whose input is another job's output waits in ``queued`` until that job ends.
    """
    spec = raw_spec if isinstance(raw_spec, JobSpec) else load_spec(raw_spec)
    check_resources(spec, settings)
    check_queue_room(session, settings, owner)
    usage = quotas.Usage()
    if quotas.quota_of(owner).core_hours is not None:  # the one part of usage a submit checks
        usage.core_seconds = queries.core_seconds_of(session, owner.id)
    quotas.check_submit(owner, spec.resources.workers, usage)
    source, array, ranges = check_target(session, settings, owner, spec, code_bundle, backend)
    derived.check_names_free(session, owner, spec)
    derived.check_room(session, owner, spec)

    job_id = new_job_id()
    workspace_url = f"{settings.resolved_workspace_url}/{job_id}"
    cap = quotas.result_cap(
        owner, min(spec.limits.max_result_bytes, settings.limits.max_result_bytes)
    )
    if isinstance(source, Waiting):  # its input is known once its parent job has ended
        dataset = source.parent.dataset  # a stand-in the job never reads
        fields: dict[str, Any] = {"array_path": "", "ranges": [], "bytes_selected": 0}
        accounting: dict[str, Any] = {
            "input": {"job": source.parent.id, "output": source.key, "resolved": False}
        }
        reading = f"output {source.key!r} of job {source.parent.id}, once it exists"
    else:
        assert array is not None
        dataset = source
        fields = inputs.target_fields(array, ranges)
        accounting = inputs.target_accounting(array, ranges)
        reading = f"{dataset.name}[{array.path}]"
    job = Job(
        id=job_id,
        name=spec.display_name(),
        owner=owner,
        dataset=dataset,
        spec=spec.model_dump(mode="json", by_alias=True),
        spec_digest=spec.digest(),
        code_bundle_digest=code_bundle,
        state=JobState.QUEUED.value,
        backend=settings.backend,
        workspace=workspace_url,
        timeout_s=spec.limits.timeout,
        result_cap_bytes=cap,
        cores=spec.resources.cores,
        results=[],
        accounting=accounting,
        **fields,
    )
    session.add(job)
    session.flush()
    queries.add_event(session, job, None, JobState.QUEUED, f"submitted by {owner.name}")
    if isinstance(source, Waiting):
        job.reason = source.reason()
    queries.add_audit(
        session,
        owner,
        "job.submit",
        job_id,
        detail=f"{spec.analysis.entrypoint} on {reading}",
        nbytes=job.bytes_selected,
    )
    if commit:
        session.commit()
    return job


def job_input(job: Job, settings: Settings) -> JobInput:
    """Everything the runtime needs to run ``job``, from its record and its dataset's (which
    never change once registered)."""
    dataset = job.dataset
    array = info_of(dataset).array(job.array_path, dataset=f"dataset {dataset.name!r}")
    ranges = [(int(start), int(stop)) for start, stop in job.ranges]
    return JobInput(
        job_id=job.id,
        spec=job.spec,
        spec_digest=job.spec_digest,
        dataset=dataset.name,
        dataset_url=dataset.url,
        dataset_version=dataset.version,
        storage_options=objectstore.job_options(settings, dataset.url),
        array=array,
        ranges=ranges,
        result_cap_bytes=job.result_cap_bytes,
        result_fraction=settings.limits.result_fraction,
        code_bundle_digest=job.code_bundle_digest,
        backend=job.backend,
        image=job.spec.get("analysis", {}).get("image"),
        worker_processes=settings.local.worker_processes,
        insitu_version=__version__,
        read=plan_for_spec(array, ranges, job.spec, settings.reader),
    )


def write_inputs(job: Job, settings: Settings) -> None:
    """Write the job's ``job.json`` (and its code bundle) to its workspace, as the
    dispatcher does before it starts the job: a submit touches no object store."""
    workspace = objectstore.workspace(settings, job.workspace)
    if job.code_bundle_digest:
        workspace.write_bytes(CODE_FILE, BundleStore(settings).read(job.code_bundle_digest))
    workspace.write_model(JOB_FILE, job_input(job, settings))


def visible_job(session: Session, user: User, job_id: str, *, lock: bool = False) -> Job:
    """A job its caller may see: their own, or any for an admin."""
    job = queries.job_by_id(session, job_id, lock=lock)
    access.require_job_owner(user, job)
    return job


def cancel(session: Session, user: User, job_id: str) -> Job:
    """Cancel a job: at once if still queued, else ask its dispatcher to stop it (commits)."""
    job = visible_job(session, user, job_id, lock=True)
    state = JobState(job.state)
    if state.terminal:
        raise Conflict(f"job {job_id} already ended ({state.value}); there is nothing to cancel")
    _cancel(session, job, f"by {user.name}")
    queries.add_audit(session, user, "job.cancel", job_id, detail=f"was {state.value}")
    session.commit()
    return job


def cancel_all_of(session: Session, owner: User, why: str) -> int:
    """Cancel every unfinished job of ``owner`` (not committed); return how many.

    Queued jobs end at once; the dispatcher stops admitted and running ones.
    """
    unfinished = queries.unfinished_jobs_of(session, owner.id)
    for job in unfinished:
        _cancel(session, job, f"because {why}")
    return len(unfinished)


def _cancel(session: Session, job: Job, why: str) -> None:
    """End a queued job now; ask the dispatcher to stop any other (not committed)."""
    if job.state == JobState.QUEUED.value:
        queries.transition(session, job, JobState.CANCELLED, f"cancelled {why} while queued")
    else:
        job.target, job.reason = JobState.CANCELLED.value, f"cancel requested {why}"


def result_file(job: Job, filename: str) -> dict[str, Any]:
    """The record of one result file of a finished job."""
    if job.state != JobState.SUCCEEDED.value:
        raise Conflict(f"job {job.id} is {job.state}; results exist only once it has succeeded")
    names = [r["filename"] for r in job.results] + ["provenance.json"]
    if filename == "provenance.json" and job.provenance is None:
        raise NotFound(
            f"job {job.id} ended before this server kept provenance records; rerun it "
            f"('insitu rerun {job.id}') for one"
        )
    if filename not in names:
        raise NotFound(f"job {job.id} has no result {filename!r}; it has {', '.join(names)}")
    for record in job.results:
        if record["filename"] == filename:
            return dict(record)
    return {"filename": filename, "media_type": "application/json"}


def provenance_bytes(job: Job) -> bytes:
    """The provenance the server wrote for a succeeded job, as served."""
    return json.dumps(job.provenance or {}, indent=2).encode()


def record_download(
    session: Session, user: User, job: Job, record: dict[str, Any], *, presigned: bool
) -> None:
    """Audit one result leaving the platform (commits)."""
    queries.add_audit(
        session,
        user,
        "result.download",
        f"{job.id}/{record['filename']}",
        detail="presigned URL" if presigned else "streamed",
        nbytes=record.get("size"),
    )
    session.commit()
