"""The connection lifecycle as data: what each side may send in each state.

::

    AWAITING_HELLO --client hello--> HELLO_RECEIVED --server welcome--> OPEN
          ^                               |                              |
          +------server error to hello----+                         client bye
                                                                         v
    any state --server close (Disconnect) or fatal client frame--> CLOSED <-- CLOSING

Two tables drive ``ServerConnection``, and ``docs/_tools/make_state_diagrams.py``
renders them into ``docs/protocol.md`` (a test keeps the two in sync):

* :data:`CLIENT_RULES`: state → client frame type → what happens: :class:`Accept`
  (yield the event, move to ``next_state``), :class:`Close` (fatal: close with the
  code), :class:`Refuse` (recoverable: answer an ``error`` with the code, stay) or
  :data:`IGNORE` (drop it; the connection is going away). The key :data:`OTHER`
  stands for every known type the row does not list, :data:`UNKNOWN` for types
  this server does not know.
* :data:`SERVER_RULES`: state → server event key → next state. A key missing
  from the row means the server may not send that event then: sending it is a
  bug and raises ``LocalProtocolError``. Keys are frame types, plus
  :data:`CLOSE` for ``Disconnect`` and :data:`HELLO_ERROR` for an ``error``
  that answers the pending ``hello`` (the client may then try ``hello`` again).

The special cases that are not in the tables live in ``connection.py``: refs
in flight (each request is answered exactly once, a ref may not be reused while
in flight), a fatal client frame moves straight to CLOSED, frames received
while CLOSING or CLOSED are ignored, and ``Disconnect`` in CLOSED is a no-op, so
that close paths can be idempotent.

Adding a client frame type: one entry in the OPEN row (other rows reject it
through :data:`OTHER`). Adding a server push: one entry in ``_OPEN_SERVER``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from .codes import DisconnectCode, ErrorCode
from .errors import LocalProtocolError
from .events import CLIENT_EVENT_TYPES

__all__ = [
    "CLIENT_RULES",
    "CLOSE",
    "HELLO_ERROR",
    "IGNORE",
    "OTHER",
    "SERVER_RULES",
    "UNKNOWN",
    "Accept",
    "ClientRule",
    "Close",
    "ConnectionState",
    "Ignore",
    "Refuse",
    "client_rule",
    "server_transition",
]


class ConnectionState(Enum):
    """Where a connection is in its lifecycle."""

    #: WebSocket open; waiting for the client's ``hello``.
    AWAITING_HELLO = "AWAITING_HELLO"
    #: ``hello`` received; the server is checking it (answer: ``welcome`` or ``error``).
    HELLO_RECEIVED = "HELLO_RECEIVED"
    #: ``welcome`` sent; the connection is usable.
    OPEN = "OPEN"
    #: The client said ``bye``; the server closes with 1000 next.
    CLOSING = "CLOSING"
    #: A close was decided; nothing more is read, only ``Disconnect`` may be sent.
    CLOSED = "CLOSED"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Accept:
    """The client frame is valid here: yield it and move to ``next_state``."""

    next_state: ConnectionState


@dataclass(frozen=True, slots=True)
class Close:
    """The client frame is fatal here: close the connection with ``code``."""

    code: DisconnectCode


@dataclass(frozen=True, slots=True)
class Refuse:
    """The client frame is refused here: answer ``error`` with ``code``; stay."""

    code: ErrorCode


@dataclass(frozen=True, slots=True)
class Ignore:
    """The client frame is dropped: the connection is closing or closed."""


#: The one :class:`Ignore` instance.
IGNORE = Ignore()

ClientRule = Accept | Close | Refuse | Ignore

#: Row key: any known client frame type that the row does not list.
OTHER = "(other)"
#: Row key: a frame type this server does not know.
UNKNOWN = "(unknown)"
#: Server key of ``Disconnect``.
CLOSE = "(close)"
#: Server key of an ``error`` whose ref is the pending ``hello``'s.
HELLO_ERROR = "error to hello"

_S = ConnectionState

CLIENT_RULES: Mapping[ConnectionState, Mapping[str, ClientRule]] = MappingProxyType(
    {
        _S.AWAITING_HELLO: MappingProxyType(
            {
                "hello": Accept(_S.HELLO_RECEIVED),
                "ping": Accept(_S.AWAITING_HELLO),
                "pong": Accept(_S.AWAITING_HELLO),
                OTHER: Close(DisconnectCode.NOT_AUTHENTICATED),
                UNKNOWN: Close(DisconnectCode.NOT_AUTHENTICATED),
            }
        ),
        _S.HELLO_RECEIVED: MappingProxyType(
            {
                "hello": Close(DisconnectCode.PROTOCOL_VIOLATION),
                "ping": Accept(_S.HELLO_RECEIVED),
                "pong": Accept(_S.HELLO_RECEIVED),
                OTHER: Close(DisconnectCode.NOT_AUTHENTICATED),
                UNKNOWN: Close(DisconnectCode.NOT_AUTHENTICATED),
            }
        ),
        _S.OPEN: MappingProxyType(
            {
                "hello": Refuse(ErrorCode.ALREADY_AUTHENTICATED),
                "ping": Accept(_S.OPEN),
                "pong": Accept(_S.OPEN),
                "presence.subscribe": Accept(_S.OPEN),
                "presence.unsubscribe": Accept(_S.OPEN),
                "presence.set": Accept(_S.OPEN),
                "bye": Accept(_S.CLOSING),
                # Rooms and messages: requests only after welcome, like presence.
                "room.create": Accept(_S.OPEN),
                "room.join": Accept(_S.OPEN),
                "room.leave": Accept(_S.OPEN),
                "room.invite": Accept(_S.OPEN),
                "room.remove": Accept(_S.OPEN),
                "room.list": Accept(_S.OPEN),
                "room.members": Accept(_S.OPEN),
                "dm.open": Accept(_S.OPEN),
                "msg.send": Accept(_S.OPEN),
                "msg.edit": Accept(_S.OPEN),
                "msg.delete": Accept(_S.OPEN),
                "history": Accept(_S.OPEN),
                "receipt": Accept(_S.OPEN),
                "typing": Accept(_S.OPEN),
                # Calls.
                "call.join": Accept(_S.OPEN),
                "call.leave": Accept(_S.OPEN),
                "call.publish": Accept(_S.OPEN),
                "call.answer": Accept(_S.OPEN),
                "call.ice": Accept(_S.OPEN),
                "call.mute": Accept(_S.OPEN),
                "call.quality": Accept(_S.OPEN),
                "call.restart": Accept(_S.OPEN),
                UNKNOWN: Refuse(ErrorCode.UNKNOWN_TYPE),
            }
        ),
        _S.CLOSING: MappingProxyType({OTHER: IGNORE, UNKNOWN: IGNORE}),
        _S.CLOSED: MappingProxyType({OTHER: IGNORE, UNKNOWN: IGNORE}),
    }
)

# What the server may send on an open connection; after the client's bye the
# same frames stay legal (answers to requests still in flight, pushes already
# queued) until the server closes.
_OPEN_SERVER = (
    "reply",
    "error",
    "ping",
    "pong",
    "presence",
    # Rooms and messages.
    "msg",
    "msg.edited",
    "msg.deleted",
    "receipts",
    "typing",
    "read",
    "recovered",
    "member",
    "room",
    # Calls.
    "call.offer",
    "call.participant",
    "call.track",
    "call.speaker",
    "call.restart",
    "call.ended",
)

SERVER_RULES: Mapping[ConnectionState, Mapping[str, ConnectionState]] = MappingProxyType(
    {
        _S.AWAITING_HELLO: MappingProxyType(
            {
                "error": _S.AWAITING_HELLO,
                "ping": _S.AWAITING_HELLO,
                "pong": _S.AWAITING_HELLO,
                CLOSE: _S.CLOSED,
            }
        ),
        _S.HELLO_RECEIVED: MappingProxyType(
            {
                "welcome": _S.OPEN,
                HELLO_ERROR: _S.AWAITING_HELLO,
                "error": _S.HELLO_RECEIVED,
                "ping": _S.HELLO_RECEIVED,
                "pong": _S.HELLO_RECEIVED,
                CLOSE: _S.CLOSED,
            }
        ),
        _S.OPEN: MappingProxyType({**dict.fromkeys(_OPEN_SERVER, _S.OPEN), CLOSE: _S.CLOSED}),
        _S.CLOSING: MappingProxyType({**dict.fromkeys(_OPEN_SERVER, _S.CLOSING), CLOSE: _S.CLOSED}),
        _S.CLOSED: MappingProxyType({CLOSE: _S.CLOSED}),
    }
)


def client_rule(state: ConnectionState, frame_type: str) -> ClientRule:
    """Look up what a client frame of ``frame_type`` does in ``state``.

    Args:
        state: the connection's state.
        frame_type: the frame's ``"t"`` (known or not).

    Returns:
        The rule from :data:`CLIENT_RULES`.

    Raises:
        LocalProtocolError: the table has no rule for a known type (a frame type
            was added without its table entry).
    """
    row = CLIENT_RULES[state]
    rule = row.get(frame_type)
    if rule is None:
        rule = row.get(OTHER if frame_type in CLIENT_EVENT_TYPES else UNKNOWN)
    if rule is None:
        raise LocalProtocolError(f"No rule for client frame {frame_type!r} in state {state}")
    return rule


def server_transition(state: ConnectionState, key: str) -> ConnectionState | None:
    """Return the state after the server sends an event with ``key``, or None if illegal."""
    return SERVER_RULES[state].get(key)
