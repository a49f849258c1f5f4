"""CallPeer's media side against a plain aiortc sender, no server (real UDP on loopback).

The sender plays the SFU's role for one subscriber connection: it offers
sendonly audio+video (live synthetic tracks), ``_Media.answer`` answers as the
peer does for a ``call.offer``. Checks the loopback candidate patch, the
per-track counters (decoded frames, first packet a keyframe start, times
after subscription), loss injection with NACK/RTX repair, and the
counting-only mode. Also the private aiortc/aioice API check.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from tether.media import peer as peer_module
from tether.media.peer import PeerOptions, TrackStats, _LoopThread, _Media
from tether.media.synthetic import VideoSpec, make_tracks
from tether.media.worker import compat

SPEC = VideoSpec(width=160, height=120, fps=15, bitrate=150_000, keyframe_interval=15)


class _Sender:
    """An aiortc PC offering live synthetic audio+video (lives on the loop thread)."""

    pc: RTCPeerConnection

    async def offer(self) -> tuple[str, dict[str, str]]:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for track in make_tracks("live", SPEC, audio=True, video=True):
            self.pc.addTransceiver(track, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        mids = {t.mid: f"sender.{t.mid}" for t in self.pc.getTransceivers() if t.mid is not None}
        return self.pc.localDescription.sdp, mids

    async def accept(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def close(self) -> None:
        await self.pc.close()


@asynccontextmanager
async def subscribed(options: PeerOptions) -> AsyncIterator[tuple[_Media, threading.Lock, dict]]:
    peer_module.allow_loopback()
    loop = _LoopThread("test-peer")
    lock = threading.Lock()
    counters: dict = {}
    media = _Media(options, lock, counters, lambda item: None)
    sender = _Sender()
    try:
        sdp, mids = await loop.run(sender.offer())
        answer = await loop.run(media.answer(sdp, mids))
        await loop.run(sender.accept(answer))
        yield media, lock, counters
    finally:
        with trio.CancelScope(shield=True):
            await loop.run(sender.close())
            await loop.run(media.close())
            await loop.stop()


def snapshot(lock: threading.Lock, counters: dict) -> dict[str, TrackStats]:
    with lock:
        return {k: c.snapshot() for k, c in counters.items()}


async def wait(
    lock: threading.Lock, counters: dict, condition, timeout: float
) -> dict[str, TrackStats]:
    with trio.fail_after(timeout):
        while True:
            stats = snapshot(lock, counters)
            if condition(stats):
                return stats
            await trio.sleep(0.05)


def test_the_private_api_the_peer_relies_on_is_there() -> None:
    checked = compat.check()  # raises CompatError naming what changed
    assert "RTCRtpReceiver._handle_rtp_packet(self, packet, arrival_time_ms)" in checked
    assert "StunProtocol.datagram_received calls receiver.data_received" in checked


async def test_decodes_both_tracks_and_starts_on_a_keyframe() -> None:
    async with subscribed(PeerOptions(video_spec=SPEC)) as (_, lock, counters):
        stats = await wait(
            lock, counters, lambda s: len(s) == 2 and all(t.frames >= 10 for t in s.values()), 30
        )
    video = next(t for t in stats.values() if t.kind == "video")
    audio = next(t for t in stats.values() if t.kind == "audio")
    assert video.first_packet_keyframe is True
    assert video.keyframes >= 1
    assert (video.width, video.height) == (SPEC.width, SPEC.height)
    assert video.first_frame_s is not None
    assert video.first_frame_s > 0
    assert audio.packets >= 10
    assert audio.first_packet_keyframe is None
    assert video.lost == 0


async def test_injected_loss_is_repaired_by_rtx_and_video_keeps_decoding() -> None:
    options = PeerOptions(video_spec=SPEC, loss=0.1, seed=7)
    async with subscribed(options) as (media, lock, counters):
        stats = await wait(
            lock,
            counters,
            lambda s: any(t.kind == "video" and t.rtx_packets >= 3 for t in s.values()),
            30,
        )
        before = next(t for t in stats.values() if t.kind == "video").frames
        after = await wait(
            lock,
            counters,
            lambda s: any(t.kind == "video" and t.frames >= before + 15 for t in s.values()),
            30,
        )
        assert media.dropped > 0
    video = next(t for t in after.values() if t.kind == "video")
    assert video.lost > 0


async def test_counting_mode_counts_packets_without_decoding() -> None:
    async with subscribed(PeerOptions(video_spec=SPEC, decode=False)) as (_, lock, counters):
        stats = await wait(
            lock, counters, lambda s: len(s) == 2 and all(t.packets >= 20 for t in s.values()), 30
        )
    assert all(t.frames == 0 for t in stats.values())
    assert next(t for t in stats.values() if t.kind == "video").keyframes >= 1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x10, 0x00]), True),  # S=1, PID=0, no extension, P=0
        (bytes([0x10, 0x01]), False),  # interframe
        (bytes([0x00, 0x00]), False),  # not a partition start
        (bytes([0x90, 0x80, 0x81, 0x23, 0x00]), True),  # X, I with a 15-bit picture id
        (bytes([0x90, 0x80, 0x05, 0x01]), False),
        (b"", False),
    ],
)
def test_vp8_keyframe_start(payload: bytes, expected: bool) -> None:
    assert peer_module.vp8_keyframe_start(payload) is expected


async def test_sink_mode_counts_clear_headers_and_drops_everything() -> None:
    async with subscribed(PeerOptions(video_spec=SPEC, sink=True, decode=False)) as (
        media,
        lock,
        counters,
    ):
        stats = await wait(
            lock, counters, lambda s: len(s) == 2 and all(t.packets >= 20 for t in s.values()), 30
        )
        assert media.dropped == 0
    assert all(t.frames == 0 and t.keyframes == 0 for t in stats.values())
    assert all(t.lost == 0 for t in stats.values())
