"""End to end: call signaling over real WebSockets, real SQLite and fake media workers.

The workers are ``tether.media.testing.fake_worker`` processes (real pipes,
real process supervision, canned SDP); the clients are raw msgpack clients,
so these tests pin the ``call.*`` frames docs/protocol.md promises.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from tether.actors import call as call_module
from tether.app import Server
from tether.testing import make_config, running_server
from tether.testing.http import http_request
from tether.testing.raw import RawClient, clients, make_room, raw_client
from tether.testing.server import fake_media_pool

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n"
    "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n"
)
ANSWER = "v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"


def call_config(tmp_path: Path, **overrides: Any) -> Any:
    return make_config(tmp_path, media_workers=1, media_udp_port=0, **overrides)


def serve(tmp_path: Path, **overrides: Any) -> Any:
    return running_server(call_config(tmp_path, **overrides), media_pool_factory=fake_media_pool)


async def call_state(server: Server, room: str) -> dict[str, Any]:
    assert server.ctx is not None
    ref = server.ctx.calls.get(room)
    assert ref is not None, "no call actor"
    state: dict[str, Any] = await ref.proxy().inspect()
    return state


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll real I/O state until ``predicate()`` holds (async predicate)."""
    # The actor's state is only reachable by asking it: polled, with a deadline.
    with trio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def answer_offer(client: RawClient, room: str) -> dict[str, Any]:
    offer = await client.push("call.offer", room=room)
    assert offer["sdp"].startswith("v=0")
    await client.ok("call.answer", room=room, sdp=ANSWER)
    return offer


async def test_calls_disabled_answer_132(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a")) as [alice],
        ):
            room = await make_room(alice)
            error = await alice.fails("call.join", 132, room=room)
            assert error["temporary"] is True
            await alice.fails("call.publish", 132, room=room, sdp=OFFER)


async def test_members_only_and_unknown_rooms(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve(tmp_path) as (server, info),
            clients(info.port, ("alice", "a"), ("mallory", "m")) as [alice, mallory],
        ):
            room = await make_room(alice)
            assert server.ctx is not None
            assert server.ctx.media is not None
            await server.ctx.media.wait_ready()  # workers start in the background
            status, _, body = await http_request(info.port, "GET", "/readyz")
            assert (status, body) == (200, b"ready\nmedia workers: 1/1 live\n")
            await mallory.fails("call.join", 120, room=room)
            await mallory.fails("call.join", 121, room="no-such-room")
            # frames for a call one is not in
            await alice.fails("call.answer", 130, room=room, sdp=ANSWER)
            await alice.fails("call.publish", 130, room=room, sdp=OFFER)
            joined = await alice.ok("call.join", room=room)
            await mallory.fails("call.leave", 130, room=room)
            await mallory.fails("call.mute", 130, room=room, kind="audio", muted=True)
            # in the call but no offer is outstanding
            await alice.fails("call.answer", 100, room=room, sdp=ANSWER)
            assert joined["media"] == "new"


async def test_publish_subscribe_answer_mute_leave(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve(tmp_path) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            room = await make_room(alice, "bob")
            a = await alice.ok("call.join", room=room)
            assert a["call"] == room
            assert len(a["participant"]) == 12
            assert [p["user"] for p in a["participants"]] == ["alice"]
            assert (a["speaker"], a["ice_servers"]) == (None, [])
            b = await bob.ok("call.join", room=room)
            assert sorted(p["user"] for p in b["participants"]) == ["alice", "bob"]
            joined = await alice.push("call.participant", room=room, action="joined")
            assert joined["participant"]["id"] == b["participant"]

            published = await alice.ok("call.publish", room=room, sdp=OFFER)
            assert published["sdp"].startswith("v=0")
            audio, video = published["tracks"]
            assert audio == {
                "id": f"{a['participant']}.0",
                "participant": a["participant"],
                "kind": "audio",
                "rids": [],
                "muted": False,
            }
            assert video["rids"] == ["q", "h", "f"]
            added = [await bob.push("call.track", room=room, action="added") for _ in range(2)]
            assert sorted(t["track"]["id"] for t in added) == [audio["id"], video["id"]]
            offer = await answer_offer(bob, room)
            assert sorted(offer["mids"].values()) == [audio["id"], video["id"]]
            await alice.nothing("call.offer")  # nothing to receive yet

            await alice.ok("call.mute", room=room, kind="audio", muted=True)
            updated = await bob.push("call.participant", room=room, action="updated")
            assert updated["participant"]["audio_muted"] is True
            assert [t["muted"] for t in updated["participant"]["tracks"]] == [True, False]

            await bob.ok("call.publish", room=room, sdp=OFFER)
            await alice.push("call.track", room=room, action="added")
            await answer_offer(alice, room)
            # trickle and quality hints are accepted silently
            await bob.send_only(
                "call.ice",
                room=room,
                pc="pub",
                candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host",
            )
            await bob.send_only("call.quality", room=room, track=video["id"], width=320, height=180)

            await alice.ok("call.leave", room=room)
            left = await bob.push("call.participant", room=room, action="left")
            assert left["participant"]["id"] == a["participant"]
            # bob's subscription shrinks: a new offer with alice's tracks gone
            offer = await answer_offer(bob, room)
            assert offer["mids"] == {}
            await alice.fails("call.publish", 130, room=room, sdp=OFFER)


async def test_bad_sdp_is_131_and_harms_no_one(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve(tmp_path) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            room = await make_room(alice, "bob")
            await alice.ok("call.join", room=room)
            await bob.ok("call.join", room=room)
            await bob.ok("call.publish", room=room, sdp=OFFER)
            await answer_offer(alice, room)
            await alice.fails("call.publish", 131, room=room, sdp="v=0\r\nno media here\r\n")
            # too large for the protocol: refused before it reaches the worker
            await alice.fails("call.publish", 100, room=room, sdp="v=0" + "x" * 70_000)
            await bob.nothing("call.track")
            # bob's call goes on: he can renegotiate and alice still gets offers
            await bob.ok("call.publish", room=room, sdp=OFFER.replace("a=mid:1", "a=mid:2"))
            assert (await alice.push("call.track", room=room, action="removed"))["track"][
                "id"
            ].endswith(".1")
            await answer_offer(alice, room)
            await alice.ok("call.publish", room=room, sdp=OFFER)
            await answer_offer(bob, room)


async def test_call_full_is_133(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve(tmp_path, call_max_participants=2) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b"), ("carol", "c")) as people,
        ):
            alice, bob, carol = people
            room = await make_room(alice, "bob", "carol")
            await alice.ok("call.join", room=room)
            await bob.ok("call.join", room=room)
            await carol.fails("call.join", 133, room=room)


async def test_rejoin_within_grace_keeps_the_media(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            serve(tmp_path) as (server, info),
            clients(info.port, ("bob", "b")) as [bob],
        ):
            async with raw_client(info.port, "alice", "a") as alice:
                room = await make_room(alice, "bob")
                session = alice.welcome["session"]
                me = (await alice.ok("call.join", room=room))["participant"]
                await bob.ok("call.join", room=room)
                await alice.ok("call.publish", room=room, sdp=OFFER)
                await answer_offer(bob, room)

                async def published() -> bool:
                    state = await call_state(server, room)
                    return any(p["pub"] == "connected" for p in state["participants"])

                await until(published)
            # alice's socket dropped; she comes back on the same session
            async with raw_client(info.port, "alice", "a", session=session) as alice:
                assert alice.welcome["resumed"] is True
                again = await alice.ok("call.join", room=room)
                assert (again["participant"], again["media"]) == (me, "kept")
                await bob.nothing("call.participant", within=0.5)
                await bob.nothing("call.track", within=0.1)
                # and the call works on: bob publishes, alice gets the offer
                await bob.ok("call.publish", room=room, sdp=OFFER)
                await answer_offer(alice, room)


async def test_no_rejoin_means_removed_after_the_grace(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            serve(tmp_path, call_rejoin_grace=0.5) as (server, info),
            clients(info.port, ("bob", "b")) as [bob],
        ):
            async with raw_client(info.port, "alice", "a") as alice:
                room = await make_room(alice, "bob")
                me = (await alice.ok("call.join", room=room))["participant"]
                await bob.ok("call.join", room=room)
            left = await bob.push("call.participant", room=room, action="left", timeout=10)
            assert left["participant"]["id"] == me
            await bob.ok("call.leave", room=room)

            async def gone() -> bool:
                assert server.ctx is not None
                return server.ctx.calls.get(room) is None

            await until(gone)  # the last one out ended the call


async def test_a_member_removed_from_the_room_leaves_the_call(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve(tmp_path) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            room = await make_room(alice, "bob")
            await alice.ok("call.join", room=room)
            b = await bob.ok("call.join", room=room)
            await alice.ok("room.remove", room=room, user="bob")
            ended = await bob.push("call.ended", room=room)
            assert ended["reason"]
            left = await alice.push("call.participant", room=room, action="left")
            assert left["participant"]["id"] == b["participant"]


async def test_worker_crash_restarts_the_call(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            serve(tmp_path) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            room = await make_room(alice, "bob")
            await alice.ok("call.join", room=room)
            await bob.ok("call.join", room=room)
            await alice.ok("call.publish", room=room, sdp=OFFER)
            await answer_offer(bob, room)
            assert server.ctx is not None
            assert server.ctx.media is not None
            pid = server.ctx.media.pid(0)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            for client in (alice, bob):
                restart = await client.push("call.restart", room=room, timeout=20)
                assert restart["reason"]
            # everyone publishes again; the call continues on the new worker
            await alice.ok("call.publish", room=room, sdp=OFFER)
            await bob.push("call.track", room=room, action="added")
            await answer_offer(bob, room)
            assert server.ctx.media.pid(0) not in (None, pid)


async def test_an_unanswered_offer_restarts_that_participant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(call_module, "OFFER_TIMEOUT_S", 0.5)
    with trio.fail_after(30):
        async with (
            serve(tmp_path) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            room = await make_room(alice, "bob")
            await alice.ok("call.join", room=room)
            await bob.ok("call.join", room=room)
            await alice.ok("call.publish", room=room, sdp=OFFER)
            await bob.push("call.offer", room=room)  # and bob never answers
            restart = await bob.push("call.restart", room=room)
            assert "offer" in restart["reason"]
            # bob's media was dropped: he gets a fresh offer, alice is unaffected
            await answer_offer(bob, room)
            await alice.nothing("call.restart")


async def test_speaker_events_reach_everyone(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve(tmp_path) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            room = await make_room(alice, "bob")
            me = (await alice.ok("call.join", room=room))["participant"]
            await bob.ok("call.join", room=room)
            router = (await call_state(server, room))["router"]
            assert server.ctx is not None
            assert server.ctx.media is not None
            event = {"router": router, "participant": me}
            await server.ctx.media.request(0, "fake.event", {"ev": "speaker", "p": event})
            for client in (alice, bob):
                assert (await client.push("call.speaker", room=room))["participant"] == me
            again = await bob.ok("call.join", room=room)  # a rejoin says who speaks
            assert again["speaker"] == me


async def test_rejoin_without_live_transports_is_new(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            serve(tmp_path) as (_, info),
            clients(info.port, ("bob", "b")) as [bob],
        ):
            async with raw_client(info.port, "alice", "a") as alice:
                room = await make_room(alice, "bob")
                session = alice.welcome["session"]
                me = (await alice.ok("call.join", room=room))["participant"]
                await bob.ok("call.join", room=room)
                await bob.ok("call.publish", room=room, sdp=OFFER)
                await alice.push("call.offer", room=room)  # dropped before answering
            async with raw_client(info.port, "alice", "a", session=session) as alice:
                again = await alice.ok("call.join", room=room)
                assert (again["participant"], again["media"]) == (me, "new")
                # a fresh subscriber offer for bob's tracks, on the new socket
                offer = await answer_offer(alice, room)
                assert len(offer["mids"]) == 2
                await bob.nothing("call.participant", within=0.3)
