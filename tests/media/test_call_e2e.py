"""Calls end to end: a real server with one real media worker, aiortc participants.

Every test runs ``tether.testing.server.running_server`` with
``media_workers=1`` (a ``python -m tether.media.worker`` child on an ephemeral
UDP port announcing 127.0.0.1) and :func:`tether.media.peer.open_call_peer`
participants over real WebSockets and real UDP on loopback. Video is live
synthetic VP8 at 160x120, 15 fps (aiortc encodes it, so keyframe requests are
honoured) to keep the 2-core CI machine light; audio is a live Opus tone.
Each test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tether.actors.messages import CloseConnection
from tether.app import Server, ServerInfo
from tether.bench._harness import free_port
from tether.client import Client, connect
from tether.media.peer import CallPeer, TrackStats, open_call_peer
from tether.media.synthetic import VideoSpec
from tether.testing.server import make_config, running_server, token

pytestmark = pytest.mark.slow

SPEC = VideoSpec(width=160, height=120, fps=15, bitrate=150_000, keyframe_interval=15)
#: Frames a participant must decode of each remote track to count as "decoding".
VIDEO_FRAMES = 15
AUDIO_FRAMES = 25


@asynccontextmanager
async def call_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Server, ServerInfo]]:
    config = make_config(
        tmp_path,
        media_workers=1,
        media_udp_port=0,
        media_announced_addresses=("127.0.0.1",),
        **overrides,
    )
    async with running_server(config) as (server, info):
        assert server.ctx is not None
        assert server.ctx.media is not None
        await server.ctx.media.wait_live(30.0)
        yield server, info


async def worker_request(server: Server, method: str, params: dict[str, Any]) -> Any:
    assert server.ctx is not None
    assert server.ctx.media is not None
    return await server.ctx.media.request(0, method, params)


@asynccontextmanager
async def room_for(info: ServerInfo) -> AsyncIterator[str]:
    async with connect(info.url, token("owner")) as owner:
        room = await owner.create_room("call", kind="public")
        yield room.id


async def join(
    stack: AsyncExitStack, info: ServerInfo, room: str, user: str, **kwargs: Any
) -> tuple[Client, CallPeer]:
    client = await stack.enter_async_context(connect(info.url, token(user), backoff_base=0.05))
    await client.join_room(room)
    kwargs.setdefault("video_spec", SPEC)
    kwargs.setdefault("tone_hz", 300.0 + 100 * len(user))
    peer = await stack.enter_async_context(open_call_peer(client, room, **kwargs))
    return client, peer


def remote(peer: CallPeer) -> dict[str, TrackStats]:
    own = f"{peer.participant}."
    return {t: s for t, s in peer.track_stats().items() if not t.startswith(own)}


def decoding(peer: CallPeer, others: int, baseline: dict[str, int] | None = None) -> bool:
    """Every track of ``others`` participants decoded enough frames (beyond ``baseline``)."""
    stats = remote(peer)
    if len(stats) < 2 * others:
        return False
    base = baseline or {}
    for track, s in stats.items():
        need = VIDEO_FRAMES if s.kind == "video" else AUDIO_FRAMES
        if s.frames - base.get(track, 0) < need:
            return False
    return True


def frames(peer: CallPeer) -> dict[str, int]:
    return {t: s.frames for t, s in remote(peer).items()}


async def test_three_participants_decode_each_other(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with call_server(tmp_path) as (_, info), room_for(info) as room:
            async with AsyncExitStack() as stack:
                peers = [(await join(stack, info, room, u))[1] for u in ("ann", "ben", "cat")]
                for peer in peers:
                    await peer.wait_until(lambda p: decoding(p, 2), 60)
                ids = {p.participant for p in peers}
                for peer in peers:
                    assert set(peer.participants) == ids
                    assert {t.split(".")[0] for t in remote(peer)} == ids - {peer.participant}
                    for stats in remote(peer).values():
                        if stats.kind == "video":
                            assert (stats.width, stats.height) == (SPEC.width, SPEC.height)
                            # A new consumer starts on a keyframe (PLI to the publisher).
                            assert stats.first_packet_keyframe is True
                # Everyone publishes a loud tone: someone is the dominant speaker.
                await peers[0].wait_until(lambda p: p.speaker in ids, 30)
                # Muting is signaled to everyone.
                ann = peers[0]
                await ann.mute("video", True)
                for peer in peers[1:]:
                    await peer.wait_until(
                        lambda p: p.participants[ann.participant or ""].video_muted, 30
                    )


async def test_a_late_joiner_starts_on_a_keyframe_within_a_second(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with call_server(tmp_path) as (_, info), room_for(info) as room:
            async with AsyncExitStack() as stack:
                first = [(await join(stack, info, room, u))[1] for u in ("ann", "ben")]
                for peer in first:
                    await peer.wait_until(lambda p: decoding(p, 1), 60)
                _, late = await join(stack, info, room, "cat")
                await late.wait_until(lambda p: decoding(p, 2), 60)
                videos = [s for s in remote(late).values() if s.kind == "video"]
                assert len(videos) == 2
                for stats in videos:
                    # The SFU starts the late joiner's consumers on a keyframe...
                    assert stats.first_packet_keyframe is True
                    # ...at once (PLI -> live encoder), not at the publisher's
                    # next periodic keyframe. Measured from applying the offer,
                    # so it includes ICE + DTLS of the new subscriber
                    # connection: ~0.1-0.4 s here; 1 s is the bound.
                    assert stats.first_keyframe_s is not None
                    assert stats.first_keyframe_s < 1.0


async def test_nack_and_rtx_keep_video_decoding_under_loss(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with call_server(tmp_path) as (server, info), room_for(info) as room:
            async with AsyncExitStack() as stack:
                _, ann = await join(stack, info, room, "ann")
                _, ben = await join(stack, info, room, "ben", loss=0.05, seed=1)
                await ben.wait_until(lambda p: decoding(p, 1), 60)
                await ann.wait_until(lambda p: decoding(p, 1), 60)
                # Loss on both legs: the worker drops 3% of what it forwards,
                # and ben drops 5% of what arrives.
                await worker_request(server, "debug.loss", {"rate": 0.03})
                stats0 = await worker_request(server, "worker.stats", {})
                base_ann, base_ben = frames(ann), frames(ben)
                await ann.wait_until(lambda p: decoding(p, 1, base_ann), 60)
                await ben.wait_until(lambda p: decoding(p, 1, base_ben), 60)
                await worker_request(server, "debug.loss", {"rate": 0.0})
                stats1 = await worker_request(server, "worker.stats", {})
                assert stats1["rtx_sent"] > stats0["rtx_sent"]
                assert stats1["nacks_received"] > stats0["nacks_received"]
                assert ben.dropped_datagrams > 0
                video = next(s for s in remote(ben).values() if s.kind == "video")
                assert video.lost > 0
                assert video.rtx_packets > 0


async def test_participants_come_back_by_themselves_after_a_worker_crash(tmp_path: Path) -> None:
    with trio.fail_after(150):
        async with call_server(tmp_path) as (server, info), room_for(info) as room:
            assert server.ctx is not None
            assert server.ctx.media is not None
            async with AsyncExitStack() as stack:
                peers = [(await join(stack, info, room, u))[1] for u in ("ann", "ben", "cat")]
                for peer in peers:
                    await peer.wait_until(lambda p: decoding(p, 2), 60)
                pid = server.ctx.media.pid(0)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                for peer in peers:
                    await peer.wait_until(lambda p: p.rebuilds >= 1, 60)
                # Decoding again: new subscriptions, and fresh frames on each.
                for peer in peers:
                    await peer.wait_until(
                        lambda p: (
                            len(remote(p)) == 4
                            and all(
                                s.subscriptions >= 2
                                and s.first_frame_s is not None
                                and s.frames
                                >= (VIDEO_FRAMES if s.kind == "video" else AUDIO_FRAMES)
                                for s in remote(p).values()
                            )
                        ),
                        90,
                    )
                assert server.ctx.media.pid(0) not in (None, pid)


async def test_a_websocket_drop_keeps_the_call_and_its_media(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with call_server(tmp_path) as (server, info), room_for(info) as room:
            async with AsyncExitStack() as stack:
                _, ann = await join(stack, info, room, "ann")
                ben_client, ben = await join(stack, info, room, "ben")
                for peer in (ann, ben):
                    await peer.wait_until(lambda p: decoding(p, 1), 60)
                participant = ben.participant
                assert close_user(server, "ben", 3000) == 1
                await ben.wait_until(lambda p: p.rejoins >= 1, 30)
                assert ben_client.connected
                # Same participant, media kept: nothing was republished.
                assert ben.participant == participant
                assert ben.joined is not None
                assert ben.joined.media == "kept"
                assert ben.rebuilds == 0
                base_ann, base_ben = frames(ann), frames(ben)
                await ann.wait_until(lambda p: decoding(p, 1, base_ann), 30)
                await ben.wait_until(lambda p: decoding(p, 1, base_ben), 30)
                assert set(ann.participants) == {ann.participant, participant}


async def serve_until(
    tmp_path: Path, port: int, stop: trio.Event, stopped: trio.Event, *, task_status: Any
) -> None:
    """Run a call server on ``port`` until ``stop``; set ``stopped`` once it is down."""
    try:
        async with call_server(tmp_path, port=port) as (_, info):
            task_status.started(info)
            await stop.wait()
    finally:
        stopped.set()


async def test_after_a_server_restart_participants_join_the_call_again(tmp_path: Path) -> None:
    """A restart ends the calls; the SDK participants reconnect and start it afresh."""
    port = free_port()
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            stop, stopped = trio.Event(), trio.Event()
            info = await nursery.start(serve_until, tmp_path, port, stop, stopped)
            async with AsyncExitStack() as stack:
                async with connect(info.url, token("owner")) as owner:
                    room = (await owner.create_room("call", kind="public")).id
                _, ann = await join(stack, info, room, "ann")
                _, ben = await join(stack, info, room, "ben")
                for peer in (ann, ben):
                    await peer.wait_until(lambda p: decoding(p, 1), 60)
                before = {ann.participant, ben.participant}
                # The server stops (clients are told 3000) and starts again on
                # the same data folder and port: no call exists there any more.
                stop.set()
                await stopped.wait()
                stop, stopped = trio.Event(), trio.Event()
                await nursery.start(serve_until, tmp_path, port, stop, stopped)
                for peer in (ann, ben):
                    await peer.wait_until(
                        lambda p: (
                            p.rejoins >= 1
                            and p.joined is not None
                            and p.joined.media == "new"
                            and p.participant not in before
                        ),
                        60,
                    )
                for peer, other in ((ann, ben), (ben, ann)):
                    prefix = f"{other.participant}."
                    await peer.wait_until(
                        lambda p, prefix=prefix: (
                            len(fresh := [s for t, s in remote(p).items() if t.startswith(prefix)])
                            == 2
                            and all(
                                s.first_frame_s is not None
                                and s.frames
                                >= (VIDEO_FRAMES if s.kind == "video" else AUDIO_FRAMES)
                                for s in fresh
                            )
                        ),
                        60,
                    )
                assert set(ann.participants) == {ann.participant, ben.participant}
            stop.set()


def close_user(server: Server, user: str, code: int) -> int:
    """Close every connection of ``user`` with ``code`` (the server reaching into its actors)."""
    assert server.ctx is not None
    closed = 0
    for ref in server.ctx.system.registry.by_kind("connection"):
        actor = ref._actor
        if actor is not None and actor.identity is not None and actor.identity.user_id == user:
            ref.tell(CloseConnection(code, "test drop"))
            closed += 1
    return closed
