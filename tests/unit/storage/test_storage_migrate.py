"""Alembic migrations: the migrated schema is the models' schema, on both backends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tether.storage import StorageError, StorageUnavailable, default_url, open_store
from tether.storage.database import create_engine_for
from tether.storage.migrate import _config, current_revision, head_revision, upgrade
from tether.storage.models import Base

TABLES = {
    "users",
    "rooms",
    "memberships",
    "messages",
    "device_receipts",
    "sessions",
    "alembic_version",
}


def _schema_diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff: list[object] = compare_metadata(context, Base.metadata)
        return diff


def _check_upgrade(url: str) -> None:
    assert head_revision() == "0003"
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == "0003"
    upgrade(url)  # idempotent
    engine = create_engine_for(url)
    try:
        assert set(sa.inspect(engine).get_table_names()) == TABLES
        assert _schema_diff(engine) == []
        # downgrade() of every revision really drops everything it created.
        with engine.begin() as connection:
            command.downgrade(_config(connection), "base")
        assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
        assert current_revision(engine) is None
        upgrade(engine)  # and the engine stays usable by the caller
        assert current_revision(engine) == "0003"
    finally:
        engine.dispose()


def _check_sessions_revision(url: str) -> None:
    """0001 -> 0002 adds the sessions table and keeps existing data; and back."""
    upgrade(url, "0001")
    engine = create_engine_for(url)
    try:
        assert "sessions" not in sa.inspect(engine).get_table_names()
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO users (id, name, created_at_ms) VALUES ('alice', 'A', 1)")
            )
        upgrade(engine, "0002")
        assert current_revision(engine) == "0002"
        inspector = sa.inspect(engine)
        assert {i["name"] for i in inspector.get_indexes("sessions")} == {
            "ix_sessions_user_id",
            "ix_sessions_updated_at_ms",
        }
        # No foreign key to users: a session of an unknown user can be stored.
        assert inspector.get_foreign_keys("sessions") == []
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO sessions (id, user_id, device_id, watching, updated_at_ms) "
                    "VALUES ('s1', 'ghost', 'phone', '[]', 1)"
                )
            )
            assert connection.execute(sa.text("SELECT id FROM users")).scalars().all() == ["alice"]
        with engine.begin() as connection:
            command.downgrade(_config(connection), "0001")
        assert set(sa.inspect(engine).get_table_names()) == TABLES - {"sessions"}
        assert current_revision(engine) == "0001"
    finally:
        engine.dispose()


def _users_columns(engine: sa.Engine) -> list[str]:
    return [column["name"] for column in sa.inspect(engine).get_columns("users")]


def _check_online_revision(url: str) -> None:
    """0002 -> 0003 adds users.online_devices (0 for existing users); and back."""
    upgrade(url, "0002")
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO users (id, name, created_at_ms, last_seen_ms) "
                    "VALUES ('alice', 'A', 1, 5), ('bob', 'B', 2, NULL)"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO rooms (id, kind, name, owner_id, created_at_ms) "
                    "VALUES ('r1', 'public', 'R', 'alice', 3)"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO memberships (room_id, user_id, role, joined_at_ms) "
                    "VALUES ('r1', 'alice', 'owner', 3), ('r1', 'bob', 'member', 3)"
                )
            )
        assert "online_devices" not in _users_columns(engine)
        upgrade(engine)
        assert current_revision(engine) == "0003"
        inspector = sa.inspect(engine)
        (index,) = [
            i for i in inspector.get_indexes("users") if i["name"] == "ix_users_online_devices"
        ]
        assert index["column_names"] == ["online_devices"]
        # Partial: the predicate as the database reports it back.
        where = index.get("dialect_options", {}).get(f"{engine.dialect.name}_where")
        assert where is not None, index
        assert "online_devices > 0" in str(where), index
        select_users = sa.text(
            "SELECT id, name, created_at_ms, last_seen_ms, online_devices FROM users ORDER BY id"
        )
        with engine.begin() as connection:
            # Existing users are offline; their other columns are untouched.
            assert connection.execute(select_users).all() == [
                ("alice", "A", 1, 5, 0),
                ("bob", "B", 2, None, 0),
            ]
            connection.execute(sa.text("UPDATE users SET online_devices = 2 WHERE id = 'bob'"))
            # The server default holds for rows inserted without the column.
            connection.execute(
                sa.text("INSERT INTO users (id, name, created_at_ms) VALUES ('carol', 'C', 4)")
            )
            online = sa.text("SELECT id, online_devices FROM users WHERE online_devices > 0")
            assert connection.execute(online).all() == [("bob", 2)]
        with engine.begin() as connection:
            command.downgrade(_config(connection), "0002")
        assert current_revision(engine) == "0002"
        assert "online_devices" not in _users_columns(engine)
        assert "ix_users_online_devices" not in {
            i["name"] for i in sa.inspect(engine).get_indexes("users")
        }
        with engine.begin() as connection:
            # Downgrading kept every user and everything referring to them.
            assert connection.execute(
                sa.text("SELECT id, name, created_at_ms, last_seen_ms FROM users ORDER BY id")
            ).all() == [("alice", "A", 1, 5), ("bob", "B", 2, None), ("carol", "C", 4, None)]
            assert connection.execute(
                sa.text("SELECT user_id FROM memberships ORDER BY user_id")
            ).scalars().all() == ["alice", "bob"]
        upgrade(engine)  # and up again: everyone starts offline
        assert current_revision(engine) == "0003"
        assert _schema_diff(engine) == []
        with engine.begin() as connection:
            assert (
                connection.execute(
                    sa.text("SELECT count(*) FROM users WHERE online_devices > 0")
                ).scalar_one()
                == 0
            )
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_models(tmp_path: Path) -> None:
    _check_upgrade(default_url(tmp_path / "new-folder"))


@pytest.mark.postgresql
def test_postgres_upgrade_matches_models(pg_schema_url: str) -> None:
    _check_upgrade(pg_schema_url)


def test_sqlite_sessions_revision(tmp_path: Path) -> None:
    _check_sessions_revision(default_url(tmp_path))


@pytest.mark.postgresql
def test_postgres_sessions_revision(pg_schema_url: str) -> None:
    _check_sessions_revision(pg_schema_url)


def test_sqlite_online_revision(tmp_path: Path) -> None:
    _check_online_revision(default_url(tmp_path))


@pytest.mark.postgresql
def test_postgres_online_revision(pg_schema_url: str) -> None:
    _check_online_revision(pg_schema_url)


@pytest.mark.postgresql
def test_postgres_concurrent_upgrades_serialise(pg_schema_url: str) -> None:
    """Nodes starting together: the advisory lock makes the second one a no-op."""
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade(pg_schema_url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert current_revision(pg_schema_url) == "0003"


def test_unopenable_sqlite_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(StorageUnavailable, match=r"unable to open database file"):
        upgrade(f"sqlite:///{tmp_path / 'a-directory'}")


@pytest.mark.postgresql
def test_postgres_unreachable_is_unavailable() -> None:
    # Nothing listens on port 1 of the loopback interface.
    with pytest.raises(StorageUnavailable):
        current_revision("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


async def test_open_store_without_migrate_needs_current_schema(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    with pytest.raises(
        StorageError,
        match=r"^Expected the database schema at revision '0003', got None; "
        r"run `tether db upgrade`$",
    ):
        async with open_store(url, migrate=False):
            pass  # pragma: no cover
    await trio.to_thread.run_sync(upgrade, url)
    async with open_store(url, migrate=False) as store:
        await store.upsert_user("alice", "Alice")
