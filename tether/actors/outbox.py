"""The outbound side of one client connection, as other actors see it.

Fan-out (presence now, rooms later) encodes a frame once and pushes the same
bytes into many outboxes (P12). A push is synchronous and never awaits: it
writes through to the socket, or queues within the connection's byte bound.
When the bound is hit the connection is closed as a slow consumer (close code
3001, the client reconnects and resumes) instead of buffering without limit or
slowing the sender down (P7).

Outboxes are used only on the trio thread (every actor runs there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tether.transport.websocket import SendQueueFull


class FrameSink(Protocol):
    """What an outbox writes to (a ``tether.transport.websocket.WebSocketConnection``)."""

    @property
    def closed(self) -> bool: ...

    def send_frame(self, frame: bytes) -> None: ...


class Outbox:
    """Push pre-encoded frames to one connection.

    Args:
        conn_id: the connection's server-wide id.
        sink: the WebSocket to write to.
        on_overflow: called once when a push finds the outbound queue full;
            it must close the connection (the outbox stops accepting frames).
        owner: the ref of the connection actor that owns the outbox.
    """

    __slots__ = ("_on_overflow", "_sink", "conn_id", "overflowed", "owner", "pushed")

    def __init__(
        self,
        conn_id: int,
        sink: FrameSink,
        on_overflow: Callable[[], None],
        owner: Any = None,
    ) -> None:
        self.conn_id = conn_id
        #: The ConnectionActor's ref, for actors that found this outbox in the
        #: OnlineIndex and need to tell the connection something.
        self.owner = owner
        self._sink = sink
        self._on_overflow = on_overflow
        self.overflowed = False
        self.pushed = 0

    def push(self, frame: bytes) -> bool:
        """Send ``frame``; False if the connection is closed or just overflowed."""
        if self.overflowed or self._sink.closed:
            return False
        try:
            self._sink.send_frame(frame)
        except SendQueueFull:
            self.overflowed = True
            self._on_overflow()
            return False
        self.pushed += 1
        return True

    def __repr__(self) -> str:
        return f"<Outbox conn={self.conn_id} pushed={self.pushed}>"
