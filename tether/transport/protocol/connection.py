"""``ServerConnection``: the server side of one tether connection, sans I/O.

Bytes in, events out; events in, bytes out (h11's ``Connection`` is the model).
The adapter owns the socket and the WebSocket layer and loops::

    conn.receive_data(message)          # one complete binary WebSocket message
    try:
        for event in conn.events():     # Hello, Ping, PresenceSubscribe, Bye, ...
            handle(event)               # eventually: sock.send(conn.send(answer))
    except RemoteProtocolError as exc:
        payload = conn.send(exc.hint)   # b"" for a close hint
        if exc.fatal: close the WebSocket with exc.close_hint.code / .reason
        else: send payload and keep reading

State rules come from ``states.py``; frame parsing from ``codec.py``. This module
adds the rules about refs: every request is answered exactly once (``welcome``,
``reply`` or ``error`` with its ref), a client may not reuse a ref that is still
in flight (fatal, 3506), and at most ``Limits.max_in_flight`` requests are in
flight (more are refused with error 103, temporary).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from .codec import Limits, decode_frame, encode, event_from_frame, peek_ref
from .codes import DisconnectCode, ErrorCode, fit_reason
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    CLIENT_EVENT_TYPES,
    ClientEvent,
    Disconnect,
    Error,
    Hello,
    Ping,
    Reply,
    ServerEvent,
    ServerFrame,
    Welcome,
)
from .states import (
    CLOSE,
    HELLO_ERROR,
    Accept,
    Close,
    ConnectionState,
    Ignore,
    client_rule,
    server_transition,
)

# Limits is re-exported: it is the argument of ServerConnection().
__all__ = ["ConnectionStatistics", "Limits", "ServerConnection"]

_DONE = (ConnectionState.CLOSING, ConnectionState.CLOSED)
# Client frame types whose class has a ref field (requests).
_REF_TYPES = frozenset(name for name, cls in CLIENT_EVENT_TYPES.items() if "ref" in cls.wire_keys())


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStatistics:
    """A snapshot of one connection's counters (for the console and metrics).

    Attributes:
        state: the lifecycle state.
        frames_received: messages accepted by ``receive_data``.
        frames_ignored: messages dropped because the connection was closing or closed.
        events: events yielded by ``events()``.
        errors: recoverable errors raised (each answered with an ``error`` frame).
        frames_sent: frames returned by ``send`` (``Disconnect`` not counted).
        bytes_received: payload bytes accepted by ``receive_data``.
        bytes_sent: payload bytes returned by ``send``.
        pending: messages received and not yet parsed by ``events()``.
        in_flight: requests received and not yet answered.
        close_code: the code the connection closed with, or None while not closed.
    """

    state: ConnectionState
    frames_received: int
    frames_ignored: int
    events: int
    errors: int
    frames_sent: int
    bytes_received: int
    bytes_sent: int
    pending: int
    in_flight: int
    close_code: int | None


class ServerConnection:
    """The protocol state of one client connection, on the server side.

    Not thread-safe; one task drives it. Every method is synchronous and does
    no I/O.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        """Create a connection in AWAITING_HELLO.

        Args:
            limits: inbound bounds (default: ``Limits()``).
        """
        self._limits = Limits() if limits is None else limits
        self._state = ConnectionState.AWAITING_HELLO
        # Bounded by limits.max_pending (checked in receive_data).
        self._pending: deque[bytes] = deque()
        # Bounded by limits.max_in_flight, plus refs whose error hint is unsent.
        self._in_flight: set[int] = set()
        self._hello_ref: int | None = None
        self._close_code: int | None = None
        self._frames_received = 0
        self._frames_ignored = 0
        self._events = 0
        self._errors = 0
        self._frames_sent = 0
        self._bytes_received = 0
        self._bytes_sent = 0

    def __repr__(self) -> str:
        return (
            f"<ServerConnection state={self._state} pending={len(self._pending)} "
            f"in_flight={len(self._in_flight)}>"
        )

    @property
    def state(self) -> ConnectionState:
        """The current lifecycle state."""
        return self._state

    @property
    def limits(self) -> Limits:
        """The inbound bounds this connection enforces."""
        return self._limits

    def receive_data(self, payload: bytes | bytearray | memoryview) -> None:
        """Queue one complete binary WebSocket message from the client.

        Parsing happens in :meth:`events`. While CLOSING or CLOSED the message is
        dropped. Text messages never get here: the adapter closes with 1003.

        Args:
            payload: the message (bytes, bytearray or memoryview).

        Raises:
            RemoteProtocolError: fatal, close hint 3503 MESSAGE_TOO_LARGE (over
                ``max_frame_bytes``) or 3004 RATE_LIMITED (more than
                ``max_pending`` messages not yet taken with ``events()``); the
                connection is CLOSED. Anything else escaping is a bug here,
                except ``LocalProtocolError`` for a payload that is not bytes.
        """
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise LocalProtocolError(f"Expected bytes, got {type(payload).__name__}")
        if self._state in _DONE:
            self._frames_ignored += 1
            return
        payload = bytes(payload)
        self._frames_received += 1
        self._bytes_received += len(payload)
        if len(payload) > self._limits.max_frame_bytes:
            raise self._fatal(
                DisconnectCode.MESSAGE_TOO_LARGE,
                f"Frame of {len(payload)} bytes exceeds "
                f"max_frame_bytes={self._limits.max_frame_bytes}",
            )
        if len(self._pending) >= self._limits.max_pending:
            raise self._fatal(
                DisconnectCode.RATE_LIMITED,
                f"More than max_pending={self._limits.max_pending} frames pending",
            )
        self._pending.append(payload)

    def events(self) -> Iterator[ClientEvent]:
        """Parse the queued messages, in order, into client events.

        Lazy: each step parses one message, under the state reached so far (a
        ``hello`` moves to HELLO_RECEIVED before the next message is parsed).
        Messages left when the connection becomes CLOSING or CLOSED are dropped.
        After an exception, call ``events()`` again to continue with the next
        message.

        Yields:
            Validated client events.

        Raises:
            RemoteProtocolError: the client misbehaved. Fatal ones (``close_hint``)
                leave the connection CLOSED; recoverable ones (``error_hint``)
                leave it as it was, and the hint must be sent with :meth:`send`.
                Anything else escaping is a bug in this package.
        """
        while self._pending:
            if self._state in _DONE:
                self._frames_ignored += len(self._pending)
                self._pending.clear()
                return
            event = self._parse(self._pending.popleft())
            if event is not None:
                self._events += 1
                yield event

    def send(self, event: ServerEvent) -> bytes:
        """Check that the server may send ``event`` now, update the state, encode it.

        Args:
            event: a server frame, or a ``Disconnect``.

        Returns:
            The binary message to send; ``b""`` for ``Disconnect`` (the adapter
            sends a WebSocket close with its code and reason instead). The
            connection is then CLOSED; ``Disconnect`` while CLOSED is a no-op.

        Raises:
            LocalProtocolError: the event is illegal in this state (f"Event …
                cannot be sent in state …"), answers a ref that is not in flight,
                ``welcome`` does not answer the hello, a server ``Ping`` has no
                ``n``, or a value is not encodable. Nothing changes then.
        """
        if not isinstance(event, ServerEvent):
            raise LocalProtocolError(f"Expected a ServerEvent, got {event!r}")
        key = self._server_key(event)
        next_state = server_transition(self._state, key)
        if next_state is None:
            raise LocalProtocolError(f"Event {event!r} cannot be sent in state {self._state}")
        if isinstance(event, Disconnect):
            if self._close_code is None:
                self._close_code = event.code
            self._enter_closed()
            return b""
        assert isinstance(event, ServerFrame)  # every other ServerEvent is a frame
        ref = event.ref if isinstance(event, Welcome | Reply | Error) else None
        if ref is not None and ref not in self._in_flight:
            raise LocalProtocolError(f"Event {event!r} answers ref {ref}, which is not in flight")
        if isinstance(event, Welcome) and ref != self._hello_ref:
            raise LocalProtocolError(
                f"Expected welcome to answer hello ref {self._hello_ref}, got {event!r}"
            )
        if isinstance(event, Ping) and event.n is None:
            raise LocalProtocolError(f"Expected a server ping to carry n, got {event!r}")
        payload = encode(event)
        if ref is not None:
            self._in_flight.discard(ref)
            if ref == self._hello_ref:
                self._hello_ref = None
        self._state = next_state
        self._frames_sent += 1
        self._bytes_sent += len(payload)
        return payload

    def statistics(self) -> ConnectionStatistics:
        """Return a snapshot of the counters."""
        return ConnectionStatistics(
            state=self._state,
            frames_received=self._frames_received,
            frames_ignored=self._frames_ignored,
            events=self._events,
            errors=self._errors,
            frames_sent=self._frames_sent,
            bytes_received=self._bytes_received,
            bytes_sent=self._bytes_sent,
            pending=len(self._pending),
            in_flight=len(self._in_flight),
            close_code=self._close_code,
        )

    # ------------------------------------------------------------------
    # Internals.

    def _server_key(self, event: ServerEvent) -> str:
        if isinstance(event, Disconnect):
            return CLOSE
        assert isinstance(event, ServerFrame)
        if (
            isinstance(event, Error)
            and event.ref is not None
            and event.ref == self._hello_ref
            and self._state is ConnectionState.HELLO_RECEIVED
        ):
            return HELLO_ERROR
        return event.TYPE

    def _enter_closed(self) -> None:
        self._state = ConnectionState.CLOSED
        self._frames_ignored += len(self._pending)
        self._pending.clear()
        self._in_flight.clear()
        self._hello_ref = None

    def _fatal(self, code: DisconnectCode, message: str) -> RemoteProtocolError:
        """Build a fatal error for ``code`` and apply it (see :meth:`_account`)."""
        close = Disconnect(code, fit_reason(message))
        return self._account(RemoteProtocolError(message, close_hint=close))

    def _account(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        """Apply the effect of an error about to be raised, and return it.

        Fatal: the connection is CLOSED. Recoverable: the error hint's ref counts
        as in flight until the hint is sent, like any other answer.
        """
        if exc.close_hint is not None:
            self._close_code = exc.close_hint.code
            self._enter_closed()
        elif exc.error_hint is not None:
            if exc.error_hint.ref is not None:
                self._in_flight.add(exc.error_hint.ref)
            self._errors += 1
        return exc

    def _parse(self, payload: bytes) -> ClientEvent | None:
        """Turn one message into an event, None (ignored) or a RemoteProtocolError."""
        try:
            frame_type, body = decode_frame(payload, self._limits)
        except RemoteProtocolError as exc:
            self._account(exc)
            raise
        rule = client_rule(self._state, frame_type)
        if isinstance(rule, Ignore):
            self._frames_ignored += 1
            return None
        shown = fit_reason(repr(frame_type), 40)
        if isinstance(rule, Close):
            raise self._fatal(rule.code, f"Frame {shown} is not allowed in state {self._state}")
        # Only requests (and unknown types, which may be requests of a newer
        # protocol revision) tie their answer to a ref.
        known = frame_type in CLIENT_EVENT_TYPES
        ref = peek_ref(body) if frame_type in _REF_TYPES or not known else None
        if ref is not None and ref in self._in_flight:
            message = f"Frame {shown} reuses ref {ref}, still in flight"
            raise self._fatal(DisconnectCode.PROTOCOL_VIOLATION, message)
        if not isinstance(rule, Accept):
            if rule.code is ErrorCode.UNKNOWN_TYPE:
                message = f"Unknown frame type {shown}"
            else:
                message = f"Frame {shown} is not allowed in state {self._state}"
            error = Error.for_code(rule.code, message, ref=ref)
            raise self._account(RemoteProtocolError(message, error_hint=error))
        try:
            event = event_from_frame(frame_type, body, self._limits)
        except RemoteProtocolError as exc:
            self._account(exc)
            raise
        if ref is not None:
            if len(self._in_flight) >= self._limits.max_in_flight:
                message = f"More than max_in_flight={self._limits.max_in_flight} requests"
                error = Error.for_code(ErrorCode.RATE_LIMITED, message, ref=ref)
                raise self._account(RemoteProtocolError(message, error_hint=error))
            self._in_flight.add(ref)
        if isinstance(event, Hello):
            self._hello_ref = event.ref
        self._state = rule.next_state
        return event
