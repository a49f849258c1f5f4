"""Engine creation: URL normalisation, SQLite pragmas and transactions."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from tether.storage.database import (
    WRITE_OPTION,
    create_engine_for,
    default_url,
    normalise_url,
)


def test_default_url_is_absolute_sqlite_in_data_dir(tmp_path: Path) -> None:
    assert default_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/tether.db"


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db?options=-csearch_path%3Dx", "postgresql+psycopg"),
        ("sqlite:///rel/path.db", "sqlite+pysqlite"),
        ("sqlite+pysqlite:////abs/path.db", "sqlite+pysqlite"),
    ],
)
def test_normalise_url(url: str, driver: str) -> None:
    normalised = normalise_url(url)
    assert normalised.drivername == driver
    assert normalised.database == sa.make_url(url).database
    assert normalised.query == sa.make_url(url).query


def test_unsupported_urls() -> None:
    with pytest.raises(
        ValueError,
        match=r"^Expected a sqlite:/// or postgresql\+psycopg:// URL, got driver "
        r"'mysql\+pymysql' in 'mysql\+pymysql://u:\*\*\*@h/db'$",
    ):
        normalise_url("mysql+pymysql://u:secret@h/db")
    with pytest.raises(ValueError, match=r"^Expected .* got driver 'postgresql\+psycopg2'"):
        normalise_url("postgresql+psycopg2://u@h/db")
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match=r"use tether\.storage\.MemoryStore instead$"):
            normalise_url(memory)
    with pytest.raises(ValueError, match=r"^Expected a database URL, got 'not a url'"):
        normalise_url("not a url")


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "tether.db"
    engine = create_engine_for(f"sqlite:///{path}", sqlite_busy_timeout_ms=1234)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 1234
        assert path.parent.is_dir()
        assert engine.pool.status()  # a real pool, not a per-thread singleton
    finally:
        engine.dispose()


def test_sqlite_connections_work_from_other_threads(tmp_path: Path) -> None:
    engine = create_engine_for(default_url(tmp_path))
    errors: list[BaseException] = []

    def use() -> None:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1").scalar()
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        with engine.connect() as connection:  # created on this thread...
            connection.exec_driver_sql("SELECT 1")
        thread = threading.Thread(target=use)  # ...reused on another one
        thread.start()
        thread.join()
        assert errors == []
    finally:
        engine.dispose()


def test_sqlite_write_transactions_take_the_lock_up_front(tmp_path: Path) -> None:
    """A write transaction holds the write lock from BEGIN, not from its first write."""
    engine = create_engine_for(default_url(tmp_path), sqlite_busy_timeout_ms=0)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        other = sqlite3.connect(tmp_path / "tether.db", isolation_level=None, timeout=0)
        try:
            with (
                engine.connect().execution_options(**{WRITE_OPTION: True}) as connection,
                connection.begin(),
            ):
                connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
                # Not written anything yet, but the lock is ours already.
                with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                    other.execute("BEGIN IMMEDIATE")
            # Read transactions do not lock out writers.
            with engine.connect() as connection, connection.begin():
                connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
        finally:
            other.close()
    finally:
        engine.dispose()


def test_sqlite_savepoints_roll_back_inside_the_transaction(tmp_path: Path) -> None:
    """The BEGIN recipe makes SAVEPOINT part of the enclosing transaction."""
    engine = create_engine_for(default_url(tmp_path))
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            savepoint = connection.begin_nested()
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
            savepoint.rollback()
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT x FROM t").scalars().all() == [1]
    finally:
        engine.dispose()


@pytest.mark.postgresql
def test_postgres_engine_settings(pg_schema_url: str) -> None:
    engine = create_engine_for(pg_schema_url.replace("postgresql+psycopg://", "postgresql://", 1))
    try:
        assert engine.dialect.driver == "psycopg"
        assert engine.pool._pre_ping
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
            search_path = str(connection.exec_driver_sql("SHOW search_path").scalar())
            assert search_path.startswith("tether_test_")
    finally:
        engine.dispose()
