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

import pytest

POSTGRES_URL = os.environ.get(
    "TETHER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> str:
    """URL of the PostgreSQL database the ``postgresql`` tests use."""
    return POSTGRES_URL
