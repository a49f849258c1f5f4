"""End to end: session resume and replay over real WebSockets and real SQLite.

A client that reconnects with ``hello.session`` and ``hello.resume`` gets
exactly the messages it missed, then ``recovered``, then live traffic: no gap
and no duplicate at the seam (docs/protocol.md, "Resuming after a reconnect").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from tether.bench.wsclient import LeanConnection
from tether.testing import make_config, running_server, token
from tether.testing.raw import clients, make_room, msgs_until_recovered, raw_client


async def test_resume_replays_what_was_missed_then_goes_live(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_, info):
        async with clients(info.port, ("alice", "a")) as (alice,):
            async with clients(info.port, ("bob", "b")) as (bob,):
                room = await make_room(alice, "bob")
                for i in range(3):
                    await alice.ok("msg.send", room=room, cid=f"c{i}", body=i)
                for seq in (1, 2, 3):
                    assert (await bob.push("msg"))["seq"] == seq
                session = bob.welcome["session"]
            # bob's socket dropped without a close frame; alice carries on
            for i in range(3, 6):
                await alice.ok("msg.send", room=room, cid=f"c{i}", body=i)
            async with raw_client(info.port, "bob", "b", session=session, resume={room: 3}) as bob2:
                assert bob2.welcome["session"] == session
                assert bob2.welcome["resumed"] is True
                seqs, recovered = await msgs_until_recovered(bob2, room)
                assert seqs == [4, 5, 6]
                assert recovered == {
                    "t": "recovered",
                    "room": room,
                    "complete": True,
                    "replayed": 3,
                    "head": 6,
                }
                await alice.ok("msg.send", room=room, cid="c6", body=6)
                assert (await bob2.push("msg"))["seq"] == 7
                await bob2.nothing("msg")


async def test_up_to_date_room_answers_recovered_with_nothing_replayed(tmp_path: Path) -> None:
    async with (
        running_server(make_config(tmp_path)) as (_, info),
        clients(info.port, ("alice", "a"), ("bob", "old")) as (alice, _),
    ):
        room = await make_room(alice, "bob")
        await alice.ok("msg.send", room=room, cid="x", body="x")
        async with raw_client(info.port, "bob", "b", session=None, resume={room: 1}) as bob:
            assert "resumed" not in bob.welcome  # no session asked: a fresh one
            seqs, recovered = await msgs_until_recovered(bob, room)
            assert (seqs, recovered["complete"], recovered["head"]) == ([], True, 1)


async def test_replay_reads_storage_after_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_server(config) as (_, info):
        async with clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob):
            room = await make_room(alice, "bob")
            # an explicit subscription: the session is kept in storage
            await bob.ok("presence.subscribe", users=["alice"])
            session = bob.welcome["session"]
            for i in range(5):
                await alice.ok("msg.send", room=room, cid=f"c{i}", body=i)
            assert (await bob.push("msg", seq=5))["seq"] == 5
        port = info.port
    config = make_config(tmp_path, port=port)
    async with (
        running_server(config) as (_, info),
        raw_client(info.port, "bob", "b", session=session, resume={room: 2}) as bob,
    ):
        assert bob.welcome["resumed"] is True  # loaded from storage
        others: list[dict[str, Any]] = []
        seqs, recovered = await msgs_until_recovered(bob, room, others)
        assert seqs == [3, 4, 5]
        assert recovered["complete"] is True
        presence = [f for f in others if f["t"] == "presence"]
        if not presence:
            presence = [await bob.push("presence", user="alice")]
        # alice was online at the restart: presumed so during the grace
        assert [(p["user"], p["status"]) for p in presence] == [("alice", "online")]


async def test_a_large_gap_replays_the_newest_and_says_so(tmp_path: Path) -> None:
    config = make_config(tmp_path, resume_max_replay=5, resume_buffer_messages=0)
    async with (
        running_server(config) as (_, info),
        clients(info.port, ("alice", "a"), ("bob", "old")) as (alice, _),
    ):
        room = await make_room(alice, "bob")
        for i in range(20):
            await alice.ok("msg.send", room=room, cid=f"c{i}", body=i)
        async with raw_client(info.port, "bob", "b", session=None, resume={room: 2}) as bob:
            seqs, recovered = await msgs_until_recovered(bob, room)
            assert seqs == [16, 17, 18, 19, 20]
            assert (recovered["complete"], recovered["first"], recovered["head"]) == (
                False,
                16,
                20,
            )
            # the client pages the rest
            page = await bob.ok("history", room=room, before=16, limit=500)
            assert [m["seq"] for m in page["messages"]] == list(range(1, 16))


async def test_rooms_that_cannot_be_resumed_say_why(tmp_path: Path) -> None:
    async with (
        running_server(make_config(tmp_path)) as (_, info),
        clients(info.port, ("alice", "a"), ("carol", "c")) as (alice, _carol),
    ):
        room = await make_room(alice)  # carol is not a member
        async with raw_client(
            info.port, "carol", "c", session=None, resume={room: 0, "no-such-room": 0}
        ) as carol:
            codes = {}
            with trio.fail_after(10):
                while len(codes) < 2:
                    frame = await carol.push("recovered")
                    codes[frame["room"]] = (frame["code"], frame["head"], frame["complete"])
            assert codes == {room: (120, 0, False), "no-such-room": (121, 0, False)}


async def test_resuming_a_live_session_closes_the_stale_connection(tmp_path: Path) -> None:
    # At the per-user limit: the stale connection does not count against the resume.
    async with (
        running_server(make_config(tmp_path, max_connections_per_user=1)) as (_, info),
        clients(info.port, ("bob", "b")) as (stale,),
    ):
        session = stale.welcome["session"]
        async with raw_client(info.port, "bob", "b", session=session, resume={}) as fresh:
            assert fresh.welcome["resumed"] is True
            with trio.fail_after(5):
                await stale.closed.wait()
            assert stale.conn.close_code == 3507


async def test_someone_elses_session_is_not_resumed(tmp_path: Path) -> None:
    async with (
        running_server(make_config(tmp_path)) as (_, info),
        clients(info.port, ("alice", "a")) as (alice,),
    ):
        session = alice.welcome["session"]
        async with raw_client(info.port, "mallory", "m", session=session, resume={}) as mallory:
            assert "resumed" not in mallory.welcome
            assert mallory.welcome["session"] != session
        assert alice.conn.close_code is None


async def test_no_gap_and_no_duplicate_while_resuming_under_traffic(tmp_path: Path) -> None:
    """Bob drops and resumes over and over while alice keeps sending.

    A tiny in-memory buffer makes most resumes read storage while live pushes
    arrive: the seam must still be exact.
    """
    config = make_config(tmp_path, resume_buffer_messages=4)
    total = 150
    async with (
        running_server(config) as (_, info),
        clients(info.port, ("alice", "a"), ("bob", "old")) as (alice, _),
    ):
        room = await make_room(alice, "bob")

        async def sender() -> None:
            for i in range(total):
                await alice.ok("msg.send", room=room, cid=f"c{i}", body=i)

        received: list[int] = []
        session: str | None = None
        resumes = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            with trio.fail_after(60):
                while not received or received[-1] < total:
                    position = received[-1] if received else 0
                    async with raw_client(
                        info.port, "bob", "b", session=session, resume={room: position}
                    ) as bob:
                        session = bob.welcome["session"]
                        seqs, recovered = await msgs_until_recovered(bob, room)
                        assert recovered["complete"] is True, recovered
                        received.extend(seqs)
                        # then live for a few messages, and drop abruptly
                        resumes += 1
                        for _ in range(3):
                            if received[-1:] == [total]:
                                break
                            frame = await bob.push("msg")
                            received.append(frame["seq"])
        assert received == list(range(1, total + 1))
        assert resumes >= 5


async def test_presence_does_not_flap_across_a_restart(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    """Users online before a restart stay online for watchers while they come back.

    Alice comes back in time: bob, who watches her, sees no offline/online pair.
    Carol never comes back: bob sees her go offline once the grace is over,
    with last_seen at the restart.
    """
    config = make_config(tmp_path)
    with trio.fail_after(300):
        async with running_server(config) as (_, info):
            async with clients(info.port, ("alice", "a"), ("bob", "b"), ("carol", "c")) as (
                alice,
                bob,
                _carol,
            ):
                await make_room(alice, "bob", "carol")
                await bob.ok("presence.subscribe", users=["alice", "carol"])
                session = bob.welcome["session"]
            port = info.port
        async with running_server(make_config(tmp_path, port=port)) as (server, info):
            assert server.ctx is not None
            restarted_ms = server.ctx.started_at_ms
            async with raw_client(info.port, "bob", "b", session=session, resume={}) as bob2:
                assert bob2.welcome["resumed"] is True
                seen = {}
                while len(seen) < 2:
                    frame = await bob2.push("presence")
                    seen[frame["user"]] = frame["status"]
                assert seen == {"alice": "online", "carol": "online"}
                async with clients(info.port, ("alice", "a")):
                    await bob2.nothing("presence", within=1.0)
                    # carol's grace ends: one offline event, for her only
                    frame = await bob2.push("presence", timeout=config.offline_grace + 30)
                    assert (frame["user"], frame["status"]) == ("carol", "offline")
                    assert frame["last_seen"] == restarted_ms
                    await bob2.nothing("presence", within=1.0)


async def test_every_session_survives_a_restart(tmp_path: Path) -> None:
    """Even without subscriptions: the server-made device id comes back too."""
    async with running_server(make_config(tmp_path)) as (_, info):
        conn = await LeanConnection.open("127.0.0.1", info.port, "dave")
        welcome = await conn.hello(token("dave"))  # no device: the server makes one
        conn.close()
        port = info.port
    async with (
        running_server(make_config(tmp_path, port=port)) as (_, info),
        raw_client(info.port, "dave", "", session=str(welcome["session"]), resume={}) as dave,
    ):
        assert dave.welcome["resumed"] is True
        assert dave.welcome["device"] == welcome["device"]
