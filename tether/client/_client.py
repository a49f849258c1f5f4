"""Implementation of the Python SDK (see ``tether.client``).

Layout: errors, event and result shapes, decoders (strict on types, lenient
on unknown keys), then the machinery that keeps one :class:`Client` alive
across connections:

* ``_SeqTracker`` (pure): per room, the highest ``seq`` held without a gap,
  the seqs held above it, and what waits while the room recovers. It decides
  what is a duplicate and builds ``hello.resume``.
* ``_EventQueue``: the bounded stream behind :meth:`Client.events`.
* ``_Link``: one WebSocket connection (its refs, its liveness, its end).
* ``Client``: requests (kept across reconnects when safe), pushes, and the
  supervisor task that reconnects with backoff and resumes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import secrets
import ssl
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import msgpack
import trio
from trio_websocket import (
    ConnectionClosed as WsConnectionClosed,
)
from trio_websocket import (
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)
from wsproto import ConnectionType, WSConnection

from tether.transport.protocol.codes import reconnect_after

log = logging.getLogger("tether.client")

SUBPROTOCOL = "tether.v1"

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
#: ``hello.resume`` names at most this many rooms (the most recently active).
MAX_RESUME_ROOMS = 1000
#: Receipts sent without ref this many seconds before a drop are sent again
#: after it: the server coalesces them briefly (``receipts_interval``) before
#: storing, so a crash could lose them.
RECEIPT_REPLAY_S = 2.0
#: ``presence.subscribe`` takes at most this many users per request.
MAX_SUBSCRIBE_USERS = 100

# Reconnecting. After 3004 RATE_LIMITED the server wants a longer pause: the
# backoff starts this many doublings further and never below half its bound.
_RATE_LIMITED_OFFSET = 3
# Close codes reconnect_after() calls terminal that a client should still
# retry: 1001 is what proxies and load balancers send when they go away (tether
# itself never does), 1005 a close frame without a code (tether always sends one).
_RETRYABLE_RFC = frozenset({1001, 1005})
# Closing our side: seconds to wait for the close handshake.
_DISCONNECT_TIMEOUT_S = 2.0
# Requests resent after a reconnect instead of failing with RequestInterrupted:
# the protocol makes each of them safe to repeat (msg.send by its cid,
# receipts because positions only move forward, the rest are reads or are
# documented as changing nothing the second time).
_RETRIED = frozenset(
    {
        "msg.send",
        "receipt",
        "history",
        "room.list",
        "room.members",
        "room.join",
        "room.invite",
        "room.remove",
        "dm.open",
        "msg.delete",
        "presence.subscribe",
        "presence.unsubscribe",
        "presence.set",
        # Joining a call again re-binds the same participant (media "kept"
        # when its transports are still up); muting sets a state.
        "call.join",
        "call.mute",
    }
)
# Resume bookkeeping bounds (per room): seqs held above the gapless position,
# and messages waiting for a gap to fill while the room recovers.
_MAX_AHEAD = 1000
_MAX_WAITING = 1000
# Rooms paging history at once to fill gaps (each page is one request).
_FILL_CONCURRENCY = 4
# A resumed room answers ``recovered`` within the server's own deadline (30 s);
# past this, the SDK stops waiting and catches up with history by itself.
_RECOVER_TIMEOUT_S = 45.0
# The order of the connection's own hello (not a request of the application's:
# a ``request("hello")`` on an open connection is answered 102 like any other).
_HANDSHAKE = -1
# Connection-state events (Reconnecting, Reconnected) kept for a reader that
# lags behind; beyond, the oldest of them are dropped (never data events).
_MAX_STATE_EVENTS = 64

# Jitter only spreads retries out; it needs no cryptographic quality. A module
# attribute so that tests can pin it.
_random = random.Random()

RoomKind: TypeAlias = Literal["public", "private"]
"""Kinds of room :meth:`Client.create_room` makes (``"direct"`` ones come from ``open_dm``)."""


# -- errors -------------------------------------------------------------------


def _should_reconnect(code: int) -> bool:
    """Whether a close with ``code`` is worth a reconnect (docs/protocol.md, close codes)."""
    return reconnect_after(code) or code in _RETRYABLE_RFC


class TetherError(Exception):
    """Base of every error this SDK raises.

    Tree::

        TetherError
         ├─ ConnectionClosed        the client is closed for good (.code, .reason, .reconnect)
         │   ├─ AuthenticationError the token was refused (.expired)
         │   └─ RequestInterrupted  the connection dropped while this request waited for
         │                          its answer; the client reconnects by itself
         ├─ RequestError            the server answered a request with an error
         │                          (.code, .reason, .temporary)
         └─ MalformedReply          a reply lacked a documented field (server bug or
                                    incompatible server); the connection stays open
    """


class ConnectionClosed(TetherError):
    """The connection is closed.

    Raised by requests and by :meth:`Client.events` once the client has
    stopped for good: a close code that says not to reconnect, ``reconnect=False``,
    ``max_reconnect_attempts`` used up, or your own ``bye()``.

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
        self.reconnect = _should_reconnect(code)


class AuthenticationError(ConnectionClosed):
    """The server refused the token; ``expired`` when a fresh token would do."""

    @property
    def expired(self) -> bool:
        """True for close code 3006 (token expired)."""
        return self.code == 3006


class RequestInterrupted(ConnectionClosed):
    """The connection dropped before this request's answer; the client is reconnecting.

    The request may or may not have taken effect on the server: retry it if
    that is safe for your application (:meth:`Client.create_room`,
    :meth:`Client.leave_room`, :meth:`Client.edit` and raw requests end up
    here; sends, receipts, reads and the other idempotent requests are
    resent by the client itself and never raise this). The client stays
    usable: a retry waits for the new connection.

    Attributes:
        request: the frame type of the interrupted request, e.g. ``"room.create"``.
    """

    def __init__(self, code: int, reason: str, request: str) -> None:
        super().__init__(code, reason)
        self.request = request
        self.args = (
            f"connection lost ({code} {reason}".rstrip() + f") before the answer to {request!r}; "
            "the client is reconnecting: the request may or may not have taken effect, "
            "retry it if that is safe",
        )


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
    """The server's answer to ``hello`` (``client.welcome`` holds the latest one).

    ``resumed`` is True when the server found the ``session`` sent back after
    a reconnect and restored its presence subscriptions.
    """

    session: str
    user: str
    name: str
    device: str
    heartbeat_ms: int
    timeout_ms: int
    server: str
    limits: dict[str, Any]
    resumed: bool = False


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


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection dropped; the client reconnects by itself after ``delay`` seconds.

    Show it as a "reconnecting..." banner; :class:`Reconnected` ends it. One
    per attempt, so ``attempt`` counts up while the server stays unreachable.

    Attributes:
        attempt: 1 for the first attempt after a drop.
        delay: seconds until the attempt (exponential backoff, full jitter).
        code: why the connection (or the previous attempt) ended: a close
            code, 1006 when the network failed or the server was unreachable.
        reason: the close reason or the network error, for logs.
    """

    attempt: int
    delay: float
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """A new connection is open (after :class:`Reconnecting`).

    Requests in flight at the drop that are safe to repeat were resent;
    missed messages follow as :class:`Message` events, each room's catch-up
    ending with :class:`Recovered`.

    Attributes:
        resumed: the server restored the session (your presence subscriptions
            kept on its side); when False the client subscribed again itself.
    """

    resumed: bool


@dataclass(frozen=True, slots=True)
class Recovered:
    """A room caught up after a reconnect (the ``recovered`` push).

    Every message of ``room`` up to ``head`` was surfaced before this event
    (as :class:`Message` events, in seq order), unless ``code`` is set or a
    :class:`ResyncFailed` for the room came just before it.

    Attributes:
        room: the room id.
        complete: the server replayed everything you missed; when False the
            client fetched the older part (before ``first``) with ``history``.
        replayed: how many messages the server replayed.
        head: the room's last seq when it answered.
        first: when not complete, the first replayed seq.
        code: when set, the room could not be resumed: 120 you are no longer
            a member, 121 the room no longer exists, 108 storage unavailable
            (the client tried ``history`` instead).
    """

    room: str
    complete: bool
    replayed: int
    head: int
    first: int | None = None
    code: int | None = None


@dataclass(frozen=True, slots=True)
class ResyncFailed:
    """Part of catching up after a reconnect failed; the connection stays up.

    The client does not reconnect because of it (a broken catch-up would fail
    again): act on it or ignore it.

    Attributes:
        step: ``"history"``: paging a room's missed messages failed, some of
            them may be missing (fetch them with :meth:`Client.history`);
            ``"presence"``: subscribing again to presence failed;
            ``"callback"``: your ``on_reconnect`` callback raised.
        room: the room concerned (``"history"`` only).
        error: the exception.
    """

    step: Literal["history", "presence", "callback"]
    room: str | None
    error: Exception


# -- calls ----------------------------------------------------------------------

CallMedia: TypeAlias = Literal["new", "kept"]
"""``call.join``'s ``media``: publish afresh (``"new"``) or nothing to do (``"kept"``)."""


@dataclass(frozen=True, slots=True)
class CallTrack:
    """A published track of a call (the protocol's TRACK map).

    Attributes:
        id: ``<participant>.<mid>``, unique in the call.
        participant: the publishing participant's id.
        kind: ``"audio"`` or ``"video"``.
        rids: simulcast layer ids (empty without simulcast).
        muted: the publisher muted it (the server does not forward it).
    """

    id: str
    participant: str
    kind: str
    rids: tuple[str, ...]
    muted: bool


@dataclass(frozen=True, slots=True)
class CallParticipant:
    """A participant of a call (the protocol's PARTICIPANT map).

    Attributes:
        id: 12 lowercase hex characters chosen by the server; one per
            (user, session): a second device of a user is another participant.
        user: the user id.
        device: the device name of that session.
        tracks: what the participant publishes.
        audio_muted: it muted its audio.
        video_muted: it muted its video.
    """

    id: str
    user: str
    device: str
    tracks: tuple[CallTrack, ...]
    audio_muted: bool
    video_muted: bool


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN/TURN server the call's client side may use (``ice_servers`` of ``call.join``)."""

    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallJoined:
    """The answer to :meth:`Client.join_call`.

    Attributes:
        call: the call's id (the room id).
        participant: your participant id in the call.
        media: ``"new"``: publish now (:meth:`Client.publish`), the server then
            sends a :class:`CallOffer`; ``"kept"``: you joined again from the
            same session and your media transports are still up: nothing to do.
        participants: everyone in the call, you included.
        speaker: the current dominant speaker's participant id, None in silence.
        ice_servers: servers to give your WebRTC stack (empty: none).
    """

    call: str
    participant: str
    media: CallMedia
    participants: tuple[CallParticipant, ...]
    speaker: str | None
    ice_servers: tuple[IceServer, ...]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The answer to :meth:`Client.publish`: the SDP answer and the tracks it published."""

    sdp: str
    tracks: tuple[CallTrack, ...]


@dataclass(frozen=True, slots=True)
class CallOffer:
    """A ``call.offer`` push: the server's offer for your subscriber connection.

    Apply it and answer with :meth:`Client.answer_offer`. ``mids`` maps each
    active media section (mid) to the track it carries.
    """

    room: str
    sdp: str
    mids: dict[str, str]


@dataclass(frozen=True, slots=True)
class CallParticipantEvent:
    """A ``call.participant`` push: ``"joined"``, ``"left"`` or ``"updated"`` (mute, tracks)."""

    room: str
    action: str
    participant: CallParticipant


@dataclass(frozen=True, slots=True)
class CallTrackEvent:
    """A ``call.track`` push: a track was ``"added"`` to or ``"removed"`` from the call."""

    room: str
    action: str
    track: CallTrack


@dataclass(frozen=True, slots=True)
class CallSpeaker:
    """A ``call.speaker`` push: the dominant speaker changed (None: silence)."""

    room: str
    participant: str | None


@dataclass(frozen=True, slots=True)
class CallRestart:
    """A ``call.restart`` push: drop both media connections and publish again.

    Sent when the media worker hosting the call restarted (or your
    subscriber connection did not answer in time); the server sends a new
    :class:`CallOffer` after your new :meth:`Client.publish`.
    """

    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A ``call.ended`` push: you are no longer in the call (left elsewhere, removed...)."""

    room: str
    reason: str


CallEvent: TypeAlias = (
    CallOffer | CallParticipantEvent | CallTrackEvent | CallSpeaker | CallRestart | CallEnded
)
"""The ``call.*`` pushes."""


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
    | Reconnecting
    | Reconnected
    | Recovered
    | ResyncFailed
    | CallOffer
    | CallParticipantEvent
    | CallTrackEvent
    | CallSpeaker
    | CallRestart
    | CallEnded
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


def _recovered(data: Mapping[str, Any]) -> Recovered:
    return Recovered(
        room=_str(data, "room"),
        complete=_bool(data, "complete"),
        replayed=_int(data, "replayed"),
        head=_int(data, "head"),
        first=_opt_int(data, "first"),
        code=_opt_int(data, "code"),
    )


def _welcome(data: Mapping[str, Any]) -> Welcome:
    limits = data.get("limits")
    return Welcome(
        session=_str(data, "session"),
        user=_str(data, "user"),
        name=_str(data, "name"),
        device=_str(data, "device"),
        heartbeat_ms=_int(data, "heartbeat_ms"),
        timeout_ms=_int(data, "timeout_ms"),
        server=_str(data, "server"),
        limits=dict(limits) if isinstance(limits, dict) else {},
        resumed=data.get("resumed") is True,  # absent: a fresh session
    )


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else _str(data, key)


def _call_track(data: Mapping[str, Any]) -> CallTrack:
    rids = data.get("rids")
    return CallTrack(
        id=_str(data, "id"),
        participant=_str(data, "participant"),
        kind=_str(data, "kind"),
        rids=() if rids is None else _strs(data, "rids"),
        muted=_opt_bool(data, "muted"),
    )


def _call_participant(data: Mapping[str, Any]) -> CallParticipant:
    return CallParticipant(
        id=_str(data, "id"),
        user=_str(data, "user"),
        device=_str(data, "device"),
        tracks=tuple(_call_track(item) for item in _maps(data, "tracks")),
        audio_muted=_opt_bool(data, "audio_muted"),
        video_muted=_opt_bool(data, "video_muted"),
    )


def _call_joined(data: Mapping[str, Any]) -> CallJoined:
    media = _str(data, "media")
    if media not in ("new", "kept"):
        raise ValueError(f"Expected media 'new' or 'kept', got {media!r}")
    servers = data.get("ice_servers")
    return CallJoined(
        call=_str(data, "call"),
        participant=_str(data, "participant"),
        media="new" if media == "new" else "kept",
        participants=tuple(_call_participant(item) for item in _maps(data, "participants")),
        speaker=_opt_str(data, "speaker"),
        ice_servers=()
        if servers is None
        else tuple(IceServer(_strs(item, "urls")) for item in _maps(data, "ice_servers")),
    )


def _publish_result(data: Mapping[str, Any]) -> PublishResult:
    return PublishResult(
        _str(data, "sdp"), tuple(_call_track(item) for item in _maps(data, "tracks"))
    )


def _call_offer(data: Mapping[str, Any]) -> CallOffer:
    mids = _map(data, "mids")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mids.items()):
        raise TypeError(f"Expected 'mids' to map str to str, got {mids!r}")
    return CallOffer(_str(data, "room"), _str(data, "sdp"), dict(mids))


def _call_participant_event(data: Mapping[str, Any]) -> CallParticipantEvent:
    return CallParticipantEvent(
        _str(data, "room"), _str(data, "action"), _call_participant(_map(data, "participant"))
    )


def _call_track_event(data: Mapping[str, Any]) -> CallTrackEvent:
    return CallTrackEvent(
        _str(data, "room"), _str(data, "action"), _call_track(_map(data, "track"))
    )


def _call_speaker(data: Mapping[str, Any]) -> CallSpeaker:
    return CallSpeaker(_str(data, "room"), _opt_str(data, "participant"))


def _call_restart(data: Mapping[str, Any]) -> CallRestart:
    reason = data.get("reason")
    return CallRestart(_str(data, "room"), reason if isinstance(reason, str) else "")


def _call_ended(data: Mapping[str, Any]) -> CallEnded:
    reason = data.get("reason")
    return CallEnded(_str(data, "room"), reason if isinstance(reason, str) else "")


_CALL_EVENTS = (
    CallOffer,
    CallParticipantEvent,
    CallTrackEvent,
    CallSpeaker,
    CallRestart,
    CallEnded,
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
    "recovered": _recovered,
    "call.offer": _call_offer,
    "call.participant": _call_participant_event,
    "call.track": _call_track_event,
    "call.speaker": _call_speaker,
    "call.restart": _call_restart,
    "call.ended": _call_ended,
}

_T = TypeVar("_T")


def _decode_reply(what: str, decode: Callable[[dict[str, Any]], _T], data: dict[str, Any]) -> _T:
    """Decode a reply's ``data``; the single place where decoding errors become MalformedReply."""
    try:
        return decode(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedReply(f"malformed {what} reply: {exc!r}") from exc


def _closed_from(reason: Any) -> ConnectionClosed:
    """The ConnectionClosed for a trio-websocket close reason (None: lost without a close frame)."""
    code = int(reason.code) if reason is not None else 1006  # may be wsproto's enum
    text = (reason.reason or "") if reason is not None else ""
    cls = AuthenticationError if code in (3502, 3006) else ConnectionClosed
    return cls(code, text)


# -- backoff --------------------------------------------------------------------


class _Pacer:
    """Lets at most ``per_second`` frames through per second (0: no limit).

    The first second's worth goes at once (the server allows a burst), then
    one frame every ``1 / per_second`` seconds.
    """

    def __init__(self, per_second: int) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._free = per_second
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        if self._free > 0:
            self._free -= 1
            self._next = trio.current_time() + self._interval
            return
        now = trio.current_time()
        if self._next > now:
            await trio.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval


def _backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt + 1`` of a send (full jitter)."""
    return _random.uniform(0.0, min(RETRY_CAP_S, RETRY_BASE_S * 2.0**attempt))


def _reconnect_delay(attempt: int, base: float, cap: float, code: int | None = None) -> float:
    """Seconds to wait before reconnect attempt number ``attempt + 1`` (0: the first after a drop).

    Full jitter: ``uniform(0, min(cap, base * 2**attempt))``. The first attempt
    is jittered too, so that the clients of a restarted server spread over
    ``base`` seconds instead of all coming back in the same instant. After
    ``3004 RATE_LIMITED`` the bound starts three doublings further and the
    wait is at least half of it: the server asked for a real pause.
    """
    if code == 3004:
        attempt += _RATE_LIMITED_OFFSET
    bound = min(cap, base * 2.0 ** min(attempt, 64))  # 2.0**1024 would overflow
    low = bound / 2 if code == 3004 else 0.0
    return _random.uniform(low, bound)


# -- seq bookkeeping (pure) -------------------------------------------------------


class _RoomSeqs:
    """What the client holds of one room's messages (see ``_SeqTracker``).

    Attributes:
        contig: every seq up to this one was surfaced, is the user's own, or
            predates what the client was shown (the start position).
        above: held seqs above ``contig``, past a gap.
        soft: ``contig`` comes from a snapshot (a room map, or the first own
            reply seen) that may be ahead of pushes still in flight on this
            connection: a push at or below it is new to the application, so
            it surfaces. Ends with the first push above it, or the connection.
        holding: the room is catching up after a reconnect: only the next seq
            surfaces, later ones wait in ``waiting`` until the gap is filled,
            so that the application sees the room in seq order.
        waiting: seq → message, at most ``_MAX_WAITING``; the highest ones are
            dropped beyond that (and paged from history: ``fill_until``).
        fill_until: catching up must page history at least up to this seq.
    """

    __slots__ = ("above", "contig", "fill_until", "holding", "soft", "waiting")

    def __init__(self, contig: int) -> None:
        self.contig = contig
        self.above: set[int] = set()
        self.soft = True
        self.holding = False
        self.waiting: dict[int, Message] = {}
        self.fill_until = 0

    def has(self, seq: int) -> bool:
        """Whether ``seq`` was already surfaced (or is the user's own): a duplicate."""
        return seq in self.above or (seq <= self.contig and not self.soft)

    def add(self, seq: int) -> None:
        """Record ``seq`` as held, moving ``contig`` over every gap it closes."""
        if seq <= self.contig:
            return
        if seq != self.contig + 1:
            self.above.add(seq)
            return
        contig = seq
        above = self.above
        while contig + 1 in above:
            contig += 1
            above.remove(contig)
        self.contig = contig

    def wait(self, message: Message) -> None:
        """Keep ``message`` until the gap before it is filled (bounded, see ``waiting``)."""
        self.waiting[message.seq] = message
        if len(self.waiting) > _MAX_WAITING:
            highest = max(self.waiting)
            del self.waiting[highest]
            self.fill_until = max(self.fill_until, highest)

    def skip_gap(self) -> None:
        """Give up on the lowest gap: the position jumps to the next held seq."""
        if self.above:
            lowest = min(self.above)
            self.above.remove(lowest)
            self.contig = lowest - 1
            self.add(lowest)


class _SeqTracker:
    """Per room, what the client holds: for dropping duplicates and for ``hello.resume``.

    At most ``max_rooms`` rooms, kept in order of activity (a message, an own
    send); beyond that the least recently active room is forgotten: it is not
    resumed, and its duplicates are no longer recognised.
    """

    __slots__ = ("_max_rooms", "_rooms")

    def __init__(self, max_rooms: int = MAX_RESUME_ROOMS) -> None:
        self._rooms: OrderedDict[str, _RoomSeqs] = OrderedDict()
        self._max_rooms = max_rooms

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, room: str) -> _RoomSeqs | None:
        """The room's state, or None when it is not tracked."""
        return self._rooms.get(room)

    def touch(self, room: str, seq: int) -> _RoomSeqs:
        """The room's state, now the most recently active; a new room starts just below ``seq``."""
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _RoomSeqs(seq - 1)
            self._evict()
        else:
            self._rooms.move_to_end(room)
        return state

    def seed(self, room: str, last_seq: int) -> None:
        """Start tracking ``room`` at ``last_seq`` from a snapshot (created, joined, listed...).

        A room already tracked keeps its state. A seeded room counts as the
        least recently active until something happens in it.
        """
        if room in self._rooms:
            return
        self._rooms[room] = _RoomSeqs(last_seq)
        self._rooms.move_to_end(room, last=False)
        self._evict()

    def forget(self, room: str) -> None:
        """Stop tracking ``room`` (left, removed, deleted)."""
        self._rooms.pop(room, None)

    def resume(self) -> dict[str, int]:
        """``hello.resume``: room → highest seq held without a gap, most active first."""
        return {room: self._rooms[room].contig for room in reversed(self._rooms)}

    def new_connection(self) -> None:
        """A new connection starts: snapshots are settled, nothing recovers yet."""
        for state in self._rooms.values():
            state.soft = False
            state.holding = False
            state.waiting.clear()
            state.fill_until = 0

    def _evict(self) -> None:
        while len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)


# -- the event stream ---------------------------------------------------------------


class _EventQueue:
    """The ordered, bounded stream behind :meth:`Client.events`.

    Data events (pushes, recoveries) take one of ``capacity`` places: ``put``
    waits while the queue is full, so the reader stops reading the socket and
    a server whose buffer for this client fills up closes it (3001), after
    which the client reconnects and resumes without loss. Connection-state
    events (``put_state``) never wait, so that the supervisor cannot stall on
    an application that stopped reading; at most ``_MAX_STATE_EVENTS`` of them
    are kept, the oldest dropped first.
    """

    __slots__ = ("_capacity", "_closed", "_data", "_items", "_readers", "_state", "_writers")

    def __init__(self, capacity: int) -> None:
        self._items: deque[tuple[bool, Event]] = deque()  # (is a state event, event)
        self._capacity = capacity
        self._data = 0
        self._state = 0
        self._closed = False
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()

    async def put(self, event: Event) -> None:
        """Append a data event, waiting for room; dropped once the queue is closed.

        Cancellation: either the event was appended or it was not.
        """
        await trio.lowlevel.checkpoint()
        while self._data >= self._capacity and not self._closed:
            await self._writers.park()
        if self._closed:
            return
        self._items.append((False, event))
        self._data += 1
        self._readers.unpark()

    def put_state(self, event: Event) -> None:
        """Append a connection-state event without waiting (see the class docstring)."""
        if self._closed:
            return
        if self._state >= _MAX_STATE_EVENTS:
            for index, (is_state, _) in enumerate(self._items):
                if is_state:
                    del self._items[index]
                    self._state -= 1
                    break
        self._items.append((True, event))
        self._state += 1
        self._readers.unpark()

    async def get(self) -> Event:
        """The next event; raises trio.EndOfChannel once closed and drained."""
        await trio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._readers.park()
        is_state, event = self._items.popleft()
        if is_state:
            self._state -= 1
        else:
            self._data -= 1
            self._writers.unpark()
        return event

    def close(self) -> None:
        """No more events: readers drain what is queued, then get EndOfChannel."""
        self._closed = True
        self._readers.unpark_all()
        self._writers.unpark_all()


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


class CallWatch:
    """A room's call events, separate from :meth:`Client.events` (see :meth:`Client.watch_call`).

    Yields the room's ``call.*`` pushes (:data:`CallEvent`) and copies of the
    connection's :class:`Reconnecting` / :class:`Reconnected` events, in order.
    Iterate it with ``async for``, or call :meth:`get`. Bounded like the main
    stream: while it is full the SDK stops reading the socket.
    """

    __slots__ = ("_queue", "room")

    def __init__(self, room: str, capacity: int) -> None:
        self.room = room
        self._queue = _EventQueue(capacity)

    async def get(self) -> Event:
        """The next event; raises trio.EndOfChannel once the watch or the client ended."""
        return await self._queue.get()

    def __aiter__(self) -> CallWatch:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._queue.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


# -- requests and connections --------------------------------------------------------

_REF_KEY: bytes = msgpack.packb("ref")


def _map_header(size: int) -> bytes:
    """The msgpack header of a map with ``size`` entries."""
    if size < 16:
        return bytes((0x80 | size,))
    if size < 1 << 16:
        return b"\xde" + size.to_bytes(2, "big")
    return b"\xdf" + size.to_bytes(4, "big")


class _Pending:
    """One request from its call until it is answered, fails or is given up.

    The frame is encoded once, without its ``ref`` (a new one is spliced in
    for every connection it is sent on), so that an unencodable body fails at
    the call and a resend costs no re-encoding.

    Attributes:
        order: creation order; queued requests are sent in this order.
        link: the connection it was sent on, None while queued.
        interrupted: it was in flight when its connection dropped and is not
            safe to resend: it fails with RequestInterrupted.
    """

    __slots__ = (
        "answer",
        "body",
        "done",
        "error",
        "fields",
        "interrupted",
        "key",
        "kind",
        "link",
        "order",
        "ref",
        "retry",
        "size",
    )

    def __init__(self, order: int, kind: str, fields: dict[str, Any]) -> None:
        self.order = order
        self.kind = kind
        self.fields = fields
        frame = {"t": kind, **fields}
        # Raises TypeError/ValueError for a value msgpack cannot encode.
        self.body = b"".join(
            msgpack.packb(key) + msgpack.packb(value) for key, value in frame.items()
        )
        self.size = len(frame) + 1
        self.retry = kind in _RETRIED
        self.done = trio.Event()
        self.answer: dict[str, Any] | None = None
        self.error: TetherError | None = None
        self.link: _Link | None = None
        self.ref: int | None = None
        self.interrupted = False
        room, cid = fields.get("room"), fields.get("cid")
        self.key: tuple[str, str] | None = None
        if kind == "msg.send" and isinstance(room, str) and isinstance(cid, str):
            self.key = (room, cid)

    def payload(self, ref: int) -> bytes:
        """The encoded frame with ``ref``."""
        ref_bytes: bytes = msgpack.packb(ref)
        return _map_header(self.size) + _REF_KEY + ref_bytes + self.body


class _Link:
    """One WebSocket connection of a client, from its ``hello`` to its end.

    Attributes:
        refs: ref → request sent on this connection and not answered yet.
        closed: why it ended (the first reason recorded wins), None while open.
        polite: how our side closes it: (code, reason) for a close handshake,
            None to drop the TCP connection (a server that went silent).
        ready: requests may be sent on it (after ``welcome`` and the resends).
        awaiting: rooms named in ``hello.resume`` that did not answer ``recovered`` yet.
    """

    __slots__ = (
        "_refs",
        "awaiting",
        "closed",
        "ended",
        "fills",
        "finished",
        "hello_done",
        "last_frame",
        "nursery",
        "polite",
        "ready",
        "refs",
        "stream",
        "welcomed_at",
        "ws",
    )

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream) -> None:
        self.ws = ws
        self.stream = stream
        self.refs: dict[int, _Pending] = {}
        self._refs = itertools.count(1)
        self.closed: ConnectionClosed | None = None
        self.polite: tuple[int, str] | None = (1000, "")
        self.ended = trio.Event()
        self.hello_done = trio.Event()
        self.finished = trio.Event()
        self.ready = False
        self.last_frame = trio.current_time()
        self.welcomed_at: float | None = None
        self.awaiting: set[str] = set()
        self.fills = trio.CapacityLimiter(_FILL_CONCURRENCY)
        self.nursery: trio.Nursery | None = None

    def new_ref(self) -> int:
        """A ref not in flight on this connection (a counter wrapping at 2**32)."""
        while True:
            ref = next(self._refs) % (1 << 32)
            if ref not in self.refs:
                return ref

    def end(self, closed: ConnectionClosed, *, polite: tuple[int, str] | None = (1000, "")) -> None:
        """Record why the connection ends and wake its supervisor (idempotent)."""
        if self.closed is None:
            self.closed = closed
            self.polite = polite
            self.ended.set()
            self.hello_done.set()


# -- the client ---------------------------------------------------------------

TokenProvider: TypeAlias = Callable[[], Awaitable[str]]
"""Returns a fresh token (``connect(token_provider=...)``)."""
ReconnectCallback: TypeAlias = Callable[["Client"], Awaitable[object]]
"""Runs after each reconnect (``connect(on_reconnect=...)``)."""


class Client:
    """A connected, authenticated client. Use :func:`connect` to get one.

    The object stays the same for the whole ``async with connect(...)`` block:
    when the connection drops for a reason that allows it, the client
    reconnects in the background (see ``docs/client.md``, Reconnecting) and
    resumes where it was.

    Every request method sends one frame and waits for its answer; requests
    may run concurrently from several tasks (answers are matched by ``ref``).
    A request made while the client is reconnecting waits for the new
    connection. Unless a method says otherwise, it raises:

    * :class:`RequestError` when the server answers with an ``error``
      (``.code`` says why, ``.temporary`` whether a retry may succeed);
    * :class:`RequestInterrupted` when the connection dropped before the
      answer to a request that is not safe to resend (the client reconnects;
      the request may or may not have taken effect);
    * :class:`ConnectionClosed` when the client is closed for good;
    * :class:`MalformedReply` when the answer lacks a documented field.

    Cancellation: cancelling a request while it waits does not cancel it on
    the server; its late answer is dropped, and it is not resent.

    Attributes:
        welcome: what the server said in the latest ``welcome`` (session,
            user, limits, resumed...).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        device: str | None,
        client_name: str,
        max_events: int,
        connect_timeout: float,
        reconnect: bool,
        backoff_base: float,
        backoff_cap: float,
        max_reconnect_attempts: int | None,
        token_provider: TokenProvider | None,
        on_reconnect: ReconnectCallback | None,
        max_pending: int,
    ) -> None:
        self._url = url
        self._token = token
        self._device = device
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._reconnect = reconnect
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_attempts = max_reconnect_attempts
        self._token_provider = token_provider
        self._on_reconnect = on_reconnect
        self._events = _EventQueue(max_events)
        self._slots = trio.Semaphore(max_pending)
        self._orders = itertools.count()
        self._requests: dict[int, _Pending] = {}  # by order: iteration is send order
        self._sends: dict[tuple[str, str], _Pending] = {}  # msg.send by (room, cid)
        self._seqs = _SeqTracker()
        self._deliver_lock = trio.Lock()
        self._link: _Link | None = None
        self._ready = trio.Event()
        self._presence: set[str] = set()
        self._idle = False
        self._receipts: OrderedDict[str, dict[str, int]] = OrderedDict()
        # Receipts sent without ref lately: (trio time, positions) per room. The
        # server coalesces those for a fraction of a second before storing
        # them, so the ones sent just before a drop are sent again after it.
        self._fired: OrderedDict[str, tuple[float, dict[str, int]]] = OrderedDict()
        self._leaving = False
        self._closed: ConnectionClosed | None = None
        self._closed_event = trio.Event()
        self._supervisor: trio.CancelScope | None = None
        self._call_watches: dict[str, CallWatch] = {}
        self.welcome: Welcome | None = None

    @property
    def user(self) -> str:
        """The authenticated user id."""
        assert self.welcome is not None
        return self.welcome.user

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the client is closed for good, or None while it is open or reconnecting."""
        return self._closed

    @property
    def connected(self) -> bool:
        """Whether a connection is open and ready now (False while reconnecting)."""
        link = self._link
        return link is not None and link.ready and link.closed is None

    # -- requests -------------------------------------------------------------
    async def request(self, frame_type: str, **fields: Any) -> dict[str, Any]:
        """Send a request frame and wait for its reply.

        Requests the protocol makes safe to repeat (``msg.send`` by its cid,
        ``receipt``, ``history``, ``room.list``, ``room.members``, ``room.join``,
        ``room.invite``, ``room.remove``, ``dm.open``, ``msg.delete`` and the
        ``presence.*`` requests) are resent after a reconnect when the
        connection dropped before their answer; others raise
        :class:`RequestInterrupted`.

        Args:
            frame_type: the frame's ``t``.
            **fields: the frame's other keys (``ref`` is added).

        Returns:
            The reply's ``data`` map (the whole frame for ``welcome``).

        Raises:
            RequestError: the server answered with an ``error`` frame.
            RequestInterrupted: see above.
            ConnectionClosed: the client is closed for good.
            TypeError: a field msgpack cannot encode.

        Bounded: at most ``max_pending`` requests (see :func:`connect`) wait
        for an answer or for a connection; more wait for one of them to end.
        """
        if self._closed is not None:
            raise self._closed
        async with self._slots:
            if self._closed is not None:
                raise self._closed
            pending = _Pending(next(self._orders), frame_type, fields)
            self._requests[pending.order] = pending
            if pending.key is not None:
                self._sends[pending.key] = pending
            try:
                link = self._link
                if link is not None and link.ready and link.closed is None:
                    await self._transmit(link, pending)
                # Otherwise queued: the supervisor sends it once reconnected.
                await pending.done.wait()
            finally:
                self._forget(pending)
        if pending.error is not None:
            raise pending.error
        frame = pending.answer
        assert frame is not None
        if frame["t"] == "error":
            raise RequestError(
                int(frame["code"]), str(frame.get("reason", "")), bool(frame["temporary"])
            )
        if frame["t"] == "welcome":
            return frame
        data = frame.get("data", {})
        return data if isinstance(data, dict) else {}

    async def subscribe_presence(self, users: Sequence[str]) -> list[PresenceEvent]:
        """Watch these users' presence; returns their current snapshots.

        The client remembers the users (until :meth:`unsubscribe_presence`)
        and subscribes again by itself after a reconnect the server did not
        resume.
        """
        data = await self.request("presence.subscribe", users=list(users))
        return _decode_reply(
            "'presence.subscribe'",
            lambda d: [_presence(item) for item in _maps(d, "users")],
            data,
        )

    async def unsubscribe_presence(self, users: Sequence[str]) -> None:
        """Stop watching these users."""
        await self.request("presence.unsubscribe", users=list(users))

    async def set_idle(self, idle: bool) -> None:
        """Report this device idle (``True``) or active (``False``).

        A new connection starts active: the client reports idle again by
        itself after a reconnect.
        """
        self._idle = idle
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
            RequestInterrupted: not resent (a second room could be created):
                check with :meth:`list_rooms` before creating it again.
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
            RequestInterrupted: not resent (a second leave would fail with 120).
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

        This is the first call after connecting: compare each room's
        ``last_seq`` with the highest seq you hold and fetch the rest with
        :meth:`history` (``after=``). It also tells the client every room to
        resume after a reconnect (otherwise it knows the rooms it saw activity
        in, and those you created, joined or were added to).
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
        what makes the retries below safe, and the resend after a reconnect:
        a send whose connection dropped before its answer is sent again with
        the same cid on the new connection, and this call returns its result.

        Args:
            room_id: the room.
            body: any msgpack-serializable value but None (str, map...); at
                most ``max_frame_bytes - 1024`` bytes once encoded.
            cid: the client message id, 1..64 characters, unique among your
                messages in the room. None generates one (:func:`new_cid`);
                pass your own when you keep an outbox that outlives the
                process, so that a resend after a restart uses the same one.
            retry_temporary: how many times to resend, with the same cid,
                after an error with ``temporary=True`` (108 UNAVAILABLE, 103
                RATE_LIMITED, 107 INTERNAL), waiting
                ``uniform(0, min(5, 0.2 * 2**attempt))`` seconds before each.
                Permanent errors are never retried.

        Returns:
            seq, ts, dup and the cid used.

        Raises:
            ValueError: ``body`` is None, or ``cid`` is empty or too long.
            TypeError: ``body`` cannot be encoded with msgpack.
            RequestError: a permanent error (120, 121, 106 TOO_LARGE...), or a
                temporary one still failing after ``retry_temporary`` retries.
            ConnectionClosed: the client closed for good before the answer;
                the message may have been stored: resend it with the same cid
                on a new client.

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
            RequestInterrupted: not resent (it would be a second edit).
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
        frame size) but at least one while any is left. Pages are not events:
        fetching one changes nothing in :meth:`events`.

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
            wait: True sends the receipt with a ref and waits for the answer
                (resent after a reconnect until answered). False sends it
                without ref: no answer, and a failing receipt is dropped by
                the server (cheaper for routine delivered acks); while the
                client reconnects such receipts are merged per room and sent
                once the connection is back.

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
        elif await self._fire({"t": "receipt", **fields}):
            self._note_fired(room_id, delivered, read)
        else:
            self._queue_receipt(room_id, delivered, read)

    async def typing(self, room_id: str, typing: bool = True) -> None:
        """Tell the room's members you are typing (or stopped); fire and forget.

        Send ``True`` when the user starts typing and again about every 3 s
        while they keep on (the server forgets a typist after about 5 s
        without a refresh), ``False`` when they stop. Sending a message also
        clears your entry. There is no answer, not even an error. While the
        client reconnects it is dropped (typing is only worth sending live).

        Raises:
            ConnectionClosed: the client is closed.
        """
        await self._fire({"t": "typing", "room": room_id, "typing": typing})

    # -- calls ------------------------------------------------------------------
    # Signaling only: the media (WebRTC) side is the application's, e.g.
    # tether.media.peer.CallPeer for Python, a browser's RTCPeerConnection.

    @asynccontextmanager
    async def watch_call(self, room_id: str, *, capacity: int = 256) -> AsyncIterator[CallWatch]:
        """Route the room's ``call.*`` pushes to a :class:`CallWatch` for the block.

        While the block runs, the room's call pushes go to the watch instead of
        :meth:`events` (nothing is delivered twice), and the watch also gets a
        copy of every :class:`Reconnecting` / :class:`Reconnected`. One watch
        per room at a time.

        Raises:
            ValueError: the room is already watched.
        """
        if room_id in self._call_watches:
            raise ValueError(f"Expected one watch per room, {room_id!r} is already watched")
        watch = CallWatch(room_id, capacity)
        self._call_watches[room_id] = watch
        if self._closed is not None:
            watch._queue.close()
        try:
            yield watch
        finally:
            if self._call_watches.get(room_id) is watch:
                del self._call_watches[room_id]
            watch._queue.close()

    async def join_call(self, room_id: str) -> CallJoined:
        """Join the room's call (``call.join``); the call starts with its first participant.

        Call it again after a reconnect (on :class:`Reconnected`): the server
        re-binds your participant to the new connection and says whether your
        media is ``"kept"`` or must be published ``"new"``. Resent by itself
        when the connection drops before the answer.

        Raises:
            RequestError: 120/121 (not a member, no such room), 132
                MEDIA_UNAVAILABLE (temporary: no media worker now), 133 CALL_FULL.
        """
        data = await self.request("call.join", room=room_id)
        return _decode_reply("'call.join'", _call_joined, data)

    async def leave_call(self, room_id: str) -> None:
        """Leave the room's call (``call.leave``); the others get ``call.participant left``.

        Raises:
            RequestError: 130 NOT_IN_CALL.
        """
        await self.request("call.leave", room=room_id)

    async def publish(self, room_id: str, sdp: str) -> PublishResult:
        """Send your publisher connection's SDP offer (``call.publish``); returns the answer.

        The first call creates your publisher connection in the media worker;
        a later one renegotiates it (tracks added or removed).

        Raises:
            RequestError: 130 NOT_IN_CALL, 131 BAD_SDP, 132 MEDIA_UNAVAILABLE.
            RequestInterrupted: not resent: join again (:meth:`join_call`), and
                publish afresh when it answers ``media="new"``.
        """
        data = await self.request("call.publish", room=room_id, sdp=sdp)
        return _decode_reply("'call.publish'", _publish_result, data)

    async def answer_offer(self, room_id: str, sdp: str) -> None:
        """Answer the latest :class:`CallOffer` (``call.answer``) with your SDP answer.

        Raises:
            RequestError: 130 NOT_IN_CALL, 131 BAD_SDP.
        """
        await self.request("call.answer", room=room_id, sdp=sdp)

    async def send_ice(
        self,
        room_id: str,
        pc: Literal["pub", "sub"],
        candidate: str | None,
        *,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        """Trickle one ICE candidate of your ``"pub"`` or ``"sub"`` connection (``call.ice``).

        ``candidate`` None means end of candidates. Fire and forget: no answer;
        dropped while the client reconnects (gather before sending SDP to avoid
        needing it).
        """
        frame: dict[str, Any] = {"t": "call.ice", "room": room_id, "pc": pc, "candidate": candidate}
        if sdp_mid is not None:
            frame["sdp_mid"] = sdp_mid
        if sdp_mline_index is not None:
            frame["sdp_mline_index"] = sdp_mline_index
        await self._fire(frame)

    async def mute(self, room_id: str, kind: Literal["audio", "video"], muted: bool) -> None:
        """Mute or unmute your audio or video (``call.mute``): the server stops forwarding it.

        Raises:
            RequestError: 130 NOT_IN_CALL.
        """
        await self.request("call.mute", room=room_id, kind=kind, muted=muted)

    async def set_quality(self, room_id: str, track: str, width: int, height: int) -> None:
        """Tell the server the size you show ``track`` at (``call.quality``); fire and forget.

        The server picks the simulcast layer from it (and from your bandwidth).
        Dropped while the client reconnects.
        """
        await self._fire(
            {"t": "call.quality", "room": room_id, "track": track, "width": width, "height": height}
        )

    async def restart_call(self, room_id: str) -> None:
        """Report that your media connections failed (``call.restart``).

        The server drops them; then :meth:`publish` afresh and answer the new
        :class:`CallOffer`.

        Raises:
            RequestError: 130 NOT_IN_CALL, 132 MEDIA_UNAVAILABLE.
        """
        await self.request("call.restart", room=room_id)

    # -- connection -----------------------------------------------------------
    async def ping(self) -> None:
        """Send an application-level ping (answered by a pong); a no-op while reconnecting."""
        await self._fire({"t": "ping", "n": 0})

    async def bye(self) -> None:
        """Leave deliberately: this device goes offline at once (no grace period).

        The server closes the connection (1000) and the client does not
        reconnect; :meth:`wait_closed` returns once it is closed.
        """
        if self._closed is not None:
            return
        self._leaving = True
        if not await self._fire({"t": "bye"}):
            # Nobody to tell: stop reconnecting; the server's grace period runs.
            self._finish(ConnectionClosed(1000, "bye while disconnected"))
            if self._supervisor is not None:
                self._supervisor.cancel()

    async def send_raw(self, payload: bytes) -> None:
        """Send arbitrary bytes as one binary message (for tests and tools).

        Waits for a connection while the client reconnects.

        Raises:
            RequestInterrupted: the connection dropped while sending.
            ConnectionClosed: the client is closed.
        """
        link = await self._wait_ready()
        try:
            await link.ws.send_message(payload)
        except WsConnectionClosed as exc:
            closed = _closed_from(exc.reason)
            link.end(closed)
            raise RequestInterrupted(closed.code, closed.reason, "raw") from None

    # -- events ---------------------------------------------------------------
    def events(self) -> AsyncIterator[Event]:
        """Server pushes and connection events, in order: ``async for e in client.events()``.

        It continues across reconnects (with :class:`Reconnecting`,
        :class:`Reconnected` and :class:`Recovered` events among the pushes)
        and ends when the client is closed for good.

        The iterator holds no resources (it is not a generator), so leaving
        the loop early, by ``break`` or an exception, needs no cleanup; a new
        call continues with the next event.

        Raises:
            ConnectionClosed: when the client is closed for good (after the
                events received before were yielded).
        """
        return _EventIterator(self)

    async def next_event(self, *, timeout: float | None = None) -> Event:
        """The next event (raises ``trio.TooSlowError`` after ``timeout``)."""
        with trio.fail_after(math.inf if timeout is None else timeout):
            try:
                return await self._events.get()
            except trio.EndOfChannel:
                closed = self._closed
                assert closed is not None
                raise closed from closed.__cause__

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the client is closed for good (not merely reconnecting); returns why."""
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    # -- internals: sending ---------------------------------------------------
    async def _transmit(self, link: _Link, pending: _Pending) -> None:
        """Send ``pending`` on ``link`` under a fresh ref (registered before any checkpoint)."""
        ref = link.new_ref()
        link.refs[ref] = pending
        pending.link = link
        pending.ref = ref
        # A failure ends the link; the supervisor then resends or fails it.
        await self._send_bytes(link, pending.payload(ref))

    async def _send_bytes(self, link: _Link, payload: bytes) -> bool:
        """Send on ``link``; False (and the link ended) when it is closed."""
        try:
            await link.ws.send_message(payload)
        except WsConnectionClosed as exc:
            link.end(_closed_from(exc.reason))
            return False
        return True

    async def _fire(self, frame: dict[str, Any]) -> bool:
        """Send a frame without ref now; False when not connected (it was not sent)."""
        if self._closed is not None:
            raise self._closed
        link = self._link
        if link is None or not link.ready or link.closed is not None:
            return False
        return await self._send_bytes(link, msgpack.packb(frame))

    def _note_fired(self, room: str, delivered: int | None, read: int | None) -> None:
        """Remember a receipt sent without ref (see ``_fired``), merged per room (bounded)."""
        _, positions = self._fired.pop(room, (0.0, {}))
        for key, value in (("delivered", delivered), ("read", read)):
            if value is not None:
                positions[key] = max(value, positions.get(key, value))
        self._fired[room] = (trio.current_time(), positions)
        while len(self._fired) > MAX_RESUME_ROOMS:
            self._fired.popitem(last=False)

    def _requeue_recent_receipts(self) -> None:
        """After a drop: queue again the receipts sent in the last RECEIPT_REPLAY_S."""
        recent = trio.current_time() - RECEIPT_REPLAY_S
        for room, (sent_at, positions) in self._fired.items():
            if sent_at >= recent:
                self._queue_receipt(room, positions.get("delivered"), positions.get("read"))
        self._fired.clear()

    def _queue_receipt(self, room: str, delivered: int | None, read: int | None) -> None:
        """Keep a receipt for the next connection, merged per room (bounded)."""
        positions = self._receipts.pop(room, {})
        for key, value in (("delivered", delivered), ("read", read)):
            if value is not None:
                positions[key] = max(value, positions.get(key, value))
        self._receipts[room] = positions
        while len(self._receipts) > MAX_RESUME_ROOMS:
            self._receipts.popitem(last=False)

    def _forget(self, pending: _Pending) -> None:
        self._requests.pop(pending.order, None)
        link, ref = pending.link, pending.ref
        if link is not None and ref is not None and link.refs.get(ref) is pending:
            del link.refs[ref]
        if pending.key is not None and self._sends.get(pending.key) is pending:
            del self._sends[pending.key]

    async def _wait_ready(self) -> _Link:
        while True:
            if self._closed is not None:
                raise self._closed
            link = self._link
            if link is not None and link.ready and link.closed is None:
                return link
            await self._ready.wait()

    def _finish(self, closed: ConnectionClosed) -> None:
        """The client is closed for good: fail what waits, end the event stream."""
        if self._closed is None:
            self._closed = closed
            log.info("client closed: %s", closed)
        final = self._closed
        for pending in list(self._requests.values()):
            if not pending.done.is_set():
                pending.error = final
                pending.done.set()
        self._events.close()
        for watch in self._call_watches.values():
            watch._queue.close()
        self._ready.set()
        self._closed_event.set()

    def _put_state(self, event: Reconnecting | Reconnected) -> None:
        """A connection-state event: to the main stream and to every call watch."""
        self._events.put_state(event)
        for watch in self._call_watches.values():
            watch._queue.put_state(event)

    # -- internals: the supervisor ----------------------------------------------
    async def _supervise(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run connections until the client is closed for good.

        The first connection's failures propagate (``connect()`` raises them);
        later ones are retried with backoff while the close code allows it.
        """
        with trio.CancelScope() as scope:
            self._supervisor = scope
            link = await self._connection(task_status)
            attempt = 0
            while True:
                closed = link.closed or ConnectionClosed(1006, "connection lost")
                welcomed_at = link.welcomed_at
                if (
                    welcomed_at is not None
                    and trio.current_time() - welcomed_at >= self._backoff_cap
                ):
                    attempt = 0  # it was up for a while: not a flapping server
                reconnecting = self._will_reconnect(closed)
                self._interrupt(closed, reconnecting)
                if not reconnecting:
                    self._finish(closed)
                    return
                while True:
                    if self._max_attempts is not None and attempt >= self._max_attempts:
                        self._finish(
                            ConnectionClosed(
                                closed.code,
                                f"gave up after {attempt} reconnect attempts: {closed.reason}",
                            )
                        )
                        return
                    delay = _reconnect_delay(
                        attempt, self._backoff_base, self._backoff_cap, closed.code
                    )
                    attempt += 1
                    log.info(
                        "connection lost (%d %s): reconnect attempt %d in %.2fs",
                        closed.code,
                        closed.reason,
                        attempt,
                        delay,
                    )
                    self._put_state(Reconnecting(attempt, delay, closed.code, closed.reason))
                    await trio.sleep(delay)
                    if closed.code == 3006 and not await self._refresh_token():
                        return
                    try:
                        link = await self._connection(None)
                        break
                    except ConnectionClosed as exc:
                        closed = exc
                    except (
                        OSError,
                        HandshakeError,
                        trio.TooSlowError,
                        trio.BrokenResourceError,
                    ) as exc:
                        closed = ConnectionClosed(1006, f"cannot connect: {exc!r}"[:200])
                    if not self._will_reconnect(closed):
                        self._finish(closed)
                        return

    def _will_reconnect(self, closed: ConnectionClosed) -> bool:
        if not self._reconnect or self._leaving or self._closed is not None:
            return False
        if closed.code == 3006:
            return self._token_provider is not None
        return closed.reconnect

    def _interrupt(self, closed: ConnectionClosed, reconnecting: bool) -> None:
        """Fail the requests cut by a drop that are not safe to resend."""
        if not reconnecting:
            return  # _finish fails everything with the final reason
        for pending in list(self._requests.values()):
            if pending.interrupted and not pending.done.is_set():
                pending.error = RequestInterrupted(closed.code, closed.reason, pending.kind)
                pending.done.set()

    async def _refresh_token(self) -> bool:
        """A fresh token after 3006; False (and the client closed) when the provider fails."""
        assert self._token_provider is not None
        try:
            self._token = await self._token_provider()
        except Exception as exc:
            log.error("token_provider failed: %r", exc)
            error = AuthenticationError(3006, f"token expired; token_provider failed: {exc!r}")
            error.__cause__ = exc
            self._finish(error)
            return False
        return True

    async def _connection(self, task_status: trio.TaskStatus[None] | None) -> _Link:
        """Open one connection, say hello, serve it until it ends; returns it, ended.

        ``task_status`` is the first connection's (started once it is ready);
        None for a reconnect, which resumes.

        Raises (before ``welcome`` only): ConnectionClosed (the server closed
        or refused the hello), OSError or HandshakeError (unreachable),
        trio.TooSlowError (no welcome within ``connect_timeout``).
        """
        try:
            # Two nurseries: trio-websocket's reader outlives ours, so that
            # our side's close handshake completes after our tasks stopped.
            async with trio.open_nursery() as transport:
                ws, stream = await _open_websocket(transport, self._url, self._connect_timeout)
                link = _Link(ws, stream)
                try:
                    async with trio.open_nursery() as nursery:
                        link.nursery = nursery
                        nursery.start_soon(self._read, link)
                        welcome = await self._hello(link, resume=task_status is None)
                        self.welcome = welcome
                        link.welcomed_at = trio.current_time()
                        self._link = link
                        deadline = (welcome.heartbeat_ms + welcome.timeout_ms) / 1000
                        nursery.start_soon(self._watchdog, link, deadline)
                        await self._restore(link)
                        link.ready = True
                        self._ready.set()
                        if task_status is not None:
                            task_status.started()
                        else:
                            log.info("reconnected (resumed=%s)", welcome.resumed)
                            self._put_state(Reconnected(welcome.resumed))
                            nursery.start_soon(self._resync, link, welcome.resumed)
                            if link.awaiting:
                                nursery.start_soon(self._recover_deadline, link)
                        await link.ended.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    await self._close_link(link)
                    transport.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            sole = _sole(group)
            if sole is group:
                raise
            raise sole from None
        return link

    async def _close_link(self, link: _Link) -> None:
        """Detach ``link`` from the client and close its socket; bounded, never raises."""
        # Cancelled from outside (the application left): no close handshake.
        cancelled = trio.current_effective_deadline() == -math.inf
        self._detach(link)
        with trio.CancelScope(shield=True):
            if link.polite is not None and not cancelled:
                with trio.move_on_after(_DISCONNECT_TIMEOUT_S):
                    try:
                        await link.ws.aclose(*link.polite)
                    except Exception as exc:  # a broken socket: nothing left to close
                        log.debug("close handshake failed: %r", exc)
            await _aclose_stream(link.stream)
            link.finished.set()

    def _detach(self, link: _Link) -> None:
        """``link`` is gone: requeue the requests it carried that are safe to resend."""
        if link.closed is None:
            link.end(ConnectionClosed(1006, "connection lost"))
        self._requeue_recent_receipts()
        if self._link is link:
            self._link = None
            if self._ready.is_set() and self._closed is None:
                self._ready = trio.Event()
        link.ready = False
        for pending in self._requests.values():
            if pending.link is link and not pending.done.is_set():
                pending.link = None
                pending.ref = None
                pending.interrupted = not pending.retry
        link.refs.clear()
        self._seqs.new_connection()

    async def _hello(self, link: _Link, *, resume: bool) -> Welcome:
        """Send ``hello`` (with the session and positions to resume) and wait for ``welcome``."""
        fields: dict[str, Any] = {"token": self._token, "client": self._client_name}
        device = self._device or (self.welcome.device if self.welcome is not None else None)
        if device is not None:
            fields["device"] = device  # the same device: a quick reconnect is invisible
        if resume:
            self._seqs.new_connection()
            if self.welcome is not None:
                fields["session"] = self.welcome.session
            rooms = self._seqs.resume()
            if rooms:
                fields["resume"] = rooms
                for room_id in rooms:
                    state = self._seqs.get(room_id)
                    assert state is not None
                    state.holding = True
                link.awaiting.update(rooms)
        pending = _Pending(_HANDSHAKE, "hello", fields)
        with trio.fail_after(self._connect_timeout):
            ref = link.new_ref()
            link.refs[ref] = pending
            await self._send_bytes(link, pending.payload(ref))
            await link.hello_done.wait()
            frame = pending.answer
            if frame is not None and frame.get("t") == "welcome":
                try:
                    return _welcome(frame)
                except (KeyError, TypeError) as exc:
                    closed = ConnectionClosed(1002, f"malformed welcome: {exc!r}"[:120])
                    link.end(closed, polite=(1002, "malformed welcome"))
                    raise closed from None
            if frame is not None:
                await link.ended.wait()  # an error answered the hello: the close says why
        assert link.closed is not None
        raise link.closed

    async def _restore(self, link: _Link) -> None:
        """Before a connection is ready: idle state, queued receipts, queued requests in order.

        Paced to the server's advertised ``max_frames_per_s``: a client that
        comes back with hundreds of queued sends must not trip the server's
        flood protection (103 errors, then close 3004) while catching up.
        """
        welcome = self.welcome
        per_second = int(welcome.limits.get("max_frames_per_s", 0)) if welcome else 0
        pace = _Pacer(per_second)
        if self._idle:
            await pace.wait()
            await self._send_bytes(link, msgpack.packb({"t": "presence.set", "status": "idle"}))
        while self._receipts and link.closed is None:
            room, positions = self._receipts.popitem(last=False)
            await pace.wait()
            await self._send_bytes(link, msgpack.packb({"t": "receipt", "room": room, **positions}))
        while link.closed is None:
            queued = [
                pending
                for pending in self._requests.values()
                if pending.link is None and not pending.interrupted and not pending.done.is_set()
            ]
            if not queued:
                return
            for pending in queued:
                if pending.link is None and not pending.done.is_set() and link.closed is None:
                    await pace.wait()
                    await self._transmit(link, pending)

    async def _resync(self, link: _Link, resumed: bool) -> None:
        """After a reconnect: presence subscriptions (when not resumed), then ``on_reconnect``."""
        if not resumed and self._presence:
            await self._resubscribe()
        if self._on_reconnect is not None:
            try:
                await self._on_reconnect(self)
            except Exception as exc:
                # Reported, never retried by reconnecting: it would fail again.
                log.exception("on_reconnect callback failed")
                await self._events.put(ResyncFailed("callback", None, exc))

    async def _resubscribe(self) -> None:
        """Subscribe again to the users followed with ``subscribe_presence``; snapshots surface."""
        users = sorted(self._presence)
        for start in range(0, len(users), MAX_SUBSCRIBE_USERS):
            chunk = users[start : start + MAX_SUBSCRIBE_USERS]
            snapshots: list[PresenceEvent] = []
            try:
                snapshots = await self.subscribe_presence(chunk)
            except RequestError as exc:
                if exc.code != 104:
                    await self._events.put(ResyncFailed("presence", None, exc))
                    continue
                # Someone no longer shares a room with us, and the whole request
                # was refused: one by one, dropping those refused.
                for user in chunk:
                    try:
                        snapshots += await self.subscribe_presence([user])
                    except RequestError as single:
                        self._presence.discard(user)
                        log.info("presence of %s not followed any more: %s", user, single)
            except MalformedReply as exc:
                await self._events.put(ResyncFailed("presence", None, exc))
            for snapshot in snapshots:
                await self._events.put(snapshot)

    async def _watchdog(self, link: _Link, deadline_s: float) -> None:
        """End the connection when the server has been silent too long."""
        while link.closed is None:
            silent = trio.current_time() - link.last_frame
            if silent > deadline_s:
                log.warning("server silent for %.1fs: connection lost", silent)
                # No close handshake with a server that does not answer.
                link.end(ConnectionClosed(1006, "server heartbeat timeout"), polite=None)
                return
            await trio.sleep(deadline_s - silent + 0.01)

    # -- internals: receiving -------------------------------------------------
    async def _read(self, link: _Link) -> None:
        try:
            while True:
                message = await link.ws.get_message()
                link.last_frame = trio.current_time()
                if isinstance(message, str):
                    continue  # the protocol is binary-only; ignore stray text
                frame = msgpack.unpackb(message, strict_map_key=True)
                if not isinstance(frame, dict):
                    raise TypeError(f"Expected a map, got {type(frame).__name__}")
                await self._on_frame(link, frame)
        except WsConnectionClosed as exc:
            link.end(_closed_from(exc.reason))
        except (ValueError, msgpack.UnpackException, KeyError, TypeError) as exc:
            # Not msgpack, or a push without its documented fields: the server
            # does not speak our protocol, so nothing it sends can be trusted.
            log.error("undecodable frame from server: %r", exc)
            link.end(
                ConnectionClosed(1002, "undecodable frame from server"),
                polite=(1002, "undecodable frame"),
            )

    async def _on_frame(self, link: _Link, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        ref = frame.get("ref")
        if kind in ("reply", "error", "welcome") and ref is not None:
            pending = link.refs.pop(ref, None) if isinstance(ref, int) else None
            if pending is None or pending.done.is_set():
                # The request was cancelled while waiting: nobody wants it.
                log.debug("dropping late %s for ref %r", kind, ref)
            elif pending.order == _HANDSHAKE:
                pending.answer = frame
                link.hello_done.set()
            else:
                await self._answered(pending, frame)
            return
        if kind == "ping":
            # If the connection just closed, the reader sees the close next.
            await self._send_bytes(link, msgpack.packb({"t": "pong", "n": frame.get("n", 0)}))
            return
        if kind == "pong":
            return
        if kind == "msg":
            await self._deliver(_message(frame), pushed=True)
            return
        if kind == "recovered":
            await self._on_recovered(link, _recovered(frame))
            return
        decode = _PUSHES.get(kind) if isinstance(kind, str) else None
        event = decode(frame) if decode is not None else UnknownEvent(str(kind), frame)
        if isinstance(event, MessageEditedEvent | MessageDeletedEvent) and self._amend(event):
            return
        if isinstance(event, RoomAddedEvent):
            self._seqs.seed(event.room.id, event.room.last_seq)
        elif (
            isinstance(event, MemberEvent)
            and event.action in ("left", "removed")
            and self.welcome is not None
            and event.user == self.welcome.user
        ):
            self._seqs.forget(event.room)
        if isinstance(event, _CALL_EVENTS):
            watch = self._call_watches.get(event.room)
            if watch is not None:
                await watch._queue.put(event)
                return
        # Bounded: if the application stops consuming events the reader waits,
        # and the server eventually closes us as a slow consumer (we resume).
        await self._events.put(event)

    async def _answered(self, pending: _Pending, frame: dict[str, Any]) -> None:
        """An answer arrived: learn from it (positions, rooms, subscriptions), wake the caller."""
        pending.answer = frame
        data = frame.get("data")
        if frame.get("t") == "reply" and isinstance(data, dict):
            # Malformed: the caller raises MalformedReply.
            with contextlib.suppress(KeyError, TypeError, ValueError):
                await self._learn(pending, data)
        pending.done.set()

    async def _learn(self, pending: _Pending, data: dict[str, Any]) -> None:
        kind, fields = pending.kind, pending.fields
        if kind == "msg.send":
            await self._hold_own(_str(fields, "room"), _int(data, "seq"))
        elif kind in ("room.create", "room.join", "dm.open"):
            room = _room(_map(data, "room"))
            self._seqs.seed(room.id, room.last_seq)
        elif kind == "room.list":
            for item in _maps(data, "rooms"):
                self._seqs.seed(_str(item, "id"), _int(item, "last_seq"))
        elif kind == "room.leave":
            self._seqs.forget(_str(fields, "room"))
        elif kind in ("presence.subscribe", "presence.unsubscribe"):
            users = _strs(fields, "users")
            if kind == "presence.subscribe":
                self._presence.update(users)
            else:
                self._presence.difference_update(users)

    # -- internals: messages in order, once ---------------------------------------
    async def _hold_own(self, room_id: str, seq: int) -> None:
        """Our own message ``seq`` was stored: held (its SendResult is the user's copy)."""
        state = self._seqs.touch(room_id, seq)
        state.add(seq)
        state.waiting.pop(seq, None)
        if state.holding and state.waiting:  # it may close the gap before them
            async with self._deliver_lock:
                await self._release_contiguous(state)

    async def _deliver(self, message: Message, *, pushed: bool) -> None:
        """Surface ``message`` unless it already was; in seq order while its room recovers.

        ``pushed``: a ``msg`` push (else a page fetched to fill a gap, which
        only concerns rooms still tracked).
        """
        async with self._deliver_lock:
            if pushed:
                state = self._seqs.touch(message.room, message.seq)
            else:
                found = self._seqs.get(message.room)
                if found is None:
                    return
                state = found
            seq = message.seq
            if state.has(seq):
                return
            if pushed and seq > state.contig:
                state.soft = False  # pushes come in seq order: nothing older follows
            if self._own_send_seen(message):
                state.add(seq)
                state.waiting.pop(seq, None)
            elif state.holding and seq > state.contig + 1:
                state.wait(message)
                return
            else:
                await self._events.put(message)
                state.add(seq)  # after the put: a cancelled put is not held
                state.waiting.pop(seq, None)
            if state.holding:
                await self._release_contiguous(state)
            elif len(state.above) > _MAX_AHEAD:
                self._repair(message.room, state)

    def _own_send_seen(self, message: Message) -> bool:
        """A replayed copy of one of our sends still waiting for its answer: it completes the send.

        The send's result is the user's copy of the message; surfacing the
        push too would show it twice.
        """
        if self.welcome is None or message.sender != self.welcome.user:
            return False
        pending = self._sends.get((message.room, message.cid))
        if pending is None or pending.done.is_set():
            return False
        pending.answer = {
            "t": "reply",
            "data": {"seq": message.seq, "ts": message.ts, "dup": True},
        }
        link, ref = pending.link, pending.ref
        if link is not None and ref is not None:
            link.refs.pop(ref, None)
        pending.done.set()
        return True

    async def _release_contiguous(self, state: _RoomSeqs) -> None:
        """Surface the waiting messages that no longer follow a gap."""
        while (message := state.waiting.pop(state.contig + 1, None)) is not None:
            await self._events.put(message)
            state.add(message.seq)
        for seq in [seq for seq in state.waiting if state.has(seq)]:
            del state.waiting[seq]

    async def _release_all(self, state: _RoomSeqs) -> None:
        """The room's catch-up is over: surface what waits, in seq order, gaps or not."""
        await self._release_contiguous(state)
        for seq in sorted(state.waiting):
            message = state.waiting.pop(seq)
            if not state.has(seq):
                await self._events.put(message)
                state.add(seq)
        state.holding = False
        state.fill_until = 0

    def _amend(self, event: MessageEditedEvent | MessageDeletedEvent) -> bool:
        """Apply an edit or deletion to a waiting message (it will surface amended)."""
        state = self._seqs.get(event.room)
        if state is None or not state.holding:
            return False
        message = state.waiting.get(event.seq)
        if message is None:
            return False
        if isinstance(event, MessageEditedEvent):
            amended = replace(message, body=event.body, edited_at=event.edited_at)
        else:
            amended = replace(message, body=None, deleted=True)
        state.waiting[event.seq] = amended
        return True

    def _repair(self, room_id: str, state: _RoomSeqs) -> None:
        """Too many seqs held past a gap on a live connection: page the gap from history."""
        link = self._link
        if link is None or link.nursery is None or not state.above:
            return
        log.warning("room %s: gap after seq %d, filling it from history", room_id, state.contig)
        state.holding = True
        state.fill_until = max(state.above)
        link.nursery.start_soon(self._fill, link, room_id, state.fill_until, None)

    async def _on_recovered(self, link: _Link, event: Recovered) -> None:
        link.awaiting.discard(event.room)
        state = self._seqs.get(event.room)
        if event.code in (120, 121) or state is None:
            self._seqs.forget(event.room)  # no longer ours: nothing to resume
            await self._events.put(event)
        elif event.complete and event.code is None:
            async with self._deliver_lock:
                await self._release_all(state)
            await self._events.put(event)
        else:
            # Incomplete: page the older part before ``first``; not resumed at
            # all (108): page everything after our position.
            until: int | None = None
            if event.code is None:
                until = event.first - 1 if event.first is not None else event.head
            assert link.nursery is not None
            link.nursery.start_soon(self._fill, link, event.room, until, event)

    async def _fill(
        self, link: _Link, room_id: str, until: int | None, recovered: Recovered | None
    ) -> None:
        """Page a room's missed messages from history, then release it (and report)."""
        failure: TetherError | None = None
        async with link.fills:
            try:
                await self._page_gap(room_id, until)
            except TetherError as exc:
                failure = exc
        state = self._seqs.get(room_id)
        if state is not None:
            async with self._deliver_lock:
                if failure is not None:
                    while len(state.above) > _MAX_AHEAD:
                        state.skip_gap()
                await self._release_all(state)
        if failure is not None:
            # Reported, not retried by reconnecting: the next resume asks again.
            log.warning("room %s: catching up from history failed: %r", room_id, failure)
            await self._events.put(ResyncFailed("history", room_id, failure))
        if recovered is not None:
            await self._events.put(recovered)

    async def _page_gap(self, room_id: str, until: int | None) -> None:
        """``history`` forward from the room's position, up to ``until`` (None: to the end)."""
        while True:
            state = self._seqs.get(room_id)
            if state is None:
                return
            target = max(until if until is not None else 0, state.fill_until)
            if until is not None and state.contig >= target:
                return
            start = state.contig
            page = await self.history(room_id, after=start, limit=MAX_HISTORY_LIMIT)
            for message in page.messages:
                await self._deliver(message, pushed=False)
            state = self._seqs.get(room_id)
            if state is None or state.contig == start:
                return  # forgotten meanwhile, or nothing more to gain
            if not page.more and state.contig >= state.fill_until:
                return

    async def _recover_deadline(self, link: _Link) -> None:
        """Rooms that never answered ``recovered`` catch up from history."""
        await trio.sleep(_RECOVER_TIMEOUT_S)
        assert link.nursery is not None
        for room_id in sorted(link.awaiting):
            log.warning("room %s did not answer the resume: catching up from history", room_id)
            link.nursery.start_soon(self._fill, link, room_id, None, None)
        link.awaiting.clear()

    # -- internals: leaving -----------------------------------------------------
    async def _close(self, *, cancelled: bool) -> None:
        """The application leaves the ``connect()`` block: close for good (bounded)."""
        self._leaving = True
        link = self._link
        if link is not None and not cancelled:
            link.end(ConnectionClosed(1000, "closed by the client"))
            with trio.move_on_after(_DISCONNECT_TIMEOUT_S + 1.0):
                await link.finished.wait()
        self._finish(ConnectionClosed(1000, "closed by the client"))


# -- opening and closing sockets --------------------------------------------------------


async def _open_websocket(
    nursery: trio.Nursery, url: str, timeout: float
) -> tuple[WebSocketConnection, trio.abc.Stream]:
    """Open a client WebSocket to ``url`` (subprotocol ``tether.v1``) within ``timeout``.

    trio-websocket's reader task runs in ``nursery``. Unlike its
    ``connect_websocket_url``, the TCP stream is closed when the handshake
    fails or is cancelled (no socket left for the garbage collector), and it
    is returned so that the caller closes it after the close handshake
    (trio-websocket 0.12 leaves it open when the server closes first). The
    version is pinned in pyproject.toml: this uses its reader task and
    handshake events, and the tests cover these paths.

    Raises:
        ValueError: not a ws:// or wss:// URL.
        OSError: the server cannot be reached.
        HandshakeError: the WebSocket handshake failed or timed out
            (ConnectionTimeout) or was refused (ConnectionRejected).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"Expected a ws:// or wss:// URL, got {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = trio.current_time() + timeout
    try:
        with trio.fail_at(deadline):
            stream: trio.abc.Stream
            if secure:
                stream = await trio.open_ssl_over_tcp_stream(
                    parts.hostname,
                    port,
                    ssl_context=ssl.create_default_context(),
                    https_compatible=True,
                )
            else:
                stream = await trio.open_tcp_stream(parts.hostname, port)
    except trio.TooSlowError:
        raise ConnectionTimeout from None
    try:
        ws = WebSocketConnection(
            stream,
            WSConnection(ConnectionType.CLIENT),
            host=parts.netloc.rpartition("@")[2],
            path=resource,
            client_subprotocols=[SUBPROTOCOL],
            message_queue_size=64,
        )
        nursery.start_soon(ws._reader_task)
        with trio.fail_at(deadline):
            await _handshake_done(ws)
        if ws.closed is not None:
            # A peer that closes TCP during the handshake (a proxy without a
            # backend) never sets trio-websocket's open event: do not wait.
            raise HandshakeError(f"connection closed during the WebSocket handshake: {ws.closed}")
    except BaseException as exc:
        await _aclose_stream(stream)
        if isinstance(exc, trio.TooSlowError):
            raise ConnectionTimeout from None
        raise
    return ws, stream


async def _handshake_done(ws: WebSocketConnection) -> None:
    """Wait until the opening handshake succeeded or the connection closed."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, ws._open_handshake)
        nursery.start_soon(wait, ws._close_handshake)


async def _aclose_stream(stream: trio.abc.Stream) -> None:
    """Close a stream at once (no TLS close_notify wait), even when cancelled."""
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a group of nursery errors carries besides Cancelled, else the group."""
    leaves = [exc for exc in _leaves(group) if not isinstance(exc, trio.Cancelled)]
    return leaves[0] if len(leaves) == 1 else group


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


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    *,
    device: str | None = None,
    client_name: str = "tether-py/0.1",
    max_events: int = 1000,
    connect_timeout: float = 10.0,
    reconnect: bool = True,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    max_reconnect_attempts: int | None = None,
    token_provider: TokenProvider | None = None,
    on_reconnect: ReconnectCallback | None = None,
    max_pending: int = 1000,
) -> AsyncIterator[Client]:
    """Open an authenticated connection (hello → welcome) for the block, and keep it.

    Args:
        url: the server's WebSocket URL, e.g. ``ws://127.0.0.1:8740/ws``.
        token: a client token (``tether token --user ID``).
        device: a stable id of this device (so tabs/reconnects count as one);
            None lets the server pick one, which the client then reuses on
            every reconnect.
        client_name: sent to the server in ``hello``.
        max_events: bound of the queue of events not yet consumed; when it is
            full the client stops reading the socket (see docs/client.md, Events).
        connect_timeout: seconds for the TCP/WebSocket handshake and for hello.
        reconnect: reconnect by itself when the connection drops for a reason
            that allows it (a close code in 3000-3499 or 4000-4499, 1006 lost,
            1011-1014, the server falling silent...); False ends the client at
            the first drop, as a plain connection would.
        backoff_base: the first reconnect waits ``uniform(0, backoff_base)``
            seconds; each failed attempt doubles the bound (full jitter).
        backoff_cap: the bound never exceeds this; the attempt count restarts
            once a connection stayed up this long.
        max_reconnect_attempts: give up (close for good, events end) after
            this many attempts in a row; None tries forever.
        token_provider: returns a fresh token; called after ``3006 TOKEN_EXPIRED``
            before reconnecting. Without it, 3006 closes the client for good.
            If it raises, the client closes (AuthenticationError, its cause).
        on_reconnect: awaited with the client after each reconnect (not the
            first connection), once the client resent what was pending; for
            your own catch-up (e.g. ``list_rooms()`` for rooms joined while
            away). If it raises, a :class:`ResyncFailed` event reports it and
            nothing else happens (no reconnect).
        max_pending: requests waiting for an answer or for the connection, at
            most; further requests wait for one of them to end.

    Raises:
        AuthenticationError: the token was refused.
        ConnectionClosed: the server closed during the handshake.
        OSError / HandshakeError: the server could not be reached.
        trio.TooSlowError: no ``welcome`` within ``connect_timeout``.
        ValueError: an argument out of range, or not a ws:// / wss:// URL.

    The first connection is not retried: these errors are raised at once.

    Resource handling: leaving the block closes the connection (normal close
    1000 unless it is already closed, or the block was cancelled) and stops
    every task of the client, including a reconnect in progress; no socket is
    left open.
    """
    if max_events < 1:
        raise ValueError(f"Expected max_events >= 1, got {max_events!r}")
    if max_pending < 1:
        raise ValueError(f"Expected max_pending >= 1, got {max_pending!r}")
    if not 0 < backoff_base <= backoff_cap:
        raise ValueError(
            f"Expected 0 < backoff_base <= backoff_cap, got {backoff_base!r} and {backoff_cap!r}"
        )
    if max_reconnect_attempts is not None and max_reconnect_attempts < 0:
        raise ValueError(f"Expected max_reconnect_attempts >= 0, got {max_reconnect_attempts!r}")
    client = Client(
        url,
        token,
        device=device,
        client_name=client_name,
        max_events=max_events,
        connect_timeout=connect_timeout,
        reconnect=reconnect,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        max_reconnect_attempts=max_reconnect_attempts,
        token_provider=token_provider,
        on_reconnect=on_reconnect,
        max_pending=max_pending,
    )
    async with _single_errors(), trio.open_nursery() as nursery:
        await nursery.start(client._supervise)
        try:
            yield client
        finally:
            cancelled = trio.current_effective_deadline() == -math.inf
            with trio.CancelScope(shield=True):
                await client._close(cancelled=cancelled)
            nursery.cancel_scope.cancel()


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
    "ReconnectCallback",
    "Reconnected",
    "Reconnecting",
    "Recovered",
    "RequestError",
    "RequestInterrupted",
    "ResyncFailed",
    "Room",
    "RoomAddedEvent",
    "RoomKind",
    "RoomSummary",
    "SendResult",
    "ServerError",
    "TetherError",
    "TokenProvider",
    "TypingEvent",
    "UnknownEvent",
    "Welcome",
    "connect",
    "new_cid",
]
