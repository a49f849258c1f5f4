"""The SDK's rooms and messaging API against a scripted fake server.

The fake server is real WebSocket I/O (trio-websocket's server on a loopback
port 0) speaking the frames of docs/protocol.md: it answers ``hello`` with
``welcome``, records every later frame, answers each request from a script
(a reply's data, an error, silence or a close) and sends pushes on demand. It
does not use the server's code, so these tests pin the SDK to the documented
protocol.

Retries and timeouts run under a MockClock that jumps virtual time only after
a short stretch of real idleness (``lazy_clock``): the loopback I/O completes
first, then backoff sleeps pass in no wall time.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tether.client import (
    Client,
    ConnectionClosed,
    Event,
    HistoryPage,
    MalformedReply,
    Member,
    MemberEvent,
    Message,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    PresenceEvent,
    ReadStateEvent,
    ReceiptEntry,
    ReceiptsEvent,
    RequestError,
    Room,
    RoomAddedEvent,
    RoomSummary,
    SendResult,
    ServerError,
    TypingEvent,
    UnknownEvent,
    connect,
    new_cid,
)
from tether.client import _client as impl
from tether.testing.fake import SILENT, Close, Fail, FakeServer, fake_server

ROOT = Path(__file__).resolve().parents[3]

# -- the fake server (tether.testing.fake) --------------------------------------------


@asynccontextmanager
async def session(user: str = "alice") -> AsyncIterator[tuple[FakeServer, Client]]:
    """A fake server and an SDK client connected to it as ``user``."""
    # One connection: reconnecting is tested in test_client_reconnect.py.
    async with (
        fake_server() as (server, url),
        connect(url, f"dev:{user}", device="laptop", reconnect=False) as client,
    ):
        yield server, client


@pytest.fixture
def lazy_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once the process has been idle for 50 ms of real time."""
    return trio.testing.MockClock(autojump_threshold=0.05)


class MaxRandom(random.Random):
    """Jitter pinned to its upper bound, so that backoff delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def without_ref(frame: dict[str, Any]) -> dict[str, Any]:
    """The frame minus its ``ref``, after checking that it has a valid one."""
    ref = frame["ref"]
    assert isinstance(ref, int)
    assert 0 <= ref < 1 << 32
    return {key: value for key, value in frame.items() if key != "ref"}


# -- fixtures from docs/protocol.md ("Example: a conversation") ----------------------

R = "q7Xv2LmN9cRt4BzA"
CREATED = 1767258000000
TS1 = 1767258060000
TS2 = 1767258120000
EDITED = 1767258180000
ROOM_MAP: dict[str, Any] = {
    "id": R,
    "kind": "private",
    "name": "Weekend trip",
    "owner": "alice",
    "last_seq": 0,
    "created_at": CREATED,
}
ROOM = Room(R, "private", "Weekend trip", "alice", 0, CREATED)
DM_MAP: dict[str, Any] = {
    "id": "d9",
    "kind": "direct",
    "name": "",
    "owner": "alice",
    "last_seq": 0,
    "created_at": CREATED,
}
MSG1: dict[str, Any] = {
    "room": R,
    "seq": 1,
    "cid": "5f0c6a1e-b-0001",
    "sender": "bob",
    "body": {"text": "Train at 9:15?"},
    "ts": TS1,
    "edited_at": EDITED,
}
MSG2: dict[str, Any] = {
    "room": R,
    "seq": 2,
    "cid": "9d2e77b0-a-0001",
    "sender": "alice",
    "body": "Yes! 9:00 at the station",
    "ts": TS2,
}


def call(fn: Callable[[Client], Awaitable[Any]]) -> Callable[[Client], Awaitable[Any]]:
    return fn


# -- request shapes ------------------------------------------------------------------

REQUESTS = [
    pytest.param(
        call(lambda c: c.create_room("Weekend trip", members=["bob"])),
        {"t": "room.create", "name": "Weekend trip", "kind": "private", "members": ["bob"]},
        {"room": ROOM_MAP},
        ROOM,
        id="create_room",
    ),
    pytest.param(
        call(lambda c: c.create_room("Lobby", kind="public")),
        {"t": "room.create", "name": "Lobby", "kind": "public"},
        {"room": {**ROOM_MAP, "kind": "public", "name": "Lobby"}},
        Room(R, "public", "Lobby", "alice", 0, CREATED),
        id="create_room-public-no-members",
    ),
    pytest.param(
        call(lambda c: c.join_room(R)),
        {"t": "room.join", "room": R},
        {"room": {**ROOM_MAP, "last_seq": 2}},
        Room(R, "private", "Weekend trip", "alice", 2, CREATED),
        id="join_room",
    ),
    pytest.param(
        call(lambda c: c.leave_room(R)), {"t": "room.leave", "room": R}, {}, None, id="leave_room"
    ),
    pytest.param(
        call(lambda c: c.invite(R, "carol")),
        {"t": "room.invite", "room": R, "user": "carol"},
        {},
        None,
        id="invite",
    ),
    pytest.param(
        call(lambda c: c.remove_member(R, "carol")),
        {"t": "room.remove", "room": R, "user": "carol"},
        {},
        None,
        id="remove_member",
    ),
    pytest.param(
        call(lambda c: c.list_rooms()),
        {"t": "room.list"},
        {"rooms": [{**ROOM_MAP, "last_seq": 2, "read_seq": 1, "unread": 0, "extra": "ignored"}]},
        [RoomSummary(R, "private", "Weekend trip", "alice", 2, CREATED, read_seq=1, unread=0)],
        id="list_rooms",
    ),
    pytest.param(
        call(lambda c: c.members(R)),
        {"t": "room.members", "room": R},
        {
            "members": [
                {"user": "alice", "role": "owner", "read": 1, "delivered": 2},
                {"user": "bob", "role": "member", "read": 0, "delivered": 1},
            ]
        },
        [Member("alice", "owner", 1, 2), Member("bob", "member", 0, 1)],
        id="members",
    ),
    pytest.param(
        call(lambda c: c.open_dm("bob")),
        {"t": "dm.open", "user": "bob"},
        {"room": DM_MAP},
        Room("d9", "direct", "", "alice", 0, CREATED),
        id="open_dm",
    ),
    pytest.param(
        call(lambda c: c.send(R, {"text": "Train at 9?"}, cid="b-0001")),
        {"t": "msg.send", "room": R, "cid": "b-0001", "body": {"text": "Train at 9?"}},
        {"seq": 1, "ts": TS1, "dup": False},
        SendResult(1, TS1, False, "b-0001"),
        id="send",
    ),
    pytest.param(
        call(lambda c: c.edit(R, 1, {"text": "Train at 9:15?"})),
        {"t": "msg.edit", "room": R, "seq": 1, "body": {"text": "Train at 9:15?"}},
        {"edited_at": EDITED},
        EDITED,
        id="edit",
    ),
    pytest.param(
        call(lambda c: c.delete(R, 2)),
        {"t": "msg.delete", "room": R, "seq": 2},
        {},
        None,
        id="delete",
    ),
    pytest.param(
        call(lambda c: c.history(R, limit=20)),
        {"t": "history", "room": R, "limit": 20},
        {"messages": [MSG1, MSG2], "more": False},
        HistoryPage(
            (
                Message(R, 1, "5f0c6a1e-b-0001", "bob", {"text": "Train at 9:15?"}, TS1, EDITED),
                Message(R, 2, "9d2e77b0-a-0001", "alice", "Yes! 9:00 at the station", TS2),
            ),
            more=False,
        ),
        id="history-latest",
    ),
    pytest.param(
        call(lambda c: c.history(R, before=10)),
        {"t": "history", "room": R, "before": 10, "limit": 50},
        {"messages": [], "more": False},
        HistoryPage((), more=False),
        id="history-before",
    ),
    pytest.param(
        call(lambda c: c.history(R, after=0, limit=500)),
        {"t": "history", "room": R, "after": 0, "limit": 500},
        {"messages": [MSG2], "more": True},
        HistoryPage((Message(R, 2, "9d2e77b0-a-0001", "alice", MSG2["body"], TS2),), more=True),
        id="history-after",
    ),
    pytest.param(
        call(lambda c: c.ack(R, read=1)),
        {"t": "receipt", "room": R, "read": 1},
        {},
        None,
        id="ack-read",
    ),
    pytest.param(
        call(lambda c: c.ack(R, delivered=3, read=2)),
        {"t": "receipt", "room": R, "delivered": 3, "read": 2},
        {},
        None,
        id="ack-both",
    ),
    pytest.param(
        call(lambda c: c.subscribe_presence(["bob"])),
        {"t": "presence.subscribe", "users": ["bob"]},
        {"users": [{"user": "bob", "status": "online", "devices": 2, "last_seen": None}]},
        [PresenceEvent("bob", "online", 2, None)],
        id="subscribe_presence",
    ),
]


@pytest.mark.parametrize(("method", "expected", "data", "result"), REQUESTS)
async def test_request_frames_and_typed_results(
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


FIRE_AND_FORGET = [
    pytest.param(
        call(lambda c: c.typing(R)), {"t": "typing", "room": R, "typing": True}, id="typing"
    ),
    pytest.param(
        call(lambda c: c.typing(R, False)),
        {"t": "typing", "room": R, "typing": False},
        id="typing-stopped",
    ),
    pytest.param(
        call(lambda c: c.ack(R, delivered=4, wait=False)),
        {"t": "receipt", "room": R, "delivered": 4},
        id="ack-no-wait",
    ),
]


@pytest.mark.parametrize(("method", "expected"), FIRE_AND_FORGET)
async def test_fire_and_forget_frames_carry_no_ref(
    method: Callable[[Client], Awaitable[None]], expected: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            assert await method(client) is None
            [frame] = await server.wait_frames(1)
            assert frame == expected


async def test_send_generates_a_fresh_url_safe_cid_per_message() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer("msg.send", {"seq": 1, "ts": TS1, "dup": False})
            server.answer("msg.send", {"seq": 2, "ts": TS2, "dup": False})
            first = await client.send(R, "one")
            second = await client.send(R, "two")
    frames = server.frames("msg.send")
    assert [frame["cid"] for frame in frames] == [first.cid, second.cid]
    assert first.cid != second.cid
    for cid in (first.cid, second.cid):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cid), cid
    assert (first.seq, second.seq) == (1, 2)


def test_new_cid_is_url_safe_and_random() -> None:
    cids = {new_cid() for _ in range(100)}
    assert len(cids) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", cid) for cid in cids)


async def test_hello_carries_the_token_and_device() -> None:
    with trio.fail_after(10):
        async with session("bob") as (server, client):
            assert client.user == "bob"
            assert client.welcome is not None
            assert client.welcome.limits["max_frame_bytes"] == 1 << 20
            assert without_ref(server.hellos[-1]) == {
                "t": "hello",
                "token": "dev:bob",
                "client": "tether-py/0.1",
                "device": "laptop",
            }


# -- local misuse is refused before anything is sent ---------------------------------

MISUSE = [
    pytest.param(
        call(lambda c: c.history(R, before=5, after=1)),
        ValueError,
        r"^Expected at most one of before and after, got before=5 after=1$",
        id="history-before-and-after",
    ),
    pytest.param(
        call(lambda c: c.history(R, limit=0)),
        ValueError,
        r"^Expected limit in 1\.\.500, got 0$",
        id="history-limit-0",
    ),
    pytest.param(
        call(lambda c: c.history(R, limit=501)),
        ValueError,
        r"^Expected limit in 1\.\.500, got 501$",
        id="history-limit-501",
    ),
    pytest.param(
        call(lambda c: c.ack(R)),
        ValueError,
        r"^Expected delivered and/or read, got neither$",
        id="ack-nothing",
    ),
    pytest.param(
        call(lambda c: c.send(R, None)),
        ValueError,
        r"^Expected a message body, got None \(nil marks deleted messages\)$",
        id="send-nil-body",
    ),
    pytest.param(
        call(lambda c: c.send(R, "x", cid="")),
        ValueError,
        r"^Expected a cid of 1\.\.64 characters, got ''$",
        id="send-empty-cid",
    ),
    pytest.param(
        call(lambda c: c.send(R, "x", cid="c" * 65)),
        ValueError,
        r"^Expected a cid of 1\.\.64 characters, got 'c+'$",
        id="send-long-cid",
    ),
    pytest.param(
        call(lambda c: c.send(R, "x", retry_temporary=-1)),
        ValueError,
        r"^Expected retry_temporary >= 0, got -1$",
        id="send-negative-retries",
    ),
    pytest.param(
        call(lambda c: c.edit(R, 1, None)),
        ValueError,
        r"^Expected a message body, got None \(use delete\(\)\)$",
        id="edit-nil-body",
    ),
    pytest.param(
        call(lambda c: c.create_room("Trip", members="bob")),
        TypeError,
        r"^Expected a sequence of user ids, got the str 'bob'$",
        id="create_room-members-str",
    ),
]


@pytest.mark.parametrize(("method", "error", "match"), MISUSE)
async def test_misuse_is_refused_locally(
    method: Callable[[Client], Awaitable[Any]], error: type[Exception], match: str
) -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            with pytest.raises(error, match=match):
                await method(client)
            server.answer("room.list", {"rooms": []})
            assert await client.list_rooms() == []
            assert [frame["t"] for frame in server.frames()] == ["room.list"]


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "frame_type", "failure"),
    [
        (call(lambda c: c.join_room(R)), "room.join", Fail(126, "room is private")),
        (call(lambda c: c.members(R)), "room.members", Fail(120, "not a member")),
        (call(lambda c: c.edit(R, 2, "mine now")), "msg.edit", Fail(124, "not yours")),
        (call(lambda c: c.list_rooms()), "room.list", Fail(108, "storage down", True)),
        (call(lambda c: c.ack(R, read=1)), "receipt", Fail(121, "no such room")),
    ],
)
async def test_error_answers_become_request_errors(
    method: Callable[[Client], Awaitable[Any]], frame_type: str, failure: Fail
) -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer(frame_type, failure)
            with pytest.raises(RequestError) as caught:
                await method(client)
            assert (caught.value.code, caught.value.reason, caught.value.temporary) == (
                failure.code,
                failure.reason,
                failure.temporary,
            )
            # Only msg.send retries, and only temporary errors.
            assert len(server.frames(frame_type)) == 1


@pytest.mark.parametrize(
    ("method", "frame_type", "data"),
    [
        (call(lambda c: c.send(R, "x")), "msg.send", {"seq": 1, "ts": TS1}),
        (call(lambda c: c.send(R, "x")), "msg.send", {"seq": "1", "ts": TS1, "dup": False}),
        (call(lambda c: c.create_room("Trip")), "room.create", {"room": {"id": R}}),
        (call(lambda c: c.open_dm("bob")), "dm.open", {"room": [DM_MAP]}),
        (call(lambda c: c.history(R)), "history", {"messages": [MSG1]}),
        (call(lambda c: c.history(R)), "history", {"messages": [{**MSG2, "seq": True}], "more": 0}),
        (call(lambda c: c.list_rooms()), "room.list", {"rooms": {}}),
        (call(lambda c: c.members(R)), "room.members", {"members": [{"user": "bob"}]}),
        (call(lambda c: c.edit(R, 1, "x")), "msg.edit", {"edited_at": None}),
    ],
)
async def test_malformed_replies_raise_and_keep_the_connection(
    method: Callable[[Client], Awaitable[Any]], frame_type: str, data: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer(frame_type, data)
            with pytest.raises(
                MalformedReply, match=rf"^malformed '{re.escape(frame_type)}' reply"
            ):
                await method(client)
            server.answer("room.list", {"rooms": []})
            assert await client.list_rooms() == []


# -- pushes ----------------------------------------------------------------------------

PUSHES = [
    pytest.param(
        {"t": "msg", **MSG2},
        Message(R, 2, "9d2e77b0-a-0001", "alice", "Yes! 9:00 at the station", TS2),
        id="msg",
    ),
    pytest.param(
        {"t": "msg", **MSG1, "deleted": None, "reactions": ["unknown key"]},
        Message(R, 1, "5f0c6a1e-b-0001", "bob", {"text": "Train at 9:15?"}, TS1, EDITED),
        id="msg-unknown-keys-ignored",
    ),
    pytest.param(
        {
            "t": "msg.edited",
            "room": R,
            "seq": 1,
            "body": {"text": "Train at 9:15?"},
            "edited_at": EDITED,
        },
        MessageEditedEvent(R, 1, {"text": "Train at 9:15?"}, EDITED),
        id="msg.edited",
    ),
    pytest.param(
        {"t": "msg.deleted", "room": R, "seq": 2},
        MessageDeletedEvent(R, 2),
        id="msg.deleted",
    ),
    pytest.param(
        {
            "t": "receipts",
            "room": R,
            "users": [
                {"user": "alice", "delivered": 1, "read": 1},
                {"user": "carol", "delivered": 2, "read": 0},
            ],
        },
        ReceiptsEvent(R, (ReceiptEntry("alice", 1, 1), ReceiptEntry("carol", 2, 0))),
        id="receipts",
    ),
    pytest.param(
        {"t": "typing", "room": R, "users": ["bob", "carol"]},
        TypingEvent(R, ("bob", "carol")),
        id="typing",
    ),
    pytest.param({"t": "typing", "room": R, "users": []}, TypingEvent(R, ()), id="typing-nobody"),
    pytest.param(
        {"t": "read", "room": R, "seq": 1, "unread": 0}, ReadStateEvent(R, 1, 0), id="read"
    ),
    pytest.param(
        {"t": "member", "room": R, "user": "carol", "action": "invited"},
        MemberEvent(R, "carol", "invited"),
        id="member",
    ),
    pytest.param(
        {"t": "room", "room": {**ROOM_MAP, "last_seq": 2}, "unread": 2},
        RoomAddedEvent(Room(R, "private", "Weekend trip", "alice", 2, CREATED), 2),
        id="room",
    ),
    pytest.param(
        {"t": "presence", "user": "bob", "status": "away", "devices": 2, "last_seen": None},
        PresenceEvent("bob", "away", 2, None),
        id="presence",
    ),
    pytest.param(
        {"t": "error", "code": 103, "reason": "slow down", "temporary": True},
        ServerError(103, "slow down", True),
        id="error-without-ref",
    ),
    pytest.param(
        {"t": "call.ring", "room": R, "from": "bob"},
        UnknownEvent("call.ring", {"t": "call.ring", "room": R, "from": "bob"}),
        id="unknown-type",
    ),
]


@pytest.mark.parametrize(("frame", "expected"), PUSHES)
async def test_pushes_become_typed_events(frame: dict[str, Any], expected: Event) -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            await server.push(frame)
            event = await client.next_event()
            assert type(event) is type(expected)
            assert event == expected


async def test_leaving_the_event_loop_early_needs_no_cleanup() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            for seq in (1, 2, 3):
                await server.push({"t": "msg.deleted", "room": R, "seq": seq})
            async for event in client.events():
                assert event == MessageDeletedEvent(R, 1)
                break

            async def consume_one_then_fail() -> None:
                async for event in client.events():
                    assert event == MessageDeletedEvent(R, 2)
                    raise LookupError

            with pytest.raises(LookupError):
                await consume_one_then_fail()
            # A new loop continues with the next push; no iterator is left
            # half-finished (an async generator would warn when collected).
            async for event in client.events():
                assert event == MessageDeletedEvent(R, 3)
                break


def test_a_msg_push_is_a_history_message() -> None:
    # One class: pushed and fetched messages compare equal and can be stored together.
    assert MessageEvent is Message


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            {"t": "msg", **{k: v for k, v in MSG2.items() if k != "body"}}, id="msg-no-body"
        ),
        pytest.param({"t": "msg", **MSG2, "deleted": "yes"}, id="msg-deleted-not-bool"),
        pytest.param({"t": "read", "room": R, "seq": True, "unread": 0}, id="read-bool-seq"),
        pytest.param({"t": "typing", "room": R, "users": "bob"}, id="typing-users-str"),
        pytest.param(
            {"t": "receipts", "room": R, "users": [{"user": "bob", "read": 1}]},
            id="receipts-entry-incomplete",
        ),
        pytest.param({"t": "room", "room": R, "unread": 0}, id="room-not-a-map"),
    ],
)
async def test_a_malformed_push_closes_the_connection(frame: dict[str, Any]) -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            await server.push(frame)
            with pytest.raises(ConnectionClosed) as caught:
                await client.next_event()
            assert caught.value.code == 1002


# -- sending safely: retries with the same cid ------------------------------------------


async def test_send_retries_temporary_errors_with_the_same_cid(
    lazy_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(impl, "_random", MaxRandom())
    with trio.fail_after(60):
        async with session() as (server, client):
            server.answer(
                "msg.send",
                Fail(108, "storage unavailable", temporary=True),
                Fail(103, "too many requests in flight", temporary=True),
                {"seq": 7, "ts": TS2, "dup": True},
            )
            start = trio.current_time()
            result = await client.send(R, {"text": "Yes!"})
            waited = trio.current_time() - start
    frames = server.frames("msg.send")
    assert len(frames) == 3
    assert {frame["cid"] for frame in frames} == {result.cid}
    assert all(frame["body"] == {"text": "Yes!"} for frame in frames)
    assert len({frame["ref"] for frame in frames}) == 3  # each attempt is a new request
    assert result == SendResult(7, TS2, True, result.cid)
    # Backoff (jitter pinned at its bound): 0.2 s, then 0.4 s of virtual time.
    assert waited == pytest.approx(0.6)


async def test_send_gives_up_after_retry_temporary_retries(
    lazy_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with session() as (server, client):
            server.answer("msg.send", *[Fail(108, "storage unavailable", True)] * 3)
            with pytest.raises(RequestError) as caught:
                await client.send(R, "hi", cid="c-1", retry_temporary=2)
    assert (caught.value.code, caught.value.temporary) == (108, True)
    assert [frame["cid"] for frame in server.frames("msg.send")] == ["c-1"] * 3


@pytest.mark.parametrize(
    ("failure", "retries"),
    [
        pytest.param(Fail(120, "not a member"), 3, id="permanent"),
        pytest.param(Fail(106, "too large"), 3, id="too-large"),
        pytest.param(Fail(108, "storage unavailable", True), 0, id="retries-disabled"),
    ],
)
async def test_send_does_not_retry_permanent_errors(
    lazy_clock: trio.testing.MockClock, failure: Fail, retries: int
) -> None:
    with trio.fail_after(60):
        async with session() as (server, client):
            server.answer("msg.send", failure, {"seq": 1, "ts": TS1, "dup": False})
            start = trio.current_time()
            with pytest.raises(RequestError) as caught:
                await client.send(R, "hi", retry_temporary=retries)
            assert trio.current_time() == start  # no backoff sleep either
    assert caught.value.code == failure.code
    assert len(server.frames("msg.send")) == 1


async def test_send_does_not_retry_a_closed_connection(
    lazy_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with session() as (server, client):
            server.answer("msg.send", Close(3000, "restarting"))
            with pytest.raises(ConnectionClosed) as caught:
                await client.send(R, "hi")
            assert (caught.value.code, caught.value.reconnect) == (3000, True)
    assert len(server.frames("msg.send")) == 1


async def test_resend_after_a_lost_reply_is_deduplicated_by_cid(
    lazy_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with session() as (server, client):
            # The first attempt is stored but its reply never comes (in real
            # life: the connection dropped); the resend finds it by cid.
            server.answer("msg.send", SILENT, {"seq": 2, "ts": TS2, "dup": True})
            cid = new_cid()
            with trio.move_on_after(5) as timeout:
                await client.send(R, "Yes! 9:00 at the station", cid=cid)
            assert timeout.cancelled_caught
            [first] = server.frames("msg.send")
            # A reply arriving after its request was cancelled is dropped, not
            # delivered as an event: the next event is the push sent after it.
            await server.push({"t": "reply", "ref": first["ref"], "data": {"seq": 2}})
            await server.push(
                {
                    "t": "error",
                    "ref": first["ref"],
                    "code": 107,
                    "reason": "late",
                    "temporary": True,
                }
            )
            await server.push({"t": "typing", "room": R, "users": []})
            assert await client.next_event() == TypingEvent(R, ())
            result = await client.send(R, "Yes! 9:00 at the station", cid=cid)
    assert result == SendResult(2, TS2, True, cid)
    assert [without_ref(frame) for frame in server.frames("msg.send")] == [
        {"t": "msg.send", "room": R, "cid": cid, "body": "Yes! 9:00 at the station"}
    ] * 2


def test_backoff_is_exponential_with_full_jitter_and_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(impl, "_random", MaxRandom())
    assert [impl._backoff_delay(attempt) for attempt in range(8)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    )
    monkeypatch.setattr(impl, "_random", random.Random(20260101))
    for attempt in range(12):
        for _ in range(50):
            assert 0.0 <= impl._backoff_delay(attempt) <= min(5.0, 0.2 * 2**attempt)


# -- history paging ------------------------------------------------------------------


def message_map(seq: int) -> dict[str, Any]:
    """Message ``seq`` of a five-message room: 3 is a tombstone, 4 was edited."""
    base: dict[str, Any] = {
        "room": R,
        "seq": seq,
        "cid": f"c-{seq}",
        "sender": "bob" if seq % 2 else "alice",
        "body": f"message {seq}",
        "ts": TS1 + seq,
    }
    if seq == 3:
        base.update(body=None, deleted=True, edited_at=EDITED)
    if seq == 4:
        base.update(body="message 4 (edited)", edited_at=EDITED)
    return base


def paging_server(messages: list[dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A ``history`` answer that pages like docs/protocol.md says."""

    def page(frame: dict[str, Any]) -> dict[str, Any]:
        limit = frame.get("limit", 50)
        if frame.get("after") is not None:
            newer = [m for m in messages if m["seq"] > frame["after"]]
            return {"messages": newer[:limit], "more": len(newer) > limit}
        before = frame.get("before")
        older = [m for m in messages if before is None or m["seq"] < before]
        return {"messages": older[-limit:], "more": len(older) > limit}

    return page


async def test_history_pages_backward_and_forward() -> None:
    stored = [message_map(seq) for seq in range(1, 6)]
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer("history", *[paging_server(stored)] * 6)
            backward: list[Message] = []
            page = await client.history(R, limit=2)
            backward[:0] = page.messages
            while page.more:
                page = await client.history(R, before=page.messages[0].seq, limit=2)
                backward[:0] = page.messages
            forward: list[Message] = []
            after = 0
            while True:
                page = await client.history(R, after=after, limit=2)
                forward.extend(page.messages)
                if not page.more:
                    break
                after = page.messages[-1].seq
    assert [m.seq for m in backward] == [1, 2, 3, 4, 5]
    assert backward == forward
    assert backward[2] == Message(R, 3, "c-3", "bob", None, TS1 + 3, EDITED, deleted=True)
    assert backward[3] == Message(R, 4, "c-4", "alice", "message 4 (edited)", TS1 + 4, EDITED)
    assert backward[4].edited_at is None
    assert backward[4].deleted is False
    assert [without_ref(frame) for frame in server.frames("history")] == [
        {"t": "history", "room": R, "limit": 2},
        {"t": "history", "room": R, "before": 4, "limit": 2},
        {"t": "history", "room": R, "before": 2, "limit": 2},
        {"t": "history", "room": R, "after": 0, "limit": 2},
        {"t": "history", "room": R, "after": 2, "limit": 2},
        {"t": "history", "room": R, "after": 4, "limit": 2},
    ]


async def test_concurrent_requests_are_matched_by_ref() -> None:
    with trio.fail_after(10):
        async with session() as (server, client):
            server.answer("room.join", SILENT)
            server.answer("room.members", SILENT)
            results: dict[str, object] = {}

            async def join() -> None:
                results["join"] = await client.join_room(R)

            async def members() -> None:
                results["members"] = await client.members(R)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(join)
                nursery.start_soon(members)
                join_frame, members_frame = sorted(
                    await server.wait_frames(2), key=lambda frame: frame["t"]
                )
                # Answered in the opposite order.
                await server.push(
                    {
                        "t": "reply",
                        "ref": members_frame["ref"],
                        "data": {
                            "members": [
                                {"user": "alice", "role": "owner", "read": 0, "delivered": 0}
                            ]
                        },
                    }
                )
                await server.push(
                    {"t": "reply", "ref": join_frame["ref"], "data": {"room": ROOM_MAP}}
                )
    assert results == {"join": ROOM, "members": [Member("alice", "owner", 0, 0)]}


async def test_a_silent_server_is_closed_as_lost(lazy_clock: trio.testing.MockClock) -> None:
    # The fake server never pings: after heartbeat_ms + timeout_ms without a
    # frame the SDK gives up on it, as if the network had dropped (1006).
    with trio.fail_after(60):
        async with fake_server(heartbeat_ms=1_000, timeout_ms=2_000) as (_, url):
            async with connect(url, "dev:alice", reconnect=False) as client:
                start = trio.current_time()
                with pytest.raises(ConnectionClosed) as caught:
                    await client.next_event()
                assert trio.current_time() - start >= 3.0
    assert (caught.value.code, caught.value.reconnect) == (1006, True)


# -- the user guide (docs/client.md) --------------------------------------------------

GUIDE = ROOT / "docs" / "client.md"


def guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


def test_every_python_snippet_of_the_guide_compiles() -> None:
    blocks = guide_blocks()
    assert len(blocks) >= 10
    for number, block in enumerate(blocks, 1):
        # Snippets are fragments of async code: allow a top-level await.
        compile(
            block, f"{GUIDE.name}, python block {number}", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )


# The guide's complete example (the echo bot) runs in test_client_reconnect.py.
