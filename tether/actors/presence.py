"""Pure presence state of one user: devices, idle flags, grace period, last seen.

No trio and no I/O here: :class:`PresenceState` is a plain state machine that the
:class:`~tether.actors.user.UserActor` drives and whose timers the actor owns
(P11 in STYLE.md). Every mutating method returns the snapshot that must be
announced to subscribers, or ``None`` when nothing observable changed.

Semantics (also in ``docs/presence.md``):

* A user is *online* while at least one connection is alive. ``devices`` counts
  distinct device ids with at least one live connection (two tabs sharing a
  device id are one device).
* When the last connection goes, nothing is announced at once: the user enters a
  grace period. A reconnect inside it produces no event at all (no flapping).
  When the grace period expires the user is announced *offline*.
* A deliberate leave (the client said ``bye``) of the last device skips the
  grace period.
* *away* when every device with a live connection reported idle.
* ``last_seen`` is the time (ms since the epoch) the user was last connected:
  updated when the last connection goes and when the user is announced offline.
* While in the grace period the published view is frozen; device-count changes
  are announced only once the view settles (a reconnect or the expiry).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    """Presence status as sent on the wire (``presence`` frame, ``status`` field)."""

    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """What subscribers see of a user.

    Attributes:
        user: the user id.
        status: online, away or offline.
        devices: distinct devices with a live connection (0 when offline).
        last_seen_ms: ms since the epoch when the user was last connected, or
            ``None`` if never seen (or currently connected and never gone).
    """

    user: str
    status: Status
    devices: int
    last_seen_ms: int | None

    def to_wire(self) -> dict[str, object]:
        """The map used in ``presence`` frames and subscription replies."""
        return {
            "user": self.user,
            "status": self.status.value,
            "devices": self.devices,
            "last_seen": self.last_seen_ms,
        }


@dataclass(slots=True)
class _Connection:
    device: str
    idle: bool = False


@dataclass(slots=True)
class PresenceState:
    """Presence bookkeeping for one user (see the module docstring).

    Args:
        user: the user id.
        last_seen_ms: last-seen time loaded from storage, if any.
    """

    user: str
    last_seen_ms: int | None = None
    _connections: dict[int, _Connection] = field(default_factory=dict)
    _in_grace: bool = False
    _published: PresenceSnapshot | None = None

    # -- queries ---------------------------------------------------------
    @property
    def connection_count(self) -> int:
        """Live connections (tabs included)."""
        return len(self._connections)

    @property
    def in_grace(self) -> bool:
        """True while the last connection is gone and offline is not yet announced."""
        return self._in_grace

    @property
    def published(self) -> PresenceSnapshot:
        """The view subscribers currently hold (what a new subscriber is sent)."""
        if self._published is None:
            return self._compute()
        return self._published

    def has_connection(self, conn_id: int) -> bool:
        """Whether ``conn_id`` is a live connection of this user."""
        return conn_id in self._connections

    def devices(self) -> int:
        """Distinct devices with at least one live connection."""
        return len({c.device for c in self._connections.values()})

    # -- transitions -----------------------------------------------------
    def connect(self, conn_id: int, device: str) -> PresenceSnapshot | None:
        """A connection of ``device`` became live.

        Raises:
            ValueError: if ``conn_id`` is already live (a caller bug).
        """
        if conn_id in self._connections:
            raise ValueError(f"Expected a new connection id, got live {conn_id!r}")
        self._connections[conn_id] = _Connection(device)
        self._in_grace = False
        return self._publish_if_changed()

    def disconnect(
        self, conn_id: int, now_ms: int, *, deliberate: bool = False
    ) -> PresenceSnapshot | None:
        """A connection went away (closed, timed out, or left with ``bye``).

        When it was the last one, ``last_seen`` becomes ``now_ms`` and the
        grace period starts, unless ``deliberate`` (then offline is announced
        at once). Unknown ids are ignored (idempotent).
        """
        if self._connections.pop(conn_id, None) is None:
            return None
        if self._connections:
            return self._publish_if_changed()
        self.last_seen_ms = now_ms
        if deliberate:
            self._in_grace = False
            return self._publish_if_changed()
        self._in_grace = True
        return None

    def grace_expired(self, now_ms: int) -> PresenceSnapshot | None:
        """The grace period ended: announce offline if still without connections."""
        if not self._in_grace:
            return None
        self._in_grace = False
        if self._connections:  # pragma: no cover - connect() clears the grace flag
            return self._publish_if_changed()
        if self.last_seen_ms is None:
            self.last_seen_ms = now_ms
        return self._publish_if_changed()

    def presume_online(self, devices: int, now_ms: int) -> None:
        """Start as if the user's connections had just dropped (server restart).

        Subscribers see the user online with ``devices`` devices; a reconnect
        within the grace period changes nothing visible, its end announces
        offline with ``last_seen`` = ``now_ms`` (the restart).
        """
        if self._connections:
            return
        self.last_seen_ms = now_ms
        self._published = PresenceSnapshot(self.user, Status.ONLINE, max(1, devices), now_ms)
        self._in_grace = True

    def set_idle(self, conn_id: int, idle: bool) -> PresenceSnapshot | None:
        """A device reported itself idle (``True``) or active (``False``)."""
        conn = self._connections.get(conn_id)
        if conn is None or conn.idle == idle:
            return None
        conn.idle = idle
        return self._publish_if_changed()

    # -- internals -------------------------------------------------------
    def _compute(self) -> PresenceSnapshot:
        if not self._connections:
            return PresenceSnapshot(self.user, Status.OFFLINE, 0, self.last_seen_ms)
        all_idle = all(c.idle for c in self._connections.values())
        status = Status.AWAY if all_idle else Status.ONLINE
        return PresenceSnapshot(self.user, status, self.devices(), self.last_seen_ms)

    def _publish_if_changed(self) -> PresenceSnapshot | None:
        if self._in_grace:
            return None
        snapshot = self._compute()
        previous = self._published
        if previous is not None and (previous.status, previous.devices) == (
            snapshot.status,
            snapshot.devices,
        ):
            # last_seen alone changing while online is not worth an event.
            self._published = snapshot
            return None
        self._published = snapshot
        return snapshot
