"""Jobs: submit, list, inspect, cancel, follow logs, fetch results."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from insitu import objectstore
from insitu.api.deps import CallerDep, CurrentUser, SessionDep, SettingsDep, wake_dispatcher
from insitu.api.schemas import (
    JobCreate,
    JobEventPublic,
    JobEventsPublic,
    JobPublic,
    JobsPublic,
    LogChunk,
    ResultPublic,
    ResultsPublic,
)
from insitu.backends.base import JobHandle
from insitu.db import queries
from insitu.db.models import User
from insitu.runtime.workspace import PROVENANCE_FILE, RESULTS_DIR
from insitu.services import egress, jobs
from insitu.services.auth import Role
from insitu.states import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])
MAX_OFFSET = 2**53  # past any list or log; larger numbers overflow the database's integers
MAX_WAIT_S = 60.0  # longest long poll on a job
RECHECK_S = 2.0  # a waiting request looks again this often (changes made elsewhere)
REPLICA_RECHECK_S = 0.25  # ... and this often in an API replica, which no dispatcher wakes


# The JSON routes run their whole unit of work in one worker thread (CallerDep) and
# answer the schema they declare, encoded there (docs/profile-api.md).


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED)
async def submit_job(body: JobCreate, request: Request, caller: CallerDep) -> Response:
    """Validate a job spec against the catalog and queue it."""
    settings, backend = request.app.state.settings, request.app.state.backend

    def work(session: Session, user: User) -> JobPublic:
        job = jobs.submit(session, settings, user, body.spec, body.code_bundle, backend=backend)
        return JobPublic.of(job)

    answer = await caller.answer(work, status.HTTP_201_CREATED)
    wake_dispatcher(request)
    return answer


@router.get("", response_model=JobsPublic)
async def list_jobs(
    caller: CallerDep,
    state: Annotated[list[JobState] | None, Query(description="Only jobs in these states.")] = None,
    all_users: Annotated[bool, Query(description="Admins: every user's jobs.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    """Your jobs, newest first."""

    def work(session: Session, user: User) -> JobsPublic:
        owner = None if (all_users and user.role == Role.ADMIN.value) else user.id
        states = [s.value for s in state or []]
        rows, count = queries.list_jobs(
            session, owner_id=owner, states=states, limit=limit, offset=offset
        )
        return JobsPublic(data=[JobPublic.of(j) for j in rows], count=count)

    return await caller.answer(work)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={304: {"description": "The job is still as the ETag in If-None-Match says."}},
)
async def get_job(
    job_id: str,
    request: Request,
    caller: CallerDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="With If-None-Match: seconds to wait for the job to change before "
            "answering 304 (a long poll, instead of asking again and again).",
        ),
    ] = 0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A job's state, progress, and the bytes it scanned and returned.

    Its ``ETag`` names this version of the record: sent back in ``If-None-Match``, the
    answer is 304 while the job is unchanged, after up to ``wait`` seconds of waiting for
    it to change (its state, progress or figures)."""

    def encoded(session: Session, user: User) -> tuple[bytes, bool]:
        job = jobs.visible_job(session, user, job_id)
        body = JobPublic.of(job).model_dump_json(by_alias=True).encode()
        return body, JobState(job.state).terminal

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    # This process's dispatcher reports its changes at once; other changes are seen by
    # looking again (API replicas have no dispatcher of their own).
    recheck = RECHECK_S if request.app.state.dispatcher is not None else REPLICA_RECHECK_S
    while True:
        body, ended = await caller.run(encoded, read_only=True)
        etag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
        if if_none_match is None or (etag not in if_none_match and if_none_match.strip() != "*"):
            return Response(body, media_type="application/json", headers={"ETag": etag})
        remaining = deadline - loop.time()
        if remaining <= 0 or ended:  # an ended job will not change
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        await request.app.state.changes.wait(job_id, min(remaining, recheck))


@router.post("/{job_id}/cancel", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED)
async def cancel_job(job_id: str, request: Request, caller: CallerDep) -> Response:
    """Cancel a queued or running job."""
    answer = await caller.answer(
        lambda s, user: JobPublic.of(jobs.cancel(s, user, job_id)), status.HTTP_202_ACCEPTED
    )
    wake_dispatcher(request)
    return answer


@router.get("/{job_id}/events", response_model=JobEventsPublic)
async def job_events(job_id: str, caller: CallerDep) -> Response:
    """Every state transition of a job, with its time and reason."""

    def work(session: Session, user: User) -> JobEventsPublic:
        events = [JobEventPublic.of(e) for e in jobs.visible_job(session, user, job_id).events]
        return JobEventsPublic(data=events, count=len(events))

    return await caller.answer(work)


@router.get("/{job_id}/logs", response_model=LogChunk)
async def job_logs(
    job_id: str,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> LogChunk:
    """The job's log from a byte offset; poll with ``next_offset`` to follow it.

    The database work runs in worker threads; only the backend's read of the log awaits on
    the event loop.
    """
    job = await run_in_threadpool(jobs.visible_job, session, user, job_id)
    complete = JobState(job.state).terminal
    if not job.handle:
        return LogChunk(text="", offset=offset, next_offset=offset, complete=complete)
    data, next_offset = await request.app.state.backend.logs(
        JobHandle.from_json(job.handle), offset
    )
    cut = False
    notice = ""
    if user.role != Role.ADMIN.value:  # admins read the whole log; owners within the budget
        fraction = request.app.state.settings.limits.result_fraction

        def charge() -> egress.LogWindow:
            window = egress.owner_log(session, job, data, offset, fraction)
            session.commit()
            return window

        window = await run_in_threadpool(charge)
        data, next_offset, cut, notice = window.data, window.next_offset, window.cut, window.notice
    return LogChunk(
        text=data.decode("utf-8", errors="replace") + notice,
        offset=offset,
        next_offset=next_offset,
        complete=complete and next_offset == offset,
        cut=cut,
    )


@router.get("/{job_id}/results", response_model=ResultsPublic)
def list_results(job_id: str, session: SessionDep, user: CurrentUser) -> ResultsPublic:
    """The results of a finished job (empty until it has succeeded)."""
    job = jobs.visible_job(session, user, job_id)
    rows = [ResultPublic.model_validate(r) for r in job.results]
    return ResultsPublic(data=rows, count=len(rows))


_RESULT_FILE = {
    200: {
        "description": "The file's bytes: .npy, .parquet, .json or .png.",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("application/x-npy", "application/vnd.apache.parquet", "image/png")
        }
        | {"application/json": {}},
    },
    307: {"description": "With redirect=true: a short-lived presigned URL in Location."},
}


@router.get(
    "/{job_id}/results/{filename}",
    response_class=StreamingResponse,
    response_model=None,
    responses=_RESULT_FILE,  # type: ignore[arg-type]
)
def download_result(
    job_id: str,
    filename: str,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    redirect: Annotated[
        bool, Query(description="Answer with a short-lived presigned URL (S3 workspaces).")
    ] = False,
) -> Response:
    """Download one result file (or provenance.json), streamed or by a presigned URL."""
    job = jobs.visible_job(session, user, job_id)
    record = jobs.result_file(job, filename)
    if filename == PROVENANCE_FILE:  # written by the server, kept in its database
        body = jobs.provenance_bytes(job)
        jobs.record_download(session, user, job, {**record, "size": len(body)}, presigned=False)
        return Response(body, media_type="application/json", headers=_attachment(filename))
    location = f"{job.workspace}/{RESULTS_DIR}/{filename}"
    workspace = objectstore.workspace(settings, job.workspace)
    presigned = (
        redirect
        and objectstore.is_s3(location)
        and workspace.size(f"{RESULTS_DIR}/{filename}") == record["size"]
    )
    jobs.record_download(session, user, job, record, presigned=presigned)
    if presigned:
        url = objectstore.presign(settings, location, filename)
        return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    handle = workspace.open(f"{RESULTS_DIR}/{filename}")
    size = int(record["size"])

    def chunks() -> Iterator[bytes]:
        # Never more than the server counted when the job ended, whatever the file is now.
        left = size
        with handle:
            while left > 0 and (block := handle.read(min(1 << 20, left))):
                left -= len(block)
                yield block

    headers = {**_attachment(filename), "Content-Length": str(size)}
    return StreamingResponse(chunks(), media_type=record["media_type"], headers=headers)


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}
