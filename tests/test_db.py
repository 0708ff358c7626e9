"""The data layer on SQLite and PostgreSQL: schema, transitions, claiming, tokens."""

from __future__ import annotations

import os
import stat
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from fakes import World, make_world
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database
from insitu.db.models import ApiToken, Base, Job, JobEvent, utcnow
from insitu.errors import Conflict
from insitu.services import auth, datasets, url_roots, users
from insitu.states import ALLOWED, JobState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def world(db: Database, settings: Settings, movie: tuple[Path, np.ndarray]) -> World:
    return make_world(db, settings, movie[0])


def test_migrations_match_the_models(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert {"users", "api_tokens", "datasets", "jobs", "job_events", "alembic_version"} <= tables
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrate_twice_is_harmless(db: Database) -> None:
    db.migrate()
    with db.engine.connect() as connection:
        assert (
            connection.execute(text("select version_num from alembic_version")).scalar() == "0006"
        )


def _job_in(world: World, state: JobState) -> str:
    """A job moved along allowed transitions to ``state``."""
    job = world.submit()
    path = {
        JobState.QUEUED: [],
        JobState.ADMITTED: [JobState.ADMITTED],
        JobState.PROVISIONING: [JobState.ADMITTED, JobState.PROVISIONING],
        JobState.RUNNING: [JobState.ADMITTED, JobState.PROVISIONING, JobState.RUNNING],
    }
    with world.db.session() as session:
        row = queries.job_by_id(session, job.id)
        for step in path[state]:
            queries.transition(session, row, step, f"to {step.value}")
        session.commit()
    return job.id


@pytest.mark.parametrize(
    "source", [JobState.QUEUED, JobState.ADMITTED, JobState.PROVISIONING, JobState.RUNNING]
)
def test_every_transition_follows_the_table(world: World, source: JobState) -> None:
    for target in JobState:
        job_id = _job_in(world, source)
        with world.db.session() as session:
            job = queries.job_by_id(session, job_id)
            events_before = len(job.events)
            if target in ALLOWED[source]:
                event = queries.transition(session, job, target, "because")
                session.commit()
                assert (event.from_state, event.to_state, event.reason) == (
                    source.value,
                    target.value,
                    "because",
                )
                assert job.state == target.value and job.reason == "because"
                assert (job.finished_at is not None) == target.terminal
            else:
                with pytest.raises(Conflict, match=f"cannot become {target.value}"):
                    queries.transition(session, job, target, "nope")
                session.rollback()
                job = queries.job_by_id(session, job_id)
                assert job.state == source.value and len(job.events) == events_before


def test_events_record_time_and_reason(world: World) -> None:
    job_id = _job_in(world, JobState.RUNNING)
    with world.db.session() as session:
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        assert [e.to_state for e in events] == ["queued", "admitted", "provisioning", "running"]
        assert events[0].from_state is None and events[0].reason == "submitted by ada"
        assert all(e.at.tzinfo is not None for e in events)
        assert queries.job_by_id(session, job_id).started_at is not None


def test_claim_queued_oldest_first_with_limit(world: World) -> None:
    ids = [world.submit().id for _ in range(3)]
    until = utcnow() + timedelta(seconds=30)
    with world.db.session() as session:
        claimed = queries.claim_queued(session, "d1", 2, until)
        assert [j.id for j in claimed] == ids[:2]
        assert all(j.lease_owner == "d1" for j in claimed)
        session.commit()
    with world.db.session() as session:
        assert queries.claim_queued(session, "d1", 0, until) == []


def test_claim_active_respects_live_leases(world: World) -> None:
    job_id = _job_in(world, JobState.RUNNING)
    now = utcnow()
    with world.db.session() as session:
        job = queries.job_by_id(session, job_id)
        job.lease_owner, job.lease_expires_at = "other", now + timedelta(seconds=30)
        session.commit()
    with world.db.session() as session:
        assert queries.claim_active(session, "me", now, now + timedelta(seconds=30)) == []
    later = now + timedelta(seconds=31)
    with world.db.session() as session:
        adopted = queries.claim_active(session, "me", later, later + timedelta(seconds=30))
        assert [j.id for j in adopted] == [job_id] and adopted[0].lease_owner == "me"
        session.commit()
    with world.db.session() as session:
        assert queries.live_job_ids(session) == {job_id}


@pytest.mark.postgres
def test_concurrent_claims_never_share_a_job(
    postgres_url: str, settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    """Two dispatchers claiming at once on PostgreSQL (FOR UPDATE SKIP LOCKED)."""
    db = Database(postgres_url)
    db.migrate()
    world = make_world(db, settings, movie[0])
    for _ in range(6):
        world.submit()
    until = utcnow() + timedelta(seconds=30)
    first_holding = threading.Event()
    release = threading.Event()
    claimed: dict[str, list[str]] = {}

    def claim(owner: str, hold: bool) -> None:
        with db.session() as session:
            jobs = queries.claim_queued(session, owner, 4, until)
            claimed[owner] = [j.id for j in jobs]
            if hold:
                first_holding.set()
                release.wait(10)
            session.commit()

    holder = threading.Thread(target=claim, args=("d1", True))
    holder.start()
    assert first_holding.wait(10)
    claim("d2", False)  # runs while d1 still holds its rows locked
    release.set()
    holder.join(10)
    assert len(claimed["d1"]) == 4 and len(claimed["d2"]) == 2
    assert not set(claimed["d1"]) & set(claimed["d2"])
    db.dispose()


def test_tokens_are_stored_hashed_and_can_be_revoked(db: Database) -> None:
    with db.session() as session:
        user, token = auth.create_user(session, "grace", auth.Role.RESEARCHER)
        session.commit()
        assert auth.authenticate(session, token).name == "grace"
        stored = session.scalars(select(ApiToken.token_hash)).all()
        assert token not in stored and auth.hash_token(token) in stored
        with pytest.raises(Conflict):
            auth.create_user(session, "grace", auth.Role.RESEARCHER)
        session.rollback()
        row = session.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
        assert row is not None
        row.revoked_at = utcnow()
        session.commit()
        with pytest.raises(auth.AuthenticationFailed, match="unknown or revoked"):
            auth.authenticate(session, token)
        with pytest.raises(auth.AuthenticationFailed, match="INSITU_TOKEN"):
            auth.authenticate(session, None)


def test_bootstrap_admin_writes_a_private_token_once(db: Database, settings: Settings) -> None:
    token = auth.bootstrap_admin(db, settings)
    assert token and settings.admin_token_path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(settings.admin_token_path).st_mode) == 0o600
    assert auth.bootstrap_admin(db, settings) is None
    with db.session() as session:
        assert auth.authenticate(session, token).role == "admin"
        assert session.scalar(select(Job).limit(1)) is None


def test_access_rules_grants_groups_and_audit(db: Database, movie: tuple[Path, np.ndarray]) -> None:
    with db.session() as session:
        admin, _ = auth.create_user(session, "root", auth.Role.ADMIN)
        session.commit()
        ines, _ = users.add(session, admin, "ines", "instructor")
        rosa, _ = users.add(session, admin, "rosa", "researcher")
        pat, _ = users.add(session, admin, "pat", "participant", groups=["lab-a", "lab-a"])
        assert pat.groups == ["lab-a"]
        rules = {"lab/open": "public", "lab/own": "private", "lab/team": "group:lab-a"}
        url_roots.allow(session, admin, str(movie[0].parent), role=None, user_name="ines")
        for number, (name, rule) in enumerate(rules.items()):
            datasets.register(
                session, ines, name, str(movie[0]), access_rule=rule, same_url_ok=number > 0
            )
        readable = {u.name: {d.name for d in datasets.readable(session, u)} for u in (rosa, pat)}
        assert readable == {"rosa": {"lab/open"}, "pat": {"lab/open", "lab/team"}}
        assert {d.name for d in datasets.readable(session, admin)} == set(rules)
        datasets.grant(session, ines, "lab/own", "rosa")
        datasets.grant(session, ines, "lab/own", "rosa")  # idempotent
        assert "lab/own" in {d.name for d in datasets.readable(session, rosa)}
        users.revoke(session, admin, "pat")
        with pytest.raises(auth.AuthenticationFailed):
            auth.authenticate(session, "insitu_not-a-token")
        events, count = queries.list_audit(session, limit=3)
        assert count == 3 + 1 + 3 + 2 + 1 and len(events) == 3  # users, root, datasets, ..
        assert [e.action for e in events] == ["user.revoke", "dataset.grant", "dataset.grant"]
        grants, _ = queries.list_audit(session, action="dataset.grant", user_name="ines")
        assert len(grants) == 2 and grants[0].detail == "to rosa"


@pytest.mark.postgres
def test_replicas_starting_at_once_migrate_a_new_database_once(postgres_url: str) -> None:
    """Several API processes started together (a chart with replicas) on one empty database:
    each waits for the first one's migration instead of racing it to create the tables."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from insitu.db.engine import Database\n"
        "db = Database(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together\n"
        "db.migrate()\n"
    )
    import time

    start = str(time.time() + 3.0)
    processes = [
        subprocess.Popen([sys.executable, "-c", script, postgres_url, start],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=50)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, outputs
    database = Database(postgres_url)
    try:
        with database.engine.connect() as connection:
            versions = connection.execute(text("select version_num from alembic_version")).all()
        assert len(versions) == 1
        assert "jobs" in inspect(database.engine).get_table_names()
    finally:
        database.dispose()


def test_the_admin_token_can_come_from_a_secret(db: Database, settings: Settings) -> None:
    """A pod's disk is lost with the pod: the first start takes the admin's token given."""
    from pydantic import SecretStr, ValidationError

    given = "insitu_" + "s" * 40
    configured = settings.model_copy(update={"admin_token": SecretStr(given)})
    assert auth.bootstrap_admin(db, configured) == given
    assert not configured.admin_token_path.exists()  # nothing written to the pod's disk
    with db.session() as session:
        assert auth.authenticate(session, given).name == "admin"
    assert auth.bootstrap_admin(db, configured) is None  # once
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(admin_token="short")


@pytest.mark.postgres
def test_replicas_starting_at_once_make_one_admin(postgres_url: str, settings: Settings) -> None:
    Database(postgres_url).migrate()
    databases = [Database(postgres_url) for _ in range(4)]
    tokens: list[str | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(databases))

    def start(database: Database) -> None:
        barrier.wait()
        try:
            tokens.append(auth.bootstrap_admin(database, settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,)) for d in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len([t for t in tokens if t]) == 1 and tokens.count(None) == 3
    with databases[0].session() as session:
        assert queries.count_users(session) == 1
    for database in databases:
        database.dispose()
