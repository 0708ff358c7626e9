"""The FastAPI application: routers, error handling, and the dispatcher's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout

from insitu import __version__
from insitu.api.routes import audit, bundles, courses, datasets, health, jobs, users
from insitu.backends import Backend, make_backend
from insitu.config import Settings
from insitu.db import queries
from insitu.db.engine import Database
from insitu.db.models import User
from insitu.dispatcher import Dispatcher
from insitu.errors import AuthenticationFailed, InsituError, PermissionDenied
from insitu.services.auth import bootstrap_admin

log = logging.getLogger("insitu.api")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _audit_denial(db: Database, request: Request, exc: InsituError) -> None:
    """Record a refused request in the audit log, in a transaction of its own."""
    try:
        with db.session() as session:
            user_id = getattr(request.state, "user_id", None)
            user = session.get(User, user_id) if user_id is not None else None
            queries.add_audit(
                session,
                user,
                f"{request.method} {request.url.path}",
                request.url.path,
                outcome="denied",
                detail=exc.message,
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
    database = db or Database(settings.resolved_database_url)
    database.migrate()
    bootstrap_admin(database, settings)
    job_backend = backend or make_backend(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if run_dispatcher:
            app.state.dispatcher = Dispatcher(settings, database, job_backend)
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

    @app.exception_handler(InsituError)
    async def insitu_error(request: Request, exc: InsituError) -> JSONResponse:
        if isinstance(exc, (PermissionDenied, AuthenticationFailed)):
            await asyncio.to_thread(_audit_denial, database, request, exc)
        return JSONResponse(
            status_code=exc.status_code, content={"detail": exc.message, "error": exc.code}
        )

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

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422, content={"detail": _validation_message(exc), "error": "invalid_input"}
        )

    app.include_router(health.router)
    routers = (jobs, datasets, bundles, users, audit, courses)
    for module in routers:
        app.include_router(module.router, prefix="/v1")
    return app
