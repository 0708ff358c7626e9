"""Courses end to end: provisioning from a roster, quotas at submit and admission, fair share,
expiry, reports and closing; the data layer on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from helpers import assert_one_error_line, wait_for
from insitu.cli.main import app
from insitu.client import Client
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database
from insitu.db.models import Job, User, utcnow
from insitu.errors import AuthenticationFailed, InvalidInput, PermissionDenied
from insitu.server import BackgroundServer
from insitu.services import auth, courses, fairshare, quotas
from insitu.services.quotas import Usage, parse_quota

pytestmark = pytest.mark.timeout(120)
Run = Callable[..., Result]
ROSTER = "name,email\nAda Lovelace,ada@uni.example\nAlan Turing,alan@uni.example\n"


@pytest.fixture(autouse=True)
def users_may_run_code(settings: Settings) -> None:
    """These tests are about access, not isolation: the operator lets users run their code
    on the local backend (test_trust_local.py tests the default, which does not)."""
    settings.local.allow_untrusted_code = True


@pytest.fixture
def cli(server: BackgroundServer, settings: Settings) -> Run:
    base = {"INSITU_URL": server.url, "INSITU_HOME": str(settings.home)}
    admin = settings.admin_token_path.read_text().strip()

    def run(*args: str, token: str = admin) -> Result:
        return CliRunner().invoke(app, list(args), env={**base, "INSITU_TOKEN": token})

    return run


def _token(folder: Path, user: str) -> str:
    text = (folder / f"{user}.env").read_text()
    return next(line.split("=", 1)[1] for line in text.splitlines() if "INSITU_TOKEN=" in line)


def _spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": "course/movie",
        "analysis": {"entrypoint": "my_analysis:slow"},
    }
    spec["analysis"]["params"] = extra.pop("params", {"seconds": 0})
    spec.update(extra)
    return spec


def test_a_course_from_a_roster_to_its_report_and_close(
    cli: Run,
    client: Client,
    server: BackgroundServer,
    movie: tuple[Path, np.ndarray],
    analysis_code: Path,
    tmp_path: Path,
) -> None:
    client.register_dataset("course/movie", str(movie[0]))
    client.add_user("prof", "instructor")
    roster = tmp_path / "roster.csv"
    roster.write_text(ROSTER)
    out = tmp_path / "creds"
    expires = (utcnow() + timedelta(days=30)).date().isoformat()
    created = cli(
        "course", "create", "neuro-2026", "--roster", str(roster), "--datasets", "course/movie",
        "--quota", "jobs=1,workers=2,core-hours=20,result-bytes=1MiB",
        "--expires", expires, "--out", str(out),
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "ada" in created.stdout and "alan" in created.stdout
    for user in ("ada", "alan"):
        path = out / f"{user}.env"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        text = path.read_text()
        assert f"INSITU_URL={server.url}" in text and "insitu datasets show course/movie" in text
    ada = _token(out, "ada")

    # A participant sees the course's dataset and nothing more, with the quota in force.
    with Client(server.url, ada) as participant:
        assert [d["name"] for d in participant.datasets()] == ["course/movie"]
        me = participant.whoami()
        assert me["role"] == "participant" and "course:neuro-2026" in me["groups"]
        with pytest.raises(InvalidInput, match="asks for 3 workers; your quota allows 2"):
            participant.submit(_spec(resources={"workers": 3}), code=analysis_code)
        first = participant.submit(_spec(params={"seconds": 3}), code=analysis_code)
        second = participant.submit(_spec(), code=analysis_code)
        waiting = wait_for(
            lambda: (
                (j := participant.job(second["id"]))["state"] == "queued"
                and (j["reason"] or "").startswith("waiting")
                and j
            ),
            30,
        )
        assert waiting["state"] == "queued"
        assert "1 of your jobs are running and your quota allows 1 at once" in waiting["reason"]
        shown = cli("status", second["id"], token=ada)
        assert "waiting: 1 of your jobs are running" in shown.stdout.replace("\n", " ")
        for job in (first, second):
            assert participant.wait(job["id"], timeout=60)["state"] == "succeeded"
        assert participant.job(first["id"])["result_cap_bytes"] <= 1 << 20

    # The instructor's view; another instructor may not see it.
    report = cli("course", "report", "neuro-2026", "--json")
    assert report.exit_code == 0, report.output
    rows = {r["user"]: r for r in json.loads(report.stdout)["participants"]}
    assert rows["ada"]["jobs"] == 2 and rows["ada"]["succeeded"] == 2
    assert rows["ada"]["core_hours"] > 0 and rows["alan"]["jobs"] == 0
    other = client.add_user("other-prof", "instructor")["token"]
    denied = cli("course", "report", "neuro-2026", token=other)
    assert_one_error_line(denied, "course 'neuro-2026' belongs to admin")
    listed = cli("course", "list")
    assert "neuro-2026" in listed.stdout and "jobs=1" in listed.stdout

    more = tmp_path / "more.csv"
    more.write_text("name,email,username\nGrace Hopper,grace@uni.example,ghopper\n")
    added = cli("course", "add", "neuro-2026", "--roster", str(more), "--out", str(out))
    assert added.exit_code == 0, added.output
    assert (out / "ghopper.env").exists()

    closed = cli("course", "close", "neuro-2026", "--yes")
    assert closed.exit_code == 0 and "3 token(s) revoked" in closed.stdout
    with Client(server.url, ada) as revoked, pytest.raises(AuthenticationFailed):
        revoked.datasets()
    # Results and the audit log stay.
    assert client.job(first["id"])["state"] == "succeeded"
    assert any(e["action"] == "course.close" for e in client.audit(action="course.close"))


def test_bad_rosters_and_quotas_are_one_clear_line(
    cli: Run, client: Client, tmp_path: Path
) -> None:
    roster = tmp_path / "r.csv"
    roster.write_text("name,mail\nAda,ada@x.example\n")
    result = cli("course", "create", "c1", "--roster", str(roster))
    assert_one_error_line(result, "has no email column")
    roster.write_text("name,email\nAda,not-an-address\nAda B,ada@x.example\nAda C,ada@y.example\n")
    result = cli("course", "create", "c1", "--roster", str(roster))
    assert_one_error_line(result, "row 1: 'not-an-address' is not an e-mail address", "ada")
    roster.write_text(ROSTER)
    result = cli("course", "create", "c1", "--roster", str(roster), "--quota", "jobz=2")
    assert_one_error_line(result, "quota 'jobz' is not known")
    result = cli("course", "create", "c1", "--roster", str(roster), "--expires", "soon")
    assert_one_error_line(result, "--expires 'soon' is not a date")
    result = cli("course", "create", "c1", "--roster", str(roster), "--datasets", "nope")
    assert_one_error_line(result, "nope")
    assert client.courses() == [] and [u["name"] for u in client.users()] == ["admin"]
    participant = client.add_user("pat", "participant")["token"]
    result = cli("course", "create", "c1", "--roster", str(roster), token=participant)
    assert_one_error_line(result, "create courses")


def test_quota_parsing() -> None:
    quota = parse_quota("jobs=2, workers=2,core-hours=20,result-bytes=256MiB")
    assert (quota.jobs, quota.workers, quota.core_hours) == (2, 2, 20.0)
    assert quota.result_bytes == 256 << 20
    assert quota.describe().startswith("jobs=2,workers=2,core-hours=20,result-bytes=")
    for bad, message in (("jobs", "has no '='"), ("jobs=0", "greater than or equal to 1")):
        with pytest.raises(InvalidInput, match=message):
            parse_quota(bad)


# -- fair share --------------------------------------------------------------------------------


def _queued(owner: User, count: int, start: int) -> list[Job]:
    base = utcnow()
    return [
        Job(
            id=f"j-{owner.name}-{i}",
            owner_id=owner.id,
            owner=owner,
            spec={"resources": {"workers": 1}},
            created_at=base + timedelta(seconds=start + i),
        )
        for i in range(count)
    ]


def test_one_users_fifty_jobs_do_not_hold_back_anothers_single_job() -> None:
    heavy, light = User(id=1, name="heavy"), User(id=2, name="light")
    candidates = sorted(_queued(heavy, 50, 0) + _queued(light, 1, 100), key=lambda j: j.created_at)
    decision = fairshare.pick(candidates, 2, {}, utcnow())
    assert [j.id for j in decision.admit] == ["j-heavy-0", "j-light-0"]
    # With one running already, the light user's job goes first; and also when nobody runs
    # but the heavy user was served lately (slots freeing one at a time).
    decision = fairshare.pick(candidates, 1, {1: Usage(running_jobs=1)}, utcnow())
    assert [j.id for j in decision.admit] == ["j-light-0"]
    decision = fairshare.pick(candidates, 1, {1: Usage(recent_jobs=1)}, utcnow())
    assert [j.id for j in decision.admit] == ["j-light-0"]
    # Quotas: the heavy user may run one job; their others wait and say why.
    heavy.quota = {"jobs": 1}
    decision = fairshare.pick(candidates, 10, {1: Usage(running_jobs=1)}, utcnow())
    assert [j.id for j in decision.admit] == ["j-light-0"]
    assert len(decision.waiting) == 50 and "quota allows 1 at once" in decision.waiting["j-heavy-3"]
    # Expired access fails the queued jobs.
    light.expires_at = utcnow() - timedelta(days=1)
    decision = fairshare.pick(candidates, 10, {}, utcnow())
    assert "your access ended" in decision.expired["j-light-0"]


def test_fair_share_end_to_end(
    settings: Settings, movie: tuple[Path, np.ndarray], analysis_code: Path
) -> None:
    """One dispatcher slot: a second user's job runs before the first user's backlog."""
    one_slot = settings.model_copy(
        update={"dispatcher": settings.dispatcher.model_copy(update={"max_running_jobs": 1})}
    )
    server = BackgroundServer(one_slot).start()
    try:
        with Client(server.url, one_slot.admin_token_path.read_text().strip()) as admin:
            admin.register_dataset("course/movie", str(movie[0]), access="public")
            tokens = {n: admin.add_user(n, "researcher")["token"] for n in ("heavy", "light")}
            with Client(server.url, tokens["heavy"]) as heavy:
                backlog = [
                    heavy.submit(_spec(params={"seconds": 1}), code=analysis_code)["id"]
                    for _ in range(4)
                ]
            with Client(server.url, tokens["light"]) as light:
                single = light.submit(_spec(), code=analysis_code)["id"]
                light.wait(single, timeout=60)
            for job in backlog:
                admin.wait(job, timeout=60)
            started = {
                j: next(e["at"] for e in admin.events(j) if e["to_state"] == "admitted")
                for j in [*backlog, single]
            }
            order = sorted(started, key=lambda j: started[j])
            assert order.index(single) <= 1, order  # after at most the one already running
    finally:
        server.stop()


# -- expiry and the data layer ---------------------------------------------------------------


def test_expired_access_is_refused_with_the_date(db: Database, settings: Settings) -> None:
    with db.session() as session:
        user, token = auth.create_user(session, "late", auth.Role.PARTICIPANT)
        user.expires_at = utcnow() - timedelta(hours=1)
        session.commit()
    with db.session() as session, pytest.raises(PermissionDenied, match="your access ended on"):
        auth.authenticate(session, token)


def test_courses_and_usage_on_both_databases(db: Database) -> None:
    with db.session() as session:
        admin, _ = auth.create_user(session, "root", auth.Role.ADMIN)
        session.commit()
        course, created = courses.create(
            session,
            admin,
            "db-course",
            [
                courses.Participant("Ada", "ada@x.example"),
                courses.Participant("Bo", "bo@x.example"),
            ],
            datasets=[],
            quota="jobs=2",
            expires=utcnow() + timedelta(days=1),
        )
        assert [u.name for u, _ in created] == ["ada", "bo"]
        assert created[0][0].quota == {"jobs": 2} and created[0][0].course_id == course.id
        listed = courses.listing(session, admin)
        assert [(c.name, n) for c, n in listed] == [("db-course", 2)]
        assert queries.usage_by_owner(session) == {}
        _, rows = courses.report(session, admin, "db-course")
        assert [(r["user"], r["jobs"]) for r in rows] == [("ada", 0), ("bo", 0)]
        _, revoked, cancelled = courses.close(session, admin, "db-course")
        assert revoked == 2 and cancelled == 0
    assert quotas.Quota().describe() == "unlimited"


def test_a_participants_jobs_run_under_their_course(
    settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    """The tenant (a Kubernetes namespace and quota) of a participant's job is the course."""
    from insitu.backends.local import LocalBackend
    from insitu.dispatcher import Dispatcher

    settings.ensure_home()
    db = Database(settings.resolved_database_url)
    db.migrate()
    with db.session() as session:
        admin, _ = auth.create_user(session, "root", auth.Role.ADMIN)
        session.commit()
        from insitu.services import datasets as dataset_service
        from insitu.services import jobs

        dataset_service.register(session, admin, "t/movie", str(movie[0]), access_rule="public")
        _, created = courses.create(
            session, admin, "neuro", [courses.Participant("Ada", "ada@x.example")],
            datasets=[], quota=None, expires=None,
        )  # fmt: skip
        participant = created[0][0]
        spec = {"dataset": "t/movie", "analysis": {"entrypoint": "x:y"}}
        mine = jobs.submit(session, settings, participant, spec)
        theirs = jobs.submit(session, settings, admin, spec)
    dispatcher = Dispatcher(settings, db, LocalBackend(settings))
    assert dispatcher._launch_request(mine).tenant == "course-neuro"
    assert dispatcher._launch_request(theirs).tenant == "root"
    db.dispose()
