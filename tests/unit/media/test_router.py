"""Forwarding logic of the router on raw packets (no network): keyframe-gated start,
simulcast layer switching with sequence / timestamp / picture-id continuity, NACK → RTX,
duplicate and unrequested-RTX drops, layer choice and active speaker."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

from tether.media.worker import router as r
from tether.media.worker import rtp
from tether.media.worker.rtp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_MID
from tether.media.worker.stats import COUNTERS

VP8 = SimpleNamespace(
    name="VP8", clockRate=90000, payloadType=96, mimeType="video/VP8", parameters={}
)
OPUS = SimpleNamespace(
    name="opus", clockRate=48000, payloadType=111, mimeType="audio/opus", parameters={}
)


class FakeSub:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.state = "connected"

    def send_rtp(self, packet: bytes) -> None:
        self.sent.append(packet)


def make_router() -> tuple[r.Router, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    worker = r.Worker(None, lambda name, p: events.append((name, p)), 1_000_000)  # type: ignore[arg-type]
    router = r.Router(worker, "room")
    return router, events


def make_track(router: r.Router, pid: str, kind: str, rids: list[str]) -> r.Track:
    participant = router.participant(pid, create=True)
    codec = VP8 if kind == "video" else OPUS
    exts = {EXT_MID: 1, EXT_AUDIO_LEVEL: 2} if kind == "audio" else {EXT_MID: 1}
    track = r.Track(participant, "0" if kind == "audio" else "1", kind, codec, 97, exts, rids)
    participant.tracks[track.mid] = track
    router.tracks[track.id] = track
    for i, p in enumerate(track.producers):
        p.ssrc = 1000 + i
    return track


def make_consumer(track: r.Track) -> tuple[r.Consumer, FakeSub]:
    sub = FakeSub()
    transceiver = SimpleNamespace(
        mid="5",
        sender=SimpleNamespace(_ssrc=0xAAAA, _rtx_ssrc=0xBBBB),
        _codecs=[
            SimpleNamespace(name="VP8", mimeType="video/VP8", payloadType=100, parameters={}),
            SimpleNamespace(
                name="rtx", mimeType="video/rtx", payloadType=101, parameters={"apt": 100}
            ),
        ],
        _headerExtensions=[
            SimpleNamespace(uri=EXT_MID, id=1),
            SimpleNamespace(uri=EXT_ABS_SEND_TIME, id=3),
        ],
    )
    c = r.Consumer(sub, track, transceiver)  # type: ignore[arg-type]
    track.consumers.append(c)
    c.arm()
    return c, sub


def vp8(pid: int, key: bool) -> bytes:
    tag = bytes([0x00 if key else 0x01, 0, 0])
    size = (320).to_bytes(2, "little") + (180).to_bytes(2, "little")
    return (
        bytes([0x90, 0xC0, 0x80 | (pid >> 8), pid & 0xFF, pid & 0xFF])
        + tag
        + b"\x9d\x01\x2a"
        + size
    )


def feed(p: r.Producer, seq: int, ts: int, key: bool, pid: int, now: float = 100.0) -> None:
    p.on_packet(seq, ts, True, -1, vp8(pid, key), now)


def parsed(data: bytes) -> tuple[rtp.RtpHeader, bytes]:
    h = rtp.parse_header(data)
    return h, data[h.payload_start : h.payload_end]


def test_consumer_starts_on_keyframe_and_rewrites() -> None:
    router, _ = make_router()
    track = make_track(router, "a", "video", [])
    c, sub = make_consumer(track)
    p = track.producers[0]
    feed(p, 10, 1000, False, 1)
    assert sub.sent == []  # waits for a keyframe
    feed(p, 11, 4000, True, 2)
    feed(p, 12, 7000, False, 3)
    (h1, body1), (h2, _) = parsed(sub.sent[0]), parsed(sub.sent[1])
    assert (h1.ssrc, h1.payload_type, h1.sequence) == (0xAAAA, 100, c.first_seq)
    assert h2.sequence == (c.first_seq + 1) & 0xFFFF
    assert h2.timestamp - h1.timestamp == 3000
    exts = rtp.parse_extensions(sub.sent[0], h1)
    assert exts[1] == b"5"
    assert len(exts[3]) == 3
    assert body1 == vp8(2, True)  # not simulcast: payload untouched


def test_nack_answered_with_rtx_and_duplicates_dropped() -> None:
    router, _ = make_router()
    track = make_track(router, "a", "video", [])
    c, sub = make_consumer(track)
    p = track.producers[0]
    feed(p, 11, 4000, True, 2)
    feed(p, 12, 7000, False, 3)
    feed(p, 12, 7000, False, 3)  # duplicate
    assert len(sub.sent) == 2
    out_seq = rtp.parse_header(sub.sent[1]).sequence
    assert c.retransmit(out_seq)
    h, body = parsed(sub.sent[2])
    assert (h.ssrc, h.payload_type) == (0xBBBB, 101)
    assert struct.unpack_from("!H", body)[0] == out_seq
    assert body[2:] == vp8(3, False)
    assert not c.retransmit((out_seq + 500) & 0xFFFF)  # never sent


def test_gap_is_nacked_and_only_requested_retransmission_accepted() -> None:
    # the NACK is scheduled on the running asyncio loop
    async def scenario() -> None:
        router, _ = make_router()
        track = make_track(router, "a", "video", [])
        p = track.producers[0]
        feed(p, 1, 0, True, 1)
        feed(p, 4, 0, False, 2)
        assert set(p.missing) == {2, 3}
        feed(p, 2, 0, False, 3)  # retransmission fills the gap
        assert set(p.missing) == {3}
        before = p.received
        feed(p, 1, 0, False, 4)  # old, not missing: dropped
        assert p.received == before
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_simulcast_switch_on_target_keyframe_keeps_continuity() -> None:
    router, _ = make_router()
    track = make_track(router, "a", "video", ["q", "h", "f"])
    q, _, f = track.producers
    c, sub = make_consumer(track)
    assert c.target is f
    feed(q, 500, 10, True, 7000)  # keyframe of a layer that is not the target
    assert sub.sent == []
    feed(f, 100, 90000, True, 300)
    feed(f, 101, 93000, False, 301)
    assert len(sub.sent) == 2
    last = rtp.parse_header(sub.sent[-1])
    last_pid = rtp.parse_vp8_descriptor(parsed(sub.sent[-1])[1]).picture_id
    c.set_target(q)
    feed(q, 501, 3010, False, 7001)  # delta on the new layer: not yet
    feed(f, 102, 96000, False, 302)  # old layer keeps flowing until the switch
    assert len(sub.sent) == 3
    last = rtp.parse_header(sub.sent[-1])
    last_pid = rtp.parse_vp8_descriptor(parsed(sub.sent[-1])[1]).picture_id
    feed(q, 502, 6010, True, 7002)  # keyframe on the target: switch
    feed(f, 103, 99000, False, 303)  # old layer now dropped
    feed(q, 503, 9010, False, 7003)
    assert len(sub.sent) == 5
    h4, b4 = parsed(sub.sent[3])
    h5, b5 = parsed(sub.sent[4])
    assert h4.sequence == (last.sequence + 1) & 0xFFFF
    assert h5.sequence == (last.sequence + 2) & 0xFFFF
    assert 0 < (h4.timestamp - last.timestamp) & 0xFFFFFFFF < 90000 * 5
    assert h5.timestamp - h4.timestamp == 3000
    assert rtp.parse_vp8_descriptor(b4).picture_id == (last_pid + 1) & 0x7FFF
    assert rtp.parse_vp8_descriptor(b5).picture_id == (last_pid + 2) & 0x7FFF
    assert c.stats()["rid"] == "q"
    assert f not in [p for p in track.producers if c in p.consumers]
    # a NACK for a packet sent before the switch is answered from the old layer
    assert c.retransmit(last.sequence)
    _, rtx_body = parsed(sub.sent[-1])
    assert rtp.parse_vp8_descriptor(rtx_body[2:]).picture_id == last_pid


def test_pause_stops_and_resume_waits_for_keyframe() -> None:
    router, _ = make_router()
    track = make_track(router, "a", "video", [])
    c, sub = make_consumer(track)
    p = track.producers[0]
    feed(p, 1, 0, True, 1)
    track.paused = True
    c.pause_changed()
    feed(p, 2, 3000, False, 2)
    assert len(sub.sent) == 1
    track.paused = False
    c.pause_changed()
    feed(p, 3, 6000, False, 3)
    assert len(sub.sent) == 1
    feed(p, 4, 9000, True, 4)
    assert rtp.parse_header(sub.sent[-1]).sequence == (c.first_seq + 1) & 0xFFFF


def test_no_segment_starts_before_the_subscriber_is_connected() -> None:
    """A keyframe that arrives before DTLS is up is never delivered: wait for the next."""
    router, _ = make_router()
    track = make_track(router, "a", "video", [])
    c, sub = make_consumer(track)
    sub.state = "new"
    p = track.producers[0]
    feed(p, 1, 0, True, 1)
    assert c.seg is None
    sub.state = "connected"
    feed(p, 2, 3000, False, 2)
    assert sub.sent == []
    feed(p, 3, 6000, True, 3)
    assert len(sub.sent) == 1
    _header, payload = parsed(sub.sent[0])
    assert payload[5] & 0x01 == 0  # after the 5-byte VP8 descriptor: a keyframe


def test_choose_layer_by_size_and_budget() -> None:
    router, _ = make_router()
    track = make_track(router, "a", "video", ["q", "h", "f"])
    q, h, f = track.producers
    for p, (w, hh, rate) in zip(
        track.producers,
        [(320, 180, 150_000), (640, 360, 500_000), (1280, 720, 1_500_000)],
        strict=True,
    ):
        p.width, p.height, p.bitrate_bps, p.last_packet = w, hh, rate, 100.0
    assert r.choose_layer(track.producers, None, None, 100.5) is f
    assert r.choose_layer(track.producers, (600, 300), None, 100.5) is h
    assert r.choose_layer(track.producers, (100, 100), None, 100.5) is q
    assert r.choose_layer(track.producers, None, 600_000, 100.5) is h
    assert r.choose_layer(track.producers, None, 10_000, 100.5) is q
    f.last_packet = 90.0  # silent layer
    assert r.choose_layer(track.producers, None, None, 100.5) is h
    assert r.choose_layer(track.producers, None, None, 200.0) is None


def test_active_speaker_with_hysteresis() -> None:
    router, events = make_router()
    a = make_track(router, "a", "audio", [])
    b = make_track(router, "b", "audio", [])

    def interval(level_a: int, level_b: int) -> None:
        for t, level in ((a, level_a), (b, level_b)):
            for _ in range(5):
                t.producers[0].on_packet(
                    t.producers[0].max_seq + 1 & 0xFFFF, 0, False, level, b"x", 1.0
                )
        router.update_speaker()

    interval(20, 127)
    interval(20, 127)  # the moving average needs two intervals to pass the threshold
    assert events[-1] == ("speaker", {"router": "room", "participant": "a"})
    interval(20, 100)
    interval(30, 15)  # b louder once: not yet
    assert router.speaker == "a"
    switched_after = next(n for n in range(1, 10) if (interval(40, 15), router.speaker)[1] == "b")
    assert switched_after >= 2  # the lead must hold for SPEAKER_CONFIRM intervals
    for _ in range(8):
        interval(127, 127)
    assert router.speaker is None
    assert events[-1] == ("speaker", {"router": "room", "participant": None})


def make_publisher(router: r.Router, pid: str) -> r.Publisher:
    pub = object.__new__(r.Publisher)  # no PeerConnection needed for the packet logic
    pub.participant = router.participant(pid, create=True)
    pub.by_ssrc = {}
    pub.participant.pub = None  # NACK/PLI have nowhere to go in this test
    return pub


def rid_packet(ssrc: int, seq: int, pt: int, rid_ext: int, rid: bytes, payload: bytes) -> bytes:
    ext = rtp.build_extensions([(1, b"1"), (rid_ext, rid)])
    return rtp.build_packet(
        marker=False,
        payload_type=pt,
        sequence=seq,
        timestamp=seq * 3000,
        ssrc=ssrc,
        extensions=ext,
        payload=payload,
    )


def test_simulcast_ssrcs_bound_by_rid_and_rtx_filtered() -> None:
    router, _ = make_router()
    track = make_track(router, "a", "video", ["q", "h", "f"])
    for p in track.producers:
        p.ssrc = None
    pub = make_publisher(router, "a")
    pub.participant.rid_ids["1"] = (10, 11)
    pub.handle_rtp(rid_packet(0x51, 7, 96, 10, b"h", vp8(1, True)))
    q, h, f = track.producers
    assert h.ssrc == 0x51
    assert q.ssrc is None
    assert f.ssrc is None
    assert h.received == 1
    # repaired-rid binds the RTX stream of the same layer
    rtx_probe = rid_packet(0x52, 1, 97, 11, b"h", struct.pack("!H", 7) + vp8(1, True))
    pub.handle_rtp(rtx_probe)
    assert h.rtx_ssrc == 0x52
    assert h.received == 1  # seq 7 was never missing: an unrequested re-send is dropped
    padding_only = rid_packet(0x52, 2, 97, 11, b"h", b"\x00\x07")
    pub.handle_rtp(padding_only)
    assert h.received == 1
    # an unknown SSRC without a rid of this track is dropped, not bound
    pub.handle_rtp(rid_packet(0x53, 1, 96, 10, b"x", vp8(1, True)))
    assert 0x53 not in pub.by_ssrc


def test_rtx_that_fills_a_gap_is_accepted() -> None:
    async def scenario() -> None:
        router, _ = make_router()
        track = make_track(router, "a", "video", [])
        p = track.producers[0]
        p.ssrc, p.rtx_ssrc = 0x10, 0x11
        pub = make_publisher(router, "a")
        pub.by_ssrc = {0x10: (p, False), 0x11: (p, True)}
        c, sub = make_consumer(track)

        def media(seq: int, key: bool) -> bytes:
            return rtp.build_packet(
                marker=True,
                payload_type=96,
                sequence=seq,
                timestamp=seq,
                ssrc=0x10,
                extensions=b"",
                payload=vp8(seq, key),
            )

        pub.handle_rtp(media(1, True))
        pub.handle_rtp(media(3, False))
        assert set(p.missing) == {2}
        repair = rtp.build_packet(
            marker=True,
            payload_type=97,
            sequence=900,
            timestamp=2,
            ssrc=0x11,
            extensions=b"",
            payload=struct.pack("!H", 2) + vp8(2, False),
        )
        pub.handle_rtp(repair)
        assert not p.missing
        seqs = [rtp.parse_header(x).sequence - c.first_seq for x in sub.sent]
        assert seqs == [0, 2, 1]

    asyncio.run(scenario())


def test_hook_exceptions_are_counted_not_raised() -> None:
    router, _ = make_router()
    pub = make_publisher(router, "a")
    pub.role = "pub"
    COUNTERS.reset()
    asyncio.run(pub._rtp_hook(b"\x80"))  # truncated: the handler raises inside
    asyncio.run(pub._rtcp_hook(b"\x80\xc8\x00\x10"))  # malformed RTCP: a counted drop
    assert COUNTERS.hook_errors == 1
    assert COUNTERS.dropped_packets == 1
