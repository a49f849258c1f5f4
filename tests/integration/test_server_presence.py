"""End to end: a real server, real WebSockets on loopback, real SQLite.

Timer-driven cases run under a MockClock that jumps virtual time only after a
short stretch of real idleness (``lazy_clock``): real socket and database I/O
completes first, then heartbeats and grace periods pass in no wall time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from tether.bench.wsclient import LeanConnection, encode
from tether.client import (
    AuthenticationError,
    Client,
    ConnectionClosed,
    PresenceEvent,
    RequestError,
    connect,
)
from tether.config import ServerConfig
from tether.testing import make_config as _make_config
from tether.testing import running_server, token


def make_config(data_dir: Path, **overrides: object) -> ServerConfig:
    """These tests subscribe to users who share no room: allow it."""
    return _make_config(data_dir, **{"presence_visibility": "all", **overrides})


@asynccontextmanager
async def client(url: str, user: str, device: str | None = None) -> AsyncIterator[Client]:
    async with connect(url, token(user), device=device) as c:
        yield c


async def next_presence(c: Client, timeout: float = 5.0) -> PresenceEvent:
    event = await c.next_event(timeout=timeout)
    assert isinstance(event, PresenceEvent), event
    return event


async def no_event(c: Client, within: float) -> None:
    with trio.move_on_after(within):
        event = await c.next_event()
        raise AssertionError(f"unexpected event {event!r}")


async def lean(port: int, user: str, device: str) -> LeanConnection:
    """A raw connection that nobody reads: to the server it vanishes (half-open)."""
    conn = await LeanConnection.open("127.0.0.1", port, user)
    await conn.hello(token(user), device=device)
    return conn


async def answer_pings(conn: LeanConnection) -> None:
    """Keep a raw connection alive: read it and answer heartbeats until it closes."""
    with contextlib.suppress(OSError):
        while conn.close_code is None and await conn.recv_some():
            for payload in conn.feed():
                frame = msgpack.unpackb(payload)
                if frame.get("t") == "ping":
                    await conn.send_all(encode({"t": "pong", "n": frame["n"]}))


async def live_device(nursery: trio.Nursery, port: int, user: str, device: str) -> LeanConnection:
    """A raw connection that answers heartbeats (drop it with ``.close()``)."""
    conn = await lean(port, user, device)
    nursery.start_soon(answer_pings, conn)
    return conn


# -- connecting ---------------------------------------------------------------


async def test_welcome_and_http_endpoints(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with connect(info.url, token("alice", name="Alice"), device="laptop") as c:
                assert c.welcome is not None
                assert (c.welcome.user, c.welcome.name, c.welcome.device) == (
                    "alice",
                    "Alice",
                    "laptop",
                )
                assert c.welcome.heartbeat_ms == 10_000
                assert c.welcome.limits["max_frame_bytes"] == 1 << 20
                await c.ping()
            for path, status in (("/healthz", b"200"), ("/readyz", b"200"), ("/nope", b"404")):
                stream = await trio.open_tcp_stream("127.0.0.1", info.port)
                async with stream:
                    await stream.send_all(
                        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                    )
                    head = await stream.receive_some()
                assert head.split()[1] == status


@pytest.mark.parametrize(
    ("tok", "code"),
    [("not-a-token", 3502), (token("alice", ttl=-3600), 3006), ("dev:alice", 3502)],
)
async def test_bad_tokens_are_refused(tmp_path: Path, tok: str, code: int) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (_, info):
            with pytest.raises(AuthenticationError) as failure:
                async with connect(info.url, tok):
                    pass
            assert failure.value.code == code
            assert not failure.value.reconnect or code == 3006


async def test_dev_mode_accepts_self_issued_identities(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path, dev=True)) as (_, info):
            async with connect(info.url, "dev:carol:Carol C") as c:
                assert c.welcome is not None
                assert (c.welcome.user, c.welcome.name) == ("carol", "Carol C")


async def raw_exchange(url: str, frames: list[bytes]) -> tuple[list[dict[str, object]], int]:
    """Send raw frames; collect what the server sends until it closes."""
    received: list[dict[str, object]] = []
    async with open_websocket_url(url, subprotocols=["tether.v1"]) as ws:
        for frame in frames:
            await ws.send_message(frame)
        try:
            while True:
                received.append(msgpack.unpackb(await ws.get_message()))
        except Exception:  # trio_websocket.ConnectionClosed
            pass
        stream = ws._stream  # trio-websocket 0.12.2 leaks it when the server closes first
        code = ws.closed.code if ws.closed else -1
    await stream.aclose()
    return received, code


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"\xc1garbage"], 3500),  # not msgpack
        ([msgpack.packb([1, 2])], 3500),  # not a map
        ([msgpack.packb({"t": "presence.subscribe", "ref": 1, "users": ["x"]})], 3501),
    ],
)
async def test_bad_frames_close_with_documented_codes(
    tmp_path: Path, frames: list[bytes], code: int
) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with client(info.url, "bystander") as other:
                _, closed_with = await raw_exchange(info.url, frames)
                assert closed_with == code
                await other.ping()  # unaffected
                assert other.closed is None


async def test_recoverable_errors_keep_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with client(info.url, "alice") as c:
                with pytest.raises(RequestError) as failure:
                    await c.request("presence.subscribe", users="not-a-list")
                assert failure.value.code == 100
                with pytest.raises(RequestError) as failure:
                    await c.request("no.such.frame")
                assert failure.value.code == 101
                with pytest.raises(RequestError) as failure:
                    await c.request("hello", token=token("alice"))
                assert failure.value.code == 102
                assert await c.subscribe_presence(["alice"])  # still usable


async def test_hello_timeout(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    with trio.fail_after(60):
        async with running_server(make_config(tmp_path, hello_timeout=5.0)) as (_, info):
            _, code = await raw_exchange(info.url, [])
            assert code == 3005


async def test_flood_is_limited_then_closed(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_frames_per_s=5.0, frames_burst=5)
    with trio.fail_after(10):
        async with running_server(config) as (_, info), client(info.url, "bystander") as other:
            conn = await lean(info.port, "flooder", "d")
            ping = msgpack.packb({"t": "presence.set", "ref": 7, "status": "active"})
            for i in range(40):
                await conn.send_all(encode({"t": "presence.set", "ref": 100 + i, "status": "idle"}))
            errors = 0
            while conn.close_code is None:
                if not await conn.recv_some():
                    break
                for payload in conn.feed():
                    frame = msgpack.unpackb(payload)
                    if frame.get("t") == "error" and frame["code"] == 103:
                        errors += 1
            assert errors >= 1
            assert conn.close_code == 3004
            conn.close()
            assert ping  # the other client still works
            await other.ping()
            assert other.closed is None


async def test_too_many_connections_per_user(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_connections_per_user=2)
    with trio.fail_after(10):
        async with running_server(config) as (_, info):
            async with client(info.url, "alice", "a"), client(info.url, "alice", "b"):
                with pytest.raises(ConnectionClosed) as failure:
                    async with client(info.url, "alice", "c"):
                        pass
                assert failure.value.code == 3505


# -- presence -------------------------------------------------------------------


async def test_multi_device_presence_and_grace(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    """Three devices; closing some keeps online; a quick reconnect never flaps."""
    with trio.fail_after(600):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            trio.open_nursery() as nursery,
        ):
            async with client(info.url, "bob") as bob:
                [snap] = await bob.subscribe_presence(["alice"])
                assert (snap.status, snap.devices, snap.last_seen) == ("offline", 0, None)
                phone = await live_device(nursery, info.port, "alice", "phone")
                assert (await next_presence(bob)).devices == 1
                async with client(info.url, "alice", "laptop"), client(info.url, "alice", "tablet"):
                    assert (await next_presence(bob)).devices == 2
                    assert (await next_presence(bob)).devices == 3
                    # tablet and laptop close normally: still online
                event = await next_presence(bob)
                assert (event.status, event.devices) == ("online", 2)
                event = await next_presence(bob)
                assert (event.status, event.devices) == ("online", 1)
                # the phone drops without a close frame, comes back inside the grace period
                phone.close()
                await trio.sleep(10)
                phone = await live_device(nursery, info.port, "alice", "phone")
                await no_event(bob, within=100)
                # ...and now it goes for good: offline after the grace period
                dropped_at = trio.current_time()
                phone.close()
                event = await next_presence(bob, timeout=120)
                assert (event.status, event.devices) == ("offline", 0)
                assert event.last_seen is not None
                waited = trio.current_time() - dropped_at
                assert 30.0 <= waited < 30.0 + 2.0


async def test_vanished_client_detected_by_heartbeat(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    """A half-open connection (no close, no answers) is closed after the timeout."""
    with trio.fail_after(600):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with client(info.url, "bob") as bob:
                await bob.subscribe_presence(["alice"])
                ghost = await lean(info.port, "alice", "phone")  # never reads again
                assert (await next_presence(bob)).status == "online"
                start = trio.current_time()
                event = await next_presence(bob, timeout=300)
                assert event.status == "offline"
                elapsed = trio.current_time() - start
                # heartbeat timeout (25) + grace (30), within one interval (10)
                assert 55.0 - 10.0 <= elapsed <= 55.0 + 10.0
                ghost.close()


async def test_heartbeats_keep_a_quiet_client_alive(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    with trio.fail_after(600):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with client(info.url, "bob") as bob, client(info.url, "alice") as alice:
                await bob.subscribe_presence(["alice"])
                await trio.sleep(200)  # twenty heartbeat rounds, answered by the SDK
                assert alice.closed is None
                await no_event(bob, within=1)


async def test_away_when_all_devices_idle(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with client(info.url, "bob") as bob:
                await bob.subscribe_presence(["alice"])
                async with client(info.url, "alice", "a") as a, client(info.url, "alice", "b") as b:
                    await next_presence(bob)
                    await next_presence(bob)
                    await a.set_idle(True)
                    await b.set_idle(True)
                    assert (await next_presence(bob)).status == "away"
                    await a.set_idle(False)
                    assert (await next_presence(bob)).status == "online"


async def test_bye_means_offline_at_once(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with client(info.url, "bob") as bob:
                await bob.subscribe_presence(["alice"])
                async with client(info.url, "alice") as alice:
                    await next_presence(bob)
                    await alice.bye()
                    closed = await alice.wait_closed()
                    assert closed.code == 1000
                event = await next_presence(bob)
                assert (event.status, event.devices) == ("offline", 0)


async def test_unsubscribe_stops_events(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (_, info):
            async with client(info.url, "bob") as bob:
                await bob.subscribe_presence(["alice", "carol"])
                await bob.unsubscribe_presence(["alice"])
                async with client(info.url, "alice"), client(info.url, "carol"):
                    event = await next_presence(bob)
                    assert event.user == "carol"
                    await no_event(bob, within=0.3)


async def test_last_seen_survives_restart(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(600):
        async with running_server(config) as (_, info):
            async with client(info.url, "alice") as alice:
                await alice.bye()
                await alice.wait_closed()
        async with running_server(config) as (_, info), client(info.url, "bob") as bob:
            [snap] = await bob.subscribe_presence(["alice"])
            assert snap.status == "offline"
            assert snap.last_seen is not None


async def test_graceful_shutdown_tells_clients_to_reconnect(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_config(tmp_path)) as (server, info):
            async with connect(info.url, token("alice"), reconnect=False) as alice:
                server.request_shutdown()
                closed = await alice.wait_closed()
                assert (closed.code, closed.reconnect) == (3000, True)


async def test_presence_subscription_limit(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_presence_subscriptions=3)
    with trio.fail_after(10):
        async with running_server(config) as (_, info), client(info.url, "bob") as bob:
            await bob.subscribe_presence(["a", "b"])
            with pytest.raises(RequestError) as failure:
                await bob.subscribe_presence(["c", "d"])
            assert failure.value.code == 109
