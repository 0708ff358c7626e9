"""The dispatcher: claims queued jobs, runs them on a backend, and drives each to its end.

One reconciliation pass at a time, every ``poll_interval``. Job state lives only in
the database, so a restarted dispatcher picks up where it left off: it re-adopts
the jobs it held (or any whose lease ran out), and a job whose process vanished
meanwhile is failed with a reason instead of being left running forever. Several
dispatchers can share one PostgreSQL database: rows are claimed with
``FOR UPDATE SKIP LOCKED`` and held by renewable leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from insitu import objectstore
from insitu.backends.base import (
    Backend,
    BackendPhase,
    BackendStatus,
    JobHandle,
    LaunchRequest,
    Metered,
)
from insitu.backends.store_gateway import write_limit
from insitu.config import Settings
from insitu.credentials import make_issuer
from insitu.db import queries
from insitu.db.engine import Database, unavailable
from insitu.db.models import Course, Job, User, utcnow
from insitu.errors import BackendBusy
from insitu.runtime.workspace import Progress, Workspace, WorkspaceFull
from insitu.services import derived, fairshare, inputs, quotas
from insitu.services.jobs import write_inputs
from insitu.spec import Resources
from insitu.states import JobState
from insitu.threadsafe import call_in_loop
from insitu.trusted import outputs as trusted_outputs
from insitu.trusted import report, settle
from insitu.trusted.texts import REASON_LIMIT, bounded
from insitu.units import format_duration, format_size

log = logging.getLogger("insitu.dispatcher")
FAIR_SHARE_WINDOW = timedelta(hours=1)  # how far back fair share remembers who was served


@dataclass
class _Observation:
    """What one pass learned about an active job outside the database."""

    status: BackendStatus | None
    progress: Progress | None
    outcome: report.JobReport | report.RefusedReport | None


def tenant_of(session: Session, owner: User) -> str:
    """Whose namespace and quota a job runs under: its owner's course, else its owner."""
    if owner.course_id is not None:
        course = session.get(Course, owner.course_id)
        if course is not None:
            return f"course-{course.name}"
    return owner.name


def store_access(request: LaunchRequest) -> str:
    """How the job's reach into the object store was limited, for its provenance."""
    if request.env.get("INSITU_CREDENTIALS_SCOPED") == "1":
        return "enforced by the store: the job's credentials allow only its dataset and workspace"
    return "not enforced by the store; the runtime opened only this dataset"


EXPIRY_INTERVAL = 300.0  # seconds between sweeps of derived data past its retention


class Dispatcher:
    """Moves jobs from queued to a final state on one backend."""

    def __init__(self, settings: Settings, db: Database, backend: Backend) -> None:
        self.settings, self.db, self.backend = settings, db, backend
        self.owner = settings.dispatcher.id
        self.issuer = make_issuer(settings)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() runs on
        self._stopping = False
        # Launch requests of admitted jobs the backend will start shortly (no new credentials).
        self._waiting: dict[str, LaunchRequest] = {}
        # Jobs the backend started whose handle is not in the database yet (it failed to
        # record it): the next pass records this handle instead of starting them again.
        self._launched: dict[str, tuple[JobHandle, LaunchRequest]] = {}
        self._cleaned_up = False  # leftovers of an earlier run removed (once per start)
        self._database_down = False
        self._expired_at = 0.0  # monotonic time of the last sweep of expired derived data
        #: Called with a job's id after each change of it is committed (from any thread):
        #: the API wakes the requests that wait on it (insitu.api.changes).
        self.on_change: Callable[[str], None] = lambda job_id: None

    def wake(self) -> None:
        """Run the next pass now (a job was submitted or cancelled); from any thread."""
        self._set_soon(self._wake.set)

    def _set_soon(self, call: Callable[[], None]) -> None:
        """``call`` on the dispatcher's loop: an asyncio event is not thread-safe."""
        call_in_loop(self._loop, call)

    async def run(self) -> None:
        """Reconcile until :meth:`stop`; survives errors in a pass (a database that is down
        or restarting included: jobs wait, as they are, until it is back)."""
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if not self._cleaned_up:
                    await self._startup()
                    self._cleaned_up = True
                await self.reconcile_once()
            except Exception as exc:
                if not unavailable(exc):
                    log.exception("reconciliation pass failed; retrying")
                elif not self._database_down:
                    log.warning("the database is unavailable (%s); retrying every pass", exc)
                self._database_down = unavailable(exc)
            else:
                if self._database_down:
                    log.warning("the database is back; dispatching again")
                self._database_down = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.dispatcher.poll_interval)
            self._wake.clear()

    def stop(self) -> None:
        self._stopping = True
        self._set_soon(self._wake.set)

    async def _startup(self) -> None:
        live = await asyncio.to_thread(self._live_ids)
        removed = await self.backend.cleanup_orphans(live)
        if removed:
            log.warning("removed leftovers of finished jobs: %s", ", ".join(removed))

    def _live_ids(self) -> set[str]:
        with self.db.session() as session:
            return queries.live_job_ids(session)

    async def reconcile_once(self) -> None:
        """One pass: watch active jobs, then start queued ones if there is room."""
        active = await asyncio.to_thread(self._claim_active)
        await self._watch(active)
        room = self.settings.dispatcher.max_running_jobs - sum(
            1 for job in active if not JobState(job.state).terminal
        )
        if room > 0 and not self._stopping:  # a stopping dispatcher takes no new work
            admitted = await asyncio.to_thread(self._admit, room)
            for job in admitted:
                await self._start(job)
        if time.monotonic() - self._expired_at > EXPIRY_INTERVAL and not self._stopping:
            self._expired_at = time.monotonic()
            await asyncio.to_thread(self._expire)

    def _expire(self) -> None:
        """Delete derived datasets past their course's retention period."""
        try:
            with self.db.session() as session:
                gone = derived.expire(session, self.settings, utcnow())
        except Exception:
            log.exception("could not delete expired derived datasets; trying again later")
            return
        if gone:
            log.info("deleted %d expired derived dataset(s): %s", len(gone), ", ".join(gone))

    # -- database steps (run in a thread) -------------------------------------------------

    def _lease_until(self) -> tuple[datetime, datetime]:
        now = utcnow()
        return now, now + timedelta(seconds=self.settings.dispatcher.lease)

    def _claim_active(self) -> list[Job]:
        now, until = self._lease_until()
        with self.db.session() as session:
            jobs = queries.claim_active(session, self.owner, now, until)  # type: ignore[arg-type]
            session.commit()
            return jobs

    def _admit(self, room: int) -> list[Job]:
        """Claim up to ``room`` queued jobs, fairly across users and within their quotas."""
        now, until = self._lease_until()
        with self.db.session() as session:
            candidates = queries.queued_candidates(session, max(room * 25, 200), per_owner=room)
            candidates, resolved = self._inputs_ready(session, candidates)
            if not candidates:
                session.commit()
                for job_id in resolved:
                    self.on_change(job_id)
                return []
            owners = sorted({job.owner_id for job in candidates})
            usage = {
                owner: quotas.Usage(*counts)
                for owner, counts in queries.usage_by_owner(
                    session,
                    owners,
                    since=now - FAIR_SHARE_WINDOW,
                ).items()
            }
            decision = fairshare.pick(candidates, room, usage, now)
            by_id = {job.id: job for job in candidates}
            changed = [job.id for job in decision.admit] + list(decision.expired) + resolved
            for job_id, reason in decision.waiting.items():
                if by_id[job_id].reason != reason:
                    by_id[job_id].reason = reason
                    changed.append(job_id)
            for job_id, reason in decision.expired.items():
                job = by_id[job_id]
                job.error, job.error_kind = reason, "expired"
                queries.transition(session, job, JobState.FAILED, reason)
            for job in decision.admit:
                job.lease_owner, job.lease_expires_at = self.owner, until
                queries.transition(
                    session, job, JobState.ADMITTED, f"admitted by dispatcher {self.owner}"
                )
            session.commit()
            for job_id in changed:
                self.on_change(job_id)
            return decision.admit

    @staticmethod
    def _inputs_ready(session: Session, candidates: list[Job]) -> tuple[list[Job], list[str]]:
        """The candidates whose input exists; the others wait (saying for which job) or,
        when their parent job ended without the output, fail naming its failure."""
        ready: list[Job] = []
        changed: list[str] = []
        for job in candidates:
            resolution = inputs.resolve_waiting(session, job)
            if resolution.state == "ready":
                ready.append(job)
            elif resolution.state == "failed":
                job.error, job.error_kind = resolution.reason, "input_failed"
                queries.transition(session, job, JobState.FAILED, resolution.reason)
                changed.append(job.id)
            elif job.reason != resolution.reason:
                job.reason = resolution.reason
                changed.append(job.id)
        return ready, changed

    def _apply(self, job_id: str, to: JobState | None, reason: str = "", **fields: object) -> None:
        """Update fields of a job and move it to ``to``, in one transaction. With no move
        (``to`` None), a ``reason`` says why the job has not moved yet."""
        with self.db.session() as session:
            job = queries.job_by_id(session, job_id, lock=True)
            if JobState(job.state).terminal:
                return
            if to is None and reason:
                job.reason = reason
            for name, value in fields.items():
                if name == "accounting" and isinstance(value, dict):
                    value = {**(job.accounting or {}), **value}
                setattr(job, name, value)
            if to is not None and JobState(job.state) != to:
                queries.transition(session, job, to, reason)
            if not session.new and not session.is_modified(job):
                return  # nothing changed (a pass with no news): no write, nobody to wake
            ended = JobState(job.state).terminal
            workspace_url = job.workspace
            session.commit()
        if ended:  # it ended without succeeding (that is _settle's): nothing it wrote stays
            self._drop_outputs(job_id, workspace_url)
        self.on_change(job_id)

    def _drop_outputs(self, job_id: str, workspace_url: str) -> None:
        """Delete the outputs of a job that will not become datasets (best effort)."""
        try:
            objectstore.workspace(self.settings, workspace_url).remove_outputs()
        except Exception:
            log.exception("could not delete the outputs of job %s", job_id)

    # -- backend steps ----------------------------------------------------------------------

    def _launch_request(self, job: Job) -> LaunchRequest:
        """What the backend needs to start ``job``, read in one session; its inputs written
        to its workspace (here, not at submit: a submit touches no object store)."""
        with self.db.session() as session:
            stored = queries.job_by_id(session, job.id)
            dataset_url, tenant = stored.dataset.url, tenant_of(session, stored.owner)
            room = derived.output_room(session, stored.owner, self.settings.limits.max_output_bytes)
        write_inputs(stored, self.settings)  # its record and its dataset's, loaded above
        # The runner's store access: scoped keys, the endpoint, no more.
        credentials = self.issuer.issue(job.id, dataset_url, job.workspace)
        env = credentials.env() if credentials else {}
        options = objectstore.job_options(self.settings, job.workspace)
        if options:
            env["INSITU_WORKSPACE_OPTIONS"] = json.dumps(options)
        return LaunchRequest(
            job_id=job.id,
            workspace_url=job.workspace,
            resources=Resources.model_validate(job.spec.get("resources", {})),
            timeout_s=job.timeout_s,
            image=job.spec.get("analysis", {}).get("image"),
            env=env,
            dataset_url=dataset_url,
            tenant=tenant,
            has_code=bool(job.code_bundle_digest),
            max_write_bytes=write_limit(self.settings) + room,
            max_output_objects=self.settings.limits.max_output_objects,
        )

    async def _start(self, job: Job) -> None:
        if job.id in self._launched:  # started already; only its record is missing
            await asyncio.to_thread(self._record_start, job.id, *self._launched[job.id])
            return
        request = self._waiting.pop(job.id, None)
        try:
            if request is None:
                request = await asyncio.to_thread(self._launch_request, job)
            handle = await self.backend.start(request)
        except BackendBusy:  # stays admitted; the next pass asks again with the same request
            assert request is not None
            self._waiting[job.id] = request
            return
        except WorkspaceFull as exc:  # its inputs did not fit in its workspace
            await asyncio.to_thread(
                self._apply,
                job.id,
                JobState.FAILED,
                exc.message,
                error=exc.message,
                error_kind=exc.code,
            )
            return
        except Exception as exc:
            log.exception("could not start job %s", job.id)
            await asyncio.to_thread(
                self._apply,
                job.id,
                JobState.FAILED,
                f"the {self.backend.name} backend could not start the job: {exc}",
                error=f"could not start the job: {exc}",
                error_kind="backend_error",
            )
            return
        self._launched[job.id] = (handle, request)
        await asyncio.to_thread(self._record_start, job.id, handle, request)

    def _record_start(self, job_id: str, handle: JobHandle, request: LaunchRequest) -> None:
        """Persist that the job started, with its handle (then forget it here)."""
        self._apply(
            job_id,
            JobState.PROVISIONING,
            f"starting a Dask cluster with {request.resources.workers} worker(s) x "
            f"{request.resources.threads_per_worker} thread(s) on the {self.backend.name} backend"
            + (" (warm pool)" if handle.data.get("warm") else ""),
            handle=handle.to_json(),
            accounting={"store_access": handle.data.get("store_access") or store_access(request)},
        )
        self._launched.pop(job_id, None)

    async def _observe(self, jobs: list[Job]) -> dict[str, _Observation]:
        handles = [JobHandle.from_json(j.handle) for j in jobs if j.handle]
        statuses = await self.backend.status(handles) if handles else {}

        def read(job: Job) -> _Observation:
            workspace = objectstore.workspace(self.settings, job.workspace)
            status = statuses.get(job.id)
            progress = report.read_progress(workspace)
            outcome = None
            ended = status is not None and status.phase in (
                BackendPhase.EXITED,
                BackendPhase.MISSING,
            )
            # The runner reports "finished" once its outcome is written, before its Dask
            # cluster and interpreter wind down: the job is done from then on.
            if ended or (progress is not None and progress.phase == "finished"):
                outcome = report.read_outcome(workspace)
            return _Observation(status, progress, outcome)

        observed = await asyncio.gather(*(asyncio.to_thread(read, job) for job in jobs))
        return {job.id: obs for job, obs in zip(jobs, observed, strict=True)}

    async def _watch(self, jobs: list[Job]) -> None:
        jobs = [
            j
            for j in jobs
            if j.state
            in (JobState.PROVISIONING.value, JobState.RUNNING.value, JobState.ADMITTED.value)
        ]
        if not jobs:
            return
        started = [j for j in jobs if j.handle]
        # A job admitted but never started (the dispatcher stopped in between) starts now.
        for job in jobs:
            if job.handle or job.state != JobState.ADMITTED.value:
                continue
            if job.target == JobState.CANCELLED.value:
                self._waiting.pop(job.id, None)
                launched = self._launched.pop(job.id, None)
                if launched is not None:  # its process runs, unrecorded: stop it
                    await self.backend.cancel(launched[0], self.settings.dispatcher.cancel_grace)
                await asyncio.to_thread(
                    self._apply, job.id, JobState.CANCELLED, job.reason or "cancelled"
                )
            else:
                await self._start(job)
        observations = await self._observe(started)
        now = utcnow()
        for job in started:
            try:  # one job's trouble must never hold up the others
                await self._watch_one(job, observations[job.id], now)
            except Exception as exc:
                if unavailable(exc):  # not this job's trouble: end the pass, retry it whole
                    raise
                log.exception("watching job %s failed; retrying next pass", job.id)

    async def _watch_one(self, job: Job, obs: _Observation, now: datetime) -> None:
        """Move one started job on: cancel, finish, time out, or record its progress."""
        handle = JobHandle.from_json(job.handle)  # type: ignore[arg-type]
        if job.target == JobState.CANCELLED.value:
            metered = await self._meter(job, handle)
            await self.backend.cancel(handle, self.settings.dispatcher.cancel_grace)
            await asyncio.to_thread(
                self._apply,
                job.id,
                JobState.CANCELLED,
                job.reason or "cancelled",
                **{**self._progress_fields(job, obs), **self._metered_fields(metered)},
            )
            return
        if obs.outcome is not None or (
            obs.status is not None
            and obs.status.phase in (BackendPhase.EXITED, BackendPhase.MISSING)
        ):
            await self._finish(job, handle, obs)
            return
        elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
        if elapsed > job.timeout_s:
            metered = await self._meter(job, handle)
            await self.backend.cancel(handle, self.settings.dispatcher.cancel_grace)
            limit = format_duration(job.timeout_s)
            await asyncio.to_thread(
                self._apply,
                job.id,
                JobState.TIMED_OUT,
                f"ran longer than its limit of {limit} (limits.timeout) and was stopped",
                error=f"the job did not finish within its time limit of {limit}; select less, "
                "ask for more workers, or raise limits.timeout",
                error_kind="timed_out",
                **{**self._progress_fields(job, obs), **self._metered_fields(metered)},
            )
            return
        running = obs.progress is not None and obs.progress.phase in ("running", "writing")
        to = JobState.RUNNING if running else None
        if running:
            reason = "the Dask cluster is up and the analysis is running"
        else:  # why its cluster is not up yet, as the backend sees it (no node fits, quota)
            detail = obs.status.detail if obs.status is not None else None
            reason = (detail if job.state == JobState.PROVISIONING.value else None) or ""
        await asyncio.to_thread(self._apply, job.id, to, reason, **self._progress_fields(job, obs))

    @staticmethod
    def _progress_fields(job: Job, obs: _Observation) -> dict[str, object]:
        """Progress as the job reports it, bounded by the server's own figures and coarse
        (three significant digits): the owner sees it, so it must carry no data."""
        if obs.progress is None:
            return {}
        total = int((job.accounting or {}).get("blocks") or obs.progress.chunks_total)
        scanned = settle.count_scan(job, obs.progress.bytes_scanned)[0]
        return {
            "chunks_done": min(obs.progress.chunks_done, total),
            "chunks_total": total,
            "bytes_scanned": int(float(f"{scanned:.3g}")),
        }

    async def _meter(self, job: Job, handle: JobHandle) -> Metered:
        """Core-seconds of the job as its backend measured them (never the job's own figure)."""
        wall = (utcnow() - job.started_at).total_seconds() if job.started_at else 0.0
        try:
            metered = await self.backend.core_seconds(handle, job.cores, wall)
        except Exception:
            log.exception("could not meter job %s; charging its reserved cores", job.id)
            metered = Metered(max(job.cores, 1) * wall, "reserved cores x wall time")
        return metered

    @staticmethod
    def _metered_fields(metered: Metered) -> dict[str, object]:
        """The job record's fields for what the backend measured."""
        return {
            "core_seconds": metered.value,
            "accounting": {
                "core_seconds": round(metered.value, 3),
                "core_seconds_source": metered.source,
            },
        }

    async def _finish(self, job: Job, handle: JobHandle, obs: _Observation) -> None:
        try:  # before reading what the job left: it can change nothing from here on
            await self.backend.seal(handle)
        except Exception:
            log.exception("could not seal job %s's store access", job.id)
        metered = await self._meter(job, handle)
        try:
            scanned = await self.backend.bytes_scanned(handle)
        except Exception:
            log.exception("could not read job %s's scan count; using its own", job.id)
            scanned = None
        await self.backend.cleanup(handle)
        outcome = obs.outcome
        if outcome is None:
            code = obs.status.exit_code if obs.status else None
            detail = f" with exit code {code}" if code is not None else ""
            if obs.status and obs.status.detail:
                detail += f" ({obs.status.detail})"
            reason = (
                f"the job's runner stopped{detail} before reporting an outcome; "
                f"see 'insitu logs {job.id}'"
            )
            await asyncio.to_thread(
                self._apply,
                job.id,
                JobState.FAILED,
                reason,
                error=reason,
                error_kind="lost",
                **{**self._progress_fields(job, obs), **self._metered_fields(metered)},
            )
            return
        await asyncio.to_thread(self._settle, job.id, outcome, metered, scanned)

    def _keep_outputs(
        self, session: Session, job: Job, workspace: Workspace, decided: settle.Settlement
    ) -> settle.Settlement:
        """Register a succeeded job's outputs as derived datasets; fail it if they cannot
        be kept. Outputs of a job that did not succeed are deleted."""
        if decided.state is JobState.SUCCEEDED:
            try:
                checked = trusted_outputs.check_outputs(
                    workspace,
                    objectstore.platform_options(self.settings, job.workspace),
                    self.settings.limits.max_output_objects,
                )
                kept = derived.register_outputs(session, job, checked, utcnow())
            except Exception as exc:  # a job's files can break any reader: refuse them
                if not isinstance(exc, trusted_outputs.RejectedOutputs | derived.OutputsRefused):
                    log.warning("job %s's outputs broke their check: %r", job.id, exc)
                    exc = trusted_outputs.RejectedOutputs(
                        f"the job's outputs cannot be read back ({type(exc).__name__}); "
                        "return them as insitu.Output and let the runtime write them"
                    )
                decided = settle.Settlement(
                    JobState.FAILED,
                    bounded(str(exc), REASON_LIMIT) or "",
                    {
                        **{k: v for k, v in decided.fields.items() if k != "provenance"},
                        "error": str(exc)[:4096],
                        "error_kind": "invalid_outputs",
                        "results": [],
                        "bytes_returned": 0,
                    },
                    discard_results=True,
                )
            else:
                if kept:
                    decided.fields.setdefault("accounting", {})["outputs"] = [
                        {
                            "key": (d.lineage or {}).get("output"),
                            "dataset": d.name,
                            "bytes": d.stored_bytes,
                        }
                        for d in kept
                    ]
                    names = ", ".join(d.name for d in kept)
                    size = format_size(sum(d.stored_bytes or 0 for d in kept))
                    decided.reason += (
                        f"; kept {len(kept)} output(s) next to the data: {names} ({size})"
                    )
                return decided
        with contextlib.suppress(Exception):
            workspace.remove_outputs()
        return decided

    def _settle(
        self,
        job_id: str,
        outcome: report.JobReport | report.RefusedReport,
        metered: Metered,
        scanned: Metered | None,
    ) -> None:
        """Decide how the job ended from the server's own checks, in one transaction."""
        with self.db.session() as session:
            job = queries.job_by_id(session, job_id, lock=True)
            if JobState(job.state).terminal:
                return
            workspace = objectstore.workspace(self.settings, job.workspace)
            decided = settle.settle(
                job,
                workspace,
                outcome,
                metered,
                scanned=scanned,
                fraction=self.settings.limits.result_fraction,
                now=utcnow(),
            )
            decided = self._keep_outputs(session, job, workspace, decided)
            if decided.discard_results:
                settle.discard(workspace)
            for name, value in decided.fields.items():
                setattr(job, name, value)
            queries.transition(session, job, decided.state, decided.reason)
            session.commit()
        self.on_change(job_id)
