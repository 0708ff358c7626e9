"""API fuzzing: schemathesis against the server's own OpenAPI document, as every role.

A live server (a fake backend, so no job ever computes) holds users of each role,
datasets of each access rule, courses, a URL root, a code bundle and jobs that succeeded
or still run. Every operation of its OpenAPI document is then called as each role and
without a token: once for each real object its path can name, then ``EXAMPLES`` times
with generated requests, valid and invalid, a third of them naming real objects. Every
response must be no 5xx, have a status the document declares for the operation, and
match the declared content type and schema. The server runs on SQLite, and on
PostgreSQL when there is one (NUL bytes, integer ranges and long strings differ).

``INSITU_FUZZ_EXAMPLES``: generated requests per operation and role (15 in CI, 300 in
``make fuzz``). ``INSITU_FUZZ_REPORT``: a JSON file for the figures and findings.
``INSITU_FUZZ_SEED``: vary the examples (unset, every run sends the same ones).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import hypothesis
import numpy as np
import pytest
import requests
import schemathesis
import zarr
from hypothesis import strategies as st
from schemathesis.core import NotSet
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine, text

from fakes import FakeBackend, ok_outcome
from helpers import wait_for
from insitu import server as insitu_server
from insitu.api.app import create_app
from insitu.backends.base import JobHandle, read_log
from insitu.config import Settings
from insitu.db import queries
from insitu.runtime import bundle
from insitu.server import BackgroundServer

EXAMPLES = int(os.environ.get("INSITU_FUZZ_EXAMPLES", "15"))
REPORT = os.environ.get("INSITU_FUZZ_REPORT")
SEED = os.environ.get("INSITU_FUZZ_SEED")
ROLES = ("anonymous", "participant", "researcher", "instructor", "admin")
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: What the figures call each schemathesis failure code.
KINDS = {
    "ST101": "server_error",
    "ST103": "undeclared_status",
    "ST105": "undeclared_content_type",
    "ST108": "schema_mismatch",
}
DATASETS = ("fuzz/movie", "fuzz/private", "fuzz/group", "fuzz/unknown")
COURSE, SPARE_COURSE = "fuzz-course", "fuzz-spare"
VICTIMS = ("fuzz.victim-1", "fuzz.victim-2")
#: Values schemathesis never generates (it strips control characters from paths) or seldom
#: does, sent in every path and query parameter: NUL bytes, integers past 32 and 64 bits.
EDGES = ("fuzz\x00", "-1", str(2**31), str(2**63), "9" * 40, "x" * 3000)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, EXAMPLES * 40))]


# -- what the fuzzer found -------------------------------------------------------------


@dataclass
class Finding:
    """One kind of failure of one operation with one status, the roles it happened to,
    and the first request that showed it."""

    operation: str
    status: int
    kind: str
    title: str
    message: str
    request: dict[str, Any]
    response: str
    roles: Counter[str] = field(default_factory=Counter)
    server_traceback: str | None = None

    def summary(self) -> str:
        where = f"\n    server: {self.server_traceback}" if self.server_traceback else ""
        roles = ", ".join(f"{r} x{n}" for r, n in self.roles.items())
        return (
            f"{self.operation} -> {self.status} {self.kind} ({roles}): {self.title}\n"
            f"    request: {json.dumps(self.request)}\n"
            f"    response: {self.response[:300]}{where}"
        )

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Tally:
    """Requests and statuses per role, and the distinct findings, of one database's run."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: dict[str, Counter[str]] = field(default_factory=dict)
    findings: dict[tuple[str, int, str], Finding] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def of(self, role: str) -> list[Finding]:
        return [f for f in self.findings.values() if role in f.roles]

    def figures(self, operations: int) -> dict[str, Any]:
        roles = {
            role: {
                "requests": self.requests[role],
                "seconds": round(self.seconds.get(role, 0.0), 1),
                "statuses": {str(k): v for k, v in sorted(self.statuses[role].items())},
                "server_errors": sum(v for k, v in self.statuses[role].items() if k >= 500),
                "failures": dict(self.failures.get(role, {})),
                "distinct_findings": len(self.of(role)),
            }
            for role in self.requests
        }
        kinds: Counter[str] = Counter()
        for finding in self.findings.values():
            kinds[finding.kind] += 1
        return {
            "examples_per_operation": EXAMPLES,
            "operations": operations,
            "requests": sum(self.requests.values()),
            "seconds": round(sum(self.seconds.values()), 1),
            "distinct_findings": dict(kinds),
            "roles": roles,
            "findings": [f.as_json() for f in self.findings.values()],
        }


class ServerTracebacks(logging.Handler):
    """The innermost insitu frames of every exception the server logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = [
                f"{f.filename.split('/platform/')[-1]}:{f.lineno} {f.name}"
                for f in traceback.extract_tb(exc.__traceback__)
                if "/insitu/" in f.filename
            ]
            message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            where = " <- ".join(frames[::-1][:3])
            self.seen.append(f"{type(exc).__name__}: {message} at {where}")

    def take(self) -> str | None:
        seen, self.seen = self.seen, []
        return " | ".join(seen) or None


# -- the live server and its objects ----------------------------------------------------


@dataclass
class Target:
    """The live server, its schema, a token per role, and the real objects' names."""

    database: str
    url: str
    schema: Any
    tokens: dict[str, str | None]
    jobs: list[str]
    keepers: set[str]
    url_roots: list[str]
    bodies: dict[str, dict[str, Any]]
    tracebacks: ServerTracebacks
    tally: Tally = field(default_factory=Tally)

    def path_values(self, operation: Any) -> list[dict[str, str]]:
        """Real values for an operation's path parameters (none if it has none)."""
        path, method = operation.path, operation.method.upper()
        if path.startswith("/v1/jobs/"):
            # Cancelling every running job would leave no running job to read.
            ids = [j for j in self.jobs if not path.endswith("/cancel") or j not in self.keepers]
            files = ["mean.npy", "provenance.json", "absent.npy"] if "{filename}" in path else []
            return [
                {"job_id": j, **({"filename": f} if f else {})}
                for j, f in itertools.product([*ids, "j-000000000000"], files or [""])
            ]
        if path.startswith("/v1/datasets/"):
            return [{"name": d} for d in DATASETS]
        if path.startswith("/v1/courses/"):
            # Closing the participants' course would revoke their tokens: close the spare.
            courses = [SPARE_COURSE] if path.endswith("/close") else [COURSE, SPARE_COURSE]
            return [{"name": c} for c in [*courses, "fuzz-unknown"]]
        if path.startswith("/v1/url-roots/"):
            return [{"root_id": r} for r in self.url_roots]
        if path.startswith("/v1/users/") and method == "POST":
            return [{"name": n} for n in [*VICTIMS, "admin"]]
        return []


@dataclass
class LoggingBackend(FakeBackend):
    """The fake backend, whose jobs' logs are read by the real backends' reader."""

    log_dir: Path = Path()

    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        return read_log(self.log_dir / f"{handle.job_id}.log", offset)


def _valid_bodies(data: Path) -> dict[str, dict[str, Any]]:
    """A body each operation could accept, for the edge values to go into one field at a time."""
    person = {"name": "Eve", "email": "eve@example.org", "username": "fuzz.eve"}
    return {
        "POST /v1/jobs": {
            "spec": {"dataset": "fuzz/movie", "analysis": {"entrypoint": "ophys_analyses:f"}}
        },
        "POST /v1/datasets": {
            "name": "fuzz/edge",
            "url": _movie(data / "edge.zarr"),
            "access": "public",
            "description": "edge",
        },
        "POST /v1/datasets/{name}/grants": {"user": "fuzz.researcher"},
        "POST /v1/url-roots": {"prefix": str(data / "edge"), "user": "fuzz.researcher"},
        "POST /v1/users": {"name": "fuzz.edge", "role": "researcher", "email": "e@example.org"},
        "POST /v1/courses": {"name": "fuzz-edge", "participants": [person], "datasets": []},
        "POST /v1/courses/{name}/participants": {"participants": [person]},
    }


def _with_edge(value: Any, edge: str) -> Iterator[Any]:
    """``value`` with ``edge`` appended to each of its strings in turn."""
    if isinstance(value, str):
        yield value + edge
    elif isinstance(value, dict):
        for key, item in value.items():
            for changed in _with_edge(item, edge):
                yield {**value, key: changed}
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for changed in _with_edge(item, edge):
                yield [*value[:index], changed, *value[index + 1 :]]


def _edge_cases(target: Target, operation: Any, headers: dict[str, str]) -> Iterator[Any]:
    """Edge values in each path and query parameter, and NUL in each string of a body."""
    real = (target.path_values(operation) or [{}])[0]
    path = {p.name: real.get(p.name, "x") for p in operation.path_parameters}
    body = target.bodies.get(operation.label)
    media = "application/json" if body is not None else None
    extra: dict[str, Any] = {} if body is None else {"body": body, "media_type": media}
    for name, edge in itertools.product(path, EDGES):
        yield operation.Case(path_parameters={**path, name: edge}, headers=headers, **extra)
    for parameter, edge in itertools.product(operation.query, EDGES):
        query = {parameter.name: edge}
        yield operation.Case(path_parameters=path, query=query, headers=headers, **extra)
    for changed in _with_edge(body, "\x00"):
        yield operation.Case(path_parameters=path, headers=headers, body=changed, media_type=media)


def _api(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201, 202), response.text
    return dict(response.json())


def _movie(path: Path) -> str:
    """A small (t, y, x) uint16 array whose shape does not divide into its chunks."""
    array = zarr.create_array(
        path,
        shape=(90, 37, 29),
        chunks=(32, 16, 16),
        dtype="uint16",
        dimension_names=["t", "y", "x"],
    )
    array[:] = np.random.default_rng(7).integers(0, 4000, size=array.shape, dtype=np.uint16)
    return str(path)


def _populate(url: str, admin_token: str, data: Path) -> tuple[dict[str, str], list[str]]:
    """Users of each role, datasets of each access rule, courses: the tokens and URL roots."""
    tokens, roots = {"admin": admin_token}, []
    with _api(url, admin_token) as admin:
        for role in ("researcher", "instructor"):
            user = {"name": f"fuzz.{role}", "role": role, "groups": ["fuzz-lab"]}
            tokens[role] = _created(admin.post("/v1/users", json=user))["token"]
        for victim in VICTIMS:
            _created(admin.post("/v1/users", json={"name": victim, "role": "researcher"}))
        # Instructors register datasets only under roots an admin allowed (issue 13).
        root = admin.post("/v1/url-roots", json={"prefix": str(data), "role": "instructor"})
        if root.status_code != 404:
            roots.append(str(_created(root)["id"]))
        group = {
            "name": "fuzz/group",
            "url": _movie(data / "group.zarr"),
            "access": "group:fuzz-lab",
        }
        _created(admin.post("/v1/datasets", json=group))
    with _api(url, tokens["instructor"]) as instructor:
        for name, rule in (("fuzz/movie", "public"), ("fuzz/private", "private")):
            dataset = {"name": name, "url": _movie(data / f"{rule}.zarr"), "access": rule}
            _created(instructor.post("/v1/datasets", json=dataset))
        for course, who in ((COURSE, "pat"), (SPARE_COURSE, "sam")):
            person = {"name": who.title(), "email": f"{who}@example.org", "username": f"fuzz.{who}"}
            body = {"name": course, "participants": [person], "datasets": ["fuzz/movie"]}
            enrolled = _created(instructor.post("/v1/courses", json=body))
            if course == COURSE:
                tokens["participant"] = enrolled["created"][0]["token"]
    return tokens, roots


def _submit_jobs(url: str, tokens: dict[str, str], code: Path) -> dict[str, list[str]]:
    """Three jobs per role: one to succeed, one to keep running, one the fuzzer may cancel."""
    submitted: dict[str, list[str]] = {}
    for role, token in tokens.items():
        analysis = {"entrypoint": "ophys_analyses.projection:mean_projection"}
        body: dict[str, Any] = {"spec": {"dataset": "fuzz/movie", "analysis": analysis}}
        with _api(url, token) as api:
            if role == "admin":  # only admins may run their own code on the local backend
                uploaded = _created(api.post("/v1/bundles", content=bundle.pack(code)))
                analysis["entrypoint"] = "my_analysis:time_mean"
                body["code_bundle"] = uploaded["digest"]
            submitted[role] = [_created(api.post("/v1/jobs", json=body))["id"] for _ in range(3)]
    return submitted


def _run_jobs(app: Any, backend: LoggingBackend, submitted: dict[str, list[str]]) -> None:
    """The first job of each role succeeds with a result; the others stay running.

    Each writes a log longer than an owner may read of it (its egress budget).
    """

    def load(job_id: str) -> Any:
        with app.state.db.session() as session:
            return queries.job_by_id(session, job_id)

    every = [j for ids in submitted.values() for j in ids]
    wait_for(lambda: all(j in backend.started for j in every), timeout=60)
    for job_id in every:
        FakeBackend.report_running(load(job_id))
        lines = (f"{job_id}: block {n} of 40 read\n" for n in range(40))
        (backend.log_dir / f"{job_id}.log").write_text("".join(lines))
    for first, *_ in submitted.values():
        backend.finish(load(first), ok_outcome(10), {"mean.npy": b"x" * 10})
    wait_for(lambda: all(load(ids[0]).state == "succeeded" for ids in submitted.values()), 60)
    wait_for(lambda: all(load(j).state == "running" for ids in submitted.values() for j in ids[1:]))


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str | None]]:
    """The server's database: SQLite, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield "sqlite", None
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"insitu_fuzz_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield "postgres", admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def target(
    database: tuple[str, str | None], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A live server with an object of every kind, its OpenAPI schema, and the tokens."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    code = tmp_path_factory.mktemp("code")
    (code / "my_analysis.py").write_text("def time_mean(data, *, context):\n    return {}\n")
    backend, apps = LoggingBackend(log_dir=tmp_path_factory.mktemp("logs")), []

    def with_fake_backend(settings: Settings, **kwargs: Any) -> Any:
        apps.append(create_app(settings, backend=backend, **kwargs))
        return apps[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INSITU_HOME", str(home))
        for name in ("INSITU_URL", "INSITU_TOKEN", "INSITU_DATABASE_URL"):
            patch.delenv(name, raising=False)
        patch.setattr(insitu_server, "create_app", with_fake_backend)
        settings = Settings(
            home=home,
            database_url=database[1],
            server={"port": 0},  # type: ignore[arg-type]
            dispatcher={  # type: ignore[arg-type]
                "poll_interval": 0.05,
                "id": f"fuzz-{uuid.uuid4().hex[:6]}",
                "max_running_jobs": 64,
            },
        )
        server = BackgroundServer(settings).start()
    # After the start, as uvicorn's logging setup drops handlers: the fuzzer's 5xx are
    # summed up in its findings, not printed as tracebacks one by one.
    tracebacks, logger = ServerTracebacks(), logging.getLogger("uvicorn.error")
    logger.addHandler(tracebacks)
    logger.propagate = False  # to uvicorn's handler, which prints them
    try:
        admin_token = settings.admin_token_path.read_text().strip()
        tokens, roots = _populate(server.url, admin_token, home.parent)
        submitted = _submit_jobs(server.url, tokens, code)
        _run_jobs(apps[0], backend, submitted)
        yield Target(
            database=database[0],
            url=server.url,
            schema=schemathesis.openapi.from_url(f"{server.url}/openapi.json"),
            tokens={"anonymous": None, **tokens},
            jobs=[j for ids in submitted.values() for j in ids],
            keepers={ids[1] for ids in submitted.values()},
            url_roots=[*roots, "999999"],
            bodies=_valid_bodies(home.parent),
            tracebacks=tracebacks,
        )
    finally:
        logger.removeHandler(tracebacks)
        logger.propagate = True
        server.stop()


@pytest.fixture(scope="module")
def tally(target: Target) -> Iterator[Tally]:
    """The run's figures, printed and (with INSITU_FUZZ_REPORT) written once every role ran."""
    yield target.tally
    operations = sum(1 for r in target.schema.get_all_operations() if r.ok())
    figures = target.tally.figures(operations)
    print(f"\nAPI fuzzing on {target.database}: {operations} operations, {EXAMPLES} examples each")
    print(_table(figures["roles"]))
    for finding in sorted(target.tally.findings.values(), key=lambda f: (-f.status, f.kind)):
        print(finding.summary())
    if REPORT:
        path = Path(REPORT)
        report = json.loads(path.read_text()) if path.exists() else {}
        report[target.database] = figures
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def _table(roles: dict[str, dict[str, Any]]) -> str:
    columns = ["requests", *KINDS.values(), "seconds"]
    lines = ["role         " + "".join(f"{c:>25}" for c in columns)]
    for role, row in roles.items():
        cells = [row["requests"], *(row["failures"].get(k, 0) for k in KINDS.values())]
        lines.append(f"{role:<13}" + "".join(f"{c:>25}" for c in [*cells, row["seconds"]]))
    return "\n".join(lines)


# -- the fuzzing ------------------------------------------------------------------------


def _request_of(case: Any) -> dict[str, Any]:
    """A reproducer without the token: method, path, query and body as generated."""
    query = urlencode(case.query or {}, doseq=True)
    body = None if isinstance(case.body, NotSet) else case.body
    return {
        "method": case.method.upper(),
        "path": case.formatted_path + (f"?{query}" if query else ""),
        **({"body": body if isinstance(body, (dict, list)) else repr(body)[:300]} if body else {}),
        **({"media_type": case.media_type} if body and case.media_type else {}),
    }


def _server_traceback(tracebacks: ServerTracebacks) -> str | None:
    """The exception the server logged for a 5xx (uvicorn logs it just after answering)."""
    try:
        return wait_for(tracebacks.take, timeout=2)
    except AssertionError:
        return None


def _record(target: Target, role: str, case: Any, response: Any) -> None:
    """Count one response and run the checks on it, keeping every failure (no shrinking)."""
    tally, status = target.tally, response.status_code
    tally.requests[role] += 1
    tally.statuses.setdefault(role, Counter())[status] += 1
    try:
        case.validate_response(response, checks=CHECKS)
        return
    except FailureGroup as group:
        failures = [f for f in group.exceptions if isinstance(f, Failure)]
    except Failure as single:
        failures = [single]
    if status >= 500:  # a 5xx is a server error; that it is undeclared too says nothing more
        failures = [f for f in failures if f.code != "ST103"]
    server_traceback = _server_traceback(target.tracebacks) if status >= 500 else None
    for failure in failures:
        kind = KINDS.get(failure.code, f"{failure.code} {type(failure).kind_title}")
        tally.failures.setdefault(role, Counter())[kind] += 1
        key = (case.operation.label, status, kind)
        if key not in tally.findings:
            tally.findings[key] = Finding(
                operation=case.operation.label,
                status=status,
                kind=kind,
                title=failure.title,
                message=failure.message[:600],
                request=_request_of(case),
                response=response.content[:400].decode(errors="replace"),
                server_traceback=server_traceback,
            )
        tally.findings[key].roles[role] += 1


def _strategy(target: Target, operation: Any, headers: dict[str, str]) -> Any:
    """Requests for one operation: valid and invalid, path values generated or real.

    A third of the examples name a real object (a job, dataset, course...) of the server.
    """
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    variants = [operation.as_strategy(mode, headers=headers) for mode in modes]
    real = [
        operation.as_strategy(mode, headers=headers, path_parameters=values)
        for mode, values in itertools.product(modes, target.path_values(operation))
    ]
    if real:  # sampled, then drawn: one_of would flatten them into many equal branches
        variants.append(st.sampled_from(real).flatmap(lambda strategy: strategy))
    return st.one_of(variants)


def _fuzz(target: Target, role: str, strategy: Any, examples: int) -> None:
    """Send ``examples`` requests drawn from ``strategy`` as ``role``, recording each."""
    session = requests.Session()

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=target.url, session=session, timeout=30)
        _record(target, role, case, response)

    if SEED is not None:
        run = hypothesis.seed(int(SEED))(run)
    try:
        run()
    finally:
        session.close()


@pytest.mark.parametrize("role", ROLES)
def test_every_operation_as_every_role(target: Target, tally: Tally, role: str) -> None:
    """No 5xx; every status declared; every response of the declared type and schema."""
    token = target.tokens[role]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    positive = schemathesis.GenerationMode.POSITIVE
    started = time.monotonic()
    for result in target.schema.get_all_operations():
        operation = result.ok()
        for values in target.path_values(operation):  # every real object, once
            strategy = operation.as_strategy(positive, headers=headers, path_parameters=values)
            _fuzz(target, role, strategy, 1)
        with requests.Session() as session:
            for case in _edge_cases(target, operation, headers):
                response = case.call(base_url=target.url, session=session, timeout=30)
                _record(target, role, case, response)
        _fuzz(target, role, _strategy(target, operation, headers), EXAMPLES)
    tally.seconds[role] = time.monotonic() - started
    found = tally.of(role)
    assert not found, f"{len(found)} distinct failures as {role}:\n" + "\n".join(
        f.summary() for f in found
    )
