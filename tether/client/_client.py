"""Implementation of the Python SDK (see ``tether.client``)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

import msgpack
import trio
from trio_websocket import (
    ConnectionClosed as WsConnectionClosed,
)
from trio_websocket import (
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

log = logging.getLogger("tether.client")

SUBPROTOCOL = "tether.v1"
#: Close codes after which reconnecting with the same credentials is pointless.
_TERMINAL = range(3500, 4000)
_APP_TERMINAL = range(4500, 5000)

#: Backoff between retries of a temporary ``msg.send`` failure: full jitter,
#: ``uniform(0, min(cap, base * 2**attempt))`` (the AWS "full jitter" scheme,
#: also what docs/protocol.md recommends for reconnects), so that clients
#: refused together by a busy server do not come back together.
RETRY_BASE_S = 0.2
RETRY_CAP_S = 5.0
#: Longest ``cid`` the server accepts (characters).
MAX_CID_CHARS = 64
#: ``history`` page sizes the server accepts.
MAX_HISTORY_LIMIT = 500

# Jitter only spreads retries out; it needs no cryptographic quality. A module
# attribute so that tests can pin it.
_random = random.Random()

RoomKind: TypeAlias = Literal["public", "private"]
"""Kinds of room :meth:`Client.create_room` makes (``"direct"`` ones come from ``open_dm``)."""


# -- errors -------------------------------------------------------------------


class TetherError(Exception):
    """Base of every error this SDK raises.

    Tree::

        TetherError
         ├─ ConnectionClosed        the connection is gone (.code, .reason, .reconnect)
         │   └─ AuthenticationError the token was refused (.expired)
         ├─ RequestError            the server answered a request with an error
         │                          (.code, .reason, .temporary)
         └─ MalformedReply          a reply lacked a documented field (server bug or
                                    incompatible server); the connection stays open
    """


class ConnectionClosed(TetherError):
    """The connection is closed.

    Attributes:
        code: WebSocket close code (see docs/protocol.md, close codes), 1006
            when the connection was lost without a close frame.
        reason: the server's reason text.
        reconnect: whether reconnecting (with backoff) makes sense.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.reconnect = not (code in _TERMINAL or code in _APP_TERMINAL)


class AuthenticationError(ConnectionClosed):
    """The server refused the token; ``expired`` when a fresh token would do."""

    @property
    def expired(self) -> bool:
        """True for close code 3006 (token expired)."""
        return self.code == 3006


class RequestError(TetherError):
    """An ``error`` frame answering one of our requests.

    Attributes:
        code: the error code (docs/protocol.md, error codes).
        reason: human-readable text.
        temporary: retrying later may succeed.
    """

    def __init__(self, code: int, reason: str, temporary: bool) -> None:
        super().__init__(f"error {code}: {reason}")
        self.code = code
        self.reason = reason
        self.temporary = temporary


class MalformedReply(TetherError):
    """A ``reply`` whose ``data`` lacks a documented key or has the wrong type.

    The server (or a proxy rewriting frames) does not speak the documented
    protocol: retrying will not help. The request's effect on the server is
    unknown; the connection stays open.
    """


# -- events and shapes ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's answer to ``hello``."""

    session: str
    user: str
    name: str
    device: str
    heartbeat_ms: int
    timeout_ms: int
    server: str
    limits: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A ``presence`` push: a watched user's status changed."""

    user: str
    status: str
    devices: int
    last_seen: int | None


@dataclass(frozen=True, slots=True)
class Room:
    """A room (the protocol's ROOM map).

    Attributes:
        id: opaque URL-safe id chosen by the server.
        kind: ``"public"``, ``"private"`` or ``"direct"``.
        name: display name; empty for direct rooms (show the other member's).
        owner: user id of the owner (for a direct room, who opened it).
        last_seq: seq of the room's latest message, 0 when it has none.
        created_at: creation time, ms since the Unix epoch.
    """

    id: str
    kind: str
    name: str
    owner: str
    last_seq: int
    created_at: int


@dataclass(frozen=True, slots=True)
class RoomSummary(Room):
    """A room as ``room.list`` reports it: a :class:`Room` plus your read state.

    Attributes:
        read_seq: your read position in the room (0: nothing read).
        unread: messages after ``read_seq`` sent by others and not deleted.
    """

    read_seq: int
    unread: int


@dataclass(frozen=True, slots=True)
class Member:
    """A room member with their receipt positions (``room.members``).

    Attributes:
        user: the member's user id.
        role: ``"owner"`` or ``"member"``.
        read: the member's read position (seq).
        delivered: highest delivered position over the member's devices.
    """

    user: str
    role: str
    read: int
    delivered: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message: an item of a :class:`HistoryPage`, and the ``msg`` push.

    ``MessageEvent`` is another name for this class: a ``msg`` push carries
    the same map as a history entry, so pushed and fetched messages compare
    equal and can be stored together.

    Attributes:
        room: the room id.
        seq: position in the room: 1, 2, 3... without gaps. Order by it.
        cid: the sender's client message id (match your own against your outbox).
        sender: the sender's user id.
        body: any msgpack value; None exactly when the message is deleted.
        ts: when the server stored it, ms since the Unix epoch.
        edited_at: time of the last edit or of the deletion, None if never edited.
        deleted: True for a tombstone (``body`` is None).
    """

    room: str
    seq: int
    cid: str
    sender: str
    body: Any
    ts: int
    edited_at: int | None = None
    deleted: bool = False


MessageEvent = Message
"""A ``msg`` push: a new message (the same class as :class:`Message`)."""


@dataclass(frozen=True, slots=True)
class MessageEditedEvent:
    """A ``msg.edited`` push: message ``seq`` of ``room`` has a new body."""

    room: str
    seq: int
    body: Any
    edited_at: int


@dataclass(frozen=True, slots=True)
class MessageDeletedEvent:
    """A ``msg.deleted`` push: message ``seq`` of ``room`` is now a tombstone."""

    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class ReceiptEntry:
    """One member's positions: ``delivered`` over their devices, ``read`` as a user."""

    user: str
    delivered: int
    read: int


@dataclass(frozen=True, slots=True)
class ReceiptsEvent:
    """A ``receipts`` push: these members' positions changed (merge, by user)."""

    room: str
    users: tuple[ReceiptEntry, ...]


@dataclass(frozen=True, slots=True)
class TypingEvent:
    """A ``typing`` push: the *full* list of users typing in ``room`` now.

    Replace what you show with it (do not merge); it may include yourself.
    """

    room: str
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadStateEvent:
    """A ``read`` push: your read position in ``room`` moved (from any of your devices)."""

    room: str
    seq: int
    unread: int


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A ``member`` push: ``user`` joined, left, was invited or was removed.

    When ``user`` is you and ``action`` is ``"left"`` or ``"removed"``, you are
    no longer a member: drop the room.
    """

    room: str
    user: str
    action: str


@dataclass(frozen=True, slots=True)
class RoomAddedEvent:
    """A ``room`` push: you were added to ``room`` (upsert it by id)."""

    room: Room
    unread: int


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` frame not tied to a request (e.g. a rate-limit notice)."""

    code: int
    reason: str
    temporary: bool


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A server frame type this SDK version does not know (forward compatibility)."""

    type: str
    data: dict[str, Any]


Event: TypeAlias = (
    PresenceEvent
    | Message
    | MessageEditedEvent
    | MessageDeletedEvent
    | ReceiptsEvent
    | TypingEvent
    | ReadStateEvent
    | MemberEvent
    | RoomAddedEvent
    | ServerError
    | UnknownEvent
)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of :meth:`Client.send`.

    Attributes:
        seq: the message's seq in the room.
        ts: when the server stored it, ms since the Unix epoch.
        dup: True when the server already had this ``cid`` from you in this
            room: ``seq`` and ``ts`` are the original's and nothing new was
            stored (a retry after a lost reply).
        cid: the client message id that was used.
    """

    seq: int
    ts: int
    dup: bool
    cid: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of ``history``, in ascending seq, tombstones included.

    Attributes:
        messages: the page (possibly fewer than asked, see ``more``).
        more: messages remain beyond the page in its direction: continue
            with ``before=messages[0].seq`` (backward) or
            ``after=messages[-1].seq`` (forward).
    """

    messages: tuple[Message, ...]
    more: bool


def new_cid() -> str:
    """A fresh client message id: 22 random URL-safe characters (128 bits).

    Generate one per message *before* sending it and keep it with the
    message until the server confirmed it, so that every retry uses it.
    """
    return secrets.token_urlsafe(16)


# -- decoding -----------------------------------------------------------------
# Strict on types, lenient on unknown keys (protocol: "unknown keys are
# ignored"). Errors are KeyError/TypeError, translated by the callers: into a
# close for a push, into MalformedReply for a reply.


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"Expected {key!r} to be a str, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    # bool is an int subclass in Python but a distinct msgpack type.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected {key!r} to be an int, got {value!r}")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key)


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise TypeError(f"Expected {key!r} to be a bool, got {value!r}")
    return value


def _opt_bool(data: Mapping[str, Any], key: str) -> bool:
    """An optional bool: absent or nil means False."""
    return False if data.get(key) is None else _bool(data, key)


def _map(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data[key]
    if not isinstance(value, dict):
        raise TypeError(f"Expected {key!r} to be a map, got {value!r}")
    return value


def _maps(data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError(f"Expected {key!r} to be an array of maps, got {value!r}")
    return value


def _strs(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"Expected {key!r} to be an array of str, got {value!r}")
    return tuple(value)


def _presence(data: Mapping[str, Any]) -> PresenceEvent:
    return PresenceEvent(
        _str(data, "user"), _str(data, "status"), _int(data, "devices"), _opt_int(data, "last_seen")
    )


def _room(data: Mapping[str, Any]) -> Room:
    return Room(
        id=_str(data, "id"),
        kind=_str(data, "kind"),
        name=_str(data, "name"),
        owner=_str(data, "owner"),
        last_seq=_int(data, "last_seq"),
        created_at=_int(data, "created_at"),
    )


def _room_summary(data: Mapping[str, Any]) -> RoomSummary:
    return RoomSummary(
        id=_str(data, "id"),
        kind=_str(data, "kind"),
        name=_str(data, "name"),
        owner=_str(data, "owner"),
        last_seq=_int(data, "last_seq"),
        created_at=_int(data, "created_at"),
        read_seq=_int(data, "read_seq"),
        unread=_int(data, "unread"),
    )


def _member(data: Mapping[str, Any]) -> Member:
    return Member(
        _str(data, "user"), _str(data, "role"), _int(data, "read"), _int(data, "delivered")
    )


def _message(data: Mapping[str, Any]) -> Message:
    if "body" not in data:  # always present, nil for a tombstone
        raise KeyError("body")
    return Message(
        room=_str(data, "room"),
        seq=_int(data, "seq"),
        cid=_str(data, "cid"),
        sender=_str(data, "sender"),
        body=data["body"],
        ts=_int(data, "ts"),
        edited_at=_opt_int(data, "edited_at"),
        deleted=_opt_bool(data, "deleted"),
    )


def _message_edited(data: Mapping[str, Any]) -> MessageEditedEvent:
    if "body" not in data:
        raise KeyError("body")
    return MessageEditedEvent(
        _str(data, "room"), _int(data, "seq"), data["body"], _int(data, "edited_at")
    )


def _message_deleted(data: Mapping[str, Any]) -> MessageDeletedEvent:
    return MessageDeletedEvent(_str(data, "room"), _int(data, "seq"))


def _receipts(data: Mapping[str, Any]) -> ReceiptsEvent:
    entries = tuple(
        ReceiptEntry(_str(item, "user"), _int(item, "delivered"), _int(item, "read"))
        for item in _maps(data, "users")
    )
    return ReceiptsEvent(_str(data, "room"), entries)


def _typing(data: Mapping[str, Any]) -> TypingEvent:
    return TypingEvent(_str(data, "room"), _strs(data, "users"))


def _read_state(data: Mapping[str, Any]) -> ReadStateEvent:
    return ReadStateEvent(_str(data, "room"), _int(data, "seq"), _int(data, "unread"))


def _member_event(data: Mapping[str, Any]) -> MemberEvent:
    return MemberEvent(_str(data, "room"), _str(data, "user"), _str(data, "action"))


def _room_added(data: Mapping[str, Any]) -> RoomAddedEvent:
    return RoomAddedEvent(_room(_map(data, "room")), _int(data, "unread"))


def _server_error(data: Mapping[str, Any]) -> ServerError:
    reason = data.get("reason")
    return ServerError(
        _int(data, "code"), reason if isinstance(reason, str) else "", _bool(data, "temporary")
    )


#: Server push frame type → decoder. Other types become UnknownEvent.
_PUSHES: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "presence": _presence,
    "msg": _message,
    "msg.edited": _message_edited,
    "msg.deleted": _message_deleted,
    "receipts": _receipts,
    "typing": _typing,
    "read": _read_state,
    "member": _member_event,
    "room": _room_added,
    "error": _server_error,
}

_T = TypeVar("_T")


def _decode_reply(what: str, decode: Callable[[dict[str, Any]], _T], data: dict[str, Any]) -> _T:
    """Decode a reply's ``data``; the single place where decoding errors become MalformedReply."""
    try:
        return decode(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedReply(f"malformed {what} reply: {exc!r}") from exc


def _backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (full jitter)."""
    return _random.uniform(0.0, min(RETRY_CAP_S, RETRY_BASE_S * 2.0**attempt))


# -- the client ---------------------------------------------------------------


class _EventIterator:
    """What :meth:`Client.events` returns.

    A class rather than an async generator: a generator abandoned in the middle
    of an ``async for`` must be closed explicitly (trio warns when one is
    garbage-collected unfinished); this needs nothing.
    """

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> Event:
        return await self._client.next_event()


class _Pending:
    """One request waiting for its reply."""

    __slots__ = ("done", "frame")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.frame: dict[str, Any] | None = None


class Client:
    """A connected, authenticated client. Use :func:`connect` to get one.

    Every request method sends one frame and waits for its answer; requests
    may run concurrently from several tasks (answers are matched by ``ref``).
    Unless a method says otherwise, it raises:

    * :class:`RequestError` when the server answers with an ``error``
      (``.code`` says why, ``.temporary`` whether a retry may succeed);
    * :class:`ConnectionClosed` when the connection closes before the answer
      (the request may or may not have taken effect);
    * :class:`MalformedReply` when the answer lacks a documented field.

    Cancellation: cancelling a request while it waits does not cancel it on
    the server; its late answer is dropped.

    Attributes:
        welcome: what the server said in ``welcome`` (session, user, limits...).
    """

    def __init__(self, ws: WebSocketConnection, *, max_events: int) -> None:
        self._ws = ws
        self._refs = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[Event](max_events)
        self._closed: ConnectionClosed | None = None
        self._closed_event = trio.Event()
        self._last_frame = trio.current_time()
        self.welcome: Welcome | None = None

    @property
    def user(self) -> str:
        """The authenticated user id."""
        assert self.welcome is not None
        return self.welcome.user

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection closed, or None while it is open."""
        return self._closed

    # -- requests -------------------------------------------------------------
    async def request(self, frame_type: str, **fields: Any) -> dict[str, Any]:
        """Send a request frame and wait for its reply.

        Args:
            frame_type: the frame's ``t``.
            **fields: the frame's other keys (``ref`` is added).

        Returns:
            The reply's ``data`` map (the whole frame for ``welcome``).

        Raises:
            RequestError: the server answered with an ``error`` frame.
            ConnectionClosed: the connection closed before the reply.
        """
        ref = next(self._refs) % (1 << 32)
        pending = _Pending()
        self._pending[ref] = pending
        try:
            await self._send({"t": frame_type, "ref": ref, **fields})
            await pending.done.wait()
        finally:
            self._pending.pop(ref, None)
        frame = pending.frame
        if frame is None:
            assert self._closed is not None
            raise self._closed
        if frame["t"] == "error":
            raise RequestError(
                int(frame["code"]), str(frame.get("reason", "")), bool(frame["temporary"])
            )
        if frame["t"] == "welcome":
            return frame
        data = frame.get("data", {})
        return data if isinstance(data, dict) else {}

    async def subscribe_presence(self, users: Sequence[str]) -> list[PresenceEvent]:
        """Watch these users' presence; returns their current snapshots."""
        data = await self.request("presence.subscribe", users=list(users))
        return [_presence(item) for item in data.get("users", [])]

    async def unsubscribe_presence(self, users: Sequence[str]) -> None:
        """Stop watching these users."""
        await self.request("presence.unsubscribe", users=list(users))

    async def set_idle(self, idle: bool) -> None:
        """Report this device idle (``True``) or active (``False``)."""
        await self.request("presence.set", status="idle" if idle else "active")

    # -- rooms ----------------------------------------------------------------
    async def create_room(
        self, name: str, *, kind: RoomKind = "private", members: Sequence[str] = ()
    ) -> Room:
        """Create a room owned by you (``room.create``).

        Args:
            name: display name, 1..128 characters.
            kind: ``"private"`` (members come from you) or ``"public"``
                (anyone who knows the id may join).
            members: users to add besides you (at most 100).

        Returns:
            The new room. Your other connections and the members get a
            :class:`RoomAddedEvent`.

        Raises:
            TypeError: ``members`` is a str (a sequence of user ids is expected).
            RequestError: e.g. 105 (a listed user does not exist; nothing was
                created), 125 (too many members), 109 (too many rooms).
        """
        if isinstance(members, str):
            raise TypeError(f"Expected a sequence of user ids, got the str {members!r}")
        fields: dict[str, Any] = {"name": name, "kind": kind}
        if members:
            fields["members"] = list(members)
        data = await self.request("room.create", **fields)
        return _decode_reply("'room.create'", lambda d: _room(_map(d, "room")), data)

    async def join_room(self, room_id: str) -> Room:
        """Join a public room (``room.join``); joining twice changes nothing.

        Raises:
            RequestError: 121 (no such room), 126 (not public: ask the owner
                for an invitation), 125 (room full), 109 (too many rooms).
        """
        data = await self.request("room.join", room=room_id)
        return _decode_reply("'room.join'", lambda d: _room(_map(d, "room")), data)

    async def leave_room(self, room_id: str) -> None:
        """Stop being a member of a room (``room.leave``).

        Raises:
            RequestError: 120 (not a member), 121, 104 (the owner cannot
                leave; a direct room cannot be left).
        """
        await self.request("room.leave", room=room_id)

    async def invite(self, room_id: str, user: str) -> None:
        """Add ``user`` to a room you own (``room.invite``); they are a member at once.

        Raises:
            RequestError: 122 (you are not the owner), 105 (no such user),
                104 (a direct room), 125, 109, 120, 121.
        """
        await self.request("room.invite", room=room_id, user=user)

    async def remove_member(self, room_id: str, user: str) -> None:
        """Remove another member from a room you own (``room.remove``).

        Raises:
            RequestError: 122 (not the owner), 104 (a direct room), 100
                (``user`` is yourself: use :meth:`leave_room`), 120, 121.
        """
        await self.request("room.remove", room=room_id, user=user)

    async def list_rooms(self) -> list[RoomSummary]:
        """The rooms you are a member of, oldest first, with read state (``room.list``).

        This is the first call after (re)connecting: compare each room's
        ``last_seq`` with the highest seq you hold and fetch the rest with
        :meth:`history` (``after=``).
        """
        data = await self.request("room.list")
        return _decode_reply(
            "'room.list'", lambda d: [_room_summary(item) for item in _maps(d, "rooms")], data
        )

    async def members(self, room_id: str) -> list[Member]:
        """A room's members in the order they joined, with receipt positions.

        Raises:
            RequestError: 120 (not a member), 121 (no such room).
        """
        data = await self.request("room.members", room=room_id)
        return _decode_reply(
            "'room.members'", lambda d: [_member(item) for item in _maps(d, "members")], data
        )

    async def open_dm(self, user: str) -> Room:
        """The direct room of you and ``user``, created on first use (``dm.open``).

        Raises:
            RequestError: 105 (no such user: users exist once they connected),
                109 (too many rooms).
        """
        data = await self.request("dm.open", user=user)
        return _decode_reply("'dm.open'", lambda d: _room(_map(d, "room")), data)

    # -- messages -------------------------------------------------------------
    async def send(
        self,
        room_id: str,
        body: Any,
        *,
        cid: str | None = None,
        retry_temporary: int = 3,
    ) -> SendResult:
        """Post a message (``msg.send``), retrying temporary failures safely.

        The server stores a message at most once per (room, sender, ``cid``),
        so resending the same cid never duplicates it: a resend of a message
        that was stored gets ``dup=True`` and the original seq and ts. That is
        what makes the retries below, and yours after a lost reply, safe.

        Args:
            room_id: the room.
            body: any msgpack-serializable value but None (str, map...); at
                most ``max_frame_bytes - 1024`` bytes once encoded.
            cid: the client message id, 1..64 characters, unique among your
                messages in the room. None generates one (:func:`new_cid`);
                pass your own when you keep an outbox, so that a resend after
                a :class:`ConnectionClosed` or a timeout uses the same one.
            retry_temporary: how many times to resend, with the same cid,
                after an error with ``temporary=True`` (108 UNAVAILABLE, 103
                RATE_LIMITED, 107 INTERNAL), waiting
                ``uniform(0, min(5, 0.2 * 2**attempt))`` seconds before each.
                Permanent errors are never retried.

        Returns:
            seq, ts, dup and the cid used.

        Raises:
            ValueError: ``body`` is None, or ``cid`` is empty or too long.
            RequestError: a permanent error (120, 121, 106 TOO_LARGE...), or a
                temporary one still failing after ``retry_temporary`` retries.
            ConnectionClosed: not retried here (reconnecting is the caller's
                job); the message may have been stored: resend it with the
                same cid on the new connection.

        Cancellation: checkpoints while sending, waiting and backing off; a
        cancelled send may or may not have been stored (resend the same cid).
        """
        if body is None:
            raise ValueError("Expected a message body, got None (nil marks deleted messages)")
        if retry_temporary < 0:
            raise ValueError(f"Expected retry_temporary >= 0, got {retry_temporary!r}")
        if cid is None:
            cid = new_cid()
        elif not isinstance(cid, str) or not 1 <= len(cid) <= MAX_CID_CHARS:
            raise ValueError(f"Expected a cid of 1..{MAX_CID_CHARS} characters, got {cid!r}")
        sent_cid: str = cid
        data = await self._send_with_retries(room_id, body, sent_cid, retry_temporary)
        return _decode_reply(
            "'msg.send'",
            lambda d: SendResult(_int(d, "seq"), _int(d, "ts"), _bool(d, "dup"), sent_cid),
            data,
        )

    async def _send_with_retries(
        self, room_id: str, body: Any, cid: str, retries: int
    ) -> dict[str, Any]:
        """``msg.send`` with the same cid until it succeeds or fails for good."""
        attempt = 0
        while True:
            try:
                return await self.request("msg.send", room=room_id, cid=cid, body=body)
            except RequestError as exc:
                if not exc.temporary or attempt >= retries:
                    raise
                delay = _backoff_delay(attempt)
                attempt += 1
                log.info(
                    "msg.send cid=%s: temporary error %d, retry %d in %.2fs",
                    cid,
                    exc.code,
                    attempt,
                    delay,
                )
                await trio.sleep(delay)

    async def edit(self, room_id: str, seq: int, body: Any) -> int:
        """Replace the body of your message ``seq`` (``msg.edit``).

        Returns:
            ``edited_at``, ms since the Unix epoch.

        Raises:
            ValueError: ``body`` is None.
            RequestError: 123 (no such message, or deleted), 124 (not yours),
                106 (too large), 120, 121.
        """
        if body is None:
            raise ValueError("Expected a message body, got None (use delete())")
        data = await self.request("msg.edit", room=room_id, seq=seq, body=body)
        return _decode_reply("'msg.edit'", lambda d: _int(d, "edited_at"), data)

    async def delete(self, room_id: str, seq: int) -> None:
        """Delete your message ``seq``; it stays as a tombstone (``msg.delete``).

        Deleting a deleted message succeeds again.

        Raises:
            RequestError: 123 (no such message), 124 (not yours), 120, 121.
        """
        await self.request("msg.delete", room=room_id, seq=seq)

    async def history(
        self,
        room_id: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """A page of a room's messages in ascending seq, tombstones included.

        With neither ``before`` nor ``after``: the latest ``limit`` messages.
        Page back with ``before=page.messages[0].seq`` and forward with
        ``after=page.messages[-1].seq`` while ``page.more`` is True. The
        server may return fewer than ``limit`` (to keep the reply within its
        frame size) but at least one while any is left.

        Args:
            room_id: the room.
            before: messages just before this seq (exclusive), >= 1.
            after: messages just after this seq (exclusive); 0 starts at the
                first message.
            limit: page size, 1..500.

        Raises:
            ValueError: both ``before`` and ``after``, or ``limit`` out of range.
            RequestError: 120 (not a member), 121 (no such room).
        """
        if before is not None and after is not None:
            raise ValueError(
                f"Expected at most one of before and after, got before={before!r} after={after!r}"
            )
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise ValueError(f"Expected limit in 1..{MAX_HISTORY_LIMIT}, got {limit!r}")
        fields: dict[str, Any] = {"room": room_id, "limit": limit}
        if before is not None:
            fields["before"] = before
        if after is not None:
            fields["after"] = after
        data = await self.request("history", **fields)
        return _decode_reply(
            "'history'",
            lambda d: HistoryPage(
                tuple(_message(item) for item in _maps(d, "messages")), _bool(d, "more")
            ),
            data,
        )

    async def ack(
        self,
        room_id: str,
        *,
        delivered: int | None = None,
        read: int | None = None,
        wait: bool = True,
    ) -> None:
        """Report receipt positions in a room (``receipt``).

        Positions are cumulative ("everything up to this seq") and never move
        back. Acknowledge a batch of messages at once (say, at most once a
        second per room), not each message.

        Args:
            room_id: the room.
            delivered: the highest seq this device holds (stored or shown).
            read: the highest seq the user has seen; your devices get a
                :class:`ReadStateEvent` with the new unread count.
            wait: True sends the receipt with a ref and waits for the answer;
                False sends it without ref: no answer, and a failing receipt
                is dropped by the server (cheaper for routine delivered acks).

        Raises:
            ValueError: neither ``delivered`` nor ``read`` given.
            RequestError: (``wait`` only) 120 (not a member), 121.
        """
        if delivered is None and read is None:
            raise ValueError("Expected delivered and/or read, got neither")
        fields: dict[str, Any] = {"room": room_id}
        if delivered is not None:
            fields["delivered"] = delivered
        if read is not None:
            fields["read"] = read
        if wait:
            await self.request("receipt", **fields)
        else:
            await self._send({"t": "receipt", **fields})

    async def typing(self, room_id: str, typing: bool = True) -> None:
        """Tell the room's members you are typing (or stopped); fire and forget.

        Send ``True`` when the user starts typing and again about every 3 s
        while they keep on (the server forgets a typist after about 5 s
        without a refresh), ``False`` when they stop. Sending a message also
        clears your entry. There is no answer, not even an error.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        await self._send({"t": "typing", "room": room_id, "typing": typing})

    # -- connection -----------------------------------------------------------
    async def ping(self) -> None:
        """Send an application-level ping (the server answers with pong)."""
        await self._send({"t": "ping", "n": 0})

    async def bye(self) -> None:
        """Leave deliberately: this device goes offline at once (no grace period)."""
        if self._closed is None:
            await self._send({"t": "bye"})

    async def send_raw(self, payload: bytes) -> None:
        """Send arbitrary bytes as one binary message (for tests and tools)."""
        try:
            await self._ws.send_message(payload)
        except WsConnectionClosed as exc:
            raise self._closed_from(exc) from None

    # -- events ---------------------------------------------------------------
    def events(self) -> AsyncIterator[Event]:
        """Server pushes, in order, until the connection closes: ``async for e in client.events()``.

        The iterator holds no resources (it is not a generator), so leaving
        the loop early, by ``break`` or an exception, needs no cleanup; a new
        call continues with the next push.

        Raises:
            ConnectionClosed: when the connection closes (after the pushes
                received before the close were yielded).
        """
        return _EventIterator(self)

    async def next_event(self, *, timeout: float | None = None) -> Event:
        """The next server push (raises ``trio.TooSlowError`` after ``timeout``)."""
        with trio.fail_after(math.inf if timeout is None else timeout):
            try:
                return await self._events_recv.receive()
            except trio.EndOfChannel:
                assert self._closed is not None
                raise self._closed from None

    # -- internals ------------------------------------------------------------
    async def _send(self, frame: dict[str, Any]) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self._ws.send_message(msgpack.packb(frame))
        except WsConnectionClosed as exc:
            raise self._closed_from(exc) from None

    def _closed_from(self, exc: WsConnectionClosed) -> ConnectionClosed:
        if self._closed is None:
            reason = exc.reason
            code = reason.code if reason is not None else 1006
            text = (reason.reason or "") if reason is not None else ""
            cls = AuthenticationError if code in (3502, 3006) else ConnectionClosed
            self._closed = cls(code, text)
        return self._closed

    def _finish(self, closed: ConnectionClosed) -> None:
        if self._closed is None:
            self._closed = closed
        for pending in self._pending.values():
            pending.done.set()
        self._events_send.close()
        self._closed_event.set()

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the connection is closed; returns why."""
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    async def _reader(self) -> None:
        try:
            while True:
                message = await self._ws.get_message()
                self._last_frame = trio.current_time()
                if isinstance(message, str):
                    continue  # the protocol is binary-only; ignore stray text
                await self._on_frame(msgpack.unpackb(message, strict_map_key=True))
        except WsConnectionClosed as exc:
            self._finish(self._closed_from(exc))
        except (ValueError, msgpack.UnpackException, KeyError, TypeError) as exc:
            # Not msgpack, or a push without its documented fields: the server
            # does not speak our protocol, so nothing it sends can be trusted.
            log.error("undecodable frame from server: %r", exc)
            await self._ws.aclose(1002, "undecodable frame")
            self._finish(ConnectionClosed(1002, "undecodable frame from server"))

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        ref = frame.get("ref")
        if kind in ("reply", "error", "welcome") and ref is not None:
            pending = self._pending.get(ref)
            if pending is not None:
                pending.frame = frame
                pending.done.set()
            else:
                # The request was cancelled while waiting: nobody wants it.
                log.debug("dropping late %s for ref %r", kind, ref)
            return
        if kind == "ping":
            # If the connection just closed, the reader sees the close next.
            with contextlib.suppress(ConnectionClosed):
                await self._send({"t": "pong", "n": frame.get("n", 0)})
            return
        if kind == "pong":
            return
        decode = _PUSHES.get(kind) if isinstance(kind, str) else None
        event = decode(frame) if decode is not None else UnknownEvent(str(kind), frame)
        # Bounded: if the application stops consuming events the reader waits,
        # and the server eventually closes us as a slow consumer.
        await self._events_send.send(event)

    async def _watchdog(self, deadline_s: float) -> None:
        """Close the connection when the server has been silent too long."""
        while self._closed is None:
            silent = trio.current_time() - self._last_frame
            if silent > deadline_s:
                log.warning("server silent for %.1fs: closing", silent)
                # Record why first: the reader sees our own close (1000) while
                # aclose() runs, but for the application the connection was
                # lost (1006: reconnect), not ended on purpose.
                closed = self._closed = ConnectionClosed(1006, "server heartbeat timeout")
                await self._ws.aclose(1000, "server silent")
                self._finish(closed)
                return
            await trio.sleep(deadline_s - silent + 0.01)


@asynccontextmanager
async def _single_errors() -> AsyncIterator[None]:
    """Unwrap an exception group holding one exception (trio nurseries wrap).

    Callers of :func:`connect` should catch ``AuthenticationError`` or the
    error raised in their own block, not an ExceptionGroup around it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    *,
    device: str | None = None,
    client_name: str = "tether-py/0.1",
    max_events: int = 1000,
    connect_timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Open an authenticated connection (hello → welcome) for the block.

    Args:
        url: the server's WebSocket URL, e.g. ``ws://127.0.0.1:8740/ws``.
        token: a client token (``tether token --user ID``).
        device: a stable id of this device (so tabs/reconnects count as one).
        client_name: sent to the server in ``hello``.
        max_events: bound of the queue of pushes not yet consumed.
        connect_timeout: seconds for the TCP/WebSocket handshake and hello.

    Raises:
        AuthenticationError: the token was refused.
        ConnectionClosed: the server closed during the handshake.
        OSError / HandshakeError: the server could not be reached.

    Resource handling: the connection is closed when the block exits (normal
    close 1000 unless it is already closed); the reader and watchdog tasks
    run for the block's duration.
    """
    stream: Any = None
    try:
        async with (
            _single_errors(),
            open_websocket_url(
                url,
                subprotocols=[SUBPROTOCOL],
                message_queue_size=64,
                connect_timeout=connect_timeout,
                disconnect_timeout=2.0,
            ) as ws,
            trio.open_nursery() as nursery,
        ):
            try:
                client = Client(ws, max_events=max_events)
                nursery.start_soon(client._reader)
                hello: dict[str, Any] = {"token": token, "client": client_name}
                if device is not None:
                    hello["device"] = device
                with trio.fail_after(connect_timeout):
                    try:
                        frame = await client.request("hello", **hello)
                    except RequestError:
                        # The close frame that follows says why; wait for it.
                        raise await client.wait_closed() from None
                client.welcome = Welcome(
                    session=str(frame["session"]),
                    user=str(frame["user"]),
                    name=str(frame["name"]),
                    device=str(frame["device"]),
                    heartbeat_ms=int(frame["heartbeat_ms"]),
                    timeout_ms=int(frame["timeout_ms"]),
                    server=str(frame["server"]),
                    limits=dict(frame.get("limits", {})),
                )
                nursery.start_soon(
                    client._watchdog,
                    (client.welcome.heartbeat_ms + client.welcome.timeout_ms) / 1000,
                )
                yield client
            finally:
                nursery.cancel_scope.cancel()
                stream = ws._stream
    finally:
        # trio-websocket 0.12.2 leaves its TCP stream open when the server
        # closed first (a ResourceWarning later); close it once its own close
        # handshake is over. This relies on a private attribute: the version
        # is pinned in pyproject.toml and the integration tests cover
        # server-side closes.
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


__all__ = [
    "AuthenticationError",
    "Client",
    "ConnectionClosed",
    "Event",
    "HandshakeError",
    "HistoryPage",
    "MalformedReply",
    "Member",
    "MemberEvent",
    "Message",
    "MessageDeletedEvent",
    "MessageEditedEvent",
    "MessageEvent",
    "PresenceEvent",
    "ReadStateEvent",
    "ReceiptEntry",
    "ReceiptsEvent",
    "RequestError",
    "Room",
    "RoomAddedEvent",
    "RoomKind",
    "RoomSummary",
    "SendResult",
    "ServerError",
    "TetherError",
    "TypingEvent",
    "UnknownEvent",
    "Welcome",
    "connect",
    "new_cid",
]
