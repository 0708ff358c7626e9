"""Engines, sessions and migrations for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from insitu.errors import BackendError

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseUnavailable(BackendError):
    """The job database cannot be reached (down, restarting, or a wrong URL)."""

    code = "database_unavailable"


CONNECT_TIMEOUT = 10  # seconds to reach PostgreSQL before a request gives up (503, retry)
# SQLite's operational errors that pass (a lock, a file briefly missing); the rest, such as
# "no such table", are faults of the server and stay errors.
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot serve now (down, restarting, unreachable,
    busy), so that the same request may succeed later, rather than that it is wrong."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if isinstance(exc.orig, sqlite3.Error):
        message = str(exc.orig).lower()
        return isinstance(exc, OperationalError) and any(m in message for m in _SQLITE_TRANSIENT)
    return isinstance(exc, (OperationalError, InterfaceError))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and a busy timeout for concurrent use."""
    # The API serves sync endpoints from a pool of 40 threads, next to the dispatcher's
    # threads: the connection pool must not be what makes 60 clients wait (measured).
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=20,
            max_overflow=60,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A connection that died with its server (a restart, a failover) is noticed at checkout
    # and replaced (pool_pre_ping); an unreachable server fails a request in seconds.
    connect_args = (
        {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT}
    )
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=50, connect_args=connect_args
    )


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration bound to ``engine``, using the migrations shipped here."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the database schema up to the newest migration."""
    command.upgrade(alembic_config(engine), "head")


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Create or upgrade the schema; a database that cannot be reached says so plainly."""
        try:
            migrate(self.engine)
        except DBAPIError as exc:
            if not unavailable(exc):
                raise
            where = make_url(self.url).render_as_string(hide_password=True)
            raise DatabaseUnavailable(
                f"cannot reach the database at {where} ({str(exc.orig).strip().splitlines()[0]}); "
                "start it, or point INSITU_DATABASE_URL at one that runs, then try again"
            ) from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for one unit of work; the caller commits, errors roll back."""
        session = self.sessions()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def dispose(self) -> None:
        self.engine.dispose()
