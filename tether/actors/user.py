"""UserActor: one per user with live connections or presence watchers.

A user is not a socket. This actor owns the user's connections (count and
per-connection state), drives their heartbeats with one timer per user (not
per connection), runs the offline grace timer, and announces presence changes
computed by the pure :class:`~tether.actors.presence.PresenceState` to the
connections watching this user. Frames are encoded once per announcement and
the same bytes go to every watcher (P12).

It stops by itself (StopReason.IDLE) once the user is offline and nobody
watches: see :meth:`UserActor._maybe_retire` for how that never loses a
message that raced with the decision.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import trio

from tether.actors import Actor, ActorDeadError, ActorRef, MailboxFull, StopReason, TimerHandle
from tether.actors.context import ServerContext
from tether.actors.messages import (
    Attach,
    Attached,
    AttachRefused,
    Detach,
    GraceExpired,
    HeartbeatTick,
    PresenceQuery,
    Retire,
    SetIdle,
    Unwatch,
    UserTick,
    Watch,
)
from tether.actors.outbox import Outbox
from tether.actors.presence import PresenceSnapshot, PresenceState
from tether.transport.protocol import codec
from tether.transport.protocol.events import Presence
from tether.transport.websocket import encode_frame

log = logging.getLogger("tether.user")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _LiveConnection:
    ref: ActorRef[Any]
    outbox: Outbox
    device: str


class UserActor(Actor):
    """Presence and connections of one user (see the module docstring).

    Args:
        ctx: the server context.
        user_id: whose actor this is.
    """

    kind = "user"
    mailbox_size = 4096

    def __init__(self, ctx: ServerContext, user_id: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.user_id = user_id
        self.state = PresenceState(user_id)
        self.connections: dict[int, _LiveConnection] = {}
        self.watchers: dict[int, Outbox] = {}
        self._tick: TimerHandle | None = None
        self._grace: TimerHandle | None = None
        self._grace_epoch = 0
        self._retiring = False
        self._known_name: str | None = None
        # The grace period started at boot for a user presumed online (its
        # last_seen, the restart, is not in storage yet); None otherwise.
        self._presumed_epoch: int | None = None

    # -- pykka hooks ----------------------------------------------------------
    async def on_start(self) -> None:  # type: ignore[override]  # async hooks are ours
        """Load ``last_seen``; runs in a temporary task before any message."""
        devices = self.ctx.presumed_online.pop(self.user_id, None)
        if devices is not None:
            # Online when the server went down: in grace until they are back.
            elapsed = trio.current_time() - self.ctx.started_at
            remaining = max(0.0, self.ctx.config.offline_grace - elapsed)
            self.state.presume_online(devices, self.ctx.started_at_ms)
            self._grace_epoch += 1
            self._presumed_epoch = self._grace_epoch
            self._grace = self.call_later(remaining, GraceExpired(self._grace_epoch))
            return
        pending = self.ctx.presence_writer.pending_last_seen(self.user_id)
        if pending is not None:
            self.state.last_seen_ms = pending
            return
        try:
            found = await self.ctx.store.get_last_seen([self.user_id])
        except Exception as exc:  # storage down: presence still works, last_seen unknown
            log.warning("user %s: last_seen not loaded: %r", self.user_id, exc)
            return
        if self.state.last_seen_ms is None:
            self.state.last_seen_ms = found.get(self.user_id)

    def on_receive(self, message: Any) -> Any:
        """Dispatch by message type."""
        if (
            self._retiring
            and not isinstance(message, Retire | Detach | Unwatch)
            and self._forward_if_replaced(message)
        ):
            return self.state.published if isinstance(message, Watch) else None
        match message:
            case Attach():
                self._on_attach(message)
            case Detach():
                self._on_detach(message)
            case SetIdle():
                self._announce(self.state.set_idle(message.conn_id, message.idle))
            case Watch():
                self.watchers[message.conn_id] = message.outbox
                return self.state.published
            case Unwatch():
                self.watchers.pop(message.conn_id, None)
                self._maybe_retire()
            case UserTick():
                self._on_tick()
            case GraceExpired():
                self._on_grace_expired(message)
            case PresenceQuery():
                return self.state.published
            case Retire():
                if self._retiring:
                    self.stop(reason=StopReason.IDLE)
            case _:
                raise TypeError(f"Expected a user message, got {message!r}")
        return None

    def on_stop(self) -> None:
        """Drop the directory entry (if still ours); timers die with the actor."""
        self.ctx.users.remove(self.user_id, self.ref)
        if self.stop_reason is StopReason.SHUTDOWN and self.connections:
            # The server is going down: this is the last moment we saw them.
            self.ctx.presence_writer.note_last_seen(self.user_id, _now_ms())

    # -- connections ----------------------------------------------------------
    def _on_attach(self, msg: Attach) -> None:
        limit = self.ctx.config.max_connections_per_user
        # A resumed session's stale connection is on its way out: not counted.
        live = len(self.connections) - (msg.replaces in self.connections)
        if live >= limit:
            self._tell(msg.connection, AttachRefused(f"at most {limit} connections per user"))
            return
        self.connections[msg.conn_id] = _LiveConnection(msg.connection, msg.outbox, msg.device)
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self._tick is None:
            self._arm_tick()
        if msg.name != self._known_name:
            self._known_name = msg.name
            self.ctx.presence_writer.note_user(self.user_id, msg.name)
        self._tell(msg.connection, Attached())
        self._announce(self.state.connect(msg.conn_id, msg.device))
        self.ctx.presence_writer.note_online(self.user_id, self.state.devices())

    def _on_detach(self, msg: Detach) -> None:
        if self.connections.pop(msg.conn_id, None) is None:
            return
        now_ms = _now_ms()
        snapshot = self.state.disconnect(msg.conn_id, now_ms, deliberate=msg.deliberate)
        if not self.connections:
            if self._tick is not None:
                self._tick.cancel()
                self._tick = None
            self.ctx.presence_writer.note_last_seen(self.user_id, now_ms)
            if self.state.in_grace:
                self._grace_epoch += 1
                self._grace = self.call_later(
                    self.ctx.config.offline_grace, GraceExpired(self._grace_epoch)
                )
        if self.connections:
            self.ctx.presence_writer.note_online(self.user_id, self.state.devices())
        elif not self.state.in_grace:  # bye: offline at once
            self.ctx.presence_writer.note_online(self.user_id, 0)
        self._announce(snapshot)
        self._maybe_retire()

    def _on_grace_expired(self, msg: GraceExpired) -> None:
        if msg.epoch != self._grace_epoch:
            return  # a reconnect cancelled that grace period
        self._grace = None
        snapshot = self.state.grace_expired(_now_ms())
        if snapshot is not None and not self.connections:
            self.ctx.presence_writer.note_online(self.user_id, 0)
            # A normal grace's last_seen was written when the last connection
            # went (_on_detach); only the boot-time grace has one to write.
            if msg.epoch == self._presumed_epoch and self.state.last_seen_ms is not None:
                self.ctx.presence_writer.note_last_seen(self.user_id, self.state.last_seen_ms)
        self._announce(snapshot)
        self._maybe_retire()

    def _on_tick(self) -> None:
        self._tick = None
        if not self.connections:
            return
        tick = HeartbeatTick()
        for conn in list(self.connections.values()):
            self._tell(conn.ref, tick)
        self._arm_tick()

    def _arm_tick(self) -> None:
        # Jitter spreads the pings of users who connected at the same moment
        # (say, after a restart) instead of pinging them all in one burst.
        interval = self.ctx.config.heartbeat_interval * random.uniform(0.9, 1.0)
        self._tick = self.call_later(interval, UserTick())

    # -- presence -------------------------------------------------------------
    def _announce(self, snapshot: PresenceSnapshot | None) -> None:
        if snapshot is None:
            return
        plugins = self.ctx.plugins
        if plugins is not None:
            plugins.presence_changed(snapshot)
        if not self.watchers:
            return
        frame = encode_frame(codec.encode(Presence.from_snapshot(snapshot)))
        self.ctx.counters.presence_events += 1
        # Last write wins per user: a slow reader gets the current state, not
        # every change it missed.
        key = ("presence", self.user_id)
        for outbox in list(self.watchers.values()):
            outbox.push(frame, key=key)

    def _maybe_retire(self) -> None:
        """Stop once offline, settled and unwatched.

        The directory entry is dropped in this same handler, so later lookups
        start a fresh actor; ``Retire`` goes through the mailbox, so anything
        already queued before the decision is still handled here (and handed to
        the successor if one exists by then, see ``_forward_if_replaced``).
        """
        if self.connections or self.watchers or self.state.in_grace or self._retiring:
            return
        self._retiring = True
        self.ctx.users.remove(self.user_id, self.ref)
        self._tell(self.ref, Retire())

    def _forward_if_replaced(self, message: Any) -> bool:
        """A message arrived after the decision to retire: keep it.

        If no successor exists, this actor takes its directory entry back and
        carries on; otherwise the message goes to the successor.
        """
        successor = self.ctx.users.get(self.user_id)
        if successor is None:
            self._retiring = False
            self.ctx.users.adopt(self.user_id, self.ref)
            return False
        self._tell(successor, message)
        return True

    def _tell(self, ref: ActorRef[Any], message: Any) -> None:
        try:
            ref.tell(message)
        except (ActorDeadError, MailboxFull) as exc:
            # A dead connection detaches itself; a full one is busy and its
            # own liveness clock still closes it if it stays silent.
            log.debug("user %s: %r dropped: %r", self.user_id, message, exc)

    # -- console ------------------------------------------------------------
    def state_summary(self) -> str:
        """One line for the console's actor list."""
        snap = self.state.published
        return (
            f"{snap.status}, {len(self.connections)} connections, {len(self.watchers)} watchers"
            + (", in grace" if self.state.in_grace else "")
        )

    def inspect(self) -> dict[str, Any]:
        """Console detail (runs in the actor: trio thread)."""
        snap = self.state.published
        # Read-only look at the presence state's per-connection idle flags.
        flags = {conn_id: c.idle for conn_id, c in self.state._connections.items()}
        return {
            "user": self.user_id,
            "connections": [
                {
                    "conn_id": conn_id,
                    "device": live.device,
                    "idle": flags.get(conn_id),
                    "urn": live.ref.actor_urn,
                }
                for conn_id, live in self.connections.items()
            ],
            "presence": {
                "status": str(snap.status),
                "devices": snap.devices,
                "last_seen_ms": snap.last_seen_ms,
                "in_grace": self.state.in_grace,
            },
            "watchers": len(self.watchers),
            "retiring": self._retiring,
        }
