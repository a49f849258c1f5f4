"""Synthetic media for call tests and the call benchmark (asyncio + aiortc side).

Two kinds of sources, both :class:`aiortc.MediaStreamTrack` subclasses paced by
the asyncio loop that runs them:

- **live** (:class:`PatternVideoTrack`, :class:`ToneAudioTrack`): yield raw
  ``av.VideoFrame`` / ``av.AudioFrame``; aiortc encodes them (VP8 / Opus), so
  a keyframe request (PLI) from the SFU gets a keyframe at once, and Opus
  packets carry the audio level. Costs an encoder per track.
- **replay** (:class:`ReplayVideoTrack`, :class:`ReplayAudioTrack`): yield
  ``av.Packet`` objects from a clip encoded once (:func:`encode_vp8`,
  :func:`encode_opus`, cached per process); aiortc only packetizes a packet
  (``Encoder.pack``), so a publisher costs almost no CPU. A keyframe comes
  every ``keyframe_interval`` frames whatever the SFU asks (a pre-encoded
  stream cannot honour PLI), and replayed audio has no audio level.

No numpy: pictures are built from byte strings (gradient rows, a moving
square, and optionally a band of noise that keeps a CBR encoder at its
target bitrate).
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import math
import random
import struct
import time
from dataclasses import dataclass
from typing import Literal

import av
from aiortc.mediastreams import MediaStreamTrack

#: RTP clock of video (Hz) and the time base of video frames/packets.
VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
#: Opus runs at 48 kHz with 20 ms frames.
AUDIO_RATE = 48_000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_FRAME_SAMPLES = 960
AUDIO_FRAMES_PER_S = AUDIO_RATE // AUDIO_FRAME_SAMPLES

MediaMode = Literal["live", "replay"]


@dataclass(frozen=True, slots=True)
class VideoSpec:
    """Size, rate and bitrate of a synthetic video stream.

    Attributes:
        width, height: even sizes in pixels.
        fps: frames per second.
        bitrate: target bits per second (replay clips are encoded CBR at it;
            live tracks use aiortc's encoder, which picks its own rate).
        keyframe_interval: frames between keyframes of a replay clip.
        noise: fraction (0..1) of the picture's height filled with fresh noise
            every frame: makes the clip hard to compress, so the CBR encoder
            really spends ``bitrate`` (0 for a cheap, smooth picture).
    """

    width: int = 320
    height: int = 240
    fps: int = 15
    bitrate: int = 300_000
    keyframe_interval: int = 15
    noise: float = 0.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"Expected even positive sizes, got {self.width}x{self.height}")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"Expected 1..120 fps, got {self.fps}")
        if self.bitrate <= 0 or self.keyframe_interval <= 0:
            raise ValueError("Expected a positive bitrate and keyframe interval")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"Expected noise in 0..1, got {self.noise}")


def _picture(spec: VideoSpec, index: int, cycle: int, rng: random.Random) -> av.VideoFrame:
    """Frame ``index`` of a ``cycle``-frame loop: gradient, moving square, noise band."""
    w, h = spec.width, spec.height
    ramp = bytes(i % 256 for i in range(w + 256))
    shift = 4 * index
    y = bytearray(b"".join(ramp[(r + shift) % 256 : (r + shift) % 256 + w] for r in range(h)))
    side = max(2, h // 4)
    phase = 2 * math.pi * index / cycle
    cx = int((w - side) * (0.5 + 0.5 * math.sin(phase)))
    cy = int((h - side) * (0.5 + 0.5 * math.cos(phase)))
    white = b"\xeb" * side
    for r in range(cy, cy + side):
        y[r * w + cx : r * w + cx + side] = white
    band = int(h * spec.noise)
    if band:
        y[(h - band) * w :] = rng.randbytes(band * w)
    frame = av.VideoFrame(w, h, "yuv420p")
    frame.planes[0].update(_pad(bytes(y), w, h, frame.planes[0].line_size))
    cw, ch = w // 2, h // 2
    frame.planes[1].update(
        _pad(bytes([(128 + 3 * index) % 256]) * (cw * ch), cw, ch, frame.planes[1].line_size)
    )
    frame.planes[2].update(
        _pad(bytes([(200 - 2 * index) % 256]) * (cw * ch), cw, ch, frame.planes[2].line_size)
    )
    return frame


def _pad(data: bytes, width: int, height: int, line_size: int) -> bytes:
    """``data`` (rows of ``width`` bytes) with each row padded to the plane's line size."""
    if line_size == width:
        return data
    fill = b"\x00" * (line_size - width)
    return b"".join(data[r * width : (r + 1) * width] + fill for r in range(height))


@functools.lru_cache(maxsize=4)
def pattern_frames(spec: VideoSpec) -> tuple[av.VideoFrame, ...]:
    """A loop of 2 s of test pattern at ``spec`` (cached per process, 4 specs at most)."""
    cycle = 2 * spec.fps
    rng = random.Random(0x7E7E)
    return tuple(_picture(spec, i, cycle, rng) for i in range(cycle))


@dataclass(frozen=True, slots=True)
class EncodedClip:
    """A pre-encoded loop: ``packets[i]`` is frame i; ``packets[0]`` is a keyframe.

    Attributes:
        packets: encoded frames (VP8 frames or Opus packets).
        keyframes: indexes of keyframes (video), empty for audio.
        bitrate: the clip's real average bitrate, bits per second.
    """

    packets: tuple[bytes, ...]
    keyframes: frozenset[int]
    bitrate: int


@functools.lru_cache(maxsize=4)
def encode_vp8(spec: VideoSpec, seconds: float = 2.0) -> EncodedClip:
    """Encode ``seconds`` of test pattern to VP8 at ``spec`` (CBR), once per process.

    The clip length is a whole number of keyframe intervals, so that looping it
    keeps keyframes ``keyframe_interval`` frames apart.
    """
    gop = spec.keyframe_interval
    count = max(gop, round(seconds * spec.fps / gop) * gop)
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = spec.width
    codec.height = spec.height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = spec.bitrate
    codec.framerate = fractions.Fraction(spec.fps, 1)
    codec.time_base = fractions.Fraction(1, spec.fps)
    codec.gop_size = gop
    rate = str(spec.bitrate)
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": rate,
        "maxrate": rate,
        "bufsize": rate,
        "keyint_min": str(gop),
        "error-resilient": "1",
    }
    frames = pattern_frames(spec)
    packets: list[bytes] = []
    keyframes: set[int] = set()
    for i in range(count):
        src = frames[i % len(frames)]
        frame = av.VideoFrame(spec.width, spec.height, "yuv420p")
        for dst, plane in zip(frame.planes, src.planes, strict=True):
            dst.update(bytes(plane))
        frame.pts = i
        frame.time_base = codec.time_base
        frame.pict_type = (
            av.video.frame.PictureType.I if i % gop == 0 else av.video.frame.PictureType.NONE
        )
        for packet in codec.encode(frame):
            if packet.is_keyframe:
                keyframes.add(len(packets))
            packets.append(bytes(packet))
    for packet in codec.encode(None):
        if packet.is_keyframe:
            keyframes.add(len(packets))
        packets.append(bytes(packet))
    if not packets or 0 not in keyframes:
        raise RuntimeError("Expected libvpx to start the clip with a keyframe")
    bits = 8 * sum(len(p) for p in packets)
    return EncodedClip(tuple(packets), frozenset(keyframes), int(bits * spec.fps / len(packets)))


def _tone(freq: float, samples: int, offset: int) -> bytes:
    """Mono s16 samples of a sine at ``freq`` Hz starting at sample ``offset``."""
    return struct.pack(
        f"<{samples}h",
        *(
            int(8000 * math.sin(2 * math.pi * freq * (offset + n) / AUDIO_RATE))
            for n in range(samples)
        ),
    )


@functools.lru_cache(maxsize=8)
def encode_opus(freq: float = 440.0, seconds: float = 1.0, bitrate: int = 32_000) -> EncodedClip:
    """Encode ``seconds`` of a sine tone to Opus (20 ms packets, mono), once per process."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = bitrate
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = AUDIO_RATE
    codec.time_base = AUDIO_TIME_BASE
    packets: list[bytes] = []
    count = max(1, round(seconds * AUDIO_FRAMES_PER_S))
    for i in range(count + 1):  # one extra frame flushes the encoder's look-ahead
        frame = _audio_frame(_tone(freq, AUDIO_FRAME_SAMPLES, i * AUDIO_FRAME_SAMPLES), i)
        packets.extend(bytes(p) for p in codec.encode(frame))
    packets = packets[:count]
    bits = 8 * sum(len(p) for p in packets)
    return EncodedClip(tuple(packets), frozenset(), int(bits * AUDIO_FRAMES_PER_S / len(packets)))


def _audio_frame(pcm: bytes, index: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME_SAMPLES)
    frame.planes[0].update(pcm)
    frame.sample_rate = AUDIO_RATE
    frame.pts = index * AUDIO_FRAME_SAMPLES
    frame.time_base = AUDIO_TIME_BASE
    return frame


class _Pacer:
    """Wall-clock pacing at ``rate`` per second: the n-th tick at start + n / rate.

    A late tick is not made up by bursts beyond what was missed (each ``wait``
    returns at once while behind), so a stalled loop catches up, then paces.
    """

    def __init__(self, rate: float) -> None:
        self._period = 1.0 / rate
        self._start: float | None = None
        self._count = 0

    async def wait(self) -> int:
        """Wait for the next tick; returns its index (0 first)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return 0
        self._count += 1
        delay = self._start + self._count * self._period - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            # More than a second behind (a stalled loop): restart the schedule
            # instead of sending a second of frames in a burst.
            self._start = now - self._count * self._period
        return self._count


class PatternVideoTrack(MediaStreamTrack):
    """Live test-pattern video: raw frames that aiortc encodes (honours PLI)."""

    kind = "video"

    def __init__(self, spec: VideoSpec) -> None:
        super().__init__()
        self._spec = spec
        self._frames = pattern_frames(spec)
        self._pacer = _Pacer(spec.fps)

    async def recv(self) -> av.VideoFrame:
        """The next frame, paced at the spec's frame rate."""
        n = await self._pacer.wait()
        src = self._frames[n % len(self._frames)]
        # A fresh frame each time: the encoder runs in a thread pool, and
        # aiortc sets pts on what it gets.
        frame = av.VideoFrame(self._spec.width, self._spec.height, "yuv420p")
        for dst, plane in zip(frame.planes, src.planes, strict=True):
            dst.update(bytes(plane))
        frame.pts = n * VIDEO_CLOCK // self._spec.fps
        frame.time_base = VIDEO_TIME_BASE
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """Live sine-tone audio (20 ms frames) that aiortc encodes to Opus."""

    kind = "audio"

    def __init__(self, freq: float = 440.0) -> None:
        super().__init__()
        # One second of tone, looped: a whole number of periods only for
        # integer frequencies, which is what tests use.
        self._pcm = _tone(freq, AUDIO_RATE, 0)
        self._pacer = _Pacer(AUDIO_FRAMES_PER_S)

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame."""
        n = await self._pacer.wait()
        size = 2 * AUDIO_FRAME_SAMPLES
        offset = (n * size) % len(self._pcm)
        return _audio_frame(self._pcm[offset : offset + size], n)


class ReplayVideoTrack(MediaStreamTrack):
    """Pre-encoded VP8 replayed as ``av.Packet`` (aiortc only packetizes it)."""

    kind = "video"

    def __init__(self, clip: EncodedClip, fps: int) -> None:
        super().__init__()
        self._clip = clip
        self._fps = fps
        self._pacer = _Pacer(fps)

    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        """The next encoded frame, paced at ``fps``."""
        n = await self._pacer.wait()
        packet = av.Packet(self._clip.packets[n % len(self._clip.packets)])
        packet.pts = n * VIDEO_CLOCK // self._fps
        packet.time_base = VIDEO_TIME_BASE
        return packet


class ReplayAudioTrack(MediaStreamTrack):
    """Pre-encoded Opus replayed as ``av.Packet`` (20 ms each)."""

    kind = "audio"

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self._clip = clip
        self._pacer = _Pacer(AUDIO_FRAMES_PER_S)

    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        """The next Opus packet."""
        n = await self._pacer.wait()
        packet = av.Packet(self._clip.packets[n % len(self._clip.packets)])
        packet.pts = n * AUDIO_FRAME_SAMPLES
        packet.time_base = AUDIO_TIME_BASE
        return packet


def make_tracks(
    mode: MediaMode, spec: VideoSpec, *, audio: bool, video: bool, freq: float = 440.0
) -> list[MediaStreamTrack]:
    """The publisher tracks for ``mode``: audio first, then video (either may be left out)."""
    tracks: list[MediaStreamTrack] = []
    if mode == "live":
        if audio:
            tracks.append(ToneAudioTrack(freq))
        if video:
            tracks.append(PatternVideoTrack(spec))
    elif mode == "replay":
        if audio:
            tracks.append(ReplayAudioTrack(encode_opus(freq)))
        if video:
            tracks.append(ReplayVideoTrack(encode_vp8(spec), spec.fps))
    else:
        raise ValueError(f"Expected media 'live' or 'replay', got {mode!r}")
    return tracks
