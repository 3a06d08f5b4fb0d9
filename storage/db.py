"""Database engines and migrations for PostgreSQL (production) and SQLite (embedded).

* :func:`make_engine` builds an engine with the settings each backend needs to be safe under
  several writer processes: SQLite gets WAL, foreign keys (the masks/frames ``ON DELETE CASCADE``
  depends on them) and a busy timeout; PostgreSQL gets ``pool_pre_ping`` so a restarted server
  costs one reconnect rather than a failed batch.
* :func:`upgrade` runs the Alembic migrations to head with a programmatic config (no alembic.ini),
  under a PostgreSQL advisory lock so consumers starting together do not race on ``CREATE TABLE``.

Passwords may live in the URL or in ``LINEINSPECT_DB_PASSWORD`` / ``LINEINSPECT_DB_PASSWORD_FILE``;
TLS options (``sslmode``, ``sslrootcert``, ...) in the URL query go straight to libpq. URLs are
only ever logged through :func:`lineinspect.settings.redact_url`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from lineinspect.errors import ConfigError, ServiceUnavailable
from lineinspect.logs import kv
from lineinspect.settings import redact_url

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant naming "lineinspect schema migration" for pg_advisory_lock.
_MIGRATION_LOCK_KEY = 0x6C696E65_6D696772 & 0x7FFFFFFFFFFFFFFF
# Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE (take the write lock
# up front): a deferred transaction that reads and then writes can fail with "database is locked"
# at once, without honouring the busy timeout, when another process writes in between.
WRITE = {"lineinspect_write": True}


def resolve_url(url: str) -> URL:
    """Parse ``url`` and fill in the password from the environment when the URL has none."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {redact_url(url)!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise ConfigError(f"unsupported database URL {redact_url(url)!r}: use postgresql+psycopg:// or sqlite:///")
    if backend == "postgresql" and parsed.password is None:
        pw = env_secret("LINEINSPECT_DB_PASSWORD")
        if pw is not None:
            parsed = parsed.set(password=pw)
    return parsed


def env_secret(name: str) -> str | None:
    """``NAME`` or the first line of the file named by ``NAME_FILE`` (Docker/K8s secrets)."""
    if os.environ.get(name):
        return os.environ[name]
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").splitlines()[0].strip() if Path(path).stat().st_size else ""
        except OSError as exc:
            raise ConfigError(f"cannot read {name}_FILE {path!r}: {exc.strerror}") from None
    return None


def _sqlite_path(parsed: URL) -> Path | None:
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def make_engine(url: str, *, check: bool = True) -> Engine:
    """An engine for ``postgresql+psycopg://`` or ``sqlite:///`` URLs; ``check`` connects once now.

    Raises :class:`ServiceUnavailable` when PostgreSQL cannot be reached and :class:`ConfigError`
    when a SQLite file cannot be opened (the message names the path).
    """
    parsed = resolve_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed, url)
    else:
        engine = create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10)
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(select(1))
        except Exception:
            engine.dispose()
            raise
    return engine


def _sqlite_engine(parsed: URL, url: str) -> Engine:
    path = _sqlite_path(parsed)
    kw: dict = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    if path is None:
        kw["poolclass"] = StaticPool  # one shared in-memory database, not one per connection
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder for the SQLite database {path}: {exc.strerror}") from None
    engine = create_engine(parsed, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        try:
            if path is not None:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
            cur.execute("PRAGMA synchronous=FULL")  # a returned commit survives power loss
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "BEGIN IMMEDIATE" if conn.get_execution_options().get("lineinspect_write") else "BEGIN"
        conn.exec_driver_sql(mode)

    return engine


@contextmanager
def service_errors(url: str) -> Iterator[None]:
    """Turn "cannot connect" driver errors into :class:`ServiceUnavailable` / :class:`ConfigError`."""
    try:
        yield
    except (OperationalError, DBAPIError) as exc:
        if not _is_connection_error(exc):
            raise
        cause = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        if url.startswith("sqlite"):
            path = _sqlite_path(make_url(url))
            raise ConfigError(f"cannot open the SQLite database {path or url}: {cause}") from exc
        raise ServiceUnavailable("postgresql", url, redact_url(cause)) from exc


def _is_connection_error(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    needles = ("connection", "connect to server", "could not translate host", "unable to open database",
               "server closed", "terminating connection", "timeout expired", "password authentication",
               "does not exist")
    return isinstance(exc, OperationalError) and any(n in text for n in needles)


# SQLSTATE classes / codes of a store that is down, overloaded, failing over or not migrated yet:
# waiting is right, the frames are not at fault. 08 connection exception, 53 insufficient resources
# (53300 too many connections, disk full, out of memory), 57 operator intervention (57P01..57P03
# shutdown, 57014 statement timeout), 58 system error, 40 transaction rollback (serialization,
# deadlock), 55P03 lock not available, 25006 read-only transaction (a standby after failover),
# 42P01 / 42703 / 3F000 missing table / column / schema (a migration has not run yet).
_OUTAGE_SQLSTATE_PREFIXES = ("08", "53", "57", "58", "40", "55P03", "25006", "42P01", "42703", "3F000", "XX")
_OUTAGE_TEXT = ("database is locked", "database table is locked", "disk i/o error", "unable to open database",
                "database or disk is full", "no such table", "no such column", "connection", "server closed",
                "terminating connection", "timeout", "timed out", "could not connect", "the database system is",
                "too many clients", "too many connections", "shutting down", "starting up", "broken pipe")


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the store is unavailable (wait and retry the same batch), False when
    the rows being written caused it (bisect the batch and dead-letter the culprit).

    The one classifier the consumer uses. Outages: :class:`ServiceUnavailable`, connection
    refused / lost / invalidated, timeouts, server shutting down, too many connections, SQLite
    "database is locked" and the SQLSTATEs above. Everything else is a row's fault: SQLSTATE class
    22 (data exception: NUL byte, value too long, bad UTF-8, number out of range), 23 (integrity),
    42804 (type mismatch from an out-of-range int), SQLite binding / integrity errors and the
    ``ValueError`` / ``TypeError`` / ``OverflowError`` / ``UnicodeEncodeError`` raised while
    validating or binding a row."""
    from sqlalchemy.exc import DisconnectionError, StatementError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, (ServiceUnavailable, DisconnectionError, PoolTimeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if state:
            return str(state).startswith(_OUTAGE_SQLSTATE_PREFIXES)
        if isinstance(exc, OperationalError):  # SQLite, or psycopg without a server answer (connection level)
            text = str(exc.orig).lower()
            return any(n in text for n in _OUTAGE_TEXT) or type(exc.orig).__module__.startswith("psycopg")
        return False
    if isinstance(exc, StatementError):  # raised while binding parameters: the row's values
        return False
    return isinstance(exc, OSError)  # sockets, files: infrastructure, not data


def open_engine(url: str) -> Engine:
    """:func:`make_engine` with connection failures reported as service errors."""
    with service_errors(url):
        return make_engine(url)


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic config, built in code; ``connection`` is handed to ``env.py``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database at ``url`` to ``revision``; a no-op when it is already there.

    Returns the revision the database is at afterwards.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = open_engine(url)
    try:
        with service_errors(url), engine.connect() as conn:
            pg = conn.dialect.name == "postgresql"
            if pg:
                conn.execute(select(func.pg_advisory_lock(_MIGRATION_LOCK_KEY)))
                conn.commit()
            try:
                command.upgrade(alembic_config(conn), revision)
                conn.commit()
                current = MigrationContext.configure(conn).get_current_revision()
                conn.commit()
            finally:
                if pg:
                    conn.rollback()
                    conn.execute(select(func.pg_advisory_unlock(_MIGRATION_LOCK_KEY)))
                    conn.commit()
        log.info("database migrated", extra=kv(url=redact_url(url), revision=current))
        return current
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision stored in the database (``None`` when it was never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
