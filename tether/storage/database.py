"""Engines for the two supported backends: SQLite (default) and PostgreSQL.

The engine is SQLAlchemy's sync engine, used only from worker threads (its
asyncio extension cannot run under trio). Accepted URLs:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``
  (``sqlite+pysqlite`` too); in-memory SQLite is refused, since readers and
  the writer use separate connections from separate threads;
* ``postgresql+psycopg://user@host:port/db`` (psycopg 3); ``postgresql://``
  and ``postgres://`` are normalised to psycopg.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = [
    "DEFAULT_SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_FILE_NAME",
    "WRITE_OPTION",
    "create_engine_for",
    "default_url",
    "normalise_url",
]

logger = logging.getLogger("tether.storage")

#: Name of the SQLite database in the server's data folder.
SQLITE_FILE_NAME = "tether.db"
#: How long a SQLite writer waits for another process's write lock.
DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 5_000
#: Bytes a SQLite WAL is truncated to when it restarts (store engines only).
SQLITE_JOURNAL_SIZE_LIMIT = 64 << 20
#: Execution option marking a connection that will write: on SQLite its
#: transaction starts with BEGIN IMMEDIATE (see ``_sqlite_begin``).
WRITE_OPTION = "tether_write"

_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}
_POSTGRES_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}
# One writer and a few readers (see tether.storage.sql), plus headroom for
# migrations; more connections would not help a group-committing writer.
_PG_POOL_SIZE = 8
_PG_MAX_OVERFLOW = 4
_POOL_TIMEOUT_S = 10
_PG_CONNECT_TIMEOUT_S = 10


def default_url(data_dir: Path) -> str:
    """The URL of the default database: SQLite ``tether.db`` in ``data_dir``.

    Args:
      data_dir: the server's data folder (created by ``create_engine_for``).

    Returns:
      An absolute ``sqlite:///`` URL.
    """
    return f"sqlite:///{(data_dir / SQLITE_FILE_NAME).resolve()}"


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL and select the driver tether uses.

    Returns:
      The URL with driver ``pysqlite`` or ``psycopg``.

    Raises:
      ValueError: the URL is unparsable, names another backend or driver, or
        is an in-memory SQLite database.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # make_url raises ArgumentError or ValueError
        raise ValueError(f"Expected a database URL, got {str(url)!r}: {exc}") from exc
    driver = parsed.drivername
    if driver in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    if driver in _SQLITE_DRIVERS:
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed):
            raise ValueError(
                "Expected a SQLite file URL (sqlite:///path/tether.db), got an in-memory "
                "database; use tether.storage.MemoryStore instead"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise ValueError(
        "Expected a sqlite:/// or postgresql+psycopg:// URL, "
        f"got driver {driver!r} in {parsed.render_as_string(hide_password=True)!r}"
    )


def create_engine_for(
    url: str | URL,
    *,
    sqlite_busy_timeout_ms: int = DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
    sqlite_autocheckpoint: bool = True,
) -> Engine:
    """Create the engine for a tether database.

    SQLite: WAL journal, ``synchronous=NORMAL`` (durable across process
    crashes; a power loss may drop the last commits but never corrupts),
    foreign keys on, a busy timeout, connections usable from any thread,
    transactions begun explicitly (writes with ``BEGIN IMMEDIATE``), and the
    database's parent folder created. PostgreSQL: psycopg 3, a bounded pool
    with pre-ping (so a restarted server or a killed backend costs one
    reconnect, not an error), a connect timeout.

    Both: statement parameters are hidden from logs and exception messages
    (they contain message bodies).

    Args:
      url: the database URL (see the module docstring).
      sqlite_busy_timeout_ms: how long a SQLite writer waits for a lock held
        by another connection before failing with "database is locked".
      sqlite_autocheckpoint: leave SQLite's automatic WAL checkpoints on. The
        store turns them off and checkpoints from a thread of its own, so
        that commits never pay for a checkpoint (see ``tether.storage.sql``);
        anyone else using the engine should leave this on, or the WAL grows
        until the last connection closes.

    Returns:
      A new engine; the caller disposes of it.

    Raises:
      ValueError: unsupported URL (see :func:`normalise_url`).
    """
    parsed = normalise_url(url)
    if parsed.drivername.startswith("sqlite"):
        return _sqlite_engine(parsed, sqlite_busy_timeout_ms, sqlite_autocheckpoint)
    return _postgres_engine(parsed)


def _sqlite_engine(url: URL, busy_timeout_ms: int, autocheckpoint: bool) -> Engine:
    assert url.database is not None  # checked by normalise_url
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # The engine is shared by the committer thread and reader threads;
        # each connection is used by one thread at a time (pool checkout).
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        pool_size=4,
        max_overflow=4,
        pool_timeout=_POOL_TIMEOUT_S,
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module's legacy
        # mode (which skips BEGIN before SELECT and SAVEPOINT) and emit our
        # own BEGIN in the "begin" hook below: SQLAlchemy's documented recipe.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("SQLite refused WAL mode (journal_mode=%s): %s", mode, url)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if not autocheckpoint:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
                # A restarted WAL is truncated back to this size.
                cursor.execute(f"PRAGMA journal_size_limit={SQLITE_JOURNAL_SIZE_LIMIT}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Any) -> None:
        # A writer takes the write lock up front: a deferred transaction that
        # reads and then writes cannot wait on the busy handler when another
        # process committed in between, it fails at once with SQLITE_BUSY.
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


def _postgres_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "tether"
    return create_engine(
        url,
        connect_args=connect_args,
        pool_size=_PG_POOL_SIZE,
        max_overflow=_PG_MAX_OVERFLOW,
        pool_timeout=_POOL_TIMEOUT_S,
        pool_pre_ping=True,
        # Recycle before typical server or proxy idle timeouts cut the link.
        pool_recycle=1800,
        hide_parameters=True,
    )
