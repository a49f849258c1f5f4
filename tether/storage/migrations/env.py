"""Alembic environment for tether's schema.

There is no ``alembic.ini``: :mod:`tether.storage.migrate` builds the Alembic
``Config`` in code and passes an open connection (inside a transaction) in
``config.attributes["connection"]``, so migrations run on the engine the
server configured, with its pragmas and pool. Logging configuration is left
to the application (no ``fileConfig`` here).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tether.storage.models import Base


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "Expected a SQLAlchemy Connection in config.attributes['connection']; "
            "run migrations through tether.storage.migrate (or `tether db upgrade`)"
        )
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds tables.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("tether migrations run online only (SQL script output is not supported)")
_run()
