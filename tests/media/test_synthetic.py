"""Synthetic media: pre-encoded clips (keyframes, bitrate) and the tracks' pacing and timestamps."""

from __future__ import annotations

import asyncio

import av
import pytest

from tether.media.synthetic import (
    AUDIO_FRAME_SAMPLES,
    VIDEO_CLOCK,
    PatternVideoTrack,
    ReplayAudioTrack,
    ReplayVideoTrack,
    ToneAudioTrack,
    VideoSpec,
    encode_opus,
    encode_vp8,
    make_tracks,
)

SPEC = VideoSpec(width=160, height=120, fps=15, bitrate=200_000, keyframe_interval=10, noise=0.2)


def test_a_vp8_clip_has_keyframes_every_interval_and_about_its_bitrate() -> None:
    clip = encode_vp8(SPEC, 2.0)
    assert len(clip.packets) == 30  # 2 s at 15 fps, a whole number of intervals
    assert {0, 10, 20} <= clip.keyframes
    # CBR with a noise band: within 35% of the target on so short a clip.
    assert 0.65 * SPEC.bitrate < clip.bitrate < 1.35 * SPEC.bitrate
    decoder = av.CodecContext.create("vp8", "r")
    frames = [f for p in clip.packets for f in decoder.decode(av.Packet(p))]
    assert len(frames) == len(clip.packets)
    assert (frames[0].width, frames[0].height) == (SPEC.width, SPEC.height)


def test_an_opus_clip_is_20_ms_packets() -> None:
    clip = encode_opus(440.0, 1.0)
    assert len(clip.packets) == 50
    decoder = av.CodecContext.create("opus", "r")
    samples = sum(f.samples for p in clip.packets for f in decoder.decode(av.Packet(p)))
    assert samples == 50 * AUDIO_FRAME_SAMPLES


@pytest.mark.parametrize(
    "bad",
    [
        {"width": 161},
        {"height": 0},
        {"fps": 0},
        {"bitrate": 0},
        {"keyframe_interval": 0},
        {"noise": 1.5},
    ],
)
def test_bad_video_specs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Expected"):
        VideoSpec(**bad)  # type: ignore[arg-type]


def test_tracks_are_paced_with_increasing_timestamps() -> None:
    async def pull() -> None:
        video = ReplayVideoTrack(encode_vp8(SPEC, 2.0), SPEC.fps)
        audio = ReplayAudioTrack(encode_opus())
        live = PatternVideoTrack(SPEC)
        tone = ToneAudioTrack(300.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        packets = [await video.recv() for _ in range(4)]
        assert [p.pts for p in packets] == [n * VIDEO_CLOCK // SPEC.fps for n in range(4)]
        # Three frame periods passed (the first frame is immediate).
        assert loop.time() - start >= 3 / SPEC.fps * 0.9
        assert [(await audio.recv()).pts for _ in range(2)] == [0, AUDIO_FRAME_SAMPLES]
        frame = await live.recv()
        assert (frame.width, frame.height) == (SPEC.width, SPEC.height)
        assert (await tone.recv()).samples == AUDIO_FRAME_SAMPLES
        for track in (video, audio, live, tone):
            track.stop()

    asyncio.run(pull())


def test_make_tracks_puts_audio_first_and_refuses_unknown_modes() -> None:
    kinds = [t.kind for t in make_tracks("live", SPEC, audio=True, video=True)]
    assert kinds == ["audio", "video"]
    assert make_tracks("replay", SPEC, audio=False, video=False) == []
    with pytest.raises(ValueError, match="Expected media"):
        make_tracks("file", SPEC, audio=True, video=True)  # type: ignore[arg-type]
