"""Typed internal actor messages (frozen values), one section per receiving actor.

These never cross the wire: the wire events live in
``tether.transport.protocol.events``. Actors dispatch on the message type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.actors import ActorRef
    from tether.actors.outbox import Outbox


# -- to ConnectionActor -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """The reader task got one complete WebSocket message from the client."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The WebSocket is closed (by the peer, the network, or us); stop now."""

    code: int


@dataclass(frozen=True, slots=True)
class HeartbeatTick:
    """From the owning UserActor: ping the client, or close it if silent too long."""


@dataclass(frozen=True, slots=True)
class HelloDeadline:
    """Timer: the client had ``hello_timeout`` seconds to say hello."""


@dataclass(frozen=True, slots=True)
class Attached:
    """From the UserActor: the connection is counted in; send ``welcome``."""


@dataclass(frozen=True, slots=True)
class AttachRefused:
    """From the UserActor: the user is at ``max_connections_per_user``."""

    reason: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close this client with a disconnect code (operator kick, shutdown, drain)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class AutoWatch:
    """These users now share a small room with this connection's user: watch them."""

    users: tuple[str, ...]


# -- to UserActor -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attach:
    """A connection of this user finished ``hello``: count it in.

    Answered with :class:`Attached` or :class:`AttachRefused` to ``connection``.
    """

    connection: ActorRef[Any]
    conn_id: int
    device: str
    name: str
    outbox: Outbox
    #: The connection this one replaces (a resumed session's stale one, being
    #: closed): it does not count against the per-user limit.
    replaces: int | None = None


@dataclass(frozen=True, slots=True)
class Detach:
    """A connection of this user is gone; ``deliberate`` when it said ``bye``."""

    conn_id: int
    deliberate: bool = False


@dataclass(frozen=True, slots=True)
class SetIdle:
    """A device reported itself idle or active (``presence.set``)."""

    conn_id: int
    idle: bool


@dataclass(frozen=True, slots=True)
class Watch:
    """Subscribe a connection to this user's presence (ask: returns the snapshot)."""

    conn_id: int
    outbox: Outbox


@dataclass(frozen=True, slots=True)
class Unwatch:
    """Remove a connection's presence subscription (idempotent)."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class UserTick:
    """Timer: the user's heartbeat round (ping every connection)."""


@dataclass(frozen=True, slots=True)
class GraceExpired:
    """Timer: the offline grace period that started at ``epoch`` ended."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Retire:
    """Self-message: nothing left to track, stop once earlier mail is handled."""


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    """Ask: the user's current published snapshot."""


__all__ = [
    "Attach",
    "AttachRefused",
    "Attached",
    "AutoWatch",
    "CloseConnection",
    "Detach",
    "GraceExpired",
    "HeartbeatTick",
    "HelloDeadline",
    "PeerClosed",
    "PresenceQuery",
    "Received",
    "Retire",
    "SetIdle",
    "Unwatch",
    "UserTick",
    "Watch",
]
