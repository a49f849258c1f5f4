"""Rooms and messages on a ServerConnection: state rules, answers, body size, history fitting."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest

from tether.transport.protocol import (
    MAX_CID_CHARS,
    MAX_ROOM_ID_CHARS,
    MESSAGE_RESERVE_BYTES,
    Bye,
    ClientEvent,
    ConnectionState,
    Disconnect,
    DisconnectCode,
    DmOpen,
    Error,
    ErrorCode,
    Hello,
    History,
    Limits,
    LocalProtocolError,
    MemberEvent,
    MemberInfo,
    Message,
    MessageDeleted,
    MessageEdited,
    MsgDelete,
    MsgEdit,
    MsgSend,
    ReadState,
    Receipt,
    ReceiptInfo,
    Receipts,
    RemoteProtocolError,
    Reply,
    RoomAdded,
    RoomCreate,
    RoomInfo,
    RoomInvite,
    RoomJoin,
    RoomKind,
    RoomLeave,
    RoomList,
    RoomMembers,
    RoomRemove,
    RoomSummaryInfo,
    ServerConnection,
    ServerFrame,
    Typing,
    TypingUsers,
    decode,
    decode_server_frame,
    encode,
    fit_history_reply,
)
from tether.transport.protocol.states import CLIENT_RULES, SERVER_RULES, Accept

S = ConnectionState
HELLO = Hello(ref=1, token="t", device="laptop")
ROOM = RoomInfo(
    id="r1",
    kind=RoomKind.PUBLIC,
    name="Lobby",
    owner="alice",
    last_seq=3,
    created_at=1,
)

REQUESTS: list[ClientEvent] = [
    RoomCreate(ref=10, name="Lobby", kind="public"),  # type: ignore[arg-type]
    RoomJoin(ref=11, room="r1"),
    RoomLeave(ref=12, room="r1"),
    RoomInvite(ref=13, room="r1", user="bob"),
    RoomRemove(ref=14, room="r1", user="bob"),
    RoomList(ref=15),
    RoomMembers(ref=16, room="r1"),
    DmOpen(ref=17, user="bob"),
    MsgSend(ref=18, room="r1", cid="c1", body="hi"),
    MsgEdit(ref=19, room="r1", seq=1, body="hi!"),
    MsgDelete(ref=20, room="r1", seq=1),
    History(ref=21, room="r1"),
    Receipt(ref=22, room="r1", read=1),
]
REF_LESS: list[ClientEvent] = [Receipt(room="r1", delivered=2), Typing(room="r1", typing=True)]

PUSHES: list[ServerFrame] = [
    Message(room="r1", seq=1, cid="c1", sender="alice", body="hi", ts=5),
    MessageEdited(room="r1", seq=1, body="hi!", edited_at=6),
    MessageDeleted(room="r1", seq=1),
    Receipts(room="r1", users=(ReceiptInfo(user="bob", delivered=1, read=1),)),
    TypingUsers(room="r1", users=("bob",)),
    ReadState(room="r1", seq=1, unread=0),
    MemberEvent(room="r1", user="bob", action="joined"),  # type: ignore[arg-type,unused-ignore]
    RoomAdded(room=ROOM, unread=1),
]


def answer(request: ClientEvent) -> Reply:
    """The success answer a server would give, built with the request's own helper."""
    if isinstance(request, RoomCreate | RoomJoin):
        return request.reply(room=ROOM)
    if isinstance(request, DmOpen):
        return request.reply(room={**ROOM.to_wire(), "id": "d1", "kind": "direct", "name": ""})
    if isinstance(request, RoomList):
        return request.reply(rooms=[RoomSummaryInfo.of(ROOM, read_seq=3, unread=0)])
    if isinstance(request, RoomMembers):
        return request.reply(
            members=[MemberInfo(user="alice", role="owner", read=3, delivered=3)]  # type: ignore[arg-type]
        )
    if isinstance(request, MsgSend):
        return request.reply(seq=4, ts=10, dup=False)
    if isinstance(request, MsgEdit):
        return request.reply(edited_at=11)
    if isinstance(request, History):
        return request.reply(messages=[PUSHES[0]], more=False)  # type: ignore[list-item]
    assert isinstance(request, RoomLeave | RoomInvite | RoomRemove | MsgDelete | Receipt)
    return request.reply()


def welcome() -> Any:
    return HELLO.welcome(
        session="s",
        user="alice",
        name="Alice",
        device="laptop",
        heartbeat_ms=25_000,
        timeout_ms=60_000,
        server="tether/test",
        limits={"max_frame_bytes": 1 << 20, "max_frames_per_s": 50},
    )


def connection_in(state: ConnectionState, limits: Limits | None = None) -> ServerConnection:
    conn = ServerConnection(limits)
    if state is S.AWAITING_HELLO:
        return conn
    conn.receive_data(encode(HELLO))
    assert list(conn.events()) == [HELLO]
    if state is S.HELLO_RECEIVED:
        return conn
    conn.send(welcome())
    if state is S.CLOSING:
        conn.receive_data(encode(Bye()))
        assert list(conn.events()) == [Bye()]
    elif state is S.CLOSED:
        conn.send(Disconnect(DisconnectCode.KICKED, "kicked"))
    assert conn.state is state
    return conn


def ids(values: list[Any]) -> list[str]:
    return [type(v).__name__ for v in values]


# ---------------------------------------------------------------- state rules


def test_the_tables_list_every_new_frame() -> None:
    for event in [*REQUESTS, *REF_LESS]:
        assert CLIENT_RULES[S.OPEN][event.TYPE] == Accept(S.OPEN)
    for push in PUSHES:
        assert SERVER_RULES[S.OPEN][push.TYPE] is S.OPEN
        assert SERVER_RULES[S.CLOSING][push.TYPE] is S.CLOSING
        for state in (S.AWAITING_HELLO, S.HELLO_RECEIVED, S.CLOSED):
            assert push.TYPE not in SERVER_RULES[state]


@pytest.mark.parametrize("state", [S.AWAITING_HELLO, S.HELLO_RECEIVED])
@pytest.mark.parametrize("event", [*REQUESTS, *REF_LESS], ids=ids([*REQUESTS, *REF_LESS]))
def test_before_welcome_they_are_fatal_not_authenticated(
    state: ConnectionState, event: ClientEvent
) -> None:
    conn = connection_in(state)
    conn.receive_data(encode(event))
    with pytest.raises(RemoteProtocolError) as info:
        list(conn.events())
    reason = f"Frame {event.TYPE!r} is not allowed in state {state}"
    assert info.value.close_hint == Disconnect(DisconnectCode.NOT_AUTHENTICATED, reason)
    assert conn.state is S.CLOSED


@pytest.mark.parametrize("request_", REQUESTS, ids=ids(REQUESTS))
def test_requests_are_accepted_when_open_and_answered_once(request_: ClientEvent) -> None:
    conn = connection_in(S.OPEN)
    conn.receive_data(encode(request_))
    assert list(conn.events()) == [request_]
    assert conn.statistics().in_flight == 1
    reply = answer(request_)
    assert decode_server_frame(conn.send(reply)) == reply
    assert conn.statistics().in_flight == 0
    with pytest.raises(LocalProtocolError, match=r"which is not in flight$"):
        conn.send(reply)


@pytest.mark.parametrize("request_", REQUESTS, ids=ids(REQUESTS))
def test_requests_may_be_answered_by_an_error(request_: ClientEvent) -> None:
    conn = connection_in(S.OPEN)
    conn.receive_data(encode(request_))
    list(conn.events())
    error = request_.error(ErrorCode.NOT_MEMBER, "not a member of 'r1'")  # type: ignore[attr-defined]
    assert decode_server_frame(conn.send(error)) == error
    assert conn.statistics().in_flight == 0


@pytest.mark.parametrize("event", REF_LESS, ids=ids(REF_LESS))
def test_ref_less_frames_are_accepted_and_not_in_flight(event: ClientEvent) -> None:
    conn = connection_in(S.OPEN)
    conn.receive_data(encode(event))
    assert list(conn.events()) == [event]
    assert conn.statistics().in_flight == 0


def test_a_msg_send_ref_in_flight_may_not_be_reused() -> None:
    conn = connection_in(S.OPEN)
    conn.receive_data(encode(MsgSend(ref=5, room="r1", cid="a", body=1)))
    list(conn.events())
    conn.receive_data(encode(MsgSend(ref=5, room="r1", cid="b", body=2)))
    with pytest.raises(RemoteProtocolError) as info:
        list(conn.events())
    assert info.value.close_hint == Disconnect(
        DisconnectCode.PROTOCOL_VIOLATION, "Frame 'msg.send' reuses ref 5, still in flight"
    )


@pytest.mark.parametrize("event", [*REQUESTS, *REF_LESS], ids=ids([*REQUESTS, *REF_LESS]))
def test_they_are_ignored_while_closing(event: ClientEvent) -> None:
    conn = connection_in(S.CLOSING)
    conn.receive_data(encode(event))
    assert list(conn.events()) == []


@pytest.mark.parametrize("state", [S.OPEN, S.CLOSING])
@pytest.mark.parametrize("push", PUSHES, ids=ids(PUSHES))
def test_pushes_may_be_sent_when_open_or_closing(state: ConnectionState, push: Any) -> None:
    conn = connection_in(state)
    assert decode_server_frame(conn.send(push)) == push
    assert conn.state is state


@pytest.mark.parametrize("state", [S.AWAITING_HELLO, S.HELLO_RECEIVED, S.CLOSED])
@pytest.mark.parametrize("push", PUSHES, ids=ids(PUSHES))
def test_pushes_before_welcome_or_after_close_are_local_errors(
    state: ConnectionState, push: Any
) -> None:
    conn = connection_in(state)
    with pytest.raises(
        LocalProtocolError,
        match="^" + re.escape(f"Event {push!r} cannot be sent in state {state}") + "$",
    ):
        conn.send(push)
    assert conn.state is state


def test_invalid_new_request_is_bad_request_with_its_ref() -> None:
    conn = connection_in(S.OPEN)
    payload = msgpack.packb({"t": "msg.send", "ref": 4, "room": "r1", "cid": "", "body": "x"})
    conn.receive_data(payload)
    with pytest.raises(RemoteProtocolError) as info:
        list(conn.events())
    assert info.value.error_hint == Error(
        ref=4,
        code=ErrorCode.BAD_REQUEST,
        reason="Expected 'msg.send' field 'cid' to be a str of 1..64 characters, got ''",
        temporary=False,
    )
    conn.send(info.value.hint)
    assert conn.state is S.OPEN


# ---------------------------------------------------------------- body size

SMALL = Limits(max_frame_bytes=16 * 1024)


def body_of_size(size: int) -> bytes:
    """A bin body whose msgpack encoding is exactly ``size`` bytes (bin16 header: 3 bytes)."""
    body = b"x" * (size - 3)
    assert len(msgpack.packb(body, use_bin_type=True)) == size
    return body


def test_max_body_bytes_is_derived_from_the_frame_limit() -> None:
    assert Limits().max_body_bytes == (1 << 20) - MESSAGE_RESERVE_BYTES
    assert SMALL.max_body_bytes == 15 * 1024


@pytest.mark.parametrize("cls", [MsgSend, MsgEdit])
def test_a_body_over_max_body_bytes_is_refused_too_large(cls: type[Any]) -> None:
    conn = connection_in(S.OPEN, SMALL)
    fields = {"cid": "c"} if cls is MsgSend else {"seq": 1}
    fits = cls(ref=30, room="r1", body=body_of_size(SMALL.max_body_bytes), **fields)
    conn.receive_data(encode(fits))
    assert list(conn.events()) == [fits]
    too_big = cls(ref=31, room="r1", body=body_of_size(SMALL.max_body_bytes + 1), **fields)
    conn.receive_data(encode(too_big))
    with pytest.raises(RemoteProtocolError) as info:
        list(conn.events())
    assert info.value.error_hint == Error(
        ref=31,
        code=ErrorCode.TOO_LARGE,
        reason=f"Message body of {SMALL.max_body_bytes + 1} bytes exceeds "
        f"max_body_bytes={SMALL.max_body_bytes}",
        temporary=False,
    )
    conn.send(info.value.hint)
    assert conn.state is S.OPEN
    assert conn.statistics().in_flight == 1  # only the one that fitted


def test_stateless_decode_applies_the_body_limit_too() -> None:
    payload = encode(MsgSend(ref=1, room="r", cid="c", body=body_of_size(15 * 1024 + 1)))
    with pytest.raises(RemoteProtocolError) as info:
        decode(payload, SMALL)
    assert info.value.error_hint is not None
    assert info.value.error_hint.code is ErrorCode.TOO_LARGE


def test_a_maximal_message_fits_every_frame_that_carries_it() -> None:
    """The reserve covers the msg push and a history reply built from a maximal msg.send."""
    room, cid, sender = "r" * MAX_ROOM_ID_CHARS, "c" * MAX_CID_CHARS, "€" * 128
    body = body_of_size(SMALL.max_body_bytes)
    big = 2**63 - 1
    message = Message(room=room, seq=big, cid=cid, sender=sender, body=body, ts=big, edited_at=big)
    assert len(encode(message)) <= SMALL.max_frame_bytes
    edited = MessageEdited(room=room, seq=big, body=body, edited_at=big)
    assert len(encode(edited)) <= SMALL.max_frame_bytes
    history = History(ref=2**32 - 1, room=room, before=None, after=big - 1)
    reply = fit_history_reply(history, [message], more=True, max_bytes=SMALL.max_frame_bytes)
    assert reply.data["messages"] == [message.snapshot()]
    assert len(encode(reply)) <= SMALL.max_frame_bytes


# ---------------------------------------------------------------- history fitting


def sized_page(first: int, last: int, body_bytes: int = 1000) -> list[Message]:
    return [
        Message(room="r1", seq=s, cid=f"c{s}", sender="u", body=b"b" * body_bytes, ts=s)
        for s in range(first, last + 1)
    ]


def test_fit_keeps_everything_that_fits() -> None:
    request = History(ref=1, room="r1", limit=10)
    messages = sized_page(1, 10)
    reply = fit_history_reply(request, messages, more=False, max_bytes=1 << 20)
    assert reply == request.reply(messages=messages, more=False)


def test_fit_is_exact_at_the_boundary() -> None:
    request = History(ref=1, room="r1", limit=10)
    messages = sized_page(1, 10)
    size = len(encode(request.reply(messages=messages, more=False)))
    assert fit_history_reply(request, messages, more=False, max_bytes=size) == request.reply(
        messages=messages, more=False
    )
    trimmed = fit_history_reply(request, messages, more=False, max_bytes=size - 1)
    assert [m["seq"] for m in trimmed.data["messages"]] == list(range(2, 11))
    assert trimmed.data["more"] is True


@pytest.mark.parametrize(
    ("request_", "kept"),
    [
        (History(ref=1, room="r1", limit=10), list(range(6, 11))),  # latest: keep the newest
        (History(ref=1, room="r1", before=11, limit=10), list(range(6, 11))),
        (History(ref=1, room="r1", after=0, limit=10), list(range(1, 6))),  # forward: oldest
    ],
    ids=["latest", "before", "after"],
)
def test_fit_drops_the_far_end_of_the_page(request_: History, kept: list[int]) -> None:
    messages = sized_page(1, 10)
    expected = [m for m in messages if m.seq in kept]
    five = len(encode(request_.reply(messages=expected, more=False)))
    reply = fit_history_reply(request_, messages, more=False, max_bytes=five)
    assert [m["seq"] for m in reply.data["messages"]] == kept
    assert reply.data["more"] is True
    assert len(encode(reply)) <= five


def test_fit_keeps_one_message_even_over_budget() -> None:
    request = History(ref=1, room="r1", after=0)
    reply = fit_history_reply(request, sized_page(1, 3), more=False, max_bytes=100)
    assert [m["seq"] for m in reply.data["messages"]] == [1]
    assert reply.data["more"] is True


def test_fit_of_an_empty_page_and_of_maps() -> None:
    request = History(ref=1, room="r1")
    assert fit_history_reply(request, [], more=False, max_bytes=100) == Reply(
        ref=1, data={"messages": [], "more": False}
    )
    maps = [m.snapshot() for m in sized_page(1, 2, 10)]
    assert fit_history_reply(request, maps, more=True, max_bytes=1 << 20) == request.reply(
        messages=maps, more=True
    )


def test_fit_validates_like_reply() -> None:
    with pytest.raises(LocalProtocolError, match=r"to hold at most 1 messages, got 2$"):
        fit_history_reply(
            History(ref=1, room="r1", limit=1), sized_page(1, 2), more=False, max_bytes=1 << 20
        )
