"""msgpack encoding and decoding of frames: the one place msgpack is used.

``encode`` needs no connection, so a broadcast is encoded once and the same
bytes fan out to every recipient (P12). Decoding is split in two so that the
connection can apply its state rules between the steps:

1. :func:`decode_frame`: bytes → ``(type, map)``. Every msgpack failure, a non-map,
   a missing or non-str ``"t"``, non-str keys, and nesting deeper than
   ``Limits.max_depth`` become a fatal ``RemoteProtocolError`` (close 3500). This
   is the choke point where foreign exceptions are translated: msgpack documents
   that unpacking may raise exceptions outside its own hierarchy, so the whole
   unpack is guarded with ``except Exception``.
2. :func:`event_from_frame`: ``(type, map)`` → event. An unknown type or an
   invalid field becomes a recoverable ``RemoteProtocolError`` (an ``error``
   frame with code 101 or 100; 106 for a message body over
   ``Limits.max_body_bytes``, which only an encoding can measure).

:func:`decode` chains both for stateless users; :func:`decode_server_frame` is the
mirror image for clients (the Python SDK and the tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from .codes import DisconnectCode, ErrorCode, fit_reason
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    CLIENT_EVENT_TYPES,
    MAX_REF,
    SERVER_EVENT_TYPES,
    ClientEvent,
    Disconnect,
    Error,
    Frame,
    History,
    Message,
    MsgEdit,
    MsgSend,
    Reply,
    ServerFrame,
)

__all__ = [
    "MESSAGE_RESERVE_BYTES",
    "Limits",
    "decode",
    "decode_frame",
    "decode_server_frame",
    "encode",
    "event_from_frame",
    "fit_history_reply",
    "peek_ref",
]

# A hello carries up to 8 KiB of token; frames must be able to hold one.
_MIN_FRAME_BYTES = 16 * 1024
#: What a message body leaves of ``max_frame_bytes`` for the frame around it.
#: A ``msg.send`` body becomes a ``msg`` push and an entry of a ``history``
#: reply, which add the room, seq, cid, sender (up to 128 characters), times
#: and keys: at most about 400 bytes. The reserve keeps every frame that
#: carries a body within the frame limit the client applies.
MESSAGE_RESERVE_BYTES = 1024
# msgpack array headers: 1 byte up to 15 items, 3 bytes up to 65535 (a
# history page holds at most 500).
_FIXARRAY_MAX = 15
_ARRAY16_EXTRA = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds applied to one connection's inbound frames.

    Attributes:
        max_frame_bytes: largest frame accepted (default 1 MiB, at least 16 KiB so
            that a hello with a full-size token fits). Also the msgpack str/bin/ext
            length limit. The WebSocket layer enforces it too (close 1009).
        max_pending: frames received but not yet taken with ``events()``
            (default 64); one more is fatal with close 3004 RATE_LIMITED.
        max_in_flight: requests received but not answered yet (default 128); one
            more is answered with error 103 RATE_LIMITED (temporary).
        max_depth: deepest container nesting, the frame map being depth 1
            (default 16); deeper is fatal with close 3500 BAD_FRAME.
        max_array_len: longest msgpack array (default 10 000).
        max_map_len: largest msgpack map (default 1 000).

    The derived :attr:`max_body_bytes` bounds ``msg.send`` / ``msg.edit`` bodies.

    Raises:
        ValueError: a limit is not an int in its documented range.
    """

    max_frame_bytes: int = 1 << 20
    max_pending: int = 64
    max_in_flight: int = 128
    max_depth: int = 16
    max_array_len: int = 10_000
    max_map_len: int = 1_000

    def __post_init__(self) -> None:
        minimums = {
            "max_frame_bytes": _MIN_FRAME_BYTES,
            "max_pending": 1,
            "max_in_flight": 1,
            "max_depth": 1,
            "max_array_len": 1,
            "max_map_len": 1,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"Expected Limits.{name} to be an int >= {minimum}, got {value!r}")

    @property
    def max_body_bytes(self) -> int:
        """The largest encoded message body accepted: ``max_frame_bytes`` minus 1 KiB.

        See :data:`MESSAGE_RESERVE_BYTES`. Clients derive it from the
        advertised ``max_frame_bytes``; it is not a separate setting.
        """
        return self.max_frame_bytes - MESSAGE_RESERVE_BYTES

    def advertised(self, *, max_frames_per_s: int) -> dict[str, int]:
        """Return the ``limits`` map for ``welcome``.

        Args:
            max_frames_per_s: the transport's inbound rate limit.

        Returns:
            ``max_frame_bytes``, ``max_frames_per_s`` and ``max_in_flight``.
        """
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "max_frames_per_s": max_frames_per_s,
            "max_in_flight": self.max_in_flight,
        }


_DEFAULT_LIMITS = Limits()
_CONTAINERS = (dict, list)


def encode(event: Frame) -> bytes:
    """Encode one frame to the bytes of a WebSocket binary message.

    Independent of any connection: encode a broadcast once, send the bytes to all.

    Args:
        event: a frame (client or server direction).

    Returns:
        The msgpack map.

    Raises:
        LocalProtocolError: ``event`` is not a frame (e.g. a ``Disconnect``), or a
            value inside it (typically ``Reply.data``) is not msgpack-encodable.
    """
    if not isinstance(event, Frame):
        raise LocalProtocolError(f"Expected a Frame to encode, got {event!r}")
    try:
        return msgpack.packb(event.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"Cannot encode {event!r}: {exc}") from exc


def _bad_frame(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        message, close_hint=Disconnect(DisconnectCode.BAD_FRAME, fit_reason(message))
    )


def _too_deep(obj: object, max_depth: int) -> bool:
    """Tell whether containers nest deeper than ``max_depth`` (iterative)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:  # type: ignore[attr-defined]
            if isinstance(child, _CONTAINERS):
                if depth + 1 > max_depth:
                    return True
                stack.append((child, depth + 1))
    return False


def decode_frame(payload: bytes, limits: Limits = _DEFAULT_LIMITS) -> tuple[str, dict[str, Any]]:
    """Decode one WebSocket message into its frame type and map.

    Args:
        payload: one complete binary message.
        limits: the bounds to apply.

    Returns:
        ``(t, map)``: the frame type and the whole map (``"t"`` included).

    Raises:
        RemoteProtocolError: fatal, close hint 3500 BAD_FRAME (not one msgpack
            value, not a map, non-str keys, no str ``"t"``, nested too deep) or
            3503 MESSAGE_TOO_LARGE (over ``max_frame_bytes``).
    """
    if len(payload) > limits.max_frame_bytes:
        message = f"Frame of {len(payload)} bytes exceeds max_frame_bytes={limits.max_frame_bytes}"
        raise RemoteProtocolError(
            message, close_hint=Disconnect(DisconnectCode.MESSAGE_TOO_LARGE, fit_reason(message))
        )
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.max_frame_bytes,
            max_bin_len=limits.max_frame_bytes,
            max_ext_len=limits.max_frame_bytes,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
        )
    except Exception as exc:
        # msgpack raises ValueError subclasses, UnicodeDecodeError, TypeError,
        # OverflowError and more; all mean "not a frame" (see msgpack/exceptions.py).
        raise _bad_frame(f"Frame is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise _bad_frame(f"Expected a frame to be a msgpack map, got {type(obj).__name__}")
    if not all(isinstance(key, str) for key in obj):
        raise _bad_frame("Expected the frame map to have str keys only")
    frame_type = obj.get("t")
    if not isinstance(frame_type, str):
        got = "none" if "t" not in obj else type(frame_type).__name__
        raise _bad_frame(f"Expected the frame to have a str 't', got {got}")
    if _too_deep(obj, limits.max_depth):
        raise _bad_frame(f"Frame nests deeper than max_depth={limits.max_depth}")
    return frame_type, obj


def peek_ref(body: Mapping[str, Any]) -> int | None:
    """Return the frame's ``ref`` if it is a valid ref, else None.

    Used to tie an error to the request it answers before the frame is validated.
    """
    ref = body.get("ref")
    if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref <= MAX_REF:
        return ref
    return None


def _brief_type(frame_type: str) -> str:
    text = repr(frame_type)
    return text if len(text) <= 40 else text[:37] + "..."


def event_from_frame(
    frame_type: str, body: Mapping[str, Any], limits: Limits = _DEFAULT_LIMITS
) -> ClientEvent:
    """Build the client event for a decoded frame.

    This is where validation errors from the events (``LocalProtocolError``,
    since an invalid event is unconstructible) become the client's fault.

    Args:
        frame_type: the frame's ``"t"``.
        body: the frame map.
        limits: the bounds to apply (``max_body_bytes`` for message bodies).

    Returns:
        The validated event.

    Raises:
        RemoteProtocolError: recoverable; the error hint is 101 UNKNOWN_TYPE,
            100 BAD_REQUEST or 106 TOO_LARGE (a ``msg.send`` / ``msg.edit``
            body over ``limits.max_body_bytes``), with the frame's ref when it
            has a valid one.
    """
    cls = CLIENT_EVENT_TYPES.get(frame_type)
    if cls is None:
        message = f"Unknown frame type {_brief_type(frame_type)}"
        raise RemoteProtocolError(
            message,
            error_hint=Error.for_code(ErrorCode.UNKNOWN_TYPE, message, ref=peek_ref(body)),
        )
    try:
        event = cls.from_wire(body)
    except LocalProtocolError as exc:
        message = str(exc)
        ref = peek_ref(body) if "ref" in cls.wire_keys() else None
        raise RemoteProtocolError(
            message, error_hint=Error.for_code(ErrorCode.BAD_REQUEST, message, ref=ref)
        ) from exc
    if isinstance(event, MsgSend | MsgEdit):
        # The body came out of msgpack and passed validation, so it packs.
        size = len(msgpack.packb(event.body, use_bin_type=True))
        if size > limits.max_body_bytes:
            message = f"Message body of {size} bytes exceeds max_body_bytes={limits.max_body_bytes}"
            raise RemoteProtocolError(
                message, error_hint=Error.for_code(ErrorCode.TOO_LARGE, message, ref=event.ref)
            )
    return event


def decode(payload: bytes, limits: Limits = _DEFAULT_LIMITS) -> ClientEvent:
    """Decode one client frame without any connection state.

    Args:
        payload: one complete binary message.
        limits: the bounds to apply.

    Returns:
        The client event.

    Raises:
        RemoteProtocolError: fatal for undecodable frames (see :func:`decode_frame`),
            recoverable for unknown types and invalid fields.
    """
    frame_type, body = decode_frame(payload, limits)
    return event_from_frame(frame_type, body, limits)


def fit_history_reply(
    request: History,
    messages: Sequence[Message | Mapping[str, Any]],
    *,
    more: bool,
    max_bytes: int,
) -> Reply:
    """Build the ``history`` reply, dropping messages until it encodes within ``max_bytes``.

    Messages are dropped from the far end of the page: the oldest for a
    backward page (latest, or ``before``), the newest for a forward one
    (``after``), so that the client's next request continues where this page
    stops; ``more`` is then true. At least one message is always kept, so that
    paging makes progress: a message whose body came through ``msg.send``
    always fits (see :data:`MESSAGE_RESERVE_BYTES`).

    Args:
        request: the ``history`` request answered.
        messages: the page, as for :meth:`History.reply`.
        more: whether messages remain beyond the page before any are dropped.
        max_bytes: the frame budget, normally ``Limits.max_frame_bytes``.

    Returns:
        The reply.

    Raises:
        LocalProtocolError: as :meth:`History.reply`.
    """
    page = [m if isinstance(m, Message) else Message.from_snapshot(m) for m in messages]
    # The reply with an empty page (1-byte array header), then the messages:
    # containers encode as their header plus their items, so sizes add up.
    budget = max_bytes - len(encode(request.reply(messages=[], more=True)))
    kept: list[Message] = []
    used = 0
    for message in page if request.forward else reversed(page):
        size = len(msgpack.packb(message.snapshot(), use_bin_type=True))
        if len(kept) == _FIXARRAY_MAX:
            size += _ARRAY16_EXTRA  # the array header grows once, at the 16th item
        if kept and used + size > budget:
            break
        kept.append(message)
        used += size
    if not request.forward:
        kept.reverse()
    return request.reply(messages=kept, more=more or len(kept) < len(page))


def decode_server_frame(payload: bytes, limits: Limits = _DEFAULT_LIMITS) -> ServerFrame | None:
    """Decode one server frame, for client implementations and tests.

    Args:
        payload: one complete binary message received from the server.
        limits: the bounds to apply.

    Returns:
        The server event, or None for a frame type this version does not know
        (clients must ignore those: the server may add frame types within v1).

    Raises:
        RemoteProtocolError: the frame is undecodable or a known frame is invalid
            (the hints describe the problem; a client should close the connection).
    """
    frame_type, body = decode_frame(payload, limits)
    cls = SERVER_EVENT_TYPES.get(frame_type)
    if cls is None:
        return None
    try:
        return cls.from_wire(body)
    except LocalProtocolError as exc:
        message = str(exc)
        raise RemoteProtocolError(
            message,
            close_hint=Disconnect(DisconnectCode.PROTOCOL_VIOLATION, fit_reason(message)),
        ) from exc
