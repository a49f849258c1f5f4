"""The media worker as a real process, driven over its pipe, with real aiortc peers.

The aiortc side runs in ``asyncio.run`` inside sync test functions (the suite
runs under pytest-trio). The worker announces 127.0.0.1; the test peers gather
on loopback through ``loopback_candidates`` (aioice skips 127.0.0.1 otherwise).
Waiting on real media polls a condition with a deadline; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tether.media.testing.loopback import loopback_candidates
from tether.media.testing.peers import PublisherPeer, SubscriberPeer
from tether.media.testing.worker_client import WorkerCallError, WorkerClient

pytestmark = pytest.mark.slow

WORKER_ARGS = ("--port", "0", "--announce", "127.0.0.1")
ROUTER = "call1"


async def poll(condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """Wait until ``condition()`` is true, checking every 50 ms; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def publish(worker: WorkerClient, pid: str, peer: PublisherPeer) -> list[dict[str, Any]]:
    result = await worker.call(
        "publish", {"router": ROUTER, "participant": pid, "sdp": await peer.offer()}
    )
    await peer.accept(result["sdp"])
    tracks: list[dict[str, Any]] = result["tracks"]
    return tracks


async def subscribe(
    worker: WorkerClient, pid: str, peer: SubscriberPeer, track_ids: list[str]
) -> dict[str, str]:
    result = await worker.call(
        "subscribe", {"router": ROUTER, "participant": pid, "tracks": track_ids}
    )
    assert result["sdp"] is not None
    answer = await peer.answer(result["sdp"])
    await worker.call("answer", {"router": ROUTER, "participant": pid, "sdp": answer})
    mids: dict[str, str] = result["mids"]
    return mids


def connected(worker: WorkerClient, pid: str, pc: str) -> Callable[[], bool]:
    return lambda: any(
        e["ev"] == "transport"
        and e["p"]["participant"] == pid
        and e["p"]["pc"] == pc
        and e["p"]["state"] == "connected"
        for e in worker.events
    )


def test_two_publishers_decode_each_other_and_speaker() -> None:
    async def scenario() -> None:
        async with WorkerClient.spawn(*WORKER_ARGS) as worker:
            info = await worker.call("worker.info", {})
            assert info["addresses"] == ["127.0.0.1"]
            assert info["port"] > 0
            await worker.call("router.open", {"router": ROUTER})
            await worker.call("router.open", {"router": ROUTER})  # idempotent
            loud = PublisherPeer(amplitude=0.5)
            quiet = PublisherPeer(amplitude=0.0)
            sub_a, sub_b = SubscriberPeer(), SubscriberPeer()
            try:
                tracks_a = await publish(worker, "aaaaaaaaaaaa", loud)
                tracks_b = await publish(worker, "bbbbbbbbbbbb", quiet)
                assert sorted(t["kind"] for t in tracks_a) == ["audio", "video"]
                assert all(t["id"].startswith("aaaaaaaaaaaa.") for t in tracks_a)
                ids_a = [t["id"] for t in tracks_a]
                ids_b = [t["id"] for t in tracks_b]
                mids = await subscribe(worker, "aaaaaaaaaaaa", sub_a, ids_b)
                assert sorted(mids.values()) == sorted(ids_b)
                await subscribe(worker, "bbbbbbbbbbbb", sub_b, ids_a)
                # the same set again: nothing to renegotiate
                same = await worker.call(
                    "subscribe", {"router": ROUTER, "participant": "bbbbbbbbbbbb", "tracks": ids_a}
                )
                assert same["sdp"] is None
                assert sorted(same["mids"].values()) == sorted(ids_a)

                def decoded(peer: SubscriberPeer, ids: list[str], n: int) -> Callable[[], bool]:
                    return lambda: all(peer.frames[i] >= n for i in ids)

                await poll(decoded(sub_a, ids_b, 30), 30, "A decoding B's audio and video")
                await poll(decoded(sub_b, ids_a, 30), 30, "B decoding A's audio and video")
                video_a = next(t["id"] for t in tracks_a if t["kind"] == "video")
                assert sub_b.sizes[video_a] == (160, 120)

                speaker = await worker.wait_event(
                    lambda e: e["ev"] == "speaker" and e["p"]["participant"] is not None, 10
                )
                assert speaker["p"] == {"router": ROUTER, "participant": "aaaaaaaaaaaa"}

                stats = await worker.call("router.stats", {"router": ROUTER})
                a = stats["participants"]["aaaaaaaaaaaa"]
                assert a["pub_state"] == "connected"
                assert a["sub_state"] == "connected"
                assert {p["track"] for p in a["publish"]} == set(ids_a)
                assert {s["track"] for s in a["subscribe"]} == set(ids_b)
                ws = await worker.call("worker.stats", {})
                assert ws["routers"] == 1
                assert ws["transports"] == 4
                assert ws["tx_packets"] > 100
                assert ws["rx_packets"] > 100
                assert ws["hook_errors"] == 0

                # a bad offer is rejected and the call keeps flowing
                with pytest.raises(WorkerCallError) as err:
                    await worker.call(
                        "publish",
                        {"router": ROUTER, "participant": "cccccccccccc", "sdp": "v=0\r\nm=x"},
                    )
                assert err.value.code == "bad_sdp"
                before = sub_a.frames[ids_b[0]]
                await poll(lambda: sub_a.frames[ids_b[0]] > before + 10, 10, "media after bad SDP")

                # pause stops forwarding the track
                await worker.call("pause", {"router": ROUTER, "track": video_a, "paused": True})
                await poll(
                    lambda: _consumer_bitrate(worker, "bbbbbbbbbbbb", video_a, 0),
                    5,
                    "paused track to stop",
                )

                await worker.call("drop", {"router": ROUTER, "participant": "aaaaaaaaaaaa"})
                await worker.call("drop", {"router": ROUTER, "participant": "aaaaaaaaaaaa"})
                await worker.wait_event(
                    lambda e: (
                        e["ev"] == "transport"
                        and e["p"]["participant"] == "aaaaaaaaaaaa"
                        and e["p"]["state"] == "closed"
                    )
                )
                await worker.call("router.close", {"router": ROUTER})
                await worker.call("router.close", {"router": ROUTER})
                assert (await worker.call("worker.stats", {}))["routers"] == 0
            finally:
                for peer in (loud, quiet, sub_a, sub_b):
                    await peer.close()
            assert await worker.close() == 0

    with loopback_candidates():
        asyncio.run(scenario())


async def _consumer_bitrate_async(
    worker: WorkerClient, pid: str, track: str, expected: int
) -> bool:
    stats = await worker.call("router.stats", {"router": ROUTER})
    for s in stats["participants"][pid]["subscribe"]:
        if s["track"] == track:
            return bool(s["bitrate_bps"] == expected)
    return False


def _consumer_bitrate(worker: WorkerClient, pid: str, track: str, expected: int) -> Awaitable[bool]:
    return _consumer_bitrate_async(worker, pid, track, expected)


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
def test_late_subscriber_gets_keyframe_quickly(codec: str) -> None:
    async def scenario() -> None:
        async with WorkerClient.spawn(*WORKER_ARGS) as worker:
            await worker.call("router.open", {"router": ROUTER})
            pub = PublisherPeer(audio=False, video_codec=codec)
            early, late = SubscriberPeer(), SubscriberPeer()
            try:
                (track,) = await publish(worker, "aaaaaaaaaaaa", pub)
                assert codec.split("/")[1] in pub.pc.remoteDescription.sdp
                await subscribe(worker, "bbbbbbbbbbbb", early, [track["id"]])
                await poll(lambda: early.frames[track["id"]] >= 60, 30, "early subscriber")
                # aiortc's encoder sends no periodic keyframes: the late one needs our PLI
                await subscribe(worker, "cccccccccccc", late, [track["id"]])
                await poll(connected(worker, "cccccccccccc", "sub"), 15, "late sub connected")
                t0 = time.monotonic()
                await poll(lambda: late.frames[track["id"]] >= 1, 5, "late first frame")
                assert late.first_frame_at[track["id"]] - t0 < 1.0
                assert (await worker.call("worker.stats", {}))["plis_sent"] >= 1
            finally:
                for peer in (pub, early, late):
                    await peer.close()

    with loopback_candidates():
        asyncio.run(scenario())


def test_loss_is_repaired_with_rtx() -> None:
    async def scenario() -> None:
        async with WorkerClient.spawn(*WORKER_ARGS) as worker:
            await worker.call("router.open", {"router": ROUTER})
            pub = PublisherPeer(audio=False)
            sub = SubscriberPeer()
            try:
                (track,) = await publish(worker, "aaaaaaaaaaaa", pub)
                await worker.call("debug.loss", {"rate": 0.03})
                await subscribe(worker, "bbbbbbbbbbbb", sub, [track["id"]])
                await poll(lambda: sub.frames[track["id"]] >= 1, 20, "first frame")
                start = sub.frames[track["id"]]
                t0 = time.monotonic()
                await poll(lambda: sub.frames[track["id"]] >= start + 90, 20, "90 frames")
                # 30 fps nominal: repaired loss keeps the rate well above half
                assert time.monotonic() - t0 < 6.0
                # 3% of a small stream may lose nothing for a while: keep
                # the loss on until a repair happened (bounded).
                deadline = time.monotonic() + 20
                stats = await worker.call("worker.stats", {})
                while stats["rtx_sent"] == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    stats = await worker.call("worker.stats", {})
                assert stats["rtx_sent"] > 0
                assert stats["nacks_received"] > 0
                await worker.call("debug.loss", {"rate": 0})
                with pytest.raises(WorkerCallError) as err:
                    await worker.call("debug.loss", {"rate": 2})
                assert err.value.code == "bad_request"
            finally:
                await pub.close()
                await sub.close()

    with loopback_candidates():
        asyncio.run(scenario())


def test_rpc_errors_and_worker_keeps_serving() -> None:
    async def scenario() -> None:
        async with WorkerClient.spawn(*WORKER_ARGS) as worker:

            async def code_of(method: str, params: dict[str, Any]) -> str:
                with pytest.raises(WorkerCallError) as err:
                    await worker.call(method, params)
                return err.value.code

            assert await code_of("nope", {}) == "bad_request"
            assert await code_of("router.open", {}) == "bad_request"
            assert await code_of("publish", {"router": "x", "participant": "p", "sdp": "v=0"}) == (
                "not_found"
            )
            await worker.call("router.open", {"router": ROUTER})
            base = {"router": ROUTER, "participant": "aaaaaaaaaaaa"}
            assert await code_of("publish", {**base, "sdp": "garbage"}) == "bad_sdp"
            pcmu_only = (
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
                "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
                "a=sendonly\r\na=rtpmap:0 PCMU/8000\r\n"
            )
            assert await code_of("publish", {**base, "sdp": pcmu_only}) == "bad_sdp"
            assert await code_of("subscribe", {**base, "tracks": ["zz.0"]}) == "not_found"
            assert await code_of("subscribe", {**base, "tracks": "x"}) == "bad_request"
            assert await code_of("answer", {**base, "sdp": "v=0"}) == "not_found"
            assert await code_of("pause", {"router": ROUTER, "track": "a.0", "paused": True}) == (
                "not_found"
            )
            assert await code_of("candidate", {**base, "pc": "x"}) == "bad_request"
            await worker.call("drop", base)  # unknown participant: idempotent
            info = await worker.call("worker.info", {})
            assert info["versions"] == {"aiortc": "1.16.0", "aioice": "0.13.0"}
            assert (await worker.call("worker.stats", {}))["hook_errors"] == 0

    asyncio.run(scenario())


def test_trickled_candidates_and_subscriber_renegotiation() -> None:
    async def scenario() -> None:
        async with WorkerClient.spawn(*WORKER_ARGS) as worker:
            await worker.call("router.open", {"router": ROUTER})
            pub = PublisherPeer()
            sub = SubscriberPeer()
            try:
                offer = await pub.offer()
                lines = offer.split("\r\n")
                candidates = [x[2:] for x in lines if x.startswith("a=candidate:")]
                assert candidates
                # a trickling client: no candidates and no end-of-candidates in the offer
                stripped = "\r\n".join(
                    x for x in lines if not x.startswith(("a=candidate:", "a=end-of-candidates"))
                )
                result = await worker.call(
                    "publish", {"router": ROUTER, "participant": "aaaaaaaaaaaa", "sdp": stripped}
                )
                await pub.accept(result["sdp"])
                base = {"router": ROUTER, "participant": "aaaaaaaaaaaa", "pc": "pub"}
                with pytest.raises(WorkerCallError) as err:
                    await worker.call(
                        "candidate",
                        {**base, "candidate": "candidate:bogus", "sdp_mid": "0"},
                    )
                assert err.value.code == "bad_request"
                for c in candidates:
                    await worker.call(
                        "candidate", {**base, "candidate": c, "sdp_mid": "0", "sdp_mline_index": 0}
                    )
                await worker.call(
                    "candidate",
                    {**base, "candidate": None, "sdp_mid": None, "sdp_mline_index": None},
                )
                await poll(connected(worker, "aaaaaaaaaaaa", "pub"), 15, "trickled pub connected")
                ids = {t["kind"]: t["id"] for t in result["tracks"]}

                mids = await subscribe(worker, "bbbbbbbbbbbb", sub, [ids["audio"], ids["video"]])
                assert len(mids) == 2
                await poll(lambda: sub.frames[ids["video"]] >= 20, 20, "video frames")
                # drop the audio track: its m-line goes inactive, video keeps flowing
                only_video = await worker.call(
                    "subscribe",
                    {"router": ROUTER, "participant": "bbbbbbbbbbbb", "tracks": [ids["video"]]},
                )
                assert list(only_video["mids"].values()) == [ids["video"]]
                assert "a=inactive" in only_video["sdp"]
                answer = await sub.answer(only_video["sdp"])
                await worker.call(
                    "answer", {"router": ROUTER, "participant": "bbbbbbbbbbbb", "sdp": answer}
                )
                seen = sub.frames[ids["video"]]
                await poll(lambda: sub.frames[ids["video"]] >= seen + 20, 10, "video after removal")
                # and back: a new transceiver for audio, which decodes again
                again = await worker.call(
                    "subscribe",
                    {
                        "router": ROUTER,
                        "participant": "bbbbbbbbbbbb",
                        "tracks": [ids["video"], ids["audio"]],
                    },
                )
                assert sorted(again["mids"].values()) == sorted(ids.values())
                answer = await sub.answer(again["sdp"])
                await worker.call(
                    "answer", {"router": ROUTER, "participant": "bbbbbbbbbbbb", "sdp": answer}
                )
                await poll(
                    lambda: _consumer_bitrate_positive(worker, "bbbbbbbbbbbb", ids["audio"]),
                    10,
                    "audio forwarded again",
                )
                stats = await worker.call("router.stats", {"router": ROUTER})
                remb = stats["participants"]["bbbbbbbbbbbb"]["remb_bps"]
                assert remb is None or remb > 0
                assert (await worker.call("worker.stats", {}))["hook_errors"] == 0
            finally:
                await pub.close()
                await sub.close()

    with loopback_candidates():
        asyncio.run(scenario())


async def _consumer_bitrate_positive(worker: WorkerClient, pid: str, track: str) -> bool:
    stats = await worker.call("router.stats", {"router": ROUTER})
    return any(
        s["track"] == track and s["bitrate_bps"] > 0
        for s in stats["participants"][pid]["subscribe"]
    )


def test_pipe_protocol_error_ends_the_worker() -> None:
    async def scenario() -> None:
        async with WorkerClient.spawn(*WORKER_ARGS) as worker:
            assert (await worker.call("worker.info", {}))["port"] > 0
            assert worker.process.stdin is not None
            worker.process.stdin.write(b"\xff\xff\xff\xff")  # announced frame > 4 MiB
            await worker.process.stdin.drain()
            assert await asyncio.wait_for(worker.process.wait(), 10) == 2

    asyncio.run(scenario())
