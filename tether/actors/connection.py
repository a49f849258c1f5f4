"""ConnectionActor: one per WebSocket client.

It owns the sans-I/O protocol state (``ServerConnection``), the outbound side
(:class:`~tether.actors.outbox.Outbox`), the per-connection rate limits and
the liveness clock. The reader task (``tether.app``) feeds it every complete
WebSocket message as :class:`~tether.actors.messages.Received`; everything
else reaches it as actor messages.

Lifecycle: hello (token check) → the UserActor counts the connection in →
``welcome`` → open; it ends when the socket closes (``PeerClosed``), or when
this actor closes it (heartbeat timeout, protocol error, flood, slow consumer,
kick, shutdown). Whatever the cause, ``on_stop`` detaches it from its user and
from every presence subscription, so nothing leaks.

Room requests go to the room's RoomActor, call frames (``call.*``) to the
room's CallActor (``tether.actors.call``); when the connection stops, the
calls it joined are told, so that their participants' rejoin grace starts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from tether.actors import ActorDeadError, MailboxFull, StopReason
from tether.actors.call import CallConnectionGone, CallRequest
from tether.actors.context import ServerContext
from tether.actors.io import IoDone, PipeToSelf
from tether.actors.messages import (
    Attach,
    Attached,
    AttachRefused,
    AutoWatch,
    CloseConnection,
    Detach,
    HeartbeatTick,
    HelloDeadline,
    PeerClosed,
    Received,
    SetIdle,
    Unwatch,
    Watch,
)
from tether.actors.outbox import Outbox
from tether.actors.room import (
    ConnectionGone,
    Respond,
    ResumeDone,
    ResumeRoom,
    RoomRequest,
    room_info,
    storage_error,
)
from tether.actors.sessions import Session
from tether.storage.errors import NotFound
from tether.transport.auth import Identity, TokenError
from tether.transport.protocol import codec
from tether.transport.protocol.codes import DisconnectCode, ErrorCode
from tether.transport.protocol.connection import ServerConnection
from tether.transport.protocol.errors import RemoteProtocolError
from tether.transport.protocol.events import (
    Bye,
    CallAnswer,
    CallIce,
    CallJoin,
    CallLeave,
    CallMute,
    CallPublish,
    CallQuality,
    CallRestart,
    Disconnect,
    DmOpen,
    Hello,
    History,
    MsgDelete,
    MsgEdit,
    MsgSend,
    Ping,
    Pong,
    Presence,
    PresenceSet,
    PresenceSubscribe,
    PresenceUnsubscribe,
    Receipt,
    Recovered,
    RoomAdded,
    RoomCreate,
    RoomInvite,
    RoomJoin,
    RoomLeave,
    RoomList,
    RoomMembers,
    RoomRemove,
    RoomSummaryInfo,
    Typing,
)
from tether.transport.ratelimit import TokenBucket
from tether.transport.websocket import WebSocketConnection, encode_frame

log = logging.getLogger("tether.connection")

#: Rooms one connection resumes at once: each replays within a budget of
#: ``max_outbound_bytes / 8``, so a resume never floods the outbound queue.
RESUME_WINDOW = 4
#: Rooms that have not answered a resume within this many seconds are given
#: up (``recovered`` with code 108: page history instead).
RESUME_DEADLINE_S = 30.0
#: Distinct rooms whose calls one connection may have joined.
MAX_CALLS_PER_CONNECTION = 64

_STOP_REASONS: dict[int, StopReason] = {
    DisconnectCode.HEARTBEAT_TIMEOUT: StopReason.HEARTBEAT_TIMEOUT,
    DisconnectCode.SLOW_CONSUMER: StopReason.SLOW_CONSUMER,
    DisconnectCode.SHUTDOWN: StopReason.SHUTDOWN,
    DisconnectCode.KICKED: StopReason.KICKED,
    DisconnectCode.INVALID_TOKEN: StopReason.AUTH_FAILED,
    DisconnectCode.TOKEN_EXPIRED: StopReason.AUTH_FAILED,
    DisconnectCode.HELLO_TIMEOUT: StopReason.AUTH_FAILED,
    DisconnectCode.NORMAL: StopReason.CLIENT_LEFT,
}


class ConnectionActor(PipeToSelf):
    """One client WebSocket (see the module docstring).

    Args:
        ctx: the server context.
        ws: the accepted WebSocket (its reader task belongs to the caller).
        conn_id: server-unique id from ``ctx.next_conn_id()``.
    """

    kind = "connection"
    # Bounded: the reader awaits space (TCP backpressure); other actors only
    # tell it small control messages.
    mailbox_size = 256

    def __init__(self, ctx: ServerContext, ws: WebSocketConnection, conn_id: int) -> None:
        super().__init__()
        self.ctx = ctx
        self.ws = ws
        self.conn_id = conn_id
        config = ctx.config
        self.protocol = ServerConnection(limits=ctx.protocol_limits)
        self.outbox = Outbox(conn_id, ws, self._overflowed, owner=self.ref)
        now = trio.current_time()
        self.last_activity = now
        self._frames = TokenBucket(config.max_frames_per_s, config.frames_burst, now)
        self._bytes = TokenBucket(
            config.max_bytes_per_s, max(config.max_bytes_per_s, config.max_frame_bytes), now
        )
        self._strikes = 0
        self.identity: Identity | None = None
        self.device = ""
        self.session: Session | None = None
        self.resumed = False
        self.watching: set[str] = set()
        self._resume_queue: deque[tuple[str, int]] = deque()
        self._replaces: int | None = None
        self._user_ref: Any = None
        self._hello: Hello | None = None
        self._ping_n = 0
        self._deliberate = False
        self._typing_rooms: set[str] = set()
        #: Rooms whose call this connection joined (told when it stops: grace).
        self._call_rooms: set[str] = set()
        self._online = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            Received: self._on_received,
            HeartbeatTick: self._on_heartbeat,
            HelloDeadline: self._on_hello_deadline,
            Attached: self._on_attached,
            AttachRefused: self._on_attach_refused,
            CloseConnection: self._on_close_request,
            PeerClosed: self._on_peer_closed,
            _SubscribeAnswered: self._on_subscribe_answered,
            IoDone: self._io_done,
            AutoWatch: self._on_auto_watch,
            Respond: self._on_respond,
            ResumeDone: self._on_resume_done,
            _ResumeDeadline: self._on_resume_deadline,
        }

    # -- pykka hooks ----------------------------------------------------------
    def on_start(self) -> None:
        """Runs on the dispatcher before any message: arm the hello deadline."""
        self.ctx.counters.connections_opened += 1
        self._hello_timer = self.call_later(self.ctx.config.hello_timeout, HelloDeadline())

    def on_receive(self, message: Any) -> Any:
        """Dispatch an internal message by type; unknown types are a bug."""
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"Expected a connection message, got {message!r}")
        return handler(message)

    def on_stop(self) -> None:
        """Detach from the user and from every watched user; close the socket."""
        self.ctx.counters.connections_closed += 1
        if self._online and self.identity is not None:
            self.ctx.online.remove(self.identity.user_id, self.conn_id)
            for room_id in self._typing_rooms:
                ref = self.ctx.rooms.get(room_id)
                if ref is not None:
                    self._tell(ref, ConnectionGone(self.identity.user_id))
        for room_id in self._call_rooms:
            ref = self.ctx.calls.get(room_id)
            if ref is not None:
                self._tell(ref, CallConnectionGone(self.conn_id))
        if self._user_ref is not None:
            self._tell(self._user_ref, Detach(self.conn_id, deliberate=self._deliberate))
        if self.session is not None:
            if self.session.connection is self.ref and self._online:
                # The stored copy's age now counts from the end of the
                # connection, so session_ttl means "resumable for this long".
                self._store_session_soon(self.session.record(int(time.time() * 1000)))
            self.ctx.sessions.release(self.session, self.ref)
        for user_id in self.watching:
            ref = self.ctx.users.get(user_id)
            if ref is not None:
                self._tell(ref, Unwatch(self.conn_id))
        self.watching.clear()
        if not self.ws.closed:
            code = (
                DisconnectCode.SHUTDOWN
                if self.stop_reason is StopReason.SHUTDOWN
                else DisconnectCode.INTERNAL_ERROR
            )
            self.ws.close(code, code.name.lower())

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        """A handler bug: the client is told to reconnect (3003), others are unaffected."""
        log.error("connection %s failed: %r", self.conn_id, exc_value)
        if not self.ws.closed:
            self.ws.close(DisconnectCode.INTERNAL_ERROR, "internal error")

    # -- helpers --------------------------------------------------------------
    def _tell(self, ref: Any, message: Any) -> None:
        try:
            ref.tell(message)
        except (ActorDeadError, MailboxFull) as exc:
            log.debug("connection %s: %r dropped: %r", self.conn_id, message, exc)

    def _send(self, event: Any) -> None:
        """Encode an event through the protocol state machine and send it."""
        payload = self.protocol.send(event)
        if not self.outbox.push(encode_frame(payload)):
            return
        self.ctx.counters.frames_out += 1

    def _disconnect(self, code: DisconnectCode, reason: str) -> None:
        """Close with ``code`` and stop; idempotent."""
        if not self.ws.closed:
            try:
                self.protocol.send(Disconnect(code, reason))
            except Exception:  # the protocol may already be closed by a fatal error
                log.debug("connection %s: protocol already closed", self.conn_id)
            self.ws.close(int(code), reason)
        self.stop(reason=_STOP_REASONS.get(int(code), StopReason.PROTOCOL_ERROR))

    def _overflowed(self) -> None:
        # Called synchronously from whichever actor pushed the frame that did
        # not fit; close at once so the queue stops growing, stop via mail.
        self.ctx.counters.slow_consumers += 1
        log.info("connection %s: slow consumer, closing", self.conn_id)
        self.ws.close(DisconnectCode.SLOW_CONSUMER, "slow consumer")
        self._tell(self.ref, CloseConnection(DisconnectCode.SLOW_CONSUMER, "slow consumer"))

    # -- inbound frames -------------------------------------------------------
    def _on_received(self, msg: Received) -> None:
        if self.ws.closed:
            return
        now = trio.current_time()
        self.last_activity = now
        self.ctx.counters.frames_in += 1
        limited = not self._frames.take(now) or not self._bytes.take(now, len(msg.payload))
        try:
            self.protocol.receive_data(msg.payload)
            for event in self.protocol.events():
                if limited:
                    self._rate_limited(event)
                    continue
                self._dispatch(event)
        except RemoteProtocolError as exc:
            self._protocol_error(exc)

    def _rate_limited(self, event: Any) -> None:
        self._strikes += 1
        if self._strikes > self.ctx.config.frames_burst:
            log.warning("connection %s: flood, closing", self.conn_id)
            self._disconnect(DisconnectCode.RATE_LIMITED, "rate limit exceeded")
            return
        ref = getattr(event, "ref", None)
        if ref is not None:
            self._send(event.error(ErrorCode.RATE_LIMITED, "rate limit exceeded, slow down"))

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        self.ctx.counters.protocol_errors += 1
        log.info("connection %s: %s", self.conn_id, exc)
        if exc.close_hint is not None:
            hint = exc.close_hint
            self._disconnect(DisconnectCode(hint.code), hint.reason)
        elif exc.error_hint is not None:
            self._send(exc.error_hint)

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, Pong):
            pass  # liveness was recorded when the frame arrived
        elif isinstance(event, Hello):
            self._on_hello(event)
        elif isinstance(event, PresenceSubscribe):
            self._on_subscribe(event)
        elif isinstance(event, PresenceUnsubscribe):
            self._on_unsubscribe(event)
        elif isinstance(event, PresenceSet):
            self._on_presence_set(event)
        elif isinstance(event, _ROOM_REQUESTS):
            self._to_room(event)
        elif isinstance(event, _CALL_FRAMES):
            self._to_call(event)
        elif isinstance(event, RoomCreate):
            self._on_room_create(event)
        elif isinstance(event, RoomList):
            self._on_room_list(event)
        elif isinstance(event, DmOpen):
            self._on_dm_open(event)
        elif isinstance(event, Bye):
            self._deliberate = True
            self._disconnect(DisconnectCode.NORMAL, "bye")
        else:  # a frame type the core accepts but this server version ignores
            ref = getattr(event, "ref", None)
            if ref is not None:
                self._send(event.error(ErrorCode.UNKNOWN_TYPE, "not supported by this server"))

    # -- hello / attach -------------------------------------------------------
    def _on_hello(self, hello: Hello) -> None:
        try:
            identity = self.ctx.verifier.verify(hello.token)
        except TokenError as exc:
            self.ctx.counters.auth_failures += 1
            log.info("connection %s: %s", self.conn_id, exc.reason)
            code = DisconnectCode.TOKEN_EXPIRED if exc.expired else DisconnectCode.INVALID_TOKEN
            self._send(hello.error(ErrorCode.FORBIDDEN, exc.reason[:120]))
            self._disconnect(code, "token expired" if exc.expired else "invalid token")
            return
        self.identity = identity
        self._hello = hello
        self.device = hello.device or f"conn-{self.conn_id}"
        if identity.user_id in self.ctx.known_users:
            self._open_session()
            return
        # Rooms and messages refer to the user: make sure the row exists
        # before the client can do anything (once per user per process).
        store = self.ctx.store

        def stored(_result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.warning("connection %s: user not stored: %r", self.conn_id, error)
                self._send(hello.error(ErrorCode.UNAVAILABLE, "storage unavailable, retry"))
                self._disconnect(DisconnectCode.INTERNAL_ERROR, "storage unavailable")
                return
            self.ctx.known_users.add(identity.user_id)
            self._open_session()

        self._io(lambda: store.upsert_user(identity.user_id, identity.name), stored)

    def _open_session(self) -> None:
        """Resume ``hello.session`` (memory, then storage) or start a new one; then attach."""
        assert self.identity is not None
        assert self._hello is not None
        user_id = self.identity.user_id
        wanted = self._hello.session
        sessions = self.ctx.sessions
        if wanted is None:
            self._new_session()
            return
        session, previous = sessions.claim(wanted, user_id, self.ref)
        if session is not None:
            self._resume_session(session, previous)
            self._attach()
            return
        store = self.ctx.store

        def loaded(record: Any, error: BaseException | None) -> None:
            if error is not None:
                log.info("connection %s: session not loaded: %r", self.conn_id, error)
            if error is None and record is not None and record.user_id == user_id:
                self._resume_session(sessions.adopt(record, self.ref), None)
                self._attach()
            else:
                self._new_session()

        self._io(lambda: store.load_session(wanted), loaded)

    def _new_session(self) -> None:
        """Start a fresh session, stored so that it survives a restart, then attach."""
        assert self.identity is not None
        self.session = self.ctx.sessions.new(self.identity.user_id, self.device, self.ref)
        self.session.conn_id = self.conn_id
        self._save_session()
        self._attach()

    def _resume_session(self, session: Session, previous: Any) -> None:
        assert self._hello is not None
        self.session = session
        self.resumed = True
        self.ctx.counters.sessions_resumed += 1
        if self._hello.device is None:
            self.device = session.device  # the device the server made up stays
        session.device = self.device
        if previous is not None and previous != self.ref:
            # The client reconnected before the server noticed the old socket
            # was gone: that one is stale.
            self._replaces = session.conn_id
            self._tell(previous, CloseConnection(DisconnectCode.SESSION_RESUMED, "session resumed"))
        session.conn_id = self.conn_id

    def _attach(self) -> None:
        assert self.identity is not None
        if self.ws.closed:
            return
        user = self.ctx.users.get_or_spawn(self.identity.user_id)
        self._user_ref = user
        self._tell(
            user,
            Attach(
                self.ref,
                self.conn_id,
                self.device,
                self.identity.name,
                self.outbox,
                replaces=self._replaces,
            ),
        )

    def _on_attached(self, _msg: Attached) -> None:
        self._hello_timer.cancel()
        assert self._hello is not None
        assert self.identity is not None
        config = self.ctx.config
        assert self.session is not None
        self._send(
            self._hello.welcome(
                session=self.session.id,
                user=self.identity.user_id,
                name=self.identity.name,
                device=self.device,
                heartbeat_ms=int(config.heartbeat_interval * 1000),
                timeout_ms=int(config.heartbeat_timeout * 1000),
                server=self.ctx.server_version,
                limits={
                    **self.ctx.protocol_limits.advertised(
                        max_frames_per_s=int(config.max_frames_per_s)
                    ),
                    "max_bytes_per_s": config.max_bytes_per_s,
                    "max_presence_subscriptions": config.max_presence_subscriptions,
                    "max_connections_per_user": config.max_connections_per_user,
                    "max_rooms_per_user": config.max_rooms_per_user,
                },
                resumed=self.resumed,
            )
        )
        resume = self._hello.resume or {}
        # Rooms being resumed keep their pushes back until their replay is
        # out; the holds are in place before any push can reach the outbox.
        for room in resume:
            self.outbox.hold(room)
        # Only now may pushes reach this client (none may overtake the welcome).
        self.ctx.online.add(self.identity.user_id, self.conn_id, self.outbox)
        self._online = True
        if resume:
            self._start_resume(resume)
        if self.session.explicit:
            self._watch_quietly(self.session.explicit)
        self._auto_subscribe()

    def _on_attach_refused(self, msg: AttachRefused) -> None:
        self._user_ref = None  # never counted in
        assert self._hello is not None
        self._send(self._hello.error(ErrorCode.LIMIT_EXCEEDED, msg.reason))
        self._disconnect(DisconnectCode.TOO_MANY_CONNECTIONS, msg.reason)

    def _on_hello_deadline(self, _msg: HelloDeadline) -> None:
        if self._user_ref is None or self._hello is None:
            self._disconnect(DisconnectCode.HELLO_TIMEOUT, "no hello in time")

    # -- resume ---------------------------------------------------------------
    def _start_resume(self, rooms: Mapping[str, int]) -> None:
        self._resume_queue.extend(rooms.items())
        self.call_later(RESUME_DEADLINE_S, _ResumeDeadline())
        for _ in range(RESUME_WINDOW):
            self._resume_next()

    def _resume_next(self) -> None:
        assert self.identity is not None
        budget = self.ctx.config.max_outbound_bytes // 8
        while self._resume_queue and not self.ws.closed:
            room, after = self._resume_queue.popleft()
            ref = self.ctx.rooms.get_or_spawn(room)
            try:
                ref.tell(ResumeRoom(self.ref, self.outbox, self.identity.user_id, after, budget))
                return
            except (MailboxFull, ActorDeadError):
                self._give_up_resume(room)

    def _on_resume_done(self, _msg: ResumeDone) -> None:
        self.ctx.counters.rooms_resumed += 1
        self._resume_next()

    def _on_resume_deadline(self, _msg: _ResumeDeadline) -> None:
        rooms = [*self.outbox.holding, *(room for room, _ in self._resume_queue)]
        self._resume_queue.clear()
        for room in dict.fromkeys(rooms):
            log.warning("connection %s: room %s did not resume in time", self.conn_id, room)
            self._give_up_resume(room)

    def _give_up_resume(self, room: str) -> None:
        """Tell the client this room could not be resumed now (it pages history)."""
        recovered = Recovered(
            room=room, complete=False, replayed=0, head=0, code=int(ErrorCode.UNAVAILABLE)
        )
        self.outbox.release(room, [_encode(recovered)], 0)

    def _save_session(self) -> None:
        """Persist the session's explicit subscriptions (so a restart keeps them)."""
        if self.session is None:
            return
        record = self.session.record(int(time.time() * 1000))
        store = self.ctx.store

        def saved(_result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.info("connection %s: session not saved: %r", self.conn_id, error)

        self._io(lambda: store.save_session(record), saved)

    def _store_session_soon(self, record: Any) -> None:
        """Write ``record`` in the background (from ``on_stop``: no reply is possible)."""
        store = self.ctx.store
        conn_id = self.conn_id

        async def write() -> None:
            try:
                await store.save_session(record)
            except Exception as exc:  # storage down: the older stored copy stays
                log.info("connection %s: session not saved: %r", conn_id, exc)

        try:
            self.ctx.system.nursery.start_soon(write)
        except RuntimeError:  # the system is closing
            log.debug("connection %s: session not saved at shutdown", conn_id)

    # -- presence -------------------------------------------------------------
    def _on_subscribe(self, event: PresenceSubscribe) -> None:
        assert self.identity is not None
        me = self.identity.user_id
        wanted = {u for u in event.users if u != me}
        if self.ctx.config.presence_visibility == "all" or not wanted:
            self._subscribe_allowed(event)
            return
        store = self.ctx.store

        def checked(mates: Any, error: BaseException | None) -> None:
            if error is not None:
                self._send(storage_error(event, error))
            elif not wanted <= mates:
                self._send(
                    event.error(
                        ErrorCode.FORBIDDEN,
                        "presence is visible only to users who share a room",
                    )
                )
            else:
                self._subscribe_allowed(event)

        self._io(lambda: store.room_mates(me), checked)

    def _subscribe_allowed(self, event: PresenceSubscribe) -> None:
        users = [u for u in dict.fromkeys(event.users) if u not in self.watching]
        limit = self.ctx.config.max_presence_subscriptions
        if len(self.watching) + len(users) > limit:
            self._send(
                event.error(ErrorCode.LIMIT_EXCEEDED, f"at most {limit} presence subscriptions")
            )
            return
        futures = []
        for user_id in users:
            self.watching.add(user_id)
            ref = self.ctx.users.get_or_spawn(user_id)
            futures.append(ref.ask(Watch(self.conn_id, self.outbox), block=False))
        if self.session is not None:
            fresh = set(event.users) - self.session.explicit
            if fresh:
                self.session.explicit |= fresh
                self._save_session()
        already = [u for u in dict.fromkeys(event.users) if u not in users]
        for user_id in already:
            ref = self.ctx.users.get_or_spawn(user_id)
            futures.append(ref.ask(Watch(self.conn_id, self.outbox), block=False))
        if not futures:
            self._send(event.reply({"users": []}))
            return
        # Gather the snapshots without blocking this actor: the reply goes out
        # when the last user actor has answered (a temporary task, not a
        # handler that holds the mailbox).
        self.ctx.system.nursery.start_soon(self._reply_subscribe, event, futures)

    async def _reply_subscribe(self, event: PresenceSubscribe | None, futures: list[Any]) -> None:
        snapshots = []
        for future in futures:
            try:
                snapshots.append((await future).to_wire())
            except ActorDeadError:
                continue
        # Back through the mailbox: only the actor touches the protocol state.
        self._tell(self.ref, _SubscribeAnswered(event, snapshots))

    def _on_subscribe_answered(self, msg: _SubscribeAnswered) -> None:
        if self.ws.closed:
            return
        if msg.event is None:  # automatic subscription: current states as pushes
            for snapshot in msg.snapshots:
                self._send(Presence.from_snapshot(snapshot))
            return
        self._send(msg.event.reply({"users": msg.snapshots}))

    def _auto_subscribe(self) -> None:
        """Watch the members of the user's (small) rooms, as the welcome completes."""
        limit = self.ctx.config.presence_auto_subscribe_max_members
        if limit <= 0 or self.identity is None:
            return
        store = self.ctx.store
        me = self.identity.user_id

        def found(mates: Any, error: BaseException | None) -> None:
            if error is not None:
                log.info("connection %s: no automatic presence: %r", self.conn_id, error)
                return
            self._watch_quietly(mates)

        self._io(lambda: store.room_mates(me, max_room_members=limit), found)

    def _on_auto_watch(self, msg: AutoWatch) -> None:
        if not self.ws.closed:
            self._watch_quietly(msg.users)

    def _watch_quietly(self, users: Any) -> None:
        """Watch ``users`` (room mates) and push their current state (no reply)."""
        room = self.ctx.config.max_presence_subscriptions - len(self.watching)
        fresh = sorted(u for u in users if u not in self.watching)[: max(0, room)]
        futures = []
        for user_id in fresh:
            self.watching.add(user_id)
            ref = self.ctx.users.get_or_spawn(user_id)
            futures.append(ref.ask(Watch(self.conn_id, self.outbox), block=False))
        if futures:
            self.ctx.system.nursery.start_soon(self._reply_subscribe, None, futures)

    # -- rooms ------------------------------------------------------------------
    def _on_respond(self, msg: Respond) -> None:
        if not self.ws.closed:
            self._send(msg.event)

    def _to_room(self, event: Any) -> None:
        assert self.identity is not None
        if isinstance(event, Typing) and event.typing:
            self._typing_rooms.add(event.room)
        ref = self.ctx.rooms.get_or_spawn(event.room)
        request = RoomRequest(self.ref, self.conn_id, self.identity.user_id, self.device, event)
        try:
            ref.tell(request)
        except (MailboxFull, ActorDeadError):
            if getattr(event, "ref", None) is not None:
                self._send(event.error(ErrorCode.RATE_LIMITED, "room busy, retry"))

    def _to_call(self, event: Any) -> None:
        """Hand a call frame to the room's CallActor (started by ``call.join`` only)."""
        assert self.identity is not None
        assert self.session is not None
        has_ref = getattr(event, "ref", None) is not None
        if self.ctx.media is None:
            if has_ref:
                self._send(event.error(ErrorCode.MEDIA_UNAVAILABLE, "calls are disabled here"))
            return
        if isinstance(event, CallJoin):
            if (
                event.room not in self._call_rooms
                and len(self._call_rooms) >= MAX_CALLS_PER_CONNECTION
            ):
                self._send(event.error(ErrorCode.LIMIT_EXCEEDED, "in too many calls"))
                return
            self._call_rooms.add(event.room)
            ref: Any = self.ctx.calls.get_or_spawn(event.room)
        else:
            ref = self.ctx.calls.get(event.room)
            if ref is None:
                if has_ref:
                    self._send(event.error(ErrorCode.NOT_IN_CALL, "not in this call"))
                return
        request = CallRequest(
            self.ref, self.conn_id, self.identity.user_id, self.device, self.session.id, event
        )
        try:
            ref.tell(request)
        except (MailboxFull, ActorDeadError):
            if has_ref:
                self._send(event.error(ErrorCode.RATE_LIMITED, "call busy, retry"))

    def _on_room_create(self, event: RoomCreate) -> None:
        assert self.identity is not None
        me = self.identity.user_id
        members = [m for m in dict.fromkeys(event.members) if m != me]
        store = self.ctx.store

        def created(record: Any, error: BaseException | None) -> None:
            if error is not None:
                self._send(storage_error(event, error))
                return
            info = room_info(record)
            self._send(event.reply(room=info))
            self.ctx.online.push(
                [me, *members], _encode(RoomAdded(room=info, unread=0)), exclude=self.conn_id
            )
            self.ctx.online.introduce(
                [me, *members], members, self.ctx.config.presence_auto_subscribe_max_members
            )
            plugins = self.ctx.plugins
            if plugins is not None:
                changes = [(me, "joined"), *((m, "invited") for m in members)]
                plugins.membership_changed(info.id, changes, me)

        limit = self.ctx.config.max_rooms_per_user
        self._io(
            lambda: store.create_room(
                event.kind.value, event.name, me, members, max_rooms_per_user=limit
            ),
            created,
        )

    def _on_room_list(self, event: RoomList) -> None:
        assert self.identity is not None
        store = self.ctx.store
        me = self.identity.user_id

        def listed(summaries: Any, error: BaseException | None) -> None:
            if error is not None:
                self._send(storage_error(event, error))
                return
            rooms = [
                RoomSummaryInfo.of(room_info(s.room), read_seq=s.read_seq, unread=s.unread_count)
                for s in summaries
            ]
            self._send(event.reply(rooms=rooms))

        self._io(lambda: store.rooms_for_user(me), listed)

    def _on_dm_open(self, event: DmOpen) -> None:
        assert self.identity is not None
        store = self.ctx.store
        me = self.identity.user_id
        asked_at_ms = int(time.time() * 1000)

        def opened(record: Any, error: BaseException | None) -> None:
            if isinstance(error, NotFound):
                self._send(event.error(ErrorCode.NOT_FOUND, "no such user"))
                return
            if error is not None:
                self._send(storage_error(event, error))
                return
            info = room_info(record)
            self._send(event.reply(room=info))
            if record.created_at_ms >= asked_at_ms - 1:
                # Created by this request: the other side's devices learn of it.
                self.ctx.online.push(
                    [event.user, me], _encode(RoomAdded(room=info, unread=0)), exclude=self.conn_id
                )
                self.ctx.online.introduce(
                    [me, event.user],
                    [event.user],
                    self.ctx.config.presence_auto_subscribe_max_members,
                )
                plugins = self.ctx.plugins
                if plugins is not None:
                    plugins.membership_changed(
                        info.id, [(me, "joined"), (event.user, "joined")], me
                    )

        limit = self.ctx.config.max_rooms_per_user
        self._io(
            lambda: store.get_or_create_direct(me, event.user, max_rooms_per_user=limit), opened
        )

    def _on_unsubscribe(self, event: PresenceUnsubscribe) -> None:
        if self.session is not None and self.session.explicit & set(event.users):
            self.session.explicit -= set(event.users)
            self._save_session()
        for user_id in event.users:
            if user_id in self.watching:
                self.watching.discard(user_id)
                ref = self.ctx.users.get(user_id)
                if ref is not None:
                    self._tell(ref, Unwatch(self.conn_id))
        self._send(event.reply({}))

    def _on_presence_set(self, event: PresenceSet) -> None:
        if self._user_ref is not None:
            self._tell(self._user_ref, SetIdle(self.conn_id, event.status == "idle"))
        if event.ref is not None:
            self._send(event.reply({}))

    # -- pushes and timers ----------------------------------------------------
    def _on_heartbeat(self, _msg: HeartbeatTick) -> None:
        if self.ws.closed:
            return
        silent = trio.current_time() - self.last_activity
        if silent > self.ctx.config.heartbeat_timeout:
            self.ctx.counters.heartbeat_timeouts += 1
            log.info("connection %s: silent for %.1fs, closing", self.conn_id, silent)
            self._disconnect(DisconnectCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
            return
        self._ping_n += 1
        self._send(Ping(n=self._ping_n))

    def _on_close_request(self, msg: CloseConnection) -> None:
        self._disconnect(DisconnectCode(msg.code), msg.reason)

    def _on_peer_closed(self, msg: PeerClosed) -> None:
        log.debug("connection %s: closed by peer (%s)", self.conn_id, msg.code)
        self.stop(reason=StopReason.CLIENT_LEFT)

    # -- console ------------------------------------------------------------
    def state_summary(self) -> str:
        """One line for the console's actor list."""
        who = self.identity.user_id if self.identity else "(no hello yet)"
        return f"{who} on {self.device or '-'} from {self.ws.remote}, {self._state_name()}"

    def _state_name(self) -> str:
        if self.ws.closed:
            return "closed"
        if self.identity is None:
            return "awaiting hello"
        return "resumed" if self.resumed else "live"

    def inspect(self) -> dict[str, Any]:
        """Console detail (runs in the actor: trio thread)."""
        now = trio.current_time()
        return {
            "conn_id": self.conn_id,
            "user": self.identity.user_id if self.identity else None,
            "device": self.device or None,
            "session": self.session.id if self.session else None,
            "resumed": self.resumed,
            "remote": self.ws.remote,
            "subprotocol": self.ws.subprotocol,
            "outbound_queued_bytes": self.ws.outbound_bytes,
            "outbox_overflowed": self.outbox.overflowed,
            "pushed": self.outbox.pushed,
            "watching": len(self.watching),
            "typing_rooms": sorted(self._typing_rooms),
            "idle_s": round(now - self.last_activity, 3),
            "state": self._state_name(),
        }


@dataclass(frozen=True, slots=True)
class _ResumeDeadline:
    pass


@dataclass(frozen=True, slots=True)
class _SubscribeAnswered:
    event: PresenceSubscribe | None  # None: automatic subscription at welcome
    snapshots: list[dict[str, object]]


_ROOM_REQUESTS = (
    RoomJoin,
    RoomLeave,
    RoomInvite,
    RoomRemove,
    RoomMembers,
    MsgSend,
    MsgEdit,
    MsgDelete,
    History,
    Receipt,
    Typing,
)


_CALL_FRAMES = (
    CallJoin,
    CallLeave,
    CallPublish,
    CallAnswer,
    CallIce,
    CallMute,
    CallQuality,
    CallRestart,
)


def _encode(event: Any) -> bytes:
    return encode_frame(codec.encode(event))
