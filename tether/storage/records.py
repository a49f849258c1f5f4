"""Value objects returned by the stores, and the limits their fields obey.

Records are frozen: a store never hands out something a caller could mutate
behind its back. Message bodies are decoded afresh from their stored msgpack
bytes on every read, so two reads never share a mutable body either.

Limits are in characters and are enforced identically by every store (a
longer value raises :class:`ValueError`); the protocol layer should check
them on client input so that clients get a protocol error, not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "MAX_CLIENT_ID_LENGTH",
    "MAX_DEVICE_ID_LENGTH",
    "MAX_HISTORY_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_ONLINE_DEVICES",
    "MAX_ROOM_ID_LENGTH",
    "MAX_SEQ",
    "MAX_SESSION_ID_LENGTH",
    "MAX_SESSION_WATCHING",
    "MAX_USER_ID_LENGTH",
    "AppendResult",
    "DeviceReceipt",
    "MemberReceipts",
    "MemberRecord",
    "MessageRecord",
    "Role",
    "RoomKind",
    "RoomRecord",
    "RoomSummary",
    "SessionRecord",
    "UserRecord",
]

#: Longest user id (e.g. a token's ``sub``).
MAX_USER_ID_LENGTH: Final = 128
#: Longest room id; server-generated ids are 16 characters.
MAX_ROOM_ID_LENGTH: Final = 64
#: Longest user or room display name.
MAX_NAME_LENGTH: Final = 256
#: Longest client-chosen message id (the dedupe key of an append).
MAX_CLIENT_ID_LENGTH: Final = 64
#: Longest device id.
MAX_DEVICE_ID_LENGTH: Final = 64
#: Most messages one ``history`` call returns.
MAX_HISTORY_LIMIT: Final = 500
#: Longest resumable-session id.
MAX_SESSION_ID_LENGTH: Final = 128
#: Most user ids one session may watch.
MAX_SESSION_WATCHING: Final = 1000
#: Most live devices ``set_online`` records for one user (the INTEGER range).
MAX_ONLINE_DEVICES: Final = 2**31 - 1
#: Largest sequence number or timestamp (the signed 64-bit range of BIGINT).
MAX_SEQ: Final = 2**63 - 1

#: ``public``: anyone may join; ``private``: members are added by others;
#: ``direct``: the one conversation between two users.
RoomKind = Literal["public", "private", "direct"]
#: ``owner``: the room's creator; ``member``: everyone else.
Role = Literal["owner", "member"]


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as stored.

    Attributes:
      id: the user id (from the authentication token).
      name: display name.
      created_at_ms: when the user was first stored (Unix ms).
      last_seen_ms: last activity recorded by ``touch_last_seen``, or None.
    """

    id: str
    name: str
    created_at_ms: int
    last_seen_ms: int | None


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """A room as stored.

    Attributes:
      id: server-generated, URL-safe id.
      kind: public, private or direct.
      name: display name (empty for direct rooms).
      owner_id: the creator (for direct rooms, the user who opened it).
      created_at_ms: creation time (Unix ms).
      last_seq: sequence number of the room's latest message (0: none yet).
      direct_key: for direct rooms, the key of the user pair; else None.
    """

    id: str
    kind: RoomKind
    name: str
    owner_id: str
    created_at_ms: int
    last_seq: int
    direct_key: str | None


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member of a room.

    Attributes:
      user_id: the member.
      role: owner or member.
      joined_at_ms: when the membership was created (Unix ms).
      read_seq: highest sequence number the user has read (0: none).
    """

    user_id: str
    role: Role
    joined_at_ms: int
    read_seq: int


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """A room as seen by one of its members (the room list of a client).

    Attributes:
      room: the room.
      role: the member's role.
      read_seq: the member's read marker.
      unread_count: messages after ``read_seq`` sent by others and not deleted.
    """

    room: RoomRecord
    role: Role
    read_seq: int
    unread_count: int


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message of a room's history.

    Attributes:
      room_id: the room.
      seq: per-room sequence number, 1, 2, 3... without gaps.
      sender_id: the author.
      client_id: the author's dedupe key for this message.
      body: the msgpack-able value sent, decoded; None once deleted.
      created_at_ms: when it was appended (Unix ms).
      edited_at_ms: last edit or deletion time, or None.
      deleted: whether the message was deleted (a tombstone keeps its seq).
    """

    room_id: str
    seq: int
    sender_id: str
    client_id: str
    body: object
    created_at_ms: int
    edited_at_ms: int | None
    deleted: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of ``append_message``.

    Attributes:
      seq: the message's sequence number.
      created_at_ms: its stored creation time.
      duplicate: True if (room, sender, client_id) was already stored; ``seq``
        and ``created_at_ms`` are then the original's and nothing was written.
    """

    seq: int
    created_at_ms: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class DeviceReceipt:
    """Delivery progress of one device.

    Attributes:
      device_id: the device.
      delivered_seq: highest sequence number delivered to it.
    """

    device_id: str
    delivered_seq: int


@dataclass(frozen=True, slots=True)
class MemberReceipts:
    """Read and delivery progress of one room member.

    Attributes:
      user_id: the member.
      read_seq: the member's read marker.
      devices: per-device delivery markers, sorted by device id.
    """

    user_id: str
    read_seq: int
    devices: tuple[DeviceReceipt, ...]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A resumable session: what a reconnecting client gets back.

    Unlike the other records, callers build this one (to ``save_session``
    it), so it checks its fields when constructed.

    Attributes:
      id: the session id (1..128 characters).
      user_id: the session's user (1..128 characters; need not be stored).
      device_id: the device it was opened from (1..64 characters).
      watching: user ids whose presence the session subscribes to, at most
        1000, each 1..128 characters; kept in the given order.
      updated_at_ms: last time the session was saved (Unix ms).

    Raises:
      ValueError: a field breaks the limits above, or ``watching`` is not a
        tuple of str.
    """

    id: str
    user_id: str
    device_id: str
    watching: tuple[str, ...]
    updated_at_ms: int

    def __post_init__(self) -> None:
        from tether.storage._common import check_session_fields  # noqa: PLC0415 - imports us

        check_session_fields(self)
