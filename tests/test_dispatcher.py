"""The dispatcher's state machine, driven pass by pass with a fake backend, on both databases."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeBackend, World, make_world, ok_outcome
from insitu.backends.base import BackendPhase
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database
from insitu.db.models import Job
from insitu.dispatcher import Dispatcher
from insitu.runtime.workspace import RESULTS_DIR, Outcome, Workspace
from insitu.services import jobs
from insitu.states import JobState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def world(db: Database, settings: Settings, movie: tuple[Path, np.ndarray]) -> World:
    return make_world(db, settings, movie[0])


def run_pass(dispatcher: Dispatcher, times: int = 1) -> None:
    for _ in range(times):
        asyncio.run(dispatcher.reconcile_once())


def load(world: World, job_id: str) -> Job:
    with world.db.session() as session:
        job = queries.job_by_id(session, job_id)
        _ = job.events  # load them before the session closes
        return job


def states(job: Job) -> list[str]:
    return [e.to_state for e in job.events]


def test_a_job_runs_to_success_with_every_transition_recorded(world: World) -> None:
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    run_pass(dispatcher)
    assert load(world, job.id).state == "provisioning" and backend.started == [job.id]
    FakeBackend.report_running(job)
    run_pass(dispatcher)
    running = load(world, job.id)
    # The total is the server's own count of the selection's blocks, not the job's word.
    assert running.state == "running" and (running.chunks_done, running.chunks_total) == (1, 18)
    backend.finish(job, ok_outcome(10), {"mean.npy": b"x" * 10})
    run_pass(dispatcher)
    done = load(world, job.id)
    assert done.state == "succeeded" and done.finished_at is not None
    assert states(done) == ["queued", "admitted", "provisioning", "running", "succeeded"]
    assert all(e.reason for e in done.events)
    # Bytes returned count the provenance too; core-seconds are the backend's, not the job's 2.0.
    provenance = done.accounting["egress"]["provenance"]
    assert provenance > 0 and done.provenance["job_id"] == job.id
    assert (done.bytes_scanned, done.bytes_returned) == (1000, 10 + provenance)
    assert done.core_seconds == FakeBackend.METERED
    assert done.accounting["core_seconds_source"] == "the fake backend's meter"
    assert done.results[0]["filename"] == "mean.npy"
    assert backend.cleaned == [job.id]


def test_why_a_cluster_is_not_up_yet_is_the_job_s_reason(world: World) -> None:
    """A job waiting for nodes (or for its tenant's quota) says so while it provisions."""
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    run_pass(dispatcher)
    backend.phases[job.id] = BackendPhase.PENDING
    backend.details[job.id] = "waiting for a node: 0/3 nodes are available: 3 Insufficient cpu."
    run_pass(dispatcher)
    waiting = load(world, job.id)
    assert waiting.state == "provisioning" and waiting.reason == backend.details[job.id]
    backend.phases[job.id] = BackendPhase.RUNNING
    del backend.details[job.id]
    FakeBackend.report_running(job)
    run_pass(dispatcher)
    running = load(world, job.id)
    assert running.state == "running" and "analysis is running" in (running.reason or "")


def test_start_failure_fails_the_job_naming_the_backend(world: World) -> None:
    dispatcher = Dispatcher(world.settings, world.db, FakeBackend(fail_start=True))
    job = world.submit()
    run_pass(dispatcher)
    failed = load(world, job.id)
    assert failed.state == "failed" and failed.error_kind == "backend_error"
    assert "fake backend could not start the job: no capacity left" in (failed.reason or "")


def test_a_runner_that_vanishes_is_failed_not_lost(world: World) -> None:
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    run_pass(dispatcher)
    backend.vanish(job)
    run_pass(dispatcher)
    failed = load(world, job.id)
    assert failed.state == "failed" and failed.error_kind == "lost"
    assert f"insitu logs {job.id}" in (failed.reason or "")


def test_a_failed_outcome_carries_the_analysis_error(world: World) -> None:
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    run_pass(dispatcher)
    backend.finish(
        job,
        Outcome(ok=False, error="the analysis raised KeyError: 'x'", error_kind="analysis_failed"),
    )
    run_pass(dispatcher)
    failed = load(world, job.id)
    assert failed.state == "failed" and failed.error == "the analysis raised KeyError: 'x'"


def test_cancel_while_queued_is_immediate(world: World) -> None:
    job = world.submit()
    with world.db.session() as session:
        jobs.cancel(session, world.user, job.id)
    cancelled = load(world, job.id)
    assert states(cancelled) == ["queued", "cancelled"] and "while queued" in (
        cancelled.reason or ""
    )
    backend = FakeBackend()
    run_pass(Dispatcher(world.settings, world.db, backend))
    assert backend.started == []


def test_cancel_while_running_stops_the_backend(world: World) -> None:
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    run_pass(dispatcher)
    with world.db.session() as session:
        assert jobs.cancel(session, world.user, job.id).target == "cancelled"
    assert load(world, job.id).state == "provisioning"  # the API only records the wish
    run_pass(dispatcher)
    cancelled = load(world, job.id)
    assert cancelled.state == "cancelled" and backend.cancelled == [job.id]
    assert "cancel requested by ada" in (cancelled.reason or "")


def test_timeout_stops_the_job_and_names_the_limit(world: World) -> None:
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit(limits={"timeout": "2m"})
    run_pass(dispatcher)
    with world.db.session() as session:
        row = queries.job_by_id(session, job.id)
        assert row.started_at is not None
        row.started_at = row.started_at - timedelta(minutes=3)
        session.commit()
    run_pass(dispatcher)
    timed_out = load(world, job.id)
    assert timed_out.state == "timed_out" and backend.cancelled == [job.id]
    assert "limit of 2 min 0 s (limits.timeout)" in (timed_out.reason or "")


def test_results_over_the_cap_on_disk_are_refused_and_removed(world: World) -> None:
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit(limits={"max_result_bytes": 100})
    run_pass(dispatcher)
    # The outcome claims 10 bytes, but the analysis wrote 20,000 behind the runtime's back.
    backend.finish(job, ok_outcome(10), {"mean.npy": b"x" * 10, "sneaky.npy": b"y" * 20_000})
    run_pass(dispatcher)
    failed = load(world, job.id)
    assert failed.state == "failed" and failed.error_kind == "result_too_large"
    assert "20.0 kB" in (failed.error or "") and "100 B" in (failed.error or "")
    assert Workspace(job.workspace).listdir(RESULTS_DIR) == []


def test_running_limit_keeps_extra_jobs_queued(world: World) -> None:
    world.settings.dispatcher.max_running_jobs = 2
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    submitted = [world.submit() for _ in range(3)]
    run_pass(dispatcher, 2)
    assert [load(world, j.id).state for j in submitted] == [
        "provisioning",
        "provisioning",
        "queued",
    ]
    backend.finish(submitted[0], ok_outcome())
    run_pass(dispatcher, 2)
    assert [load(world, j.id).state for j in submitted] == [
        "succeeded",
        "provisioning",
        "provisioning",
    ]


def test_restart_with_the_same_id_readopts_running_jobs(world: World) -> None:
    backend = FakeBackend()
    job = world.submit()
    run_pass(Dispatcher(world.settings, world.db, backend))
    FakeBackend.report_running(job)
    # The server restarts: a new dispatcher with the same id, the job still running.
    restarted = Dispatcher(world.settings, world.db, backend)
    run_pass(restarted)
    assert load(world, job.id).state == "running"
    backend.finish(job, ok_outcome(), {"mean.npy": b"x" * 10})
    run_pass(restarted)
    assert load(world, job.id).state == "succeeded"
    assert backend.started == [job.id]  # never started twice


def test_another_dispatcher_adopts_only_after_the_lease_expires(world: World) -> None:
    backend = FakeBackend()
    job = world.submit()
    run_pass(Dispatcher(world.settings, world.db, backend))
    other = Dispatcher(
        world.settings.model_copy(
            update={"dispatcher": world.settings.dispatcher.model_copy(update={"id": "other"})}
        ),
        world.db,
        backend,
    )
    backend.vanish(job)
    run_pass(other)
    assert load(world, job.id).state == "provisioning"  # the first dispatcher's lease holds
    with world.db.session() as session:
        row = queries.job_by_id(session, job.id)
        assert row.lease_expires_at is not None
        row.lease_expires_at = row.lease_expires_at - timedelta(minutes=5)
        session.commit()
    run_pass(other)
    adopted = load(world, job.id)
    assert adopted.state == "failed" and "before reporting an outcome" in (adopted.reason or "")


def test_a_job_admitted_but_never_started_is_started_after_restart(world: World) -> None:
    job = world.submit()
    with world.db.session() as session:  # a dispatcher admitted it, then died before starting it
        queries.claim_queued(
            session, world.settings.dispatcher.id, 1, queries.utcnow() + timedelta(seconds=30)
        )
        queries.transition(
            session, queries.job_by_id(session, job.id), queries.JobState.ADMITTED, "admitted"
        )
        session.commit()
    backend = FakeBackend()
    run_pass(Dispatcher(world.settings, world.db, backend))
    assert backend.started == [job.id] and load(world, job.id).state == "provisioning"


def test_one_job_whose_results_cannot_be_read_never_holds_up_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from insitu.trusted import results

    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    stuck, fine = world.submit(), world.submit()
    run_pass(dispatcher)
    backend.finish(stuck, ok_outcome(10), {"mean.npy": b"x" * 10})
    backend.finish(fine, ok_outcome(10), {"mean.npy": b"x" * 10})
    original = results.list_results

    def flaky(workspace: Workspace) -> list[results.Listed]:
        if stuck.id in workspace.url:
            raise OSError("the store timed out")
        return original(workspace)

    monkeypatch.setattr(results, "list_results", flaky)
    run_pass(dispatcher)
    assert load(world, fine.id).state == "succeeded"
    assert not JobState(load(world, stuck.id).state).terminal  # tried again next pass
    monkeypatch.setattr(results, "list_results", original)
    run_pass(dispatcher)
    assert load(world, stuck.id).state == "succeeded"


def test_a_job_the_backend_will_start_shortly_stays_admitted_with_its_request(
    world: World,
) -> None:
    """A warm sandbox on its way: the job waits, admitted, and is asked for again as it was
    (the same launch request: no new credentials each pass), then runs."""
    backend = FakeBackend(busy=2)
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    run_pass(dispatcher, times=2)
    waiting = load(world, job.id)
    assert waiting.state == "admitted" and waiting.handle is None and backend.started == []
    run_pass(dispatcher)
    started = load(world, job.id)
    assert started.state == "provisioning" and backend.started == [job.id]
    assert len(backend.requests) == 3 and all(r is backend.requests[0] for r in backend.requests)
    assert states(started) == ["queued", "admitted", "provisioning"]
