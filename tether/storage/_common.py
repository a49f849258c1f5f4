"""Argument checks and encodings shared by every store implementation.

Both stores call these before doing anything, so a malformed argument fails
the same way (``ValueError``, nothing queued) whatever the backend, and a
value one backend would accept silently (SQLite does not enforce VARCHAR
lengths) is refused by all of them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

import msgpack

from tether.storage.records import (
    MAX_CLIENT_ID_LENGTH,
    MAX_DEVICE_ID_LENGTH,
    MAX_HISTORY_LIMIT,
    MAX_NAME_LENGTH,
    MAX_ONLINE_DEVICES,
    MAX_ROOM_ID_LENGTH,
    MAX_SEQ,
    MAX_SESSION_ID_LENGTH,
    MAX_SESSION_WATCHING,
    MAX_USER_ID_LENGTH,
    RoomKind,
    SessionRecord,
)

#: Kinds ``create_room`` accepts (direct rooms come from ``get_or_create_direct``).
CREATABLE_KINDS: frozenset[str] = frozenset({"public", "private"})


def now_ms() -> int:
    """The current wall-clock time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def new_room_id() -> str:
    """A fresh URL-safe room id: 16 characters, 96 random bits."""
    return secrets.token_urlsafe(12)


def direct_key(a: str, b: str) -> str:
    """The key identifying the direct room of users ``a`` and ``b``.

    The ids are sorted (so the key is the same whichever user asks) and the
    shorter-sorting id is length-prefixed, which keeps the key unambiguous
    for any ids, including ones that contain the separator.
    """
    low, high = sorted((a, b))
    return f"{len(low)}:{low}:{high}"


def check_text(what: str, value: object, max_length: int, *, allow_empty: bool = False) -> str:
    """Check a string argument against a length limit.

    Raises:
      ValueError: not a str, empty (unless allowed), too long, or contains
        NUL (PostgreSQL cannot store it, so no store accepts it).
    """
    if not isinstance(value, str):
        raise ValueError(f"Expected {what} to be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"Expected a non-empty {what}")
    if len(value) > max_length:
        raise ValueError(f"Expected {what} of at most {max_length} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(f"Expected {what} without NUL characters")
    return value


def check_user_id(value: object, what: str = "user_id") -> str:
    """Check a user id (1..128 characters)."""
    return check_text(what, value, MAX_USER_ID_LENGTH)


def check_room_id(value: object) -> str:
    """Check a room id (1..64 characters)."""
    return check_text("room_id", value, MAX_ROOM_ID_LENGTH)


def check_name(value: object) -> str:
    """Check a display name (0..256 characters)."""
    return check_text("name", value, MAX_NAME_LENGTH, allow_empty=True)


def check_client_id(value: object) -> str:
    """Check a message's client id (1..64 characters)."""
    return check_text("client_id", value, MAX_CLIENT_ID_LENGTH)


def check_device_id(value: object) -> str:
    """Check a device id (1..64 characters)."""
    return check_text("device_id", value, MAX_DEVICE_ID_LENGTH)


def check_session_id(value: object) -> str:
    """Check a session id (1..128 characters)."""
    return check_text("session id", value, MAX_SESSION_ID_LENGTH)


def check_int(what: str, value: object, *, minimum: int = 0) -> int:
    """Check an integer argument lies in ``minimum..MAX_SEQ``.

    Raises:
      ValueError: not an int (bool is refused too) or out of range.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"Expected {what} to be an int, got {type(value).__name__}")
    if not minimum <= value <= MAX_SEQ:
        raise ValueError(f"Expected {what} in {minimum}..{MAX_SEQ}, got {value}")
    return value


def check_devices(value: object) -> int:
    """Check a ``set_online`` device count (0..MAX_ONLINE_DEVICES).

    Raises:
      ValueError: not an int (bool is refused too) or out of range.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"Expected devices to be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_ONLINE_DEVICES:
        raise ValueError(f"Expected devices in 0..{MAX_ONLINE_DEVICES}, got {value}")
    return value


def check_now(value: int | None) -> int:
    """Resolve an optional ``now_ms`` argument to a checked timestamp."""
    return now_ms() if value is None else check_int("now_ms", value)


def check_kind(value: object) -> RoomKind:
    """Check a room kind for ``create_room``.

    Raises:
      ValueError: not "public" or "private".
    """
    if value == "public":
        return "public"
    if value == "private":
        return "private"
    raise ValueError(f"Expected kind 'public' or 'private', got {value!r}")


def check_user_ids(values: Iterable[str], what: str = "user_ids") -> list[str]:
    """Check a collection of user ids; returns them deduplicated, in order.

    Raises:
      ValueError: a bare string was passed (a likely slip for ``[id]``), or
        an id is malformed.
    """
    if isinstance(values, str | bytes):
        raise ValueError(f"Expected {what} to be a collection of ids, got a single string")
    return list(dict.fromkeys(check_user_id(v, what) for v in values))


def check_max_rooms(value: int | None) -> int | None:
    """Check an optional ``max_rooms_per_user`` (None: no limit; else 0..MAX_SEQ)."""
    return None if value is None else check_int("max_rooms_per_user", value)


def check_session_fields(session: SessionRecord) -> None:
    """Check the fields of a session against the limits of :class:`SessionRecord`.

    Raises:
      ValueError: a field is malformed or over its limit.
    """
    check_session_id(session.id)
    check_user_id(session.user_id)
    check_device_id(session.device_id)
    watching = session.watching
    if not isinstance(watching, tuple):
        raise ValueError(
            f"Expected watching to be a tuple of user ids, got {type(watching).__name__}"
        )
    if len(watching) > MAX_SESSION_WATCHING:
        raise ValueError(
            f"Expected watching of at most {MAX_SESSION_WATCHING} user ids, got {len(watching)}"
        )
    for user_id in watching:
        check_user_id(user_id, "watching")
    check_int("updated_at_ms", session.updated_at_ms)


def check_session(value: object) -> SessionRecord:
    """Check a ``save_session`` argument (a SessionRecord within its limits).

    Raises:
      ValueError: not a SessionRecord, or a field is malformed.
    """
    if not isinstance(value, SessionRecord):
        raise ValueError(f"Expected a SessionRecord, got {type(value).__name__}")
    # Checked at construction too; again here so that a record changed with
    # object.__setattr__ cannot slip past the limits.
    check_session_fields(value)
    return value


def check_history_args(before_seq: int | None, after_seq: int | None, limit: int) -> None:
    """Check the cursor and page size of a ``history`` call.

    Raises:
      ValueError: a cursor is negative, or ``limit`` is outside 1..500.
    """
    if before_seq is not None:
        check_int("before_seq", before_seq)
    if after_seq is not None:
        check_int("after_seq", after_seq)
    check_int("limit", limit, minimum=1)
    if limit > MAX_HISTORY_LIMIT:
        raise ValueError(f"Expected limit in 1..{MAX_HISTORY_LIMIT}, got {limit}")


def pack_body(body: object) -> bytes:
    """Encode a message body to msgpack.

    Raises:
      ValueError: the body holds a value msgpack cannot encode.
    """
    try:
        return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]
    # msgpack documents that it may raise other types than its own (P6).
    except Exception as exc:
        raise ValueError(f"Expected a msgpack-serialisable body: {exc}") from exc


def unpack_body(data: bytes) -> object:
    """Decode a stored body (written by :func:`pack_body`, so trusted)."""
    # Bodies may use integer map keys (msgpack allows them), and the bytes
    # were produced by pack_body, so strict_map_key is not needed here.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
