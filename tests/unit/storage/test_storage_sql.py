"""SqlStore behaviour beyond the shared contract: availability, bounds, isolation.

The database is made unavailable for real: another SQLite connection holds
the write lock, or the store's PostgreSQL backends are terminated with
pg_terminate_backend while a batch is blocked on a row lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio
import trio.testing

from tether.storage import (
    AppendResult,
    LimitExceeded,
    SqlStore,
    StorageError,
    StorageUnavailable,
    default_url,
    open_store,
    sql,
)
from tether.storage import _sqlops as ops
from tether.storage.database import create_engine_for
from tether.storage.migrate import upgrade

T0 = 1_700_000_000_000
TIMEOUT_S = 30


async def _room(store: SqlStore, *users: str) -> str:
    for user_id in users:
        await store.upsert_user(user_id, user_id)
    return (await store.create_room("public", "r", users[0], users, now_ms=T0)).id


async def test_sqlite_locked_database_fails_whole_batch_then_recovers(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with open_store(default_url(tmp_path), sqlite_busy_timeout_ms=50) as store:
            room = await _room(store, "alice")
            await store.append_message(room, "alice", "c0", 0, T0)
            locker = sqlite3.connect(tmp_path / "tether.db", isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                outcomes: list[object] = []

                async def attempt(n: int) -> None:
                    try:
                        outcomes.append(await store.append_message(room, "alice", f"c{n}", n, T0))
                    except StorageUnavailable as exc:
                        outcomes.append(exc)

                async with trio.open_nursery() as nursery:
                    for n in range(1, 6):
                        nursery.start_soon(attempt, n)
                assert len(outcomes) == 5
                for outcome in outcomes:
                    assert isinstance(outcome, StorageUnavailable)
                    assert str(outcome) == "database is locked"
                    assert isinstance(outcome.__cause__, StorageUnavailable)
                assert store.statistics().failures >= 1
                # WAL: readers are not blocked by the other writer.
                assert (await store.get_room(room)).last_seq == 1
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            # The lock is gone: service resumes by itself, and the failed
            # appends consumed no seq (nothing of the batch was committed).
            assert await store.append_message(room, "alice", "c1", 1, T0) == (
                AppendResult(2, T0, duplicate=False)
            )


@pytest.mark.postgresql
async def test_postgres_backend_killed_mid_batch(pg_schema_url: str, pg_admin: sa.Engine) -> None:
    app_name = sa.make_url(pg_schema_url).query["application_name"]
    assert isinstance(app_name, str)
    assert app_name.startswith("tether_test_")
    blocker = create_engine_for(
        sa.make_url(pg_schema_url).update_query_dict({"application_name": f"{app_name}_blocker"})
    )

    def wait_for_lock_then_terminate() -> int:
        with pg_admin.connect() as connection:
            connection.exec_driver_sql("SET statement_timeout = 20000")
            # Server-side wait until the store's batch is blocked on the row lock.
            connection.exec_driver_sql(
                "DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                f"WHERE application_name = '{app_name}' AND wait_event_type = 'Lock') "
                "LOOP PERFORM pg_sleep(0.01); END LOOP; END $$"
            )
            killed = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": app_name},
            ).scalar_one()
            return int(killed)

    try:
        with trio.fail_after(TIMEOUT_S):
            async with open_store(pg_schema_url) as store:
                room = await _room(store, "alice")
                await store.append_message(room, "alice", "c0", 0, T0)
                with blocker.connect() as lock_holder, lock_holder.begin():
                    lock_holder.execute(
                        sa.text("SELECT 1 FROM rooms WHERE id = :id FOR UPDATE"), {"id": room}
                    )
                    outcome: list[object] = []

                    async def append() -> None:
                        try:
                            outcome.append(await store.append_message(room, "alice", "c1", 1, T0))
                        except StorageUnavailable as exc:
                            outcome.append(exc)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(append)
                        killed = await trio.to_thread.run_sync(wait_for_lock_then_terminate)
                    assert killed >= 1
                    (error,) = outcome
                    assert isinstance(error, StorageUnavailable)
                    assert store.statistics().failures == 1
                # The next operations reconnect by themselves.
                assert await store.append_message(room, "alice", "c1", 1, T0) == (
                    AppendResult(2, T0, duplicate=False)
                )
                assert (await store.get_room(room)).last_seq == 2
    finally:
        blocker.dispose()


@pytest.mark.postgresql
async def test_postgres_idle_connections_killed_are_replaced(
    pg_schema_url: str, pg_admin: sa.Engine
) -> None:
    app_name = sa.make_url(pg_schema_url).query["application_name"]
    with trio.fail_after(TIMEOUT_S):
        async with open_store(pg_schema_url) as store:
            room = await _room(store, "alice")
            await store.get_room(room)
            with pg_admin.connect() as connection:
                killed = connection.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :name"
                    ),
                    {"name": app_name},
                ).scalar_one()
            assert killed >= 1
            # Pre-ping notices the dead connections: no error surfaces.
            assert (await store.append_message(room, "alice", "c", 0, T0)).seq == 1
            assert (await store.get_room(room)).last_seq == 1


async def test_write_queue_is_bounded(tmp_path: Path) -> None:
    engine = create_engine_for(default_url(tmp_path))
    try:
        await trio.to_thread.run_sync(upgrade, engine)
        store = SqlStore(engine, max_pending=3)
        results: list[object] = []

        async def add(user_id: str) -> None:
            results.append(await store.upsert_user(user_id, user_id))

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(add, f"u{i}")
                await trio.testing.wait_all_tasks_blocked()
                assert store.statistics().queue_depth == 3
                with pytest.raises(
                    StorageUnavailable, match=r"^overloaded: 3 writes already queued$"
                ):
                    await store.upsert_user("u3", "x")
                # Once a committer runs, the queued writes complete.
                nursery.start_soon(store.run_committer)
                while len(results) < 3:
                    await trio.testing.wait_all_tasks_blocked()
                store.close_writes()
        assert sorted(r.id for r in results) == ["u0", "u1", "u2"]  # type: ignore[attr-defined]
        with pytest.raises(StorageUnavailable, match=r"^store is closed$"):
            await store.upsert_user("u4", "x")
    finally:
        engine.dispose()


@pytest.mark.parametrize(("flush_timeout", "committed"), [(10.0, True), (0.0, False)])
async def test_cancelled_committer_flushes_within_timeout(
    tmp_path: Path, flush_timeout: float, committed: bool
) -> None:
    engine = create_engine_for(default_url(tmp_path))
    try:
        await trio.to_thread.run_sync(upgrade, engine)
        store = SqlStore(engine, flush_timeout=flush_timeout)
        outcomes: list[object] = []

        async def add(user_id: str) -> None:
            try:
                outcomes.append(await store.upsert_user(user_id, user_id))
            except StorageUnavailable as exc:
                outcomes.append(exc)

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(add, "u0")
                nursery.start_soon(add, "u1")
                await trio.testing.wait_all_tasks_blocked()
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await store.run_committer()  # cancelled at its first checkpoint
        assert len(outcomes) == 2
        if committed:
            assert sorted(o.id for o in outcomes) == ["u0", "u1"]  # type: ignore[attr-defined]
        else:
            for outcome in outcomes:
                assert isinstance(outcome, StorageUnavailable)
                assert str(outcome) == "store closed before the write ran"
        with pytest.raises(StorageUnavailable, match=r"^store is closed$"):
            await store.upsert_user("late", "x")
    finally:
        engine.dispose()


async def test_a_bug_in_one_op_fails_only_that_op(tmp_path: Path) -> None:
    """An unexpected exception aborts the attempt; the replay pins it on its op."""

    def buggy(connection: sa.Connection) -> object:
        connection.execute(ops.users.insert().values(id="ghost", name="g", created_at_ms=0))
        raise RuntimeError("bug in an op, after it wrote")

    async with open_store(default_url(tmp_path)) as store:
        room = await _room(store, "alice")
        outcomes: dict[str, object] = {}

        async def run(name: str, op: ops.WriteOp) -> None:
            try:
                outcomes[name] = await store._write(op)
            except RuntimeError as exc:
                outcomes[name] = exc

        def append(client_id: str) -> ops.WriteOp:
            return ops.WriteOp(
                ops.append_many, ops.AppendArgs(room, "alice", client_id, b"\xc0", T0)
            )

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "a", append("a"))
                nursery.start_soon(run, "bug", ops.single(buggy))
                nursery.start_soon(run, "b", append("b"))
        assert store.statistics().last_batch_size == 3
        assert isinstance(outcomes["bug"], RuntimeError)
        assert {outcomes["a"], outcomes["b"]} == {
            AppendResult(1, T0, duplicate=False),
            AppendResult(2, T0, duplicate=False),
        }
        # The buggy op's own write was rolled back with its savepoint.
        with pytest.raises(StorageError):
            await store.get_user("ghost")


async def test_open_store_raises_the_body_exception_unwrapped(tmp_path: Path) -> None:
    async def body() -> None:
        async with open_store(default_url(tmp_path)) as store:
            await store.upsert_user("alice", "Alice")
            raise KeyError("from the body")

    # Not an ExceptionGroup from open_store's internal nursery.
    with pytest.raises(KeyError, match="from the body"):
        await body()
    async with open_store(default_url(tmp_path)) as store:
        assert (await store.get_user("alice")).name == "Alice"


@asynccontextmanager
async def _two_nodes(url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    async with open_store(url) as first, open_store(url) as second:
        yield first, second


async def _check_two_nodes(url: str) -> None:
    """Two stores on one database, as two server nodes: seqs stay dense, dedupe holds."""
    with trio.fail_after(TIMEOUT_S):
        async with _two_nodes(url) as nodes:
            room = await _room(nodes[0], "alice", "bob")
            acks: list[AppendResult] = []

            async def producer(node: SqlStore, user: str) -> None:
                for n in range(25):
                    ack = await node.append_message(room, user, f"{user}{n}", n, T0)
                    acks.append(ack)

            async def retry_everywhere(client_id: str) -> None:
                acks.append(await nodes[0].append_message(room, "bob", client_id, 0, T0))
                acks.append(await nodes[1].append_message(room, "bob", client_id, 0, T0))

            directs: list[str] = []

            async def direct(node: SqlStore) -> None:
                directs.append((await node.get_or_create_direct("alice", "bob")).id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer, nodes[0], "alice")
                nursery.start_soon(producer, nodes[1], "alice")  # same keys: dedupe across nodes
                for n in range(10):
                    nursery.start_soon(retry_everywhere, f"r{n}")
                for node in (*nodes, *nodes):
                    nursery.start_soon(direct, node)

            assert len(set(directs)) == 1
            last_seq = (await nodes[1].get_room(room)).last_seq
            assert last_seq == 25 + 10
            assert sorted(a.seq for a in acks if not a.duplicate) == list(range(1, last_seq + 1))
            history = await nodes[0].history(room, after_seq=0, limit=100)
            assert [m.seq for m in history] == list(range(1, last_seq + 1))


async def test_two_nodes_on_sqlite(tmp_path: Path) -> None:
    await _check_two_nodes(default_url(tmp_path))


@pytest.mark.postgresql
async def test_two_nodes_on_postgres(pg_schema_url: str) -> None:
    await _check_two_nodes(pg_schema_url)


async def test_sqlite_wal_is_checkpointed_off_the_commit_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny thresholds so that a few appends trigger the restart.
    monkeypatch.setattr(sql, "WAL_RESTART_FRAMES", 1)
    monkeypatch.setattr(sql, "CHECKPOINT_INTERVAL_S", 0.0)
    calls: list[tuple[str, tuple[int, int]]] = []
    restarted = trio.Event()
    real_checkpoint = ops.sqlite_checkpoint

    def spy(engine: sa.Engine, mode: str) -> tuple[int, int]:
        result = real_checkpoint(engine, mode)
        calls.append((mode, result))
        if mode == "RESTART":
            trio.from_thread.run_sync(restarted.set)
        return result

    monkeypatch.setattr(ops, "sqlite_checkpoint", spy)
    with trio.fail_after(TIMEOUT_S):
        async with open_store(default_url(tmp_path)) as store:
            with store.engine.connect() as connection:
                # Commits never checkpoint: that is the checkpointer's job.
                assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
            room = await _room(store, "alice")
            for n in range(5):
                await store.append_message(room, "alice", f"c{n}", n, T0)
            await restarted.wait()
    assert calls[0][0] == "PASSIVE"
    _, (frames, copied) = next(call for call in calls if call[0] == "RESTART")
    assert frames == copied  # the whole log made it into the database file


def test_checkpoint_mode_is_checked(tmp_path: Path) -> None:
    engine = create_engine_for(default_url(tmp_path))
    try:
        with pytest.raises(ValueError, match=r"^Expected mode PASSIVE or RESTART, got 'FULL'$"):
            ops.sqlite_checkpoint(engine, "FULL")
    finally:
        engine.dispose()


async def _check_two_nodes_share_the_room_limit(url: str) -> None:
    """Two nodes adding one user to rooms at once: the limit holds across them.

    On PostgreSQL the count of one node's transaction cannot see the other's
    uncommitted memberships; the row lock on the user makes them take turns.
    """
    limit, rooms_n = 5, 20
    with trio.fail_after(TIMEOUT_S):
        async with _two_nodes(url) as nodes:
            await nodes[0].upsert_user("u", "u")
            first_room = await _room(nodes[0], "owner")
            rooms = [first_room] + [
                (await nodes[0].create_room("public", f"r{n}", "owner", now_ms=T0)).id
                for n in range(1, rooms_n)
            ]
            added: list[str] = []
            refused: list[str] = []

            async def join(node: SqlStore, room: str) -> None:
                try:
                    assert await node.add_member(room, "u", max_rooms_per_user=limit)
                    added.append(room)
                except LimitExceeded as exc:
                    refused.append(exc.user_id)

            async with trio.open_nursery() as nursery:
                for n, room in enumerate(rooms):
                    nursery.start_soon(join, nodes[n % 2], room)
            assert len(added) == limit
            assert refused == ["u"] * (rooms_n - limit)
            assert {s.room.id for s in await nodes[1].rooms_for_user("u")} == set(added)


async def test_two_nodes_share_the_room_limit_on_sqlite(tmp_path: Path) -> None:
    await _check_two_nodes_share_the_room_limit(default_url(tmp_path))


@pytest.mark.postgresql
async def test_two_nodes_share_the_room_limit_on_postgres(pg_schema_url: str) -> None:
    await _check_two_nodes_share_the_room_limit(pg_schema_url)


async def test_limit_exceeded_does_not_replay_the_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Like NotFound, LimitExceeded is settled in the shared transaction."""
    caplog.set_level("INFO", logger="tether.storage")
    with trio.fail_after(TIMEOUT_S):
        async with open_store(default_url(tmp_path)) as store:
            room = await _room(store, "alice", "bob")
            outcomes: dict[str, object] = {}

            async def attempt(name: str, user_id: str, limit: int) -> None:
                try:
                    outcomes[name] = await store.add_member(room, user_id, max_rooms_per_user=limit)
                except LimitExceeded as exc:
                    outcomes[name] = exc

            await store.upsert_user("carol", "carol")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attempt, "refused", "carol", 0)
                nursery.start_soon(attempt, "no-op", "bob", 0)
            assert store.statistics().last_batch_size == 2
            assert isinstance(outcomes["refused"], LimitExceeded)
            assert outcomes["no-op"] is False
    assert not [r for r in caplog.records if "replaying" in r.getMessage()]


def _count_plan(connection: sa.Connection) -> str:
    statement = ops.COUNT_ROOMS.params(ids=["alice", "bob"]).compile(
        dialect=connection.dialect, compile_kwargs={"literal_binds": True}
    )
    rows = connection.exec_driver_sql(
        ("EXPLAIN QUERY PLAN " if connection.dialect.name == "sqlite" else "EXPLAIN ")
        + str(statement)
    )
    return "\n".join(" ".join(map(str, row)) for row in rows)


def test_room_count_uses_the_memberships_index_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine_for(default_url(tmp_path))
    try:
        upgrade(engine)
        with engine.connect() as connection:
            plan = _count_plan(connection)
        assert "USING COVERING INDEX ix_memberships_user_id" in plan, plan
    finally:
        engine.dispose()


@pytest.mark.postgresql
def test_room_count_uses_the_memberships_index_on_postgres(pg_schema_url: str) -> None:
    engine = create_engine_for(pg_schema_url)
    try:
        upgrade(engine)
        with engine.connect() as connection, connection.begin():
            # An empty table is cheapest to scan: only ask whether the index serves.
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = _count_plan(connection)
        assert "ix_memberships_user_id" in plan, plan
        assert "Seq Scan" not in plan, plan
    finally:
        engine.dispose()


def _online_plan(connection: sa.Connection, sql_text: str) -> str:
    rows = connection.exec_driver_sql(
        ("EXPLAIN QUERY PLAN " if connection.dialect.name == "sqlite" else "EXPLAIN ") + sql_text
    )
    return "\n".join(" ".join(map(str, row)) for row in rows)


def _online_sql(connection: sa.Connection) -> str:
    """The statement ``online_users`` runs, as sent: nothing left to bind."""
    compiled = ops._SELECT_ONLINE.compile(dialect=connection.dialect)
    assert not compiled.params
    return str(compiled)


def test_online_users_uses_the_partial_index_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine_for(default_url(tmp_path))
    try:
        upgrade(engine)
        with engine.connect() as connection:
            plan = _online_plan(connection, _online_sql(connection))
            assert "USING INDEX ix_users_online_devices" in plan, plan
            # The planner matches the predicate term for term: an equivalent
            # spelling scans every user (what the verbatim predicate avoids).
            other = _online_sql(connection).replace("> 0", ">= 1")
            assert "SCAN users" in _online_plan(connection, other)
    finally:
        engine.dispose()


@pytest.mark.postgresql
def test_online_users_uses_the_partial_index_on_postgres(pg_schema_url: str) -> None:
    engine = create_engine_for(pg_schema_url)
    try:
        upgrade(engine)
        with engine.connect() as connection, connection.begin():
            # An empty table is cheapest to scan: only ask whether the index serves.
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = _online_plan(connection, _online_sql(connection))
        assert "ix_users_online_devices" in plan, plan
        assert "Seq Scan" not in plan, plan
    finally:
        engine.dispose()
