"""MemoryStore: the storage API in process memory, for tests and development.

Same contract as :class:`tether.storage.sql.SqlStore`, checked by the same
contract suite: the same argument checks, the same errors in the same order
of precedence, the same sorting (by code point), and bodies kept as msgpack
bytes so that reads return fresh decoded values exactly as SQL reads do.

Every method runs without yielding in the middle, so each call is atomic
with respect to other tasks; each call is a trio checkpoint. Nothing is
persisted and nothing is bounded except by the arguments' own limits: use it
where the data set is small.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import trio

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
    unpack_body,
)
from tether.storage.errors import Conflict, LimitExceeded, NotFound
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

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _User:
    name: str
    created_at_ms: int
    last_seen_ms: int | None = None
    online_devices: int = 0


@dataclass(slots=True)
class _Member:
    role: Role
    joined_at_ms: int
    read_seq: int = 0
    delivered: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Message:
    sender_id: str
    client_id: str
    body: bytes | None
    created_at_ms: int
    edited_at_ms: int | None = None
    deleted: bool = False


@dataclass(slots=True)
class _Room:
    id: str
    kind: RoomKind
    name: str
    owner_id: str
    created_at_ms: int
    direct_key: str | None
    members: dict[str, _Member] = field(default_factory=dict)
    # messages[seq - 1]: seqs are dense, so the list index is the seq.
    messages: list[_Message] = field(default_factory=list)
    # (sender_id, client_id) -> seq, the dedupe index.
    by_client_id: dict[tuple[str, str], int] = field(default_factory=dict)

    def record(self) -> RoomRecord:
        return RoomRecord(
            self.id,
            self.kind,
            self.name,
            self.owner_id,
            self.created_at_ms,
            len(self.messages),
            self.direct_key,
        )


def _message_record(room_id: str, seq: int, message: _Message) -> MessageRecord:
    return MessageRecord(
        room_id=room_id,
        seq=seq,
        sender_id=message.sender_id,
        client_id=message.client_id,
        body=None if message.body is None else unpack_body(message.body),
        created_at_ms=message.created_at_ms,
        edited_at_ms=message.edited_at_ms,
        deleted=message.deleted,
    )


class MemoryStore:
    """The :class:`~tether.storage.interfaces.Store` API in memory.

    Method contracts are those of :mod:`tether.storage.interfaces`; this
    store never raises StorageUnavailable.
    """

    def __init__(self) -> None:
        """Create an empty store."""
        self._users: dict[str, _User] = {}
        self._rooms: dict[str, _Room] = {}
        self._direct: dict[str, str] = {}
        # user id -> how many rooms the user is a member of (max_rooms_per_user).
        self._room_counts: dict[str, int] = {}
        self._sessions: dict[str, SessionRecord] = {}

    # -- helpers ----------------------------------------------------------

    def _room(self, room_id: str) -> _Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise NotFound(f"No such room: {room_id!r}")
        return room

    def _require_user(self, user_id: str) -> None:
        if user_id not in self._users:
            raise NotFound(f"No such user: {user_id!r}")

    def _member(self, room_id: str, user_id: str) -> tuple[_Room, _Member]:
        room = self._room(room_id)
        member = room.members.get(user_id)
        if member is None:
            raise NotFound(f"{user_id!r} is not a member of room {room_id!r}")
        return room, member

    def _own_message(self, room_id: str, seq: int, sender_id: str) -> _Message:
        room = self._rooms.get(room_id)
        if room is None or not 1 <= seq <= len(room.messages):
            raise NotFound(f"No message {seq} in room {room_id!r}")
        message = room.messages[seq - 1]
        if message.sender_id != sender_id:
            raise Conflict(f"Message {seq} in room {room_id!r} was not sent by {sender_id!r}")
        return message

    def _check_room_limit(self, user_ids: Iterable[str], limit: int | None) -> None:
        if limit is None:
            return
        for user_id in user_ids:
            if self._room_counts.get(user_id, 0) >= limit:
                raise LimitExceeded(user_id, limit)

    def _joined(self, user_id: str, delta: int) -> None:
        count = self._room_counts.get(user_id, 0) + delta
        if count:
            self._room_counts[user_id] = count
        else:
            del self._room_counts[user_id]

    @staticmethod
    def _unread(room: _Room, user_id: str, read_seq: int) -> int:
        return sum(
            1
            for message in room.messages[read_seq:]
            if message.sender_id != user_id and not message.deleted
        )

    # -- UserStore --------------------------------------------------------

    async def upsert_user(
        self, user_id: str, name: str, *, now_ms: int | None = None
    ) -> UserRecord:
        """See :meth:`tether.storage.interfaces.UserStore.upsert_user`."""
        check_user_id(user_id)
        check_name(name)
        now = check_now(now_ms)
        await trio.lowlevel.checkpoint()
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User(name, now)
        else:
            user.name = name
        return UserRecord(user_id, user.name, user.created_at_ms, user.last_seen_ms)

    async def touch_last_seen(self, user_id: str, ts_ms: int) -> None:
        """See :meth:`tether.storage.interfaces.UserStore.touch_last_seen`."""
        check_user_id(user_id)
        check_int("ts_ms", ts_ms)
        await trio.lowlevel.checkpoint()
        self._require_user(user_id)
        user = self._users[user_id]
        if user.last_seen_ms is None or user.last_seen_ms < ts_ms:
            user.last_seen_ms = ts_ms

    async def get_last_seen(self, user_ids: Collection[str]) -> dict[str, int | None]:
        """See :meth:`tether.storage.interfaces.UserStore.get_last_seen`."""
        ids = check_user_ids(user_ids)
        await trio.lowlevel.checkpoint()
        result: dict[str, int | None] = {}
        for user_id in ids:
            user = self._users.get(user_id)
            result[user_id] = None if user is None else user.last_seen_ms
        return result

    async def get_user(self, user_id: str) -> UserRecord:
        """See :meth:`tether.storage.interfaces.UserStore.get_user`."""
        check_user_id(user_id)
        await trio.lowlevel.checkpoint()
        self._require_user(user_id)
        user = self._users[user_id]
        return UserRecord(user_id, user.name, user.created_at_ms, user.last_seen_ms)

    async def set_online(self, user_id: str, devices: int) -> None:
        """See :meth:`tether.storage.interfaces.UserStore.set_online`."""
        check_user_id(user_id)
        check_devices(devices)
        await trio.lowlevel.checkpoint()
        user = self._users.get(user_id)
        if user is not None:  # an unknown user is ignored, as SqlStore's UPDATE does
            user.online_devices = devices

    async def online_users(self) -> dict[str, int]:
        """See :meth:`tether.storage.interfaces.UserStore.online_users`.

        Scans every user: the memory store is for small data sets.
        """
        await trio.lowlevel.checkpoint()
        return {
            user_id: user.online_devices
            for user_id, user in self._users.items()
            if user.online_devices > 0
        }

    # -- RoomStore --------------------------------------------------------

    def _insert_room(
        self,
        *,
        kind: RoomKind,
        name: str,
        owner_id: str,
        others: list[str],
        now: int,
        key: str | None,
    ) -> _Room:
        room = _Room(new_room_id(), kind, name, owner_id, now, key)
        room.members[owner_id] = _Member("owner", now)
        for user_id in others:
            room.members[user_id] = _Member("member", now)
        for user_id in room.members:
            self._joined(user_id, 1)
        self._rooms[room.id] = room
        if key is not None:
            self._direct[key] = room.id
        return room

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
        checked_kind = check_kind(kind)
        check_name(name)
        check_user_id(owner_id, "owner_id")
        others = [u for u in check_user_ids(members, "members") if u != owner_id]
        now = check_now(now_ms)
        limit = check_max_rooms(max_rooms_per_user)
        await trio.lowlevel.checkpoint()
        for user_id in (owner_id, *others):
            self._require_user(user_id)
        self._check_room_limit((owner_id, *others), limit)
        return self._insert_room(
            kind=checked_kind, name=name, owner_id=owner_id, others=others, now=now, key=None
        ).record()

    async def get_room(self, room_id: str) -> RoomRecord:
        """See :meth:`tether.storage.interfaces.RoomStore.get_room`."""
        check_room_id(room_id)
        await trio.lowlevel.checkpoint()
        return self._room(room_id).record()

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
        await trio.lowlevel.checkpoint()
        room_id = self._direct.get(key)
        if room_id is not None:
            return self._rooms[room_id].record()
        self._require_user(a)
        self._require_user(b)
        self._check_room_limit(dict.fromkeys((a, b)), limit)
        return self._insert_room(
            kind="direct", name="", owner_id=a, others=[b] if b != a else [], now=now, key=key
        ).record()

    async def add_member(
        self,
        room_id: str,
        user_id: str,
        *,
        now_ms: int | None = None,
        max_rooms_per_user: int | None = None,
    ) -> bool:
        """See :meth:`tether.storage.interfaces.RoomStore.add_member`."""
        check_room_id(room_id)
        check_user_id(user_id)
        now = check_now(now_ms)
        limit = check_max_rooms(max_rooms_per_user)
        await trio.lowlevel.checkpoint()
        room = self._room(room_id)
        if room.kind == "direct":
            raise Conflict(f"Cannot add members to direct room {room_id!r}")
        self._require_user(user_id)
        if user_id in room.members:
            return False
        self._check_room_limit((user_id,), limit)
        room.members[user_id] = _Member("member", now)
        self._joined(user_id, 1)
        return True

    async def remove_member(self, room_id: str, user_id: str) -> bool:
        """See :meth:`tether.storage.interfaces.RoomStore.remove_member`."""
        check_room_id(room_id)
        check_user_id(user_id)
        await trio.lowlevel.checkpoint()
        room = self._room(room_id)
        if room.kind == "direct":
            raise Conflict(f"Cannot remove members from direct room {room_id!r}")
        if user_id == room.owner_id:
            raise Conflict(f"Cannot remove the owner of room {room_id!r}")
        if room.members.pop(user_id, None) is None:
            return False
        self._joined(user_id, -1)
        return True

    async def list_members(self, room_id: str) -> list[MemberRecord]:
        """See :meth:`tether.storage.interfaces.RoomStore.list_members`."""
        check_room_id(room_id)
        await trio.lowlevel.checkpoint()
        room = self._room(room_id)
        members = [
            MemberRecord(user_id, m.role, m.joined_at_ms, m.read_seq)
            for user_id, m in room.members.items()
        ]
        members.sort(key=lambda m: (m.joined_at_ms, m.user_id))
        return members

    async def rooms_for_user(self, user_id: str) -> list[RoomSummary]:
        """See :meth:`tether.storage.interfaces.RoomStore.rooms_for_user`."""
        check_user_id(user_id)
        await trio.lowlevel.checkpoint()
        summaries = [
            RoomSummary(
                room.record(),
                member.role,
                member.read_seq,
                self._unread(room, user_id, member.read_seq),
            )
            for room in self._rooms.values()
            if (member := room.members.get(user_id)) is not None
        ]
        summaries.sort(key=lambda s: (s.room.created_at_ms, s.room.id))
        return summaries

    async def room_mates(self, user_id: str, *, max_room_members: int | None = None) -> set[str]:
        """See :meth:`tether.storage.interfaces.RoomStore.room_mates`."""
        check_user_id(user_id)
        await trio.lowlevel.checkpoint()
        mates: set[str] = set()
        for room in self._rooms.values():
            if user_id not in room.members:
                continue
            if max_room_members is not None and len(room.members) > max_room_members:
                continue
            mates.update(room.members)
        mates.discard(user_id)
        return mates

    # -- MessageStore -----------------------------------------------------

    async def append_message(
        self, room_id: str, sender_id: str, client_id: str, body: object, now_ms: int
    ) -> AppendResult:
        """See :meth:`tether.storage.interfaces.MessageStore.append_message`."""
        check_room_id(room_id)
        check_user_id(sender_id, "sender_id")
        check_client_id(client_id)
        packed = pack_body(body)
        check_int("now_ms", now_ms)
        await trio.lowlevel.checkpoint()
        room = self._room(room_id)
        self._require_user(sender_id)
        seq = room.by_client_id.get((sender_id, client_id))
        if seq is not None:
            return AppendResult(seq, room.messages[seq - 1].created_at_ms, duplicate=True)
        room.messages.append(_Message(sender_id, client_id, packed, now_ms))
        seq = len(room.messages)
        room.by_client_id[(sender_id, client_id)] = seq
        return AppendResult(seq, now_ms, duplicate=False)

    async def edit_message(
        self, room_id: str, seq: int, sender_id: str, body: object, now_ms: int
    ) -> MessageRecord:
        """See :meth:`tether.storage.interfaces.MessageStore.edit_message`."""
        check_room_id(room_id)
        check_int("seq", seq)
        check_user_id(sender_id, "sender_id")
        packed = pack_body(body)
        check_int("now_ms", now_ms)
        await trio.lowlevel.checkpoint()
        message = self._own_message(room_id, seq, sender_id)
        if message.deleted:
            raise NotFound(f"Message {seq} in room {room_id!r} was deleted")
        message.body = packed
        message.edited_at_ms = now_ms
        return _message_record(room_id, seq, message)

    async def delete_message(
        self, room_id: str, seq: int, sender_id: str, now_ms: int
    ) -> MessageRecord:
        """See :meth:`tether.storage.interfaces.MessageStore.delete_message`."""
        check_room_id(room_id)
        check_int("seq", seq)
        check_user_id(sender_id, "sender_id")
        check_int("now_ms", now_ms)
        await trio.lowlevel.checkpoint()
        message = self._own_message(room_id, seq, sender_id)
        if not message.deleted:
            message.body = None
            message.deleted = True
            message.edited_at_ms = now_ms
        return _message_record(room_id, seq, message)

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
        await trio.lowlevel.checkpoint()
        room = self._room(room_id)
        # Seqs in the window are low+1 .. high-1; list index = seq - 1.
        high = (
            len(room.messages) + 1
            if before_seq is None
            else min(before_seq, len(room.messages) + 1)
        )
        low = 0 if after_seq is None else after_seq
        if low + 1 >= high:
            return []
        if after_seq is None:
            first = max(low + 1, high - limit)
            last = high - 1
        else:
            first = low + 1
            last = min(high - 1, low + limit)
        return [
            _message_record(room_id, seq, room.messages[seq - 1]) for seq in range(first, last + 1)
        ]

    async def set_read(self, room_id: str, user_id: str, seq: int) -> int:
        """See :meth:`tether.storage.interfaces.MessageStore.set_read`."""
        check_room_id(room_id)
        check_user_id(user_id)
        check_int("seq", seq)
        await trio.lowlevel.checkpoint()
        room, member = self._member(room_id, user_id)
        member.read_seq = max(member.read_seq, min(seq, len(room.messages)))
        return member.read_seq

    async def set_delivered(self, room_id: str, user_id: str, device_id: str, seq: int) -> int:
        """See :meth:`tether.storage.interfaces.MessageStore.set_delivered`."""
        check_room_id(room_id)
        check_user_id(user_id)
        check_device_id(device_id)
        check_int("seq", seq)
        await trio.lowlevel.checkpoint()
        room, member = self._member(room_id, user_id)
        target = min(seq, len(room.messages))
        current = member.delivered.get(device_id)
        if current is None or target > current:
            member.delivered[device_id] = target
        return member.delivered[device_id]

    async def receipts(self, room_id: str) -> list[MemberReceipts]:
        """See :meth:`tether.storage.interfaces.MessageStore.receipts`."""
        check_room_id(room_id)
        await trio.lowlevel.checkpoint()
        room = self._room(room_id)
        return [
            MemberReceipts(
                user_id,
                member.read_seq,
                tuple(DeviceReceipt(d, s) for d, s in sorted(member.delivered.items())),
            )
            for user_id, member in sorted(room.members.items())
        ]

    async def unread_count(self, room_id: str, user_id: str) -> int:
        """See :meth:`tether.storage.interfaces.MessageStore.unread_count`."""
        check_room_id(room_id)
        check_user_id(user_id)
        await trio.lowlevel.checkpoint()
        room, member = self._member(room_id, user_id)
        return self._unread(room, user_id, member.read_seq)

    # -- SessionStore -----------------------------------------------------

    async def save_session(self, session: SessionRecord) -> None:
        """See :meth:`tether.storage.interfaces.SessionStore.save_session`."""
        check_session(session)
        await trio.lowlevel.checkpoint()
        # Frozen, with a tuple of str: the caller cannot change it behind our back.
        self._sessions[session.id] = session

    async def load_session(self, session_id: str) -> SessionRecord | None:
        """See :meth:`tether.storage.interfaces.SessionStore.load_session`."""
        check_session_id(session_id)
        await trio.lowlevel.checkpoint()
        return self._sessions.get(session_id)

    async def delete_sessions(self, *, updated_before_ms: int) -> int:
        """See :meth:`tether.storage.interfaces.SessionStore.delete_sessions`."""
        check_int("updated_before_ms", updated_before_ms)
        await trio.lowlevel.checkpoint()
        stale = [
            session_id
            for session_id, session in self._sessions.items()
            if session.updated_at_ms < updated_before_ms
        ]
        for session_id in stale:
            del self._sessions[session_id]
        return len(stale)
