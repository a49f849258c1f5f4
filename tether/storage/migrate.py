"""Schema migrations (Alembic), run on server start and by ``tether db upgrade``.

These functions are synchronous and block on the database: call them from a
worker thread under trio (``open_store(..., migrate=True)`` does).

On PostgreSQL an upgrade holds a transaction-scoped advisory lock, so that
several nodes starting at once migrate one after the other instead of
racing to create the same tables; DDL is transactional on both backends, so
a failed upgrade leaves the schema at the previous revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from tether.storage.database import WRITE_OPTION, create_engine_for
from tether.storage.errors import translate_errors

__all__ = ["MIGRATIONS_DIR", "current_revision", "head_revision", "upgrade"]

#: The Alembic script directory (env.py, versions/).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# pg_advisory_xact_lock key: any constant shared by all tether processes
# ("tether" in ASCII).
_PG_MIGRATION_LOCK = 0x746574686572


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Explicit, or Alembic warns that it falls back to legacy path splitting.
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of tether knows.

    Returns:
      The head revision id (e.g. ``"0001"``).
    """
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships revisions
        raise RuntimeError(f"No migration revisions found in {MIGRATIONS_DIR}")
    return head


@contextmanager
def _engine(engine_or_url: Engine | str | URL) -> Iterator[Engine]:
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    engine = create_engine_for(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade(engine_or_url: Engine | str | URL, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``, in one transaction.

    Args:
      engine_or_url: an engine from ``create_engine_for`` (left open), or a
        URL (an engine is created and disposed of).
      revision: target revision id, or "head".

    Raises:
      StorageUnavailable: the database cannot be reached or is locked.
      ValueError: unsupported URL.
      alembic.util.CommandError: unknown revision.
    """
    with (
        _engine(engine_or_url) as engine,
        translate_errors(),
        engine.connect().execution_options(**{WRITE_OPTION: True}) as connection,
        connection.begin(),
    ):
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        command.upgrade(_config(connection), revision)


def current_revision(engine_or_url: Engine | str | URL) -> str | None:
    """The schema revision the database is at.

    Args:
      engine_or_url: as for :func:`upgrade`.

    Returns:
      The revision id, or None for a database never migrated.

    Raises:
      StorageUnavailable: the database cannot be reached.
    """
    with _engine(engine_or_url) as engine, translate_errors(), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
