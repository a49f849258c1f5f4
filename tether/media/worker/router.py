"""Packet-level forwarding: routers, publishers, producers, consumers (asyncio + aiortc).

aiortc's ``RTCPeerConnection`` is only a shell for SDP, ICE, DTLS and SRTP; its
media pipeline is switched off (:mod:`compat`) and everything RTP/RTCP is done
here on raw bytes:

- a :class:`Producer` is one ingress RTP stream (a track, or one simulcast layer):
  sequence tracking, duplicate / unrequested-RTX drop, NACK generation, a
  1024-packet history, receive statistics for RR, the publisher's SR mapping;
- a :class:`Consumer` is one forwarded track of one subscriber: per-consumer
  SSRC / sequence / timestamp / payload-type rewriting, keyframe-gated start and
  layer switching (VP8 picture id / TL0PICIDX continuity), RTX answers to NACK;
- :class:`Router` holds the participants of one call and the active speaker.

Threading: everything runs on the worker's single asyncio loop. Every DTLS hook
and every fast-path callback catches all exceptions (counted in ``hook_errors``):
an exception escaping aiortc's hook would silently end the DTLS transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import is_rtx
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.sdp import candidate_from_sdp

from tether.media.worker import compat, rtcp
from tether.media.worker.netmux import UdpMux
from tether.media.worker.rtp import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    RtpError,
    keyframe_detector,
    parse_extensions,
    parse_header,
    parse_vp8_descriptor,
    vp8_resolution,
    vp8_rewrite,
)
from tether.media.worker.sdp import (
    MediaSection,
    SdpError,
    check_publish_offer,
    munge_simulcast_answer,
    parse_sections,
)
from tether.media.worker.stats import COUNTERS

log = logging.getLogger("tether.media.worker.router")

HISTORY = 1024  # packets kept per ingress stream for NACK (power of two)
_HMASK = HISTORY - 1
MAX_MISSING = 512  # sequence numbers awaited per ingress stream
NACK_RETRIES = 3
NACK_MAX_AGE = 1.0  # seconds a missing packet is still asked for
KEYFRAME_THROTTLE = 0.3  # seconds between forwarded keyframe requests per stream
LAYER_ACTIVE_TIMEOUT = 2.0  # a simulcast layer silent this long is not chosen
MAX_NACK_SEQS = 128  # retransmissions answered per NACK packet

SPEAKER_INTERVAL = 0.3
SPEAKER_THRESHOLD = 65.0  # mean loudness (127 - level): louder than -62 dBov, not room noise
SPEAKER_MARGIN = 6.0
SPEAKER_CONFIRM = 2  # intervals a new dominant speaker must lead
SILENCE_CONFIRM = 4  # intervals of silence before "no speaker"

Emit = Callable[[str, dict[str, Any]], None]

_HEAD = struct.Struct("!BBHII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class RpcError(Exception):
    """An error reported to the main process with a spec'd code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _random_ssrc() -> int:
    return random.getrandbits(32) or 1


def new_peer_connection() -> Any:
    """A PeerConnection that contacts no STUN server (the mux provides candidates)."""
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


# =========================================================================== transports


class _Link:
    """What the per-packet path needs of a connected transport (resolved once)."""

    __slots__ = ("addr", "protect", "protect_rtcp", "sendto", "unprotect", "unprotect_rtcp")

    def __init__(
        self,
        tx: Any,
        rx: Any,
        sendto: Callable[[bytes, tuple[str, int]], object],
        addr: tuple[str, int],
    ) -> None:
        self.protect: Callable[[bytes], bytes] = tx.protect
        self.protect_rtcp: Callable[[bytes], bytes] = tx.protect_rtcp
        self.unprotect: Callable[[bytes], bytes] = rx.unprotect
        self.unprotect_rtcp: Callable[[bytes], bytes] = rx.unprotect_rtcp
        self.sendto = sendto
        self.addr = addr


class PeerTransport:
    """One PeerConnection of a participant and its fast SRTP path."""

    role = "?"

    def __init__(self, worker: Worker, participant: Participant) -> None:
        self.worker = worker
        self.participant = participant
        self.pc: Any = new_peer_connection()
        self.lock = asyncio.Lock()
        self.rtcp_ssrc = _random_ssrc()
        self.state = "new"
        self.closed = False
        self._hooked: set[int] = set()
        self._dtls: Any = None
        self._link: _Link | None = None
        self.pc.on("connectionstatechange", self._on_state)

    # ------------------------------------------------------------ lifecycle

    def hook_transports(self) -> None:
        """Install the DTLS hooks on every (bundled) transport of the PC (idempotent)."""
        for t in self.pc.getTransceivers():
            dtls = t.receiver.transport
            if dtls is None or id(dtls) in self._hooked:
                continue
            self._hooked.add(id(dtls))
            compat.install_dtls_hooks(dtls, self._rtp_hook, self._rtcp_hook)
            if self._dtls is None:
                self._dtls = dtls

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == self.state:
            return
        self.state = state
        try:
            if state == "connected":
                self._resolve()
                self.on_connected()
            elif state in ("failed", "closed"):
                self._detach_fast_path()
        except Exception:
            COUNTERS.hook_error(log, "%s %s: state handler failed", self.role, self.participant.id)
        if state in ("connected", "failed", "closed"):
            self.worker.emit(
                "transport",
                {
                    "router": self.participant.router.id,
                    "participant": self.participant.id,
                    "pc": self.role,
                    "state": state,
                },
            )

    def on_connected(self) -> None:
        """Called once DTLS is up and the fast path is resolved."""

    def _resolve(self) -> _Link | None:
        """Cache SRTP sessions and the nominated pair; route SRTP to the fast path."""
        dtls = self._dtls
        if dtls is None or self.closed:
            return None
        sessions = compat.srtp_sessions(dtls)
        if sessions is None:
            return None
        connection = compat.ice_connection(dtls)
        pair = compat.nominated_pair(connection)
        if pair is None:
            return None
        tx, rx = sessions
        link = _Link(tx, rx, self.worker.mux.sender(), pair.remote_addr)
        self._link = link
        self.worker.mux.set_fast_path(connection, self.on_datagram)
        return link

    def _detach_fast_path(self) -> None:
        self._link = None
        if self._dtls is not None:
            with contextlib.suppress(AttributeError):
                self.worker.mux.set_fast_path(compat.ice_connection(self._dtls), None)

    async def close(self) -> None:
        """Close the PC (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._detach_fast_path()
        try:
            await self.pc.close()
        except Exception:
            log.exception("%s %s: close failed", self.role, self.participant.id)
        if self.state != "closed":
            self.state = "closed"
            self.worker.emit(
                "transport",
                {
                    "router": self.participant.router.id,
                    "participant": self.participant.id,
                    "pc": self.role,
                    "state": "closed",
                },
            )

    # ------------------------------------------------------------ send

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet on the nominated pair (dropped if not connected)."""
        link = self._link
        if link is None:
            link = self._resolve() if self.state == "connected" else None
            if link is None:
                COUNTERS.dropped_packets += 1
                return
        data = link.protect(packet)
        COUNTERS.tx_packets += 1
        COUNTERS.tx_bytes += len(data)
        try:
            link.sendto(data, link.addr)
        except OSError:
            COUNTERS.dropped_packets += 1

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet (nothing if not connected)."""
        link = self._link
        if link is None:
            link = self._resolve() if self.state == "connected" else None
            if link is None:
                return
        data = link.protect_rtcp(packet)
        COUNTERS.tx_packets += 1
        COUNTERS.tx_bytes += len(data)
        try:
            link.sendto(data, link.addr)
        except OSError:
            COUNTERS.dropped_packets += 1

    # ------------------------------------------------------------ receive

    def on_datagram(self, data: bytes) -> None:
        """Fast path: an SRTP/SRTCP datagram straight from the mux."""
        link = self._link
        if link is None:
            COUNTERS.dropped_packets += 1
            return
        try:
            if 192 <= data[1] <= 223:
                self.handle_rtcp(link.unprotect_rtcp(data))
            else:
                self.handle_rtp(link.unprotect(data))
        except pylibsrtp.Error:
            COUNTERS.dropped_packets += 1
        except Exception:
            COUNTERS.hook_error(log, "%s %s: packet handler failed", self.role, self.participant.id)

    async def _rtp_hook(self, data: bytes, arrival_time_ms: int = 0) -> None:
        try:
            self.handle_rtp(data)
        except Exception:
            COUNTERS.hook_error(log, "%s %s: RTP hook failed", self.role, self.participant.id)

    async def _rtcp_hook(self, data: bytes) -> None:
        try:
            self.handle_rtcp(data)
        except Exception:
            COUNTERS.hook_error(log, "%s %s: RTCP hook failed", self.role, self.participant.id)

    def handle_rtp(self, data: bytes) -> None:
        COUNTERS.dropped_packets += 1

    def handle_rtcp(self, data: bytes) -> None:
        """Decrypted RTCP from the peer."""


# =========================================================================== publish side


class Track:
    """One published track (a publisher transceiver); video may have simulcast layers."""

    def __init__(  # noqa: PLR0917 - mirrors the codec fields
        self,
        participant: Participant,
        mid: str,
        kind: str,
        codec: Any,
        rtx_pt: int | None,
        extensions: dict[str, int],
        rids: list[str],
    ) -> None:
        self.participant = participant
        self.id = f"{participant.id}.{mid}"
        self.mid = mid
        self.kind = kind
        self.codec = codec
        self.codec_name = str(codec.name).lower()
        self.clock = int(codec.clockRate)
        self.pt = int(codec.payloadType)
        self.rtx_pt = rtx_pt
        self.rids = list(rids)
        self.mid_id = extensions.get(EXT_MID, 0)
        self.level_id = extensions.get(EXT_AUDIO_LEVEL, 0)
        self.paused = False
        self.consumers: list[Consumer] = []
        self.producers = [Producer(self, rid, index) for index, rid in enumerate(rids or [None])]
        self.by_rid = {p.rid: p for p in self.producers if p.rid is not None}
        # active speaker: loudness sum over the current interval
        self.level_sum = 0
        self.level_count = 0
        self.loudness = 0.0

    @property
    def simulcast(self) -> bool:
        return len(self.producers) > 1

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "rids": list(self.rids)}

    def layers(self) -> list[dict[str, Any]]:
        return [
            {
                "rid": p.rid or "",
                "width": p.width,
                "height": p.height,
                "bitrate_bps": p.bitrate_bps,
            }
            for p in self.producers
        ]

    def close(self) -> None:
        for c in list(self.consumers):
            c.detach()
        self.consumers.clear()
        for p in self.producers:
            p.consumers.clear()


class Producer:
    """One ingress RTP stream (a track or one simulcast layer)."""

    def __init__(self, track: Track, rid: str | None, index: int) -> None:
        self.track = track
        self.rid = rid
        self.index = index
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.video = track.kind == "video"
        self.is_key = keyframe_detector(track.codec_name) if self.video else None
        self.consumers: list[Consumer] = []
        self.hist: list[tuple[int, bool, int, int, bytes] | None] = [None] * HISTORY
        # receive statistics (RFC 3550 A.3, A.8)
        self.max_seq = -1
        self.base_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.transit = 0
        self.jitter_q4 = 0
        self.missing: dict[int, list[float]] = {}  # seq -> [first seen missing, tries]
        self.nack_scheduled = False
        # publisher SR mapping
        self.sr_ntp = 0
        self.sr_rtp = 0
        self.sr_local = 0.0  # wall time the SR arrived
        self.last_pli = 0.0
        # layer info
        self.width = 0
        self.height = 0
        self.bytes = 0
        self.bitrate_bps = 0
        self.last_packet = 0.0

    def active(self, now: float) -> bool:
        return self.ssrc is not None and now - self.last_packet < LAYER_ACTIVE_TIMEOUT

    # ------------------------------------------------------------ hot path

    def on_packet(  # noqa: PLR0917 - positional on the per-packet path (cheaper calls)
        self, seq: int, ts: int, marker: bool, level: int, body: bytes, now: float
    ) -> None:
        """One ingress packet (already de-RTX'ed); ``level`` is -1 when absent."""
        max_seq = self.max_seq
        if max_seq < 0:
            self.max_seq = self.base_seq = seq
        else:
            d = (seq - max_seq) & 0xFFFF
            if d == 0:
                COUNTERS.dropped_packets += 1
                return
            if d < 0x8000:
                if seq < max_seq:
                    self.cycles += 0x10000
                if d > 1:
                    self._gap(max_seq, d, now)
                self.max_seq = seq
                transit = int(now * self.track.clock) - ts
                j = transit - self.transit
                self.transit = transit
                if j < 0:
                    j = -j
                if j < 0x7FFFFFFF:
                    self.jitter_q4 += j - ((self.jitter_q4 + 8) >> 4)
            elif self.missing.pop(seq, None) is None:
                # duplicate / stale, e.g. Chrome's RTX "payload padding" probes
                COUNTERS.dropped_packets += 1
                return
        self.received += 1
        self.bytes += len(body)
        self.last_packet = now
        key = False
        is_key = self.is_key
        if is_key is not None and body and is_key(body):
            key = True
            if self.track.codec_name == "vp8":
                size = vp8_resolution(body)
                if size is not None and size != (self.width, self.height):
                    self.width, self.height = size
                    self.track.participant.router.layers_changed(self.track)
        if level >= 0:
            self.track.level_sum += 127 - (level & 0x7F)
            self.track.level_count += 1
        self.hist[seq & _HMASK] = (seq, marker, ts, level, body)
        consumers = self.consumers
        if consumers:
            abs3 = (int(now * 262144.0) & 0xFFFFFF).to_bytes(3, "big")
            for c in consumers:
                c.forward(self, seq, ts, marker, level, body, key, abs3)

    def _gap(self, max_seq: int, d: int, now: float) -> None:
        missing = self.missing
        for k in range(1, min(d, 128)):
            missing[(max_seq + k) & 0xFFFF] = [now, 0.0]
        if len(missing) > MAX_MISSING:
            for s in list(missing)[: len(missing) - MAX_MISSING]:
                del missing[s]
        # audio: remembered only so that a late (reordered) packet is still accepted
        if self.video and not self.nack_scheduled:
            self.nack_scheduled = True
            asyncio.get_running_loop().call_soon(self.send_nack)

    def send_nack(self) -> None:
        """NACK the publisher for what is still missing (retries bounded)."""
        self.nack_scheduled = False
        if not self.missing or self.ssrc is None:
            return
        wall = time.time()
        lost = []
        for seq, entry in list(self.missing.items()):
            if wall - entry[0] > NACK_MAX_AGE:
                del self.missing[seq]  # a retransmission this late is useless
            elif self.video and entry[1] < NACK_RETRIES:
                entry[1] += 1
                lost.append(seq)
        pub = self.track.participant.pub
        if lost and pub is not None:
            pub.send_rtcp(rtcp.build_nack(pub.rtcp_ssrc, self.ssrc, lost[:MAX_NACK_SEQS]))

    def request_keyframe(self, force: bool = False) -> None:
        """PLI to the publisher (throttled unless ``force``)."""
        if not self.video or self.ssrc is None:
            return
        now = time.monotonic()
        if not force and now - self.last_pli < KEYFRAME_THROTTLE:
            return
        self.last_pli = now
        pub = self.track.participant.pub
        if pub is not None and pub.state == "connected":
            COUNTERS.plis_sent += 1
            pub.send_rtcp(rtcp.build_pli(pub.rtcp_ssrc, self.ssrc))

    def report_block(self) -> rtcp.ReportBlock | None:
        if self.max_seq < 0 or self.ssrc is None:
            return None
        ext_max = self.cycles + self.max_seq
        expected = ext_max - self.base_seq + 1
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else (lost_int << 8) // exp_int
        dlsr = int((time.time() - self.sr_local) * 65536) if self.sr_ntp else 0
        return rtcp.ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=expected - self.received,
            highest_sequence=ext_max,
            jitter=self.jitter_q4 >> 4,
            lsr=(self.sr_ntp >> 16) & 0xFFFFFFFF,
            dlsr=dlsr,
        )

    def update_bitrate(self, interval: float) -> None:
        self.bitrate_bps = int(self.bytes * 8 / interval) if interval > 0 else 0
        self.bytes = 0


class Publisher(PeerTransport):
    """The participant's publisher PC: the client offers, the worker answers."""

    role = "pub"

    def __init__(self, worker: Worker, participant: Participant) -> None:
        super().__init__(worker, participant)
        self.by_ssrc: dict[int, tuple[Producer, bool]] = {}  # ssrc -> (producer, is rtx)

    def on_connected(self) -> None:
        for track in self.participant.tracks.values():
            for p in track.producers:
                if p.consumers:
                    p.request_keyframe(force=True)

    def handle_rtp(self, data: bytes) -> None:
        ssrc = _U32.unpack_from(data, 8)[0]
        entry = self.by_ssrc.get(ssrc)
        if entry is None:
            entry = self._learn(ssrc, data)
            if entry is None:
                COUNTERS.dropped_packets += 1
                return
        producer, is_rtx = entry
        b0 = data[0]
        pos = 12 + ((b0 & 0x0F) << 2)
        level = -1
        if b0 & 0x10:
            profile, words = struct.unpack_from("!HH", data, pos)
            start = pos + 4
            pos = start + (words << 2)
            level_id = producer.track.level_id
            if level_id and profile == 0xBEDE:
                i = start
                while i < pos:
                    e = data[i]
                    if e == 0:
                        i += 1
                        continue
                    if e >> 4 == 15:
                        break
                    if e >> 4 == level_id:
                        level = data[i + 1]
                        break
                    i += 2 + (e & 0x0F)
        end = len(data) - data[-1] if b0 & 0x20 else len(data)
        _, b1, seq, ts = struct.unpack_from("!BBHI", data)
        if is_rtx:
            if end - pos <= 2:
                COUNTERS.dropped_packets += 1  # padding-only RTX (bandwidth probe)
                return
            seq = _U16.unpack_from(data, pos)[0]
            if seq not in producer.missing:
                # not requested (Chrome re-sends old packets as probes): forwarding
                # it would reset receivers' jitter buffers
                COUNTERS.dropped_packets += 1
                return
            pos += 2
        elif (b1 & 0x7F) != producer.track.pt:
            COUNTERS.dropped_packets += 1
            return
        if end <= pos:
            COUNTERS.dropped_packets += 1  # padding-only packet
            return
        producer.on_packet(seq, ts, bool(b1 & 0x80), level, data[pos:end], time.time())

    def _learn(self, ssrc: int, data: bytes) -> tuple[Producer, bool] | None:
        """Bind an unsignalled SSRC by rid / repaired-rid, mid, or payload type."""
        try:
            header = parse_header(data)
        except RtpError:
            return None
        exts = parse_extensions(data, header) if header.ext_profile else {}
        pt = header.payload_type
        tracks = list(self.participant.tracks.values())
        for track in tracks:
            if track.simulcast:
                ids = self.participant.rid_ids.get(track.mid, (0, 0))
                rid = exts.get(ids[0]) if ids[0] else None
                rrid = exts.get(ids[1]) if ids[1] else None
                mid_value = exts.get(track.mid_id) if track.mid_id else None
                if mid_value is not None and mid_value.decode(errors="replace") != track.mid:
                    continue
                if rid is not None and pt == track.pt:
                    p = track.by_rid.get(rid.decode(errors="replace"))
                    if p is not None:
                        return self._bind(p, ssrc, False)
                if rrid is not None and pt == track.rtx_pt:
                    p = track.by_rid.get(rrid.decode(errors="replace"))
                    if p is not None:
                        return self._bind(p, ssrc, True)
        for track in tracks:
            if track.simulcast:
                continue
            mid_value = exts.get(track.mid_id) if track.mid_id else None
            if mid_value is not None and mid_value.decode(errors="replace") != track.mid:
                continue
            p = track.producers[0]
            if pt == track.pt and (p.ssrc is None or mid_value is not None):
                return self._bind(p, ssrc, False)
            if (
                track.rtx_pt is not None
                and pt == track.rtx_pt
                and (p.rtx_ssrc is None or mid_value is not None)
            ):
                return self._bind(p, ssrc, True)
        return None

    def _bind(self, producer: Producer, ssrc: int, is_rtx: bool) -> tuple[Producer, bool]:
        old = producer.rtx_ssrc if is_rtx else producer.ssrc
        if old is not None and old != ssrc:
            self.by_ssrc.pop(old, None)
        if is_rtx:
            producer.rtx_ssrc = ssrc
        else:
            producer.ssrc = ssrc
        self.by_ssrc[ssrc] = (producer, is_rtx)
        if not is_rtx and producer.consumers:
            producer.request_keyframe(force=True)
        return producer, is_rtx

    def handle_rtcp(self, data: bytes) -> None:
        try:
            records = rtcp.parse(data)
        except rtcp.RtcpError:
            COUNTERS.dropped_packets += 1
            return
        now = time.time()
        for r in records:
            if isinstance(r, rtcp.SenderReport):
                entry = self.by_ssrc.get(r.ssrc)
                if entry is not None and not entry[1]:
                    p = entry[0]
                    p.sr_ntp = r.ntp
                    p.sr_rtp = r.rtp_timestamp
                    p.sr_local = now

    def periodic(self, max_bitrate: int) -> None:
        """RR for every ingress SSRC plus the REMB cap."""
        if self.state != "connected":
            return
        blocks = []
        video: list[int] = []
        for track in self.participant.tracks.values():
            for p in track.producers:
                block = p.report_block()
                if block is not None:
                    blocks.append(block)
                if p.video and p.ssrc is not None:
                    video.append(p.ssrc)
        if not blocks:
            return
        packet = rtcp.build_rr(self.rtcp_ssrc, blocks)
        if video and max_bitrate > 0:
            packet += rtcp.build_remb(self.rtcp_ssrc, max_bitrate, video)
        self.send_rtcp(packet)


# =========================================================================== subscribe side


class Segment:
    """Rewriting offsets of a consumer for one contiguous run of one producer."""

    __slots__ = ("pic_off", "producer", "rewrite", "seq_off", "tl0_off", "ts_off")

    def __init__(  # noqa: PLR0917 - mirrors the codec fields
        self,
        producer: Producer,
        seq_off: int,
        ts_off: int,
        pic_off: int,
        tl0_off: int,
        rewrite: bool,
    ) -> None:
        self.producer = producer
        self.seq_off = seq_off
        self.ts_off = ts_off
        self.pic_off = pic_off
        self.tl0_off = tl0_off
        self.rewrite = rewrite


class Consumer:
    """One track forwarded to one subscriber (one sendonly transceiver)."""

    #: fraction of forwarded packets dropped on purpose (``debug.loss``)
    loss_rate = 0.0

    def __init__(self, sub: Subscriber, track: Track, transceiver: Any) -> None:
        self.sub = sub
        self.track = track
        self.transceiver = transceiver
        self.mid: str = transceiver.mid
        self.ssrc, self.rtx_ssrc = compat.sender_ssrcs(transceiver.sender)
        self.pt = 0
        self.rtx_pt: int | None = None
        self.mid_elem = b""
        self.abs_head = b""
        self.level_id = 0
        self.armed = False
        self.seg: Segment | None = None
        self.target: Producer | None = None
        self._feeds: list[Producer] = []
        self.ring: list[tuple[int, Segment] | None] = [None] * HISTORY
        self.first_seq = random.getrandbits(15)
        self.last_seq = -1
        self.last_ts = 0
        self.last_time = 0.0
        self.last_pid = 0
        self.last_tl0 = 0
        self.rtx_seq = random.getrandbits(15)
        self.packets = 0
        self.octets = 0
        self.bytes_interval = 0
        self.bitrate_bps = 0
        self.prefer: tuple[int, int] | None = None
        self.fraction_lost = 0
        self.configure()

    def configure(self) -> None:
        """Read negotiated PTs / extension ids from the transceiver."""
        codecs = compat.transceiver_codecs(self.transceiver)
        main = next((c for c in codecs if not is_rtx(c)), None)
        if main is None:
            return
        self.pt = int(main.payloadType)
        self.rtx_pt = next(
            (
                int(c.payloadType)
                for c in codecs
                if is_rtx(c) and str(c.parameters.get("apt")) == str(self.pt)
            ),
            None,
        )
        ids = compat.transceiver_header_extensions(self.transceiver)
        mid_id = ids.get(EXT_MID, 0)
        mid = self.mid.encode()
        self.mid_elem = bytes([(mid_id << 4) | (len(mid) - 1)]) + mid if mid_id and mid else b""
        abs_id = ids.get(EXT_ABS_SEND_TIME, 0)
        self.abs_head = bytes([(abs_id << 4) | 2]) if abs_id else b""
        self.level_id = ids.get(EXT_AUDIO_LEVEL, 0)

    # ------------------------------------------------------------ producer membership

    def _set_feeds(self) -> None:
        want = []
        if self.armed and not self.track.paused:
            if self.seg is not None:
                want.append(self.seg.producer)
            if self.target is not None and self.target not in want:
                want.append(self.target)
        for p in self._feeds:
            if p not in want and self in p.consumers:
                p.consumers.remove(self)
        for p in want:
            if self not in p.consumers:
                p.consumers.append(self)
        self._feeds = want

    def arm(self) -> None:
        """Start forwarding (after the subscriber's answer): wait for a keyframe."""
        self.configure()
        self.armed = True
        if self.target is None:
            self.target = self.track.producers[-1]
        self.seg = None
        self._set_feeds()
        self.request_keyframe(force=True)

    def set_target(self, producer: Producer) -> None:
        """Switch to ``producer`` at its next keyframe."""
        if producer is self.target:
            return
        self.target = producer
        self._set_feeds()
        producer.request_keyframe(force=True)

    def pause_changed(self) -> None:
        """The track was paused or resumed; resuming waits for a keyframe."""
        self.seg = None
        self._set_feeds()
        if not self.track.paused:
            self.request_keyframe(force=True)

    def detach(self) -> None:
        """Stop forwarding for good."""
        self.armed = False
        self.seg = None
        self.target = None
        self._set_feeds()

    def request_keyframe(self, force: bool = False) -> None:
        p = self.target or (self.seg.producer if self.seg else None)
        if p is not None:
            p.request_keyframe(force)

    # ------------------------------------------------------------ hot path

    def forward(  # noqa: PLR0917 - positional on the per-packet path (cheaper calls)
        self,
        producer: Producer,
        seq: int,
        ts: int,
        marker: bool,
        level: int,
        body: bytes,
        key: bool,
        abs3: bytes,
    ) -> None:
        seg = self.seg
        if seg is None or seg.producer is not producer:
            if producer is not self.target or not (key or not producer.video):
                return
            if self.sub.state != "connected":
                # Packets are not sent before DTLS is up: a segment started
                # now would begin, for the receiver, after its keyframe.
                return
            seg = self._start(producer, seq, ts, body)
        out_seq = (seq + seg.seq_off) & 0xFFFF
        out_ts = (ts + seg.ts_off) & 0xFFFFFFFF
        if seg.rewrite:
            body = self._rewrite_vp8(seg, body, True)
        if ((out_seq - self.last_seq) & 0xFFFF) < 0x8000:
            self.last_seq = out_seq
            self.last_ts = out_ts
            self.last_time = time.monotonic()
        self.ring[out_seq & _HMASK] = (out_seq, seg)
        self.packets += 1
        self.octets += len(body)
        self.bytes_interval += len(body)
        if self.loss_rate and random.random() < self.loss_rate:
            return
        self.sub.send_rtp(
            self._build(out_seq, out_ts, marker, level, body, abs3, self.pt, self.ssrc)
        )

    def _build(  # noqa: PLR0917 - positional on the per-packet path (cheaper calls)
        self,
        seq: int,
        ts: int,
        marker: bool,
        level: int,
        body: bytes,
        abs3: bytes,
        pt: int,
        ssrc: int,
    ) -> bytes:
        ext = self.mid_elem
        if self.abs_head:
            ext += self.abs_head + abs3
        if level >= 0 and self.level_id:
            ext += bytes(((self.level_id << 4), level))
        n = len(ext)
        b1 = pt | 0x80 if marker else pt
        if n:
            if n & 3:
                ext += b"\0" * (4 - (n & 3))
                n = len(ext)
            return struct.pack("!BBHIIHH", 0x90, b1, seq, ts, ssrc, 0xBEDE, n >> 2) + ext + body
        return _HEAD.pack(0x80, b1, seq, ts, ssrc) + body

    def _rewrite_vp8(self, seg: Segment, body: bytes, advance: bool) -> bytes:
        try:
            d = parse_vp8_descriptor(body)
        except RtpError:
            return body
        pid = (d.picture_id + seg.pic_off) & 0x7FFF if d.picture_id >= 0 else 0
        tl0 = (d.tl0picidx + seg.tl0_off) & 0xFF if d.tl0picidx >= 0 else 0
        if advance:
            if d.picture_id >= 0 and ((pid - self.last_pid) & 0x7FFF) < 0x4000:
                self.last_pid = pid
            if d.tl0picidx >= 0 and ((tl0 - self.last_tl0) & 0xFF) < 0x80:
                self.last_tl0 = tl0
        return vp8_rewrite(body, pid, tl0)

    def _start(self, producer: Producer, seq: int, ts: int, body: bytes) -> Segment:
        """Begin a segment on ``producer`` continuing our outgoing numbering."""
        rewrite = self.track.simulcast and self.track.codec_name == "vp8"
        pic_off = tl0_off = 0
        if self.last_seq < 0:
            seq_off = (self.first_seq - seq) & 0xFFFF
            ts_off = 0
            if rewrite:
                try:
                    d = parse_vp8_descriptor(body)
                    self.last_pid = (d.picture_id - 1) & 0x7FFF if d.picture_id >= 0 else 0
                    self.last_tl0 = (d.tl0picidx - 1) & 0xFF if d.tl0picidx >= 0 else 0
                except RtpError:
                    pass
        else:
            seq_off = (self.last_seq + 1 - seq) & 0xFFFF
            elapsed = max(1, int((time.monotonic() - self.last_time) * self.track.clock))
            ts_off = (self.last_ts + elapsed - ts) & 0xFFFFFFFF
        if rewrite:
            try:
                d = parse_vp8_descriptor(body)
                if d.picture_id >= 0:
                    pic_off = (self.last_pid + 1 - d.picture_id) & 0x7FFF
                if d.tl0picidx >= 0:
                    tl0_off = (self.last_tl0 + 1 - d.tl0picidx) & 0xFF
            except RtpError:
                pass
        seg = Segment(producer, seq_off, ts_off, pic_off, tl0_off, rewrite)
        self.seg = seg
        if producer is self.target:
            self._set_feeds()
        return seg

    def retransmit(self, out_seq: int) -> bool:
        """Answer one NACKed sequence number from the history (RTX when negotiated)."""
        entry = self.ring[out_seq & _HMASK]
        if entry is None or entry[0] != out_seq:
            return False
        seg = entry[1]
        orig = (out_seq - seg.seq_off) & 0xFFFF
        h = seg.producer.hist[orig & _HMASK]
        if h is None or h[0] != orig:
            return False
        _, marker, ts, level, body = h
        if seg.rewrite:
            body = self._rewrite_vp8(seg, body, False)
        abs3 = (int(time.time() * 262144.0) & 0xFFFFFF).to_bytes(3, "big")
        out_ts = (ts + seg.ts_off) & 0xFFFFFFFF
        if self.rtx_pt is not None:
            packet = self._build(
                self.rtx_seq,
                out_ts,
                marker,
                level,
                _U16.pack(out_seq) + body,
                abs3,
                self.rtx_pt,
                self.rtx_ssrc,
            )
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
        else:
            packet = self._build(out_seq, out_ts, marker, level, body, abs3, self.pt, self.ssrc)
        COUNTERS.rtx_sent += 1
        self.sub.send_rtp(packet)
        return True

    def sender_report(self, now: float) -> bytes | None:
        seg = self.seg
        if seg is None or not seg.producer.sr_ntp:
            return None
        p = seg.producer
        rtp_ts = p.sr_rtp + seg.ts_off + int((now - p.sr_local) * self.track.clock)
        return rtcp.build_sr(
            self.ssrc,
            ntp=rtcp.ntp_time(now),
            rtp_timestamp=rtp_ts,
            packets=self.packets,
            octets=self.octets,
        )

    def stats(self) -> dict[str, Any]:
        rid = self.seg.producer.rid if self.seg is not None else None
        return {"track": self.track.id, "rid": rid, "bitrate_bps": self.bitrate_bps}


class Subscriber(PeerTransport):
    """The participant's subscriber PC: the worker offers, the client answers."""

    role = "sub"

    def __init__(self, worker: Worker, participant: Participant) -> None:
        super().__init__(worker, participant)
        self.consumers: dict[str, Consumer] = {}  # track id -> consumer
        self.by_ssrc: dict[int, Consumer] = {}
        self.pending: list[Consumer] = []
        self.remb_bps: int | None = None

    def on_connected(self) -> None:
        # Every consumer starts (again) on a keyframe sent once this transport
        # can carry it: whatever began before was never delivered.
        for c in self.consumers.values():
            if c.armed:
                c.seg = None
                c.request_keyframe(force=True)

    def handle_rtcp(self, data: bytes) -> None:
        try:
            records = rtcp.parse(data)
        except rtcp.RtcpError:
            COUNTERS.dropped_packets += 1
            return
        for r in records:
            if isinstance(r, rtcp.Nack):
                c = self.by_ssrc.get(r.media_ssrc)
                if c is not None:
                    COUNTERS.nacks_received += len(r.lost)
                    for seq in r.lost[:MAX_NACK_SEQS]:
                        c.retransmit(seq)
            elif isinstance(r, rtcp.Pli):
                c = self.by_ssrc.get(r.media_ssrc)
                if c is not None:
                    c.request_keyframe()
            elif isinstance(r, rtcp.Fir):
                for ssrc, _ in r.entries:
                    c = self.by_ssrc.get(ssrc)
                    if c is not None:
                        c.request_keyframe()
            elif isinstance(r, rtcp.Remb):
                self.remb_bps = r.bitrate
            elif isinstance(r, (rtcp.ReceiverReport, rtcp.SenderReport)):
                for block in r.reports:
                    c = self.by_ssrc.get(block.ssrc)
                    if c is not None:
                        c.fraction_lost = block.fraction_lost

    def periodic(self) -> None:
        """SR for every egress SSRC that has sent."""
        if self.state != "connected":
            return
        now = time.time()
        packet = b""
        for c in self.consumers.values():
            sr = c.sender_report(now)
            if sr is not None:
                packet += sr
        if packet:
            self.send_rtcp(packet)

    def remove(self, consumer: Consumer) -> None:
        consumer.detach()
        if consumer in consumer.track.consumers:
            consumer.track.consumers.remove(consumer)
        self.consumers.pop(consumer.track.id, None)
        self.by_ssrc.pop(consumer.ssrc, None)
        self.by_ssrc.pop(consumer.rtx_ssrc, None)
        if consumer in self.pending:
            self.pending.remove(consumer)


# =========================================================================== participants / routers


class Participant:
    def __init__(self, router: Router, participant_id: str) -> None:
        self.router = router
        self.id = participant_id
        self.pub: Publisher | None = None
        self.sub: Subscriber | None = None
        self.tracks: dict[str, Track] = {}  # mid -> track
        self.rid_ids: dict[str, tuple[int, int]] = {}  # mid -> (rid ext id, rrid ext id)

    def stats(self) -> dict[str, Any]:
        publish = [
            {
                "track": t.id,
                "kind": t.kind,
                "rids": list(t.rids),
                "bitrate_bps": sum(p.bitrate_bps for p in t.producers),
                "paused": t.paused,
                "layers": t.layers(),
            }
            for t in self.tracks.values()
        ]
        subscribe = [c.stats() for c in self.sub.consumers.values()] if self.sub else []
        return {
            "publish": publish,
            "subscribe": subscribe,
            "pub_state": self.pub.state if self.pub else "none",
            "sub_state": self.sub.state if self.sub else "none",
            "remb_bps": self.sub.remb_bps if self.sub else None,
        }


class Router:
    """One call: its participants, tracks and active speaker."""

    def __init__(self, worker: Worker, router_id: str) -> None:
        self.worker = worker
        self.id = router_id
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, Track] = {}
        self.speaker: str | None = None
        self._candidate: str | None = None
        self._candidate_count = 0
        self._silence_count = 0

    def participant(self, participant_id: str, create: bool = False) -> Participant:
        p = self.participants.get(participant_id)
        if p is None:
            if not create:
                raise RpcError("not_found", f"Unknown participant {participant_id!r}")
            p = self.participants[participant_id] = Participant(self, participant_id)
        return p

    def track(self, track_id: str) -> Track:
        t = self.tracks.get(track_id)
        if t is None:
            raise RpcError("not_found", f"Unknown track {track_id!r}")
        return t

    def layers_changed(self, track: Track) -> None:
        if track.simulcast:
            self.worker.emit(
                "layers", {"router": self.id, "track": track.id, "layers": track.layers()}
            )

    def remove_track(self, track: Track) -> None:
        self.tracks.pop(track.id, None)
        track.participant.tracks.pop(track.mid, None)
        pub = track.participant.pub
        if pub is not None:
            for ssrc in [s for s, (p, _) in pub.by_ssrc.items() if p.track is track]:
                del pub.by_ssrc[ssrc]
        track.close()

    async def drop(self, participant_id: str) -> None:
        p = self.participants.pop(participant_id, None)
        if p is None:
            return
        for track in list(p.tracks.values()):
            self.remove_track(track)
        if p.sub is not None:
            for c in list(p.sub.consumers.values()):
                p.sub.remove(c)
        for transport in (p.pub, p.sub):
            if transport is not None:
                await transport.close()
        if self.speaker == participant_id:
            self.speaker = None
            self.worker.emit("speaker", {"router": self.id, "participant": None})

    async def close(self) -> None:
        for pid in list(self.participants):
            await self.drop(pid)

    # ------------------------------------------------------------ speaker

    def update_speaker(self) -> None:
        """Dominant speaker with hysteresis; emits ``speaker`` on change."""
        best: Track | None = None
        for t in self.tracks.values():
            if t.kind != "audio":
                continue
            mean = t.level_sum / t.level_count if t.level_count else 0.0
            t.level_sum = t.level_count = 0
            t.loudness = 0.6 * mean + 0.4 * t.loudness
            if t.paused:
                t.loudness = 0.0
            if best is None or t.loudness > best.loudness:
                best = t
        current = next(
            (
                t
                for t in self.tracks.values()
                if t.kind == "audio" and t.participant.id == self.speaker
            ),
            None,
        )
        new = self.speaker
        if best is None or best.loudness < SPEAKER_THRESHOLD:
            self._candidate = None
            self._silence_count += 1
            if self.speaker is not None and self._silence_count >= SILENCE_CONFIRM:
                new = None
        else:
            self._silence_count = 0
            cand = best.participant.id
            if cand == self.speaker:
                self._candidate = None
            elif current is None or best.loudness > current.loudness + SPEAKER_MARGIN:
                if cand == self._candidate:
                    self._candidate_count += 1
                else:
                    self._candidate, self._candidate_count = cand, 1
                if self._candidate_count >= SPEAKER_CONFIRM or self.speaker is None:
                    new = cand
        if new != self.speaker:
            self.speaker = new
            self._candidate = None
            self.worker.emit("speaker", {"router": self.id, "participant": new})

    # ------------------------------------------------------------ layers

    def choose_layers(self) -> None:
        now = time.time()
        for p in self.participants.values():
            sub = p.sub
            if sub is None:
                continue
            video = [c for c in sub.consumers.values() if c.armed and c.track.simulcast]
            if not video:
                continue
            budget = sub.remb_bps // len(video) if sub.remb_bps else None
            for c in video:
                choice = choose_layer(c.track.producers, c.prefer, budget, now)
                if choice is not None:
                    c.set_target(choice)


def choose_layer(
    producers: list[Producer], prefer: tuple[int, int] | None, budget: int | None, now: float
) -> Producer | None:
    """Pick a simulcast layer: the smallest one covering ``prefer``, bounded by ``budget``.

    Layers are ordered low to high. Silent layers are skipped; without a size
    preference the highest active layer is the size choice; if no layer fits the
    budget, the lowest active one is used.
    """
    active = [p for p in producers if p.active(now)]
    if not active:
        return None
    limit = len(active) - 1
    if prefer is not None:
        width, height = prefer
        for i, p in enumerate(active):
            if p.height and p.width >= width and p.height >= height:
                limit = i
                break
    chosen = active[0]
    for p in active[: limit + 1]:
        if budget is None or p.bitrate_bps <= budget:
            chosen = p
    return chosen


# =========================================================================== worker


class Worker:
    """All routers of this worker process."""

    def __init__(self, mux: UdpMux, emit: Emit, max_publish_bitrate: int) -> None:
        self.mux = mux
        self.emit = emit
        self.max_publish_bitrate = max_publish_bitrate
        self.routers: dict[str, Router] = {}
        self._task: asyncio.Task[None] | None = None

    def router(self, router_id: str) -> Router:
        r = self.routers.get(router_id)
        if r is None:
            raise RpcError("not_found", f"Unknown router {router_id!r}")
        return r

    def open_router(self, router_id: str) -> None:
        if router_id not in self.routers:
            self.routers[router_id] = Router(self, router_id)

    async def close_router(self, router_id: str) -> None:
        r = self.routers.pop(router_id, None)
        if r is not None:
            await r.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for rid in list(self.routers):
            await self.close_router(rid)

    @property
    def transports(self) -> int:
        return sum(
            (p.pub is not None and not p.pub.closed) + (p.sub is not None and not p.sub.closed)
            for r in self.routers.values()
            for p in r.participants.values()
        )

    # ------------------------------------------------------------ periodic work

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._periodic())

    async def _periodic(self) -> None:
        tick = 0
        last_report = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            tick += 1
            try:
                self._tick(tick, last_report)
            except Exception:
                COUNTERS.hook_error(log, "periodic work failed")
            if tick % 10 == 0:
                last_report = time.monotonic()

    def _tick(self, tick: int, last_report: float) -> None:
        routers = list(self.routers.values())
        for r in routers:
            for p in r.participants.values():
                for t in p.tracks.values():
                    for prod in t.producers:
                        if prod.missing and not prod.nack_scheduled:
                            prod.send_nack()
            if tick % 3 == 0:
                r.update_speaker()
        if tick % 10 == 0:
            interval = time.monotonic() - last_report
            for r in routers:
                for p in r.participants.values():
                    for t in p.tracks.values():
                        for prod in t.producers:
                            prod.update_bitrate(interval)
                    if p.sub is not None:
                        for c in p.sub.consumers.values():
                            c.bitrate_bps = int(c.bytes_interval * 8 / interval)
                            c.bytes_interval = 0
                    if p.pub is not None:
                        p.pub.periodic(self.max_publish_bitrate)
                    if p.sub is not None:
                        p.sub.periodic()
                r.choose_layers()

    # ------------------------------------------------------------ RPC operations

    async def publish(self, router_id: str, participant_id: str, sdp: str) -> dict[str, Any]:
        router = self.router(router_id)
        try:
            sections = parse_sections(sdp)
            check_publish_offer(sections)
        except SdpError as exc:
            raise RpcError("bad_sdp", str(exc)) from exc
        participant = router.participant(participant_id, create=True)
        fresh = participant.pub is None
        if participant.pub is None:
            participant.pub = Publisher(self, participant)
        pub = participant.pub
        async with pub.lock:
            try:
                await pub.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                if fresh:
                    participant.pub = None
                    await pub.close()
                    if not participant.tracks and participant.sub is None:
                        router.participants.pop(participant_id, None)
                raise RpcError("bad_sdp", f"SDP rejected: {exc}") from exc
            for t in pub.pc.getTransceivers():
                compat.silence_receiver(t.receiver)
                compat.silence_sender(t.sender)
                if t.direction != "recvonly":
                    t.direction = "recvonly"
            answer = await pub.pc.createAnswer()
            await pub.pc.setLocalDescription(answer)
            pub.hook_transports()
            self._update_tracks(router, participant, sections)
            sdp_out = munge_simulcast_answer(pub.pc.localDescription.sdp, sections)
        return {"sdp": sdp_out, "tracks": [t.info() for t in participant.tracks.values()]}

    def _update_tracks(
        self, router: Router, participant: Participant, sections: list[MediaSection]
    ) -> None:
        assert participant.pub is not None
        by_mid = {s.mid: s for s in sections if s.mid is not None}
        seen = set()
        for t in participant.pub.pc.getTransceivers():
            section = by_mid.get(t.mid)
            if section is None or t.kind not in ("audio", "video") or not section.sending:
                continue
            seen.add(t.mid)
            if t.mid in participant.tracks:
                continue
            codecs = compat.transceiver_codecs(t)
            main = next((c for c in codecs if not is_rtx(c)), None)
            if main is None:
                continue
            rtx_pt = next(
                (
                    int(c.payloadType)
                    for c in codecs
                    if is_rtx(c) and str(c.parameters.get("apt")) == str(main.payloadType)
                ),
                None,
            )
            rids = section.rids if t.kind == "video" else []
            exts = compat.transceiver_header_extensions(t)
            exts.setdefault(EXT_MID, section.extmap.get(EXT_MID, 0))
            track = Track(participant, t.mid, t.kind, main, rtx_pt, exts, rids)
            if rids:
                participant.rid_ids[t.mid] = (
                    section.extmap.get(EXT_RID, 0),
                    section.extmap.get(EXT_REPAIRED_RID, 0),
                )
            else:
                p = track.producers[0]
                if section.fid is not None:
                    participant.pub._bind(p, section.fid[0], False)
                    participant.pub._bind(p, section.fid[1], True)
                elif section.ssrcs:
                    participant.pub._bind(p, section.ssrcs[0], False)
            participant.tracks[t.mid] = track
            router.tracks[track.id] = track
        for mid in [m for m in participant.tracks if m not in seen]:
            router.remove_track(participant.tracks[mid])

    async def subscribe(
        self, router_id: str, participant_id: str, track_ids: list[str]
    ) -> dict[str, Any]:
        router = self.router(router_id)
        tracks = [router.track(tid) for tid in dict.fromkeys(track_ids)]
        participant = router.participant(participant_id, create=True)
        if participant.sub is None:
            participant.sub = Subscriber(self, participant)
        sub = participant.sub
        async with sub.lock:
            changed = False
            wanted = {t.id: t for t in tracks}
            for tid, c in list(sub.consumers.items()):
                if wanted.get(tid) is not c.track:
                    sub.remove(c)
                    c.transceiver.direction = "inactive"
                    changed = True
            new = []
            for t in tracks:
                if t.id in sub.consumers:
                    continue
                transceiver = sub.pc.addTransceiver(t.kind, direction="sendonly")
                transceiver.setCodecPreferences(_codec_preferences(t))
                compat.silence_sender(transceiver.sender)
                compat.set_sender_msid(transceiver.sender, t.participant.id, t.id)
                new.append((t, transceiver))
                changed = True
            if not changed:
                return {"sdp": None, "mids": _mids(sub)}
            offer = await sub.pc.createOffer()
            await sub.pc.setLocalDescription(offer)
            sub.hook_transports()
            for t, transceiver in new:
                c = Consumer(sub, t, transceiver)
                sub.consumers[t.id] = c
                sub.by_ssrc[c.ssrc] = c
                sub.by_ssrc[c.rtx_ssrc] = c
                t.consumers.append(c)
                sub.pending.append(c)
            return {"sdp": sub.pc.localDescription.sdp, "mids": _mids(sub)}

    async def answer(self, router_id: str, participant_id: str, sdp: str) -> None:
        participant = self.router(router_id).participant(participant_id)
        sub = participant.sub
        if sub is None or sub.pc.signalingState != "have-local-offer":
            raise RpcError("not_found", "No subscriber offer outstanding for this participant")
        try:
            parse_sections(sdp)
        except SdpError as exc:
            raise RpcError("bad_sdp", str(exc)) from exc
        async with sub.lock:
            try:
                await sub.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:
                raise RpcError("bad_sdp", f"SDP rejected: {exc}") from exc
            pending, sub.pending = sub.pending, []
            for c in pending:
                if sub.consumers.get(c.track.id) is c:
                    c.arm()

    async def candidate(
        self,
        *,
        router_id: str,
        participant_id: str,
        pc: str,
        candidate: str | None,
        sdp_mid: str | None,
        sdp_mline_index: int | None,
    ) -> None:
        participant = self.router(router_id).participant(participant_id)
        transport = participant.pub if pc == "pub" else participant.sub
        if transport is None or transport.pc.remoteDescription is None:
            raise RpcError("not_found", f"No {pc} PeerConnection with a remote description")
        if candidate is None:
            await transport.pc.addIceCandidate(None)
            return
        text = candidate[10:] if candidate.startswith("candidate:") else candidate
        if not text.strip():
            await transport.pc.addIceCandidate(None)
            return
        try:
            parsed = candidate_from_sdp(text)
        except (ValueError, IndexError, AssertionError) as exc:  # aiortc asserts the field count
            raise RpcError("bad_request", f"Unparsable candidate: {text[:100]!r}") from exc
        parsed.sdpMid = sdp_mid
        parsed.sdpMLineIndex = sdp_mline_index
        if sdp_mid is None and sdp_mline_index is None:
            parsed.sdpMLineIndex = 0
        try:
            await transport.pc.addIceCandidate(parsed)
        except ValueError as exc:
            raise RpcError("bad_request", str(exc)) from exc

    def pause(self, router_id: str, track_id: str, paused: bool) -> None:
        track = self.router(router_id).track(track_id)
        if track.paused == paused:
            return
        track.paused = paused
        for c in track.consumers:
            c.pause_changed()

    def prefer(
        self, router_id: str, participant_id: str, track_id: str, width: int, height: int
    ) -> None:
        router = self.router(router_id)
        participant = router.participant(participant_id)
        track = router.track(track_id)
        c = participant.sub.consumers.get(track.id) if participant.sub else None
        if c is None:
            raise RpcError("not_found", f"{participant_id!r} does not receive {track_id!r}")
        c.prefer = (width, height)
        if track.simulcast and c.armed:
            sub = participant.sub
            assert sub is not None
            count = sum(1 for x in sub.consumers.values() if x.armed and x.track.simulcast)
            budget = sub.remb_bps // count if sub.remb_bps and count else None
            choice = choose_layer(track.producers, c.prefer, budget, time.time())
            if choice is not None:
                c.set_target(choice)


def _codec_preferences(track: Track) -> list[Any]:
    caps = RTCRtpSender.getCapabilities(track.kind).codecs
    want = track.codec
    main = [
        c
        for c in caps
        if c.mimeType.lower() == want.mimeType.lower()
        and (
            track.codec_name != "h264"
            or (
                c.parameters.get("profile-level-id") == want.parameters.get("profile-level-id")
                and c.parameters.get("packetization-mode")
                == want.parameters.get("packetization-mode")
            )
        )
    ]
    if not main:
        main = [c for c in caps if c.mimeType.lower() == want.mimeType.lower()]
    return main[:1] + [c for c in caps if c.mimeType.lower().endswith("/rtx")]


def _mids(sub: Subscriber) -> dict[str, str]:
    return {c.mid: tid for tid, c in sub.consumers.items() if c.mid is not None}
