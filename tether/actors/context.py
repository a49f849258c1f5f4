"""What every server-side actor shares: settings, the actor system, directories."""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from tether.actors.sessions import SessionRegistry
from tether.config import ServerConfig
from tether.metrics import FANOUT_SECONDS_BUCKETS, Histogram
from tether.transport.auth import TokenVerifier
from tether.transport.protocol.connection import Limits

if TYPE_CHECKING:
    from tether.actors import ActorRef, ActorSystem
    from tether.actors.outbox import Outbox
    from tether.media.pool import MediaPool
    from tether.plugins.host import PluginHost
    from tether.storage.interfaces import Store

log = logging.getLogger("tether.actors")


class PresenceStore(Protocol):
    """The storage a UserActor needs (``tether.storage`` stores satisfy it)."""

    async def upsert_user(self, user_id: str, name: str) -> object: ...

    async def touch_last_seen(self, user_id: str, ts_ms: int) -> None: ...

    async def get_last_seen(self, user_ids: list[str]) -> dict[str, int | None]: ...

    async def set_online(self, user_id: str, devices: int) -> None: ...


@dataclass(slots=True)
class Counters:
    """Server-wide counters for ``/metrics`` and the console."""

    connections_opened: int = 0
    connections_closed: int = 0
    frames_in: int = 0
    frames_out: int = 0
    protocol_errors: int = 0
    slow_consumers: int = 0
    heartbeat_timeouts: int = 0
    auth_failures: int = 0
    presence_events: int = 0
    messages_in: int = 0
    messages_out: int = 0
    #: Sessions resumed (``welcome.resumed`` true) and rooms resumed.
    sessions_resumed: int = 0
    rooms_resumed: int = 0
    #: Messages replayed to resuming connections.
    replayed_messages: int = 0
    #: Plugin crashes (each plugin is restarted with backoff; never fatal).
    plugin_failures: int = 0
    #: Call participants now (a gauge kept by the CallActors), participants
    #: who joined since start, and calls moved to a fresh router (worker lost).
    call_participants: int = 0
    call_joins: int = 0
    call_restarts: int = 0
    #: Seconds from a message's commit result reaching its RoomActor to its
    #: push into the members' outboxes (``tether_fanout_latency_seconds``).
    fanout_seconds: Histogram = field(default_factory=lambda: Histogram(FANOUT_SECONDS_BUCKETS))


class ActorDirectory:
    """key → the live actor for it (users by id, rooms by id); spawns on demand.

    Trio thread only. An actor that decides to stop removes itself here first,
    in the same handler; a lookup after that spawns a fresh actor, so no
    message is ever sent to an actor that already decided to go (and a
    retiring actor that still gets work can ``adopt`` its entry back).

    Args:
        actor_class: ``"module:Class"`` of the actor, imported on first use
            (the actor modules import this one); it is started with
            ``(ctx, key)``.
    """

    __slots__ = ("_actor_class", "_actor_path", "_ctx", "_refs")

    def __init__(self, actor_class: str) -> None:
        self._actor_path = actor_class
        self._actor_class: Any = None
        self._refs: dict[str, ActorRef[Any]] = {}
        self._ctx: ServerContext | None = None

    def bind(self, ctx: ServerContext) -> None:
        """Attach the context actors are started with (once, at server start)."""
        self._ctx = ctx

    def get(self, key: str) -> ActorRef[Any] | None:
        """The live actor for ``key``, if any."""
        return self._refs.get(key)

    def get_or_spawn(self, key: str) -> ActorRef[Any]:
        """The live actor for ``key``, started if needed."""
        ref = self._refs.get(key)
        if ref is not None:
            return ref
        if self._ctx is None:
            raise RuntimeError(f"{self!r}.bind() was not called")
        if self._actor_class is None:
            module, _, name = self._actor_path.partition(":")
            self._actor_class = getattr(importlib.import_module(module), name)
        ref = self._ctx.system.spawn(self._actor_class, self._ctx, key)
        self._refs[key] = ref
        return ref

    def adopt(self, key: str, ref: ActorRef[Any]) -> None:
        """Make ``ref`` the entry again (a retiring actor that got new work)."""
        self._refs.setdefault(key, ref)

    def remove(self, key: str, ref: ActorRef[Any]) -> None:
        """Forget ``ref`` if it is still the entry for ``key``."""
        if self._refs.get(key) == ref:
            del self._refs[key]

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"<ActorDirectory of {self._actor_path}: {len(self._refs)} live>"


class PresenceWriter:
    """Persists users and ``last_seen`` in the background, coalesced per user.

    Presence changes must never wait on the database, and a burst (a thousand
    users dropping at once) must not turn into a thousand queued writes: the
    newest value per user is kept in a dict (bounded by the number of users)
    and flushed by one task, concurrently so that storage group-commits them.
    If storage fails the values are kept and retried with backoff.
    """

    #: Concurrent writes per flush round (group commit merges them).
    batch = 256

    def __init__(self, store: PresenceStore, *, interval: float = 0.5) -> None:
        self._store = store
        self._interval = interval
        self._last_seen: dict[str, int] = {}
        self._users: dict[str, str] = {}
        self._online: dict[str, int] = {}
        self._wake = trio.Event()
        self.flushed = 0
        self.failures = 0

    def note_last_seen(self, user_id: str, ts_ms: int) -> None:
        """Record that ``user_id`` was last connected at ``ts_ms``."""
        self._last_seen[user_id] = max(ts_ms, self._last_seen.get(user_id, 0))
        self._wake.set()

    def note_user(self, user_id: str, name: str) -> None:
        """Record that ``user_id`` exists with display name ``name``."""
        self._users[user_id] = name
        self._wake.set()

    def note_online(self, user_id: str, devices: int) -> None:
        """Record how many devices of ``user_id`` are online (0: announced offline).

        Persisted so that after a restart or a crash the server knows who was
        online and keeps them so for a grace period (no presence flap).
        """
        self._online[user_id] = devices
        self._wake.set()

    def pending_last_seen(self, user_id: str) -> int | None:
        """A ``last_seen`` not yet written (newer than what storage has)."""
        return self._last_seen.get(user_id)

    @property
    def pending(self) -> int:
        """Values waiting to be written."""
        return len(self._last_seen) + len(self._users) + len(self._online)

    async def run(self) -> None:
        """Flush forever (cancel to stop; call :meth:`flush` afterwards).

        Cancellation: the wait between rounds is the checkpoint; values taken
        for a round that is cancelled are put back.
        """
        backoff = self._interval
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(self._interval)  # let a burst coalesce
            try:
                await self.flush()
            except Exception as exc:
                self.failures += 1
                log.warning("presence writer: storage failed, retrying: %r", exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._wake.set()
            else:
                backoff = self._interval

    async def flush(self) -> None:
        """Write everything pending now.

        Raises:
            Exception: whatever storage raised; the unwritten values are kept.
        """
        users, self._users = self._users, {}
        seen, self._last_seen = self._last_seen, {}
        online, self._online = self._online, {}
        try:
            await self._write_all(self._store.upsert_user, list(users.items()))
            await self._write_all(self._store.touch_last_seen, list(seen.items()))
            await self._write_all(self._store.set_online, list(online.items()))
        except BaseException:
            for user_id, name in users.items():
                self._users.setdefault(user_id, name)
            for user_id, ts in seen.items():
                self.note_last_seen(user_id, ts)
            for user_id, devices in online.items():
                self._online.setdefault(user_id, devices)
            raise
        self.flushed += len(users) + len(seen) + len(online)

    async def _write_all(
        self, write: Callable[[str, Any], Awaitable[object]], items: list[tuple[str, Any]]
    ) -> None:
        for start in range(0, len(items), self.batch):
            async with trio.open_nursery() as nursery:
                for key, value in items[start : start + self.batch]:
                    nursery.start_soon(write, key, value)


class OnlineIndex:
    """user id → the outboxes of that user's welcomed connections (trio thread only).

    Rooms fan out to every member's devices; looking the outboxes up here,
    synchronously, spares a hop through each member's UserActor per message
    (the role phoenix gives its Registry). Only ConnectionActors write it: a
    connection is added right after its ``welcome`` is sent (so no push can
    overtake the welcome) and removed when it stops.
    """

    __slots__ = ("_by_user",)

    def __init__(self) -> None:
        self._by_user: dict[str, dict[int, Outbox]] = {}

    def add(self, user_id: str, conn_id: int, outbox: Outbox) -> None:
        """Register a welcomed connection."""
        self._by_user.setdefault(user_id, {})[conn_id] = outbox

    def remove(self, user_id: str, conn_id: int) -> None:
        """Forget a connection (idempotent)."""
        conns = self._by_user.get(user_id)
        if conns is not None:
            conns.pop(conn_id, None)
            if not conns:
                del self._by_user[user_id]

    def outboxes(self, user_id: str) -> Iterable[Outbox]:
        """The user's live outboxes (a snapshot is not taken: do not await while iterating)."""
        conns = self._by_user.get(user_id)
        return conns.values() if conns else ()

    def push(
        self,
        users: Iterable[str],
        frame: bytes,
        *,
        exclude: int | None = None,
        room: str | None = None,
        seq: int = 0,
        key: Hashable | None = None,
    ) -> int:
        """Push ``frame`` to every connection of ``users`` except conn ``exclude``.

        ``room``, ``seq`` and ``key`` are passed to :meth:`Outbox.push` (resume
        holds and ephemeral coalescing).

        Iterates the live dicts without copying (this is the fan-out hot
        path): a push never changes the index synchronously, since a
        connection leaves it only in its own ``on_stop``.

        Returns:
            How many connections took the frame.
        """
        sent = 0
        by_user = self._by_user
        for user_id in users:
            conns = by_user.get(user_id)
            if not conns:
                continue
            for conn_id, outbox in conns.items():
                if conn_id != exclude and outbox.push(frame, room=room, seq=seq, key=key):
                    sent += 1
        return sent

    def push_batch(
        self,
        users: Iterable[str],
        frames: list[bytes],
        origins: list[int | None],
        *,
        room: str | None = None,
        seq: int = 0,
    ) -> int:
        """Push several frames as one write per connection (``frames[i]`` came from
        connection ``origins[i]``, which does not get that frame back).

        ``seq`` is the highest message seq among the frames (see :meth:`push`).

        Returns:
            How many frame deliveries were made.
        """
        joined = b"".join(frames)
        senders = {o for o in origins if o is not None}
        delivered = 0
        by_user = self._by_user
        for user_id in users:
            conns = by_user.get(user_id)
            if not conns:
                continue
            for conn_id, outbox in conns.items():
                if conn_id in senders:
                    own = [f for f, o in zip(frames, origins, strict=True) if o != conn_id]
                    if own and outbox.push(b"".join(own), room=room, seq=seq):
                        delivered += len(own)
                elif outbox.push(joined, room=room, seq=seq):
                    delivered += len(frames)
        return delivered

    def introduce(self, members: Iterable[str], newcomers: Iterable[str], max_members: int) -> None:
        """Newcomers joined a room of ``members`` (newcomers included): if the
        room is small enough, their online connections and the members' start
        watching each other's presence (see ``presence_auto_subscribe_max_members``).
        """
        from tether.actors.messages import AutoWatch  # noqa: PLC0415 - messages imports us

        everyone = list(dict.fromkeys(members))
        fresh = set(newcomers)
        if not fresh or len(everyone) > max_members:
            return
        for user_id in everyone:
            others = [u for u in (everyone if user_id in fresh else fresh) if u != user_id]
            if not others:
                continue
            message = AutoWatch(tuple(others))
            for outbox in self.outboxes(user_id):
                if outbox.owner is not None:
                    try:
                        outbox.owner.tell(message)
                    except Exception as exc:  # dead or full: presence is best effort here
                        log.debug("auto-watch to %r dropped: %r", outbox.owner, exc)

    def is_online(self, user_id: str) -> bool:
        """Whether the user has a welcomed connection."""
        return user_id in self._by_user

    def __len__(self) -> int:
        return len(self._by_user)


@dataclass(slots=True)
class ServerContext:
    """Shared by every actor of one server instance (never process-global)."""

    config: ServerConfig
    system: ActorSystem
    verifier: TokenVerifier
    store: Store
    server_version: str
    presence_writer: PresenceWriter
    protocol_limits: Limits
    users: ActorDirectory = field(
        default_factory=lambda: ActorDirectory("tether.actors.user:UserActor")
    )
    rooms: ActorDirectory = field(
        default_factory=lambda: ActorDirectory("tether.actors.room:RoomActor")
    )
    #: Room id → its CallActor, for rooms with an active call.
    calls: ActorDirectory = field(
        default_factory=lambda: ActorDirectory("tether.actors.call:CallActor")
    )
    online: OnlineIndex = field(default_factory=OnlineIndex)
    counters: Counters = field(default_factory=Counters)
    #: Users known to exist in storage (upserted by this process).
    known_users: set[str] = field(default_factory=set)
    #: Resumable sessions (see ``tether.actors.sessions``).
    sessions: SessionRegistry = field(init=False)
    #: Users storage says were online when this process started (a restart or
    #: a crash): user id → devices. Their UserActor starts in the offline
    #: grace period, as if their connections had just dropped; entries are
    #: taken by the UserActor or expired by the server after the grace.
    presumed_online: dict[str, int] = field(default_factory=dict)
    #: The plugin host (``tether.plugins.host``), None when no plugin is loaded:
    #: actors check it before building any plugin event.
    plugins: PluginHost | None = None
    #: The media workers (``tether.media.pool``), None when calls are disabled
    #: (``media_workers = 0``): call requests then get error 132.
    media: MediaPool | None = None
    #: When this process started serving (trio clock, and Unix ms).
    started_at: float = 0.0
    started_at_ms: int = 0
    _conn_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.users.bind(self)
        self.rooms.bind(self)
        self.calls.bind(self)
        self.sessions = SessionRegistry(self.config.session_ttl)

    def next_conn_id(self) -> int:
        """A server-unique connection id."""
        return next(self._conn_ids)
