"""CallActor: one per room with an active call.

It owns the call's state (participants keyed by (user, session id), their
published tracks, what each one receives, the dominant speaker) and drives
the call's router in a media worker through the :class:`~tether.media.pool.MediaPool`.
Worker requests run in tasks and come back as messages (``_io``), so the
actor never blocks; a result that arrives after the participant's media was
reset (``gen`` changed) or after the router changed is ignored.

Rules (``docs/protocol.md``, Calls):

* join: members of the room only (checked in storage); at most
  ``call_max_participants``; the router opens with the first join.
* a participant whose connection ends stays ``call_rejoin_grace`` seconds;
  a ``call.join`` from the same session re-binds it (media ``kept`` when its
  transports are up, else ``new`` after its media was dropped); otherwise
  it is removed and the others told.
* subscriber renegotiation: at most one offer outstanding per participant;
  changes meanwhile are folded into the next ``subscribe`` once the answer
  came; no answer within :data:`OFFER_TIMEOUT_S` → ``call.restart`` to it.
* worker lost: a fresh router (any live worker), then ``call.restart`` to all.
* the last one out closes the router and the actor retires.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tether.actors import ActorDeadError, ActorRef, MailboxFull, StopReason, TimerHandle
from tether.actors.context import ServerContext
from tether.actors.io import IoDone, PipeToSelf
from tether.actors.room import MemberQuery, Respond
from tether.media.pool import MediaError, MediaEvent, MediaUnavailable, WorkerLost
from tether.storage.errors import NotFound, StorageUnavailable
from tether.transport.protocol.codes import ErrorCode
from tether.transport.protocol.errors import LocalProtocolError
from tether.transport.protocol.events import (
    CallAnswer,
    CallEnded,
    CallIce,
    CallJoin,
    CallLeave,
    CallMedia,
    CallMute,
    CallOffer,
    CallParticipant,
    CallPublish,
    CallQuality,
    CallRestart,
    CallRestarted,
    CallSpeaker,
    CallTrack,
    MediaKind,
    ParticipantAction,
    ParticipantInfo,
    TrackAction,
    TrackInfo,
)

log = logging.getLogger("tether.call")

#: Seconds a participant has to answer a ``call.offer`` (then: ``call.restart``).
OFFER_TIMEOUT_S = 10.0
#: Seconds to wait for a live media worker when opening a router (one may be restarting).
ROUTER_WAIT_S = 15.0
#: Seconds between attempts to reopen a lost router while participants remain.
REOPEN_RETRY_S = 2.0
#: Joins waiting for the router to open (beyond: error 103).
MAX_WAITING_JOINS = 256
#: Ref-less worker requests (``call.ice``, ``call.quality``) one participant
#: may have in flight; more are dropped (logged), so a flooding client cannot
#: take the worker's request budget from the other calls on it.
MAX_FIRED_PER_PARTICIPANT = 16


# -- messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A client call frame for this room, from the connection that got it."""

    connection: ActorRef[Any]
    conn_id: int
    user: str
    device: str
    session: str
    event: Any


@dataclass(frozen=True, slots=True)
class CallConnectionGone:
    """The connection ``conn_id`` stopped: its participants enter the rejoin grace."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class CallMemberGone:
    """``user`` left the room or was removed: its participants leave the call."""

    user: str
    reason: str = "not a member of the room any more"


@dataclass(frozen=True, slots=True)
class _GraceOver:
    key: tuple[str, str]
    binding: int


@dataclass(frozen=True, slots=True)
class _OfferTimeout:
    key: tuple[str, str]
    offer: int


@dataclass(frozen=True, slots=True)
class _Reopen:
    pass


@dataclass(frozen=True, slots=True)
class _Retire:
    pass


class _Participant:
    """One (user, session) in the call."""

    def __init__(self, pid: str, user: str, device: str, session: str) -> None:
        self.id = pid
        self.user = user
        self.device = device
        self.session = session
        self.connection: ActorRef[Any] | None = None
        self.conn_id: int | None = None
        #: Bumped at each (re)binding: a grace timer of an older one is stale.
        self.binding = 0
        self.grace_timer: TimerHandle | None = None
        self.tracks: dict[str, TrackInfo] = {}
        self.audio_muted = False
        self.video_muted = False
        self.pub_state: str | None = None
        self.sub_state: str | None = None
        #: Bumped whenever the participant's media is reset: late results are stale.
        self.gen = 0
        self.publishing = False
        #: What the worker forwards to it (track ids, sorted).
        self.subscribed: tuple[str, ...] = ()
        #: A subscribe in flight or an offer outstanding.
        self.negotiating = False
        #: The wanted set changed while negotiating: subscribe again after.
        self.renegotiate = False
        self.offer: CallOffer | None = None
        self.offer_serial = 0
        self.offer_timer: TimerHandle | None = None
        self.answering = False
        #: Ref-less requests (call.ice, call.quality) in flight to the worker.
        self.fired = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.session)

    def info(self) -> ParticipantInfo:
        return ParticipantInfo(
            id=self.id,
            user=self.user,
            device=self.device,
            tracks=tuple(self.tracks.values()),
            audio_muted=self.audio_muted,
            video_muted=self.video_muted,
        )

    def muted(self, kind: str) -> bool:
        return self.audio_muted if kind == MediaKind.AUDIO else self.video_muted

    def media_up(self) -> bool:
        """Whether its worker transports exist and all are connected."""
        states = [s for s in (self.pub_state, self.sub_state) if s is not None]
        return bool(states) and all(s == "connected" for s in states)

    def forget_media(self) -> None:
        """Drop what is known of its media (the worker side is gone or being dropped)."""
        self.gen += 1
        self.tracks.clear()
        self.pub_state = self.sub_state = None
        self.publishing = False
        self.subscribed = ()
        self.negotiating = False
        self.renegotiate = False
        self.offer = None
        self.answering = False
        if self.offer_timer is not None:
            self.offer_timer.cancel()
            self.offer_timer = None


async def _membership(ctx: ServerContext, room_id: str, user: str) -> bool:
    """Whether ``user`` is a member, asked of the room's actor (it keeps the members).

    Raises:
        NotFound: there is no such room.
        StorageUnavailable: the room could not be loaded, or its actor is overloaded.
    """
    for _attempt in range(2):  # a room retiring meanwhile: its successor answers
        try:
            answer = await ctx.rooms.get_or_spawn(room_id).ask(MemberQuery(user))
        except ActorDeadError:
            continue
        except MailboxFull as exc:
            raise StorageUnavailable("room busy") from exc
        if answer == "missing":
            raise NotFound(room_id)
        if answer == "unavailable":
            raise StorageUnavailable("room not loaded")
        return bool(answer == "member")
    raise StorageUnavailable("room actor stopped")


class CallActor(PipeToSelf):
    """The call of one room (see the module docstring).

    Args:
        ctx: the server context (``ctx.media`` must be set for calls to work).
        room_id: the room id.
    """

    kind = "call"
    mailbox_size = 10_000

    def __init__(self, ctx: ServerContext, room_id: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.room_id = room_id
        self.participants: dict[tuple[str, str], _Participant] = {}
        self.by_id: dict[str, _Participant] = {}
        self.router: str | None = None
        self.speaker: str | None = None
        self.restarts = 0
        self._router_ids = itertools.count(1)
        self._opening = False
        self._waiting: deque[CallRequest] = deque()
        #: Membership checks in flight (the actor does not retire under them).
        self._checking = 0
        self._retiring = False

    # -- lifecycle --------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        """Dispatch by message type."""
        if self._retiring and isinstance(message, CallRequest):
            successor = self.ctx.calls.get(self.room_id)
            if successor is not None and successor != self.ref:
                self._tell(successor, message)
                return None
            self._retiring = False
            self.ctx.calls.adopt(self.room_id, self.ref)
        match message:
            case CallRequest():
                self._on_request(message)
            case IoDone():
                self._io_done(message)
            case MediaEvent():
                self._on_media_event(message)
            case WorkerLost():
                self._on_worker_lost(message)
            case CallConnectionGone():
                self._on_connection_gone(message.conn_id)
            case CallMemberGone():
                for p in [p for p in self.participants.values() if p.user == message.user]:
                    self._remove(p, ended=message.reason)
            case _GraceOver():
                away = self.participants.get(message.key)
                if away is not None and away.connection is None and away.binding == message.binding:
                    log.info("call %s: %s did not come back in time", self.room_id, away.id)
                    self._remove(away)
            case _OfferTimeout():
                self._on_offer_timeout(message)
            case _Reopen():
                if self.router is None and self.participants:
                    self._open_router()
            case _Retire():
                if self._retiring:
                    self.stop(reason=StopReason.IDLE)
            case _:
                raise TypeError(f"Expected a call message, got {message!r}")
        return None

    def on_stop(self) -> None:
        """Leave the directory; close the router in the background."""
        self._cleanup()

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        """A handler bug: the call ends for everyone (clients may join again)."""
        log.error("call %s failed: %r", self.room_id, exc_value)
        for p in self.participants.values():
            self._push(p, CallEnded(room=self.room_id, reason="internal error"))
        self._cleanup()

    def _cleanup(self) -> None:
        # Participants still listed when the actor stops (shutdown, a bug) leave the gauge too.
        self.ctx.counters.call_participants -= len(self.participants)
        self.participants.clear()
        self.by_id.clear()
        self.ctx.calls.remove(self.room_id, self.ref)
        self._close_router()

    def _close_router(self) -> None:
        router, self.router = self.router, None
        pool = self.ctx.media
        if router is None or pool is None:
            return
        try:
            self.ctx.system.nursery.start_soon(pool.close_router, router)
        except RuntimeError:  # the system is closing: the pool stops the workers anyway
            log.debug("call %s: router %s left to the pool's shutdown", self.room_id, router)

    def _maybe_stop(self) -> None:
        """Nobody left and nothing pending: close the router and retire."""
        if self.participants or self._waiting or self._opening or self._checking or self._retiring:
            return
        self._close_router()
        self._retiring = True
        self.ctx.calls.remove(self.room_id, self.ref)
        self._tell(self.ref, _Retire())

    # -- helpers ----------------------------------------------------------------
    def _tell(self, ref: ActorRef[Any], message: Any) -> None:
        try:
            ref.tell(message)
        except (ActorDeadError, MailboxFull) as exc:
            log.debug("call %s: %r dropped: %r", self.room_id, message, exc)

    def _respond(self, request: CallRequest, event: Any) -> None:
        self._tell(request.connection, Respond(event))

    def _push(self, p: _Participant, event: Any) -> None:
        """Send a push to the participant's connection (none while it is away)."""
        if p.connection is not None:
            self._tell(p.connection, Respond(event))

    def _push_others(self, me: _Participant | None, event: Any) -> None:
        for p in self.participants.values():
            if p is not me:
                self._push(p, event)

    def _media(
        self,
        operation: Callable[[], Awaitable[Any]],
        then: Callable[[Any, BaseException | None], None],
    ) -> None:
        self._io(operation, then)

    def _worker(self, method: str, params: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        """A deferred request to the call's router (fails as unavailable when there is none)."""
        pool = self.ctx.media
        router = self.router

        async def call() -> Any:
            if pool is None or router is None:
                raise MediaUnavailable("no media router")
            return await pool.call(router, method, params)

        return call

    def _fire(self, p: _Participant | None, method: str, params: dict[str, Any]) -> None:
        """A worker request whose outcome only matters for the log.

        For a participant's own ref-less requests (``p`` given), at most
        :data:`MAX_FIRED_PER_PARTICIPANT` are in flight; others are dropped.
        """
        if p is not None:
            if p.fired >= MAX_FIRED_PER_PARTICIPANT:
                log.info(
                    "call %s: %s from %s dropped (too many in flight)", self.room_id, method, p.id
                )
                return
            p.fired += 1

        def done(_result: Any, error: BaseException | None) -> None:
            if p is not None:
                p.fired -= 1
            if error is not None:
                log.info("call %s: %s failed: %r", self.room_id, method, error)

        self._media(self._worker(method, params), done)

    def _error(self, event: Any, error: BaseException) -> Any:
        """The client's error for a failed worker request."""
        if isinstance(error, MediaError):
            if error.code == "bad_sdp":
                return event.error(ErrorCode.BAD_SDP, error.message[:300] or "SDP rejected")
            if error.code == "bad_request":
                return event.error(ErrorCode.BAD_REQUEST, error.message[:300] or "bad request")
            if error.code == "not_found":
                return event.error(ErrorCode.MEDIA_UNAVAILABLE, "media state lost, publish again")
            return event.error(ErrorCode.INTERNAL, "media server error")
        if isinstance(error, MediaUnavailable):
            return event.error(ErrorCode.MEDIA_UNAVAILABLE, "media unavailable, retry")
        log.error("call %s: unexpected media failure: %r", self.room_id, error)
        return event.error(ErrorCode.INTERNAL, "media server error")

    def _current(self, p: _Participant, gen: int) -> bool:
        return self.participants.get(p.key) is p and p.gen == gen

    # -- requests ---------------------------------------------------------------
    def _on_request(self, request: CallRequest) -> None:
        event = request.event
        if self.ctx.media is None:
            if getattr(event, "ref", None) is not None:
                self._respond(request, event.error(ErrorCode.MEDIA_UNAVAILABLE, "calls disabled"))
            self._maybe_stop()
            return
        if isinstance(event, CallJoin):
            self._on_join(request, event)
            return
        p = self.participants.get((request.user, request.session))
        if p is None or p.conn_id != request.conn_id:
            if getattr(event, "ref", None) is not None:
                self._respond(request, event.error(ErrorCode.NOT_IN_CALL, "not in this call"))
            self._maybe_stop()
            return
        match event:
            case CallLeave():
                self._respond(request, event.reply())
                self._remove(p)
            case CallPublish():
                self._on_publish(request, p, event)
            case CallAnswer():
                self._on_answer(request, p, event)
            case CallIce():
                if self.router is not None:
                    self._fire(
                        p,
                        "candidate",
                        {
                            "participant": p.id,
                            "pc": event.pc.value,
                            "candidate": event.candidate,
                            "sdp_mid": event.sdp_mid,
                            "sdp_mline_index": event.sdp_mline_index,
                        },
                    )
            case CallMute():
                self._on_mute(request, p, event)
            case CallQuality():
                if self.router is not None and self._track(event.track) is not None:
                    self._fire(
                        p,
                        "prefer",
                        {
                            "participant": p.id,
                            "track": event.track,
                            "width": event.width,
                            "height": event.height,
                        },
                    )
            case CallRestart():
                self._respond(request, event.reply())
                self._reset_media(p)
            case _:
                raise TypeError(f"Expected a call frame, got {event!r}")

    def _track(self, track_id: str) -> TrackInfo | None:
        owner = self.by_id.get(track_id.split(".", 1)[0])
        return None if owner is None else owner.tracks.get(track_id)

    # -- join, rejoin, leave ----------------------------------------------------
    def _on_join(self, request: CallRequest, event: CallJoin) -> None:
        p = self.participants.get((request.user, request.session))
        if p is not None:
            self._rejoin(request, event, p)
            return

        def checked(member: Any, error: BaseException | None) -> None:
            self._checking -= 1
            if isinstance(error, NotFound):
                self._respond(request, event.error(ErrorCode.ROOM_NOT_FOUND, "no such room"))
            elif isinstance(error, StorageUnavailable):
                self._respond(request, event.error(ErrorCode.UNAVAILABLE, "storage unavailable"))
            elif error is not None:
                log.error("call %s: membership check failed: %r", self.room_id, error)
                self._respond(request, event.error(ErrorCode.INTERNAL, "membership check failed"))
            elif not member:
                self._respond(
                    request, event.error(ErrorCode.NOT_MEMBER, "not a member of this room")
                )
            else:
                self._admit(request, event)
                return
            self._maybe_stop()

        self._checking += 1
        self._io(lambda: _membership(self.ctx, self.room_id, request.user), checked)

    def _admit(self, request: CallRequest, event: CallJoin) -> None:
        existing = self.participants.get((request.user, request.session))
        if existing is not None:  # a second join raced the membership check
            self._rejoin(request, event, existing)
            return
        limit = self.ctx.config.call_max_participants
        if len(self.participants) >= limit:
            self._respond(
                request, event.error(ErrorCode.CALL_FULL, f"at most {limit} participants")
            )
            self._maybe_stop()
            return
        if self.router is None:
            if len(self._waiting) >= MAX_WAITING_JOINS:
                self._respond(request, event.error(ErrorCode.RATE_LIMITED, "call busy, retry"))
                return
            self._waiting.append(request)
            self._open_router()
            return
        pid = secrets.token_hex(6)
        while pid in self.by_id:
            pid = secrets.token_hex(6)
        p = _Participant(pid, request.user, request.device, request.session)
        self._bind(p, request)
        self.participants[p.key] = p
        self.by_id[pid] = p
        self.ctx.counters.call_participants += 1
        self.ctx.counters.call_joins += 1
        self._push_others(p, self._participant_event(ParticipantAction.JOINED, p))
        self._reply_join(request, event, p, CallMedia.NEW)
        self._renegotiate(p)

    def _reply_join(
        self, request: CallRequest, event: CallJoin, p: _Participant, media: CallMedia
    ) -> None:
        servers = [{"urls": [url]} for url in self.ctx.config.media_stun_servers]
        self._respond(
            request,
            event.reply(
                participant=p.id,
                media=media,
                participants=[q.info() for q in self.participants.values()],
                speaker=self.speaker if self.speaker in self.by_id else None,
                ice_servers=servers,
            ),
        )

    def _bind(self, p: _Participant, request: CallRequest) -> None:
        p.connection = request.connection
        p.conn_id = request.conn_id
        p.device = request.device
        p.binding += 1
        if p.grace_timer is not None:
            p.grace_timer.cancel()
            p.grace_timer = None

    def _rejoin(self, request: CallRequest, event: CallJoin, p: _Participant) -> None:
        """The same session joins again (a reconnect): re-bind, keep or renew its media."""
        self._bind(p, request)
        if self.router is not None and p.media_up():
            self._reply_join(request, event, p, CallMedia.KEPT)
            if p.offer is not None:
                self._push(p, p.offer)  # the offer may have been lost with the old socket
            elif p.renegotiate and not p.negotiating:
                p.renegotiate = False
                self._renegotiate(p)
            return
        self._reply_join(request, event, p, CallMedia.NEW)
        self._reset_media(p)

    def _on_connection_gone(self, conn_id: int) -> None:
        grace = self.ctx.config.call_rejoin_grace
        for p in [p for p in self.participants.values() if p.conn_id == conn_id]:
            p.connection = None
            p.conn_id = None
            if grace <= 0:
                self._remove(p)
                continue
            p.grace_timer = self.call_later(grace, _GraceOver(p.key, p.binding))

    def _remove(self, p: _Participant, *, ended: str | None = None) -> None:
        """Take ``p`` out of the call; the others are told (and renegotiated)."""
        if self.participants.get(p.key) is not p:
            return
        del self.participants[p.key]
        del self.by_id[p.id]
        self.ctx.counters.call_participants -= 1
        if p.grace_timer is not None:
            p.grace_timer.cancel()
        if ended is not None:
            self._push(p, CallEnded(room=self.room_id, reason=ended))
        had_tracks = bool(p.tracks)
        info = self._participant_event(ParticipantAction.LEFT, p)
        p.forget_media()
        if self.router is not None:
            self._fire(None, "drop", {"participant": p.id})
        self._push_others(None, info)
        if self.speaker == p.id:
            self.speaker = None
            self._push_others(None, CallSpeaker(room=self.room_id, participant=None))
        if had_tracks:
            for other in self.participants.values():
                self._renegotiate(other)
        self._maybe_stop()

    def _participant_event(self, action: ParticipantAction, p: _Participant) -> CallParticipant:
        return CallParticipant(room=self.room_id, action=action, participant=p.info())

    # -- router -----------------------------------------------------------------
    def _open_router(self) -> None:
        """Open a fresh router; participants already in the call (a lost worker)
        are then told ``call.restart``, and waiting joins are admitted."""
        pool = self.ctx.media
        if self._opening or pool is None:
            return
        self._opening = True
        router = f"{self.room_id}~{next(self._router_ids)}"

        def opened(_index: Any, error: BaseException | None) -> None:
            self._opening = False
            if error is not None:
                log.warning("call %s: router not opened: %r", self.room_id, error)
                waiting, self._waiting = list(self._waiting), deque()
                for request in waiting:
                    self._respond(
                        request,
                        request.event.error(ErrorCode.MEDIA_UNAVAILABLE, "media unavailable"),
                    )
                if self.participants:
                    self.call_later(REOPEN_RETRY_S, _Reopen())
                else:
                    self._maybe_stop()
                return
            self.router = router
            if self.participants:  # they lost their media with the old router
                self.restarts += 1
                self.ctx.counters.call_restarts += 1
                for p in self.participants.values():
                    self._push(p, CallRestarted(room=self.room_id, reason="media worker restarted"))
            waiting, self._waiting = list(self._waiting), deque()
            for request in waiting:
                self._admit(request, request.event)
            self._maybe_stop()

        self._io(lambda: pool.open_router(router, self.ref, wait=ROUTER_WAIT_S), opened)

    def _on_worker_lost(self, message: WorkerLost) -> None:
        if message.router != self.router:
            return
        log.warning("call %s: media worker %d lost", self.room_id, message.worker)
        self.router = None
        self.speaker = None
        for p in self.participants.values():
            p.forget_media()
        if self.participants:
            self._open_router()
        else:
            self._maybe_stop()

    def _on_media_event(self, message: MediaEvent) -> None:
        if message.router != self.router:
            return
        params = message.params
        if message.name == "transport":
            p = self.by_id.get(str(params.get("participant")))
            state = params.get("state")
            if p is None or not isinstance(state, str):
                return
            if params.get("pc") == "pub":
                p.pub_state = state
            elif params.get("pc") == "sub":
                p.sub_state = state
        elif message.name == "speaker":
            speaker = params.get("participant")
            speaker = speaker if isinstance(speaker, str) and speaker in self.by_id else None
            if speaker != self.speaker:
                self.speaker = speaker
                self._push_others(None, CallSpeaker(room=self.room_id, participant=speaker))

    # -- media ------------------------------------------------------------------
    def _reset_media(self, p: _Participant) -> None:
        """Drop ``p``'s transports: its tracks go, then it gets a fresh offer as needed."""
        removed = list(p.tracks.values())
        p.forget_media()
        gen = p.gen
        for track in removed:
            self._push_others(
                p, CallTrack(room=self.room_id, action=TrackAction.REMOVED, track=track)
            )
        if removed:
            for other in self.participants.values():
                if other is not p:
                    self._renegotiate(other)
        if self.router is None:
            return

        def dropped(_result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.info("call %s: drop of %s failed: %r", self.room_id, p.id, error)
            if self._current(p, gen):
                self._renegotiate(p)

        self._media(self._worker("drop", {"participant": p.id}), dropped)

    def _on_publish(self, request: CallRequest, p: _Participant, event: CallPublish) -> None:
        if self.router is None:
            self._respond(request, event.error(ErrorCode.MEDIA_UNAVAILABLE, "media restarting"))
            return
        if p.publishing:
            self._respond(
                request, event.error(ErrorCode.RATE_LIMITED, "a publish is already in progress")
            )
            return
        p.publishing = True
        gen = p.gen

        def published(result: Any, error: BaseException | None) -> None:
            if not self._current(p, gen):
                self._respond(
                    request,
                    event.error(ErrorCode.MEDIA_UNAVAILABLE, "media restarted, publish again"),
                )
                return
            p.publishing = False
            if error is not None:
                self._respond(request, self._error(event, error))
                return
            try:
                tracks = [
                    TrackInfo(
                        id=t["id"],
                        participant=p.id,
                        kind=t["kind"],
                        rids=tuple(t.get("rids") or ()),
                        muted=p.muted(t["kind"]),
                    )
                    for t in result["tracks"]
                ]
                reply = event.reply(sdp=result["sdp"], tracks=tracks)
            except (KeyError, TypeError, LocalProtocolError) as exc:
                log.error("call %s: bad publish result from the worker: %r", self.room_id, exc)
                self._respond(request, event.error(ErrorCode.INTERNAL, "media server error"))
                return
            self._respond(request, reply)
            self._tracks_changed(p, {t.id: t for t in tracks})

        self._media(self._worker("publish", {"participant": p.id, "sdp": event.sdp}), published)

    def _tracks_changed(self, p: _Participant, tracks: dict[str, TrackInfo]) -> None:
        old, p.tracks = p.tracks, tracks
        added = [t for tid, t in tracks.items() if tid not in old]
        removed = [t for tid, t in old.items() if tid not in tracks]
        for track in removed:
            self._push_others(
                p, CallTrack(room=self.room_id, action=TrackAction.REMOVED, track=track)
            )
        for track in added:
            self._push_others(
                p, CallTrack(room=self.room_id, action=TrackAction.ADDED, track=track)
            )
            if track.muted:
                self._fire(None, "pause", {"track": track.id, "paused": True})
        if added or removed:
            for other in self.participants.values():
                if other is not p:
                    self._renegotiate(other)

    def _wanted(self, p: _Participant) -> tuple[str, ...]:
        return tuple(
            sorted(tid for q in self.participants.values() if q is not p for tid in q.tracks)
        )

    def _renegotiate(self, p: _Participant) -> None:
        """Make the worker forward exactly the others' tracks to ``p`` (one offer at a time)."""
        if self.router is None or self.participants.get(p.key) is not p:
            return
        if p.negotiating or p.connection is None:
            p.renegotiate = True
            return
        wanted = self._wanted(p)
        if wanted == p.subscribed:
            return
        p.negotiating = True
        p.renegotiate = False
        gen = p.gen

        def subscribed(result: Any, error: BaseException | None) -> None:
            if not self._current(p, gen):
                return
            if error is not None:
                p.negotiating = False
                log.info("call %s: subscribe of %s failed: %r", self.room_id, p.id, error)
                if isinstance(error, MediaError):
                    self._after_negotiation(p)
                return
            p.subscribed = wanted
            sdp = result.get("sdp") if isinstance(result, dict) else None
            if sdp is None:
                p.negotiating = False
                self._after_negotiation(p)
                return
            try:
                offer = CallOffer(room=self.room_id, sdp=sdp, mids=result.get("mids") or {})
            except LocalProtocolError as exc:
                log.error("call %s: bad offer from the worker: %r", self.room_id, exc)
                p.negotiating = False
                return
            p.offer = offer
            p.offer_serial += 1
            p.offer_timer = self.call_later(OFFER_TIMEOUT_S, _OfferTimeout(p.key, p.offer_serial))
            self._push(p, offer)

        self._media(
            self._worker("subscribe", {"participant": p.id, "tracks": list(wanted)}), subscribed
        )

    def _after_negotiation(self, p: _Participant) -> None:
        if p.renegotiate:
            p.renegotiate = False
            self._renegotiate(p)

    def _on_answer(self, request: CallRequest, p: _Participant, event: CallAnswer) -> None:
        if p.offer is None or p.answering:
            self._respond(
                request,
                event.error(ErrorCode.BAD_REQUEST, "no call.offer is waiting for an answer"),
            )
            return
        p.answering = True
        gen = p.gen
        serial = p.offer_serial

        def answered(_result: Any, error: BaseException | None) -> None:
            if not self._current(p, gen) or p.offer_serial != serial:
                self._respond(
                    request, event.error(ErrorCode.MEDIA_UNAVAILABLE, "media restarted meanwhile")
                )
                return
            p.answering = False
            if error is not None:
                # The offer stays outstanding: the client may answer it again.
                self._respond(request, self._error(event, error))
                return
            p.offer = None
            if p.offer_timer is not None:
                p.offer_timer.cancel()
                p.offer_timer = None
            p.negotiating = False
            self._respond(request, event.reply())
            self._after_negotiation(p)

        self._media(self._worker("answer", {"participant": p.id, "sdp": event.sdp}), answered)

    def _on_offer_timeout(self, message: _OfferTimeout) -> None:
        p = self.participants.get(message.key)
        if p is None or p.offer is None or p.offer_serial != message.offer:
            return
        log.info("call %s: %s did not answer the offer in time", self.room_id, p.id)
        self._push(p, CallRestarted(room=self.room_id, reason="no answer to call.offer in time"))
        self._reset_media(p)

    def _on_mute(self, request: CallRequest, p: _Participant, event: CallMute) -> None:
        if event.kind == MediaKind.AUDIO:
            p.audio_muted = event.muted
        else:
            p.video_muted = event.muted
        changed = [t for t in p.tracks.values() if t.kind == event.kind and t.muted != event.muted]
        for track in changed:
            p.tracks[track.id] = TrackInfo(
                id=track.id,
                participant=track.participant,
                kind=track.kind,
                rids=track.rids,
                muted=event.muted,
            )
        self._push_others(p, self._participant_event(ParticipantAction.UPDATED, p))
        if not changed or self.router is None:
            self._respond(request, event.reply())
            return
        pool = self.ctx.media
        router = self.router
        assert pool is not None

        async def pause_all() -> None:
            for track in changed:
                await pool.call(router, "pause", {"track": track.id, "paused": event.muted})

        def paused(_result: Any, error: BaseException | None) -> None:
            self._respond(request, event.reply() if error is None else self._error(event, error))

        self._media(pause_all, paused)

    # -- console ------------------------------------------------------------------
    def state_summary(self) -> str:
        """One line for the console's actor list."""
        router = self.router or ("opening" if self._opening else "no router")
        return f"{len(self.participants)} participants, {router}, {self.restarts} restarts"

    def inspect(self) -> dict[str, Any]:
        """Console detail (runs in the actor: trio thread)."""
        pool = self.ctx.media
        return {
            "room": self.room_id,
            "router": self.router,
            "worker": None if pool is None or self.router is None else pool.worker_of(self.router),
            "speaker": self.speaker,
            "restarts": self.restarts,
            "participants": [
                {
                    "id": p.id,
                    "user": p.user,
                    "device": p.device,
                    "connected": p.connection is not None,
                    "tracks": sorted(p.tracks),
                    "subscribed": list(p.subscribed),
                    "offer_outstanding": p.offer is not None,
                    "pub": p.pub_state,
                    "sub": p.sub_state,
                }
                for p in self.participants.values()
            ],
        }
