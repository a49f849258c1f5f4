"""Fixtures for the storage unit tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tether.storage.database import normalise_url


@pytest.fixture
def pg_admin(postgres_url: str) -> Iterator[sa.Engine]:
    """An autocommit engine on the test PostgreSQL database (no pool)."""
    engine = sa.create_engine(
        normalise_url(postgres_url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def pg_schema_url(postgres_url: str, pg_admin: sa.Engine) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test.

    The URL's application_name is the schema name, so a test can find (and
    terminate) exactly its own backends among other users of the server.
    """
    schema = f"tether_test_{secrets.token_hex(6)}"
    with pg_admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = normalise_url(postgres_url).update_query_dict(
        {"options": f"-csearch_path={schema}", "application_name": schema}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with pg_admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": schema},
            )
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
