"""aiortc test peers with synthetic media (live-encoded, small frames).

:class:`PublisherPeer` offers audio (a tone, so the audio level shows speech,
or silence) and/or VP8 video; :class:`SubscriberPeer` answers the worker's
offers and counts decoded frames per track id (the msid track part, i.e. the
worker's track id). Both contact no STUN server. Use them inside
:func:`tether.media.testing.loopback.loopback_candidates` when the worker
announces 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import math
import time
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms


class ToneTrack(MediaStreamTrack):
    """Mono 48 kHz audio: a 440 Hz tone of ``amplitude`` (0 = silence), paced in real time."""

    kind = "audio"

    def __init__(self, amplitude: float = 0.3) -> None:
        super().__init__()
        self.amplitude = amplitude
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> Any:
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / AUDIO_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        peak = int(32767 * self.amplitude)
        samples = bytearray()
        for i in range(AUDIO_SAMPLES):
            v = int(peak * math.sin(2 * math.pi * 440 * (self._pts + i) / AUDIO_RATE))
            samples += v.to_bytes(2, "little", signed=True)
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(bytes(samples))
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pts += AUDIO_SAMPLES
        return frame


class PatternVideoTrack(VideoStreamTrack):
    """Small moving-gradient frames (30 fps) so VP8 has something to encode."""

    def __init__(self, width: int = 160, height: int = 120) -> None:
        super().__init__()
        self.width = width
        self.height = height
        self._n = 0

    async def recv(self) -> Any:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for index, plane in enumerate(frame.planes):
            row = bytes(((x + self._n * (3 + index)) & 0xFF) for x in range(plane.line_size))
            plane.update(row * (plane.buffer_size // plane.line_size))
        self._n += 1
        frame.pts = pts
        frame.time_base = time_base
        return frame


def _pc() -> Any:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class PublisherPeer:
    """The client side of a publisher PC."""

    def __init__(
        self,
        *,
        audio: bool = True,
        video: bool = True,
        amplitude: float = 0.3,
        width: int = 160,
        height: int = 120,
        video_codec: str = "video/VP8",
    ) -> None:
        self.pc = _pc()
        if audio:
            self.pc.addTrack(ToneTrack(amplitude))
        if video:
            self.pc.addTrack(PatternVideoTrack(width, height))
            # offer only the wanted codec (e.g. "video/H264"), as a browser preferring it would
            codecs = [
                c
                for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() == video_codec.lower()
            ]
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(codecs[:1])

    async def offer(self) -> str:
        """Create the offer (candidates gathered inside it)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        await self.pc.close()


class SubscriberPeer:
    """The client side of a subscriber PC: answers offers, counts decoded frames."""

    def __init__(self) -> None:
        self.pc = _pc()
        self.frames: collections.Counter[str] = collections.Counter()
        self.first_frame_at: dict[str, float] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._consume(track)))

    async def _consume(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames[track.id] += 1
            self.first_frame_at.setdefault(track.id, time.monotonic())
            if track.kind == "video":
                self.sizes[track.id] = (frame.width, frame.height)

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pc.close()
