"""The SDK reconnecting and resuming by itself, against a scripted fake server.

The fake server is real WebSocket I/O (trio-websocket's server on a loopback
port 0) speaking the frames of docs/protocol.md, one connection after the
other: it answers ``hello`` with ``welcome`` (recording every hello), answers
requests from a script shared by all connections, sends pushes on demand,
closes a connection with any close code, or refuses new ones. It does not use
the server's code, so these tests pin the SDK to the documented protocol
(the real server is exercised in tests/integration/test_client_resume.py).

Backoff sleeps run under a MockClock that jumps virtual time only after a
short stretch of real idleness (``lazy_clock``, tests/conftest.py): loopback
I/O completes first, then the waits pass in no wall time.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tether.client import (
    AuthenticationError,
    Client,
    ConnectionClosed,
    Event,
    HandshakeError,
    Message,
    PresenceEvent,
    Reconnected,
    Reconnecting,
    Recovered,
    RequestError,
    RequestInterrupted,
    ResyncFailed,
    SendResult,
    TypingEvent,
    connect,
)
from tether.client import _client as impl
from tether.testing.fake import SILENT, Close, Fail, FakeServer, fake_server

ROOT = Path(__file__).resolve().parents[3]
R = "q7Xv2LmN9cRt4BzA"
TS = 1767258060000

# -- the fake server (tether.testing.fake) --------------------------------------------


@asynccontextmanager
async def session(user: str = "alice", **options: Any) -> AsyncIterator[tuple[FakeServer, Client]]:
    """A fake server and an SDK client (reconnecting) connected to it as ``user``."""
    async with (
        fake_server() as (server, url),
        connect(url, f"dev:{user}", device="laptop", **options) as client,
    ):
        yield server, client


class MaxRandom(random.Random):
    """Jitter pinned to its upper bound, so that backoff delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    """Jitter pinned to its lower bound: reconnects at once."""

    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnect without waiting (the waits have their own tests)."""
    monkeypatch.setattr(impl, "_random", MinRandom())


def msg(seq: int, sender: str = "bob", room: str = R, **extra: Any) -> dict[str, Any]:
    """A ``msg`` push."""
    return {
        "t": "msg",
        "room": room,
        "seq": seq,
        "cid": f"{sender}-{seq}",
        "sender": sender,
        "body": f"m{seq}",
        "ts": TS + seq,
        **extra,
    }


def message(seq: int, sender: str = "bob", room: str = R) -> Message:
    return Message(room, seq, f"{sender}-{seq}", sender, f"m{seq}", TS + seq)


def history_of(messages: list[dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A ``history`` answer that pages ``messages`` forward like docs/protocol.md says."""

    def page(frame: dict[str, Any]) -> dict[str, Any]:
        assert frame.get("before") is None
        newer = [
            {k: v for k, v in m.items() if k != "t"} for m in messages if m["seq"] > frame["after"]
        ]
        limit = frame.get("limit", 50)
        return {"messages": newer[:limit], "more": len(newer) > limit}

    return page


async def events_until(
    client: Client, stop: Callable[[Event], bool], *, skip: tuple[type, ...] = ()
) -> list[Event]:
    """Events up to and including the first for which ``stop`` holds (``skip`` types left out)."""
    seen: list[Event] = []
    while True:
        event = await client.next_event()
        if not isinstance(event, skip):
            seen.append(event)
        if stop(event):
            return seen


def is_(kind: type) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, kind)


# -- the delay function -------------------------------------------------------------


def test_reconnect_delay_is_exponential_full_jitter_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(impl, "_random", MaxRandom())
    bounds = [impl._reconnect_delay(attempt, 0.5, 30.0) for attempt in range(9)]
    assert bounds == pytest.approx([0.5, 1, 2, 4, 8, 16, 30, 30, 30])
    assert impl._reconnect_delay(10_000, 0.5, 30.0) == 30.0  # no overflow
    monkeypatch.setattr(impl, "_random", random.Random(20261128))
    for attempt in range(12):
        delays = [impl._reconnect_delay(attempt, 0.5, 30.0) for _ in range(200)]
        bound = min(30.0, 0.5 * 2**attempt)
        assert all(0.0 <= delay <= bound for delay in delays)
        # Full jitter: spread over the whole range, the first attempt included.
        assert min(delays) < bound * 0.1
        assert max(delays) > bound * 0.9


def test_reconnect_delay_after_rate_limiting_is_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(impl, "_random", random.Random(7))
    for attempt in range(6):
        bound = min(30.0, 0.5 * 2 ** (attempt + 3))
        for _ in range(100):
            assert bound / 2 <= impl._reconnect_delay(attempt, 0.5, 30.0, 3004) <= bound


# -- the seq tracker (pure) ---------------------------------------------------------------


def test_tracker_holds_the_highest_gapless_seq_and_drops_duplicates() -> None:
    seqs = impl._SeqTracker()
    state = seqs.touch(R, 5)  # first seen: 5, nothing older is ours to resume
    state.soft = False
    assert (state.contig, state.has(4), state.has(5)) == (4, True, False)
    for seq in (5, 7, 9):
        state.add(seq)
    assert (state.contig, state.above) == (5, {7, 9})
    assert state.has(7)
    assert not state.has(6)
    assert not state.has(8)
    state.add(6)  # the gap below 7 fills
    assert (state.contig, state.above) == (7, {9})
    state.add(8)
    assert (state.contig, state.above) == (9, set())
    state.add(3)  # at or below the position: nothing changes
    assert seqs.resume() == {R: 9}


def test_tracker_soft_position_lets_late_pushes_through() -> None:
    seqs = impl._SeqTracker()
    seqs.seed(R, 10)  # from a room map: pushes up to 10 may still be in flight
    state = seqs.get(R)
    assert state is not None
    assert not state.has(9)  # a late push is new to the application
    seqs.seed(R, 99)  # a tracked room keeps its state
    assert state.contig == 10
    seqs.new_connection()
    assert state.has(9)


def test_tracker_resumes_the_most_recently_active_rooms_within_the_cap() -> None:
    seqs = impl._SeqTracker(max_rooms=3)
    for index, room in enumerate("abc"):
        seqs.touch(room, index + 1)
    seqs.touch("a", 5)  # a is now the most recent
    seqs.seed("quiet", 0)  # seeded rooms count as least recently active
    assert list(seqs.resume()) == ["a", "c", "b"]
    seqs.touch("d", 1)
    assert list(seqs.resume()) == ["d", "a", "c"]
    assert seqs.get("b") is None
    seqs.forget("a")
    assert list(seqs.resume()) == ["d", "c"]


def test_waiting_messages_are_bounded_and_the_rest_is_paged() -> None:
    state = impl._RoomSeqs(0)
    for seq in range(2, impl._MAX_WAITING + 12):
        state.wait(Message(R, seq, "c", "bob", "x", TS))
    assert len(state.waiting) == impl._MAX_WAITING
    assert max(state.waiting) == impl._MAX_WAITING + 1
    assert state.fill_until == impl._MAX_WAITING + 11


# -- reconnecting ------------------------------------------------------------------------


async def test_backoff_schedule_then_giving_up(
    lazy_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(impl, "_random", MaxRandom())
    with trio.fail_after(300):
        async with session(max_reconnect_attempts=5, backoff_base=0.5, backoff_cap=3.0) as (
            server,
            client,
        ):
            server.refuse = True
            dropped = trio.current_time()
            await server.close(3000, "restarting")
            schedule: list[Event] = []

            async def collect() -> None:
                while True:
                    schedule.append(await client.next_event())

            with pytest.raises(ConnectionClosed) as caught:
                await collect()
            assert client.closed is caught.value
    assert caught.value.code == 1006
    assert "gave up after 5 reconnect attempts" in caught.value.reason
    assert [(e.attempt, e.delay) for e in schedule if isinstance(e, Reconnecting)] == [
        (1, 0.5),
        (2, 1.0),
        (3, 2.0),
        (4, 3.0),
        (5, 3.0),
    ]
    first = schedule[0]
    assert isinstance(first, Reconnecting)
    assert (first.code, first.reason) == (3000, "restarting")
    # The attempts reached the server at those times (jitter pinned at its bound).
    gaps = [server.attempts[1] - dropped] + [
        later - earlier
        for earlier, later in zip(server.attempts[1:], server.attempts[2:], strict=False)
    ]
    assert gaps == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0], abs=0.05)


async def test_resume_sends_the_session_and_positions_and_drops_duplicates(
    no_jitter: None,
) -> None:
    with trio.fail_after(20):
        async with session() as (server, client):
            for seq in (1, 2, 3):
                await server.push(msg(seq))
            assert [await client.next_event() for _ in range(3)] == [message(s) for s in (1, 2, 3)]
            await server.close(3001, "slow consumer")
            await server.connections(2)
            # The room replays what the client missed (3 again: a duplicate), then says so.
            for seq in (3, 4, 5):
                await server.push(msg(seq))
            await server.push(
                {"t": "recovered", "room": R, "complete": True, "replayed": 3, "head": 5}
            )
            await server.push(msg(6))
            seen = await events_until(client, lambda e: e == message(6))
            assert client.welcome is not None
            assert client.welcome.resumed is True
    assert seen == [
        Reconnecting(1, 0.0, 3001, "slow consumer"),
        Reconnected(resumed=True),
        message(4),
        message(5),
        Recovered(R, complete=True, replayed=3, head=5),
        message(6),
    ]
    first, second = server.hellos
    assert "session" not in first
    assert "resume" not in first
    assert {k: v for k, v in second.items() if k != "ref"} == {
        "t": "hello",
        "token": "dev:alice",
        "client": "tether-py/0.1",
        "device": "laptop",
        "session": "s-1",
        "resume": {R: 3},
    }


async def test_an_incomplete_recovery_is_filled_from_history_in_seq_order(
    no_jitter: None,
) -> None:
    stored = [msg(seq) for seq in range(1, 13)]
    with trio.fail_after(20):
        async with session() as (server, client):
            await server.push(msg(1))
            await server.push(msg(2))
            assert [await client.next_event() for _ in range(2)] == [message(1), message(2)]
            server.answer("history", history_of(stored[:7]))  # 3..7: seqs before `first`
            await server.close(3000)
            await server.connections(2)
            for seq in (8, 9, 10):
                await server.push(msg(seq))
            recovered = {
                "t": "recovered",
                "room": R,
                "complete": False,
                "replayed": 3,
                "head": 10,
                "first": 8,
            }
            await server.push(recovered)
            await server.push(msg(11))  # live, while the client pages history
            await server.push(
                {"t": "msg.edited", "room": R, "seq": 11, "body": "new", "edited_at": 1}
            )
            await server.push({"t": "typing", "room": R, "users": ["bob"]})
            seen = await events_until(client, is_(Recovered), skip=(Reconnecting,))
            await server.push(msg(12))
            assert await client.next_event() == message(12)
    messages = [e.seq for e in seen if isinstance(e, Message)]
    assert messages == list(range(3, 12))  # once each, in seq order
    assert seen[0] == Reconnected(resumed=True)
    # The room's catch-up ends with Recovered: everything up to head came before.
    assert seen[-1] == Recovered(R, False, 3, 10, first=8)
    # The edit of a waiting message is applied to it instead of arriving first.
    assert seen[-2] == Message(R, 11, "bob-11", "bob", "new", TS + 11, edited_at=1)
    assert TypingEvent(R, ("bob",)) in seen
    [page] = server.frames("history")
    assert {k: v for k, v in page.items() if k != "ref"} == {
        "t": "history",
        "room": R,
        "after": 2,
        "limit": 500,
    }


async def test_rooms_not_resumable_are_reported_and_forgotten(no_jitter: None) -> None:
    with trio.fail_after(20):
        async with session() as (server, client):
            await server.push(msg(4, room="gone"))
            await server.push(msg(1))
            assert [await client.next_event() for _ in range(2)] == [
                message(4, room="gone"),
                message(1),
            ]
            await server.close(3000)
            await server.connections(2)
            assert server.hellos[1]["resume"] == {R: 1, "gone": 4}
            await server.push(
                {
                    "t": "recovered",
                    "room": "gone",
                    "complete": False,
                    "replayed": 0,
                    "head": 0,
                    "code": 121,
                }
            )
            assert await events_until(client, is_(Recovered), skip=(Reconnecting,)) == [
                Reconnected(True),
                Recovered("gone", False, 0, 0, code=121),
            ]
            await server.close(3000)
            await server.connections(3)
    assert server.hellos[2]["resume"] == {R: 1}


async def test_a_pending_send_is_resent_with_its_cid_and_completes(no_jitter: None) -> None:
    with trio.fail_after(20):
        async with session() as (server, client):
            await server.push(msg(5))
            await server.push(msg(6))
            assert [await client.next_event() for _ in range(2)] == [message(5), message(6)]
            # Stored as 7, but the connection drops before the answer.
            server.answer("msg.send", Close(3000, "restarting"), {"seq": 7, "ts": TS, "dup": True})
            result = await client.send(R, "Yes! 9:00", cid="c-1")
            await server.push(
                {"t": "recovered", "room": R, "complete": True, "replayed": 1, "head": 7}
            )
            await server.push(msg(8))
            seen = await events_until(client, is_(Message), skip=(Reconnecting, Reconnected))
            await server.close(3000)
            await server.connections(3)
    assert result == SendResult(7, TS, True, "c-1")
    assert seen == [Recovered(R, True, 1, 7), message(8)]
    first, second = server.frames("msg.send")
    assert first["cid"] == second["cid"] == "c-1"
    assert first["body"] == second["body"] == "Yes! 9:00"
    assert [number for number, frame in server.received if frame["t"] == "msg.send"] == [1, 2]
    assert server.hellos[1]["resume"] == {R: 6}
    assert server.hellos[2]["resume"] == {R: 8}  # its own message counted as held


async def test_a_replayed_copy_of_a_pending_send_completes_it_without_an_event(
    no_jitter: None,
) -> None:
    with trio.fail_after(20):
        async with session() as (server, client):
            await server.push(msg(1))
            assert await client.next_event() == message(1)
            server.answer("msg.send", Close(3000), SILENT)
            async with trio.open_nursery() as nursery:
                results: list[SendResult] = []

                async def send() -> None:
                    results.append(await client.send(R, "mine", cid="c-9"))

                nursery.start_soon(send)
                await server.connections(2)
                await server.wait_for(lambda: len(server.frames("msg.send")) == 2)
                own = msg(2, sender="alice", cid="c-9", body="mine")
                await server.push(own)  # replayed before the answer to the resend
                await server.push(msg(3))
            seen = await events_until(client, is_(Message), skip=(Reconnecting, Reconnected))
    assert results == [SendResult(2, TS + 2, True, "c-9")]
    assert seen == [message(3)]


async def test_an_interrupted_request_fails_clearly_and_the_client_lives_on(
    no_jitter: None,
) -> None:
    with trio.fail_after(20):
        async with session() as (server, client):
            server.answer("room.create", Close(3000, "restarting"))
            with pytest.raises(RequestInterrupted) as caught:
                await client.create_room("Trip")
            assert client.closed is None
            server.answer("room.list", {"rooms": []})
            assert await client.list_rooms() == []
    error = caught.value
    assert isinstance(error, ConnectionClosed)
    assert (error.code, error.request, error.reconnect) == (3000, "room.create", True)
    assert "may or may not have taken effect" in str(error)
    assert [n for n, f in server.received if f["t"] == "room.create"] == [1]
    assert [n for n, f in server.received if f["t"] == "room.list"] == [2]


async def test_requests_made_while_reconnecting_wait_and_go_in_order(
    lazy_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(impl, "_random", MaxRandom())
    with trio.fail_after(60):
        async with session(backoff_base=10.0, backoff_cap=10.0) as (server, client):
            server.answer("msg.send", *({"seq": n, "ts": TS, "dup": False} for n in (1, 2, 3)))
            await server.close(3000)
            assert isinstance(await client.next_event(), Reconnecting)
            assert not client.connected
            await client.typing(R)  # dropped: only worth sending live
            await client.ack(R, delivered=3, wait=False)
            await client.ack(R, delivered=2, read=1, wait=False)  # merged with the one above
            results: list[int] = []
            async with trio.open_nursery() as nursery:
                for n in (1, 2, 3):

                    async def send(n: int = n) -> None:
                        results.append((await client.send(R, f"queued {n}", cid=f"q{n}")).seq)

                    nursery.start_soon(send)
                    await trio.testing.wait_all_tasks_blocked()
            assert client.connected
    assert sorted(results) == [1, 2, 3]
    assert [without_ref(f) for n, f in server.received if n == 2] == [
        {"t": "receipt", "room": R, "delivered": 3, "read": 1},
        *({"t": "msg.send", "room": R, "cid": f"q{n}", "body": f"queued {n}"} for n in (1, 2, 3)),
    ]


def without_ref(frame: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in frame.items() if key != "ref"}


@pytest.mark.parametrize("resumed", [False, True])
async def test_presence_and_idle_state_come_back(no_jitter: None, resumed: bool) -> None:
    snapshot = {"user": "bob", "status": "away", "devices": 1, "last_seen": None}
    with trio.fail_after(20):
        async with session() as (server, client):
            server.answer("presence.subscribe", {"users": [snapshot]}, {"users": [snapshot]})
            await client.subscribe_presence(["bob"])
            await client.set_idle(True)
            server.resumed = resumed
            await server.close(3000)
            reconnected = await events_until(client, is_(Reconnected), skip=(Reconnecting,))
            assert reconnected == [Reconnected(resumed)]
            if not resumed:
                assert await client.next_event() == PresenceEvent("bob", "away", 1, None)
            await client.ping()
            await server.wait_for(lambda: bool(server.frames("ping", 2)))
    second = [without_ref(f) for n, f in server.received if n == 2]
    expected: list[dict[str, Any]] = [{"t": "presence.set", "status": "idle"}]
    if not resumed:
        expected.append({"t": "presence.subscribe", "users": ["bob"]})
    assert second == [*expected, {"t": "ping", "n": 0}]


async def test_a_user_no_longer_visible_is_dropped_from_the_resubscription(
    no_jitter: None,
) -> None:
    carol = {"user": "carol", "status": "online", "devices": 1, "last_seen": None}
    with trio.fail_after(20):
        async with session() as (server, client):
            server.answer("presence.subscribe", {"users": []})
            await client.subscribe_presence(["bob", "carol"])
            server.resumed = False
            server.answer(
                "presence.subscribe", Fail(104, "bob shares no room"), Fail(104), {"users": [carol]}
            )
            await server.close(3000)
            seen = await events_until(client, is_(PresenceEvent), skip=(Reconnecting,))
            assert seen == [Reconnected(False), PresenceEvent("carol", "online", 1, None)]
            await server.close(3000)
            await events_until(client, is_(Reconnected), skip=(Reconnecting,))
            await server.wait_for(lambda: bool(server.frames("presence.subscribe", 3)))
    assert [f["users"] for f in server.frames("presence.subscribe")] == [
        ["bob", "carol"],
        ["bob", "carol"],
        ["bob"],
        ["carol"],
        ["carol"],
    ]


CLOSE_CODES = [
    pytest.param(3504, ConnectionClosed, id="3504-kicked"),
    pytest.param(3502, AuthenticationError, id="3502-invalid-token"),
    pytest.param(3006, AuthenticationError, id="3006-expired-without-provider"),
    pytest.param(1000, ConnectionClosed, id="1000-normal"),
    pytest.param(3507, ConnectionClosed, id="3507-session-resumed-elsewhere"),
    pytest.param(4500, ConnectionClosed, id="4500-application-terminal"),
]


@pytest.mark.parametrize(("code", "error"), CLOSE_CODES)
async def test_codes_that_say_stop_end_the_client(
    no_jitter: None, code: int, error: type[ConnectionClosed]
) -> None:
    with trio.fail_after(20):
        async with session() as (server, client):
            server.answer("room.members", SILENT)
            async with trio.open_nursery() as nursery:
                failures: list[BaseException] = []

                async def members() -> None:
                    with pytest.raises(ConnectionClosed) as caught:
                        await client.members(R)
                    failures.append(caught.value)

                nursery.start_soon(members)
                await server.wait_for(lambda: bool(server.frames("room.members")))
                await server.close(code, "stop")
            with pytest.raises(ConnectionClosed) as ended:
                await client.next_event()
            closed = await client.wait_closed()
            with pytest.raises(ConnectionClosed):
                await client.list_rooms()
    assert type(ended.value) is error
    assert closed is ended.value is client.closed is failures[0]
    assert (closed.code, closed.reconnect) == (code, code == 3006)
    assert len(server.hellos) == 1


async def test_an_expired_token_is_refreshed_by_the_provider(no_jitter: None) -> None:
    tokens = ["dev:alice:fresh"]

    async def provider() -> str:
        if not tokens:
            raise LookupError("signed out")
        return tokens.pop()

    with trio.fail_after(20):
        async with session(token_provider=provider) as (server, client):
            await server.close(3006, "token expired")
            assert await events_until(client, is_(Reconnected)) == [
                Reconnecting(1, 0.0, 3006, "token expired"),
                Reconnected(True),
            ]
            await server.close(3006, "token expired")  # the provider fails this time
            with pytest.raises(AuthenticationError) as caught:
                await events_until(client, lambda e: False)
    assert [hello["token"] for hello in server.hellos] == ["dev:alice", "dev:alice:fresh"]
    assert caught.value.expired
    assert isinstance(caught.value.__cause__, LookupError)


async def test_a_failing_on_reconnect_callback_is_reported_not_retried(no_jitter: None) -> None:
    calls: list[Client] = []

    async def resync(client: Client) -> None:
        calls.append(client)
        await client.list_rooms()
        raise RuntimeError("my catch-up is broken")

    with trio.fail_after(20):
        async with session(on_reconnect=resync) as (server, client):
            server.answer("room.list", {"rooms": []})
            await server.close(3000)
            seen = await events_until(client, is_(ResyncFailed), skip=(Reconnecting,))
            await server.push({"t": "typing", "room": R, "users": []})
            assert await client.next_event() == TypingEvent(R, ())  # still connected
    assert calls == [client]
    assert seen[0] == Reconnected(True)
    failure = seen[1]
    assert isinstance(failure, ResyncFailed)
    assert (failure.step, failure.room, str(failure.error)) == (
        "callback",
        None,
        "my catch-up is broken",
    )
    assert len(server.hellos) == 2  # no reconnect because of it


async def test_a_failing_gap_fill_is_reported_not_retried(no_jitter: None) -> None:
    with trio.fail_after(20):
        async with session() as (server, client):
            await server.push(msg(1))
            assert await client.next_event() == message(1)
            server.answer("history", Fail(108, "storage unavailable", temporary=True))
            await server.close(3000)
            await server.connections(2)
            await server.push(msg(5))
            await server.push(
                {
                    "t": "recovered",
                    "room": R,
                    "complete": False,
                    "replayed": 1,
                    "head": 5,
                    "first": 5,
                }
            )
            seen = await events_until(client, is_(Recovered), skip=(Reconnecting,))
    assert seen[:2] == [Reconnected(True), message(5)]  # surfaced anyway, after the gap
    failure = seen[2]
    assert isinstance(failure, ResyncFailed)
    assert (failure.step, failure.room, getattr(failure.error, "code", None)) == ("history", R, 108)
    assert seen[3] == Recovered(R, False, 1, 5, first=5)
    assert len(server.hellos) == 2


async def test_a_silent_server_is_left_and_reconnected(
    lazy_clock: trio.testing.MockClock, no_jitter: None
) -> None:
    with trio.fail_after(120):
        async with fake_server(heartbeat_ms=1_000, timeout_ms=2_000) as (server, url):
            async with connect(url, "dev:alice") as client:
                start = trio.current_time()
                first = await client.next_event()
                assert isinstance(first, Reconnecting)
                assert (first.code, first.reason) == (1006, "server heartbeat timeout")
                assert trio.current_time() - start >= 3.0
                assert await client.next_event() == Reconnected(True)
                assert client.welcome is not None
    # The server made up no device: the client keeps the one of its first welcome.
    assert "device" not in server.hellos[0]
    assert server.hellos[1]["device"] == "laptop"


async def test_leaving_the_block_while_reconnecting_stops_at_once(
    lazy_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(impl, "_random", MaxRandom())
    with trio.fail_after(60):
        async with fake_server() as (server, url):
            async with connect(url, "dev:alice", backoff_base=20, backoff_cap=20) as client:
                server.refuse = True
                await server.close(3000)
                assert isinstance(await client.next_event(), Reconnecting)
                start = trio.current_time()
            assert trio.current_time() - start < 1.0
            assert client.closed is not None
            assert client.closed.code == 1000
            with pytest.raises(ConnectionClosed):
                await client.list_rooms()


async def test_cancelling_the_block_during_a_request_leaves_nothing_behind() -> None:
    with trio.fail_after(10):
        async with fake_server() as (server, url):
            server.answer("room.list", SILENT)
            with trio.move_on_after(0.5) as scope:
                async with connect(url, "dev:alice") as client:
                    await client.list_rooms()
            assert scope.cancelled_caught
            assert client.closed is not None


async def test_a_peer_closing_during_the_handshake_fails_at_once(
    lazy_clock: trio.testing.MockClock,
) -> None:
    # A proxy or load balancer without a backend accepts TCP, then closes it.
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(
                functools.partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1")
            )
            port = listener.socket.getsockname()[1]
            start = trio.current_time()
            with pytest.raises(HandshakeError):
                async with connect(f"ws://127.0.0.1:{port}/ws", "dev:alice", connect_timeout=30):
                    pass
            assert trio.current_time() - start < 1.0  # not the 30 s timeout
            nursery.cancel_scope.cancel()


async def test_a_hello_request_on_an_open_connection_is_an_ordinary_request() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer("hello", Fail(102, "already authenticated"))
            with pytest.raises(RequestError) as caught:
                await client.request("hello", token="dev:alice")
            assert caught.value.code == 102
            assert client.connected


async def test_a_full_event_queue_never_blocks_reconnecting(no_jitter: None) -> None:
    with trio.fail_after(20):
        async with session(max_events=2) as (server, client):
            for seq in (1, 2):
                await server.push(msg(seq))
            await server.wait_for(lambda: True)
            await server.close(3000)
            await server.connections(2)
            server.answer("room.list", {"rooms": []})
            assert await client.list_rooms() == []  # connected again, queue still full
            seen = [await client.next_event() for _ in range(4)]
    assert seen == [message(1), message(2), Reconnecting(1, 0.0, 3000, ""), Reconnected(True)]


# -- the user guide (docs/client.md) --------------------------------------------------

GUIDE = ROOT / "docs" / "client.md"


def echo_bot_example() -> dict[str, Any]:
    """Execute the guide's complete example as a module named ``echo_bot``."""
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(r"<!-- example: echo-bot -->\n```python\n(.*?)```", text, re.S)
    assert match is not None
    namespace: dict[str, Any] = {"__name__": "echo_bot"}
    exec(compile(match.group(1), "echo_bot.py", "exec"), namespace)
    return namespace


async def test_the_guide_echo_bot_answers_once_across_a_reconnect(no_jitter: None) -> None:
    bot = echo_bot_example()
    room_map = {"id": R, "kind": "private", "name": "Trip", "owner": "bob", "created_at": TS}
    echo = {"text": "echo: and you?"}
    with trio.fail_after(30):
        async with fake_server() as (server, url):
            # First connection: one message to catch up with (2), then pushes.
            server.answer(
                "room.list", {"rooms": [{**room_map, "last_seq": 2, "read_seq": 1, "unread": 1}]}
            )
            server.answer(
                "history", {"messages": [{**msg(2), "body": {"text": "hi"}}], "more": False}
            )
            server.answer("msg.send", {"seq": 3, "ts": TS, "dup": False})
            # The answer to 4 is stored, but the server restarts before replying:
            # the SDK resends it with its cid after reconnecting.
            server.answer("msg.send", Close(3000, "restarting"), {"seq": 5, "ts": TS, "dup": True})
            server.answer("msg.send", {"seq": 7, "ts": TS, "dup": False})
            server.answer(
                "room.list", {"rooms": [{**room_map, "last_seq": 5, "read_seq": 4, "unread": 0}]}
            )
            own = {**msg(5, sender="echo"), "cid": "echo-4", "body": echo}
            server.answer("history", {"messages": [without_ref(own)], "more": False})
            server.answer("receipt", {}, {}, Close(3504, "kicked"))

            async def script() -> None:
                await server.wait_for(lambda: len(server.frames("receipt")) == 1)
                await server.push({**msg(2), "body": {"text": "hi"}})  # already answered
                await server.push({**msg(4), "body": {"text": "and you?"}})
                await server.wait_for(lambda: len(server.frames("room.list")) == 2)
                # Replayed by the resume: bob's 4 (answered) and the bot's own 5.
                await server.push({**msg(4), "body": {"text": "and you?"}})
                await server.push(own)
                await server.push(
                    {"t": "recovered", "room": R, "complete": True, "replayed": 2, "head": 5}
                )
                await server.push({**msg(6), "body": {"text": "bye"}})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(script)
                with pytest.raises(ConnectionClosed) as caught:
                    await bot["main"](url, "dev:echo")
    assert caught.value.code == 3504
    assert server.hellos[1]["resume"] == {R: 4}
    assert [(n, without_ref(f)) for n, f in server.received] == [
        (1, {"t": "room.list"}),
        (1, {"t": "history", "room": R, "after": 1, "limit": 100}),
        (1, {"t": "msg.send", "room": R, "cid": "echo-2", "body": {"text": "echo: hi"}}),
        (1, {"t": "receipt", "room": R, "read": 2}),
        (1, {"t": "msg.send", "room": R, "cid": "echo-4", "body": echo}),
        # reconnected: the unanswered send again, same cid (dup), then catching up
        (2, {"t": "msg.send", "room": R, "cid": "echo-4", "body": echo}),
        (2, {"t": "receipt", "room": R, "read": 4}),
        (2, {"t": "room.list"}),
        (2, {"t": "history", "room": R, "after": 4, "limit": 100}),
        (2, {"t": "msg.send", "room": R, "cid": "echo-6", "body": {"text": "echo: bye"}}),
        (2, {"t": "receipt", "room": R, "read": 6}),
    ]


async def test_receipts_sent_just_before_a_drop_are_sent_again(
    lazy_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server coalesces ref-less receipts briefly: a crash could lose the latest."""
    monkeypatch.setattr(impl, "_random", MaxRandom())
    with trio.fail_after(60):
        async with session(backoff_base=1.0, backoff_cap=1.0) as (server, client):
            await client.ack("old", delivered=1, wait=False)
            await server.wait_for(lambda: len(server.frames("receipt")) == 1)
            await trio.sleep(impl.RECEIPT_REPLAY_S + 1)  # virtual time: long before the drop
            await client.ack(R, delivered=5, wait=False)
            await client.ack(R, read=4, wait=False)
            await server.wait_for(lambda: len(server.frames("receipt")) == 3)
            await server.close(3000)
            assert isinstance(await client.next_event(), Reconnecting)
            assert isinstance(await client.next_event(), Reconnected)
            await server.wait_for(lambda: any(n == 2 for n, _ in server.received))
    assert [without_ref(f) for n, f in server.received if n == 2 and f["t"] == "receipt"] == [
        {"t": "receipt", "room": R, "delivered": 5, "read": 4},
    ]
