"""The FastAPI application: routers, error handling, and the dispatcher's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from insitu import __version__
from insitu.api.changes import JobChanges
from insitu.api.limits import BodyLimit
from insitu.api.routes import (
    audit,
    bundles,
    courses,
    datasets,
    health,
    jobs,
    pipelines,
    plans,
    url_roots,
    users,
)
from insitu.api.schemas import ERROR_RESPONSES
from insitu.backends import Backend, make_backend
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database, unavailable
from insitu.db.models import User
from insitu.dispatcher import Dispatcher
from insitu.errors import AuthenticationFailed, InsituError, PermissionDenied
from insitu.services.auth import bootstrap_admin
from insitu.web import pages

log = logging.getLogger("insitu.api")
_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}
DATABASE_RETRY_AFTER = 2  # seconds a client waits before retrying when the database is down


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _audit_denial(db: Database, request: Request, exc: InsituError) -> None:
    """Record a refused request in the audit log, in a transaction of its own.

    Refusals are counted per caller and route (its template, not the ids in it), so
    a flood of them grows the table by at most a row per caller, route and hour.
    """
    route = request.scope.get("route")
    template = getattr(route, "path_format", None) or request.url.path
    if request.url.path.startswith("/v1/") and not template.startswith("/v1/"):
        template = "/v1" + template  # routers included under /v1 keep their own path
    try:
        with db.session() as session:
            user_id = getattr(request.state, "user_id", None)
            user = session.get(User, user_id) if user_id is not None else None
            queries.add_denial(
                session,
                user,
                f"{request.method} {template}"[:60],
                request.url.path[:500],
                exc.message[:1000],
            )
            session.commit()
    except Exception:  # the refusal stands even if the audit write fails
        log.exception("could not record a denied request in the audit log")


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    backend: Backend | None = None,
    run_dispatcher: bool = True,
) -> FastAPI:
    """The insitu API; with ``run_dispatcher`` it also runs jobs in the same process."""
    settings.ensure_home()
    # A connection for each API thread and each of asyncio's (the dispatcher's steps).
    connections = settings.server.threads + min(32, (os.cpu_count() or 1) + 4)
    database = db or Database(settings.resolved_database_url, connections)
    database.migrate()
    bootstrap_admin(database, settings)
    job_backend = backend or make_backend(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.server.threads
        app.state.changes.bind(asyncio.get_running_loop())
        task = None
        if run_dispatcher:
            app.state.dispatcher = Dispatcher(settings, database, job_backend)
            app.state.dispatcher.on_change = app.state.changes.changed
            task = asyncio.create_task(app.state.dispatcher.run(), name="insitu-dispatcher")
        try:
            yield
        finally:
            if task is not None:
                app.state.dispatcher.stop()
                await task
            await job_backend.close()

    app = FastAPI(
        title="insitu",
        version=__version__,
        description="Send the analysis to the data; get back only the reduced result.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.db, app.state.backend = settings, database, job_backend
    app.state.dispatcher = None
    app.state.changes = JobChanges()

    @app.exception_handler(InsituError)
    async def insitu_error(request: Request, exc: InsituError) -> Response:
        if isinstance(exc, (PermissionDenied, AuthenticationFailed)):
            await asyncio.to_thread(_audit_denial, database, request, exc)
        if request.url.path.startswith("/ui/"):  # a page: the error as a page
            return pages.error_page(request, exc)
        return JSONResponse(
            status_code=exc.status_code, content={"detail": exc.message, "error": exc.code}
        )

    @app.exception_handler(pages.SignIn)
    async def sign_in(_: Request, exc: pages.SignIn) -> Response:
        return pages.sign_in_redirect(exc)

    @app.exception_handler(SQLAlchemyTimeout)
    async def database_busy(_: Request, exc: SQLAlchemyTimeout) -> JSONResponse:
        log.warning("database connections exhausted: %s", exc)
        return JSONResponse(
            status_code=503,
            content={
                "detail": "the server is busy (all its database connections are in use); "
                "retry in a moment",
                "error": "busy",
            },
            headers={"Retry-After": "1"},
        )

    last_outage_log = [0.0]

    @app.exception_handler(DBAPIError)
    async def database_unavailable(request: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, DataError):  # a value PostgreSQL cannot store: the caller's to fix
            return JSONResponse(
                status_code=422,
                content={
                    "detail": "the request holds a value the database cannot store (a NUL "
                    "character in a text, or a number out of range); remove it and retry",
                    "error": "invalid_input",
                },
            )
        if not unavailable(exc):
            raise exc  # a fault of the server, not of the moment: a plain 500
        now = time.monotonic()
        if now - last_outage_log[0] > 10:  # one line per 10 s of an outage, not per request
            last_outage_log[0] = now
            log.warning("database unavailable (answering 503): %s", exc.orig)
        return JSONResponse(
            status_code=503,
            content={
                "detail": "the server cannot reach its database right now (it may be "
                f"restarting); retry in {DATABASE_RETRY_AFTER} s",
                "error": "database_unavailable",
            },
            headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = (
                "the request body could not be read as JSON (malformed, or nested too deep); "
                "send a JSON object as the API's documentation at /docs shows"
            )
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": detail, "error": _HTTP_CODES.get(exc.status_code, "error")},
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422, content={"detail": _validation_message(exc), "error": "invalid_input"}
        )

    app.add_middleware(
        BodyLimit, max_bytes=settings.limits.max_request_bytes, exempt=("/v1/bundles",)
    )
    app.include_router(health.router, responses=ERROR_RESPONSES)
    routers = (jobs, pipelines, plans, datasets, url_roots, bundles, users, audit, courses)
    for module in routers:
        app.include_router(module.router, prefix="/v1", responses=ERROR_RESPONSES)
    app.include_router(pages.router)
    app.mount("/ui/static", StaticFiles(directory=pages.HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/jobs", status_code=303)

    return app
