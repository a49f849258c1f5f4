"""SqlStore: the storage API on SQLite or PostgreSQL, with group commit.

SQLAlchemy's sync engine runs in worker threads; trio code only queues work
and waits. Two lanes:

* **Writes** go through one *group committer* task. A write is queued as an
  op (bounded queue: beyond ``max_pending`` ops the call fails at once with
  ``StorageUnavailable("overloaded ...")``); the committer takes everything
  that queued while the previous transaction ran (natural batching, no
  linger: the prototype measured that waiting for more only adds latency),
  runs it as ONE transaction in a worker thread (``CapacityLimiter(1)``:
  SQLite has one writer and a second one would only queue in the database),
  commits, and only then wakes every waiter with its own result. Measured
  in ``prototypes/actor_runtime/REPORT.md`` §3: 23-49k rows/s against 1-2.5k
  with a commit per insert (on a table without indexes; tether's messages
  carry a primary key and the dedupe index: ``tether bench store``).
* **Reads** run directly in worker threads, each in its own read
  transaction, behind a separate limiter (2 on SQLite, where WAL readers do
  not block the writer; 4 on PostgreSQL), so reads never wait for a batch.

Failure semantics of a batch (see ``tether.storage._sqlops``): an op's own
failure (NotFound, Conflict, LimitExceeded, a bug) fails that op only; a
database failure (StorageUnavailable) fails every op of the batch and commits
none of them.
The committer then simply carries on: the next batch opens a new connection,
so service resumes by itself when the database is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import trio
from sqlalchemy import Connection, Engine

from tether.metrics import BATCH_OPS_BUCKETS, COMMIT_SECONDS_BUCKETS, Histogram
from tether.storage import _sqlops as ops
from tether.storage._common import (
    check_client_id,
    check_device_id,
    check_devices,
    check_history_args,
    check_int,
    check_kind,
    check_max_rooms,
    check_name,
    check_now,
    check_room_id,
    check_session,
    check_session_id,
    check_user_id,
    check_user_ids,
    direct_key,
    new_room_id,
    pack_body,
)
from tether.storage.database import DEFAULT_SQLITE_BUSY_TIMEOUT_MS, create_engine_for
from tether.storage.errors import StorageError, StorageUnavailable, translate_errors
from tether.storage.migrate import current_revision, head_revision, upgrade
from tether.storage.records import (
    AppendResult,
    MemberReceipts,
    MemberRecord,
    MessageRecord,
    RoomKind,
    RoomRecord,
    RoomSummary,
    SessionRecord,
    UserRecord,
)

__all__ = ["SqlStore", "StoreStatistics", "open_store"]

logger = logging.getLogger("tether.storage")

T = TypeVar("T")

#: Default bound of the write queue (ops waiting for the committer).
DEFAULT_MAX_PENDING: Final = 10_000
#: Default cap on the ops of one transaction: keeps a transaction (and the
#: latency of the first op in it) short when a burst has queued thousands.
DEFAULT_MAX_BATCH: Final = 1_000
#: Default time the committer may spend committing queued writes at close.
DEFAULT_FLUSH_TIMEOUT_S: Final = 10.0
#: SQLite: least time between two background checkpoints.
CHECKPOINT_INTERVAL_S: Final = 0.1
#: SQLite: WAL size (in pages: 128 MiB) past which the checkpointer restarts
#: the log, once passive checkpoints have nearly caught up with it.
WAL_RESTART_FRAMES: Final = 32_768
#: SQLite: "nearly caught up": at most this many pages left to copy.
_WAL_RESTART_LAG: Final = 4_096
_EWMA_WEIGHT: Final = 0.2


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of the group committer (see :meth:`SqlStore.statistics`).

    Attributes:
      batches: transactions committed.
      ops_committed: ops in committed transactions (an op that failed on its
        own, e.g. NotFound, still counts: it was settled by a commit).
      last_batch_size: ops in the latest transaction, committed or failed.
      max_batch_size: largest transaction so far.
      commit_latency_ms_last: time of the latest transaction, thread hop
        included.
      commit_latency_ms_ewma: its exponentially weighted mean (weight 0.2).
      queue_depth: ops queued and not yet taken into a transaction.
      failures: transactions that failed as a whole (database unavailable);
        every op in them failed and none was committed.
    """

    batches: int
    ops_committed: int
    last_batch_size: int
    max_batch_size: int
    commit_latency_ms_last: float
    commit_latency_ms_ewma: float
    queue_depth: int
    failures: int


class _Pending:
    """A queued write and the slot its result comes back in."""

    __slots__ = ("done", "error", "op", "result")

    def __init__(self, op: ops.WriteOp) -> None:
        self.op = op
        self.done = trio.Event()
        self.result: object = None
        self.error: BaseException | None = None

    def resolve(self, result: object) -> None:
        if isinstance(result, ops.Failed):
            self.error = result.error
        else:
            self.result = result
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class SqlStore:
    """The :class:`~tether.storage.interfaces.Store` API on a SQL database.

    Create it with :func:`open_store`, which owns the committer task; a bare
    instance queues writes that nothing commits. Method contracts are those
    of :mod:`tether.storage.interfaces`; all of them may also raise
    ``StorageUnavailable`` (database unreachable or locked, write queue full,
    store closed).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_batch: int = DEFAULT_MAX_BATCH,
        read_concurrency: int | None = None,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT_S,
    ) -> None:
        """Wrap an engine from :func:`~tether.storage.database.create_engine_for`.

        Args:
          engine: the engine (not disposed of by the store).
          max_pending: bound of the write queue.
          max_batch: most ops in one transaction.
          read_concurrency: reader threads; None picks 2 (SQLite) or 4.
          flush_timeout: seconds the committer spends on queued writes at
            close before failing the rest with StorageUnavailable.

        Raises:
          ValueError: a bound is not positive.
        """
        if max_pending < 1 or max_batch < 1:
            raise ValueError(
                f"Expected positive max_pending and max_batch, got {max_pending}, {max_batch}"
            )
        if read_concurrency is None:
            read_concurrency = 2 if engine.dialect.name == "sqlite" else 4
        if read_concurrency < 1:
            raise ValueError(f"Expected read_concurrency >= 1, got {read_concurrency}")
        self._engine = engine
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._flush_timeout = flush_timeout
        self._send, self._receive = trio.open_memory_channel[_Pending](max_pending)
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(read_concurrency)
        self._closed = False
        self._checkpoint_wanted = trio.Event()
        self._closing = trio.Event()
        self._batches = 0
        self._ops_committed = 0
        self._last_batch_size = 0
        self._max_batch_size = 0
        self._latency_last = 0.0
        self._latency_ewma = 0.0
        self._failures = 0
        #: Seconds per write transaction, committed or failed (``/metrics``).
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)
        #: Writes per transaction, committed or failed (``/metrics``).
        self.batch_ops = Histogram(BATCH_OPS_BUCKETS)
        self._unavailable: str | None = None
        self._probe: _Pending | None = None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for diagnostics; do not write through it)."""
        return self._engine

    @property
    def unavailable_reason(self) -> str | None:
        """Why the latest write transaction failed as a whole (database
        unavailable), or None: at start, and again once a transaction commits.

        Only writes tell: with no writes, a database that went away (or came
        back) goes unnoticed until :meth:`probe_writes` or the next write.
        """
        return self._unavailable

    async def probe_writes(self) -> None:
        """Run an empty write transaction through the committer, so that
        :attr:`unavailable_reason` is learnt again without any traffic.

        Concurrent callers share one probe. Cancelling the wait leaves the
        probe queued: it still runs and still updates the state.

        Raises:
          StorageUnavailable: the transaction failed, the write queue is
            full, or the store is closed.
        """
        probe = self._probe
        if probe is None or probe.done.is_set():
            probe = _Pending(ops.single(_probe_write))
            self._enqueue(probe)
            self._probe = probe
        await probe.done.wait()
        if probe.error is not None:
            # A fresh exception per caller: they may raise it concurrently.
            raise StorageUnavailable(str(probe.error)) from probe.error

    def statistics(self) -> StoreStatistics:
        """A snapshot of the committer's counters (sync, cheap)."""
        return StoreStatistics(
            batches=self._batches,
            ops_committed=self._ops_committed,
            last_batch_size=self._last_batch_size,
            max_batch_size=self._max_batch_size,
            commit_latency_ms_last=self._latency_last,
            commit_latency_ms_ewma=self._latency_ewma,
            queue_depth=self._send.statistics().current_buffer_used,
            failures=self._failures,
        )

    # -- write lane -------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> None:
        """Queue a write for the committer, or raise StorageUnavailable (full or closed)."""
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            raise StorageUnavailable(
                f"overloaded: {self._max_pending} writes already queued"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StorageUnavailable("store is closed") from None

    async def _write(self, op: ops.WriteOp) -> Any:
        pending = _Pending(op)
        self._enqueue(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _take_batch(self, first: _Pending | None = None) -> list[_Pending]:
        batch = [] if first is None else [first]
        while len(batch) < self._max_batch:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        # Shielded: once taken from the queue, a batch is always run to the
        # end and its waiters always resolved. The thread itself cannot be
        # interrupted anyway (abandoning it would leave a transaction open).
        with trio.CancelScope(shield=True):
            started = time.perf_counter()
            try:
                results = await trio.to_thread.run_sync(
                    ops.execute_batch,
                    self._engine,
                    [pending.op for pending in batch],
                    limiter=self._write_limiter,
                )
            except StorageUnavailable as exc:
                self._record(batch, started, failed=True)
                self._unavailable = str(exc)
                logger.warning("write batch of %d failed: %s", len(batch), exc)
                for pending in batch:
                    # A fresh exception per waiter: they raise it concurrently.
                    error = StorageUnavailable(str(exc))
                    error.__cause__ = exc
                    pending.fail(error)
                return
            except Exception as exc:
                self._record(batch, started, failed=True)
                logger.exception("write batch of %d failed unexpectedly", len(batch))
                for pending in batch:
                    bug = StorageError(f"write batch failed: {type(exc).__name__}: {exc}")
                    bug.__cause__ = exc
                    pending.fail(bug)
                return
            self._record(batch, started, failed=False)
            for pending, result in zip(batch, results, strict=True):
                pending.resolve(result)

    def _record(self, batch: list[_Pending], started: float, *, failed: bool) -> None:
        latency = (time.perf_counter() - started) * 1000.0
        self._latency_last = latency
        if self._batches + self._failures == 0:
            self._latency_ewma = latency
        else:
            self._latency_ewma += _EWMA_WEIGHT * (latency - self._latency_ewma)
        self._last_batch_size = len(batch)
        self._max_batch_size = max(self._max_batch_size, len(batch))
        self.commit_seconds.observe(latency / 1000.0)
        self.batch_ops.observe(len(batch))
        if failed:
            self._failures += 1
        else:
            self._unavailable = None
            self._batches += 1
            self._ops_committed += len(batch)
            self._checkpoint_wanted.set()

    async def run_committer(self) -> None:
        """Commit queued writes until the queue is closed (``open_store`` runs this).

        Cancellation: the only point of cancellation is the wait for the next
        write. When cancelled (or when the queue closes), queued writes are still
        committed for up to ``flush_timeout`` seconds, shielded; whatever is
        left then fails with StorageUnavailable, and later writes fail at
        once.
        """
        try:
            while True:
                try:
                    first = await self._receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                await self._commit(self._take_batch(first))
        finally:
            deadline = trio.current_time() + self._flush_timeout
            while trio.current_time() < deadline:
                batch = self._take_batch()
                if not batch:
                    break
                await self._commit(batch)
            self._closed = True
            leftovers = self._take_batch_all()
            self._receive.close()
            for pending in leftovers:
                pending.fail(StorageUnavailable("store closed before the write ran"))

    def _take_batch_all(self) -> list[_Pending]:
        leftovers: list[_Pending] = []
        while True:
            batch = self._take_batch()
            if not batch:
                return leftovers
            leftovers.extend(batch)

    def close_writes(self) -> None:
        """Stop accepting writes; the committer commits what is queued and exits."""
        self._closed = True
        self._send.close()
        self._closing.set()
        self._checkpoint_wanted.set()

    async def run_checkpointer(self) -> None:
        """SQLite: checkpoint the WAL in a thread of its own (``open_store`` runs this).

        SQLite's automatic checkpoint runs inside the commit that crosses
        1,000 WAL pages, and with ``synchronous=NORMAL`` it ends with an fsync
        of the database file: every few hundred batches one commit, and every
        write waiting on it, took 10 ms more. The store's engine turns that
        off; this task instead runs a PASSIVE checkpoint (which never blocks
        the writer or readers) after commits, at most every
        ``CHECKPOINT_INTERVAL_S``, in its own thread, so the copying and the
        fsync overlap with the next commits. A busy writer never lets a
        passive checkpoint finish the whole log, so past
        ``WAL_RESTART_FRAMES`` pages, once passive checkpoints have copied
        nearly all of it, a RESTART checkpoint waits for the writer and
        resets the log, keeping the WAL bounded.

        Returns when the store closes; the last connection to close
        checkpoints whatever is left. Checkpoint failures are logged and
        retried on the next round: they never affect writes.
        """
        limiter = trio.CapacityLimiter(1)
        while True:
            await self._checkpoint_wanted.wait()
            if self._closed:
                return
            self._checkpoint_wanted = trio.Event()
            try:
                frames, copied = await trio.to_thread.run_sync(
                    ops.sqlite_checkpoint, self._engine, "PASSIVE", limiter=limiter
                )
                # The restart blocks the writer while it copies what is left
                # and syncs: wait until there is little left, unless the log
                # keeps outgrowing the checkpoints (then bound it anyway).
                caught_up = frames - copied <= _WAL_RESTART_LAG
                if frames >= 2 * WAL_RESTART_FRAMES or (frames >= WAL_RESTART_FRAMES and caught_up):
                    await trio.to_thread.run_sync(
                        ops.sqlite_checkpoint, self._engine, "RESTART", limiter=limiter
                    )
            except StorageUnavailable as exc:
                logger.info("WAL checkpoint skipped: %s", exc)
            with trio.move_on_after(CHECKPOINT_INTERVAL_S):
                await self._closing.wait()

    # -- read lane --------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StorageUnavailable("store is closed")
        return await trio.to_thread.run_sync(
            self._read_in_thread, fn, args, limiter=self._read_limiter
        )

    def _read_in_thread(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with translate_errors(), self._engine.connect() as connection, connection.begin():
            return fn(connection, *args)

    # -- UserStore --------------------------------------------------------

    async def upsert_user(
        self, user_id: str, name: str, *, now_ms: int | None = None
    ) -> UserRecord:
        """See :meth:`tether.storage.interfaces.UserStore.upsert_user`."""
        op = ops.single(
            ops.upsert_user,
            user_id=check_user_id(user_id),
            name=check_name(name),
            now_ms=check_now(now_ms),
        )
        return cast(UserRecord, await self._write(op))

    async def touch_last_seen(self, user_id: str, ts_ms: int) -> None:
        """See :meth:`tether.storage.interfaces.UserStore.touch_last_seen`."""
        op = ops.single(
            ops.touch_last_seen, user_id=check_user_id(user_id), ts_ms=check_int("ts_ms", ts_ms)
        )
        await self._write(op)

    async def get_last_seen(self, user_ids: Collection[str]) -> dict[str, int | None]:
        """See :meth:`tether.storage.interfaces.UserStore.get_last_seen`."""
        return await self._read(ops.get_last_seen, check_user_ids(user_ids))

    async def get_user(self, user_id: str) -> UserRecord:
        """See :meth:`tether.storage.interfaces.UserStore.get_user`."""
        return await self._read(ops.get_user, check_user_id(user_id))

    async def set_online(self, user_id: str, devices: int) -> None:
        """See :meth:`tether.storage.interfaces.UserStore.set_online`."""
        op = ops.single(
            ops.set_online, user_id=check_user_id(user_id), devices=check_devices(devices)
        )
        await self._write(op)

    async def online_users(self) -> dict[str, int]:
        """See :meth:`tether.storage.interfaces.UserStore.online_users`."""
        return await self._read(ops.online_users)

    # -- RoomStore --------------------------------------------------------

    async def create_room(
        self,
        kind: RoomKind,
        name: str,
        owner_id: str,
        members: Iterable[str] = (),
        *,
        now_ms: int | None = None,
        max_rooms_per_user: int | None = None,
    ) -> RoomRecord:
        """See :meth:`tether.storage.interfaces.RoomStore.create_room`."""
        op = ops.single(
            ops.create_room,
            room_id=new_room_id(),
            kind=check_kind(kind),
            name=check_name(name),
            owner_id=check_user_id(owner_id, "owner_id"),
            members=check_user_ids(members, "members"),
            now_ms=check_now(now_ms),
            max_rooms_per_user=check_max_rooms(max_rooms_per_user),
        )
        return cast(RoomRecord, await self._write(op))

    async def get_room(self, room_id: str) -> RoomRecord:
        """See :meth:`tether.storage.interfaces.RoomStore.get_room`."""
        return await self._read(ops.get_room, check_room_id(room_id))

    async def get_or_create_direct(
        self,
        a: str,
        b: str,
        *,
        now_ms: int | None = None,
        max_rooms_per_user: int | None = None,
    ) -> RoomRecord:
        """See :meth:`tether.storage.interfaces.RoomStore.get_or_create_direct`."""
        key = direct_key(check_user_id(a, "a"), check_user_id(b, "b"))
        now = check_now(now_ms)
        limit = check_max_rooms(max_rooms_per_user)
        # Read first: after the first call this is a read, not a queued write.
        existing = await self._read(ops.find_direct, key)
        if existing is not None:
            return existing
        op = ops.single(
            ops.get_or_create_direct,
            room_id=new_room_id(),
            key=key,
            a=a,
            b=b,
            now_ms=now,
            max_rooms_per_user=limit,
        )
        return cast(RoomRecord, await self._write(op))

    async def add_member(
        self,
        room_id: str,
        user_id: str,
        *,
        now_ms: int | None = None,
        max_rooms_per_user: int | None = None,
    ) -> bool:
        """See :meth:`tether.storage.interfaces.RoomStore.add_member`."""
        op = ops.single(
            ops.add_member,
            room_id=check_room_id(room_id),
            user_id=check_user_id(user_id),
            now_ms=check_now(now_ms),
            max_rooms_per_user=check_max_rooms(max_rooms_per_user),
        )
        return cast(bool, await self._write(op))

    async def remove_member(self, room_id: str, user_id: str) -> bool:
        """See :meth:`tether.storage.interfaces.RoomStore.remove_member`."""
        op = ops.single(
            ops.remove_member, room_id=check_room_id(room_id), user_id=check_user_id(user_id)
        )
        return cast(bool, await self._write(op))

    async def list_members(self, room_id: str) -> list[MemberRecord]:
        """See :meth:`tether.storage.interfaces.RoomStore.list_members`."""
        return await self._read(ops.list_members, check_room_id(room_id))

    async def rooms_for_user(self, user_id: str) -> list[RoomSummary]:
        """See :meth:`tether.storage.interfaces.RoomStore.rooms_for_user`."""
        return await self._read(ops.rooms_for_user, check_user_id(user_id))

    async def room_mates(self, user_id: str, *, max_room_members: int | None = None) -> set[str]:
        """See :meth:`tether.storage.interfaces.RoomStore.room_mates`."""
        return await self._read(ops.room_mates, check_user_id(user_id), max_room_members)

    # -- MessageStore -----------------------------------------------------

    async def append_message(
        self, room_id: str, sender_id: str, client_id: str, body: object, now_ms: int
    ) -> AppendResult:
        """See :meth:`tether.storage.interfaces.MessageStore.append_message`."""
        args = ops.AppendArgs(
            room_id=check_room_id(room_id),
            sender_id=check_user_id(sender_id, "sender_id"),
            client_id=check_client_id(client_id),
            body=pack_body(body),
            now_ms=check_int("now_ms", now_ms),
        )
        return cast(AppendResult, await self._write(ops.WriteOp(ops.append_many, args)))

    async def edit_message(
        self, room_id: str, seq: int, sender_id: str, body: object, now_ms: int
    ) -> MessageRecord:
        """See :meth:`tether.storage.interfaces.MessageStore.edit_message`."""
        op = ops.single(
            ops.edit_message,
            room_id=check_room_id(room_id),
            seq=check_int("seq", seq),
            sender_id=check_user_id(sender_id, "sender_id"),
            body=pack_body(body),
            now_ms=check_int("now_ms", now_ms),
        )
        return cast(MessageRecord, await self._write(op))

    async def delete_message(
        self, room_id: str, seq: int, sender_id: str, now_ms: int
    ) -> MessageRecord:
        """See :meth:`tether.storage.interfaces.MessageStore.delete_message`."""
        op = ops.single(
            ops.delete_message,
            room_id=check_room_id(room_id),
            seq=check_int("seq", seq),
            sender_id=check_user_id(sender_id, "sender_id"),
            now_ms=check_int("now_ms", now_ms),
        )
        return cast(MessageRecord, await self._write(op))

    async def history(
        self,
        room_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int,
    ) -> list[MessageRecord]:
        """See :meth:`tether.storage.interfaces.MessageStore.history`."""
        check_room_id(room_id)
        check_history_args(before_seq, after_seq, limit)
        return await self._read(ops.history, room_id, before_seq, after_seq, limit)

    async def set_read(self, room_id: str, user_id: str, seq: int) -> int:
        """See :meth:`tether.storage.interfaces.MessageStore.set_read`."""
        op = ops.single(
            ops.set_read,
            room_id=check_room_id(room_id),
            user_id=check_user_id(user_id),
            seq=check_int("seq", seq),
        )
        return cast(int, await self._write(op))

    async def set_delivered(self, room_id: str, user_id: str, device_id: str, seq: int) -> int:
        """See :meth:`tether.storage.interfaces.MessageStore.set_delivered`."""
        op = ops.single(
            ops.set_delivered,
            room_id=check_room_id(room_id),
            user_id=check_user_id(user_id),
            device_id=check_device_id(device_id),
            seq=check_int("seq", seq),
        )
        return cast(int, await self._write(op))

    async def receipts(self, room_id: str) -> list[MemberReceipts]:
        """See :meth:`tether.storage.interfaces.MessageStore.receipts`."""
        return await self._read(ops.receipts, check_room_id(room_id))

    async def unread_count(self, room_id: str, user_id: str) -> int:
        """See :meth:`tether.storage.interfaces.MessageStore.unread_count`."""
        return await self._read(ops.unread_count, check_room_id(room_id), check_user_id(user_id))

    # -- SessionStore -----------------------------------------------------

    async def save_session(self, session: SessionRecord) -> None:
        """See :meth:`tether.storage.interfaces.SessionStore.save_session`."""
        await self._write(ops.single(ops.save_session, session=check_session(session)))

    async def load_session(self, session_id: str) -> SessionRecord | None:
        """See :meth:`tether.storage.interfaces.SessionStore.load_session`."""
        return await self._read(ops.load_session, check_session_id(session_id))

    async def delete_sessions(self, *, updated_before_ms: int) -> int:
        """See :meth:`tether.storage.interfaces.SessionStore.delete_sessions`."""
        op = ops.single(
            ops.delete_sessions,
            updated_before_ms=check_int("updated_before_ms", updated_before_ms),
        )
        return cast(int, await self._write(op))


def _probe_write(connection: Connection) -> None:
    # A statement, so that PostgreSQL (whose BEGIN is lazy) is really asked;
    # on SQLite the write transaction's BEGIN IMMEDIATE already takes the lock.
    connection.exec_driver_sql("SELECT 1")


def _check_schema(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise StorageError(
            f"Expected the database schema at revision {head!r}, got {current!r}; "
            "run `tether db upgrade`"
        )


@asynccontextmanager
async def open_store(
    url: str,
    *,
    migrate: bool = True,
    max_pending: int = DEFAULT_MAX_PENDING,
    max_batch: int = DEFAULT_MAX_BATCH,
    read_concurrency: int | None = None,
    sqlite_busy_timeout_ms: int = DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT_S,
) -> AsyncIterator[SqlStore]:
    """Open a SQL store: engine, schema, and the group committer task.

    Args:
      url: database URL (``sqlite:///...`` or ``postgresql[+psycopg]://...``;
        see :func:`tether.storage.database.default_url`).
      migrate: upgrade the schema to the newest revision first; if False,
        the schema must already be current.
      max_pending, max_batch, read_concurrency, flush_timeout: see
        :class:`SqlStore`.
      sqlite_busy_timeout_ms: see :func:`~tether.storage.database.create_engine_for`.

    Yields:
      The store, usable from any task of this trio run.

    Raises:
      ValueError: unsupported URL or bad bounds.
      StorageUnavailable: the database cannot be reached (at open).
      StorageError: ``migrate=False`` and the schema is not current.

    Resource handling:
      The committer (and, on SQLite, the WAL checkpointer: see
      :meth:`SqlStore.run_checkpointer`) runs in a nursery owned by this
      context. On exit, new
      writes are refused, queued ones are committed (for up to
      ``flush_timeout`` seconds, even when exiting by cancellation), and the
      engine's connections are closed.

    Cancellation:
      Opening (connecting, migrating) runs in a worker thread and finishes
      before a cancellation is honoured.
    """
    engine = create_engine_for(
        url, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms, sqlite_autocheckpoint=False
    )
    try:
        await trio.to_thread.run_sync(upgrade if migrate else _check_schema, engine)
        store = SqlStore(
            engine,
            max_pending=max_pending,
            max_batch=max_batch,
            read_concurrency=read_concurrency,
            flush_timeout=flush_timeout,
        )
        # The body's exception is re-raised outside the nursery, so that
        # callers see their own exception, not an ExceptionGroup wrapping it
        # (the committer itself never raises: it settles every write).
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_committer)
            if engine.dialect.name == "sqlite":
                nursery.start_soon(store.run_checkpointer)
            try:
                yield store
            except GeneratorExit:
                raise
            except BaseException as exc:
                body_error = exc
            finally:
                store.close_writes()
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(engine.dispose)
