"""Engines, sessions and migrations for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidatePoolError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from insitu.errors import BackendError

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseUnavailable(BackendError):
    """The job database cannot be reached (down, restarting, or a wrong URL)."""

    code = "database_unavailable"


CONNECT_TIMEOUT = 10  # seconds to reach PostgreSQL before a request gives up (503, retry)
# A pooled PostgreSQL connection idle this long is pinged before use; one in steady use is
# not (a ping per checkout was one round trip in five of a status request under load).
PING_AFTER_IDLE = 1.0
OVERFLOW = 40  # connections a pool opens beyond its size in a burst (closed once returned)
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


def make_engine(url: str, connections: int = 20) -> Engine:
    """An engine for ``url`` keeping ``connections`` open; SQLite gets WAL mode and a busy
    timeout for concurrent use."""
    # The pool keeps a connection for every thread that works on the database at once (the
    # API's and the dispatcher's): a connection over the pool's size is closed when it is
    # returned, and under load that meant a new PostgreSQL connection (a process forked)
    # for most requests (profiled, docs/profile-api.md). Overflow is for bursts beyond it.
    pool = {"pool_size": connections, "max_overflow": OVERFLOW}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A connection that died with its server (a restart, a failover) is noticed at checkout
    # and replaced (_ping_if_idle); a connection found dead in use invalidates the whole pool;
    # an unreachable server fails a request in seconds.
    connect_args = (
        {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT}
    )
    engine = create_engine(url, connect_args=connect_args, **pool)
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _ping_if_idle(engine))
    return engine


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Any:
    """A pool checkout hook: ping a connection that sat idle, replace it if it is dead
    (and every connection pooled before it, as ``pool_pre_ping`` does)."""
    dialect = engine.dialect

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("checked_in")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return  # new, or in steady use
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError(str(exc)) from exc
            raise

    return checkout


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration bound to ``engine``, using the migrations shipped here."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def advisory_lock(connection: Connection, key: int) -> None:
    """On PostgreSQL, hold lock ``key`` until the transaction ends: processes that start
    together (API replicas) take turns. Nothing on SQLite, written by one process at a time."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def migrate(engine: Engine) -> None:
    """Bring the database schema up to the newest migration."""
    command.upgrade(alembic_config(engine), "head")


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, connections: int = 20) -> None:
        self.url = url
        self.engine = make_engine(url, connections)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads that write nothing skip BEGIN and ROLLBACK: two round trips of four.
        reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.readers = sessionmaker(reader, expire_on_commit=False)

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
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """A session for one unit of work; the caller commits, errors roll back.
        ``read_only``: each statement on its own, outside a transaction (never to write)."""
        session = (self.readers if read_only else self.sessions)()
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
