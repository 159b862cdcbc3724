"""Database engines and schema migrations for the ground store: SQLite by default (one file,
no set-up), PostgreSQL by URL for a fleet (several ingest instances on one database).

`upgrade(url)` brings a database to the newest schema with Alembic (the revisions in
``ground/migrations/versions``, shipped with the package); every process that opens the store
calls it at start. Two processes starting at once are safe: on PostgreSQL the migration runs
under a transaction-scoped advisory lock, on SQLite inside a ``BEGIN IMMEDIATE`` transaction
(SQLite's DDL is transactional), so the second waits and then finds nothing to do.

Durability, which the ingest relies on (it acknowledges a message to the broker only once
the transaction holding its records has committed): SQLite runs in WAL mode with
``synchronous=FULL``, so a committed transaction survives a power cut; PostgreSQL's own
defaults (``synchronous_commit=on``, fsync) do the same.

SQLite and several writers: Python's sqlite3 would start a transaction as a reader and
upgrade it to a writer at the first INSERT, which fails at once (SQLITE_BUSY, no waiting)
when another connection wrote in between. So the driver's own transaction handling is
turned off and every transaction is begun explicitly: ``BEGIN IMMEDIATE`` (take the write
lock up front, waiting up to `SQLITE_BUSY_TIMEOUT_MS` for it) on a `writer` engine,
``BEGIN`` (a reader, never blocked by writers in WAL mode) otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: How long a SQLite writer waits for another to finish before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: The key of the PostgreSQL advisory lock migrations hold ("SkyCourie" in ASCII, any
#: constant of our own would do).
MIGRATION_LOCK_KEY = 0x536B79436F757269
#: The execution option that makes a SQLite transaction begin as a writer.
WRITER_OPTION = "skycourier_writer"


class DatabaseUrlError(ValueError):
    """A database URL the ground store cannot use; the message says why and what works."""


def default_url() -> str:
    """The SQLite file a ground store uses when given no URL:
    ``$XDG_DATA_HOME/skycourier/ground.db`` (``~/.local/share/skycourier/ground.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'skycourier' / 'ground.db'}"


def parse_url(url: str | URL) -> URL:
    """`url` checked and completed: ``postgresql://`` gets the psycopg (version 3) driver,
    a SQLite file's folder is created. DatabaseUrlError for anything else, naming it."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(f"database URL {_safe(url)}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite" and parsed.drivername != "sqlite+pysqlite":
            raise DatabaseUrlError(
                f"database URL {_safe(url)}: use sqlite:///PATH (the standard sqlite3 driver)"
            )
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseUrlError(
                f"database URL {_safe(url)}: an in-memory SQLite database is lost with its "
                "connection; name a file (sqlite:///PATH)"
            )
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return parsed
    if backend == "postgresql":
        if parsed.drivername not in ("postgresql", "postgresql+psycopg"):
            raise DatabaseUrlError(
                f"database URL {_safe(url)}: the ground store talks to PostgreSQL with "
                "psycopg 3 (postgresql:// or postgresql+psycopg://)"
            )
        return parsed.set(drivername="postgresql+psycopg")
    raise DatabaseUrlError(
        f"database URL {_safe(url)}: unsupported database {backend!r} (use sqlite:///PATH "
        "or postgresql://USER:PASSWORD@HOST/DATABASE)"
    )


def _safe(url: str | URL) -> str:
    """`url` for a message, its password hidden."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return repr(url.split("@")[-1]) if "@" in url else repr(url)


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for `url` (see `parse_url`) with the durability and locking described in
    the module doc. `kwargs` go to SQLAlchemy's `create_engine` (pool sizes and the like)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "postgresql":
        return sa_create_engine(parsed, pool_pre_ping=True, **kwargs)
    engine = sa_create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we say BEGIN ourselves (module doc)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        writer = connection.get_execution_options().get(WRITER_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """`engine` (same pool) whose transactions begin as writers (``BEGIN IMMEDIATE`` on
    SQLite; no difference on PostgreSQL)."""
    return engine.execution_options(**{WRITER_OPTION: True})


def alembic_config() -> Config:
    """Alembic's configuration for the shipped migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(target: str | URL | Engine, revision: str = "head") -> None:
    """Bring the database at `target` (a URL, or an engine from `create_engine`) to the
    newest schema (or to `revision`, for testing an upgrade path); nothing to do when it is
    there already. Safe to call from several processes at once (module doc)."""
    engine = target if isinstance(target, Engine) else create_engine(target)
    try:
        with writer(engine).begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if engine is not target:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None before the first `upgrade`."""
    with engine.connect() as connection:
        has_table = engine.dialect.has_table(connection, "alembic_version")
        if not has_table:
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
