"""The SQL of :class:`tether.storage.sql.SqlStore`: synchronous, worker threads only.

Writes are *ops* (:class:`WriteOp`) that the group committer runs many at a
time, in one transaction, through :func:`execute_batch`. Consecutive ops
with the same executor form a *run* and are handed to it together: appends
are vectorised (a handful of statements per run, whatever its length), every
other write runs one op after the other.

Failure isolation inside a batch: an executor reports an op's own logical
failure (NotFound, Conflict, LimitExceeded) as a :class:`Failed` value, and it
must detect it *before* that op writes anything, so the shared transaction
stays clean without a savepoint per op. Anything an executor raises instead
(an IntegrityError from a race with another node, a bug) aborts the whole
attempt; the batch is then rolled back and replayed op by op, each in its own
savepoint, so that only the guilty op fails. An availability error
(StorageUnavailable after translation) fails the whole batch at once: nothing
of it is committed, and every waiter gets the error.

Strings are sorted in Python, not with ORDER BY, wherever the order is part
of the contract: PostgreSQL sorts text by the database's collation, SQLite
and the memory store by code point.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from tether.storage._common import unpack_body
from tether.storage.database import WRITE_OPTION
from tether.storage.errors import (
    Conflict,
    LimitExceeded,
    NotFound,
    StorageUnavailable,
    map_exception,
    translate_errors,
)
from tether.storage.models import ONLINE_PREDICATE, Base
from tether.storage.records import (
    AppendResult,
    DeviceReceipt,
    MemberReceipts,
    MemberRecord,
    MessageRecord,
    Role,
    RoomKind,
    RoomRecord,
    RoomSummary,
    SessionRecord,
    UserRecord,
)

logger = logging.getLogger("tether.storage")

users: Final[Table] = Base.metadata.tables["users"]
rooms: Final[Table] = Base.metadata.tables["rooms"]
memberships: Final[Table] = Base.metadata.tables["memberships"]
messages: Final[Table] = Base.metadata.tables["messages"]
device_receipts: Final[Table] = Base.metadata.tables["device_receipts"]
sessions: Final[Table] = Base.metadata.tables["sessions"]

# Bound on the items of one IN list: SQLite allows 32,766 parameters per
# statement, PostgreSQL 65,535; a key of the dedupe lookup takes three.
_IN_CHUNK: Final = 500
# Keys per dedupe lookup: each is an OR term, and SQLite caps the depth of
# an expression tree at 1,000 by default.
_KEY_CHUNK: Final = 200

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Failed:
    """An op's own failure, delivered to its waiter only."""

    error: Exception


#: Runs a list of same-kind op arguments in the batch's transaction and
#: returns one result (or Failed) per argument, in order.
Executor = Callable[[Connection, Sequence[Any]], list[object]]


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One queued write: the executor that runs it and its argument."""

    executor: Executor
    arg: Any


def _chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------
# Batch execution (committer thread)


def execute_batch(engine: Engine, ops: Sequence[WriteOp]) -> list[object]:
    """Run ``ops`` in one transaction and commit.

    Returns:
      One result per op, in order: the op's value or a :class:`Failed`.

    Raises:
      StorageUnavailable: the database failed; nothing was committed.
      Exception: an error outside any op (e.g. at commit) that is not an
        availability problem; nothing was committed.
    """
    with translate_errors():
        try:
            return _run_together(engine, ops)
        except Exception as exc:
            if isinstance(map_exception(exc), StorageUnavailable):
                raise
            # Expected when another node raced us to a unique key; anything
            # else is a bug that the replay pins on a single op.
            logger.info(
                "write batch of %d aborted by %s; replaying op by op", len(ops), type(exc).__name__
            )
        return _run_isolated(engine, ops)


def _runs(ops: Sequence[WriteOp]) -> Iterator[tuple[Executor, list[Any]]]:
    run: list[Any] = []
    executor: Executor | None = None
    for op in ops:
        if op.executor is not executor and run:
            assert executor is not None
            yield executor, run
            run = []
        executor = op.executor
        run.append(op.arg)
    if run:
        assert executor is not None
        yield executor, run


def _run_together(engine: Engine, ops: Sequence[WriteOp]) -> list[object]:
    results: list[object] = []
    with (
        engine.connect().execution_options(**{WRITE_OPTION: True}) as connection,
        connection.begin(),
    ):
        for executor, args in _runs(ops):
            results.extend(executor(connection, args))
    return results


def _run_isolated(engine: Engine, ops: Sequence[WriteOp]) -> list[object]:
    results: list[object] = []
    with (
        engine.connect().execution_options(**{WRITE_OPTION: True}) as connection,
        connection.begin(),
    ):
        for op in ops:
            savepoint = connection.begin_nested()
            try:
                (value,) = op.executor(connection, [op.arg])
            except Exception as exc:
                savepoint.rollback()
                mapped = map_exception(exc)
                if isinstance(mapped, StorageUnavailable):
                    raise
                results.append(Failed(mapped if mapped is not None else exc))
            else:
                savepoint.commit()
                results.append(value)
    return results


def run_each(
    connection: Connection, calls: Sequence[Callable[[Connection], object]]
) -> list[object]:
    """Executor for ops that are plain callables, run one after the other.

    The callables raise NotFound, Conflict or LimitExceeded only before their
    first write; anything else they raise aborts the attempt (see
    :func:`execute_batch`).
    """
    results: list[object] = []
    for call in calls:
        try:
            results.append(call(connection))
        except (NotFound, Conflict, LimitExceeded) as exc:
            results.append(Failed(exc))
    return results


def single(call: Callable[..., object], **kwargs: Any) -> WriteOp:
    """A write op running ``call(connection, **kwargs)`` (see :func:`run_each`)."""

    def bound(connection: Connection) -> object:
        return call(connection, **kwargs)

    return WriteOp(run_each, bound)


def sqlite_checkpoint(engine: Engine, mode: str) -> tuple[int, int]:
    """Run ``PRAGMA wal_checkpoint(<mode>)`` outside any transaction.

    Returns:
      (frames in the WAL, frames checkpointed); (-1, -1) when SQLite could
      not take the checkpoint lock (another checkpoint is running).

    Raises:
      StorageUnavailable: the database is locked past the busy timeout.
    """
    if mode not in {"PASSIVE", "RESTART"}:
        raise ValueError(f"Expected mode PASSIVE or RESTART, got {mode!r}")
    with translate_errors(), engine.connect() as connection:
        # The raw connection runs in autocommit (isolation_level None): a
        # checkpoint inside the BEGIN that SQLAlchemy would emit could not
        # complete.
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            _busy, log, checkpointed = cursor.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            cursor.close()
        return int(log), int(checkpointed)


# ---------------------------------------------------------------------------
# Appends (vectorised)


@dataclass(frozen=True, slots=True)
class AppendArgs:
    """Arguments of one append; ``body`` is already msgpack-encoded."""

    room_id: str
    sender_id: str
    client_id: str
    body: bytes
    now_ms: int


_SELECT_ROOM_SEQS = (
    select(rooms.c.id, rooms.c.last_seq)
    .where(rooms.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(rooms.c.id)
    # PostgreSQL: lock the rooms' rows, in id order so that writers on other
    # nodes queue up instead of deadlocking. SQLite ignores FOR UPDATE; the
    # transaction already holds the database's write lock (BEGIN IMMEDIATE).
    .with_for_update()
)
_SELECT_USER_IDS = select(users.c.id).where(users.c.id.in_(bindparam("ids", expanding=True)))
# The room limit: lock the users' rows (PostgreSQL) so that two nodes adding
# the same user to rooms count one after the other, in id order against
# deadlocks. NO KEY UPDATE: foreign-key checks of other inserts (messages,
# memberships naming the user) take KEY SHARE locks and must not wait on it.
_LOCK_USER_IDS = _SELECT_USER_IDS.order_by(users.c.id).with_for_update(key_share=True)
#: Rooms per user, for ``max_rooms_per_user``: served by ix_memberships_user_id.
COUNT_ROOMS = (
    select(memberships.c.user_id, func.count())
    .where(memberships.c.user_id.in_(bindparam("ids", expanding=True)))
    .group_by(memberships.c.user_id)
)
_SELECT_STORED = select(
    messages.c.room_id,
    messages.c.sender_id,
    messages.c.client_id,
    messages.c.seq,
    messages.c.created_at_ms,
)


@functools.lru_cache(maxsize=_KEY_CHUNK)
def _select_stored(count: int) -> Select[Any]:
    # One statement per key count, built once: constructing the expression
    # per batch would cost more than running it. Parameters r<i>, s<i>, c<i>.
    return _SELECT_STORED.where(
        or_(
            *(
                and_(
                    messages.c.room_id == bindparam(f"r{i}"),
                    messages.c.sender_id == bindparam(f"s{i}"),
                    messages.c.client_id == bindparam(f"c{i}"),
                )
                for i in range(count)
            )
        )
    )


_INSERT_MESSAGE = messages.insert()
_UPDATE_LAST_SEQ = (
    rooms.update().where(rooms.c.id == bindparam("rid")).values(last_seq=bindparam("new_seq"))
)


def _existing_user_ids(
    connection: Connection, user_ids: Sequence[str], *, lock: bool = False
) -> set[str]:
    """The ids among ``user_ids`` that are stored; ``lock``: row-lock them too."""
    found: set[str] = set()
    if lock:
        user_ids = sorted(user_ids)  # chunks in order, so locks are taken in order
    statement = _LOCK_USER_IDS if lock else _SELECT_USER_IDS
    for chunk in _chunks(user_ids):
        found.update(connection.execute(statement, {"ids": list(chunk)}).scalars())
    return found


def _check_room_limit(connection: Connection, user_ids: Sequence[str], limit: int) -> None:
    """LimitExceeded for the first of ``user_ids`` already in ``limit`` rooms.

    Call with the users' rows locked (``_existing_user_ids(..., lock=True)``)
    and before the op's first write.
    """
    counts: dict[str, int] = {}
    for chunk in _chunks(sorted(set(user_ids))):
        counts.update(connection.execute(COUNT_ROOMS, {"ids": list(chunk)}).all())
    for user_id in user_ids:
        if counts.get(user_id, 0) >= limit:
            raise LimitExceeded(user_id, limit)


def _stored_keys(
    connection: Connection, keys: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str, str], tuple[int, int]]:
    stored: dict[tuple[str, str, str], tuple[int, int]] = {}
    for key_chunk in _chunks(keys, _KEY_CHUNK):
        # An OR of equalities, not "(a, b, c) IN (VALUES ...)": SQLite answers
        # the latter with a scan of the whole table, the former with one
        # probe of the unique index per key (PostgreSQL: a BitmapOr).
        params: dict[str, str] = {}
        for i, (room_id, sender_id, client_id) in enumerate(key_chunk):
            params[f"r{i}"], params[f"s{i}"], params[f"c{i}"] = room_id, sender_id, client_id
        for room_id, sender_id, client_id, seq, created in connection.execute(
            _select_stored(len(key_chunk)), params
        ):
            stored[(room_id, sender_id, client_id)] = (seq, created)
    return stored


@dataclass(slots=True)
class _AppendPlan:
    results: list[object]
    rows: list[dict[str, object]]
    last_seq: dict[str, int]


def _plan_appends(
    ops: Sequence[AppendArgs],
    last_seq: dict[str, int],
    known_users: set[str] | None,
    stored: dict[tuple[str, str, str], tuple[int, int]],
) -> _AppendPlan:
    """Assign seqs in op order; None for ``known_users`` means "assume all exist"."""
    next_seq = dict(last_seq)
    seen = dict(stored)  # grows with this run's own appends: in-run retries
    results: list[object] = []
    rows: list[dict[str, object]] = []
    for op in ops:
        if op.room_id not in next_seq:
            results.append(Failed(NotFound(f"No such room: {op.room_id!r}")))
            continue
        if known_users is not None and op.sender_id not in known_users:
            results.append(Failed(NotFound(f"No such user: {op.sender_id!r}")))
            continue
        key = (op.room_id, op.sender_id, op.client_id)
        original = seen.get(key)
        if original is not None:
            results.append(AppendResult(original[0], original[1], duplicate=True))
            continue
        seq = next_seq[op.room_id] = next_seq[op.room_id] + 1
        seen[key] = (seq, op.now_ms)
        rows.append(
            {
                "room_id": op.room_id,
                "seq": seq,
                "sender_id": op.sender_id,
                "client_id": op.client_id,
                "body": op.body,
                "created_at_ms": op.now_ms,
                "edited_at_ms": None,
                "deleted": False,
            }
        )
        results.append(AppendResult(seq, op.now_ms, duplicate=False))
    return _AppendPlan(results, rows, next_seq)


def append_many(connection: Connection, ops: Sequence[AppendArgs]) -> list[object]:
    """Executor of appends: assigns per-room seqs and dedupes, in op order.

    Optimistic: a stored duplicate only exists when a client retries, so the
    fast path assumes there is none and that every sender exists, and lets
    the unique and foreign keys check it: lock-read the rooms, insert every
    new message (one executemany, in a savepoint), write back the rooms'
    ``last_seq``. If the insert violates a constraint, the savepoint is rolled
    back and the run is planned again from the senders and dedupe keys
    actually stored (two more reads). Either way the statement count does not
    depend on the number of ops.
    """
    room_ids = sorted({op.room_id for op in ops})
    last_seq: dict[str, int] = {}
    for chunk in _chunks(room_ids):
        rows = connection.execute(_SELECT_ROOM_SEQS, {"ids": list(chunk)})
        # .all(): dict() would take a Result (it has keys()) for a mapping.
        last_seq.update(dict(rows.all()))
    plan = _plan_appends(ops, last_seq, None, {})
    if plan.rows:
        savepoint = connection.begin_nested()
        try:
            connection.execute(_INSERT_MESSAGE, plan.rows)
        except IntegrityError:
            savepoint.rollback()
            candidates = [op for op in ops if op.room_id in last_seq]
            known_users = _existing_user_ids(
                connection, sorted({op.sender_id for op in candidates})
            )
            keys = sorted(
                {
                    (op.room_id, op.sender_id, op.client_id)
                    for op in candidates
                    if op.sender_id in known_users
                }
            )
            plan = _plan_appends(ops, last_seq, known_users, _stored_keys(connection, keys))
            if plan.rows:
                connection.execute(_INSERT_MESSAGE, plan.rows)
        else:
            savepoint.commit()
    advanced = [
        {"rid": room_id, "new_seq": seq}
        for room_id, seq in sorted(plan.last_seq.items())
        if seq != last_seq[room_id]
    ]
    if advanced:
        connection.execute(_UPDATE_LAST_SEQ, advanced)
    return plan.results


# ---------------------------------------------------------------------------
# Record builders


def _user_record(row: Row[Any]) -> UserRecord:
    return UserRecord(row.id, row.name, row.created_at_ms, row.last_seen_ms)


def _room_record(row: Row[Any]) -> RoomRecord:
    return RoomRecord(
        id=row.id,
        kind=cast(RoomKind, row.kind),
        name=row.name,
        owner_id=row.owner_id,
        created_at_ms=row.created_at_ms,
        last_seq=row.last_seq,
        direct_key=row.direct_key,
    )


def _message_record(row: Row[Any]) -> MessageRecord:
    return MessageRecord(
        room_id=row.room_id,
        seq=row.seq,
        sender_id=row.sender_id,
        client_id=row.client_id,
        body=None if row.body is None else unpack_body(row.body),
        created_at_ms=row.created_at_ms,
        edited_at_ms=row.edited_at_ms,
        deleted=bool(row.deleted),
    )


def _get_room_row(connection: Connection, room_id: str) -> Row[Any]:
    row = connection.execute(select(rooms).where(rooms.c.id == room_id)).one_or_none()
    if row is None:
        raise NotFound(f"No such room: {room_id!r}")
    return row


def _require_user(connection: Connection, user_id: str) -> None:
    if connection.execute(select(users.c.id).where(users.c.id == user_id)).first() is None:
        raise NotFound(f"No such user: {user_id!r}")


def _not_member(connection: Connection, room_id: str, user_id: str) -> NotFound:
    _get_room_row(connection, room_id)  # raises if the room itself is missing
    return NotFound(f"{user_id!r} is not a member of room {room_id!r}")


# ---------------------------------------------------------------------------
# Other writes: each checks everything before its first write (see run_each)


def upsert_user(connection: Connection, *, user_id: str, name: str, now_ms: int) -> UserRecord:
    """Insert the user or update its name."""
    row = connection.execute(select(users).where(users.c.id == user_id)).one_or_none()
    if row is None:
        connection.execute(
            users.insert().values(id=user_id, name=name, created_at_ms=now_ms, last_seen_ms=None)
        )
        return UserRecord(user_id, name, now_ms, None)
    if row.name != name:
        connection.execute(users.update().where(users.c.id == user_id).values(name=name))
    return UserRecord(row.id, name, row.created_at_ms, row.last_seen_ms)


def touch_last_seen(connection: Connection, *, user_id: str, ts_ms: int) -> None:
    """Raise ``last_seen_ms`` to ``ts_ms`` if it is lower (or unset)."""
    result = connection.execute(
        users.update()
        .where(
            users.c.id == user_id,
            or_(users.c.last_seen_ms.is_(None), users.c.last_seen_ms < ts_ms),
        )
        .values(last_seen_ms=ts_ms)
    )
    if result.rowcount == 0:  # nothing written: either up to date or no such user
        _require_user(connection, user_id)


def set_online(connection: Connection, *, user_id: str, devices: int) -> None:
    """Store the user's live device count; an unknown user is ignored.

    Never fails on its own: an UPDATE that matches no row (no such user, or
    the count is unchanged) writes nothing, and nothing needs checking.
    """
    connection.execute(
        users.update()
        # Skip unchanged rows: no new row version, no index churn.
        .where(users.c.id == user_id, users.c.online_devices != devices)
        .values(online_devices=devices)
    )


def _insert_memberships(
    connection: Connection, room_id: str, owner_id: str, others: Sequence[str], now_ms: int
) -> None:
    rows = [{"room_id": room_id, "user_id": owner_id, "role": "owner", "joined_at_ms": now_ms}]
    rows += [
        {"room_id": room_id, "user_id": user_id, "role": "member", "joined_at_ms": now_ms}
        for user_id in others
    ]
    connection.execute(memberships.insert().values(read_seq=0), rows)


def create_room(
    connection: Connection,
    *,
    room_id: str,
    kind: RoomKind,
    name: str,
    owner_id: str,
    members: Sequence[str],
    now_ms: int,
    max_rooms_per_user: int | None,
) -> RoomRecord:
    """Insert a public or private room with its owner and members."""
    others = [user_id for user_id in members if user_id != owner_id]
    wanted = [owner_id, *others]
    found = _existing_user_ids(connection, wanted, lock=max_rooms_per_user is not None)
    for user_id in wanted:
        if user_id not in found:
            raise NotFound(f"No such user: {user_id!r}")
    if max_rooms_per_user is not None:
        _check_room_limit(connection, wanted, max_rooms_per_user)
    record = RoomRecord(room_id, kind, name, owner_id, now_ms, 0, None)
    connection.execute(
        rooms.insert().values(
            id=room_id,
            kind=kind,
            name=name,
            owner_id=owner_id,
            created_at_ms=now_ms,
            last_seq=0,
            direct_key=None,
        )
    )
    _insert_memberships(connection, room_id, owner_id, others, now_ms)
    return record


def get_or_create_direct(
    connection: Connection,
    *,
    room_id: str,
    key: str,
    a: str,
    b: str,
    now_ms: int,
    max_rooms_per_user: int | None,
) -> RoomRecord:
    """The direct room with ``key``; created as ``room_id`` if missing."""
    row = connection.execute(select(rooms).where(rooms.c.direct_key == key)).one_or_none()
    if row is not None:
        return _room_record(row)
    found = _existing_user_ids(connection, [a, b], lock=max_rooms_per_user is not None)
    for user_id in (a, b):
        if user_id not in found:
            raise NotFound(f"No such user: {user_id!r}")
    if max_rooms_per_user is not None:
        _check_room_limit(connection, [a] if a == b else [a, b], max_rooms_per_user)
    connection.execute(
        rooms.insert().values(
            id=room_id,
            kind="direct",
            name="",
            owner_id=a,
            created_at_ms=now_ms,
            last_seq=0,
            direct_key=key,
        )
    )
    _insert_memberships(connection, room_id, a, [b] if b != a else [], now_ms)
    return RoomRecord(room_id, "direct", "", a, now_ms, 0, key)


def _membership_exists(connection: Connection, room_id: str, user_id: str) -> bool:
    query = select(memberships.c.user_id).where(
        memberships.c.room_id == room_id, memberships.c.user_id == user_id
    )
    return connection.execute(query).first() is not None


def add_member(
    connection: Connection,
    *,
    room_id: str,
    user_id: str,
    now_ms: int,
    max_rooms_per_user: int | None,
) -> bool:
    """Add a member to a public or private room; False if already one."""
    room = _get_room_row(connection, room_id)
    if room.kind == "direct":
        raise Conflict(f"Cannot add members to direct room {room_id!r}")
    if max_rooms_per_user is None:
        _require_user(connection, user_id)
    elif not _existing_user_ids(connection, [user_id], lock=True):
        raise NotFound(f"No such user: {user_id!r}")
    if _membership_exists(connection, room_id, user_id):
        return False
    if max_rooms_per_user is not None:
        _check_room_limit(connection, [user_id], max_rooms_per_user)
    connection.execute(
        memberships.insert().values(
            room_id=room_id, user_id=user_id, role="member", joined_at_ms=now_ms, read_seq=0
        )
    )
    return True


def remove_member(connection: Connection, *, room_id: str, user_id: str) -> bool:
    """Remove a member and its device markers; False if not a member."""
    room = _get_room_row(connection, room_id)
    if room.kind == "direct":
        raise Conflict(f"Cannot remove members from direct room {room_id!r}")
    if user_id == room.owner_id:
        raise Conflict(f"Cannot remove the owner of room {room_id!r}")
    # Explicit rather than relying on ON DELETE CASCADE alone, which SQLite
    # only honours with foreign_keys=ON on the connection.
    connection.execute(
        device_receipts.delete().where(
            device_receipts.c.room_id == room_id, device_receipts.c.user_id == user_id
        )
    )
    result = connection.execute(
        memberships.delete().where(
            memberships.c.room_id == room_id, memberships.c.user_id == user_id
        )
    )
    return result.rowcount > 0


def _own_message(connection: Connection, room_id: str, seq: int, sender_id: str) -> Row[Any]:
    row = connection.execute(
        select(messages).where(messages.c.room_id == room_id, messages.c.seq == seq)
    ).one_or_none()
    if row is None:
        raise NotFound(f"No message {seq} in room {room_id!r}")
    if row.sender_id != sender_id:
        raise Conflict(f"Message {seq} in room {room_id!r} was not sent by {sender_id!r}")
    return row


def edit_message(
    connection: Connection, *, room_id: str, seq: int, sender_id: str, body: bytes, now_ms: int
) -> MessageRecord:
    """Replace the body of the sender's own, undeleted message."""
    row = _own_message(connection, room_id, seq, sender_id)
    if row.deleted:
        raise NotFound(f"Message {seq} in room {room_id!r} was deleted")
    connection.execute(
        messages.update()
        .where(messages.c.room_id == room_id, messages.c.seq == seq)
        .values(body=body, edited_at_ms=now_ms)
    )
    return MessageRecord(
        room_id, seq, sender_id, row.client_id, unpack_body(body), row.created_at_ms, now_ms, False
    )


def delete_message(
    connection: Connection, *, room_id: str, seq: int, sender_id: str, now_ms: int
) -> MessageRecord:
    """Turn the sender's own message into a tombstone (idempotent)."""
    row = _own_message(connection, room_id, seq, sender_id)
    if row.deleted:
        return _message_record(row)
    connection.execute(
        messages.update()
        .where(messages.c.room_id == room_id, messages.c.seq == seq)
        .values(body=None, deleted=True, edited_at_ms=now_ms)
    )
    return MessageRecord(
        room_id, seq, sender_id, row.client_id, None, row.created_at_ms, now_ms, True
    )


def set_read(connection: Connection, *, room_id: str, user_id: str, seq: int) -> int:
    """Raise the member's read marker to ``min(seq, last_seq)``."""
    row = connection.execute(
        select(memberships.c.read_seq, rooms.c.last_seq)
        .join(rooms, rooms.c.id == memberships.c.room_id)
        .where(memberships.c.room_id == room_id, memberships.c.user_id == user_id)
    ).one_or_none()
    if row is None:
        raise _not_member(connection, room_id, user_id)
    target = min(seq, int(row.last_seq))
    current = int(row.read_seq)
    if target <= current:
        return current
    connection.execute(
        memberships.update()
        .where(memberships.c.room_id == room_id, memberships.c.user_id == user_id)
        .values(read_seq=target)
    )
    return target


def set_delivered(
    connection: Connection, *, room_id: str, user_id: str, device_id: str, seq: int
) -> int:
    """Raise a member device's delivery marker to ``min(seq, last_seq)``."""
    row = connection.execute(
        select(rooms.c.last_seq)
        .join(memberships, rooms.c.id == memberships.c.room_id)
        .where(memberships.c.room_id == room_id, memberships.c.user_id == user_id)
    ).one_or_none()
    if row is None:
        raise _not_member(connection, room_id, user_id)
    target = min(seq, int(row.last_seq))
    where = and_(
        device_receipts.c.room_id == room_id,
        device_receipts.c.user_id == user_id,
        device_receipts.c.device_id == device_id,
    )
    stored = connection.execute(select(device_receipts.c.delivered_seq).where(where)).scalar()
    if stored is None:
        connection.execute(
            device_receipts.insert().values(
                room_id=room_id, user_id=user_id, device_id=device_id, delivered_seq=target
            )
        )
        return target
    if target <= int(stored):
        return int(stored)
    connection.execute(device_receipts.update().where(where).values(delivered_seq=target))
    return target


def save_session(connection: Connection, *, session: SessionRecord) -> None:
    """Insert the session or replace the stored one with its id (one upsert)."""
    values = {
        "id": session.id,
        "user_id": session.user_id,
        "device_id": session.device_id,
        "watching": encode_watching(session.watching),
        "updated_at_ms": session.updated_at_ms,
    }
    # A native upsert rather than select-then-insert: two nodes saving the
    # same session cannot collide on the primary key.
    changed = {name: value for name, value in values.items() if name != "id"}
    if connection.dialect.name == "postgresql":
        pg_statement = postgresql.insert(sessions).values(values)
        connection.execute(pg_statement.on_conflict_do_update(index_elements=["id"], set_=changed))
    else:
        lite_statement = sqlite.insert(sessions).values(values)
        connection.execute(
            lite_statement.on_conflict_do_update(index_elements=["id"], set_=changed)
        )


def delete_sessions(connection: Connection, *, updated_before_ms: int) -> int:
    """Delete sessions last saved before ``updated_before_ms``; how many."""
    result = connection.execute(
        sessions.delete().where(sessions.c.updated_at_ms < updated_before_ms)
    )
    return int(result.rowcount)


def encode_watching(watching: Sequence[str]) -> str:
    """The ``sessions.watching`` column: a compact JSON array of the ids."""
    return json.dumps(list(watching), ensure_ascii=False, separators=(",", ":"))


def decode_watching(text: str) -> tuple[str, ...]:
    """Inverse of :func:`encode_watching`."""
    return tuple(json.loads(text))


# ---------------------------------------------------------------------------
# Reads (reader threads, each in its own read transaction)


def get_user(connection: Connection, user_id: str) -> UserRecord:
    """The user, or NotFound."""
    row = connection.execute(select(users).where(users.c.id == user_id)).one_or_none()
    if row is None:
        raise NotFound(f"No such user: {user_id!r}")
    return _user_record(row)


def get_last_seen(connection: Connection, user_ids: Sequence[str]) -> dict[str, int | None]:
    """Last-seen times; None for unknown users."""
    result: dict[str, int | None] = dict.fromkeys(user_ids)
    for chunk in _chunks(user_ids):
        query = select(users.c.id, users.c.last_seen_ms).where(users.c.id.in_(list(chunk)))
        result.update(dict(connection.execute(query).all()))
    return result


#: The query of ``online_users``. Its WHERE is the partial index's predicate
#: verbatim, with a literal 0 rather than a bound parameter: SQLite uses a
#: partial index only for a query term identical to its predicate (``>= 1``
#: would scan), and PostgreSQL cannot match a generic plan's ``> $1`` to it
#: (psycopg prepares a statement on its fifth run).
_SELECT_ONLINE = select(users.c.id, users.c.online_devices).where(text(ONLINE_PREDICATE))


def online_users(connection: Connection) -> dict[str, int]:
    """Users with ``online_devices > 0`` and their counts (the partial index)."""
    return {user_id: int(devices) for user_id, devices in connection.execute(_SELECT_ONLINE)}


def get_room(connection: Connection, room_id: str) -> RoomRecord:
    """The room, or NotFound."""
    return _room_record(_get_room_row(connection, room_id))


def load_session(connection: Connection, session_id: str) -> SessionRecord | None:
    """The stored session, or None."""
    row = connection.execute(select(sessions).where(sessions.c.id == session_id)).one_or_none()
    if row is None:
        return None
    return SessionRecord(
        row.id, row.user_id, row.device_id, decode_watching(row.watching), row.updated_at_ms
    )


def find_direct(connection: Connection, key: str) -> RoomRecord | None:
    """The direct room with ``key``, if it exists."""
    row = connection.execute(select(rooms).where(rooms.c.direct_key == key)).one_or_none()
    return None if row is None else _room_record(row)


def list_members(connection: Connection, room_id: str) -> list[MemberRecord]:
    """Members by join time, then user id."""
    _get_room_row(connection, room_id)
    rows = connection.execute(select(memberships).where(memberships.c.room_id == room_id))
    members = [
        MemberRecord(row.user_id, cast(Role, row.role), row.joined_at_ms, row.read_seq)
        for row in rows
    ]
    members.sort(key=lambda m: (m.joined_at_ms, m.user_id))
    return members


def _unread_condition(user_id: str) -> Any:
    return and_(
        messages.c.room_id == memberships.c.room_id,
        messages.c.seq > memberships.c.read_seq,
        messages.c.sender_id != user_id,
        messages.c.deleted == false(),
    )


def rooms_for_user(connection: Connection, user_id: str) -> list[RoomSummary]:
    """The user's rooms with role, read marker and unread count."""
    unread = (
        select(func.count())
        .select_from(messages)
        .where(_unread_condition(user_id))
        .correlate(memberships)
        .scalar_subquery()
    )
    query = (
        select(rooms, memberships.c.role, memberships.c.read_seq, unread.label("unread"))
        .join(memberships, memberships.c.room_id == rooms.c.id)
        .where(memberships.c.user_id == user_id)
    )
    summaries = [
        RoomSummary(_room_record(row), cast(Role, row.role), row.read_seq, row.unread)
        for row in connection.execute(query)
    ]
    summaries.sort(key=lambda s: (s.room.created_at_ms, s.room.id))
    return summaries


# Built once: statement construction costs more than the query itself (this
# runs at every connect, so a restart runs it once per reconnecting client).
_MY_ROOMS = select(memberships.c.room_id).where(memberships.c.user_id == bindparam("user_id"))
_MY_SMALL_ROOMS = (
    select(memberships.c.room_id)
    .where(memberships.c.room_id.in_(_MY_ROOMS))  # only the user's rooms are counted
    .group_by(memberships.c.room_id)
    .having(func.count() <= bindparam("max_members"))
)
_ROOM_MATES = (
    select(memberships.c.user_id)
    .distinct()
    .where(memberships.c.room_id.in_(_MY_ROOMS), memberships.c.user_id != bindparam("user_id"))
)
_SMALL_ROOM_MATES = (
    select(memberships.c.user_id)
    .distinct()
    .where(
        memberships.c.room_id.in_(_MY_SMALL_ROOMS),
        memberships.c.user_id != bindparam("user_id"),
    )
)


def room_mates(connection: Connection, user_id: str, max_room_members: int | None) -> set[str]:
    """Users sharing at least one room with ``user_id`` (see RoomStore.room_mates)."""
    if max_room_members is None:
        rows = connection.execute(_ROOM_MATES, {"user_id": user_id})
    else:
        rows = connection.execute(
            _SMALL_ROOM_MATES, {"user_id": user_id, "max_members": max_room_members}
        )
    return {row.user_id for row in rows}


def history(
    connection: Connection,
    room_id: str,
    before_seq: int | None,
    after_seq: int | None,
    limit: int,
) -> list[MessageRecord]:
    """A page of messages in ascending seq (see MessageStore.history)."""
    query = select(messages).where(messages.c.room_id == room_id)
    if before_seq is not None:
        query = query.where(messages.c.seq < before_seq)
    if after_seq is not None:
        query = query.where(messages.c.seq > after_seq).order_by(messages.c.seq)
    else:
        query = query.order_by(messages.c.seq.desc())
    rows = list(connection.execute(query.limit(limit)))
    if not rows:
        _get_room_row(connection, room_id)  # an empty page, or no such room
    records = [_message_record(row) for row in rows]
    if after_seq is None:
        records.reverse()
    return records


def receipts(connection: Connection, room_id: str) -> list[MemberReceipts]:
    """Every member's read marker and device markers, by user id."""
    _get_room_row(connection, room_id)
    read: dict[str, int] = dict(
        connection.execute(
            select(memberships.c.user_id, memberships.c.read_seq).where(
                memberships.c.room_id == room_id
            )
        ).all()
    )
    devices: dict[str, list[DeviceReceipt]] = {user_id: [] for user_id in read}
    for user_id, device_id, delivered in connection.execute(
        select(
            device_receipts.c.user_id, device_receipts.c.device_id, device_receipts.c.delivered_seq
        ).where(device_receipts.c.room_id == room_id)
    ):
        devices.setdefault(user_id, []).append(DeviceReceipt(device_id, delivered))
    return [
        MemberReceipts(
            user_id,
            read[user_id],
            tuple(sorted(devices[user_id], key=lambda d: d.device_id)),
        )
        for user_id in sorted(read)
    ]


def unread_count(connection: Connection, room_id: str, user_id: str) -> int:
    """Messages after the member's read marker, from others, not deleted."""
    read_seq = connection.execute(
        select(memberships.c.read_seq).where(
            memberships.c.room_id == room_id, memberships.c.user_id == user_id
        )
    ).scalar()
    if read_seq is None:
        raise _not_member(connection, room_id, user_id)
    count = connection.execute(
        select(func.count())
        .select_from(messages)
        .where(
            messages.c.room_id == room_id,
            messages.c.seq > read_seq,
            messages.c.sender_id != user_id,
            messages.c.deleted == false(),
        )
    ).scalar_one()
    return int(count)
