"""The web UI's pages: server-rendered HTML over the same services as the REST API.

Signing in stores the user's API token in an HttpOnly, SameSite=Strict cookie; every page
then acts as that user, with the same checks as the API. Pages render whole on the server
(they work without JavaScript); a small script keeps the live parts current (job states,
progress, the log) through the REST API, which also accepts the cookie. Forms that change
something post back to these pages, which refuse a request from another site.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import yaml
from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from insitu import objectstore
from insitu.api.deps import SESSION_COOKIE, Caller, authenticate, wake_dispatcher
from insitu.api.schemas import DatasetPublic, JobPublic
from insitu.db import queries
from insitu.db.models import User, utcnow
from insitu.errors import AuthenticationFailed, InsituError, InvalidInput, PermissionDenied
from insitu.runtime.workspace import RESULTS_DIR
from insitu.services import access, courses, datasets, jobs
from insitu.services.auth import Role
from insitu.services.plans import plan_job
from insitu.services.quotas import parse_quota
from insitu.states import JobState
from insitu.units import format_duration, format_size
from insitu.web import previews

HERE = Path(__file__).parent
router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["size"] = lambda n: format_size(n) if n is not None else "-"
templates.env.filters["duration"] = lambda s: format_duration(s) if s is not None else "-"
templates.env.filters["quota"] = lambda q: parse_quota(q).describe()
templates.env.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"
T = TypeVar("T")
SESSION_DAYS = 14  # a sign-in lasts this long (the token itself may end sooner)
PRIVATE_CACHE = {"Cache-Control": "private, max-age=3600"}  # pictures: the user's browser only
EXAMPLE_SPEC = """\
dataset: {dataset}
analysis:
  entrypoint: ophys_analyses.projection:mean_projection
select:
  t: [0, 100]
resources:
  workers: 1
"""


class SignIn(Exception):
    """The page needs a signed-in user: go to the sign-in page, then back."""

    def __init__(self, back: str) -> None:
        self.back = back


def sign_in_redirect(exc: SignIn) -> RedirectResponse:
    return RedirectResponse(f"/ui/login?next={quote(exc.back)}", status_code=303)


def error_page(request: Request, exc: InsituError) -> Response:
    """An error on a page, as a page that says what went wrong."""
    if isinstance(exc, AuthenticationFailed):
        return sign_in_redirect(SignIn(request.url.path))
    return templates.TemplateResponse(
        request, "error.html", {"message": exc.message, "user": None}, status_code=exc.status_code
    )


def _same_site(request: Request) -> None:
    """Refuse a form posted from another site: its Origin (or Referer) must name this host,
    as the request reached it or as the public URL (INSITU_URL, behind a proxy) says."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    ours = {request.url.netloc, urlsplit(request.app.state.settings.url).netloc}
    if not origin or urlsplit(origin).netloc not in ours:
        raise PermissionDenied("this form must be sent from insitu's own pages")


async def _as_user(request: Request, work: Callable[[Session, User], T]) -> T:
    """``work(session, user)`` for the signed-in user, on a worker thread."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        here = str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        raise SignIn(here if request.method == "GET" else "/ui/jobs")
    return await Caller(request, token).run(work)


def _page(request: Request, name: str, user: User, **context: Any) -> HTMLResponse:
    nav = [("Jobs", "/ui/jobs"), ("Plan a job", "/ui/plan"), ("Datasets", "/ui/datasets")]
    if user.role in (Role.INSTRUCTOR.value, Role.ADMIN.value):
        nav += [("Courses", "/ui/courses"), ("Audit", "/ui/audit")]
    status_code = context.pop("status_code", 200)
    page = templates.TemplateResponse(
        request, name, {"user": user, "nav": nav, "path": request.url.path, **context},
        status_code=status_code,
    )  # fmt: skip
    page.headers["Cache-Control"] = "no-store"  # private pages stay out of caches
    return page


# -- signing in -------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/ui/jobs") -> HTMLResponse:
    return templates.TemplateResponse(
        request, "login.html", {"user": None, "next": next, "error": None}
    )


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form(...), next: str = Form("/ui/jobs")) -> Response:
    """Check the token; keep it in the session cookie; go where the user was going."""
    _same_site(request)

    def check() -> User:
        with request.app.state.db.session() as session:
            try:
                return authenticate(request, session, token.strip())
            except AuthenticationFailed as exc:  # audited as the API's refusals are
                session.rollback()
                queries.add_denial(session, None, "POST /ui/login", "/ui/login", exc.message)
                session.commit()
                raise

    try:
        await run_in_threadpool(check)
    except AuthenticationFailed as exc:
        return templates.TemplateResponse(
            request, "login.html", {"user": None, "next": next, "error": exc.message},
            status_code=401,
        )  # fmt: skip
    target = next if next.startswith("/ui/") else "/ui/jobs"  # never off this site
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, token.strip(), max_age=SESSION_DAYS * 86400, httponly=True,
        samesite="strict", path="/",
        secure="https" in (request.url.scheme, urlsplit(request.app.state.settings.url).scheme),
    )  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    _same_site(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- jobs -------------------------------------------------------------------------------


def _my_jobs(session: Session, user: User, limit: int = 100) -> list[JobPublic]:
    rows, _ = queries.list_jobs(session, owner_id=user.id, states=[], limit=limit, offset=0)
    return [JobPublic.of(j) for j in rows]


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, rows: bool = Query(False)) -> HTMLResponse:
    """Your jobs, live; ``rows``: only the table's rows (what the page's script refreshes)."""
    user, found = await _as_user(request, lambda s, u: (u, _my_jobs(s, u)))
    active = any(not JobState(j.state).terminal for j in found)
    name = "_job_rows.html" if rows else "jobs.html"
    return _page(request, name, user, jobs=found, active=active)


def _result_bytes(request: Request, job: Any, record: dict[str, Any]) -> bytes | None:
    """A result's bytes as the server counted them when the job ended (never more), or
    None when it is too large to be opened for a page."""
    size = int(record["size"])
    if size > previews.VIEW_BYTES:
        return None
    workspace = objectstore.workspace(request.app.state.settings, job.workspace)
    with workspace.open(f"{RESULTS_DIR}/{record['filename']}") as handle:
        return bytes(handle.read(size))


def _result_views(request: Request, job: Any) -> list[dict[str, Any]]:
    """Each result with what shows it: a picture, an array's summary, a table's head, a
    value; a result that cannot be shown (too large, unreadable) keeps its download link."""
    views = []
    for record in job.results:
        filename = record["filename"]
        view: dict[str, Any] = {**record, "kind": "file"}
        view["url"] = f"/v1/jobs/{job.id}/results/{quote(filename)}"
        try:
            if filename.endswith(".png"):
                view["kind"] = "image"
            elif filename.endswith((".npy", ".parquet", ".json")):
                data = _result_bytes(request, job, record)
                if data is None:
                    view["note"] = "too large to show here; download it"
                elif filename.endswith(".npy"):
                    summary = previews.summarize_array(data)
                    view.update(kind="array", summary=summary)
                    if summary.thumbnail is not None:  # fetched by its own route
                        view["thumbnail"] = f"/ui/jobs/{job.id}/thumbnails/{quote(filename)}"
                elif filename.endswith(".parquet"):
                    columns, head, count = previews.table_head(data)
                    view.update(kind="table", columns=columns, head=head, rows=count)
                else:
                    view.update(kind="json", text=_pretty_json(data))
        except Exception:  # a file the job wrote that is not what its name says
            view.update(kind="file", note="cannot be shown here; download it")
        views.append(view)
    return views


def _pretty_json(data: bytes) -> str:
    try:
        return json.dumps(json.loads(data), indent=2)[:20000]
    except ValueError:
        return data.decode("utf-8", errors="replace")[:20000]


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str, part: str | None = None) -> HTMLResponse:
    """One job: state, timeline, log, results; ``part=status``: only its live header."""

    def work(session: Session, user: User) -> dict[str, Any]:
        job = jobs.visible_job(session, user, job_id)
        context: dict[str, Any] = {"user": user, "job": JobPublic.of(job), "events": job.events}
        if part != "status":
            shown = _result_views(request, job) if job.state == JobState.SUCCEEDED.value else []
            context["results"] = shown
            context["spec_yaml"] = yaml.safe_dump(job.spec, sort_keys=False)
            if shown:  # results shown on a page have left the platform: audited as such
                keys = ", ".join(v["key"] for v in shown if v["kind"] != "file")
                if keys:
                    queries.add_audit(session, user, "result.view", job.id, detail=keys)
                    session.commit()
        return context

    context = await _as_user(request, work)
    user = context.pop("user")
    terminal = JobState(context["job"].state).terminal
    name = "_job_status.html" if part == "status" else "job.html"
    return _page(request, name, user, terminal=terminal, **context)


@router.get("/jobs/{job_id}/thumbnails/{filename}")
async def thumbnail(request: Request, job_id: str, filename: str) -> Response:
    """A small picture of a 2-D array result."""

    def work(session: Session, user: User) -> bytes:
        job = jobs.visible_job(session, user, job_id)
        record = jobs.result_file(job, filename)
        if not filename.endswith(".npy"):
            raise InvalidInput(f"{filename} is not an array result")
        data = _result_bytes(request, job, record)
        if data is None:
            raise InvalidInput(f"{filename} is too large for a thumbnail; download it")
        try:
            image = previews.summarize_array(data).thumbnail
        except ValueError:
            raise InvalidInput(f"{filename} is not a readable array; download it") from None
        if image is None:
            raise InvalidInput(f"{filename} is not a 2-D array")
        jobs.record_download(session, user, job, {**record, "size": len(image)}, presigned=False)
        session.commit()
        return image

    image = await _as_user(request, work)
    return Response(image, media_type="image/png", headers=PRIVATE_CACHE)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str) -> RedirectResponse:
    _same_site(request)
    await _as_user(request, lambda s, u: jobs.cancel(s, u, job_id))
    wake_dispatcher(request)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


# -- plan, then submit --------------------------------------------------------------------


@router.get("/plan", response_class=HTMLResponse)
async def plan_form(request: Request, dataset: str | None = None) -> HTMLResponse:
    def work(session: Session, user: User) -> tuple[User, str]:
        names = [d.name for d in datasets.readable(session, user)]
        chosen = dataset if dataset in names else (names[0] if names else "DATASET")
        return user, EXAMPLE_SPEC.format(dataset=chosen)

    user, text = await _as_user(request, work)
    return _page(request, "plan.html", user, spec_text=text, plan=None, error=None)


@router.post("/plan", response_class=HTMLResponse)
async def plan(request: Request, spec_text: str = Form(""), action: str = Form("plan")) -> Response:
    """Plan the spec (and show it on the data), or submit it."""
    _same_site(request)
    settings, backend = request.app.state.settings, request.app.state.backend

    def work(session: Session, user: User) -> tuple[User, Any, str | None]:
        try:  # the text as the API takes it: parsed with the spec's own limits
            if action == "submit":
                job = jobs.submit(session, settings, user, spec_text, backend=backend)
                return user, job.id, None
            return user, plan_job(session, settings, user, spec_text, backend=backend), None
        except InsituError as exc:
            if isinstance(exc, AuthenticationFailed):
                raise
            session.rollback()
            session.refresh(user)  # still shown as signed in on the page
            return user, None, exc.message

    user, outcome, error = await _as_user(request, work)
    if action == "submit" and error is None:
        wake_dispatcher(request)
        return RedirectResponse(f"/ui/jobs/{outcome}", status_code=303)
    return _page(request, "plan.html", user, spec_text=spec_text, plan=outcome, error=error,
                 status_code=422 if error else 200)  # fmt: skip


# -- datasets ---------------------------------------------------------------------------


@router.get("/datasets", response_class=HTMLResponse)
async def datasets_page(request: Request) -> HTMLResponse:
    user, found = await _as_user(
        request, lambda s, u: (u, [DatasetPublic.of(d) for d in datasets.readable(s, u)])
    )
    return _page(request, "datasets.html", user, datasets=found)


@router.get("/datasets/{name:path}/preview.png")
async def dataset_preview(request: Request, name: str, array: str | None = None) -> Response:
    """The middle plane of the array's coarsest level, as a picture (kept once made)."""

    def work(session: Session, user: User) -> bytes:
        dataset = datasets.visible(session, user, name)
        path = array if array is not None else dataset.info["default_array"]
        return previews.dataset_preview(request.app.state.settings, dataset, path)

    image = await _as_user(request, work)
    return Response(image, media_type="image/png", headers=PRIVATE_CACHE)


@router.get("/datasets/{name:path}", response_class=HTMLResponse)
async def dataset_page(request: Request, name: str) -> HTMLResponse:
    user, found = await _as_user(
        request, lambda s, u: (u, DatasetPublic.of(datasets.visible(s, u, name)))
    )
    return _page(request, "dataset.html", user, dataset=found)


# -- courses and audit ------------------------------------------------------------------


@router.get("/courses", response_class=HTMLResponse)
async def courses_page(request: Request) -> HTMLResponse:
    def work(session: Session, user: User) -> tuple[User, list[dict[str, Any]]]:
        access.require_role(user, (Role.INSTRUCTOR, Role.ADMIN), "see courses")
        found = []
        for course, count in courses.listing(session, user):
            _, rows = courses.report(session, user, course.name)
            found.append({"course": course, "participants": count, "rows": rows})
        return user, found

    user, found = await _as_user(request, work)
    return _page(request, "courses.html", user, courses=found, now=utcnow())


@router.post("/courses/{name}/extend")
async def extend_course(request: Request, name: str, days: int = Form(7)) -> RedirectResponse:
    _same_site(request)
    if not 1 <= days <= 365:
        raise InvalidInput("extend a course by 1 to 365 days")

    def work(session: Session, user: User) -> None:
        courses.extend(session, user, name, timedelta(days=days))

    await _as_user(request, work)
    return RedirectResponse("/ui/courses", status_code=303)


@router.post("/courses/{name}/close")
async def close_course(request: Request, name: str) -> RedirectResponse:
    _same_site(request)
    await _as_user(request, lambda s, u: courses.close(s, u, name))
    wake_dispatcher(request)
    return RedirectResponse("/ui/courses", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request) -> HTMLResponse:
    """Admins: every audited action. Dataset owners: what was done with their datasets."""

    def work(session: Session, user: User) -> tuple[User, list[Any], str]:
        if access.is_admin(user):
            rows, _ = queries.list_audit(session, limit=200)
            return user, list(rows), "every user's actions"
        owned = [d.name for d in datasets.readable(session, user) if d.owner_id == user.id]
        rows = queries.audit_of_datasets(session, owned, limit=200)
        scope = f"what was done with your datasets ({', '.join(owned) or 'none'})"
        return user, list(rows), scope

    user, rows, scope = await _as_user(request, work)
    return _page(request, "audit.html", user, rows=rows, scope=scope)


def json_script(value: Any) -> str:
    """``value`` as JSON safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c")


templates.env.filters["json_script"] = json_script
