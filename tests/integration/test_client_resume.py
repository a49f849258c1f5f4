"""End to end: the Python SDK reconnecting and resuming against a real server.

Real WebSockets on loopback, real SQLite. The SDK clients under test reach
the server through a small TCP proxy defined here, which can cut every
connection abruptly (the client sees 1006, as on a network drop), refuse new
ones (a server that is down), or forward to another server (a restart on a
new port). Server-side closes with a given code (3000, 3001, 3504...) are
told to the user's connection actors, as an operator or a slow-consumer
check would.

Nothing sleeps to synchronize: every wait is on an event the SDK surfaces
(``Reconnecting``, ``Reconnected``, ``Recovered``, messages) or on a request
round trip, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import gc
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tether.actors.messages import CloseConnection
from tether.app import Server
from tether.client import (
    AuthenticationError,
    Client,
    ConnectionClosed,
    Event,
    Message,
    PresenceEvent,
    Reconnected,
    Reconnecting,
    Recovered,
    ResyncFailed,
    SendResult,
    connect,
)
from tether.config import ServerConfig
from tether.testing import make_config, running_server, token

# Quick reconnects keep the tests short; the schedule itself is unit-tested.
FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.5}


class Proxy:
    """A TCP proxy in front of a server (see the module docstring).

    Attributes:
        upstream: the server port connections are forwarded to (None: refuse).
        refusing: close new connections at once, as an unreachable server would.
        deaf: drop what the server sends instead of forwarding it (a reply
            lost on the way), until the next ``drop()``.
    """

    def __init__(self) -> None:
        self.upstream: int | None = None
        self.refusing = False
        self.deaf = False
        self.port = 0
        self._links: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def drop(self) -> None:
        """Cut every open connection without a close frame (both sides see it vanish)."""
        self.deaf = False
        for scope in self._links:
            scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            if self.refusing or self.upstream is None:
                return
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.upstream)
            except OSError:
                return
            try:
                with trio.CancelScope() as scope:
                    self._links.add(scope)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, scope, False)
                        nursery.start_soon(self._pump, server, client, scope, True)
            finally:
                self._links.discard(scope)
                await trio.aclose_forcefully(server)
        finally:
            await trio.aclose_forcefully(client)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        scope: trio.CancelScope,
        from_server: bool,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if from_server and self.deaf:
                    continue
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side is gone: so is the other


@asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[Proxy]:
    proxy = Proxy()
    proxy.upstream = port
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()


def close_user(server: Server, user: str, code: int, reason: str = "test") -> int:
    """Close every connection of ``user`` with ``code``, as the server does for a kick."""
    assert server.ctx is not None
    closed = 0
    for ref in server.ctx.system.registry.by_kind("connection"):
        actor = ref._actor  # the test reaches into the server: no public way to target a user
        if actor is not None and actor.identity is not None and actor.identity.user_id == user:
            ref.tell(CloseConnection(code, reason))
            closed += 1
    return closed


async def next_message(client: Client, seen: list[Event] | None = None) -> Message:
    """The next Message event (others are appended to ``seen``)."""
    while True:
        event = await client.next_event()
        if isinstance(event, Message):
            return event
        if seen is not None:
            seen.append(event)


async def until(client: Client, stop: Callable[[Event], bool]) -> list[Event]:
    """Events up to and including the first for which ``stop`` holds."""
    events: list[Event] = []
    while True:
        event = await client.next_event()
        events.append(event)
        if stop(event):
            return events


async def shared_room(alice: Client, bob: Client) -> str:
    """A private room of bob's with alice in it, known to both clients."""
    room = await bob.create_room("Trip", members=["alice"])
    await alice.list_rooms()  # the SDK learns the room (and resumes it from now on)
    return room.id


# -- transparent reconnects ------------------------------------------------------------


DROPS = [
    pytest.param("3000", id="3000-shutdown"),
    pytest.param("3001", id="3001-slow-consumer"),
    pytest.param("1006", id="1006-network-drop"),
]


@pytest.mark.parametrize("drop", DROPS)
async def test_the_client_reconnects_and_resumes_by_itself(tmp_path: Path, drop: str) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (server, info),
            proxy_to(info.port) as proxy,
            connect(proxy.url, token("alice"), device="a", **FAST) as alice,
            connect(info.url, token("bob"), device="b") as bob,
        ):
            room = await shared_room(alice, bob)
            await bob.send(room, "before")
            assert (await next_message(alice)).body == "before"
            assert alice.welcome is not None
            session = alice.welcome.session
            if drop == "1006":
                proxy.drop()
            else:
                assert close_user(server, "alice", int(drop)) == 1
            await bob.send(room, "while away")
            others: list[Event] = []
            missed = await next_message(alice, others)
            assert (missed.seq, missed.body) == (2, "while away")
            reconnecting = others[0]
            assert isinstance(reconnecting, Reconnecting)
            assert (reconnecting.attempt, reconnecting.code) == (1, int(drop))
            assert Reconnected(resumed=True) in others
            assert alice.welcome.session == session
            assert alice.closed is None
            # The same client object keeps working both ways.
            sent = await alice.send(room, "back")
            assert (await next_message(bob)).seq == sent.seq == 3
            await bob.send(room, "live")
            assert (await next_message(alice)).seq == 4


async def test_no_loss_and_no_duplicate_while_another_client_keeps_sending(
    tmp_path: Path,
) -> None:
    total = 150
    drops = {20: "1006", 55: "3001", 90: "1006", 120: "3000"}
    with trio.fail_after(60):
        async with (
            running_server(make_config(tmp_path)) as (server, info),
            proxy_to(info.port) as proxy,
            connect(proxy.url, token("alice"), device="a", **FAST) as alice,
            connect(info.url, token("bob"), device="b") as bob,
        ):
            room = await shared_room(alice, bob)

            async def bob_sends() -> None:
                for i in range(total):
                    await bob.send(room, f"b{i}")

            received: list[int] = []
            own: list[int] = []
            dropped = reconnects = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob_sends)
                while len(received) < total or reconnects < dropped:
                    event = await alice.next_event()
                    if isinstance(event, Reconnected):
                        reconnects += 1
                        own.append((await alice.send(room, f"a{reconnects}")).seq)
                    if not isinstance(event, Message):
                        continue
                    assert event.sender == "bob"
                    received.append(event.seq)
                    kind = drops.pop(len(received), None)
                    # Events may lag behind the socket: drop only a live connection.
                    if kind is None or not alice.connected:
                        continue
                    dropped += 1
                    if kind == "1006":
                        proxy.drop()
                    else:
                        assert close_user(server, "alice", int(kind)) == 1
    assert dropped >= 2
    assert received == sorted(received)  # in order...
    assert len(set(received)) == total  # ...once each
    assert sorted(received + own) == list(range(1, total + len(own) + 1))  # none missing


async def test_a_send_cut_by_a_drop_completes_with_one_stored_copy(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            proxy_to(info.port) as proxy,
            connect(proxy.url, token("alice"), device="a", **FAST) as alice,
            connect(info.url, token("bob"), device="b") as bob,
        ):
            room = await shared_room(alice, bob)
            await bob.send(room, "hello")
            assert (await next_message(alice)).seq == 1
            proxy.deaf = True  # the reply to the next send gets lost
            results: list[SendResult] = []
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    results.append(await alice.send(room, "stored once", cid="alice-1"))

                nursery.start_soon(send)
                stored = await next_message(bob)  # it was stored...
                assert (stored.seq, stored.cid) == (2, "alice-1")
                assert not results  # ...but alice never heard back
                proxy.drop()
            [result] = results
            assert result == SendResult(2, stored.ts, True, "alice-1")
            await bob.send(room, "after")
            # Alice's own message was not surfaced to her as an event.
            assert (await next_message(alice)).seq == 3
            page = await bob.history(room)
            assert [m.body for m in page.messages] == ["hello", "stored once", "after"]


async def test_a_large_gap_is_paged_from_history_in_order(tmp_path: Path) -> None:
    config = make_config(tmp_path, resume_max_replay=5, resume_buffer_messages=0)
    with trio.fail_after(30):
        async with (
            running_server(config) as (_, info),
            proxy_to(info.port) as proxy,
            connect(proxy.url, token("alice"), device="a", **FAST) as alice,
            connect(info.url, token("bob"), device="b") as bob,
        ):
            room = await shared_room(alice, bob)
            await bob.send(room, 1)
            assert (await next_message(alice)).seq == 1
            proxy.refusing = True  # alice stays away while bob writes 30 messages
            proxy.drop()
            assert isinstance(await alice.next_event(), Reconnecting)
            for i in range(2, 32):
                await bob.send(room, i)
            proxy.refusing = False
            events = await until(alice, lambda e: isinstance(e, Recovered))
    messages = [e.seq for e in events if isinstance(e, Message)]
    assert messages == list(range(2, 32))
    assert events[-1] == Recovered(room, complete=False, replayed=5, head=31, first=27)


async def test_presence_is_subscribed_again_when_the_session_is_not_resumed(
    tmp_path: Path,
) -> None:
    # A server with fresh storage knows neither the session nor the rooms:
    # presence is open to anyone here, so that following bob needs no room.
    def config(name: str) -> ServerConfig:
        return make_config(tmp_path / name, presence_visibility="all")

    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            first, info = await stack.enter_async_context(running_server(config("one")))
            proxy = await stack.enter_async_context(proxy_to(info.port))
            alice = await stack.enter_async_context(
                connect(proxy.url, token("alice"), device="a", **FAST)
            )
            [snapshot] = await alice.subscribe_presence(["bob"])
            assert snapshot.status == "offline"
            proxy.refusing = True
            first.request_shutdown()
            assert isinstance(await alice.next_event(), Reconnecting)
            async with running_server(config("two")) as (_, info):
                proxy.upstream = info.port
                proxy.refusing = False
                events = await until(alice, lambda e: isinstance(e, PresenceEvent))
                assert Reconnected(resumed=False) in events
                assert events[-1] == PresenceEvent("bob", "offline", 0, None)
                async with connect(info.url, token("bob")):
                    update = await next_presence(alice)
                    assert (update.user, update.status) == ("bob", "online")


async def next_presence(client: Client) -> PresenceEvent:
    while True:
        event = await client.next_event()
        if isinstance(event, PresenceEvent):
            return event


async def test_a_restarted_server_resumes_from_storage(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            server, info = await stack.enter_async_context(running_server(make_config(tmp_path)))
            proxy = await stack.enter_async_context(proxy_to(info.port))
            alice = await stack.enter_async_context(
                connect(proxy.url, token("alice"), device="a", **FAST)
            )
            bob = await stack.enter_async_context(
                connect(proxy.url, token("bob"), device="b", **FAST)
            )
            room = await shared_room(alice, bob)
            for i in (1, 2):
                await bob.send(room, i)
            assert [(await next_message(alice)).seq for _ in range(2)] == [1, 2]
            proxy.refusing = True
            server.request_shutdown()
            seen: list[Event] = []
            # Bob's send waits for the new server; alice gets it once, in order.
            async with (
                running_server(make_config(tmp_path)) as (_, info),
                trio.open_nursery() as nursery,
            ):
                proxy.upstream = info.port
                nursery.start_soon(bob.send, room, 3)
                proxy.refusing = False
                message = await next_message(alice, seen)
                assert (message.seq, message.body) == (3, 3)
    shutdown = seen[0]
    assert isinstance(shutdown, Reconnecting)
    assert shutdown.code == 3000


async def test_heartbeats_keep_the_new_connection_alive(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    # Server pings every 10 s and drops after 25 s of silence; the client
    # gives up after 35 s without a frame: both must keep working after a reconnect.
    with trio.fail_after(600):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            proxy_to(info.port) as proxy,
            connect(proxy.url, token("alice"), **FAST) as alice,
        ):
            proxy.drop()
            assert isinstance(await alice.next_event(), Reconnecting)
            assert await alice.next_event() == Reconnected(resumed=True)
            with trio.move_on_after(300):  # thirty heartbeat rounds
                event = await alice.next_event()
                raise AssertionError(f"unexpected {event!r}")
            assert alice.connected
            assert await alice.list_rooms() == []


async def test_no_socket_is_left_behind(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trio.fail_after(30):
            async with (
                running_server(make_config(tmp_path)) as (_, info),
                proxy_to(info.port) as proxy,
            ):
                async with connect(proxy.url, token("alice"), **FAST) as alice:
                    for _ in range(3):
                        proxy.drop()
                        await until(alice, lambda e: isinstance(e, Reconnected))
                    proxy.refusing = True  # attempts fail during the WebSocket handshake
                    proxy.drop()
                    for _ in range(3):
                        await until(alice, lambda e: isinstance(e, Reconnecting))
                # left while reconnecting
                assert alice.closed is not None
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


# -- when the client stops --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        pytest.param(3504, ConnectionClosed, id="3504-kicked"),
        pytest.param(3006, AuthenticationError, id="3006-expired-without-provider"),
    ],
)
async def test_codes_that_say_stop_end_the_client(
    tmp_path: Path, code: int, error: type[ConnectionClosed]
) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (server, info),
            connect(info.url, token("alice"), **FAST) as alice,
        ):
            assert close_user(server, "alice", code) == 1
            with pytest.raises(ConnectionClosed) as ended:
                await alice.next_event()
            with pytest.raises(ConnectionClosed):
                await alice.list_rooms()
    assert type(ended.value) is error
    assert ended.value.code == code
    assert alice.closed is ended.value


async def test_a_refused_token_on_reconnect_ends_the_client(tmp_path: Path) -> None:
    # The server comes back with another secret: the old token is invalid.
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            server, info = await stack.enter_async_context(running_server(make_config(tmp_path)))
            proxy = await stack.enter_async_context(proxy_to(info.port))
            alice = await stack.enter_async_context(connect(proxy.url, token("alice"), **FAST))
            proxy.refusing = True
            server.request_shutdown()
            assert isinstance(await alice.next_event(), Reconnecting)
            rotated = make_config(tmp_path / "other", secret="another-secret-for-this-test-only")
            async with running_server(rotated) as (_, info):
                proxy.upstream = info.port
                proxy.refusing = False
                with pytest.raises(AuthenticationError) as refused:
                    await until(alice, lambda e: False)
    assert (refused.value.code, refused.value.expired) == (3502, False)


async def test_an_expired_token_is_replaced_by_the_provider(tmp_path: Path) -> None:
    fresh: list[str] = []

    async def provider() -> str:
        fresh.append(token("alice", ttl=600))
        return fresh[-1]

    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (server, info),
            connect(info.url, token("alice"), token_provider=provider, **FAST) as alice,
        ):
            close_user(server, "alice", 3006, "token expired")
            events = await until(alice, lambda e: isinstance(e, Reconnected))
            assert isinstance(events[0], Reconnecting)
            assert events[0].code == 3006
            assert await alice.list_rooms() == []
    assert len(fresh) == 1


async def test_a_failing_resync_callback_does_not_cause_reconnects(tmp_path: Path) -> None:
    calls = 0

    async def broken(client: Client) -> None:
        nonlocal calls
        calls += 1
        await client.list_rooms()
        raise RuntimeError("the application's catch-up failed")

    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (server, info),
            connect(info.url, token("alice"), device="a", on_reconnect=broken, **FAST) as alice,
            connect(info.url, token("bob"), device="b") as bob,
        ):
            room = await shared_room(alice, bob)
            close_user(server, "alice", 3001)
            events = await until(alice, lambda e: isinstance(e, ResyncFailed))
            failure = events[-1]
            assert isinstance(failure, ResyncFailed)
            assert (failure.step, str(failure.error)) == (
                "callback",
                "the application's catch-up failed",
            )
            # Still connected, and no further reconnect comes.
            await bob.send(room, "still there?")
            later: list[Event] = []
            assert (await next_message(alice, later)).body == "still there?"
            assert not any(isinstance(e, Reconnecting | Reconnected) for e in later)
            assert alice.connected
    assert calls == 1
