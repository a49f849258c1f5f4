"""Numeric code spaces of the tether protocol: close codes and error codes.

Two spaces, both documented for client authors in ``docs/protocol.md``:

* :class:`DisconnectCode`: the WebSocket close code the server ends a connection
  with. The ranges follow centrifuge's convention, so that a client can decide
  whether to reconnect from the number alone, even for a code it does not know::

      1000-2999  RFC 6455 codes (only the ones listed in DisconnectCode are used)
      3000-3499  server, reconnect   (transient: back off, then reconnect)
      3500-3999  server, terminal    (do not reconnect automatically)
      4000-4499  application/plugin, reconnect
      4500-4999  application/plugin, terminal

* :class:`ErrorCode`: the ``code`` of an ``error`` frame, which answers one
  request (or reports a problem with one frame) while the connection stays open::

      0-99       reserved
      100-119    core protocol errors (ErrorCode)
      120-199    rooms and messages (ErrorCode, from 120 up; calls use 130-139)
      200-299    reserved
      300-399    reserved for future core use
      400-65535  plugins (each plugin documents its own)

Close reasons travel in a WebSocket close frame, whose reason is limited to 123
bytes of UTF-8 (RFC 6455 §5.5: control frame payloads are at most 125 bytes,
two of which hold the code); :func:`fit_reason` cuts a text to fit.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "MAX_ERROR_CODE",
    "MAX_ERROR_REASON_BYTES",
    "DisconnectCode",
    "ErrorCode",
    "fit_reason",
    "is_valid_close_code",
    "reconnect_after",
]

#: RFC 6455 §5.5: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON_BYTES = 123
#: Error reasons travel in a normal frame; the bound keeps them display-sized.
MAX_ERROR_REASON_BYTES = 512
#: Error codes are carried as msgpack ints; the bound keeps them in a uint16.
MAX_ERROR_CODE = 0xFFFF

# RFC 6455 §7.4.1 codes an endpoint may put in a close frame. 1004, 1005, 1006
# and 1015 are reserved (never sent); 1001 "going away" is deliberately not used
# by tether: a restarting server says SHUTDOWN (3000), which carries the
# "reconnect with backoff" meaning that 1001 leaves to interpretation.
_RFC_SENDABLE = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1011})
# RFC codes after which reconnecting makes sense: 1006 is what a client sees when
# the connection dropped without a close frame; 1011-1014 are server trouble.
_RFC_RECONNECT = frozenset({1006, 1011, 1012, 1013, 1014})


class DisconnectCode(IntEnum):
    """Why the server closed a connection; the WebSocket close code.

    ``reconnect`` tells a client whether to reconnect (with backoff and jitter)
    or to stop and surface the problem.
    """

    #: The connection ended normally: the client said ``bye``.
    NORMAL = 1000
    #: RFC 6455 protocol error detected by the WebSocket layer.
    WS_PROTOCOL_ERROR = 1002
    #: A text (or otherwise unacceptable) WebSocket message: tether is binary only.
    WS_UNSUPPORTED_DATA = 1003
    #: A WebSocket message over ``max_frame_bytes``, refused by the WebSocket layer.
    WS_MESSAGE_TOO_BIG = 1009
    #: Unexpected condition in the WebSocket layer of the server.
    WS_INTERNAL_ERROR = 1011

    #: The server is restarting or draining; reconnect with backoff and jitter.
    SHUTDOWN = 3000
    #: The client could not keep up with its outbound queue; reconnect and resume.
    SLOW_CONSUMER = 3001
    #: No frame from the client within ``timeout_ms``.
    HEARTBEAT_TIMEOUT = 3002
    #: An internal server error ended the connection.
    INTERNAL_ERROR = 3003
    #: The client sent frames faster than allowed; reconnect after backoff.
    RATE_LIMITED = 3004
    #: No ``hello`` arrived in time after the WebSocket opened.
    HELLO_TIMEOUT = 3005
    #: The token expired; obtain a fresh token, then reconnect.
    TOKEN_EXPIRED = 3006

    #: Not decodable msgpack, not a map, or no str ``t`` key.
    BAD_FRAME = 3500
    #: A frame other than ``hello``/``ping``/``pong`` before ``welcome``.
    NOT_AUTHENTICATED = 3501
    #: The token in ``hello`` was rejected.
    INVALID_TOKEN = 3502
    #: A frame over ``max_frame_bytes``.
    MESSAGE_TOO_LARGE = 3503
    #: An operator kicked this connection.
    KICKED = 3504
    #: The user already has the maximum number of live connections.
    TOO_MANY_CONNECTIONS = 3505
    #: A frame that is illegal in the connection's state (e.g. a second ``hello``).
    PROTOCOL_VIOLATION = 3506
    #: A newer connection resumed this connection's session (the client
    #: reconnected before the server noticed this one was gone); do not reconnect.
    SESSION_RESUMED = 3507

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect (with backoff) after this close."""
        return reconnect_after(self.value)


class ErrorCode(IntEnum):
    """The ``code`` of an ``error`` frame; ``temporary`` errors may be retried."""

    #: A required field is missing or has the wrong type or range.
    BAD_REQUEST = 100
    #: The frame type ``t`` is not known to this server.
    UNKNOWN_TYPE = 101
    #: ``hello`` on a connection that is already open.
    ALREADY_AUTHENTICATED = 102
    #: Too many requests (or too many in flight); retry later.
    RATE_LIMITED = 103
    #: The user may not do this (also: a presence subscription to a user who
    #: shares no room with the subscriber, unless the operator allows any).
    FORBIDDEN = 104
    #: The target does not exist.
    NOT_FOUND = 105
    #: A value is larger than the server accepts.
    TOO_LARGE = 106
    #: The server failed while handling the request; retrying may work.
    INTERNAL = 107
    #: A dependency (e.g. storage) is unavailable; retry later (a ``msg.send``
    #: with the same ``cid``: it is stored at most once).
    UNAVAILABLE = 108
    #: A configured limit (e.g. subscriptions per connection, rooms per user)
    #: would be exceeded.
    LIMIT_EXCEEDED = 109

    # Rooms and messages (120-199).

    #: The user is not a member of the room (cannot post, read, fetch history,
    #: see members or typing, or send receipts there).
    NOT_MEMBER = 120
    #: No room has this id.
    ROOM_NOT_FOUND = 121
    #: Only the room's owner may do this (invite, remove).
    NOT_OWNER = 122
    #: No message has this seq in the room (or it was deleted, for an edit).
    MESSAGE_NOT_FOUND = 123
    #: The message was sent by someone else (edit, delete).
    NOT_AUTHOR = 124
    #: The room has its maximum number of members (join, invite, create).
    #: The per-user limit on rooms is 109 LIMIT_EXCEEDED instead: it is about
    #: the user, not the room.
    ROOM_FULL = 125
    #: ``room.join`` of a room that is not public (private or direct).
    NOT_PUBLIC = 126
    #: A server plugin refused the message (``msg.send``, ``msg.edit``); the
    #: reason says why. Sending it again unchanged is refused again.
    REJECTED = 127

    # Calls (130-139).

    #: A call frame about a call the connection's session is not in.
    NOT_IN_CALL = 130
    #: The SDP (offer or answer) was rejected by the media server: malformed,
    #: or without a codec it forwards (Opus; VP8 or H264).
    BAD_SDP = 131
    #: No media worker can serve the call now (calls disabled, or a worker
    #: restarting); retry later.
    MEDIA_UNAVAILABLE = 132
    #: The call has its maximum number of participants (``call_max_participants``).
    CALL_FULL = 133

    @property
    def temporary(self) -> bool:
        """Whether the same request may succeed if retried later."""
        return self in _TEMPORARY


_TEMPORARY = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.INTERNAL,
        ErrorCode.UNAVAILABLE,
        ErrorCode.MEDIA_UNAVAILABLE,
    }
)


def reconnect_after(code: int) -> bool:
    """Tell whether a client should reconnect after a close with ``code``.

    Works for codes this version does not name, from the documented ranges.

    Args:
        code: a WebSocket close code.

    Returns:
        True for 3000-3499, 4000-4499 and the transient RFC codes (1006, 1011-1014).
    """
    if 3000 <= code <= 3499 or 4000 <= code <= 4499:
        return True
    return code in _RFC_RECONNECT


def is_valid_close_code(code: int) -> bool:
    """Tell whether the server may put ``code`` in a close frame.

    Args:
        code: candidate close code.

    Returns:
        True for the sendable RFC 6455 codes (1001 excluded, see module notes)
        and for 3000-4999.
    """
    return code in _RFC_SENDABLE or 3000 <= code <= 4999


def fit_reason(text: str, max_bytes: int = MAX_CLOSE_REASON_BYTES) -> str:
    """Cut ``text`` so that its UTF-8 encoding fits ``max_bytes``.

    The cut falls on a character boundary and ends with ``…`` when text was
    dropped, so that a reader can tell the reason was shortened.

    Args:
        text: the reason.
        max_bytes: the byte budget (default: the WebSocket close-reason limit).

    Returns:
        ``text`` itself if it fits, else its longest prefix that fits with ``…``.

    Raises:
        ValueError: ``max_bytes`` is smaller than the 3 bytes of ``…``.
    """
    if max_bytes < 3:
        raise ValueError(f"Expected max_bytes >= 3, got {max_bytes!r}")
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    # errors="ignore" drops a multi-byte character cut in half at the end.
    return encoded[: max_bytes - 3].decode("utf-8", errors="ignore") + "…"
