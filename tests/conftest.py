"""Test policy for tether's suite.

* Real I/O where the behaviour lives in I/O: WebSockets on loopback
  (127.0.0.1, port 0 so the kernel picks a free port), real SQLite files in a
  ``tmp_path``, the real PostgreSQL server for tests marked ``postgresql``.
  Fakes only in unit tests of pure logic.
* No sleeping to synchronize. Timer logic (heartbeats, grace periods, typing
  expiry) runs under trio's ``autojump_clock``; ordering between tasks uses
  ``trio.testing.wait_all_tasks_blocked`` or ``trio.testing.Sequencer``.
* Every I/O test is bounded with ``trio.fail_after`` so that a bug shows up as a
  failure, never as a hung suite; pytest's ``faulthandler_timeout`` is the
  last resort and dumps every stack.
* Warnings are errors (``filterwarnings = error`` in pyproject.toml).
* Performance figures are measured with ``tether bench``, never asserted here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import trio
import trio.testing
from sqlalchemy.pool import NullPool

from tether.storage.database import normalise_url

POSTGRES_URL = os.environ.get(
    "TETHER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> str:
    """URL of the PostgreSQL database the ``postgresql`` tests use."""
    return POSTGRES_URL


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    schema = f"tether_test_{secrets.token_hex(6)}"
    base = normalise_url(postgres_url)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = base.update_query_dict({"options": f"-csearch_path={schema}", "application_name": schema})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # Connections of a store that failed to close would block DROP.
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": schema},
            )
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def lazy_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 30 ms of real idleness.

    For tests that combine real I/O (sockets, SQLite in worker threads) with
    timers: the I/O completes in real time first, then heartbeats and grace
    periods pass in no wall time. Use it together with ``ticking``.
    """
    return trio.testing.MockClock(autojump_threshold=0.03)


@pytest.fixture
async def ticking(nursery: trio.Nursery) -> None:
    """A ticker for ``lazy_clock`` tests, so that one jump moves time by 2 s at most.

    Without it, a slow real operation (say, migrations at server start on a
    loaded machine) while no timer is pending would jump the clock straight
    to the test's ``fail_after`` deadline. Request it with ``lazy_clock``
    (pytest-trio takes the clock only from a synchronous fixture).
    """

    async def tick() -> None:
        while True:  # noqa: ASYNC110 - the point is to keep a timer pending
            await trio.sleep(2.0)

    nursery.start_soon(tick)
