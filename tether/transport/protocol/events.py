"""Wire events of tether protocol v1: one frozen, validated class per frame type.

Every frame is one msgpack map with str keys; ``"t"`` names the frame type and
the other keys are the fields of the class registered for that type. The field
names of each class below are the wire keys, so the classes are the schema.

Rules that hold for every class (h11's ``_events.py`` is the model):

* Validation happens in the constructor: an invalid event cannot exist. The
  constructor raises :class:`LocalProtocolError`; when the values came from a
  client, the codec converts that into :class:`RemoteProtocolError`.
* Events are frozen and compare by value. Do not subclass them outside this
  module: the codec and the state tables look classes up by their wire ``TYPE``.
* An optional field is omitted from the wire when it is None, and a nil value
  from the wire counts as absent. Two fields are required but nullable, always
  sent and nil when empty: ``Presence.last_seen`` and ``Message.body`` (nil for
  a deleted message).
* Unknown extra keys from the wire are ignored (forward compatibility).
* Maps nested in frames (a room, a member, a receipt entry) are *shapes*:
  frozen, validated :class:`Shape` classes with the same ``to_wire`` /
  ``from_wire`` pair. A frame field may hold a shape or a tuple of shapes; the
  constructor accepts the shape or its map and stores the shape.
* Requests answered by a reply with a documented shape build it with a typed
  ``reply(...)`` (e.g. ``MsgSend.reply(seq=..., ts=..., dup=...)``), which
  validates it; requests answered by an empty ``data`` map use
  ``_ReplyRequest.reply()``. Every request has ``error(...)``.

Adding a frame type: write its class here, decorate it with
``@_client_frame`` and/or ``@_server_frame``, and give it an entry in
``states.py``'s table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, Self, TypeVar

from .codes import (
    MAX_CLOSE_REASON_BYTES,
    MAX_ERROR_CODE,
    MAX_ERROR_REASON_BYTES,
    DisconnectCode,
    ErrorCode,
    fit_reason,
    is_valid_close_code,
    reconnect_after,
)
from .errors import LocalProtocolError

__all__ = [
    "CLIENT_EVENT_TYPES",
    "DEFAULT_HISTORY_LIMIT",
    "MAX_BODY_DEPTH",
    "MAX_CANDIDATE_CHARS",
    "MAX_CID_CHARS",
    "MAX_CREATE_MEMBERS",
    "MAX_HISTORY_LIMIT",
    "MAX_RECEIPT_USERS",
    "MAX_REF",
    "MAX_RESUME_ROOMS",
    "MAX_ROOM_ID_CHARS",
    "MAX_SDP_BYTES",
    "MAX_SEQ",
    "MAX_TYPING_USERS",
    "SERVER_EVENT_TYPES",
    "Bye",
    "CallAnswer",
    "CallEnded",
    "CallIce",
    "CallJoin",
    "CallLeave",
    "CallMedia",
    "CallMute",
    "CallOffer",
    "CallParticipant",
    "CallPeer",
    "CallPublish",
    "CallQuality",
    "CallRestart",
    "CallRestarted",
    "CallSpeaker",
    "CallTrack",
    "ClientEvent",
    "DeviceStatus",
    "Disconnect",
    "DmOpen",
    "Error",
    "Event",
    "Frame",
    "Hello",
    "History",
    "MediaKind",
    "MemberAction",
    "MemberEvent",
    "MemberInfo",
    "MemberRole",
    "Message",
    "MessageDeleted",
    "MessageEdited",
    "MsgDelete",
    "MsgEdit",
    "MsgSend",
    "ParticipantAction",
    "ParticipantInfo",
    "Ping",
    "Pong",
    "Presence",
    "PresenceSet",
    "PresenceStatus",
    "PresenceSubscribe",
    "PresenceUnsubscribe",
    "ReadState",
    "Receipt",
    "ReceiptInfo",
    "Receipts",
    "Recovered",
    "Reply",
    "RoomAdded",
    "RoomCreate",
    "RoomInfo",
    "RoomInvite",
    "RoomJoin",
    "RoomKind",
    "RoomLeave",
    "RoomList",
    "RoomMembers",
    "RoomRemove",
    "RoomSummaryInfo",
    "ServerEvent",
    "ServerFrame",
    "Shape",
    "SupportsToWire",
    "TrackAction",
    "TrackInfo",
    "Typing",
    "TypingUsers",
    "Welcome",
]

#: Refs are client-chosen ints in 0..MAX_REF (a uint32).
MAX_REF = 2**32 - 1
#: ``hello.token`` is at most 8 KiB of UTF-8.
MAX_TOKEN_BYTES = 8 * 1024
#: Device ids are 1..64 characters.
MAX_DEVICE_CHARS = 64
#: ``hello.client`` and ``welcome.server`` are at most 64 characters.
MAX_SOFTWARE_CHARS = 64
#: User ids (the token's ``sub``) and session ids are 1..128 characters.
MAX_ID_CHARS = 128
#: Display names are at most 128 characters.
MAX_NAME_CHARS = 128
#: ``presence.subscribe`` / ``presence.unsubscribe`` name 1..100 users.
MAX_PRESENCE_USERS = 100
#: Room ids are server-generated, 1..64 characters.
MAX_ROOM_ID_CHARS = 64
#: Client message ids (``cid``, the dedupe key of ``msg.send``) are 1..64 characters.
MAX_CID_CHARS = 64
#: ``room.create`` names at most 100 other members.
MAX_CREATE_MEMBERS = 100
#: ``history`` returns at most 500 messages per request ...
MAX_HISTORY_LIMIT = 500
#: ... and 50 when the request gives no ``limit``.
DEFAULT_HISTORY_LIMIT = 50
#: Sequence numbers, read/delivered positions and counts fit an int64.
MAX_SEQ = 2**63 - 1
#: A message body nests at most 10 containers deep (a container body is level 1).
#: With the 16 levels a frame may have, a body still fits inside a ``history``
#: reply (``reply`` → ``data`` → ``messages`` → message map → body) with room to spare.
MAX_BODY_DEPTH = 10
#: A ``receipts`` push lists at most 1000 members (larger updates are split).
MAX_RECEIPT_USERS = 1000
#: A ``typing`` push lists at most 100 users.
MAX_TYPING_USERS = 100
#: ``hello.resume`` names at most 1000 rooms.
MAX_RESUME_ROOMS = 1000
# Durations and counters fit an int32, which every client language has.
_MAX_INT32 = 2**31 - 1
# msgpack ints span int64 and uint64; ping/pong counters may use all of it
# (clients often put a millisecond timestamp there).
_MIN_MSGPACK_INT = -(2**63)
_MAX_MSGPACK_INT = 2**64 - 1
_MAX_EPOCH_MS = 2**63 - 1
# Keys ``welcome.limits`` must carry; more may be added within v1.
_REQUIRED_LIMITS = ("max_frame_bytes", "max_frames_per_s")


class DeviceStatus(StrEnum):
    """What a client reports about its own device with ``presence.set``."""

    ACTIVE = "active"
    IDLE = "idle"


class PresenceStatus(StrEnum):
    """A user's presence as the server announces it."""

    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class RoomKind(StrEnum):
    """Who may join a room."""

    #: Anyone may join with ``room.join``.
    PUBLIC = "public"
    #: Members are added by the owner (``room.invite``) or at creation.
    PRIVATE = "private"
    #: The one conversation of two users (``dm.open``); its members are fixed.
    DIRECT = "direct"


class MemberRole(StrEnum):
    """A member's role in a room."""

    #: The creator; may invite and remove members.
    OWNER = "owner"
    #: Everyone else.
    MEMBER = "member"


class MemberAction(StrEnum):
    """What happened to a room's membership (``member`` push)."""

    #: The user joined a public room.
    JOINED = "joined"
    #: The user left.
    LEFT = "left"
    #: The owner added the user.
    INVITED = "invited"
    #: The owner removed the user.
    REMOVED = "removed"


# --------------------------------------------------------------------------
# Validation helpers. Each returns the (possibly normalized) value or raises
# LocalProtocolError with an "Expected …, got …" message that is safe to send
# back to the client: values are abbreviated, secrets never echoed.


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Who a validated value belongs to, for messages: a frame class (named by its
# TYPE), a shape class (by its NAME), or a label such as "'msg.send' reply".
_Owner = type | str


def _where(owner: _Owner, name: str) -> str:
    if isinstance(owner, str):
        return f"{owner} field {name!r}"
    frame_type = getattr(owner, "TYPE", None)
    if frame_type is not None:
        return f"{frame_type!r} field {name!r}"
    return f"{getattr(owner, 'NAME', owner.__name__)} field {name!r}"


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python but a distinct msgpack type.
    return isinstance(value, int) and not isinstance(value, bool)


def _int(owner: _Owner, name: str, value: object, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= value <= hi:  # type: ignore[operator]
        raise LocalProtocolError(
            f"Expected {_where(owner, name)} to be an int in {lo}..{hi}, got {_brief(value)}"
        )
    return value  # type: ignore[return-value]


def _str(owner: _Owner, name: str, value: object, lo: int, hi: int) -> str:
    if not isinstance(value, str) or not lo <= len(value) <= hi:
        raise LocalProtocolError(
            f"Expected {_where(owner, name)} to be a str of {lo}..{hi} characters, "
            f"got {_brief(value)}"
        )
    return value


def _bool(owner: _Owner, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise LocalProtocolError(
            f"Expected {_where(owner, name)} to be a bool, got {_brief(value)}"
        )
    return value


def _ref(cls: type[Event], value: object) -> int:
    return _int(cls, "ref", value, 0, MAX_REF)


def _room_id(owner: _Owner, value: object, name: str = "room") -> str:
    return _str(owner, name, value, 1, MAX_ROOM_ID_CHARS)


def _user_id(owner: _Owner, value: object, name: str = "user") -> str:
    return _str(owner, name, value, 1, MAX_ID_CHARS)


def _seq(owner: _Owner, name: str, value: object) -> int:
    """A message's sequence number: 1, 2, 3, ... in its room."""
    return _int(owner, name, value, 1, MAX_SEQ)


def _position(owner: _Owner, name: str, value: object) -> int:
    """A read/delivered marker or a last seq: a seq, or 0 for "none yet"."""
    return _int(owner, name, value, 0, MAX_SEQ)


def _time(owner: _Owner, name: str, value: object) -> int:
    return _int(owner, name, value, 0, _MAX_EPOCH_MS)


_E = TypeVar("_E", bound=StrEnum)


def _enum(
    owner: _Owner,
    name: str,
    value: object,
    enum: type[_E],
    allowed: tuple[_E, ...] | None = None,
) -> _E:
    choices_of = tuple(enum) if allowed is None else allowed
    if isinstance(value, str):
        try:
            member = enum(value)
        except ValueError:
            pass
        else:
            if member in choices_of:
                return member
    choices = ", ".join(repr(member.value) for member in choices_of)
    raise LocalProtocolError(
        f"Expected {_where(owner, name)} to be one of {choices}, got {_brief(value)}"
    )


def _ids(owner: _Owner, name: str, value: object, lo: int, hi: int) -> tuple[str, ...]:
    if (
        isinstance(value, list | tuple)
        and lo <= len(value) <= hi
        and all(isinstance(u, str) and 1 <= len(u) <= MAX_ID_CHARS for u in value)
    ):
        return tuple(value)
    raise LocalProtocolError(
        f"Expected {_where(owner, name)} to be an array of {lo}..{hi} "
        f"user ids (str of 1..{MAX_ID_CHARS} characters), got {_brief(value)}"
    )


def _users(cls: type[Event], value: object) -> tuple[str, ...]:
    return _ids(cls, "users", value, 1, MAX_PRESENCE_USERS)


_BODY_ARRAYS = (list, tuple)


def _body_problem(body: object) -> str | None:
    """Say why ``body`` is not a valid message body, or return None if it is.

    A body is a tree of msgpack values: nil, bool, int (int64/uint64 range),
    float, str, bytes, arrays (list or tuple) and maps with str keys, nested at
    most MAX_BODY_DEPTH containers deep. No ext types: v1 uses none, and a
    client that does not know an ext type could not show the message. Walked
    iteratively, so a hostile nesting cannot exhaust the stack.
    """
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if node is None or isinstance(node, bool | float | str | bytes):
            continue
        if isinstance(node, int):
            if not _MIN_MSGPACK_INT <= node <= _MAX_MSGPACK_INT:
                return "an int outside the msgpack range"
            continue
        if depth > MAX_BODY_DEPTH and (isinstance(node, dict) or type(node) in _BODY_ARRAYS):
            return f"containers nested deeper than {MAX_BODY_DEPTH}"
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str):
                    return f"a map key of type {type(key).__name__}"
                stack.append((child, depth + 1))
        # Exact list/tuple: msgpack's ExtType is a namedtuple, and other tuple
        # subclasses would not survive a round trip as themselves either.
        elif isinstance(node, list | tuple) and type(node) in _BODY_ARRAYS:
            stack.extend((child, depth + 1) for child in node)
        else:
            return f"a value of type {type(node).__name__}"
    return None


def _body(owner: _Owner, value: object, name: str = "body") -> object:
    """Validate a message body: any msgpack value but nil (see _body_problem)."""
    problem = "nil" if value is None else _body_problem(value)
    if problem is not None:
        raise LocalProtocolError(
            f"Expected {_where(owner, name)} to be a non-nil msgpack value with str map "
            f"keys, nested at most {MAX_BODY_DEPTH} deep, got {problem}"
        )
    return value


_IE = TypeVar("_IE", bound=IntEnum)


def _member(enum: type[_IE], value: int) -> _IE | None:
    """The member of ``enum`` with this value, or None (codes outside the enum are valid)."""
    try:
        return enum(value)
    except ValueError:
        return None


def _set(event: Event | Shape, name: str, value: object) -> None:
    # Normalizing a field of a frozen dataclass from __post_init__.
    object.__setattr__(event, name, value)


# --------------------------------------------------------------------------
# Base classes and the frame registries.


class SupportsToWire(Protocol):
    """Anything that renders itself as a wire map (used by ``Presence.from_snapshot``)."""

    def to_wire(self) -> Mapping[str, Any]:
        """Return the map."""
        ...


class Event:
    """Base of everything ``ServerConnection`` yields or sends. Don't subclass."""

    __slots__ = ()


class Frame(Event):
    """An event that travels as one msgpack map: ``{"t": TYPE, **fields}``."""

    __slots__ = ()

    #: The wire frame type, the value of key ``"t"``.
    TYPE: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map of this frame.

        Returns:
            ``{"t": TYPE, field: value, …}`` with plain str/int/list/map values
            (shapes rendered as their maps); None-valued optional fields are
            left out.
        """
        return _fields_to_wire(self, {"t": self.TYPE})

    @classmethod
    def wire_keys(cls) -> tuple[str, ...]:
        """Return the field names of this frame type (its wire keys besides ``"t"``)."""
        return tuple(name for name, _ in _wire_fields(cls))

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Self:
        """Build the event from a decoded frame map.

        Args:
            body: the frame's map (``"t"`` and unknown keys are ignored).

        Returns:
            The validated event.

        Raises:
            LocalProtocolError: a required field is missing or a field is invalid.
                The codec converts it to ``RemoteProtocolError`` for peer data.
        """
        return cls(**_kwargs_from_wire(cls, body, f"{cls.TYPE!r} frame"))


class Shape:
    """A map nested inside frames (a room, a member, ...). Don't subclass.

    Shapes are frozen and validated like events, and render to and from their
    maps the same way (without a ``"t"`` key).
    """

    __slots__ = ()

    #: How messages name this map, e.g. ``"room map"``.
    NAME: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map (None-valued optional fields left out)."""
        return _fields_to_wire(self, {})

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Self:
        """Build the shape from its map.

        Args:
            body: the map (unknown keys are ignored).

        Returns:
            The validated shape.

        Raises:
            LocalProtocolError: a required field is missing or a field is invalid.
        """
        return cls(**_kwargs_from_wire(cls, body, cls.NAME))


class ClientEvent(Frame):
    """A frame the client sends; ``ServerConnection.events()`` yields these."""

    __slots__ = ()


class ServerEvent(Event):
    """What the server hands to ``ServerConnection.send``: frames and ``Disconnect``."""

    __slots__ = ()


class ServerFrame(Frame, ServerEvent):
    """A frame the server sends."""

    __slots__ = ()


_F = TypeVar("_F", bound=type[Frame])
_FIELD_CACHE: dict[type[Frame] | type[Shape], tuple[tuple[str, bool], ...]] = {}
_client_types: dict[str, type[ClientEvent]] = {}
_server_types: dict[str, type[ServerFrame]] = {}

#: Wire type → class for frames a client may send (read-only view).
CLIENT_EVENT_TYPES: Mapping[str, type[ClientEvent]] = MappingProxyType(_client_types)
#: Wire type → class for frames the server may send (read-only view).
SERVER_EVENT_TYPES: Mapping[str, type[ServerFrame]] = MappingProxyType(_server_types)


def _wire_fields(cls: type[Frame] | type[Shape]) -> tuple[tuple[str, bool], ...]:
    """(name, required) of each field of a frame or shape class, in wire order; cached."""
    cached = _FIELD_CACHE.get(cls)
    if cached is None:
        cached = tuple(
            (
                f.name,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        )
        _FIELD_CACHE[cls] = cached
    return cached


def _fields_to_wire(obj: Frame | Shape, wire: dict[str, Any]) -> dict[str, Any]:
    """Add the fields of ``obj`` to ``wire``, as msgpack-ready values; return it."""
    for name, required in _wire_fields(type(obj)):
        value = getattr(obj, name)
        if value is None and not required:
            continue
        if isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, tuple):
            value = [item.to_wire() if isinstance(item, Shape) else item for item in value]
        elif isinstance(value, Shape):
            value = value.to_wire()
        wire[name] = value
    return wire


def _kwargs_from_wire(
    cls: type[Frame] | type[Shape], body: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """The constructor arguments of ``cls`` found in ``body``; ``what`` names it in errors."""
    kwargs: dict[str, Any] = {}
    for name, required in _wire_fields(cls):
        if name in body:
            value = body[name]
            if value is None and not required:
                continue  # nil counts as absent for optional fields
            kwargs[name] = value
        elif required:
            raise LocalProtocolError(f"Expected {what} to have field {name!r}, got none")
    return kwargs


def _registrar(registry: dict[str, Any], base: type[Frame]) -> Callable[[_F], _F]:
    def register(cls: _F) -> _F:
        # (is_dataclass would narrow cls to a dataclass instance type for mypy.)
        if not issubclass(cls, base) or "__dataclass_fields__" not in vars(cls):
            raise TypeError(f"Expected a dataclass subclass of {base.__name__}, got {cls!r}")
        if cls.TYPE in registry:
            raise TypeError(f"Frame type {cls.TYPE!r} is already registered")
        registry[cls.TYPE] = cls
        _wire_fields(cls)
        return cls

    return register


_client_frame = _registrar(_client_types, ClientEvent)
_server_frame = _registrar(_server_types, ServerFrame)


class _Request:
    """Mixin of client frames that carry a ``ref`` and get exactly one answer.

    Gives them ``error()``. The success answer comes from ``_ReplyRequest.reply``
    (a ``data`` map) or from a typed ``reply(...)`` (or ``welcome``) on the class.
    """

    __slots__ = ()
    ref: int | None

    def error(self, code: ErrorCode | int, reason: str, *, temporary: bool | None = None) -> Error:
        """Build the ``error`` frame answering this request.

        Args:
            code: an :class:`ErrorCode`, or a plugin code (400+).
            reason: human-readable text; cut to fit the error-reason limit.
            temporary: whether retrying may work; defaults to ``code.temporary``
                for an ``ErrorCode`` and to False for other codes.

        Returns:
            The error frame, with this request's ref (None for a ref-less
            ``presence.set``).

        Raises:
            LocalProtocolError: the code is out of range.
        """
        return Error.for_code(code, reason, ref=self.ref, temporary=temporary)


class _ReplyRequest(_Request):
    """Mixin of requests answered by ``reply`` on success (all but ``hello``)."""

    __slots__ = ()

    def reply(self, data: Mapping[str, Any] | None = None) -> Reply:
        """Build the ``reply`` (success) answering this request.

        Args:
            data: the reply's ``data`` map (default: empty); each request type
                documents its shape.

        Returns:
            The reply frame.

        Raises:
            LocalProtocolError: this request has no ref (so it gets no answer),
                or ``data`` is invalid.
        """
        if self.ref is None:
            raise LocalProtocolError(f"Expected a request with a ref, got {self!r}")
        return Reply(ref=self.ref, data={} if data is None else data)


# --------------------------------------------------------------------------
# Shapes: maps nested in frames and in reply data.

_SH = TypeVar("_SH", bound=Shape)


def _shape(owner: _Owner, name: str, value: object, shape: type[_SH]) -> _SH:
    """Return ``value`` as a ``shape``: the shape itself, or one built from its map."""
    if isinstance(value, shape):
        return value
    if isinstance(value, Mapping):
        return shape.from_wire(value)
    raise LocalProtocolError(
        f"Expected {_where(owner, name)} to be a {shape.NAME}, got {_brief(value)}"
    )


def _shapes(
    owner: _Owner, name: str, value: object, shape: type[_SH], *, lo: int, hi: int
) -> tuple[_SH, ...]:
    """Return ``value`` (an array of ``lo..hi`` shapes or their maps) as a tuple of shapes."""
    if not isinstance(value, list | tuple) or not lo <= len(value) <= hi:
        raise LocalProtocolError(
            f"Expected {_where(owner, name)} to be an array of {lo}..{hi} "
            f"{shape.NAME}s, got {_brief(value)}"
        )
    return tuple(_shape(owner, name, item, shape) for item in value)


def _array(owner: _Owner, name: str, value: object) -> list[Any]:
    """Return reply-builder input that must be an array (any iterable but str/bytes/maps)."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise LocalProtocolError(
            f"Expected {_where(owner, name)} to be an array, got {_brief(value)}"
        )
    return list(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomInfo(Shape):
    """A room (the ROOM map of ``docs/protocol.md``).

    Attributes:
        id: the server-generated room id (1..64 chars).
        kind: :class:`RoomKind` (a plain str is accepted and converted).
        name: display name (0..128 chars; empty for direct rooms).
        owner: the creator's user id (for a direct room, who opened it).
        last_seq: seq of the room's latest message (0: none yet).
        created_at: creation time, ms since the Unix epoch.
    """

    NAME: ClassVar[str] = "room map"

    id: str
    kind: RoomKind
    name: str
    owner: str
    last_seq: int
    created_at: int

    def __post_init__(self) -> None:
        _room_id(RoomInfo, self.id, "id")
        _set(self, "kind", _enum(RoomInfo, "kind", self.kind, RoomKind))
        _str(RoomInfo, "name", self.name, 0, MAX_NAME_CHARS)
        _user_id(RoomInfo, self.owner, "owner")
        _position(RoomInfo, "last_seq", self.last_seq)
        _time(RoomInfo, "created_at", self.created_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSummaryInfo(Shape):
    """A room in the ``room.list`` reply: a room map plus the caller's read state.

    Attributes:
        id, kind, name, owner, last_seq, created_at: as in :class:`RoomInfo`.
        read_seq: the caller's read position in the room (0: nothing read).
        unread: messages after ``read_seq`` sent by others and not deleted.
    """

    NAME: ClassVar[str] = "room summary map"

    id: str
    kind: RoomKind
    name: str
    owner: str
    last_seq: int
    created_at: int
    read_seq: int
    unread: int

    def __post_init__(self) -> None:
        _room_id(RoomSummaryInfo, self.id, "id")
        _set(self, "kind", _enum(RoomSummaryInfo, "kind", self.kind, RoomKind))
        _str(RoomSummaryInfo, "name", self.name, 0, MAX_NAME_CHARS)
        _user_id(RoomSummaryInfo, self.owner, "owner")
        _position(RoomSummaryInfo, "last_seq", self.last_seq)
        _time(RoomSummaryInfo, "created_at", self.created_at)
        _position(RoomSummaryInfo, "read_seq", self.read_seq)
        _int(RoomSummaryInfo, "unread", self.unread, 0, MAX_SEQ)

    @classmethod
    def of(cls, room: RoomInfo, *, read_seq: int, unread: int) -> RoomSummaryInfo:
        """Build the summary of ``room`` for a member with this read state.

        Raises:
            LocalProtocolError: ``read_seq`` or ``unread`` is invalid.
        """
        return cls(**room.to_wire(), read_seq=read_seq, unread=unread)

    def room(self) -> RoomInfo:
        """Return the room map part of this summary."""
        return RoomInfo(
            id=self.id,
            kind=self.kind,
            name=self.name,
            owner=self.owner,
            last_seq=self.last_seq,
            created_at=self.created_at,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo(Shape):
    """A member in the ``room.members`` reply.

    Attributes:
        user: the member's user id.
        role: :class:`MemberRole` (a plain str is accepted and converted).
        read: the member's read position (0: nothing read).
        delivered: the highest delivered position over the member's devices.
    """

    NAME: ClassVar[str] = "member map"

    user: str
    role: MemberRole
    read: int
    delivered: int

    def __post_init__(self) -> None:
        _user_id(MemberInfo, self.user)
        _set(self, "role", _enum(MemberInfo, "role", self.role, MemberRole))
        _position(MemberInfo, "read", self.read)
        _position(MemberInfo, "delivered", self.delivered)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptInfo(Shape):
    """One member's receipt positions in a ``receipts`` push.

    Attributes:
        user: the member's user id.
        delivered: the highest delivered position over the member's devices.
        read: the member's read position.
    """

    NAME: ClassVar[str] = "receipt map"

    user: str
    delivered: int
    read: int

    def __post_init__(self) -> None:
        _user_id(ReceiptInfo, self.user)
        _position(ReceiptInfo, "delivered", self.delivered)
        _position(ReceiptInfo, "read", self.read)


# Calls: shapes.

#: An SDP (offer or answer) is at most 64 KiB of UTF-8.
MAX_SDP_BYTES = 64 * 1024
#: An ICE candidate line is at most 1024 characters (``sdp_mid`` at most 64).
MAX_CANDIDATE_CHARS = 1024
MAX_SDP_MID_CHARS = 64
#: Track ids (``<participant>.<mid>``) are 1..96 characters.
MAX_TRACK_ID_CHARS = 96
#: A track has at most 4 simulcast rids, each 1..16 characters.
MAX_RIDS = 4
MAX_RID_CHARS = 16
#: A participant publishes at most 16 tracks.
MAX_PARTICIPANT_TRACKS = 16
#: A call's participant list holds at most 1000 entries (call_max_participants is smaller).
MAX_CALL_PARTICIPANTS = 1000
#: ``call.join`` reply: at most 16 ICE servers of 1..8 URLs (each 1..512 characters).
MAX_ICE_SERVERS = 16
MAX_ICE_URLS = 8
MAX_ICE_URL_CHARS = 512
#: A video size hint (``call.quality``) is 0..16384 pixels per side.
MAX_VIDEO_SIDE = 16384
#: A close reason of a call (``call.ended``, ``call.restart``) is at most 256 characters.
MAX_CALL_REASON_CHARS = 256


class MediaKind(StrEnum):
    """What a track carries."""

    AUDIO = "audio"
    VIDEO = "video"


class CallPeer(StrEnum):
    """Which of a participant's two PeerConnections a frame is about."""

    #: The publisher PeerConnection (the client offers).
    PUB = "pub"
    #: The subscriber PeerConnection (the server offers).
    SUB = "sub"


class CallMedia(StrEnum):
    """``call.join`` reply: what the client must do with its media."""

    #: Publish afresh (the server sends a new ``call.offer`` for what it receives).
    NEW = "new"
    #: The media transports of this session are still up: nothing to do.
    KEPT = "kept"


class ParticipantAction(StrEnum):
    """What happened to a call participant (``call.participant`` push)."""

    JOINED = "joined"
    LEFT = "left"
    UPDATED = "updated"


class TrackAction(StrEnum):
    """What happened to a published track (``call.track`` push)."""

    ADDED = "added"
    REMOVED = "removed"


def _participant_id(owner: _Owner, value: object, name: str = "participant") -> str:
    """A participant id: 12 lowercase hex characters (server-made)."""
    if isinstance(value, str) and len(value) == 12 and all(c in "0123456789abcdef" for c in value):
        return value
    raise LocalProtocolError(
        f"Expected {_where(owner, name)} to be 12 lowercase hex characters, got {_brief(value)}"
    )


def _track_id(owner: _Owner, value: object, name: str = "track") -> str:
    return _str(owner, name, value, 1, MAX_TRACK_ID_CHARS)


def _sdp(owner: _Owner, value: object, name: str = "sdp") -> str:
    """An SDP blob: a non-empty str of at most MAX_SDP_BYTES of UTF-8 (content is the worker's)."""
    if isinstance(value, str) and value and len(value) <= MAX_SDP_BYTES:
        size = len(value.encode("utf-8", errors="replace"))
        if size <= MAX_SDP_BYTES:
            return value
        got = f"{size} bytes"
    elif isinstance(value, str):
        got = "an empty str" if not value else f"{len(value)} characters"
    else:
        got = type(value).__name__
    raise LocalProtocolError(
        f"Expected {_where(owner, name)} to be a non-empty str of at most "
        f"{MAX_SDP_BYTES} bytes, got {got}"
    )


def _rids(owner: _Owner, value: object) -> tuple[str, ...]:
    if (
        isinstance(value, list | tuple)
        and len(value) <= MAX_RIDS
        and all(isinstance(r, str) and 1 <= len(r) <= MAX_RID_CHARS for r in value)
    ):
        return tuple(value)
    raise LocalProtocolError(
        f"Expected {_where(owner, 'rids')} to be an array of at most {MAX_RIDS} "
        f"str of 1..{MAX_RID_CHARS} characters, got {_brief(value)}"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackInfo(Shape):
    """A published track (the TRACK map).

    Attributes:
        id: ``<participant>.<mid>`` (1..96 chars).
        participant: the publisher's participant id.
        kind: :class:`MediaKind` (a plain str is accepted and converted).
        rids: simulcast layer ids (empty: one layer), at most 4.
        muted: True while its publisher has muted it (nothing is forwarded).
    """

    NAME: ClassVar[str] = "track map"

    id: str
    participant: str
    kind: MediaKind
    rids: tuple[str, ...] = ()
    muted: bool = False

    def __post_init__(self) -> None:
        _track_id(TrackInfo, self.id, "id")
        _participant_id(TrackInfo, self.participant)
        _set(self, "kind", _enum(TrackInfo, "kind", self.kind, MediaKind))
        _set(self, "rids", _rids(TrackInfo, self.rids))
        _bool(TrackInfo, "muted", self.muted)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantInfo(Shape):
    """A call participant (the PARTICIPANT map).

    Attributes:
        id: the participant id (12 lowercase hex chars).
        user: the user id.
        device: the device id of the connection that joined.
        tracks: its published tracks (at most 16).
        audio_muted: whether it muted its audio.
        video_muted: whether it muted its video.
    """

    NAME: ClassVar[str] = "participant map"

    id: str
    user: str
    device: str
    tracks: tuple[TrackInfo, ...] = ()
    audio_muted: bool = False
    video_muted: bool = False

    def __post_init__(self) -> None:
        _participant_id(ParticipantInfo, self.id, "id")
        _user_id(ParticipantInfo, self.user)
        _str(ParticipantInfo, "device", self.device, 1, MAX_DEVICE_CHARS)
        tracks = _shapes(
            ParticipantInfo, "tracks", self.tracks, TrackInfo, lo=0, hi=MAX_PARTICIPANT_TRACKS
        )
        _set(self, "tracks", tracks)
        _bool(ParticipantInfo, "audio_muted", self.audio_muted)
        _bool(ParticipantInfo, "video_muted", self.video_muted)


def _ice_servers(value: object) -> list[dict[str, list[str]]]:
    """Validate the ``ice_servers`` of a ``call.join`` reply: ``[{urls: [str]}]``."""
    owner = "'call.join' reply"
    if isinstance(value, list | tuple) and len(value) <= MAX_ICE_SERVERS:
        servers = []
        for server in value:
            urls = server.get("urls") if isinstance(server, Mapping) else None
            if not (
                isinstance(urls, list | tuple)
                and 1 <= len(urls) <= MAX_ICE_URLS
                and all(isinstance(u, str) and 1 <= len(u) <= MAX_ICE_URL_CHARS for u in urls)
            ):
                break
            servers.append({"urls": list(urls)})
        else:
            return servers
    raise LocalProtocolError(
        f"Expected {_where(owner, 'ice_servers')} to be an array of at most {MAX_ICE_SERVERS} "
        f"maps {{urls: [str]}}, got {_brief(value)}"
    )


def _resume_map(value: object) -> dict[str, int]:
    """Validate ``hello.resume``: room id → sequence number, at most MAX_RESUME_ROOMS."""
    if not isinstance(value, Mapping) or len(value) > MAX_RESUME_ROOMS:
        raise LocalProtocolError(
            f"Expected {_where(Hello, 'resume')} to be a map of at most {MAX_RESUME_ROOMS} "
            f"room ids to sequence numbers, got {_brief(value)}"
        )
    rooms: dict[str, int] = {}
    for room, seq in value.items():
        rooms[_room_id(Hello, room, "resume")] = _position(Hello, "resume", seq)
    return rooms


# --------------------------------------------------------------------------
# Client → server frames.


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(ClientEvent, _Request):
    """``hello``: authenticate; must be the client's first frame.

    Attributes:
        ref: request ref; ``welcome`` or ``error`` answers it.
        token: the JWT (at most 8 KiB); never shown in ``repr``.
        device: stable per-device id chosen by the client (1..64 chars), or None
            to let the server make one for this connection.
        client: client software and version, e.g. ``"tether-py/0.1"`` (≤ 64 chars).
        session: the ``session`` of an earlier ``welcome`` to resume (its presence
            subscriptions come back), or None for a fresh session.
        resume: room id → the highest sequence number the client holds without a
            gap, for at most 1000 rooms; each named room replays what came after
            and then answers ``recovered``.
    """

    TYPE: ClassVar[str] = "hello"

    ref: int
    token: str = field(repr=False)
    device: str | None = None
    client: str | None = None
    session: str | None = None
    resume: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        _ref(Hello, self.ref)
        if self.session is not None:
            _str(Hello, "session", self.session, 1, MAX_ID_CHARS)
        if self.resume is not None:
            _set(self, "resume", _resume_map(self.resume))
        # The token is a secret: the message names its type and size only.
        token: object = self.token
        if not isinstance(token, str):
            got = type(token).__name__
        elif len(token.encode()) > MAX_TOKEN_BYTES:
            got = f"{len(token.encode())} bytes"
        else:
            got = None
        if got is not None:
            raise LocalProtocolError(
                f"Expected {_where(Hello, 'token')} to be a str of at most "
                f"{MAX_TOKEN_BYTES} bytes, got {got}"
            )
        if self.device is not None:
            _str(Hello, "device", self.device, 1, MAX_DEVICE_CHARS)
        if self.client is not None:
            _str(Hello, "client", self.client, 0, MAX_SOFTWARE_CHARS)

    def welcome(
        self,
        *,
        session: str,
        user: str,
        name: str,
        device: str,
        heartbeat_ms: int,
        timeout_ms: int,
        server: str,
        limits: Mapping[str, int],
        resumed: bool = False,
    ) -> Welcome:
        """Build the ``welcome`` answering this hello (see :class:`Welcome`).

        Raises:
            LocalProtocolError: a field is invalid.
        """
        return Welcome(
            ref=self.ref,
            session=session,
            user=user,
            name=name,
            device=device,
            heartbeat_ms=heartbeat_ms,
            timeout_ms=timeout_ms,
            server=server,
            limits=limits,
            resumed=resumed,
        )


@_server_frame
@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(ClientEvent, ServerFrame):
    """``ping``: liveness probe, either direction; answered by ``pong``.

    Attributes:
        n: opaque int echoed by the ``pong``. Optional from clients; always set
            by the server (``ServerConnection.send`` refuses a server ping without it).
    """

    TYPE: ClassVar[str] = "ping"

    n: int | None = None

    def __post_init__(self) -> None:
        if self.n is not None:
            _int(Ping, "n", self.n, _MIN_MSGPACK_INT, _MAX_MSGPACK_INT)

    def response(self) -> Pong:
        """Build the ``pong`` answering this ping (``n`` echoed; 0 when absent)."""
        return Pong(n=0 if self.n is None else self.n)


@_server_frame
@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(ClientEvent, ServerFrame):
    """``pong``: the answer to a ``ping``, either direction.

    Attributes:
        n: the ``n`` of the ping answered (0 for a client ping that had none).
    """

    TYPE: ClassVar[str] = "pong"

    n: int

    def __post_init__(self) -> None:
        _int(Pong, "n", self.n, _MIN_MSGPACK_INT, _MAX_MSGPACK_INT)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceSubscribe(ClientEvent, _ReplyRequest):
    """``presence.subscribe``: get a snapshot, then ``presence`` pushes on change.

    Attributes:
        ref: request ref.
        users: 1..100 user ids (an array on the wire, a tuple here).
    """

    TYPE: ClassVar[str] = "presence.subscribe"

    ref: int
    users: tuple[str, ...]

    def __post_init__(self) -> None:
        _ref(PresenceSubscribe, self.ref)
        _set(self, "users", _users(PresenceSubscribe, self.users))

    def reply(self, data: Mapping[str, Any] | None = None) -> Reply:
        """Build the ``reply`` carrying the current presence of the users.

        Args:
            data: ``{"users": [snapshot, …]}`` where each snapshot is a
                :class:`Presence` or its snapshot map (validated and normalized
                to the map); None means no users.

        Returns:
            ``reply`` with ``data = {"users": [snapshot map, …]}``.

        Raises:
            LocalProtocolError: ``data`` has no ``users`` array or a snapshot is invalid.
        """
        data = {"users": []} if data is None else data
        users = data.get("users") if isinstance(data, Mapping) else None
        if not isinstance(users, list | tuple):
            raise LocalProtocolError(
                f"Expected presence.subscribe reply data to have a 'users' array, "
                f"got {_brief(data)}"
            )
        snapshots = [
            (p if isinstance(p, Presence) else Presence.from_snapshot(p)).snapshot() for p in users
        ]
        return Reply(ref=self.ref, data={**data, "users": snapshots})


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceUnsubscribe(ClientEvent, _ReplyRequest):
    """``presence.unsubscribe``: stop ``presence`` pushes for these users.

    Attributes:
        ref: request ref.
        users: 1..100 user ids.
    """

    TYPE: ClassVar[str] = "presence.unsubscribe"

    ref: int
    users: tuple[str, ...]

    def __post_init__(self) -> None:
        _ref(PresenceUnsubscribe, self.ref)
        _set(self, "users", _users(PresenceUnsubscribe, self.users))


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceSet(ClientEvent, _ReplyRequest):
    """``presence.set``: this device is active or idle.

    A user is ``away`` when every one of their devices reported ``idle``.

    Attributes:
        ref: request ref, or None for a fire-and-forget update (no answer).
        status: :class:`DeviceStatus` (a plain str is accepted and converted).
    """

    TYPE: ClassVar[str] = "presence.set"

    ref: int | None = None
    status: DeviceStatus

    def __post_init__(self) -> None:
        if self.ref is not None:
            _ref(PresenceSet, self.ref)
        _set(self, "status", _enum(PresenceSet, "status", self.status, DeviceStatus))


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(ClientEvent):
    """``bye``: the client leaves deliberately (sign-out).

    The server closes with 1000 and counts this device out at once, without the
    offline grace period.
    """

    TYPE: ClassVar[str] = "bye"


# Rooms and messages: requests.


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomCreate(ClientEvent, _Request):
    """``room.create``: create a public or private room owned by the caller.

    Attributes:
        ref: request ref.
        name: display name, 1..128 chars.
        kind: ``RoomKind.PUBLIC`` or ``RoomKind.PRIVATE`` (a plain str is accepted).
        members: 0..100 user ids to add besides the caller (an array on the
            wire, a tuple here; repeats and the caller's own id are harmless).
    """

    TYPE: ClassVar[str] = "room.create"

    ref: int
    name: str
    kind: RoomKind
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _ref(RoomCreate, self.ref)
        _str(RoomCreate, "name", self.name, 1, MAX_NAME_CHARS)
        kind = _enum(RoomCreate, "kind", self.kind, RoomKind, (RoomKind.PUBLIC, RoomKind.PRIVATE))
        _set(self, "kind", kind)
        _set(self, "members", _ids(RoomCreate, "members", self.members, 0, MAX_CREATE_MEMBERS))

    def reply(self, *, room: RoomInfo | Mapping[str, Any]) -> Reply:
        """Build the ``reply`` ``{"room": ROOM}`` with the created room.

        Raises:
            LocalProtocolError: ``room`` is invalid or not of the requested kind.
        """
        info = _shape("'room.create' reply", "room", room, RoomInfo)
        if info.kind is not self.kind:
            raise LocalProtocolError(
                f"Expected 'room.create' reply field 'room' to be a {self.kind} room, "
                f"got {_brief(info)}"
            )
        return Reply(ref=self.ref, data={"room": info.to_wire()})


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomJoin(ClientEvent, _Request):
    """``room.join``: become a member of a public room.

    Attributes:
        ref: request ref.
        room: the room id.
    """

    TYPE: ClassVar[str] = "room.join"

    ref: int
    room: str

    def __post_init__(self) -> None:
        _ref(RoomJoin, self.ref)
        _room_id(RoomJoin, self.room)

    def reply(self, *, room: RoomInfo | Mapping[str, Any]) -> Reply:
        """Build the ``reply`` ``{"room": ROOM}`` with the joined room.

        Raises:
            LocalProtocolError: ``room`` is invalid or is not the requested room.
        """
        return Reply(ref=self.ref, data={"room": _same_room("'room.join' reply", self.room, room)})


def _same_room(owner: str, room_id: str, room: RoomInfo | Mapping[str, Any]) -> dict[str, Any]:
    """The map of ``room``, checked to be room ``room_id``."""
    info = _shape(owner, "room", room, RoomInfo)
    if info.id != room_id:
        raise LocalProtocolError(
            f"Expected {_where(owner, 'room')} to be room {room_id!r}, got {info.id!r}"
        )
    return info.to_wire()


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomLeave(ClientEvent, _ReplyRequest):
    """``room.leave``: stop being a member of a room; answered by ``reply`` ``{}``.

    Attributes:
        ref: request ref.
        room: the room id.
    """

    TYPE: ClassVar[str] = "room.leave"

    ref: int
    room: str

    def __post_init__(self) -> None:
        _ref(RoomLeave, self.ref)
        _room_id(RoomLeave, self.room)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomInvite(ClientEvent, _ReplyRequest):
    """``room.invite``: the owner adds a user to a room; answered by ``reply`` ``{}``.

    Attributes:
        ref: request ref.
        room: the room id.
        user: the user to add.
    """

    TYPE: ClassVar[str] = "room.invite"

    ref: int
    room: str
    user: str

    def __post_init__(self) -> None:
        _ref(RoomInvite, self.ref)
        _room_id(RoomInvite, self.room)
        _user_id(RoomInvite, self.user)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomRemove(ClientEvent, _ReplyRequest):
    """``room.remove``: the owner removes another member; answered by ``reply`` ``{}``.

    Attributes:
        ref: request ref.
        room: the room id.
        user: the member to remove (not the caller: that is ``room.leave``).
    """

    TYPE: ClassVar[str] = "room.remove"

    ref: int
    room: str
    user: str

    def __post_init__(self) -> None:
        _ref(RoomRemove, self.ref)
        _room_id(RoomRemove, self.room)
        _user_id(RoomRemove, self.user)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomList(ClientEvent, _Request):
    """``room.list``: the rooms the caller is a member of.

    Attributes:
        ref: request ref.
    """

    TYPE: ClassVar[str] = "room.list"

    ref: int

    def __post_init__(self) -> None:
        _ref(RoomList, self.ref)

    def reply(self, *, rooms: Iterable[RoomSummaryInfo | Mapping[str, Any]]) -> Reply:
        """Build the ``reply`` ``{"rooms": [ROOM_SUMMARY, ...]}``.

        Raises:
            LocalProtocolError: a summary is invalid.
        """
        owner = "'room.list' reply"
        items = _array(owner, "rooms", rooms)
        maps = [_shape(owner, "rooms", item, RoomSummaryInfo).to_wire() for item in items]
        return Reply(ref=self.ref, data={"rooms": maps})


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomMembers(ClientEvent, _Request):
    """``room.members``: the members of a room and their receipt positions.

    Attributes:
        ref: request ref.
        room: the room id.
    """

    TYPE: ClassVar[str] = "room.members"

    ref: int
    room: str

    def __post_init__(self) -> None:
        _ref(RoomMembers, self.ref)
        _room_id(RoomMembers, self.room)

    def reply(self, *, members: Iterable[MemberInfo | Mapping[str, Any]]) -> Reply:
        """Build the ``reply`` ``{"members": [MEMBER, ...]}``.

        Raises:
            LocalProtocolError: a member entry is invalid.
        """
        owner = "'room.members' reply"
        items = _array(owner, "members", members)
        maps = [_shape(owner, "members", item, MemberInfo).to_wire() for item in items]
        return Reply(ref=self.ref, data={"members": maps})


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class DmOpen(ClientEvent, _Request):
    """``dm.open``: the direct room of the caller and ``user``, created on first use.

    Attributes:
        ref: request ref.
        user: the other user (the caller's own id gives a room with one member).
    """

    TYPE: ClassVar[str] = "dm.open"

    ref: int
    user: str

    def __post_init__(self) -> None:
        _ref(DmOpen, self.ref)
        _user_id(DmOpen, self.user)

    def reply(self, *, room: RoomInfo | Mapping[str, Any]) -> Reply:
        """Build the ``reply`` ``{"room": ROOM}`` with the direct room.

        Raises:
            LocalProtocolError: ``room`` is invalid or not a direct room.
        """
        info = _shape("'dm.open' reply", "room", room, RoomInfo)
        if info.kind is not RoomKind.DIRECT:
            raise LocalProtocolError(
                f"Expected 'dm.open' reply field 'room' to be a direct room, got {_brief(info)}"
            )
        return Reply(ref=self.ref, data={"room": info.to_wire()})


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class MsgSend(ClientEvent, _Request):
    """``msg.send``: post a message to a room.

    A client that got no answer sends the same ``cid`` again: the server stores
    a message once per (room, sender, cid) and answers the retry with the
    original seq and time, ``dup`` true.

    Attributes:
        ref: request ref.
        room: the room id.
        cid: client-generated message id, 1..64 chars, unique per sender and room.
        body: any msgpack value but nil (see :data:`MAX_BODY_DEPTH`); its
            encoded size is bounded by ``Limits.max_body_bytes``, which the
            codec checks (error 106) because it needs the encoding.
    """

    TYPE: ClassVar[str] = "msg.send"

    ref: int
    room: str
    cid: str
    body: Any

    def __post_init__(self) -> None:
        _ref(MsgSend, self.ref)
        _room_id(MsgSend, self.room)
        _str(MsgSend, "cid", self.cid, 1, MAX_CID_CHARS)
        _body(MsgSend, self.body)

    def reply(self, *, seq: int, ts: int, dup: bool) -> Reply:
        """Build the ``reply`` ``{"seq", "ts", "dup"}``.

        Args:
            seq: the message's sequence number in the room (≥ 1).
            ts: its time, ms since the Unix epoch.
            dup: True when this cid was stored before (seq and ts are the original's).

        Raises:
            LocalProtocolError: a value is invalid.
        """
        owner = "'msg.send' reply"
        data = {
            "seq": _seq(owner, "seq", seq),
            "ts": _time(owner, "ts", ts),
            "dup": _bool(owner, "dup", dup),
        }
        return Reply(ref=self.ref, data=data)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class MsgEdit(ClientEvent, _Request):
    """``msg.edit``: replace the body of one's own message.

    Attributes:
        ref: request ref.
        room: the room id.
        seq: the message's sequence number.
        body: the new body (same rules as ``msg.send``).
    """

    TYPE: ClassVar[str] = "msg.edit"

    ref: int
    room: str
    seq: int
    body: Any

    def __post_init__(self) -> None:
        _ref(MsgEdit, self.ref)
        _room_id(MsgEdit, self.room)
        _seq(MsgEdit, "seq", self.seq)
        _body(MsgEdit, self.body)

    def reply(self, *, edited_at: int) -> Reply:
        """Build the ``reply`` ``{"edited_at"}`` (ms since the Unix epoch).

        Raises:
            LocalProtocolError: ``edited_at`` is invalid.
        """
        return Reply(
            ref=self.ref, data={"edited_at": _time("'msg.edit' reply", "edited_at", edited_at)}
        )


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class MsgDelete(ClientEvent, _ReplyRequest):
    """``msg.delete``: delete one's own message; answered by ``reply`` ``{}``.

    Attributes:
        ref: request ref.
        room: the room id.
        seq: the message's sequence number.
    """

    TYPE: ClassVar[str] = "msg.delete"

    ref: int
    room: str
    seq: int

    def __post_init__(self) -> None:
        _ref(MsgDelete, self.ref)
        _room_id(MsgDelete, self.room)
        _seq(MsgDelete, "seq", self.seq)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class History(ClientEvent, _Request):
    """``history``: a page of a room's messages, in ascending seq.

    Without a cursor: the latest ``limit`` messages. With ``before``: the
    ``limit`` messages just before it (paging back). With ``after``: the
    ``limit`` messages just after it (catching up). Cursors are exclusive.

    Attributes:
        ref: request ref.
        room: the room id.
        before: a seq (≥ 1), or None.
        after: a position (≥ 0; 0 pages forward from the first message), or None.
            At most one of ``before`` and ``after``.
        limit: 1..500 (default 50).
    """

    TYPE: ClassVar[str] = "history"

    ref: int
    room: str
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT

    def __post_init__(self) -> None:
        _ref(History, self.ref)
        _room_id(History, self.room)
        if self.before is not None:
            _seq(History, "before", self.before)
        if self.after is not None:
            _position(History, "after", self.after)
        if self.before is not None and self.after is not None:
            raise LocalProtocolError(
                "Expected 'history' frame to have at most one of 'before' and 'after', got both"
            )
        _int(History, "limit", self.limit, 1, MAX_HISTORY_LIMIT)

    @property
    def forward(self) -> bool:
        """Whether the page runs forward from ``after`` (else back from ``before`` or the end)."""
        return self.after is not None

    def reply(self, *, messages: Iterable[Message | Mapping[str, Any]], more: bool) -> Reply:
        """Build the ``reply`` ``{"messages": [MESSAGE, ...], "more": bool}``.

        To keep the reply under the frame limit, use ``codec.fit_history_reply``,
        which drops messages from the far end of the page and sets ``more``.

        Args:
            messages: at most ``limit`` messages of this room (tombstones
                included), in ascending seq, inside the requested cursor.
            more: whether messages remain beyond this page in its direction
                (older for a backward page, newer for a forward one).

        Raises:
            LocalProtocolError: a message is invalid, from another room, out of
                order or outside the cursor, or there are more than ``limit``.
        """
        owner = "'history' reply"
        items = _array(owner, "messages", messages)
        if len(items) > self.limit:
            raise LocalProtocolError(
                f"Expected {_where(owner, 'messages')} to hold at most {self.limit} "
                f"messages, got {len(items)}"
            )
        snapshots: list[dict[str, Any]] = []
        previous = self.after if self.after is not None else 0
        for item in items:
            message = item if isinstance(item, Message) else Message.from_snapshot(item)
            if (
                message.room != self.room
                or message.seq <= previous
                or (self.before is not None and message.seq >= self.before)
            ):
                raise LocalProtocolError(
                    f"Expected {_where(owner, 'messages')} to be messages of room "
                    f"{self.room!r} in ascending seq within the cursor, got "
                    f"room {message.room!r} seq {message.seq} after seq {previous}"
                )
            previous = message.seq
            snapshots.append(message.snapshot())
        return Reply(ref=self.ref, data={"messages": snapshots, "more": _bool(owner, "more", more)})


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt(ClientEvent, _ReplyRequest):
    """``receipt``: this device's delivered and/or the user's read position in a room.

    Positions are cumulative: "everything up to this seq". A position lower
    than the stored one changes nothing.

    Attributes:
        ref: request ref, or None for a fire-and-forget receipt (no answer).
        room: the room id.
        delivered: the highest seq this device has received, or None.
        read: the highest seq the user has read, or None. At least one of
            ``delivered`` and ``read`` is set.
    """

    TYPE: ClassVar[str] = "receipt"

    ref: int | None = None
    room: str
    delivered: int | None = None
    read: int | None = None

    def __post_init__(self) -> None:
        if self.ref is not None:
            _ref(Receipt, self.ref)
        _room_id(Receipt, self.room)
        if self.delivered is not None:
            _seq(Receipt, "delivered", self.delivered)
        if self.read is not None:
            _seq(Receipt, "read", self.read)
        if self.delivered is None and self.read is None:
            raise LocalProtocolError(
                "Expected 'receipt' frame to have field 'delivered' or 'read', got neither"
            )


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Typing(ClientEvent):
    """``typing``: the user is (or stopped) typing in a room; no ref, no answer.

    Attributes:
        room: the room id.
        typing: True while typing (resend about every 3 s), False when stopped.
    """

    TYPE: ClassVar[str] = "typing"

    room: str
    typing: bool

    def __post_init__(self) -> None:
        _room_id(Typing, self.room)
        _bool(Typing, "typing", self.typing)


# Calls: requests and client messages.


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallJoin(ClientEvent, _Request):
    """``call.join``: join the call of a room (members only); it starts with its first participant.

    Joining again from the same session (after a reconnect) re-binds the
    participant to this connection (see :class:`CallMedia`).

    Attributes:
        ref: request ref.
        room: the room id.
    """

    TYPE: ClassVar[str] = "call.join"

    ref: int
    room: str

    def __post_init__(self) -> None:
        _ref(CallJoin, self.ref)
        _room_id(CallJoin, self.room)

    def reply(
        self,
        *,
        participant: str,
        media: CallMedia | str,
        participants: Iterable[ParticipantInfo | Mapping[str, Any]],
        speaker: str | None,
        ice_servers: Iterable[Mapping[str, Any]] = (),
    ) -> Reply:
        """Build the ``reply`` ``{call, participant, media, participants, speaker, ice_servers}``.

        ``call`` is the room id; ``participants`` lists everyone in the call,
        the caller included.

        Raises:
            LocalProtocolError: a value is invalid.
        """
        owner = "'call.join' reply"
        items = _array(owner, "participants", participants)
        if len(items) > MAX_CALL_PARTICIPANTS:
            raise LocalProtocolError(
                f"Expected {_where(owner, 'participants')} to hold at most "
                f"{MAX_CALL_PARTICIPANTS} entries, got {len(items)}"
            )
        return Reply(
            ref=self.ref,
            data={
                "call": self.room,
                "participant": _participant_id(owner, participant),
                "media": _enum(owner, "media", media, CallMedia).value,
                "participants": [
                    _shape(owner, "participants", p, ParticipantInfo).to_wire() for p in items
                ],
                "speaker": None if speaker is None else _participant_id(owner, speaker, "speaker"),
                "ice_servers": _ice_servers(_array(owner, "ice_servers", ice_servers)),
            },
        )


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallLeave(ClientEvent, _ReplyRequest):
    """``call.leave``: leave the room's call; answered by ``reply`` ``{}``.

    Attributes:
        ref: request ref.
        room: the room id.
    """

    TYPE: ClassVar[str] = "call.leave"

    ref: int
    room: str

    def __post_init__(self) -> None:
        _ref(CallLeave, self.ref)
        _room_id(CallLeave, self.room)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallPublish(ClientEvent, _Request):
    """``call.publish``: the publisher PeerConnection's offer (first one or a renegotiation).

    Attributes:
        ref: request ref.
        room: the room id.
        sdp: the offer (at most 64 KiB).
    """

    TYPE: ClassVar[str] = "call.publish"

    ref: int
    room: str
    sdp: str = field(repr=False)

    def __post_init__(self) -> None:
        _ref(CallPublish, self.ref)
        _room_id(CallPublish, self.room)
        _sdp(CallPublish, self.sdp)

    def reply(self, *, sdp: str, tracks: Iterable[TrackInfo | Mapping[str, Any]]) -> Reply:
        """Build the ``reply`` ``{sdp: answer, tracks: [TRACK]}``.

        Raises:
            LocalProtocolError: a value is invalid.
        """
        owner = "'call.publish' reply"
        items = _array(owner, "tracks", tracks)
        return Reply(
            ref=self.ref,
            data={
                "sdp": _sdp(owner, sdp),
                "tracks": [_shape(owner, "tracks", t, TrackInfo).to_wire() for t in items],
            },
        )


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallAnswer(ClientEvent, _ReplyRequest):
    """``call.answer``: the answer to the last ``call.offer``; answered by ``reply`` ``{}``.

    Attributes:
        ref: request ref.
        room: the room id.
        sdp: the answer (at most 64 KiB).
    """

    TYPE: ClassVar[str] = "call.answer"

    ref: int
    room: str
    sdp: str = field(repr=False)

    def __post_init__(self) -> None:
        _ref(CallAnswer, self.ref)
        _room_id(CallAnswer, self.room)
        _sdp(CallAnswer, self.sdp)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallIce(ClientEvent):
    """``call.ice``: a trickled ICE candidate of the client; no ref, no answer.

    Attributes:
        room: the room id.
        pc: :class:`CallPeer`: which PeerConnection.
        candidate: the ``candidate:...`` line (at most 1024 chars); absent or
            nil means the end of candidates.
        sdp_mid: the media section's mid, if known (at most 64 chars).
        sdp_mline_index: the media section's index, if known.
    """

    TYPE: ClassVar[str] = "call.ice"

    room: str
    pc: CallPeer
    candidate: str | None = None
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None

    def __post_init__(self) -> None:
        _room_id(CallIce, self.room)
        _set(self, "pc", _enum(CallIce, "pc", self.pc, CallPeer))
        if self.candidate is not None:
            _str(CallIce, "candidate", self.candidate, 0, MAX_CANDIDATE_CHARS)
        if self.sdp_mid is not None:
            _str(CallIce, "sdp_mid", self.sdp_mid, 0, MAX_SDP_MID_CHARS)
        if self.sdp_mline_index is not None:
            _int(CallIce, "sdp_mline_index", self.sdp_mline_index, 0, 1023)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallMute(ClientEvent, _ReplyRequest):
    """``call.mute``: stop (or resume) forwarding this client's audio or video; ``reply`` ``{}``.

    Attributes:
        ref: request ref.
        room: the room id.
        kind: :class:`MediaKind`.
        muted: True to mute, False to unmute.
    """

    TYPE: ClassVar[str] = "call.mute"

    ref: int
    room: str
    kind: MediaKind
    muted: bool

    def __post_init__(self) -> None:
        _ref(CallMute, self.ref)
        _room_id(CallMute, self.room)
        _set(self, "kind", _enum(CallMute, "kind", self.kind, MediaKind))
        _bool(CallMute, "muted", self.muted)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallQuality(ClientEvent):
    """``call.quality``: the size at which this client shows a track; no ref, no answer.

    Attributes:
        room: the room id.
        track: the track id.
        width: displayed width in pixels (0..16384; 0: not shown).
        height: displayed height in pixels (0..16384).
    """

    TYPE: ClassVar[str] = "call.quality"

    room: str
    track: str
    width: int
    height: int

    def __post_init__(self) -> None:
        _room_id(CallQuality, self.room)
        _track_id(CallQuality, self.track)
        _int(CallQuality, "width", self.width, 0, MAX_VIDEO_SIDE)
        _int(CallQuality, "height", self.height, 0, MAX_VIDEO_SIDE)


@_client_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallRestart(ClientEvent, _ReplyRequest):
    """``call.restart``: this client's media transports failed; ``reply`` ``{}``.

    The server drops both PeerConnections; the client publishes afresh and
    gets a new ``call.offer``.

    Attributes:
        ref: request ref.
        room: the room id.
    """

    TYPE: ClassVar[str] = "call.restart"

    ref: int
    room: str

    def __post_init__(self) -> None:
        _ref(CallRestart, self.ref)
        _room_id(CallRestart, self.room)


# --------------------------------------------------------------------------
# Server → client frames.


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(ServerFrame):
    """``welcome``: answers ``hello``; the connection is open after it.

    Attributes:
        ref: the hello's ref.
        session: server-chosen id of this connection (1..128 chars).
        user: the authenticated user id (1..128 chars).
        name: the user's display name (0..128 chars).
        device: the device id in use (the client's, or one the server made).
        heartbeat_ms: the server pings about this often (milliseconds, ≥ 1).
        timeout_ms: silence from the client longer than this closes with 3002.
        server: server software version (1..64 chars).
        limits: at least ``max_frame_bytes`` and ``max_frames_per_s`` (ints ≥ 0).
        resumed: True when the hello's ``session`` was found and its state
            (presence subscriptions) restored; False for a fresh session.
    """

    TYPE: ClassVar[str] = "welcome"

    ref: int
    session: str
    user: str
    name: str
    device: str
    heartbeat_ms: int
    timeout_ms: int
    server: str
    limits: Mapping[str, int]
    resumed: bool = False

    def __post_init__(self) -> None:
        _ref(Welcome, self.ref)
        _bool(Welcome, "resumed", self.resumed)
        _str(Welcome, "session", self.session, 1, MAX_ID_CHARS)
        _str(Welcome, "user", self.user, 1, MAX_ID_CHARS)
        _str(Welcome, "name", self.name, 0, MAX_NAME_CHARS)
        _str(Welcome, "device", self.device, 1, MAX_DEVICE_CHARS)
        _int(Welcome, "heartbeat_ms", self.heartbeat_ms, 1, _MAX_INT32)
        _int(Welcome, "timeout_ms", self.timeout_ms, 1, _MAX_INT32)
        _str(Welcome, "server", self.server, 1, MAX_SOFTWARE_CHARS)
        limits = self.limits
        if not (
            isinstance(limits, Mapping)
            and all(isinstance(k, str) and _is_int(v) and v >= 0 for k, v in limits.items())
            and all(k in limits for k in _REQUIRED_LIMITS)
        ):
            raise LocalProtocolError(
                f"Expected {_where(Welcome, 'limits')} to be a map of str to ints >= 0 "
                f"with keys {', '.join(_REQUIRED_LIMITS)}, got {_brief(limits)}"
            )
        _set(self, "limits", dict(limits))

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map (see :meth:`Frame.to_wire`)."""
        wire = Frame.to_wire(self)
        wire["limits"] = dict(self.limits)
        if not self.resumed:
            del wire["resumed"]  # absent means false (and keeps v1.0 welcomes unchanged)
        return wire


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Reply(ServerFrame):
    """``reply``: the success answer to a request other than ``hello``.

    Events with a ``data`` map are not hashable (the map is a dict).

    Attributes:
        ref: the request's ref.
        data: str-keyed map whose shape each request type documents; values must
            be msgpack-encodable (checked when encoding).
    """

    TYPE: ClassVar[str] = "reply"

    ref: int
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        _ref(Reply, self.ref)
        if not isinstance(self.data, Mapping) or not all(isinstance(k, str) for k in self.data):
            raise LocalProtocolError(
                f"Expected {_where(Reply, 'data')} to be a map with str keys, "
                f"got {_brief(self.data)}"
            )

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map (see :meth:`Frame.to_wire`)."""
        return {"t": self.TYPE, "ref": self.ref, "data": dict(self.data)}


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Error(ServerFrame):
    """``error``: a request failed, or a frame was refused; the connection stays open.

    Attributes:
        ref: the ref of the request it answers; None when not tied to a request.
        code: an :class:`ErrorCode` (0-399) or a plugin code (400-65535); normalized
            to the ``ErrorCode`` member when there is one.
        reason: human-readable text, at most 512 bytes of UTF-8.
        temporary: whether the same request may succeed later.
    """

    TYPE: ClassVar[str] = "error"

    ref: int | None = None
    code: int
    reason: str
    temporary: bool

    def __post_init__(self) -> None:
        if self.ref is not None:
            _ref(Error, self.ref)
        code = _int(Error, "code", self.code, 0, MAX_ERROR_CODE)
        known = _member(ErrorCode, code)
        if known is not None:
            _set(self, "code", known)
        if not isinstance(self.reason, str) or (
            len(self.reason.encode("utf-8")) > MAX_ERROR_REASON_BYTES
        ):
            raise LocalProtocolError(
                f"Expected {_where(Error, 'reason')} to be a str of at most "
                f"{MAX_ERROR_REASON_BYTES} bytes, got {_brief(self.reason)}"
            )
        if not isinstance(self.temporary, bool):
            raise LocalProtocolError(
                f"Expected {_where(Error, 'temporary')} to be a bool, got {_brief(self.temporary)}"
            )

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map (see :meth:`Frame.to_wire`)."""
        wire = Frame.to_wire(self)
        wire["code"] = int(self.code)
        return wire

    @classmethod
    def for_code(
        cls,
        code: ErrorCode | int,
        reason: str,
        *,
        ref: int | None = None,
        temporary: bool | None = None,
    ) -> Error:
        """Build an error whose ``temporary`` flag follows from its code.

        Args:
            code: an :class:`ErrorCode` or a plugin code.
            reason: text; cut to :data:`~.codes.MAX_ERROR_REASON_BYTES` if longer.
            ref: the request answered, or None.
            temporary: overrides the flag (default: ``ErrorCode.temporary``,
                False for codes outside ``ErrorCode``).

        Returns:
            The error frame.

        Raises:
            LocalProtocolError: code or ref out of range.
        """
        if temporary is None:
            known = _member(ErrorCode, code)
            temporary = known.temporary if known is not None else False
        return cls(
            ref=ref,
            code=code,
            reason=fit_reason(reason, MAX_ERROR_REASON_BYTES)
            if isinstance(reason, str)
            else reason,
            temporary=temporary,
        )


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Presence(ServerFrame):
    """``presence``: a subscribed user's presence changed.

    The same map without ``"t"`` is the snapshot inside a
    ``presence.subscribe`` reply (see :meth:`snapshot`).

    Attributes:
        user: the user id.
        status: :class:`PresenceStatus` (a plain str is accepted and converted).
        devices: number of the user's devices with a live connection (≥ 0).
        last_seen: when the user was last connected, in ms since the Unix epoch;
            None if never seen. Always present on the wire (nil when None).
    """

    TYPE: ClassVar[str] = "presence"

    user: str
    status: PresenceStatus
    devices: int
    last_seen: int | None

    def __post_init__(self) -> None:
        _str(Presence, "user", self.user, 1, MAX_ID_CHARS)
        _set(self, "status", _enum(Presence, "status", self.status, PresenceStatus))
        _int(Presence, "devices", self.devices, 0, _MAX_INT32)
        if self.last_seen is not None:
            _int(Presence, "last_seen", self.last_seen, 0, _MAX_EPOCH_MS)

    def snapshot(self) -> dict[str, Any]:
        """Return the presence snapshot map: this frame's map without ``"t"``."""
        wire = self.to_wire()
        del wire["t"]
        return wire

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any] | SupportsToWire) -> Presence:
        """Build the push from a snapshot map, or from an object that renders one.

        Args:
            snapshot: ``{"user", "status", "devices", "last_seen"}``, or an object
                whose ``to_wire()`` returns that map (e.g. the presence state's
                snapshot type, which this package does not import).

        Returns:
            The validated ``presence`` frame.

        Raises:
            LocalProtocolError: a field is missing or invalid.
        """
        body = snapshot if isinstance(snapshot, Mapping) else snapshot.to_wire()
        return cls.from_wire(body)


# Rooms and messages: pushes.


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Message(ServerFrame):
    """``msg``: a new message in a room the user is a member of.

    The same map without ``"t"`` is the MESSAGE map in a ``history`` reply
    (see :meth:`snapshot`), where ``edited_at`` and ``deleted`` may be set.
    Events with a map or array body are not hashable.

    Attributes:
        room: the room id.
        seq: the message's sequence number in the room (≥ 1).
        cid: the sender's client message id.
        sender: the sender's user id.
        body: the message body (any msgpack value); None, and always sent as
            nil, exactly when the message is deleted.
        ts: when the server stored it, ms since the Unix epoch.
        edited_at: time of the last edit or of the deletion, or None.
        deleted: True for a deleted message (a tombstone keeping its seq).
    """

    TYPE: ClassVar[str] = "msg"

    room: str
    seq: int
    cid: str
    sender: str
    body: Any
    ts: int
    edited_at: int | None = None
    deleted: bool = False

    def __post_init__(self) -> None:
        _room_id(Message, self.room)
        _seq(Message, "seq", self.seq)
        _str(Message, "cid", self.cid, 1, MAX_CID_CHARS)
        _user_id(Message, self.sender, "sender")
        _time(Message, "ts", self.ts)
        if self.edited_at is not None:
            _time(Message, "edited_at", self.edited_at)
        if _bool(Message, "deleted", self.deleted):
            if self.body is not None:
                raise LocalProtocolError(
                    f"Expected {_where(Message, 'body')} to be nil for a deleted message, "
                    f"got {_brief(self.body)}"
                )
        else:
            _body(Message, self.body)

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map (see :meth:`Frame.to_wire`); ``deleted`` only when True.

        Written out rather than generic: a room encodes every message it fans out.
        """
        wire = {
            "t": "msg",
            "room": self.room,
            "seq": self.seq,
            "cid": self.cid,
            "sender": self.sender,
            "body": self.body,
            "ts": self.ts,
        }
        if self.edited_at is not None:
            wire["edited_at"] = self.edited_at
        if self.deleted:
            wire["deleted"] = True
        return wire

    def snapshot(self) -> dict[str, Any]:
        """Return the MESSAGE map (for ``history`` replies): this frame's map without ``"t"``."""
        wire = self.to_wire()
        del wire["t"]
        return wire

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> Message:
        """Build the message from a MESSAGE map.

        Raises:
            LocalProtocolError: a field is missing or invalid.
        """
        if not isinstance(snapshot, Mapping):
            raise LocalProtocolError(f"Expected a message map, got {_brief(snapshot)}")
        return cls.from_wire(snapshot)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEdited(ServerFrame):
    """``msg.edited``: a message's body was replaced.

    Attributes:
        room: the room id.
        seq: the message's sequence number.
        body: the new body.
        edited_at: when, ms since the Unix epoch.
    """

    TYPE: ClassVar[str] = "msg.edited"

    room: str
    seq: int
    body: Any
    edited_at: int

    def __post_init__(self) -> None:
        _room_id(MessageEdited, self.room)
        _seq(MessageEdited, "seq", self.seq)
        _body(MessageEdited, self.body)
        _time(MessageEdited, "edited_at", self.edited_at)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDeleted(ServerFrame):
    """``msg.deleted``: a message was deleted (its seq stays, as a tombstone).

    Attributes:
        room: the room id.
        seq: the message's sequence number.
    """

    TYPE: ClassVar[str] = "msg.deleted"

    room: str
    seq: int

    def __post_init__(self) -> None:
        _room_id(MessageDeleted, self.room)
        _seq(MessageDeleted, "seq", self.seq)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Receipts(ServerFrame):
    """``receipts``: members' delivered/read positions changed (changed entries only).

    Attributes:
        room: the room id.
        users: 1..1000 :class:`ReceiptInfo` (or their maps, converted).
    """

    TYPE: ClassVar[str] = "receipts"

    room: str
    users: tuple[ReceiptInfo, ...]

    def __post_init__(self) -> None:
        _room_id(Receipts, self.room)
        users = _shapes(Receipts, "users", self.users, ReceiptInfo, lo=1, hi=MAX_RECEIPT_USERS)
        _set(self, "users", users)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class TypingUsers(ServerFrame):
    """``typing`` (server → client): who is typing in a room now.

    Attributes:
        room: the room id.
        users: the full current list, 0..100 user ids (empty: nobody).
    """

    TYPE: ClassVar[str] = "typing"

    room: str
    users: tuple[str, ...]

    def __post_init__(self) -> None:
        _room_id(TypingUsers, self.room)
        _set(self, "users", _ids(TypingUsers, "users", self.users, 0, MAX_TYPING_USERS))


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class ReadState(ServerFrame):
    """``read``: the user's read position in a room moved (sent to the user's own devices).

    Attributes:
        room: the room id.
        seq: the user's read position (0: nothing read).
        unread: messages after it sent by others and not deleted.
    """

    TYPE: ClassVar[str] = "read"

    room: str
    seq: int
    unread: int

    def __post_init__(self) -> None:
        _room_id(ReadState, self.room)
        _position(ReadState, "seq", self.seq)
        _int(ReadState, "unread", self.unread, 0, MAX_SEQ)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberEvent(ServerFrame):
    """``member``: a room's membership changed.

    Attributes:
        room: the room id.
        user: the user who joined, left, was invited or removed.
        action: :class:`MemberAction` (a plain str is accepted and converted).
    """

    TYPE: ClassVar[str] = "member"

    room: str
    user: str
    action: MemberAction

    def __post_init__(self) -> None:
        _room_id(MemberEvent, self.room)
        _user_id(MemberEvent, self.user)
        _set(self, "action", _enum(MemberEvent, "action", self.action, MemberAction))


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class RoomAdded(ServerFrame):
    """``room``: the user was added to a room (created, joined, invited, direct room).

    Attributes:
        room: the :class:`RoomInfo` (or its map, converted).
        unread: the user's unread count in it.
    """

    TYPE: ClassVar[str] = "room"

    room: RoomInfo
    unread: int

    def __post_init__(self) -> None:
        _set(self, "room", _shape(RoomAdded, "room", self.room, RoomInfo))
        _int(RoomAdded, "unread", self.unread, 0, MAX_SEQ)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered(ServerFrame):
    """``recovered``: a room named in ``hello.resume`` has replayed what the client missed.

    The room pushes the missed ``msg`` frames first, in sequence order, then
    this frame, then continues live: nothing is skipped or sent twice at the
    seam. When ``complete`` is false the client must page ``history`` for what
    it still lacks; recovery is never silently partial.

    Attributes:
        room: the room id.
        complete: True when every message after the client's position was replayed.
        replayed: how many ``msg`` frames were replayed just before this one.
        head: the room's last sequence number when it answered.
        first: when not complete, the first replayed seq (``history`` with
            ``before=first`` fills the gap); None otherwise.
        code: when the room could not be resumed at all, why (an error code:
            120 not a member, 121 no such room, 108 storage unavailable); None otherwise.
    """

    TYPE: ClassVar[str] = "recovered"

    room: str
    complete: bool
    replayed: int
    head: int
    first: int | None = None
    code: int | None = None

    def __post_init__(self) -> None:
        _room_id(Recovered, self.room)
        _bool(Recovered, "complete", self.complete)
        _int(Recovered, "replayed", self.replayed, 0, MAX_SEQ)
        _position(Recovered, "head", self.head)
        if self.first is not None:
            _seq(Recovered, "first", self.first)
        if self.code is not None:
            _int(Recovered, "code", self.code, 100, 999)


# Calls: pushes.


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallOffer(ServerFrame):
    """``call.offer``: the subscriber PeerConnection's offer; answer with ``call.answer``.

    Attributes:
        room: the room id.
        sdp: the offer (at most 64 KiB).
        mids: media section mid → the track id it carries (active sections only).
    """

    TYPE: ClassVar[str] = "call.offer"

    room: str
    sdp: str = field(repr=False)
    mids: Mapping[str, str]

    def __post_init__(self) -> None:
        _room_id(CallOffer, self.room)
        _sdp(CallOffer, self.sdp)
        mids = self.mids
        if not (
            isinstance(mids, Mapping)
            and len(mids) <= 4 * MAX_CALL_PARTICIPANTS
            and all(
                isinstance(m, str)
                and 0 < len(m) <= MAX_SDP_MID_CHARS
                and isinstance(t, str)
                and 0 < len(t) <= MAX_TRACK_ID_CHARS
                for m, t in mids.items()
            )
        ):
            raise LocalProtocolError(
                f"Expected {_where(CallOffer, 'mids')} to be a map of mids to track ids, "
                f"got {_brief(mids)}"
            )
        _set(self, "mids", dict(mids))

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map (see :meth:`Frame.to_wire`)."""
        return {"t": self.TYPE, "room": self.room, "sdp": self.sdp, "mids": dict(self.mids)}


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallParticipant(ServerFrame):
    """``call.participant``: someone joined or left the call, or changed (mute).

    Attributes:
        room: the room id.
        action: :class:`ParticipantAction`.
        participant: the :class:`ParticipantInfo` (or its map, converted).
    """

    TYPE: ClassVar[str] = "call.participant"

    room: str
    action: ParticipantAction
    participant: ParticipantInfo

    def __post_init__(self) -> None:
        _room_id(CallParticipant, self.room)
        _set(self, "action", _enum(CallParticipant, "action", self.action, ParticipantAction))
        info = _shape(CallParticipant, "participant", self.participant, ParticipantInfo)
        _set(self, "participant", info)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallTrack(ServerFrame):
    """``call.track``: another participant published or stopped a track.

    Attributes:
        room: the room id.
        action: :class:`TrackAction`.
        track: the :class:`TrackInfo` (or its map, converted).
    """

    TYPE: ClassVar[str] = "call.track"

    room: str
    action: TrackAction
    track: TrackInfo

    def __post_init__(self) -> None:
        _room_id(CallTrack, self.room)
        _set(self, "action", _enum(CallTrack, "action", self.action, TrackAction))
        _set(self, "track", _shape(CallTrack, "track", self.track, TrackInfo))


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallSpeaker(ServerFrame):
    """``call.speaker``: the dominant speaker changed.

    Attributes:
        room: the room id.
        participant: the speaker's participant id; None (always sent, as nil)
            when nobody speaks.
    """

    TYPE: ClassVar[str] = "call.speaker"

    room: str
    participant: str | None

    def __post_init__(self) -> None:
        _room_id(CallSpeaker, self.room)
        if self.participant is not None:
            _participant_id(CallSpeaker, self.participant)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallRestarted(ServerFrame):
    """``call.restart`` (server → client): drop both PeerConnections and publish again.

    Sent when the media worker hosting the call restarted (to everyone), or
    when this client did not answer an offer in time. Every track of the call
    is gone; a new ``call.offer`` follows as participants publish again.

    Attributes:
        room: the room id.
        reason: why (for logs), at most 256 chars.
    """

    TYPE: ClassVar[str] = "call.restart"

    room: str
    reason: str

    def __post_init__(self) -> None:
        _room_id(CallRestarted, self.room)
        _str(CallRestarted, "reason", self.reason, 0, MAX_CALL_REASON_CHARS)


@_server_frame
@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded(ServerFrame):
    """``call.ended``: this participant was removed from the call (not a member any more, ...).

    Attributes:
        room: the room id.
        reason: why, at most 256 chars.
    """

    TYPE: ClassVar[str] = "call.ended"

    room: str
    reason: str

    def __post_init__(self) -> None:
        _room_id(CallEnded, self.room)
        _str(CallEnded, "reason", self.reason, 0, MAX_CALL_REASON_CHARS)


# --------------------------------------------------------------------------
# Not a frame: the close the core asks the adapter to perform.


@dataclass(frozen=True, slots=True)
class Disconnect(ServerEvent):
    """Close the WebSocket with ``code`` and ``reason``; not a msgpack frame.

    ``ServerConnection.send(Disconnect(...))`` returns ``b""`` and moves the
    connection to CLOSED; the adapter then sends the WebSocket close frame.

    Attributes:
        code: a :class:`DisconnectCode` or an application code (4000-4999);
            normalized to the ``DisconnectCode`` member when there is one.
        reason: at most 123 bytes of UTF-8 (use :func:`~.codes.fit_reason`).
    """

    code: int
    reason: str

    def __post_init__(self) -> None:
        if not _is_int(self.code) or not is_valid_close_code(self.code):
            raise LocalProtocolError(
                "Expected Disconnect code to be 1000, 1002, 1003, 1007-1009, 1011 "
                f"or 3000..4999, got {_brief(self.code)}"
            )
        known = _member(DisconnectCode, self.code)
        if known is not None:
            _set(self, "code", known)
        if not isinstance(self.reason, str) or (
            len(self.reason.encode("utf-8")) > MAX_CLOSE_REASON_BYTES
        ):
            raise LocalProtocolError(
                f"Expected Disconnect reason to be a str of at most "
                f"{MAX_CLOSE_REASON_BYTES} bytes of UTF-8, got {_brief(self.reason)}"
            )

    @property
    def reconnect(self) -> bool:
        """Whether the client is expected to reconnect after this close."""
        return reconnect_after(self.code)
