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

from collections.abc import Callable, Hashable
from typing import Any, Protocol

from tether.transport.websocket import SendQueueFull


class FrameSink(Protocol):
    """What an outbox writes to (a ``tether.transport.websocket.WebSocketConnection``)."""

    @property
    def closed(self) -> bool: ...

    def send_frame(self, frame: bytes, *, key: Hashable | None = None) -> None: ...


class _Held:
    """Frames of one room kept back while that room prepares a resume replay."""

    __slots__ = ("frames", "size")

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, int]] = []  # (frame, highest message seq in it or 0)
        self.size = 0


# Replays are written in pieces of about this size, so that a long replay
# queues behind the socket like any other traffic instead of being refused as
# one frame larger than the outbound bound.
_RELEASE_CHUNK = 256 << 10


class Outbox:
    """Push pre-encoded frames to one connection.

    Args:
        conn_id: the connection's server-wide id.
        sink: the WebSocket to write to.
        on_overflow: called once when a push finds the outbound queue full;
            it must close the connection (the outbox stops accepting frames).
        owner: the ref of the connection actor that owns the outbox.
        max_held_bytes: bound of all frames kept back for resuming rooms; past
            it the connection overflows like a full queue.

    Resume (see ``docs/protocol.md``): :meth:`hold` a room before the
    connection is registered for pushes, and the room's pushes are kept back
    until the room calls :meth:`release` with its replay. Message frames at or
    below the replay's head are dropped then (the replay has them), everything
    else follows the replay in order, so the client sees no gap and no
    duplicate at the seam.
    """

    __slots__ = (
        "_held",
        "_held_size",
        "_max_held",
        "_on_overflow",
        "_sink",
        "conn_id",
        "overflowed",
        "owner",
        "pushed",
    )

    def __init__(
        self,
        conn_id: int,
        sink: FrameSink,
        on_overflow: Callable[[], None],
        owner: Any = None,
        *,
        max_held_bytes: int = 4 << 20,
    ) -> None:
        self.conn_id = conn_id
        #: The ConnectionActor's ref, for actors that found this outbox in the
        #: OnlineIndex and need to tell the connection something.
        self.owner = owner
        self._sink = sink
        self._on_overflow = on_overflow
        self._held: dict[str, _Held] | None = None
        self._held_size = 0
        self._max_held = max_held_bytes
        self.overflowed = False
        self.pushed = 0

    def push(
        self, frame: bytes, *, room: str | None = None, seq: int = 0, key: Hashable | None = None
    ) -> bool:
        """Send ``frame``; False if the connection is closed or just overflowed.

        Args:
            frame: one or more encoded frames.
            room: the room the frame is about, if any (it may be held, see
                :meth:`hold`).
            seq: the highest message seq in ``frame`` if it carries ``msg``
                frames, else 0.
            key: for ephemeral updates (typing, presence): while the socket is
                backed up, a newer frame with the same key replaces this one
                (last write wins) instead of queueing behind it.
        """
        if self.overflowed or self._sink.closed:
            return False
        if room is not None and self._held is not None:
            held = self._held.get(room)
            if held is not None:
                return self._keep(held, frame, seq)
        try:
            if key is None:
                self._sink.send_frame(frame)
            else:
                self._sink.send_frame(frame, key=key)
        except SendQueueFull:
            self._overflow()
            return False
        self.pushed += 1
        return True

    def _keep(self, held: _Held, frame: bytes, seq: int) -> bool:
        self._held_size += len(frame)
        if self._held_size > self._max_held:
            self._overflow()
            return False
        held.size += len(frame)
        held.frames.append((frame, seq))
        return True

    def _overflow(self) -> None:
        self.overflowed = True
        self._held = None
        self._on_overflow()

    # -- resume -------------------------------------------------------------------
    def hold(self, room: str) -> None:
        """Keep ``room``'s pushes back until :meth:`release` (idempotent)."""
        if self._held is None:
            self._held = {}
        self._held.setdefault(room, _Held())

    @property
    def holding(self) -> tuple[str, ...]:
        """The rooms whose pushes are being held."""
        return tuple(self._held) if self._held else ()

    def release(self, room: str, replay: list[bytes], head: int) -> bool:
        """Send ``replay`` (which ends with the ``recovered`` frame), then what was held.

        Held message frames whose seq is at or below ``head`` are dropped: the
        replay covers them (or the client pages history for them).

        Returns:
            False if the connection is closed or overflowed (nothing sent), or
            ``room`` was not held.
        """
        held = self._held.pop(room, None) if self._held is not None else None
        if held is None:
            return False
        self._held_size -= held.size
        if not self._held:
            self._held = None
        frames = [*replay, *(f for f, seq in held.frames if seq == 0 or seq > head)]
        chunk: list[bytes] = []
        size = 0
        for frame in frames:
            chunk.append(frame)
            size += len(frame)
            if size >= _RELEASE_CHUNK:
                if not self.push(b"".join(chunk)):
                    return False
                chunk, size = [], 0
        return not chunk or self.push(b"".join(chunk))

    def __repr__(self) -> str:
        return f"<Outbox conn={self.conn_id} pushed={self.pushed}>"
