"""Server-side WebSocket connections (RFC 6455) on trio, built for fan-out.

Sending is *write-through*: :meth:`WebSocketConnection.send_frame` hands the
frame straight to the non-blocking socket with one ``send()`` call, in the
caller's task, without a task switch. Only what the kernel does not take is
queued; a flusher task is then started on demand in the server's nursery,
waits until the socket is writable and sends everything queued so far as one
write, and exits when the queue is empty. An idle connection therefore has no
writer task at all. A broadcast encodes its frame once with :func:`encode_frame`
and hands the same bytes to every member. (The project's reference benchmark
measured this design at 5.6 µs of server CPU per delivery at 100k
deliveries/s, against 10-48 µs with a writer task per connection.)

The queue is bounded by ``max_outbound_bytes``: a send that would exceed it
raises :class:`SendQueueFull` and queues nothing, so a room's fan-out never waits
for a slow member; the application closes such a connection with its own
"slow consumer" code, and :meth:`WebSocketConnection.close` always works, even
on a full queue.

Ephemeral state (who is typing in a room, a user's presence) is sent with a
``key``. While the connection is backed up such frames are not queued in order
but kept per key, last write wins: a slow reader gets the latest value once, not
every intermediate one, and they do not count against ``max_outbound_bytes``,
so they never make a connection a slow consumer. Their number is bounded by
``max_ephemeral_keys`` instead. The flusher appends them after the ordered frames
it takes in the same write, so a keyed frame never overtakes an ordered frame
sent before it (ordered frames sent after it may overtake it).

Receiving is pull-based: :meth:`WebSocketConnection.receive` reads the socket
and feeds wsproto, which parses and unmasks client frames; pings are answered
and the close handshake is handled inside ``receive``. The connection's handler
task is therefore its only reader, and an idle connection costs one task
blocked in ``wait_readable``; a handler must keep calling ``receive`` (or
return) for control frames to be processed. Peer misbehaviour never raises:
the connection is closed with the fitting code and ``receive`` returns None.

Closing handshakes are bounded by ``close_timeout``: one timer task per server,
started on demand, drops every connection whose handshake has not completed in
time (a per-connection timer or cancel scope would cost ~600 bytes per idle
connection).

Over TLS the same API runs on a ``trio.SSLStream``: there is no synchronous
write path, so every frame is queued (same bound, same errors) and the on-demand
flusher is the connection's writer.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Final

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import RemoteProtocolError

from tether.transport.http import HttpRequest

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "SendQueueFull",
    "WebSocketConfig",
    "WebSocketConnection",
    "WebSocketHandler",
    "WebSocketStatistics",
    "close_socket",
    "encode_frame",
    "run_websocket",
]

logger = logging.getLogger("tether.transport.websocket")

#: A close frame's payload is at most 125 bytes, two of which are the code.
MAX_CLOSE_REASON_BYTES: Final = 123

# One read from the socket; wsproto hands data frames on in chunks of at most this.
_READ_SIZE: Final = 65536

# Connection states. OPEN → LOCAL_CLOSING (we sent a close frame and wait for the
# peer's) → CLOSE_DONE (no more frames either way; only the outbound queue is
# still draining) → CLOSED (socket released). A peer's close, or a protocol
# failure, goes from OPEN straight to CLOSE_DONE; abort() or a lost socket goes
# from any state to CLOSED.
_OPEN: Final = 0
_LOCAL_CLOSING: Final = 1
_CLOSE_DONE: Final = 2
_CLOSED: Final = 3

_ABNORMAL_CLOSURE: Final = 1006
_NORMAL_CLOSURE: Final = 1000
_INTERNAL_ERROR: Final = 1011

# Codes an endpoint may put in a close frame: the registered ones that wsproto
# (and so trio-websocket clients) accept, and the 3000-4999 ranges for libraries
# and applications. 1005, 1006 and 1015 are reserved for local reporting.
_SENDABLE_PROTOCOL_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013}
)


def _valid_close_code(code: int) -> bool:
    return code in _SENDABLE_PROTOCOL_CODES or 3000 <= code <= 4999


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` as one complete, unmasked server BINARY frame (RFC 6455 §5.2).

    Server frames are unmasked and tether negotiates no extension, so the bytes
    are valid for every connection: encode a broadcast once and pass the result
    to :meth:`WebSocketConnection.send_frame` of each member.

    Args:
        payload: The message.

    Returns:
        FIN + BINARY opcode, the 7/16/64-bit length, then the payload.
    """
    size = len(payload)
    if size < 126:
        header = bytes((0x82, size))
    elif size < 0x10000:
        header = bytes((0x82, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x82, 127)) + size.to_bytes(8, "big")
    return header + payload


def _truncate_reason(reason: str) -> str:
    """Cut ``reason`` to at most 123 UTF-8 bytes, never splitting a character."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


class SendQueueFull(Exception):
    """A send would push the connection's outbound queue past one of its bounds.

    Nothing was queued. The peer is not reading fast enough; the caller decides
    what to do (tether closes the connection with its slow-consumer code).

    Attributes:
        queued: Bytes counted against the bound when the send was refused (for
            ``unit == "ephemeral keys"``: keys pending).
        size: Size of the refused frame (for ``"ephemeral keys"``: 1, the new key).
        limit: The connection's ``max_outbound_bytes`` (or ``max_ephemeral_keys``).
        unit: ``"bytes"`` for the byte bound, ``"ephemeral keys"`` for the bound
            on pending keyed frames.
    """

    def __init__(self, queued: int, size: int, limit: int, *, unit: str = "bytes") -> None:
        super().__init__(
            f"outbound queue full: {queued} {unit} queued, {size} more would exceed {limit}"
        )
        self.queued = queued
        self.size = size
        self.limit = limit
        self.unit = unit


@dataclass(frozen=True, slots=True)
class WebSocketStatistics:
    """Counters of one connection (a snapshot).

    Attributes:
        bytes_in: Bytes received after the handshake.
        bytes_out: Bytes handed to the kernel (or to TLS) after the handshake.
        messages_in: Complete binary messages returned by ``receive``.
        frames_out: Frames accepted by ``send``/``send_frame`` (plus pongs and close).
        queued_bytes: Bytes in the write queue, not yet taken by the kernel (keyed
            frames count from when the flusher takes them).
        peak_queued_bytes: Highest ``queued_bytes`` seen.
        writes: ``send()`` system calls (or TLS writes) made.
        flushes: Times a flusher task had to be started.
        coalesced: Keyed frames accepted but never written: replaced by a later
            frame with the same key, or dropped because the connection started
            closing (or was aborted) before they were written.
    """

    bytes_in: int
    bytes_out: int
    messages_in: int
    frames_out: int
    queued_bytes: int
    peak_queued_bytes: int
    writes: int
    flushes: int
    coalesced: int


class WebSocketConfig:
    """Settings and the nursery shared by all WebSocket connections of one server.

    Args:
        nursery: Where on-demand flusher tasks run (the server's nursery).
        max_message_size: Largest incoming message; larger closes with 1009.
        max_outbound_bytes: Bound of each connection's outbound queue.
        close_timeout: Seconds the closing handshake may take before the socket
            is dropped.
        max_ephemeral_keys: Bound of each connection's pending keyed frames
            (distinct keys waiting while the connection is backed up).
    """

    __slots__ = (
        "_closing",
        "_timer_running",
        "close_timeout",
        "max_ephemeral_keys",
        "max_message_size",
        "max_outbound_bytes",
        "nursery",
    )

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        max_message_size: int,
        max_outbound_bytes: int,
        close_timeout: float,
        max_ephemeral_keys: int = 4096,
    ) -> None:
        self.nursery = nursery
        self.max_message_size = max_message_size
        self.max_outbound_bytes = max_outbound_bytes
        self.close_timeout = close_timeout
        self.max_ephemeral_keys = max_ephemeral_keys
        # Connections whose closing handshake started, with its deadline. Every
        # deadline is "now + close_timeout" with one close_timeout, so the deque
        # is sorted by construction; entries of connections that closed in time
        # are skipped when their deadline comes.
        self._closing: deque[tuple[float, WebSocketConnection]] = deque()
        self._timer_running = False

    def _start_close_timer(self, connection: WebSocketConnection) -> None:
        self._closing.append((trio.current_time() + self.close_timeout, connection))
        if not self._timer_running:
            self._timer_running = True
            self.nursery.start_soon(self._expire_closing)

    async def _expire_closing(self) -> None:
        """Drop connections whose closing handshake outlived close_timeout; exit when none left."""
        closing = self._closing
        try:
            while closing:
                await trio.sleep_until(closing[0][0])
                now = trio.current_time()
                while closing and closing[0][0] <= now:
                    _, connection = closing.popleft()
                    # This task serves every connection of the server: one
                    # connection's failure must not end it (nor the server).
                    try:
                        connection._close_timed_out()
                    except Exception:
                        logger.exception("dropping %s failed", connection.remote)
        finally:
            self._timer_running = False


def close_socket(sock: socket.socket) -> None:
    """Close ``sock``, first waking any task waiting on it (trio requires this order).

    Idempotent. Tasks blocked in ``wait_readable``/``wait_writable`` on it get
    ``trio.ClosedResourceError``.
    """
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
        sock.close()


class WebSocketConnection:
    """One accepted WebSocket connection (server side).

    Created by the server after a successful handshake and passed to the
    application's ``websocket_handler``; applications do not construct it.

    Attributes:
        request: The HTTP upgrade request (path, query, headers, remote).
        subprotocol: The negotiated subprotocol, ``""`` if the server offers none.
        close_code: Why the connection closed, once it is closing: the code of
            the close frame that started the closing handshake (ours or the
            peer's; 1005 if the peer's had none), or 1006 if the connection was
            lost or aborted without one. None while open.
        close_reason: The reason text that came with ``close_code``.
    """

    __slots__ = (
        "_bytes_in",
        "_bytes_out",
        "_coalesced",
        "_config",
        "_drained",
        "_ephemeral",
        "_exempt",
        "_exempt_at",
        "_flushes",
        "_flushing",
        "_frames_out",
        "_messages_in",
        "_partial",
        "_partial_size",
        "_peak_queued",
        "_queue",
        "_queued",
        "_receiving",
        "_sock",
        "_state",
        "_tls",
        "_writes",
        "_ws",
        "close_code",
        "close_reason",
        "request",
        "subprotocol",
    )

    def __init__(
        self,
        request: HttpRequest,
        subprotocol: str,
        *,
        sock: socket.socket,
        protocol: Connection,
        config: WebSocketConfig,
        tls: trio.SSLStream[trio.SocketStream] | None = None,
        trailing_data: bytes = b"",
    ) -> None:
        """Wrap an upgraded connection.

        Args:
            request: The upgrade request.
            subprotocol: The negotiated subprotocol (``""`` for none).
            sock: The connection's socket, non-blocking (for TLS: the socket under
                ``tls``, used to abort).
            protocol: wsproto's server-side frame engine, in state OPEN.
            config: Settings shared by the server's connections.
            tls: The TLS stream, or None for plain TCP.
            trailing_data: Bytes received after the upgrade request (early frames).
        """
        self.request = request
        self.subprotocol = subprotocol
        self.close_code: int | None = None
        self.close_reason = ""
        self._sock = sock
        self._tls = tls
        self._ws = protocol
        self._config = config
        self._state = _OPEN
        # Outbound bytes not yet taken by the kernel; None while empty (most of
        # the time), to keep idle connections small.
        self._queue: list[bytes | memoryview] | None = None
        self._queued = 0
        self._flushing = False
        # Keyed frames waiting for the flusher, last write wins; None while empty.
        self._ephemeral: dict[Hashable, bytes] | None = None
        # Keyed frames the flusher took are bytes of the queue like any other,
        # but must not count against max_outbound_bytes: _exempt of the _queued
        # bytes are such frames, starting _exempt_at bytes into the queue. The
        # flusher takes no new keyed frames until these are written, so there is
        # one such run at a time and a slow reader cannot pile them up.
        self._exempt = 0
        self._exempt_at = 0
        # Fragments of an incoming message being reassembled.
        self._partial: list[bytes] | None = None
        self._partial_size = 0
        self._receiving = False
        self._drained: trio.Event | None = None
        self._bytes_in = 0
        self._bytes_out = 0
        self._messages_in = 0
        self._frames_out = 0
        self._peak_queued = 0
        self._writes = 0
        self._flushes = 0
        self._coalesced = 0
        if trailing_data:
            self._feed(trailing_data)

    # -- introspection -------------------------------------------------------------

    @property
    def remote(self) -> str:
        """The client address, ``"ip:port"``."""
        return self.request.remote

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed: sends are no-ops from then on."""
        return self._state != _OPEN

    @property
    def outbound_bytes(self) -> int:
        """Bytes in the write queue, not yet taken by the kernel.

        Keyed frames waiting per key are not included until the flusher takes
        them into a write.
        """
        return self._queued

    def statistics(self) -> WebSocketStatistics:
        """Return a snapshot of this connection's counters."""
        return WebSocketStatistics(
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            messages_in=self._messages_in,
            frames_out=self._frames_out,
            queued_bytes=self._queued,
            peak_queued_bytes=self._peak_queued,
            writes=self._writes,
            flushes=self._flushes,
            coalesced=self._coalesced,
        )

    def __repr__(self) -> str:
        return (
            f"<WebSocketConnection {self.remote} subprotocol={self.subprotocol!r} "
            f"state={self._state} queued={self._queued}>"
        )

    # -- sending -------------------------------------------------------------------

    def send(self, payload: bytes, *, key: Hashable | None = None) -> None:
        """Send ``payload`` as one binary message.

        Frames the payload and behaves as :meth:`send_frame` (``key`` included).
        To send the same message to many connections, encode it once with
        :func:`encode_frame`.

        Raises:
            SendQueueFull: the frame does not fit in the outbound queue; nothing
                was sent.
        """
        if self._state != _OPEN:
            return
        self.send_frame(encode_frame(payload), key=key)

    def send_frame(self, frame: bytes, *, key: Hashable | None = None) -> None:
        """Send a frame built by :func:`encode_frame`; never blocks.

        Writes straight to the socket when nothing is queued; what the kernel does
        not take is queued and written by an on-demand flusher task. Does nothing
        if the connection is closing or closed. A write error (peer reset) closes
        the connection (``close_code`` 1006) and is not raised.

        With a ``key`` the frame is ephemeral state, where only the latest value
        matters. If nothing is queued or being flushed it is sent as above.
        Otherwise it waits per key, replacing a not yet written frame with the
        same key (counted in ``statistics().coalesced``), and the flusher writes
        it after the ordered frames queued so far. Waiting keyed frames do not
        count against ``max_outbound_bytes`` and are dropped when the connection
        starts closing: nothing is written after the close frame.

        Args:
            frame: One or more complete frames; the bytes are sent as they are.
            key: None for an ordered frame; otherwise the identity of the state
                the frame carries (such as ``("typing", room_id)``), compared by
                equality.

        Raises:
            SendQueueFull: ``outbound_bytes + len(frame)`` would exceed
                ``max_outbound_bytes`` (so a frame larger than the bound is always
                refused, keyed or not; keyed frames already taken by the flusher
                are not counted); or ``key`` is new and ``max_ephemeral_keys``
                keyed frames are already waiting (``unit == "ephemeral keys"``).
                Nothing was queued. A keyed frame that replaces a waiting one is
                never refused.
        """
        if self._state != _OPEN:
            return
        if key is None or not (self._queued or self._flushing):
            self._write(frame, force=False)
        else:
            self._keep(key, frame)
        self._frames_out += 1

    def _keep(self, key: Hashable, frame: bytes) -> None:
        """Hold a keyed frame for the running flusher, replacing one with the same key."""
        size = len(frame)
        limit = self._config.max_outbound_bytes
        if size > limit:
            raise SendQueueFull(self._queued - self._exempt, size, limit)
        waiting = self._ephemeral
        if waiting is None:
            self._ephemeral = {key: frame}
        elif key in waiting:
            waiting[key] = frame
            self._coalesced += 1
        else:
            max_keys = self._config.max_ephemeral_keys
            if len(waiting) >= max_keys:
                raise SendQueueFull(len(waiting), 1, max_keys, unit="ephemeral keys")
            waiting[key] = frame

    def _drop_ephemeral(self) -> None:
        if self._ephemeral is not None:
            self._coalesced += len(self._ephemeral)
            self._ephemeral = None

    def _write(self, data: bytes | bytearray, *, force: bool) -> None:
        """Write ``data`` through, or queue the rest; ``force`` skips the bound."""
        queued = self._queued
        size = len(data)
        limit = self._config.max_outbound_bytes
        # The second test only runs when the first fails, keeping the common
        # case to one comparison.
        if not force and queued + size > limit and queued - self._exempt + size > limit:
            raise SendQueueFull(queued - self._exempt, size, limit)
        pending: bytes | memoryview = bytes(data) if isinstance(data, bytearray) else data
        if queued == 0 and self._tls is None:
            try:
                sent = self._sock.send(pending)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                logger.debug("write to %s failed: %r", self.remote, exc)
                self._lost()
                return
            self._writes += 1
            self._bytes_out += sent
            if sent == size:
                return
            pending = memoryview(pending)[sent:]
        if self._queue is None:
            self._queue = [pending]
        else:
            self._queue.append(pending)
        queued += len(pending)
        self._queued = queued
        self._peak_queued = max(self._peak_queued, queued)
        if not self._flushing:
            self._flushing = True
            self._flushes += 1
            self._config.nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        """Write the queue out, coalesced into one write per wake-up; exit when empty.

        Keyed frames waiting per key keep it running too (see :meth:`_take`).

        Runs in the server nursery, so it must never raise: failures close the
        connection instead.
        """
        try:
            if self._tls is None:
                await self._flush_socket()
            else:
                await self._flush_tls(self._tls)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("flush to %s failed: %r", self.remote, exc)
            self._lost()
        except Exception:
            logger.exception("unexpected error flushing to %s", self.remote)
            self._lost()
        finally:
            self._flushing = False
        self._maybe_finish()

    def _take(self) -> list[bytes | memoryview] | None:
        """Return the queue for the next write, with the waiting keyed frames appended.

        The keyed frames go after every ordered frame queued so far, and are not
        taken while keyed frames of an earlier write are still queued: they keep
        coalescing meanwhile, so the queue holds at most one batch of them.
        """
        queue = self._queue
        waiting = self._ephemeral
        if waiting and not self._exempt:
            self._ephemeral = None
            frames: list[bytes | memoryview] = list(waiting.values())
            size = sum(map(len, frames))
            self._exempt_at = self._queued
            self._exempt = size
            self._queued += size
            self._peak_queued = max(self._peak_queued, self._queued)
            if queue is None:
                queue = self._queue = frames
            else:
                queue.extend(frames)
        return queue

    async def _flush_socket(self) -> None:
        sock = self._sock
        while (self._queue or self._ephemeral) and self._state != _CLOSED:
            await trio.lowlevel.wait_writable(sock)
            if self._state == _CLOSED:
                break
            queue = self._take()
            if not queue:
                break
            data = queue[0] if len(queue) == 1 else b"".join(queue)
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            self._writes += 1
            self._bytes_out += sent
            if sent == len(data):
                self._queue = None
                self._queued = 0
                self._exempt = 0
            else:
                rest = memoryview(data)[sent:]
                self._queue = [rest]
                self._queued = len(rest)
                if self._exempt:
                    # Move the exempt run along by what the kernel took.
                    at = self._exempt_at - sent
                    if at >= 0:
                        self._exempt_at = at
                    else:
                        self._exempt = max(0, self._exempt + at)
                        self._exempt_at = 0

    async def _flush_tls(self, tls: trio.SSLStream[trio.SocketStream]) -> None:
        while (self._queue or self._ephemeral) and self._state != _CLOSED:
            queue = self._take()
            if not queue:
                break
            self._queue = None
            data = queue[0] if len(queue) == 1 else b"".join(queue)
            # The bytes stay counted in _queued until TLS has taken them, so the
            # bound covers what is in flight too (keyed frames in it are _exempt).
            await tls.send_all(data)
            self._writes += 1
            self._bytes_out += len(data)
            self._queued -= len(data)
            self._exempt = 0

    # -- receiving -----------------------------------------------------------------

    async def receive(self) -> bytes | None:
        """Return the next complete binary message, or None once the connection closed.

        Reads the socket as needed; answers pings and runs the closing handshake on
        the way. Fragmented messages are reassembled.

        Returns:
            The message, or None when the connection is closed (then
            ``close_code`` and ``close_reason`` say why). After a local
            :meth:`close`, messages still arriving are discarded and None is
            returned once the peer answered (or ``close_timeout`` passed). Peer
            misbehaviour ends the connection, it does not raise: a text message
            closes it with 1003, a message over ``max_message_size`` with 1009, a
            protocol violation with 1002 (1007 for invalid UTF-8), and a reset or
            EOF gives None with ``close_code`` 1006.

        Raises:
            trio.BusyResourceError: another task is already in ``receive``.

        Cancellation: waiting for data is the checkpoint; a cancelled call loses
        nothing (a partly received message stays buffered).
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this WebSocket")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            message: bytes | None = None
            blocked = False
            while self._state <= _LOCAL_CLOSING:
                message = self._next_message()
                if message is not None or self._state > _LOCAL_CLOSING:
                    break
                if self._tls is None:
                    # Inlined rather than a helper coroutine: this frame is what an
                    # idle connection keeps alive, so one frame less is ~200 bytes
                    # less per connection. The wait is outside the except clause so
                    # that the BlockingIOError (and its traceback) is not kept alive
                    # for as long as the connection idles.
                    try:
                        data: bytes | None = self._sock.recv(_READ_SIZE)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data is None:
                        blocked = True
                        try:
                            await trio.lowlevel.wait_readable(self._sock)
                        except trio.ClosedResourceError:
                            data = b""
                        else:
                            continue
                else:
                    blocked = True
                    data = await self._read_tls(self._tls)
                if not data:
                    self._lost()
                    break
                self._feed(data)
            if not blocked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            if message is not None:
                self._messages_in += 1
            return message
        finally:
            self._receiving = False

    @staticmethod
    async def _read_tls(tls: trio.SSLStream[trio.SocketStream]) -> bytes:
        """Return the next decrypted bytes, ``b""`` on EOF, reset or a closed stream."""
        try:
            data = await tls.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        return data if isinstance(data, bytes) else bytes(data)

    def _feed(self, data: bytes) -> None:
        self._bytes_in += len(data)
        self._ws.receive_data(data)

    def _next_message(self) -> bytes | None:
        """Process parsed events until a complete message is ready (returned) or none is left.

        Called only while the connection is OPEN or LOCAL_CLOSING; data arriving
        while closing is discarded.
        """
        try:
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    if self._state != _OPEN:
                        continue
                    message = self._add_fragment(event.data, event.message_finished)
                    if message is not None:
                        return message
                elif isinstance(event, Ping):
                    if self._state == _OPEN:
                        self._send_control(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._on_close_frame(event)
                    return None
                elif isinstance(event, TextMessage) and self._state == _OPEN:
                    self.close(1003, "text messages are not supported")
                # Pong: nothing to do, tether does not send pings at this layer.
        except RemoteProtocolError as exc:
            # wsproto reports framing errors as CloseConnection events; this is the
            # choke point for anything it raises instead.
            self._fail(1002, str(exc))
        return None

    def _add_fragment(self, data: bytes | bytearray, finished: bool) -> bytes | None:
        size = self._partial_size + len(data)
        limit = self._config.max_message_size
        if size > limit:
            self.close(1009, f"message larger than {limit} bytes")
            return None
        chunk = data if isinstance(data, bytes) else bytes(data)
        if finished and self._partial is None:
            return chunk
        if self._partial is None:
            self._partial = [chunk]
        else:
            self._partial.append(chunk)
        if not finished:
            self._partial_size = size
            return None
        message = b"".join(self._partial)
        self._partial = None
        self._partial_size = 0
        return message

    def _on_close_frame(self, event: CloseConnection) -> None:
        protocol_state = self._ws.state
        if protocol_state is ConnectionState.REMOTE_CLOSING:
            # The peer started the closing handshake: echo its code, then close.
            self.close_code = int(event.code)
            self.close_reason = event.reason or ""
            reply = self._ws.send(event.response())
            self._leave_open(_CLOSE_DONE)
            self._send_control(reply, force=True)
        elif protocol_state is ConnectionState.CLOSED:
            # The peer's answer to our close frame.
            self._state = _CLOSE_DONE
        else:
            # wsproto turns a frame it cannot parse into a CloseConnection event
            # without changing state: fail the connection (RFC 6455 §7.1.7).
            self._fail(int(event.code), event.reason or "")
        self._maybe_finish()

    def _fail(self, code: int, reason: str) -> None:
        """Send a close frame for a protocol failure and stop reading (no handshake wait)."""
        logger.debug("closing %s after protocol failure %d: %s", self.remote, code, reason)
        if self._state == _OPEN:
            if not _valid_close_code(code):
                code = 1002
            reason = _truncate_reason(reason)
            self.close_code = code
            self.close_reason = reason
            frame = self._ws.send(CloseConnection(code=code, reason=reason))
            self._leave_open(_CLOSE_DONE)
            self._send_control(frame, force=True)
        elif self._state == _LOCAL_CLOSING:
            self._state = _CLOSE_DONE
        self._maybe_finish()

    def _send_control(self, frame: bytes, *, force: bool = False) -> None:
        # A pong that does not fit is dropped: its peer is not reading anyway, and
        # letting pongs through would make the queue unbounded.
        try:
            self._write(frame, force=force)
        except SendQueueFull:
            return
        self._frames_out += 1

    # -- closing -------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; idempotent and non-blocking.

        Queues a close frame behind what is already queued (it may exceed
        ``max_outbound_bytes`` by its few bytes, so closing works on a full queue).
        From then on sends are ignored; ``receive`` discards incoming messages and
        returns None once the peer has answered. The socket is shut when the
        peer's close frame arrives, or ``close_timeout`` seconds after this call,
        whichever comes first.

        Args:
            code: 1000-1003, 1007-1013 or 3000-4999.
            reason: Sent truncated to 123 bytes of UTF-8 without splitting a
                character; ``close_reason`` holds the truncated text.

        Raises:
            ValueError: ``code`` may not be sent in a close frame.
        """
        if self._state != _OPEN:
            return
        if not _valid_close_code(code):
            raise ValueError(
                f"Expected a close code 1000-1003, 1007-1013 or 3000-4999, got {code!r}"
            )
        reason = _truncate_reason(reason)
        self.close_code = code
        self.close_reason = reason
        frame = self._ws.send(CloseConnection(code=code, reason=reason))
        self._leave_open(_LOCAL_CLOSING)
        self._send_control(frame, force=True)
        self._maybe_finish()

    def abort(self) -> None:
        """Drop the connection at once, without a close frame; idempotent.

        Queued data is discarded; ``close_code`` becomes 1006 unless a closing
        handshake had already set it.
        """
        if self._state == _CLOSED:
            return
        if self.close_code is None:
            self.close_code = _ABNORMAL_CLOSURE
        self._release()

    def _leave_open(self, state: int) -> None:
        self._state = state
        self._partial = None
        self._partial_size = 0
        # The close frame is queued next: waiting keyed frames would follow it.
        self._drop_ephemeral()
        self._config._start_close_timer(self)

    def _close_timed_out(self) -> None:
        """Called by the close timer: the handshake took longer than close_timeout."""
        if self._state != _CLOSED:
            logger.debug("closing handshake with %s timed out", self.remote)
            self._release()

    def _lost(self) -> None:
        """The socket failed or the peer went away: close without a handshake."""
        if self._state == _CLOSED:
            return
        if self.close_code is None:
            self.close_code = _ABNORMAL_CLOSURE
            self.close_reason = ""
        self._release()

    def _release(self) -> None:
        self._state = _CLOSED
        self._queue = None
        self._queued = 0
        self._drop_ephemeral()
        self._exempt = 0
        self._exempt_at = 0
        self._partial = None
        # Wakes a task blocked in receive() or in a flusher (ClosedResourceError).
        close_socket(self._sock)
        if self._drained is not None:
            self._drained.set()

    def _maybe_finish(self) -> None:
        """Release a plain socket once the handshake is over and the queue is drained.

        A TLS stream is closed by :func:`run_websocket` instead, which can await
        the close_notify.
        """
        if self._state != _CLOSE_DONE or self._queued or self._flushing:
            return
        if self._tls is None:
            self._release()
        elif self._drained is not None:
            self._drained.set()

    async def _finish(self) -> None:
        """Complete the closing handshake (bounded by close_timeout), then release the socket."""
        if self._state == _OPEN:
            self.close(_NORMAL_CLOSURE)
        try:
            # Reads (discarding messages) until the peer's close frame, EOF, or the
            # close timer dropping the connection.
            await self.receive()
            if self._state == _CLOSE_DONE and (self._queued or self._flushing):
                self._drained = trio.Event()
                await self._drained.wait()
            if self._state == _CLOSE_DONE and self._tls is not None:
                await self._tls.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("closing %s failed: %r", self.remote, exc)
        finally:
            self.abort()


WebSocketHandler = Callable[[WebSocketConnection], Awaitable[None]]


async def run_websocket(connection: WebSocketConnection, handler: WebSocketHandler) -> None:
    """Run ``handler`` on ``connection``, then complete the close and release the socket.

    Args:
        connection: A freshly upgraded connection.
        handler: The application's handler.

    Error handling: an exception from the handler is logged and the connection
    closed with 1011; it does not propagate. If the handler returns with the
    connection still open, it is closed with 1000. The closing handshake then
    runs for at most ``close_timeout``.

    Cancellation: the connection is aborted (no close frame) and ``Cancelled``
    propagates.
    """
    try:
        try:
            await handler(connection)
        except Exception:
            logger.exception("websocket handler failed for %s", connection.remote)
            connection.close(_INTERNAL_ERROR, "internal server error")
        await connection._finish()
    finally:
        connection.abort()
