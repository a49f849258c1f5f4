"""Fault injection driven by timers: silent clients and reconnects around the grace period.

Real server, real WebSockets, real SQLite, under ``lazy_clock``: virtual time
jumps only once real I/O went idle, so heartbeat timeouts and grace periods
pass in no wall time.

Already covered elsewhere, and not repeated here:

* a reconnect (same device) inside the grace period flaps nothing:
  ``tests/integration/test_server_presence.py::test_multi_device_presence_and_grace``;
* a half-open connection goes offline after heartbeat timeout + grace, seen by a
  watcher: ``test_server_presence.py::test_vanished_client_detected_by_heartbeat``;
* typing expires after ``typing_timeout`` and is cleared by a message:
  ``tests/integration/test_server_rooms.py::test_typing_expires_and_clears_on_send``;
* typing is cleared when the typist's connection drops:
  ``test_server_rooms.py::test_typing_cleared_when_connection_drops``.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing

from tether.bench.wsclient import LeanConnection
from tether.testing import make_config, running_server, token
from tether.testing.raw import clients, make_room, msgs_until_recovered, raw_client

# make_config's timings
HEARTBEAT = 10.0
TIMEOUT = 25.0
GRACE = 30.0


async def test_silent_connection_is_closed_3002_then_offline_after_the_grace(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    """A client that reads but never answers: pinged, closed with 3002, offline a grace later."""
    config = make_config(tmp_path, presence_visibility="all")
    with trio.fail_after(600):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("carol", "c")) as (carol,),
        ):
            [before] = (await carol.ok("presence.subscribe", users=["sid"]))["users"]
            assert before["status"] == "offline"
            conn = await LeanConnection.open("127.0.0.1", info.port, "sid")
            try:
                hello_sent = trio.current_time()  # the hello is sid's last frame
                await conn.hello(token("sid"), device="d")
                welcomed = trio.current_time()
                assert (await carol.push("presence", user="sid"))["status"] == "online"
                pings = 0
                with trio.fail_after(300):
                    while conn.close_code is None and await conn.recv_some():
                        for payload in conn.feed():
                            pings += msgpack.unpackb(payload)["t"] == "ping"
                closed = trio.current_time()
            finally:
                conn.close()
            assert conn.close_code == 3002
            assert pings >= 2  # it was asked, twice at least, and never answered
            # checked at each heartbeat: closed on the first one past the timeout
            assert closed - hello_sent >= TIMEOUT
            assert closed - welcomed <= TIMEOUT + HEARTBEAT + 2.0
            offline = await carol.push("presence", user="sid", timeout=300)
            assert (offline["status"], offline["devices"]) == ("offline", 0)
            assert GRACE - 1.0 <= trio.current_time() - closed <= GRACE + 2.0


@pytest.mark.parametrize("device", ["phone", None])
async def test_resume_inside_the_grace_keeps_presence(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None, device: str | None
) -> None:
    """Drop, stay away half the grace, resume: replay exact, and watchers see nothing at all.

    Without a ``device`` in hello, the resumed session keeps the device id the
    server made up for the first connection.
    """
    with trio.fail_after(600):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("carol", "c")) as (alice, carol),
        ):
            async with raw_client(info.port, "bob", device) as bob:
                room = await make_room(alice, "bob", "carol")
                update = await carol.push("presence", user="bob")
                assert (update["status"], update["devices"]) == ("online", 1)
                await alice.ok("msg.send", room=room, cid="m1", body=1)
                assert (await bob.push("msg"))["seq"] == 1
                session, first_device = bob.welcome["session"], bob.welcome["device"]
            await trio.sleep(GRACE / 2)
            for i in (2, 3):
                await alice.ok("msg.send", room=room, cid=f"m{i}", body=i)
            async with raw_client(
                info.port, "bob", device, session=session, resume={room: 1}
            ) as bob:
                assert bob.welcome["resumed"] is True
                assert bob.welcome["device"] == first_device
                seqs, recovered = await msgs_until_recovered(bob, room)
                assert (seqs, recovered["complete"]) == ([2, 3], True)
                await carol.nothing("presence", within=GRACE)  # past the first grace
                [snapshot] = (await carol.ok("presence.subscribe", users=["bob"]))["users"]
                assert (snapshot["status"], snapshot["devices"]) == ("online", 1)


async def test_typing_from_another_device_survives_a_drop(tmp_path: Path) -> None:
    """docs/protocol.md, Typing: listed until typing false, expiry, a message, or offline.

    Bob typed on his phone and stopped; now he types on his laptop. The phone
    drops: bob is still online and still typing, so nothing may change.
    """
    config = make_config(tmp_path, typing_timeout=3600.0)
    with trio.fail_after(30):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "laptop")) as (alice, laptop),
        ):
            async with raw_client(info.port, "bob", "phone") as phone:
                room = await make_room(alice, "bob")
                assert (await alice.push("presence", user="bob"))["devices"] == 2
                await phone.send_only("typing", room=room, typing=True)
                assert (await alice.push("typing"))["users"] == ["bob"]
                await phone.send_only("typing", room=room, typing=False)
                assert (await alice.push("typing"))["users"] == []
                await laptop.send_only("typing", room=room, typing=True)
                assert (await alice.push("typing"))["users"] == ["bob"]
            # the phone is gone: its stop reached the room before bob's user
            # actor, and the laptop's request reaches the room after that
            changes = []
            with trio.fail_after(10):
                while (frame := await alice.pushes.receive())["t"] != "presence":
                    if frame["t"] == "typing":
                        changes.append(frame["users"])
            assert (frame["user"], frame["devices"]) == ("bob", 1)
            await laptop.ok("room.members", room=room)
            # whatever the room pushed alice before that reply, she has before hers
            await alice.ok("room.members", room=room)
            while True:
                try:
                    frame = alice.pushes.receive_nowait()
                except trio.WouldBlock:
                    break
                if frame["t"] == "typing":
                    changes.append(frame["users"])
            assert changes == []
