"""The SDK's call signaling (``call.*``) against the scripted fake server.

Real WebSocket I/O to ``tether.testing.fake`` (no server code), so these pin
the SDK to the call frames of docs/protocol.md / notes CALLS_SPEC: the
request frames each method sends, the typed results and events it decodes,
and :meth:`Client.watch_call` routing a room's call pushes apart from
``events()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

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
    ConnectionClosed,
    IceServer,
    MalformedReply,
    PublishResult,
    Reconnected,
    RequestError,
    TypingEvent,
    connect,
)
from tether.testing.fake import Fail, FakeServer, fake_server

R = "room-1"
P = "3fa2c1d09e7b"
TRACK = {"id": f"{P}.0", "participant": P, "kind": "video", "rids": [], "muted": False}
PARTICIPANT = {
    "id": P,
    "user": "bob",
    "device": "phone",
    "tracks": [TRACK],
    "audio_muted": True,
    "video_muted": False,
}
TYPED_TRACK = CallTrack(f"{P}.0", P, "video", (), False)
TYPED_PARTICIPANT = CallParticipant(P, "bob", "phone", (TYPED_TRACK,), True, False)


@asynccontextmanager
async def session(user: str = "alice") -> AsyncIterator[tuple[FakeServer, Client]]:
    async with (
        fake_server() as (server, url),
        connect(url, f"dev:{user}", device="laptop", reconnect=False) as client,
    ):
        yield server, client


def without_ref(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k != "ref"}


REQUESTS: list[Any] = [
    pytest.param(
        lambda c: c.join_call(R),
        {"t": "call.join", "room": R},
        {
            "call": R,
            "participant": "aaaaaaaaaaaa",
            "media": "new",
            "participants": [PARTICIPANT],
            "speaker": None,
            "ice_servers": [{"urls": ["stun:example.org:3478"]}],
        },
        CallJoined(
            R,
            "aaaaaaaaaaaa",
            "new",
            (TYPED_PARTICIPANT,),
            None,
            (IceServer(("stun:example.org:3478",)),),
        ),
        id="join",
    ),
    pytest.param(lambda c: c.leave_call(R), {"t": "call.leave", "room": R}, {}, None, id="leave"),
    pytest.param(
        lambda c: c.publish(R, "v=0 offer"),
        {"t": "call.publish", "room": R, "sdp": "v=0 offer"},
        {"sdp": "v=0 answer", "tracks": [TRACK]},
        PublishResult("v=0 answer", (TYPED_TRACK,)),
        id="publish",
    ),
    pytest.param(
        lambda c: c.answer_offer(R, "v=0 answer"),
        {"t": "call.answer", "room": R, "sdp": "v=0 answer"},
        {},
        None,
        id="answer",
    ),
    pytest.param(
        lambda c: c.mute(R, "audio", True),
        {"t": "call.mute", "room": R, "kind": "audio", "muted": True},
        {},
        None,
        id="mute",
    ),
    pytest.param(
        lambda c: c.restart_call(R), {"t": "call.restart", "room": R}, {}, None, id="restart"
    ),
]


@pytest.mark.parametrize(("method", "expected", "data", "result"), REQUESTS)
async def test_call_requests_send_their_frame_and_decode_the_reply(
    method: Callable[[Client], Awaitable[Any]],
    expected: dict[str, Any],
    data: dict[str, Any],
    result: object,
) -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer(expected["t"], data)
            assert await method(client) == result
            [frame] = server.frames()
            assert without_ref(frame) == expected


async def test_a_join_reply_without_its_fields_is_malformed() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer("call.join", {"call": R, "participant": P, "media": "maybe"})
            with pytest.raises(MalformedReply):
                await client.join_call(R)


async def test_call_errors_are_request_errors() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer("call.publish", Fail(131, "bad sdp"))
            with pytest.raises(RequestError) as caught:
                await client.publish(R, "garbage")
            assert caught.value.code == 131


async def test_ice_and_quality_are_fire_and_forget() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            await client.send_ice(
                R,
                "pub",
                "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
                sdp_mid="0",
                sdp_mline_index=0,
            )
            await client.send_ice(R, "sub", None)
            await client.set_quality(R, f"{P}.1", 320, 180)
            frames = await server.wait_frames(3)
            assert frames == [
                {
                    "t": "call.ice",
                    "room": R,
                    "pc": "pub",
                    "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
                    "sdp_mid": "0",
                    "sdp_mline_index": 0,
                },
                {"t": "call.ice", "room": R, "pc": "sub", "candidate": None},
                {"t": "call.quality", "room": R, "track": f"{P}.1", "width": 320, "height": 180},
            ]


PUSHES = [
    (
        {"t": "call.offer", "room": R, "sdp": "v=0", "mids": {"0": f"{P}.0"}},
        CallOffer(R, "v=0", {"0": f"{P}.0"}),
    ),
    (
        {"t": "call.participant", "room": R, "action": "joined", "participant": PARTICIPANT},
        CallParticipantEvent(R, "joined", TYPED_PARTICIPANT),
    ),
    (
        {"t": "call.track", "room": R, "action": "added", "track": TRACK},
        CallTrackEvent(R, "added", TYPED_TRACK),
    ),
    ({"t": "call.speaker", "room": R, "participant": P}, CallSpeaker(R, P)),
    ({"t": "call.speaker", "room": R, "participant": None}, CallSpeaker(R, None)),
    (
        {"t": "call.restart", "room": R, "reason": "worker restarted"},
        CallRestart(R, "worker restarted"),
    ),
    ({"t": "call.ended", "room": R, "reason": "left"}, CallEnded(R, "left")),
]


async def test_call_pushes_become_typed_events() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            for frame, _ in PUSHES:
                await server.push(frame)
            for _, event in PUSHES:
                assert await client.next_event() == event


async def test_a_watched_room_gets_its_call_pushes_apart_from_events() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            async with client.watch_call(R) as watch:
                with pytest.raises(ValueError, match="already watched"):
                    async with client.watch_call(R):
                        pass
                await server.push({"t": "call.speaker", "room": "other", "participant": None})
                await server.push({"t": "call.speaker", "room": R, "participant": P})
                await server.push({"t": "typing", "room": R, "users": ["bob"]})
                assert await watch.get() == CallSpeaker(R, P)
                assert await client.next_event() == CallSpeaker("other", None)
                assert await client.next_event() == TypingEvent(R, ("bob",))
            # After the block the room's pushes go to events() again.
            await server.push({"t": "call.ended", "room": R, "reason": "x"})
            assert await client.next_event() == CallEnded(R, "x")


async def test_a_watch_ends_when_the_client_closes() -> None:
    with trio.fail_after(10):
        async with fake_server() as (server, url):
            async with connect(url, "dev:alice", reconnect=False) as client:
                async with client.watch_call(R) as watch:
                    await server.close(4000, "bye")
                    events = [event async for event in watch]
                    assert events == []
                    with pytest.raises(ConnectionClosed):
                        await client.next_event()


async def test_a_watch_gets_a_copy_of_reconnected() -> None:
    with trio.fail_after(20):
        async with fake_server() as (server, url):
            async with connect(url, "dev:alice", backoff_base=0.01, backoff_cap=0.05) as client:
                async with client.watch_call(R) as watch:
                    await server.close(1011, "restart")
                    seen: list[object] = []
                    while not any(isinstance(e, Reconnected) for e in seen):
                        seen.append(await watch.get())
                    await server.push({"t": "call.restart", "room": R, "reason": "r"})
                    assert await watch.get() == CallRestart(R, "r")
