"""A call participant on aiortc, driven from trio (tests, benchmarks, bots).

:func:`open_call_peer` joins a room's call through a :class:`tether.client.Client`
(signaling) and runs the media side, aiortc on an asyncio loop in a background
thread, hidden behind :class:`CallPeer`::

    async with open_call_peer(client, room_id, media="live") as peer:
        await peer.wait_until(lambda p: all(s.frames > 30 for s in p.track_stats().values()), 20)

What it does, like a browser client would (``docs/client.md``, Calls):

- ``call.join``; publishes a publisher connection (offer: sendonly audio and/or
  video from :mod:`tether.media.synthetic`), answers every ``call.offer`` for its
  subscriber connection (renegotiations included);
- ``call.restart`` from the server (media worker restarted), or one of its own
  connections failing (then it sends ``call.restart`` itself): closes both
  connections and publishes afresh;
- after the SDK reconnects (:class:`tether.client.Reconnected`): ``call.join``
  again; media ``"kept"`` → nothing to do, ``"new"`` → publishes afresh;
- counts, per remote track, decoded frames, keyframes, RTP packets (RTX apart)
  and losses, and when the first packet / keyframe / decoded frame came after
  the track was subscribed (see :class:`TrackStats`).

Threads: every aiortc object lives on the peer's own asyncio loop thread; trio
talks to it only through :meth:`_LoopThread.run` (a coroutine submitted to the
loop, awaited from trio without blocking it). Counters are written by the
loop thread and read by trio under one lock; everything else (participants,
tracks, speaker) is trio-side state.

The private aiortc/aioice attributes used here (the host-address wrap for
loopback, the ICE connection's ``data_received`` and ``_protocols``, the
receivers' ``_handle_rtp_packet``) are reached through
``tether.media.worker.compat``, which lists and checks every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import av
import trio
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from tether.client import (
    CallEnded,
    CallJoined,
    CallOffer,
    CallParticipant,
    CallParticipantEvent,
    CallRestart,
    CallSpeaker,
    CallTrack,
    CallTrackEvent,
    Client,
    Reconnected,
    RequestError,
    RequestInterrupted,
)
from tether.media.synthetic import MediaMode, VideoSpec, make_tracks
from tether.media.worker import compat

log = logging.getLogger("tether.media.peer")

_T = TypeVar("_T")

#: Error codes of the call protocol the peer reacts to.
_NOT_IN_CALL = 130
_MEDIA_UNAVAILABLE = 132
#: Publishing while the media worker restarts answers 132: retry this long.
_PUBLISH_RETRY_S = 30.0
#: Call events and local failures waiting for the signaling task (bounded).
_INBOX_CAPACITY = 256
#: How often :meth:`CallPeer.wait_until` looks at its condition.
_POLL_S = 0.05
#: Receive buffer of a sink-mode subscriber socket (bytes; the kernel caps it at
#: net.core.rmem_max): about 1.5 s of a 6-person call at 2.5 Mbit/s each.
SINK_RCVBUF = 4 * 1024 * 1024
#: Loop thread shutdown: closing connections, then joining the thread.
_CLOSE_TIMEOUT_S = 10.0


def allow_loopback() -> None:
    """Make aioice gather 127.0.0.1 too (process-wide, idempotent): see ``compat``."""
    compat.add_loopback_host_address()


# -- counters -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TrackStats:
    """What this peer received of one remote track (a snapshot).

    Times are seconds after the track's latest subscription: the moment the
    peer applied the ``call.offer`` that mapped the track to one of its media
    sections (a re-subscription, e.g. after a restart, starts them afresh;
    the counts keep adding up).

    Attributes:
        track: the track id (``<participant>.<mid>``).
        kind: ``"audio"`` or ``"video"``.
        mid: the subscriber media section carrying it.
        frames: decoded frames (0 with ``decode=False``).
        keyframes: VP8 keyframe starts received (first packet of a keyframe).
        packets: RTP packets of the track received (RTX included).
        rtx_packets: of which retransmissions (RTX).
        lost: sequence numbers never received in the primary stream
            (before any repair by RTX).
        width, height: size of the latest decoded video frame (0: none yet).
        first_packet_s: first RTP packet of the current subscription.
        first_packet_keyframe: whether that first (primary) video packet
            started a keyframe; None before one came or for audio.
        first_keyframe_s: first keyframe start of the current subscription.
        first_frame_s: first decoded frame of the current subscription.
        subscriptions: how many times the track was (re)subscribed.
    """

    track: str
    kind: str
    mid: str
    frames: int
    keyframes: int
    packets: int
    rtx_packets: int
    lost: int
    width: int
    height: int
    first_packet_s: float | None
    first_packet_keyframe: bool | None
    first_keyframe_s: float | None
    first_frame_s: float | None
    subscriptions: int


@dataclasses.dataclass(slots=True)
class _Counters:
    """Mutable counters of one track; written by the loop thread under the peer's lock."""

    track: str
    kind: str
    mid: str
    subscribed_at: float
    frames: int = 0
    keyframes: int = 0
    packets: int = 0
    rtx_packets: int = 0
    lost_before: int = 0  # losses of earlier SSRCs / subscriptions
    ssrc: int | None = None
    base_seq: int = 0  # extended sequence numbers of the current SSRC
    max_seq: int = 0
    primary: int = 0  # primary packets of the current SSRC
    width: int = 0
    height: int = 0
    first_packet_at: float | None = None
    first_packet_keyframe: bool | None = None
    first_keyframe_at: float | None = None
    first_frame_at: float | None = None
    subscriptions: int = 1

    def resubscribe(self, mid: str, now: float) -> None:
        self.mid = mid
        self.subscribed_at = now
        self.first_packet_at = self.first_keyframe_at = self.first_frame_at = None
        self.first_packet_keyframe = None
        self.subscriptions += 1

    def primary_packet(self, ssrc: int, seq: int) -> None:
        """Sequence accounting of the primary stream (RFC 3550 A.1, simplified)."""
        if self.ssrc != ssrc:
            self.lost_before += self._lost_now()
            self.ssrc = ssrc
            self.base_seq = self.max_seq = seq
            self.primary = 1
            return
        # Unwrap against the highest extended sequence number seen.
        delta = (seq - (self.max_seq & 0xFFFF) + 0x8000) % 0x10000 - 0x8000
        extended = self.max_seq + delta
        self.max_seq = max(self.max_seq, extended)
        self.primary += 1

    def _lost_now(self) -> int:
        if self.ssrc is None:
            return 0
        return max(0, self.max_seq - self.base_seq + 1 - self.primary)

    def snapshot(self) -> TrackStats:
        def since(at: float | None) -> float | None:
            return None if at is None else at - self.subscribed_at

        return TrackStats(
            track=self.track,
            kind=self.kind,
            mid=self.mid,
            frames=self.frames,
            keyframes=self.keyframes,
            packets=self.packets,
            rtx_packets=self.rtx_packets,
            lost=self.lost_before + self._lost_now(),
            width=self.width,
            height=self.height,
            first_packet_s=since(self.first_packet_at),
            first_packet_keyframe=self.first_packet_keyframe,
            first_keyframe_s=since(self.first_keyframe_at),
            first_frame_s=since(self.first_frame_at),
            subscriptions=self.subscriptions,
        )


def vp8_keyframe_start(payload: bytes) -> bool:
    """Whether an RTP VP8 payload (RFC 7741) is the first packet of a keyframe."""
    if not payload:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit unset, or not partition 0
        return False
    index = 1
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return False
        ext = payload[1]
        index = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= index:
                return False
            index += 2 if payload[index] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            index += 1
        if ext & 0x30:  # T and/or K: TID/KEYIDX byte
            index += 1
    # VP8 payload header: P bit (lowest bit of the first byte) 0 = keyframe.
    return len(payload) > index and not payload[index] & 0x01


# -- the asyncio side ----------------------------------------------------------------


class _LoopThread:
    """An asyncio event loop on its own daemon thread; trio submits coroutines to it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop; wait for it from trio (cancelling it cancels the coroutine)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    async def stop(self) -> None:
        """Stop the loop (its tasks are cancelled) and join the thread, from trio."""
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self._thread.join, _CLOSE_TIMEOUT_S)


@dataclasses.dataclass(frozen=True, slots=True)
class _Failed:
    """A local media connection failed (sent from the loop thread to the signaling task)."""

    pc: Literal["pub", "sub"]
    generation: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeerOptions:
    """How a :class:`CallPeer` publishes and receives (see :func:`open_call_peer`)."""

    audio: bool = True
    video: bool = True
    media: MediaMode = "live"
    decode: bool = True
    sink: bool = False
    loss: float = 0.0
    video_spec: VideoSpec = dataclasses.field(default_factory=VideoSpec)
    tone_hz: float = 440.0
    seed: int | None = None


class _Media:
    """Both RTCPeerConnections of a participant; every method runs on the loop thread."""

    def __init__(
        self,
        options: PeerOptions,
        lock: threading.Lock,
        counters: dict[str, _Counters],
        notify: Callable[[_Failed], None],
    ) -> None:
        self._options = options
        self._lock = lock
        self._counters = counters
        self._notify = notify
        self._rng = random.Random(options.seed)
        self.generation = 0
        self.ice_servers: list[RTCIceServer] = []
        self.pub: RTCPeerConnection | None = None
        self.sub: RTCPeerConnection | None = None
        self._tracks: list[MediaStreamTrack] = []
        self._mid_track: dict[str, str] = {}  # subscriber mid -> track id
        self._mid_rtx: dict[str, frozenset[int]] = {}  # subscriber mid -> RTX payload types
        self._ssrc_mid: dict[int, tuple[str, bool]] = {}  # SSRC -> (mid, is RTX), sink mode
        self._hooked: set[int] = set()  # id() of receivers already wrapped
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def _config(self) -> RTCConfiguration:
        # Always an explicit list: aiortc's default contacts a public STUN server.
        return RTCConfiguration(
            iceServers=list(self.ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )

    def _watch(self, pc: RTCPeerConnection, name: Literal["pub", "sub"]) -> None:
        generation = self.generation

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "failed" and generation == self.generation:
                self._notify(_Failed(name, generation))

    async def reset(self) -> None:
        """Close both connections (a rebuild follows); stale failure reports are ignored."""
        self.generation += 1
        pub, sub = self.pub, self.sub
        self.pub = self.sub = None
        self._mid_track.clear()
        self._mid_rtx.clear()
        self._ssrc_mid.clear()
        for track in self._tracks:
            track.stop()
        self._tracks = []
        for pc in (pub, sub):
            if pc is not None:
                await pc.close()

    async def offer(self) -> str:
        """A fresh publisher connection with the synthetic tracks; returns its offer SDP."""
        if self.pub is not None:
            old, self.pub = self.pub, None
            await old.close()
        for track in self._tracks:
            track.stop()
        pc = RTCPeerConnection(self._config())
        self.pub = pc
        self._watch(pc, "pub")
        options = self._options
        self._tracks = make_tracks(
            options.media,
            options.video_spec,
            audio=options.audio,
            video=options.video,
            freq=options.tone_hz,
        )
        for track in self._tracks:
            pc.addTransceiver(track, direction="sendonly")
        # Gathering completes inside setLocalDescription: candidates are in the SDP.
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def accept(self, sdp: str) -> None:
        """Apply the server's answer to the publisher offer."""
        if self.pub is None:
            raise RuntimeError("Expected a publisher connection to apply the answer to")
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def answer(self, sdp: str, mids: Mapping[str, str]) -> str:
        """Apply a subscriber offer; returns the answer SDP (candidates included)."""
        if self.sub is None:
            pc = RTCPeerConnection(self._config())
            self.sub = pc
            self._watch(pc, "sub")
            pc.on("track", self._on_track)
        pc = self.sub
        now = time.monotonic()
        kinds = self._learn_payload_types(sdp)
        with self._lock:
            for mid, track in mids.items():
                if self._mid_track.get(mid) == track:
                    continue
                counters = self._counters.get(track)
                if counters is None:
                    self._counters[track] = _Counters(track, kinds.get(mid, "?"), mid, now)
                else:
                    counters.resubscribe(mid, now)
            self._mid_track = dict(mids)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self._hook_receivers(pc)
        return str(pc.localDescription.sdp)

    def _learn_payload_types(self, sdp: str) -> dict[str, str]:
        """Remember RTX payload types and SSRCs per mid; returns each mid's kind."""
        description = aiortc_sdp.SessionDescription.parse(sdp)
        kinds: dict[str, str] = {}
        for media in description.media:
            mid = media.rtp.muxId
            kinds[mid] = media.kind
            rtx = {g.items[1] for g in media.ssrc_group if g.semantic == "FID" and len(g.items) > 1}
            for info in media.ssrc:
                self._ssrc_mid[int(info.ssrc)] = (mid, info.ssrc in rtx)
            self._mid_rtx[mid] = frozenset(
                codec.payloadType
                for codec in media.rtp.codecs
                if codec.mimeType.lower().endswith("/rtx") and codec.payloadType is not None
            )
        return kinds

    def _hook_receivers(self, pc: RTCPeerConnection) -> None:
        """Wrap new receivers' packet handler (counting), and the ICE input (loss)."""
        for transceiver in pc.getTransceivers():
            receiver = transceiver.receiver
            if id(receiver) in self._hooked or transceiver.mid is None:
                continue
            self._hooked.add(id(receiver))
            compat.wrap_receiver_packets(
                receiver, functools.partial(self._counting, transceiver.mid)
            )
        if self._options.loss > 0 or self._options.sink:
            connection = compat.pc_ice_connection(pc)
            if connection is not None and not getattr(connection, "_tether_lossy", False):
                connection._tether_lossy = True
                connection.data_received = self._lossy(connection.data_received)
                if self._options.sink:
                    for protocol in compat.connection_protocols(connection):
                        sock = protocol.transport.get_extra_info("socket")
                        if sock is not None:
                            with contextlib.suppress(OSError):
                                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SINK_RCVBUF)

    def _lossy(self, deliver: Callable[[bytes, int], None]) -> Callable[[bytes, int], None]:
        """Wrap the ICE input: drop a fraction of SRTP (``loss``); count and drop all (``sink``)."""
        rate = self._options.loss
        sink = self._options.sink

        def data_received(data: bytes, component: int) -> None:
            # SRTP (not SRTCP: payload types 192..223) in RFC 7983's RTP range.
            if len(data) > 11 and 127 < data[0] < 192 and not 192 <= data[1] <= 223:
                if rate and self._rng.random() < rate:
                    self.dropped += 1
                    return
                if sink:
                    self._count_header(data)
                    return
            deliver(data, component)

        return data_received

    def _count_header(self, data: bytes) -> None:
        """Sink mode: count an SRTP packet from its clear header (SSRC, sequence number)."""
        ssrc = int.from_bytes(data[8:12], "big")
        where = self._ssrc_mid.get(ssrc)
        if where is None:
            return
        mid, is_rtx = where
        with self._lock:
            counters = self._arrived(mid, is_rtx, time.monotonic())
            if counters is not None and not is_rtx:
                counters.primary_packet(ssrc, int.from_bytes(data[2:4], "big"))

    def _arrived(self, mid: str, is_rtx: bool, now: float) -> _Counters | None:
        """Count a packet of ``mid`` (under the lock); its counters, or None if unknown."""
        track = self._mid_track.get(mid)
        counters = self._counters.get(track) if track is not None else None
        if counters is None:
            return None
        counters.packets += 1
        if counters.first_packet_at is None:
            counters.first_packet_at = now
        if is_rtx:
            counters.rtx_packets += 1
        return counters

    def _counting(
        self, mid: str, handle: Callable[[Any, int], Coroutine[Any, Any, None]]
    ) -> Callable[[Any, int], Coroutine[Any, Any, None]]:
        decode = self._options.decode

        async def handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
            self._count_packet(mid, packet)
            if decode:
                await handle(packet, arrival_time_ms)

        return handle_rtp_packet

    def _count_packet(self, mid: str, packet: Any) -> None:
        now = time.monotonic()
        is_rtx = packet.payload_type in self._mid_rtx.get(mid, ())
        with self._lock:
            counters = self._arrived(mid, is_rtx, now)
            if counters is None or is_rtx:
                return
            counters.primary_packet(packet.ssrc, packet.sequence_number)
            if counters.kind != "video":
                return
            keyframe = vp8_keyframe_start(packet.payload)
            if counters.first_packet_keyframe is None:
                counters.first_packet_keyframe = keyframe
            if keyframe:
                counters.keyframes += 1
                if counters.first_keyframe_at is None:
                    counters.first_keyframe_at = now

    def _on_track(self, track: MediaStreamTrack) -> None:
        pc = self.sub
        if pc is None or not self._options.decode:
            return
        mid = next((t.mid for t in pc.getTransceivers() if t.receiver.track is track), None)
        if mid is None:
            return
        task = asyncio.ensure_future(self._consume(mid, track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, mid: str, track: MediaStreamTrack) -> None:
        """Pull decoded frames (aiortc decodes in its own thread) and count them."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            with self._lock:
                track_id = self._mid_track.get(mid)
                counters = self._counters.get(track_id) if track_id is not None else None
                if counters is None:
                    continue
                counters.frames += 1
                if counters.first_frame_at is None:
                    counters.first_frame_at = now
                if isinstance(frame, av.VideoFrame):
                    counters.width, counters.height = frame.width, frame.height

    def states(self) -> tuple[str, str]:
        """Connection states of the publisher and subscriber connections ("none": absent)."""
        return (
            self.pub.connectionState if self.pub is not None else "none",
            self.sub.connectionState if self.sub is not None else "none",
        )

    async def close(self) -> None:
        """Close everything (the loop thread stops afterwards)."""
        await self.reset()
        for task in list(self._tasks):
            task.cancel()


# -- the trio side -------------------------------------------------------------------


class CallEndedError(Exception):
    """The server removed this participant from the call (``call.ended``)."""


class CallPeer:
    """One call participant; create it with :func:`open_call_peer`.

    Trio-side state (read it from trio only): :attr:`joined`,
    :attr:`participant`, :attr:`participants`, :attr:`tracks`, :attr:`speaker`,
    :attr:`published`, :attr:`ended`, and counts of :attr:`rebuilds` (media
    published afresh) and :attr:`rejoins` (``call.join`` after a reconnect).
    Per-track reception counters: :meth:`track_stats` (thread-safe snapshot).
    """

    def __init__(self, client: Client, room: str, options: PeerOptions) -> None:
        self.client = client
        self.room = room
        self.options = options
        self.joined: CallJoined | None = None
        self.participants: dict[str, CallParticipant] = {}
        self.tracks: dict[str, CallTrack] = {}
        self.speaker: str | None = None
        self.published: tuple[CallTrack, ...] = ()
        self.ended: str | None = None
        self.rebuilds = 0
        self.rejoins = 0
        self.offers_answered = 0
        self._lock = threading.Lock()
        self._counters: dict[str, _Counters] = {}
        self._inbox_send, self._inbox = trio.open_memory_channel[object](_INBOX_CAPACITY)
        self._token = trio.lowlevel.current_trio_token()
        self._loop = _LoopThread(f"call-peer-{room}")
        self._media = _Media(options, self._lock, self._counters, self._from_loop)
        self._busy = trio.Lock()  # one signaling exchange at a time

    @property
    def participant(self) -> str | None:
        """This peer's participant id (None before joining)."""
        return self.joined.participant if self.joined is not None else None

    def track_stats(self) -> dict[str, TrackStats]:
        """Reception counters of every remote track subscribed so far, by track id."""
        with self._lock:
            return {track: c.snapshot() for track, c in self._counters.items()}

    def stats(self, track: str) -> TrackStats | None:
        """Reception counters of one track (None if never subscribed)."""
        with self._lock:
            counters = self._counters.get(track)
            return counters.snapshot() if counters is not None else None

    @property
    def dropped_datagrams(self) -> int:
        """Incoming RTP datagrams dropped by loss injection (``loss``)."""
        return self._media.dropped

    async def connection_states(self) -> tuple[str, str]:
        """(publisher, subscriber) RTCPeerConnection states; "none" when absent."""
        return await self._loop.run(self._async_states())

    async def _async_states(self) -> tuple[str, str]:
        return self._media.states()

    async def wait_until(self, condition: Callable[[CallPeer], bool], timeout: float) -> None:
        """Wait until ``condition(self)`` holds (checked every 50 ms).

        Raises:
            trio.TooSlowError: not within ``timeout`` seconds.
            CallEndedError: the server ended this participant's call meanwhile.
        """
        with trio.fail_after(timeout):
            while not condition(self):
                if self.ended is not None:
                    raise CallEndedError(self.ended)
                await trio.sleep(_POLL_S)

    def remote_tracks(self, kind: str | None = None) -> list[CallTrack]:
        """The other participants' tracks in the call (optionally of one kind)."""
        own = self.participant
        return [
            t
            for t in self.tracks.values()
            if t.participant != own and (kind is None or t.kind == kind)
        ]

    async def mute(self, kind: Literal["audio", "video"], muted: bool) -> None:
        """Mute/unmute own audio or video (the server stops forwarding it)."""
        await self.client.mute(self.room, kind, muted)

    async def set_quality(self, track: str, width: int, height: int) -> None:
        """Ask for ``track`` at this size (simulcast layer choice)."""
        await self.client.set_quality(self.room, track, width, height)

    async def restart(self) -> None:
        """Drop both connections and publish afresh (what a failed connection triggers)."""
        async with self._busy:
            await self.client.restart_call(self.room)
            await self._rebuild()

    # -- loop thread -> trio ---------------------------------------------------------
    def _from_loop(self, item: _Failed) -> None:
        """Called on the loop thread: hand ``item`` to the signaling task."""

        def put() -> None:
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                self._inbox_send.send_nowait(item)

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(put)

    # -- signaling ---------------------------------------------------------------------
    async def _join(self) -> CallJoined:
        joined = await self.client.join_call(self.room)
        self.joined = joined
        self.participants = {p.id: p for p in joined.participants}
        self.tracks = {t.id: t for p in joined.participants for t in p.tracks}
        self.speaker = joined.speaker
        self._media.ice_servers = [RTCIceServer(urls=list(s.urls)) for s in joined.ice_servers]
        return joined

    async def _publish(self) -> None:
        """Offer the publisher connection until the server takes it (132: retried)."""
        deadline = trio.current_time() + _PUBLISH_RETRY_S
        delay = 0.1
        while True:
            sdp = await self._loop.run(self._media.offer())
            try:
                result = await self.client.publish(self.room, sdp)
            except RequestError as exc:
                if exc.code != _MEDIA_UNAVAILABLE or trio.current_time() > deadline:
                    raise
                await trio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            await self._loop.run(self._media.accept(result.sdp))
            self.published = result.tracks
            for track in result.tracks:
                self.tracks[track.id] = track
            return

    async def _rebuild(self) -> None:
        """Close both connections and publish afresh (a new ``call.offer`` follows)."""
        self.rebuilds += 1
        await self._loop.run(self._media.reset())
        await self._publish()

    async def _pump(self, watch: AsyncIterator[object]) -> None:
        async for event in watch:
            await self._inbox_send.send(event)

    async def _run(self, watch: AsyncIterator[object], task_status: trio.TaskStatus[None]) -> None:
        """Join, publish, then handle call events and local failures until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, watch)
            async with self._busy:
                await self._join()
                await self._publish()
            task_status.started()
            async for item in self._inbox:
                async with self._busy:
                    try:
                        await self._handle(item)
                    except RequestInterrupted:
                        # The connection dropped mid-exchange: Reconnected follows
                        # and the rejoin decides what to redo.
                        log.info("call %s: signaling interrupted by a reconnect", self.room)
                    except RequestError as exc:
                        if exc.code != _NOT_IN_CALL:
                            raise
                        # Removed meanwhile (e.g. grace expired): join afresh.
                        await self._rejoin()
                if self.ended is not None:
                    return

    async def _rejoin(self) -> None:
        self.rejoins += 1
        joined = await self._join()
        if joined.media == "new":
            await self._rebuild()

    async def _handle(self, item: object) -> None:
        if isinstance(item, CallOffer):
            sdp = await self._loop.run(self._media.answer(item.sdp, item.mids))
            await self.client.answer_offer(self.room, sdp)
            self.offers_answered += 1
        elif isinstance(item, CallParticipantEvent):
            participant = item.participant
            if item.action == "left":
                self.participants.pop(participant.id, None)
                for track in [t for t in self.tracks.values() if t.participant == participant.id]:
                    del self.tracks[track.id]
            else:
                self.participants[participant.id] = participant
                for track in participant.tracks:
                    self.tracks[track.id] = track
        elif isinstance(item, CallTrackEvent):
            if item.action == "removed":
                self.tracks.pop(item.track.id, None)
            else:
                self.tracks[item.track.id] = item.track
        elif isinstance(item, CallSpeaker):
            self.speaker = item.participant
        elif isinstance(item, CallRestart):
            log.info("call %s: restart (%s)", self.room, item.reason)
            await self._rebuild()
        elif isinstance(item, CallEnded):
            self.ended = item.reason or "ended"
        elif isinstance(item, Reconnected):
            await self._rejoin()
        elif isinstance(item, _Failed) and item.generation == self._media.generation:
            log.info("call %s: %s connection failed, restarting", self.room, item.pc)
            await self.client.restart_call(self.room)
            await self._rebuild()

    async def _close(self, *, leave: bool) -> None:
        """Leave the call (best effort, bounded), close both connections, stop the thread."""
        with trio.CancelScope(shield=True):
            if leave and self.ended is None and self.client.closed is None:
                with trio.move_on_after(5.0), contextlib.suppress(RequestError, RequestInterrupted):
                    await self.client.leave_call(self.room)
            with trio.move_on_after(_CLOSE_TIMEOUT_S):
                await self._loop.run(self._media.close())
            await self._loop.stop()
            self._inbox_send.close()


@asynccontextmanager
async def open_call_peer(
    client: Client,
    room: str,
    *,
    audio: bool = True,
    video: bool = True,
    media: MediaMode = "live",
    decode: bool = True,
    sink: bool = False,
    loss: float = 0.0,
    video_spec: VideoSpec | None = None,
    tone_hz: float = 440.0,
    seed: int | None = None,
    join_timeout: float = 30.0,
    leave: bool = True,
) -> AsyncIterator[CallPeer]:
    """Join ``room``'s call with ``client`` and publish; yields the running :class:`CallPeer`.

    Args:
        client: a connected SDK client; the peer takes the room's call events
            (:meth:`Client.watch_call`) for the block, other events stay on
            ``client.events()``.
        room: the room id (you must be a member).
        audio, video: what to publish (synthetic; neither = receive only).
        media: ``"live"`` (encoded as it goes, honours keyframe requests) or
            ``"replay"`` (pre-encoded once: cheap; keyframe every
            ``video_spec.keyframe_interval`` frames).
        decode: decode what is received (counts frames); False = count RTP
            packets only (no jitter buffer, NACK or decoder).
        sink: count incoming RTP from its clear header at the ICE layer and
            drop it (no decryption, no RTCP feedback, no keyframe detection):
            the cheapest receiver, for benchmarks.
        loss: fraction (0..1) of incoming RTP datagrams to drop at this client.
        video_spec: size, rate and bitrate of the published video
            (default 320x240 at 15 fps).
        tone_hz: frequency of the published tone.
        seed: seeds the loss injection.
        join_timeout: seconds for join + publish before giving up.
        leave: send ``call.leave`` when the block ends.

    Raises:
        RequestError: joining or publishing was refused (e.g. 120, 132, 133).
        trio.TooSlowError: join + publish took longer than ``join_timeout``.
    """
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"Expected loss in [0, 1), got {loss}")
    allow_loopback()
    options = PeerOptions(
        audio=audio,
        video=video,
        media=media,
        decode=decode and not sink,
        sink=sink,
        loss=loss,
        video_spec=video_spec if video_spec is not None else VideoSpec(),
        tone_hz=tone_hz,
        seed=seed,
    )
    async with client.watch_call(room) as watch:
        peer = CallPeer(client, room, options)
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(join_timeout):
                    await nursery.start(peer._run, watch)
                try:
                    yield peer
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await peer._close(leave=leave)
