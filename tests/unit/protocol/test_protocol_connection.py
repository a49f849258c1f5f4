"""ServerConnection: state rules, refs in flight, limits, send misuse, statistics."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest

from tether.transport.protocol import (
    Bye,
    ClientEvent,
    ConnectionState,
    Disconnect,
    DisconnectCode,
    Error,
    ErrorCode,
    Hello,
    Limits,
    LocalProtocolError,
    Ping,
    Pong,
    Presence,
    PresenceSet,
    PresenceStatus,
    PresenceSubscribe,
    PresenceUnsubscribe,
    RemoteProtocolError,
    Reply,
    ServerConnection,
    Welcome,
    decode_server_frame,
    encode,
)

S = ConnectionState
HELLO = Hello(ref=1, token="header.payload.signature", device="laptop-1", client="test/1")


def welcome_for(hello: Hello) -> Welcome:
    """A valid welcome answering ``hello``."""
    return hello.welcome(
        session="s-1",
        user="alice",
        name="Alice",
        device=hello.device or "generated",
        heartbeat_ms=25_000,
        timeout_ms=60_000,
        server="tether/0.1.0",
        limits={"max_frame_bytes": 1 << 20, "max_frames_per_s": 50},
    )


def feed(conn: ServerConnection, *events: ClientEvent) -> list[ClientEvent]:
    """Encode ``events``, hand them to ``conn`` and return what ``events()`` yields."""
    for event in events:
        conn.receive_data(encode(event))
    return list(conn.events())


def make_connection(state: ConnectionState, limits: Limits | None = None) -> ServerConnection:
    """Return a connection driven through the public API into ``state``."""
    conn = ServerConnection(limits)
    if state is ConnectionState.AWAITING_HELLO:
        return conn
    assert feed(conn, HELLO) == [HELLO]
    if state is ConnectionState.HELLO_RECEIVED:
        return conn
    conn.send(welcome_for(HELLO))
    if state is ConnectionState.OPEN:
        return conn
    if state is ConnectionState.CLOSING:
        assert feed(conn, Bye()) == [Bye()]
        return conn
    conn.send(Disconnect(DisconnectCode.KICKED, "kicked"))
    assert conn.state is ConnectionState.CLOSED
    return conn


SUBSCRIBE = PresenceSubscribe(ref=2, users=("bob",))
PRESENCE = Presence(user="bob", status=PresenceStatus.ONLINE, devices=1, last_seen=None)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def remote_error(conn: ServerConnection, payload: bytes) -> RemoteProtocolError:
    conn.receive_data(payload)
    with pytest.raises(RemoteProtocolError) as info:
        list(conn.events())
    return info.value


def assert_fatal(conn: ServerConnection, payload: bytes, code: DisconnectCode, reason: str) -> None:
    error = remote_error(conn, payload)
    assert error.close_hint == Disconnect(code, reason)
    assert str(error) == reason
    assert conn.state is S.CLOSED
    assert conn.statistics().close_code == code
    # The adapter may hand the hint to send(): a no-op in CLOSED.
    assert conn.send(error.hint) == b""


def assert_refused(conn: ServerConnection, payload: bytes, expected: Error) -> None:
    before, in_flight = conn.state, conn.statistics().in_flight
    error = remote_error(conn, payload)
    assert error.error_hint == expected
    assert conn.state is before
    # The hint answers the ref: sending it must be legal now.
    assert decode_server_frame(conn.send(error.hint)) == expected
    assert conn.statistics().in_flight == in_flight


# ---------------------------------------------------------------- handshake


def test_happy_handshake() -> None:
    conn = ServerConnection()
    assert conn.state is S.AWAITING_HELLO
    assert feed(conn, HELLO) == [HELLO]
    assert conn.state is S.HELLO_RECEIVED
    welcome = welcome_for(HELLO)
    assert decode_server_frame(conn.send(welcome)) == welcome
    assert conn.state is S.OPEN


@pytest.mark.parametrize("state", [S.AWAITING_HELLO, S.HELLO_RECEIVED, S.OPEN])
def test_ping_and_pong_are_accepted_before_and_after_welcome(state: ConnectionState) -> None:
    conn = make_connection(state)
    assert feed(conn, Ping(), Ping(n=7), Pong(n=1)) == [Ping(), Ping(n=7), Pong(n=1)]
    assert conn.state is state
    assert decode_server_frame(conn.send(Ping(n=7).response())) == Pong(n=7)
    assert decode_server_frame(conn.send(Ping(n=8))) == Ping(n=8)


@pytest.mark.parametrize("state", [S.AWAITING_HELLO, S.HELLO_RECEIVED])
@pytest.mark.parametrize(
    "frame",
    [
        SUBSCRIBE.to_wire(),
        PresenceUnsubscribe(ref=2, users=("bob",)).to_wire(),
        PresenceSet(status="idle").to_wire(),  # type: ignore[arg-type]
        Bye().to_wire(),
        {"t": "poll.vote", "ref": 3},
        {"t": "presence.subscribe"},  # state is checked before fields
    ],
    ids=lambda f: f["t"],
)
def test_frames_before_welcome_are_fatal_not_authenticated(
    state: ConnectionState, frame: dict[str, Any]
) -> None:
    conn = make_connection(state)
    shown = repr(frame["t"])
    assert_fatal(
        conn,
        pack(frame),
        DisconnectCode.NOT_AUTHENTICATED,
        f"Frame {shown} is not allowed in state {state}",
    )


def test_second_hello_while_hello_received_is_a_protocol_violation() -> None:
    conn = make_connection(S.HELLO_RECEIVED)
    assert_fatal(
        conn,
        encode(Hello(ref=5, token="t")),
        DisconnectCode.PROTOCOL_VIOLATION,
        "Frame 'hello' is not allowed in state HELLO_RECEIVED",
    )


def test_hello_when_open_is_refused_already_authenticated() -> None:
    conn = make_connection(S.OPEN)
    assert_refused(
        conn,
        encode(Hello(ref=5, token="t")),
        Error(
            ref=5,
            code=ErrorCode.ALREADY_AUTHENTICATED,
            reason="Frame 'hello' is not allowed in state OPEN",
            temporary=False,
        ),
    )


def test_malformed_hello_is_refused_and_the_client_may_retry() -> None:
    conn = ServerConnection()
    assert_refused(
        conn,
        pack({"t": "hello", "ref": 1, "token": 42}),
        Error(
            ref=1,
            code=ErrorCode.BAD_REQUEST,
            reason="Expected 'hello' field 'token' to be a str of at most 8192 bytes, got int",
            temporary=False,
        ),
    )
    assert conn.state is S.AWAITING_HELLO
    assert feed(conn, HELLO) == [HELLO]


def test_error_answering_hello_returns_to_awaiting_hello() -> None:
    conn = make_connection(S.HELLO_RECEIVED)
    conn.send(HELLO.error(ErrorCode.UNAVAILABLE, "storage down"))
    assert conn.state is S.AWAITING_HELLO
    assert feed(conn, HELLO) == [HELLO]  # the same ref is free again
    conn.send(welcome_for(HELLO))
    assert conn.state is S.OPEN


def test_error_not_tied_to_hello_keeps_hello_received() -> None:
    conn = make_connection(S.HELLO_RECEIVED)
    conn.send(Error.for_code(ErrorCode.INTERNAL, "hiccup"))
    assert conn.state is S.HELLO_RECEIVED


# ---------------------------------------------------------------- open connection


def test_requests_are_answered_once() -> None:
    conn = make_connection(S.OPEN)
    assert feed(conn, SUBSCRIBE) == [SUBSCRIBE]
    assert conn.statistics().in_flight == 1
    reply = SUBSCRIBE.reply({"users": [PRESENCE]})
    assert decode_server_frame(conn.send(reply)) == reply
    assert conn.statistics().in_flight == 0
    with pytest.raises(
        LocalProtocolError,
        match=re.escape(f"Event {reply!r} answers ref 2, which is not in flight"),
    ):
        conn.send(reply)


def test_pushes_have_no_ref_and_need_open() -> None:
    conn = make_connection(S.OPEN)
    assert decode_server_frame(conn.send(PRESENCE)) == PRESENCE


def test_presence_set_without_ref_is_not_in_flight() -> None:
    conn = make_connection(S.OPEN)
    quiet = PresenceSet(status="idle")  # type: ignore[arg-type]
    assert feed(conn, quiet) == [quiet]
    assert conn.statistics().in_flight == 0
    asked = PresenceSet(ref=9, status="active")  # type: ignore[arg-type]
    assert feed(conn, asked) == [asked]
    assert conn.statistics().in_flight == 1
    conn.send(asked.reply())
    assert conn.statistics().in_flight == 0


def test_unknown_type_when_open_is_refused_with_its_ref() -> None:
    conn = make_connection(S.OPEN)
    assert_refused(
        conn,
        pack({"t": "poll.vote", "ref": 77, "room": "r"}),
        Error(
            ref=77,
            code=ErrorCode.UNKNOWN_TYPE,
            reason="Unknown frame type 'poll.vote'",
            temporary=False,
        ),
    )


def test_invalid_request_when_open_is_bad_request() -> None:
    conn = make_connection(S.OPEN)
    assert_refused(
        conn,
        pack({"t": "presence.subscribe", "ref": 4, "users": []}),
        Error(
            ref=4,
            code=ErrorCode.BAD_REQUEST,
            reason="Expected 'presence.subscribe' field 'users' to be an array of 1..100 "
            "user ids (str of 1..128 characters), got []",
            temporary=False,
        ),
    )
    assert feed(conn, SUBSCRIBE) == [SUBSCRIBE]


def test_reusing_a_ref_in_flight_is_fatal() -> None:
    conn = make_connection(S.OPEN)
    feed(conn, SUBSCRIBE)
    assert_fatal(
        conn,
        encode(PresenceUnsubscribe(ref=2, users=("x",))),
        DisconnectCode.PROTOCOL_VIOLATION,
        "Frame 'presence.unsubscribe' reuses ref 2, still in flight",
    )


def test_ref_reuse_check_covers_error_hints_not_yet_sent() -> None:
    conn = make_connection(S.OPEN)
    remote_error(conn, pack({"t": "nope", "ref": 6}))
    assert_fatal(
        conn,
        pack({"t": "nope", "ref": 6}),
        DisconnectCode.PROTOCOL_VIOLATION,
        "Frame 'nope' reuses ref 6, still in flight",
    )


def test_a_ref_can_be_reused_once_answered() -> None:
    conn = make_connection(S.OPEN)
    for _ in range(3):
        assert feed(conn, SUBSCRIBE) == [SUBSCRIBE]
        conn.send(SUBSCRIBE.reply())


def test_ping_with_a_ref_key_does_not_take_the_ref() -> None:
    conn = make_connection(S.OPEN)
    conn.receive_data(pack({"t": "ping", "ref": 2}))
    assert list(conn.events()) == [Ping()]
    assert feed(conn, SUBSCRIBE) == [SUBSCRIBE]


def test_too_many_requests_in_flight_is_refused_rate_limited() -> None:
    conn = make_connection(S.OPEN, Limits(max_in_flight=2))
    first = [PresenceSubscribe(ref=r, users=("a",)) for r in (10, 11)]
    assert feed(conn, *first) == first
    # The hello is answered, so only the two subscriptions count.
    assert conn.statistics().in_flight == 2
    assert_refused(
        conn,
        encode(PresenceSubscribe(ref=12, users=("a",))),
        Error(
            ref=12,
            code=ErrorCode.RATE_LIMITED,
            reason="More than max_in_flight=2 requests",
            temporary=True,
        ),
    )
    conn.send(first[0].reply())
    assert feed(conn, PresenceSubscribe(ref=12, users=("a",))) == [
        PresenceSubscribe(ref=12, users=("a",))
    ]


# ---------------------------------------------------------------- closing


def test_bye_moves_to_closing_and_later_frames_are_ignored() -> None:
    conn = make_connection(S.OPEN)
    for frame in (Bye(), SUBSCRIBE, Ping()):
        conn.receive_data(encode(frame))
    assert list(conn.events()) == [Bye()]
    assert conn.state is S.CLOSING
    conn.receive_data(b"\xc1 garbage is ignored too")
    assert list(conn.events()) == []
    stats = conn.statistics()
    assert (stats.frames_received, stats.frames_ignored, stats.pending) == (4, 3, 0)


def test_closing_still_answers_requests_in_flight_then_closes() -> None:
    conn = make_connection(S.OPEN)
    assert feed(conn, SUBSCRIBE, Bye()) == [SUBSCRIBE, Bye()]
    conn.send(SUBSCRIBE.reply({"users": [PRESENCE]}))
    conn.send(PRESENCE)
    assert conn.send(Disconnect(DisconnectCode.NORMAL, "bye")) == b""
    assert conn.state is S.CLOSED
    assert conn.statistics().close_code == 1000


@pytest.mark.parametrize("state", list(S))
def test_disconnect_is_legal_in_every_state_and_idempotent(state: ConnectionState) -> None:
    conn = make_connection(state)
    assert conn.send(Disconnect(DisconnectCode.SHUTDOWN, "restart")) == b""
    assert conn.state is S.CLOSED
    assert conn.send(Disconnect(DisconnectCode.KICKED, "again")) == b""
    first = DisconnectCode.KICKED if state is S.CLOSED else DisconnectCode.SHUTDOWN
    assert conn.statistics().close_code == first


def test_closed_connection_ignores_data() -> None:
    conn = make_connection(S.CLOSED)
    conn.receive_data(encode(HELLO))
    assert list(conn.events()) == []
    assert conn.statistics().frames_ignored == 1


def test_disconnect_drops_pending_frames() -> None:
    conn = make_connection(S.OPEN)
    conn.receive_data(encode(Ping()))
    conn.send(Disconnect(DisconnectCode.KICKED, "kicked"))
    assert list(conn.events()) == []
    assert conn.statistics().pending == 0


# ---------------------------------------------------------------- server misuse


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.AWAITING_HELLO, welcome_for(HELLO)),
        (S.AWAITING_HELLO, Reply(ref=1, data={})),
        (S.AWAITING_HELLO, PRESENCE),
        (S.HELLO_RECEIVED, Reply(ref=1, data={})),
        (S.HELLO_RECEIVED, PRESENCE),
        (S.OPEN, welcome_for(HELLO)),
        (S.CLOSING, welcome_for(HELLO)),
        (S.CLOSED, Ping(n=1)),
        (S.CLOSED, PRESENCE),
        (S.CLOSED, Error.for_code(ErrorCode.INTERNAL, "x")),
    ],
    ids=lambda v: str(v) if isinstance(v, S) else type(v).__name__,
)
def test_sending_in_the_wrong_state_is_a_local_error(state: ConnectionState, event: Any) -> None:
    conn = make_connection(state)
    with pytest.raises(
        LocalProtocolError,
        match="^" + re.escape(f"Event {event!r} cannot be sent in state {state}") + "$",
    ):
        conn.send(event)
    assert conn.state is state  # nothing changed


def test_welcome_must_answer_the_hello() -> None:
    conn = ServerConnection()
    feed(conn, Hello(ref=5, token="t"))
    wrong = welcome_for(Hello(ref=6, token="t"))
    with pytest.raises(
        LocalProtocolError,
        match=r"^Event Welcome\(ref=6, .* answers ref 6, which is not in flight$",
    ):
        conn.send(wrong)
    assert conn.state is S.HELLO_RECEIVED


def test_server_ping_must_carry_n() -> None:
    conn = make_connection(S.OPEN)
    with pytest.raises(
        LocalProtocolError, match=r"^Expected a server ping to carry n, got Ping\(n=None\)$"
    ):
        conn.send(Ping())


def test_send_refuses_client_only_frames_and_non_events() -> None:
    conn = make_connection(S.OPEN)
    with pytest.raises(LocalProtocolError, match=r"^Expected a ServerEvent, got Bye\(\)$"):
        conn.send(Bye())  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match=r"^Expected a ServerEvent, got b'x'$"):
        conn.send(b"x")  # type: ignore[arg-type]


def test_unencodable_reply_changes_nothing() -> None:
    conn = make_connection(S.OPEN)
    feed(conn, SUBSCRIBE)
    with pytest.raises(LocalProtocolError, match=r"^Cannot encode Reply"):
        conn.send(Reply(ref=2, data={"x": object()}))
    assert conn.statistics().in_flight == 1
    conn.send(SUBSCRIBE.reply())


def test_receive_data_requires_bytes() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError, match=r"^Expected bytes, got str$"):
        conn.receive_data("text frame")  # type: ignore[arg-type]
    conn.receive_data(bytearray(encode(Ping())))
    conn.receive_data(memoryview(encode(Pong(n=1))))
    assert list(conn.events()) == [Ping(), Pong(n=1)]


# ---------------------------------------------------------------- limits


def test_more_than_max_pending_frames_is_fatal_rate_limited() -> None:
    conn = make_connection(S.OPEN, Limits(max_pending=3))
    for _ in range(3):
        conn.receive_data(encode(Ping()))
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(encode(Ping()))
    assert info.value.close_hint == Disconnect(
        DisconnectCode.RATE_LIMITED, "More than max_pending=3 frames pending"
    )
    assert conn.state is S.CLOSED
    assert list(conn.events()) == []


def test_consuming_events_frees_pending_room() -> None:
    conn = make_connection(S.OPEN, Limits(max_pending=1))
    for n in range(5):
        conn.receive_data(encode(Ping(n=n)))
        assert list(conn.events()) == [Ping(n=n)]


def test_frame_over_max_frame_bytes_is_fatal_in_receive_data() -> None:
    conn = ServerConnection(Limits(max_frame_bytes=16 * 1024))
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(b"\x00" * (16 * 1024 + 1))
    assert info.value.close_hint == Disconnect(
        DisconnectCode.MESSAGE_TOO_LARGE, "Frame of 16385 bytes exceeds max_frame_bytes=16384"
    )
    assert conn.state is S.CLOSED


def test_bad_frame_closes_the_connection() -> None:
    conn = make_connection(S.OPEN)
    assert_fatal(
        conn, b"\x93\x01\x02", DisconnectCode.BAD_FRAME, "Frame is not valid msgpack (ValueError)"
    )


# ---------------------------------------------------------------- events() laziness


def test_events_are_parsed_lazily_under_the_state_reached() -> None:
    conn = ServerConnection()
    conn.receive_data(encode(HELLO))
    conn.receive_data(encode(SUBSCRIBE))
    events = conn.events()
    assert next(events) == HELLO
    # The server answers before pulling the next frame: the subscribe is legal.
    conn.send(welcome_for(HELLO))
    assert next(events) == SUBSCRIBE


def test_events_continue_after_a_recoverable_error() -> None:
    conn = make_connection(S.OPEN)
    conn.receive_data(encode(Ping(n=1)))
    conn.receive_data(pack({"t": "nope"}))
    conn.receive_data(encode(Ping(n=2)))
    seen: list[ClientEvent] = []
    with pytest.raises(RemoteProtocolError) as info:
        seen.extend(conn.events())
    assert seen == [Ping(n=1)]
    conn.send(info.value.hint)
    assert list(conn.events()) == [Ping(n=2)]


def test_statistics_count_frames_and_bytes() -> None:
    conn = ServerConnection()
    hello = encode(HELLO)
    feed(conn, HELLO)
    out = conn.send(welcome_for(HELLO))
    remote_error(conn, pack({"t": "nope"}))
    stats = conn.statistics()
    assert stats.state is S.OPEN
    assert stats.frames_received == 2
    assert stats.bytes_received == len(hello) + len(pack({"t": "nope"}))
    assert stats.events == 1
    assert stats.errors == 1
    assert stats.frames_sent == 1
    assert stats.bytes_sent == len(out)
    assert stats.close_code is None
    assert repr(conn) == "<ServerConnection state=OPEN pending=0 in_flight=0>"
