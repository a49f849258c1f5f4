"""Headless Chromium in a call with aiortc participants, through a real media worker.

The server runs one real media worker (bound to and announcing 127.0.0.1).
``alice`` joins the room's call as an aiortc participant
(:func:`tether.media.peer.open_call_peer`, live VP8 + Opus); then
``call.spec.mjs`` makes Chromium join as ``bob`` over the WebSocket (msgpack),
publish its fake camera with 3-layer simulcast (rids q/h/f) and its fake
microphone, and answer the server's subscriber offers; then ``carol`` (aiortc)
joins late. Checked:

- Chromium decodes alice's video and plays her audio, forwarded by the worker
  (its ``getStats()``: frames decoded, bytes, samples and audio energy);
- alice decodes Chromium's video and audio (her per-track counters);
- the worker accepted Chromium's three simulcast layers (publish answer) and
  Chromium sends each of them;
- carol's arrival renegotiates Chromium's subscriber connection: Chromium then
  decodes carol too (and still alice), and carol decodes Chromium;
- ``call.quality`` from carol switches her to the small layer and back.

Skipped when ``/usr/bin/chromium``, node or ``tests/browser/node_modules`` is
missing; ``.ci/run`` installs them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tether.client import Client, connect
from tether.media.peer import CallPeer, open_call_peer
from tether.testing.browser import browser_marks
from tether.testing.server import make_config, running_server, token

HERE = Path(__file__).parent
#: Frames of alice's video that Chromium must have decoded (15 fps: 4 s of video).
BROWSER_FRAMES = 60
#: Frames of Chromium's video that alice must have decoded.
PEER_FRAMES = 30
#: The longest line call.spec.mjs prints (a stats JSON is a few KiB).
MAX_LINE = 1 << 22

pytestmark = browser_marks(HERE)


class Spec:
    """``call.spec.mjs`` as a child process: its stdout read line by line, its stdin written."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.transcript: list[str] = []
        self._buffer = b""

    async def line(self) -> str | None:
        """The next line of output (None at its end); every line goes into the transcript."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                if not self._buffer:
                    return None
                self._buffer += b"\n"
                break
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise AssertionError("call.spec.mjs printed an overlong line")
        raw, self._buffer = self._buffer.split(b"\n", 1)
        text = raw.decode(errors="replace")
        self.transcript.append(text)
        return text

    async def until(self, prefix: str) -> str:
        """The first line starting with ``prefix``; fails on ``FAIL`` or the end of output."""
        while True:
            text = await self.line()
            if text is None or text.startswith("FAIL"):
                raise AssertionError(f"call.spec.mjs: expected {prefix!r}:\n" + self.output())
            if text.startswith(prefix):
                return text

    async def tell(self, text: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(text.encode() + b"\n")

    def output(self) -> str:
        return "\n".join(self.transcript)


def _inbound(stats: dict[str, Any], participant: str, kind: str) -> list[dict[str, Any]]:
    """Chromium's inbound-rtp entries of ``participant``'s tracks of one kind."""
    return [
        s
        for s in stats["inbound"]
        if s["kind"] == kind and (s.get("track") or "").startswith(participant + ".")
    ]


def _chromium_decodes(stats: dict[str, Any], participant: str) -> None:
    """Chromium's stats show ``participant``'s video decoded and audio played."""
    video = _inbound(stats, participant, "video")
    audio = _inbound(stats, participant, "audio")
    assert len(video) == 1, stats
    assert len(audio) == 1, stats
    assert video[0]["framesDecoded"] >= BROWSER_FRAMES, video
    assert video[0]["bytesReceived"] > 0, video
    assert video[0]["frameWidth"] > 0, video
    assert audio[0]["totalSamplesReceived"] > 48_000, audio  # over a second at 48 kHz
    assert audio[0]["bytesReceived"] > 0, audio
    assert audio[0]["totalAudioEnergy"] > 0, audio  # the tone, not silence


def _peer_decodes(peer: CallPeer, participant: str) -> bool:
    """Whether ``peer`` has decoded ``participant``'s video and audio."""
    kinds = {
        s.kind: s for s in peer.track_stats().values() if s.track.startswith(participant + ".")
    }
    video, audio = kinds.get("video"), kinds.get("audio")
    return (
        video is not None
        and video.frames >= PEER_FRAMES
        and video.width > 0
        and audio is not None
        and audio.frames > 0
    )


async def test_chromium_in_a_call_with_aiortc_participants(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        media_workers=1,
        media_udp_port=0,
        media_bind_address="127.0.0.1",
        media_announced_addresses=("127.0.0.1",),
    )
    async with running_server(config) as (_server, info):
        for user in ("bob", "carol"):
            async with connect(info.url, token(user), device="setup"):
                pass  # seen once, so the user can be made a member
        async with (
            connect(info.url, token("alice"), device="aiortc") as alice_client,
            connect(info.url, token("carol"), device="aiortc") as carol_client,
        ):
            room = (await alice_client.create_room("call", members=["bob", "carol"])).id
            with trio.fail_after(110):
                async with (
                    open_call_peer(alice_client, room, media="live") as alice,
                    _spec(info.port, room, alice) as spec,
                ):
                    await _call(spec, alice, carol_client, room)


async def _call(spec: Spec, alice: CallPeer, carol_client: Client, room: str) -> None:
    """The call, with Chromium (bob) joining after alice and carol after both."""
    assert alice.participant is not None
    joined = await spec.until("ok joined")
    published: dict[str, Any] = json.loads(joined[joined.index("{") :])
    ready = json.loads((await spec.until("READY ")).split(" ", 1)[1])
    _chromium_decodes(ready, alice.participant)
    chromium = ready["participant"]
    # The other way round: alice decodes Chromium's camera and microphone.
    await _until(alice, lambda p: _peer_decodes(p, chromium), "alice decodes Chromium")
    # Simulcast: the worker took Chromium's three layers, and Chromium sends each of them.
    video = [t for t in published["tracks"] if t["kind"] == "video"]
    assert len(video) == 1, published
    assert video[0]["rids"] == ["q", "h", "f"], published
    assert published["offer_simulcast"], published
    assert published["answer_simulcast"], published
    camera = video[0]["id"]

    # A late joiner: Chromium's subscriber connection is renegotiated to add carol.
    async with open_call_peer(carol_client, room, media="live") as carol:
        assert carol.participant is not None
        await spec.tell(f"decode {carol.participant}")
        later = json.loads((await spec.until("DECODING ")).split(" ", 1)[1])
        _chromium_decodes(later, carol.participant)
        _chromium_decodes(later, alice.participant)  # still there after the renegotiation
        assert later["offers"] >= 2, later
        await _until(carol, lambda p: _peer_decodes(p, chromium), "carol decodes Chromium")
        # Layer choice: a small picture gets the q layer (320x180, or smaller when
        # Chromium adapts to CPU), a large one a larger layer again.
        await carol.set_quality(camera, 320, 180)
        await _until(carol, lambda p: _decoded_width(p, camera, 0, 320), "carol gets layer q")
        await carol.set_quality(camera, 1280, 720)
        await _until(carol, lambda p: _decoded_width(p, camera, 321, 10_000), "carol gets h/f")

        await spec.tell("finish")
        final = json.loads((await spec.until("STATS ")).split(" ", 1)[1])
        await spec.until("PASS")

    _chromium_decodes(final, alice.participant)
    _chromium_decodes(final, carol.participant)
    # Media went over the worker's announced loopback address.
    assert {p["pc"] for p in final["pairs"]} == {"pub", "sub"}, final["pairs"]
    assert all(p["remote"].startswith("127.0.0.1:") for p in final["pairs"]), final["pairs"]
    sent = {s["rid"]: s for s in final["outbound"] if s["kind"] == "video"}
    assert sorted(sent) == ["f", "h", "q"], final["outbound"]
    for layer in sent.values():
        assert layer["packetsSent"] > 0, sent
        assert layer["framesEncoded"] > 0, sent
    print("aiortc alice received:", alice.track_stats())
    print("aiortc carol received:", carol.track_stats())


def _decoded_width(peer: CallPeer, track: str, low: int, high: int) -> bool:
    """Whether ``peer``'s latest decoded frame of ``track`` is low..high pixels wide."""
    stats = peer.stats(track)
    return stats is not None and low <= stats.width <= high


async def _until(peer: CallPeer, condition: Callable[[CallPeer], bool], what: str) -> None:
    try:
        await peer.wait_until(condition, 30)
    except trio.TooSlowError:
        raise AssertionError(f"{what}: not within 30 s: {peer.track_stats()}") from None


@asynccontextmanager
async def _spec(port: int, room: str, first: CallPeer) -> AsyncIterator[Spec]:
    """call.spec.mjs running as bob in ``room``, waiting for ``first``'s media first.

    On a normal exit of the block the spec must have exited 0; otherwise it is
    stopped (SIGTERM, so that Playwright closes Chromium; SIGKILL would orphan it).
    """
    assert first.participant is not None
    command = [
        "node",
        str(HERE / "call.spec.mjs"),
        f"http://127.0.0.1:{port}",
        token("bob"),
        room,
        first.participant,
        str(BROWSER_FRAMES),
    ]
    process = await trio.lowlevel.open_process(
        command, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    spec = Spec(process)
    try:
        yield spec
        assert await process.wait() == 0, spec.output()
    finally:
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
        await process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                await stream.aclose()
        print(spec.output())
