"""Abuse limits: what a participant who pushes every limit gets, and what it costs others.

Each test attacks the server the way a malicious or careless user would (a spec that
expands to gigabytes, a bundle of a million empty files, a request body of megabytes,
a thousand queued jobs, a course named like a group, another owner's folder, another
user's bundle, a flood of refused requests) and checks the refusal is clear, cheap,
and loses nothing already stored.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from fakes import FakeBackend, World, make_world
from insitu.client import Client
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database
from insitu.db.models import AuditEvent, Job
from insitu.dispatcher import Dispatcher
from insitu.errors import Conflict, InvalidInput, LimitReached, NotFound, PermissionDenied
from insitu.server import BackgroundServer
from insitu.services import auth, jobs, users
from insitu.spec import load_spec
from insitu.states import JobState

pytestmark = pytest.mark.timeout(120)


def _bomb(levels: int = 9) -> str:
    """A YAML 'billion laughs' job spec: a few hundred bytes, 9**levels strings expanded."""
    lines = [
        "dataset: test/movie",
        "analysis:",
        "  entrypoint: 'my_analysis:time_mean'",
        "  params:",
        '    l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    ]
    for level in range(1, levels):
        lines.append(f"    l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _empty_entries_bundle(count: int) -> bytes:
    """A .tar.gz of ``count`` empty files: tiny compressed, huge to walk."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for number in range(count):
            tar.addfile(tarfile.TarInfo(f"f{number}"), io.BytesIO(b""))
    return gzip.compress(raw.getvalue(), compresslevel=9)


# -- the spec ---------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    source = _bomb()
    assert len(source) < 600
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="more than 64 YAML aliases"):
        load_spec(source)
    # Fewer aliases, each used many times: refused by what it expands to, not what it says.
    few = "\n".join(
        [
            "dataset: test/movie",
            "analysis:",
            "  entrypoint: 'my_analysis:time_mean'",
            "  params:",
            f"    big: &big '{'x' * 10_000}'",
            "    many: [" + ",".join(["*big"] * 60) + "]",
        ]
    )
    with pytest.raises(InvalidInput, match="expands to more than 262,144 bytes"):
        load_spec(few)
    with pytest.raises(InvalidInput, match="refers to itself"):
        load_spec("dataset: x\nanalysis: &a {entrypoint: 'a:b', params: {loop: *a}}\n")
    with pytest.raises(InvalidInput, match="nested deeper than 32 levels"):
        load_spec("[" * 50_000)
    with pytest.raises(InvalidInput, match="over the limit of 262,144"):
        load_spec("dataset: x\n# " + "x" * 300_000)
    assert time.perf_counter() - started < 5
    ordinary = {"rois": [[1, 2, 3, 4]] * 2000}  # a long but honest list of params passes
    spec = load_spec({"dataset": "d", "analysis": {"entrypoint": "a:b", "params": ordinary}})
    assert len(spec.analysis.params["rois"]) == 2000


# -- a live server without a dispatcher: what is refused stays refused, nothing runs ----------


@pytest.fixture
def quiet(settings: Settings) -> Iterator[tuple[BackgroundServer, Client]]:
    """A server whose dispatcher is off (queued jobs stay queued), and its admin client."""
    settings.limits.max_queued_jobs_per_user = 3
    server = BackgroundServer(settings, run_dispatcher=False).start()
    token = settings.admin_token_path.read_text().strip()
    with Client(server.url, token) as admin:
        yield server, admin
    server.stop()


def _job_count(settings: Settings) -> int:
    with Database(settings.resolved_database_url).session() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_spec_bodies_and_bundles_past_their_limits_are_refused_clearly(
    quiet: tuple[BackgroundServer, Client],
    settings: Settings,
    movie: tuple[Path, np.ndarray],
    analysis_code: Path,
) -> None:
    server, admin = quiet
    admin.register_dataset("test/movie", str(movie[0]), access="public")
    headers = {"Authorization": f"Bearer {admin.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        refused = http.post("/v1/jobs", json={"spec": _bomb()})
        assert refused.status_code == 422, refused.text
        assert "YAML aliases" in refused.json()["detail"]
        # Deep JSON: a clear 400 in the usual shape, not a crash of the parser.
        deep = http.post(
            "/v1/jobs",
            content=b'{"spec": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert deep.status_code == 400 and "nested too deep" in deep.json()["detail"]
        # A body over the limit, declared or streamed without a length.
        big = http.post("/v1/jobs", content=b"x" * (2 << 20))
        assert big.status_code == 413 and "at most 1,048,576 bytes" in big.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b" " * 65536

        streamed = http.post("/v1/jobs", content=chunks())
        assert streamed.status_code == 413, streamed.text

        # A bundle of 200,000 empty entries: refused at its 10,001st member, off the loop.
        bomb = _empty_entries_bundle(200_000)
        assert len(bomb) < settings.limits.max_code_bundle_bytes
        answers: list[float] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as other:
                while not done.is_set():
                    started = time.perf_counter()
                    other.get("/healthz").raise_for_status()
                    answers.append(time.perf_counter() - started)
                    time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            upload = http.post("/v1/bundles", content=bomb)
        finally:
            done.set()
            prober.join()
        assert upload.status_code == 422, upload.text
        assert "more than 10,000 files and folders" in upload.json()["detail"]
        assert answers and max(answers) < 1.0, f"health answers took up to {max(answers):.2f} s"
    assert _job_count(settings) == 0
    # Nothing already stored was lost: an honest job still goes in.
    code = admin.upload_code(analysis_code)
    spec = {"dataset": "test/movie", "analysis": {"entrypoint": "my_analysis:time_mean"}}
    assert admin.submit(spec, bundle=code)["state"] == "queued"


def test_queued_jobs_per_user_are_limited_with_a_429_that_says_how_many(
    quiet: tuple[BackgroundServer, Client], movie: tuple[Path, np.ndarray]
) -> None:
    server, admin = quiet
    admin.register_dataset("test/movie", str(movie[0]), access="public")
    rosa = Client(server.url, admin.add_user("rosa", "researcher")["token"])
    spec = {"dataset": "test/movie", "analysis": {"entrypoint": "my_analysis:time_mean"}}
    spec_admin = dict(spec)
    with rosa:
        settings_ok = [admin.submit(spec_admin) for _ in range(3)]
        assert all(j["state"] == "queued" for j in settings_ok)
        with pytest.raises(LimitReached, match=r"you have 3 jobs waiting .* \(3\)"):
            admin.submit(spec_admin)
        # The limit is per user: another user still submits (local backend: installed code).
        assert rosa.submit({**spec, "analysis": {"entrypoint": "ophys_analyses:mean"}})
        admin.cancel(settings_ok[0]["id"])
        assert admin.submit(spec_admin)["state"] == "queued"


def test_a_bundle_belongs_to_its_uploader(
    quiet: tuple[BackgroundServer, Client],
    settings: Settings,
    movie: tuple[Path, np.ndarray],
    analysis_code: Path,
) -> None:
    server, admin = quiet
    settings.local.allow_untrusted_code = True  # the server reads it per request
    admin.register_dataset("test/movie", str(movie[0]), access="public")
    ada = Client(server.url, admin.add_user("ada", "researcher")["token"])
    bo = Client(server.url, admin.add_user("bo", "researcher")["token"])
    spec = {"dataset": "test/movie", "analysis": {"entrypoint": "my_analysis:time_mean"}}
    with ada, bo:
        digest = ada.upload_code(analysis_code)
        assert ada.submit(spec, bundle=digest)["code_bundle"] == digest
        with pytest.raises(NotFound) as stolen:
            bo.submit(spec, bundle=digest)
        with pytest.raises(NotFound) as invented:
            bo.submit(spec, bundle="ab" * 32)
        # The same words whether the digest exists for someone else or not at all.
        assert str(stolen.value).replace(digest[:12], "X") == str(invented.value).replace(
            "ab" * 6, "X"
        )
        # Uploading the same bytes makes it bo's too.
        assert bo.upload_code(analysis_code) == digest
        assert bo.submit(spec, bundle=digest)["state"] == "queued"


def test_a_course_cannot_be_named_into_a_group(
    quiet: tuple[BackgroundServer, Client], movie: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    server, admin = quiet
    admin.add_user("lia", "researcher", groups=["lab-a"])
    admin.register_dataset("lab/secret", str(movie[0]), access="group:lab-a")
    prof = Client(server.url, admin.add_user("prof", "instructor")["token"])
    with prof:
        created = prof.create_course(
            "lab-a", [{"name": "Eve", "email": "eve@x.example"}], datasets=[]
        )
        eve = Client(server.url, created["created"][0]["token"])
    with eve:
        assert eve.whoami()["groups"] == ["course:lab-a"]
        assert eve.datasets() == []
        with pytest.raises(PermissionDenied, match="shared with group 'lab-a'"):
            eve.dataset("lab/secret")
        # A dataset shared with the course itself is the participants'.
        admin.register_dataset(
            "course/data", str(movie[0]), access="course:lab-a", same_url_ok=True
        )
        assert [d["name"] for d in eve.datasets()] == ["course/data"]


def test_registration_only_under_allowed_roots_and_once_per_url(
    quiet: tuple[BackgroundServer, Client], movie: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    server, admin = quiet
    allowed = movie[0].parent / "course-data"
    allowed.mkdir()
    (allowed / "movie.zarr").symlink_to(movie[0], target_is_directory=True)
    elsewhere = tmp_path / "other-owner"
    elsewhere.mkdir()
    (allowed / "escape").symlink_to(elsewhere, target_is_directory=True)
    prof = Client(server.url, admin.add_user("prof", "instructor")["token"])
    with prof:
        # No roots yet: refused before the store is touched, alike for real and absent paths.
        with pytest.raises(PermissionDenied) as real:
            prof.register_dataset("x/real", str(movie[0]))
        with pytest.raises(PermissionDenied) as absent:
            prof.register_dataset("x/real", str(movie[0]) + "-absent")
        assert "none yet" in str(real.value) and "none yet" in str(absent.value)
        assert str(real.value).replace("-absent", "") == str(absent.value).replace("-absent", "")

        admin.allow_url_root(str(allowed), user="prof")
        with pytest.raises(Conflict, match="allowed to prof already"):
            admin.allow_url_root(str(allowed) + "/", user="prof")
        assert [r["prefix"] for r in admin.url_roots()] == [allowed.as_uri()]
        # Outside the root, through '..', or through a link that leads out: refused.
        for url in (
            str(movie[0]),
            f"{allowed}/../movie.zarr",
            str(allowed / "escape"),
            f"{allowed}-sibling/movie.zarr",
        ):
            with pytest.raises(PermissionDenied, match="may register datasets only under"):
                prof.register_dataset("x/out", url)
        # A link inside the root to a store outside it is outside too (resolved first).
        with pytest.raises(PermissionDenied):
            prof.register_dataset("x/linked", str(allowed / "movie.zarr"))
        admin.allow_url_root(str(movie[0]), user="prof")
        assert prof.register_dataset("x/movie", str(movie[0]))["name"] == "x/movie"
        with pytest.raises(Conflict, match="registered already, as dataset 'x/movie'"):
            prof.register_dataset("x/again", str(movie[0]) + "/")
        assert prof.register_dataset("x/again", str(movie[0]), same_url_ok=True)
        # Researchers never register, whatever the roots.
        with pytest.raises(PermissionDenied, match="only admins and instructors"):
            Client(server.url, admin.add_user("rae", "researcher")["token"]).register_dataset(
                "x/r", str(movie[0])
            )
        with pytest.raises(PermissionDenied, match="only admins may allow URL roots"):
            prof.allow_url_root(str(tmp_path), user="prof")


def test_revoking_a_user_and_closing_a_course_cancel_their_jobs(
    quiet: tuple[BackgroundServer, Client], movie: tuple[Path, np.ndarray]
) -> None:
    server, admin = quiet
    admin.register_dataset("test/movie", str(movie[0]), access="public")
    spec = {"dataset": "test/movie", "analysis": {"entrypoint": "ophys_analyses:mean"}}
    rosa = Client(server.url, admin.add_user("rosa", "researcher")["token"])
    with rosa:
        queued = [rosa.submit(spec)["id"] for _ in range(2)]
    admin.revoke_user("rosa")
    for job_id in queued:
        job = admin.job(job_id)
        assert job["state"] == "cancelled" and "rosa was revoked by admin" in job["reason"]
    created = admin.create_course(
        "neuro", [{"name": "Ada", "email": "ada@x.example"}], datasets=["test/movie"]
    )
    with Client(server.url, created["created"][0]["token"]) as ada:
        job_id = ada.submit(spec)["id"]
    closed = admin.close_course("neuro")
    assert closed["jobs_cancelled"] == 1
    assert admin.job(job_id)["state"] == "cancelled"


def test_running_jobs_of_a_revoked_user_are_stopped(world: World) -> None:
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    job = world.submit()
    asyncio.run(dispatcher.reconcile_once())
    FakeBackend.report_running(job)
    asyncio.run(dispatcher.reconcile_once())
    with world.db.session() as session:
        admin, _ = auth.create_user(session, "boss", auth.Role.ADMIN)
        session.commit()
        users.revoke(session, admin, world.user.name)
    for _ in range(3):
        asyncio.run(dispatcher.reconcile_once())
    with world.db.session() as session:
        stored = queries.job_by_id(session, job.id)
        assert stored.state == JobState.CANCELLED.value
        assert "revoked by boss" in (stored.reason or "")
    assert job.id in backend.cancelled


# -- admission and audit on both databases ------------------------------------------------------


@pytest.fixture
def world(db: Database, settings: Settings, movie: tuple[Path, np.ndarray]) -> World:
    return make_world(db, settings, movie[0])


def test_a_deep_backlog_of_one_user_never_hides_another_users_job(world: World) -> None:
    world.settings.limits.max_queued_jobs_per_user = 1000
    with world.db.session() as session:
        hog = queries.user_named(session, world.user.name)
        hog.quota = {"jobs": 1}
        other, _ = auth.create_user(session, "late", auth.Role.RESEARCHER)
        session.commit()
        for _ in range(300):
            jobs.submit(
                session,
                world.settings,
                hog,
                {"dataset": "test/movie", "analysis": {"entrypoint": "m:f"}},
            )
        late = jobs.submit(
            session,
            world.settings,
            other,
            {"dataset": "test/movie", "analysis": {"entrypoint": "m:f"}},
        )
    with world.db.session() as session:
        seen = queries.queued_candidates(session, 200, per_owner=4)
        assert late.id in {j.id for j in seen} and len(seen) == 5
        assert len(queries.queued_candidates(session, 200)) == 200  # oldest-first alone
    backend = FakeBackend()
    dispatcher = Dispatcher(world.settings, world.db, backend)
    world.settings.dispatcher.max_running_jobs = 4
    asyncio.run(dispatcher.reconcile_once())
    # The hog's first job runs (its quota allows one), the latecomer's too.
    assert late.id in backend.started and len(backend.started) == 2
    with world.db.session() as session:
        waiting = session.scalar(
            select(Job)
            .where(Job.owner_id == hog.id, Job.state == "queued")
            .order_by(Job.created_at)
        )
        assert waiting is not None and "quota" in (waiting.reason or "")


def test_a_flood_of_refused_requests_adds_a_row_per_caller_and_route(
    database_url: str, settings: Settings
) -> None:
    settings.database_url = database_url
    db = Database(database_url)
    server = BackgroundServer(settings, run_dispatcher=False).start()
    try:

        async def flood() -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                answers = []
                for start in range(0, 300, 30):
                    batch = [
                        http.get(
                            f"/v1/jobs/j-{n:012d}", headers={"Authorization": f"Bearer bad{n}"}
                        )
                        for n in range(start, start + 30)
                    ]
                    answers += [r.status_code for r in await asyncio.gather(*batch)]
                answers.append((await http.get("/v1/datasets")).status_code)
                return answers

        codes = asyncio.run(flood())
        assert set(codes) == {401}
        with db.session() as session:
            rows = session.scalars(select(AuditEvent).where(AuditEvent.outcome == "denied")).all()
            by_action: dict[str, int] = {}
            for row in rows:
                by_action[row.action] = by_action.get(row.action, 0) + row.count
            assert by_action == {"GET /v1/jobs/{job_id}": 300, "GET /v1/datasets": 1}
            # Concurrent first writers may each start a row; never one per request.
            assert len(rows) <= 2 + 4
    finally:
        server.stop()


def test_audit_rows_show_how_many_were_folded(client: Client) -> None:
    for _ in range(3):
        with pytest.raises(NotFound):
            client.job("j-000000000000")
    with Client(client.url, "insitu_wrong") as stranger:
        for _ in range(4):
            with pytest.raises(Exception, match="token"):
                stranger.jobs()
    denied = client.audit(outcome="denied")
    anonymous = [e for e in denied if e["user"] is None]
    assert [e["count"] for e in anonymous] == [4] and anonymous[0]["last_at"] is not None
