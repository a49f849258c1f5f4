"""Fault injection: a client that stops reading, over real WebSockets and real SQLite.

The server never waits for a slow reader: a room's fan-out carries on for the
others, and the slow connection is closed with ``3001 SLOW_CONSUMER`` once
its outbound queue passes ``max_outbound_bytes``; it then resumes with nothing
lost and nothing twice (docs/protocol.md, "Close codes", "Limits", "Resuming
after a reconnect"). Ephemeral state (typing, presence) never makes a
connection a slow consumer: a backed-up reader gets the latest value instead
of every change.

The slow client asks for a small receive buffer, but the kernel still
absorbs megabytes on loopback (the server's send buffer grows by itself), so
the tests push until the server has had to queue, whatever the kernel took.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import trio

from tether.bench.wsclient import SUBPROTOCOL, LeanConnection, encode
from tether.testing import make_config, running_server, token
from tether.testing.raw import RawClient, clients, make_room, msgs_through, raw_client

RCVBUF = 4096


@asynccontextmanager
async def stalled(
    port: int, user: str, device: str
) -> AsyncIterator[tuple[LeanConnection, dict[str, Any]]]:
    """A welcomed connection with a small receive buffer that reads only when told to.

    Dropped on exit, whatever happens, so that a failing test does not leave
    the server's teardown waiting on it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connecting, so that the window the server sees is small from the start.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    conn = LeanConnection(sock, user)
    try:
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        await trio.lowlevel.wait_writable(sock)
        await conn.send_all(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in conn.buf:
            assert await conn.recv_some(), "closed during the handshake"
        head, _, rest = bytes(conn.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        conn.buf = bytearray(rest)
        welcome = await conn.hello(token(user), device=device)
        yield conn, dict(welcome)
    finally:
        conn.close()


async def read_until(
    conn: LeanConnection, done: Callable[[dict[str, Any]], bool], frames: list[dict[str, Any]]
) -> None:
    """Read and decode frames into ``frames`` until one satisfies ``done`` or the socket closes."""
    with trio.fail_after(30):
        while True:
            for payload in conn.feed():
                frame = msgpack.unpackb(payload)
                frames.append(frame)
                if done(frame):
                    return
            if conn.close_code is not None or not await conn.recv_some():
                return


async def request(conn: LeanConnection, ref: int, frame_type: str, **fields: Any) -> dict[str, Any]:
    """Send a request on a raw connection and read until its answer (pushes are dropped)."""
    await conn.send_all(encode({"t": frame_type, "ref": ref, **fields}))
    frames: list[dict[str, Any]] = []
    await read_until(conn, lambda f: f.get("ref") == ref, frames)
    assert frames, f"closed ({conn.close_code}) before the answer to {frame_type}"
    answer = frames[-1]
    assert (answer["t"], answer.get("ref")) == ("reply", ref), answer
    return answer


async def test_a_reader_that_stops_is_closed_3001_then_resumes_without_loss(
    tmp_path: Path,
) -> None:
    """The others get every message while it is stalled; it gets 3001, then resumes exactly."""
    # A resume replays up to max_outbound_bytes / 8: 128 KiB, sixteen of these bodies.
    body = "x" * 8192
    config = make_config(
        tmp_path,
        max_outbound_bytes=1 << 20,
        max_frames_per_s=100_000.0,
        frames_burst=100_000,
        max_bytes_per_s=1 << 30,
    )
    with trio.fail_after(120):
        async with (
            running_server(config) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
            stalled(info.port, "sam", "s") as (sam, welcome),
        ):
            assert server.ctx is not None
            counters = server.ctx.counters
            room = await make_room(alice, "bob", "sam")
            # sam reads nothing from here on; alice keeps sending until the
            # server had to give up on him (the kernel buffers come first)
            sent = 0
            while counters.slow_consumers == 0:
                assert sent < 5_000, "never a slow consumer"
                sent += 1
                await alice.ok("msg.send", room=room, cid=f"m{sent}", body=body)
            # bob's delivery never waited for sam: all of it, in order, now
            assert await msgs_through(bob, room, sent, timeout=30) == list(range(1, sent + 1))

            # sam reads again: a gapless prefix of the room, then 3001
            frames: list[dict[str, Any]] = []
            await read_until(sam, lambda f: False, frames)
            assert sam.close_code == 3001
            held = [f["seq"] for f in frames if f["t"] == "msg"]
            assert held == list(range(1, len(held) + 1))
            assert len(held) < sent

            # more traffic while sam is away
            for i in range(sent + 1, sent + 4):
                await alice.ok("msg.send", room=room, cid=f"m{i}", body=i)
            head = sent + 3

            # sam resumes from what he holds: the rest, once, in order, then live
            async with raw_client(
                info.port, "sam", "s", session=welcome["session"], resume={room: held[-1]}
            ) as resumed:
                assert resumed.welcome["resumed"] is True
                replayed = []
                with trio.fail_after(30):
                    while (frame := await resumed.pushes.receive())["t"] != "recovered":
                        if frame["t"] == "msg":
                            replayed.append(frame["seq"])
                assert (frame["complete"], frame["head"]) == (True, head)
                await bob.ok("msg.send", room=room, cid="live", body="live")
                live = await msgs_through(resumed, room, head + 1, timeout=30)
                assert held + replayed + live == list(range(1, head + 2))


async def typing_set(client: RawClient, users: set[str]) -> None:
    """Wait for a ``typing`` push listing exactly ``users`` (in whatever order they started)."""
    with trio.fail_after(30):
        while True:
            frame = await client.pushes.receive()
            if frame["t"] == "typing" and set(frame["users"]) == users:
                return


def _kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer may grow to by itself (Linux), else a guess."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 << 20


async def test_a_watcher_that_stops_reading_is_not_closed_for_typing_and_presence(
    tmp_path: Path,
) -> None:
    """Keyed frames coalesce (last write wins) and never count as a slow consumer.

    Sam stops reading while alice toggles her typing and her presence
    thousands of times: far more than the kernel buffers plus the 16 KiB
    outbound bound. Sam is not closed, and when he reads again he gets the
    latest state, having missed intermediate values.
    """
    config = make_config(
        tmp_path,
        max_frame_bytes=16384,
        max_outbound_bytes=16384,
        max_frames_per_s=100_000.0,
        frames_burst=100_000,
        max_bytes_per_s=1 << 30,
        typing_timeout=3600.0,
    )
    # Twenty long user ids typing make each typing push about 2.6 KiB.
    typists = [f"typist-{i:02d}-".ljust(128, "x") for i in range(20)]
    presence_toggles = 200
    with trio.fail_after(120):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("zed", "z")) as (alice, zed),
            stalled(info.port, "sam", "s") as (sam, _),
            AsyncExitStack() as stack,
        ):
            others = []
            for user in typists:
                conn = await LeanConnection.open("127.0.0.1", info.port, user)
                stack.callback(conn.close)
                await conn.hello(token(user), device="d")
                others.append(conn)
            room = await make_room(alice, "sam", "zed", *typists)
            # at least this many bytes per typing push from now on
            typing_frame = len(msgpack.packb({"t": "typing", "room": room, "users": typists}))
            toggles = (_kernel_send_buffer_max() + (512 << 10)) // typing_frame
            assert toggles < 9_000, "a raw client keeps at most 10 000 pushes"
            for conn in others:  # they type and never read again
                await conn.send_all(encode({"t": "typing", "room": room, "typing": True}))
            await typing_set(zed, set(typists))
            await request(sam, 2, "presence.subscribe", users=["alice"])

            # sam reads nothing from here on
            for i in range(toggles):
                await alice.send_only("typing", room=room, typing=i % 2 == 0)
            await alice.send_only("typing", room=room, typing=False)
            for i in range(presence_toggles):
                await alice.send_only("presence.set", status="idle" if i % 2 == 0 else "active")
            # answered once her connection passed every toggle on, in order
            await alice.ok("presence.set", status="active")
            await alice.ok("room.members", room=room)
            # a state nobody saw before: zed types, alice opens a second device
            await zed.send_only("typing", room=room, typing=True)
            final_typing = {*typists, "zed"}
            await typing_set(zed, final_typing)
            async with clients(info.port, ("alice", "a2")):
                await zed.push("presence", user="alice", devices=2, timeout=30)

                # sam reads again: still open, and the latest state arrives
                frames: list[dict[str, Any]] = []
                seen: dict[str, Any] = {}

                def latest(frame: dict[str, Any]) -> bool:
                    if frame["t"] == "typing":
                        seen["typing"] = set(frame["users"])
                    elif frame["t"] == "presence" and frame["user"] == "alice":
                        seen["presence"] = (frame["status"], frame["devices"])
                    return seen == {"typing": final_typing, "presence": ("online", 2)}

                await read_until(sam, latest, frames)
                assert sam.close_code is None, sam.close_code
                await sam.send_all(encode({"t": "ping", "n": 7}))
                await read_until(sam, lambda f: f["t"] == "pong", frames)
                assert frames[-1] == {"t": "pong", "n": 7}
                assert seen == {"typing": final_typing, "presence": ("online", 2)}

            # intermediate values were replaced, not queued: had they been
            # queued, they alone would have overflowed the 16 KiB bound
            typing_seen = sum(1 for f in frames if f["t"] == "typing")
            presence_seen = sum(1 for f in frames if f["t"] == "presence" and f["user"] == "alice")
            assert (toggles + 1 - typing_seen) * typing_frame > config.max_outbound_bytes
            assert presence_seen < presence_toggles
