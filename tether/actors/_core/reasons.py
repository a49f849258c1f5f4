"""Why an actor stopped (P8): logged at stop, kept in statistics, shown in the console."""

from __future__ import annotations

import enum

__all__ = ["StopReason"]


class StopReason(enum.Enum):
    """The reason an actor stopped.

    The runtime itself uses ``NORMAL`` (``ref.stop()``/``self.stop()`` without a reason),
    ``SHUTDOWN`` (the actor system is closing), ``FAILURE`` (an exception escaped a tell
    handler, ``on_start`` or ``on_child_stopped``) and ``PARENT_STOPPED`` (the parent
    stopped, so its children were stopped first). The others are chosen by the code that
    stops an actor; their values are short, stable, lower-case names that fit in a
    WebSocket close reason.
    """

    NORMAL = "normal"
    CLIENT_LEFT = "client_left"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    DUPLICATE_SESSION = "duplicate_session"
    IDLE = "idle"
    ROOM_CLOSED = "room_closed"
    SHUTDOWN = "shutdown"
    FAILURE = "failure"
    PARENT_STOPPED = "parent_stopped"
    KICKED = "kicked"
    SLOW_CONSUMER = "slow_consumer"
    PROTOCOL_ERROR = "protocol_error"
    AUTH_FAILED = "auth_failed"
    RESTART = "restart"
