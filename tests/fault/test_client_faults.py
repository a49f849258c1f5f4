"""Fault injection: clients that vanish mid-stream, over real WebSockets and real SQLite.

Clients drop without a close frame, stop in the middle of a WebSocket frame,
or announce a frame far larger than they send; the server must stay healthy
for everyone else, keep the dropped users online through the offline grace
period, and let them resume with exactly the messages they missed
(docs/protocol.md, "Presence" and "Resuming after a reconnect").

Grace periods run under ``lazy_clock`` (virtual time that jumps only after
real I/O went idle), so they pass in no wall time.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tether.bench.wsclient import LeanConnection, client_frame
from tether.testing import make_config, running_server, token
from tether.testing.raw import (
    RawClient,
    clients,
    make_room,
    msgs_through,
    msgs_until_recovered,
    raw_client,
)

GRACE = 30.0  # make_config's offline_grace


@asynccontextmanager
async def unread(
    port: int, user: str, device: str
) -> AsyncIterator[tuple[LeanConnection, dict[str, Any]]]:
    """A welcomed raw connection that nobody reads, and its welcome.

    It is closed on exit whatever happens, so that a failing test does not
    leave the server's teardown waiting on it.
    """
    conn = await LeanConnection.open("127.0.0.1", port, user)
    try:
        welcome = await conn.hello(token(user), device=device)
        yield conn, dict(welcome)
    finally:
        conn.close()


async def onlines(client: RawClient, users: set[str]) -> None:
    """Wait until each of ``users`` has been reported online (in any order)."""
    seen: set[str] = set()
    with trio.fail_after(10):
        while seen != users:
            frame = await client.pushes.receive()
            if frame["t"] == "presence" and frame["user"] in users:
                assert frame["status"] == "online", frame
                seen.add(frame["user"])


async def offline_at(client: RawClient, users: set[str]) -> dict[str, float]:
    """When (virtual time) each of ``users`` was announced offline; fails on any other change."""
    seen: dict[str, float] = {}
    with trio.fail_after(300):
        while set(seen) != users:
            frame = await client.pushes.receive()
            if frame["t"] != "presence" or frame["user"] not in users:
                continue
            assert (frame["status"], frame["devices"]) == ("offline", 0), frame
            assert frame["user"] not in seen, frame
            seen[frame["user"]] = trio.current_time()
    return seen


async def test_abrupt_drops_leave_the_server_healthy_and_the_dropped_client_resumes(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    """Three ways to vanish; the others carry on; offline only after the grace; exact resume.

    Carol only watches presence; alice and frank exchange messages.
    """
    with trio.fail_after(600):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("carol", "c"), ("frank", "f")) as (
                alice,
                carol,
                frank,
            ),
            unread(info.port, "dave", "d") as (dave, _),
            unread(info.port, "eve", "e") as (eve, _),
        ):
            async with raw_client(info.port, "bob", "b") as bob:
                room = await make_room(alice, "bob", "carol", "dave", "eve", "frank")
                # carol watches her room mates without asking (small room)
                await onlines(carol, {"bob", "dave", "eve"})
                for i in range(1, 4):
                    await alice.ok("msg.send", room=room, cid=f"m{i}", body=i)
                assert await msgs_through(bob, room, 3) == [1, 2, 3]
                session = bob.welcome["session"]
                dropped = trio.current_time()
            # bob's socket is gone without a close frame (the block dropped it);
            # dave stops in the middle of a frame: the header announces 100
            # bytes, 10 arrive, then the socket closes
            await dave.send_all(client_frame(bytes(100))[: 2 + 4 + 10])
            dave.close()
            # eve announces a frame of 2**40 bytes and disconnects
            await eve.send_all(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + bytes(4))
            eve.close()

            # everyone else carries on, both ways
            for i in range(4, 7):
                await alice.ok("msg.send", room=room, cid=f"m{i}", body=i)
            await frank.ok("msg.send", room=room, cid="f7", body=7)
            assert await msgs_through(frank, room, 6) == [1, 2, 3, 4, 5, 6]
            assert await msgs_through(alice, room, 7) == [7]

            # the three are announced offline only once the grace period is over
            announced = await offline_at(carol, {"bob", "dave", "eve"})
            for user, at in announced.items():
                assert GRACE <= at - dropped < GRACE + 10.0, (user, at - dropped)

            # bob comes back: exactly what he missed, once, in order, then live
            async with raw_client(info.port, "bob", "b", session=session, resume={room: 3}) as bob:
                assert bob.welcome["resumed"] is True
                seqs, recovered = await msgs_until_recovered(bob, room)
                assert seqs == [4, 5, 6, 7]
                assert (recovered["complete"], recovered["replayed"], recovered["head"]) == (
                    True,
                    4,
                    7,
                )
                update = await carol.push("presence", user="bob")
                assert (update["status"], update["devices"]) == ("online", 1)
                await alice.ok("msg.send", room=room, cid="m8", body=8)
                await frank.ok("msg.send", room=room, cid="f9", body=9)
                assert await msgs_through(bob, room, 9) == [8, 9]


async def test_half_open_connection_replaced_by_a_resume_is_invisible_to_watchers(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    """The client's network changed: its old socket is half-open when it resumes.

    Messages pushed into the dead socket are replayed on the new one, the
    stale connection is closed (3507), and watchers see no presence change,
    not even once the grace period would have ended.
    """
    # The stale socket answers no ping: a long heartbeat timeout keeps it
    # alive until the resume, however slow the set-up is in virtual time.
    config = make_config(tmp_path, heartbeat_timeout=300.0)
    with trio.fail_after(600):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("carol", "c")) as (alice, carol),
            unread(info.port, "bob", "phone") as (stale, welcome),
        ):
            room = await make_room(alice, "bob", "carol")
            assert (await carol.push("presence", user="bob"))["devices"] == 1
            # pushed into a socket nobody reads: bob holds none of them
            for i in range(1, 4):
                await alice.ok("msg.send", room=room, cid=f"m{i}", body=i)
            async with raw_client(
                info.port, "bob", "phone", session=welcome["session"], resume={room: 0}
            ) as bob:
                assert bob.welcome["resumed"] is True
                seqs, recovered = await msgs_until_recovered(bob, room)
                assert (seqs, recovered["complete"]) == ([1, 2, 3], True)
                await alice.ok("msg.send", room=room, cid="m4", body=4)
                assert await msgs_through(bob, room, 4) == [4]
                # the stale connection was told why it is closed
                with trio.fail_after(10):
                    while stale.close_code is None and await stale.recv_some():
                        stale.feed()
                assert stale.close_code == 3507
                # same user, same device, one live connection all along: no
                # presence change, not even when the grace would have ended
                await carol.nothing("presence", within=2 * GRACE)
                [snapshot] = (await carol.ok("presence.subscribe", users=["bob"]))["users"]
                assert (snapshot["status"], snapshot["devices"]) == ("online", 1)


# A server whose run() is cancelled while a client is connected (the script
# prints "cancelling" just before cancelling; run() should return soon after).
_CANCEL_SCRIPT = """
import sys
from pathlib import Path

import trio

from tether.app import Server
from tether.bench.wsclient import LeanConnection
from tether.testing import make_config, token


async def main() -> None:
    server = Server(make_config(Path(sys.argv[1])))
    async with trio.open_nursery() as nursery:
        info = await nursery.start(server.run)
        conn = await LeanConnection.open("127.0.0.1", info.port, "alice")
        await conn.hello(token("alice"), device="a")
        print("cancelling", flush=True)
        nursery.cancel_scope.cancel()
    conn.close()
    print("returned", flush=True)


trio.run(main)
"""


@pytest.mark.slow
async def test_cancelling_the_server_with_a_client_connected_returns(tmp_path: Path) -> None:
    """Cancellation aborts every connection and returns (Server.run's documented contract).

    A regression (a shielded wait for an actor that the cancelled system never
    stops) would escape every timeout in-process, so the server runs in a
    child process that is killed if it does not return in time.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _CANCEL_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(60):
            while b"cancelling" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, output
                output += chunk
        with trio.move_on_after(5):
            await process.wait()
    finally:
        process.kill()
        await process.wait()
        output += await process.stdout.receive_some()
        await process.stdout.aclose()
    assert b"returned" in output, "Server.run did not return within 5 s of being cancelled"
